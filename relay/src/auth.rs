//! Login checks: Argon2id verification off the async threads, failed-login
//! rate limits per source address and per user, and resume tokens.
//!
//! The client gets one answer for every failure (AUTH_FAILED); the log
//! gets the real reason. An unknown or disabled user still costs one
//! Argon2 verification, so timing does not tell them apart either.

use crate::store::{UserRecord, UserStore, verify_password};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// Why a login failed, for the log and the metrics only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No such user.
    UnknownUser,
    /// The password did not verify.
    WrongPassword,
    /// The user is disabled.
    Disabled,
    /// A RESUME token did not match a live login of the user.
    BadToken,
    /// A RESUME token was issued under a password that has changed since.
    PasswordChanged,
    /// Too many recent failures from this address or for this user.
    RateLimited,
}

impl AuthFailure {
    /// A short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::WrongPassword => "wrong_password",
            AuthFailure::Disabled => "disabled",
            AuthFailure::BadToken => "bad_token",
            AuthFailure::PasswordChanged => "password_changed",
            AuthFailure::RateLimited => "rate_limited",
        }
    }
}

/// Counts failures per key in a sliding window: a key is refused once it
/// has `max` failures younger than `window`. Hand-written rather than
/// `governor` because only failures count, and a success must not use up
/// a cell; this is a few lines over a `HashMap`.
///
/// A check under way counts as a failure from the moment it is let
/// through ([`FailureLimiter::try_reserve`]) until it is known to have
/// succeeded ([`FailureLimiter::release`]). So checks started side by side
/// cannot together try more than `max` passwords: counting the failures
/// only when each check ended let 64 parallel logins past a limit of 5.
#[derive(Debug)]
pub struct FailureLimiter<K> {
    max: u32,
    window: Duration,
    inner: Mutex<Hits<K>>,
}

#[derive(Debug)]
struct Hits<K> {
    hits: HashMap<K, Vec<Instant>>,
    /// The map is swept of expired keys when it grows past this.
    sweep_at: usize,
}

/// Keys live at once before the first sweep.
const SWEEP_FLOOR: usize = 10_000;

impl<K: Hash + Eq + Clone> FailureLimiter<K> {
    /// A limiter allowing `max` failures per `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            inner: Mutex::new(Hits {
                hits: HashMap::new(),
                sweep_at: SWEEP_FLOOR,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hits<K>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `key` is currently refused.
    pub fn is_limited(&self, key: &K, now: Instant) -> bool {
        let mut inner = self.lock();
        match inner.hits.get_mut(key) {
            Some(v) => {
                v.retain(|t| now.duration_since(*t) < self.window);
                v.len() >= self.max as usize
            }
            None => false,
        }
    }

    /// Lets one check for `key` through, counted as a failure at `now`,
    /// unless `key` already has `max` failures (or checks under way) in
    /// the window: then `false`, and nothing is counted.
    pub fn try_reserve(&self, key: &K, now: Instant) -> bool {
        let mut inner = self.lock();
        // Keep the map bounded: drop keys whose failures have all expired,
        // and sweep again only once the live keys have doubled (so a map
        // full of live keys is not scanned on every failure).
        if inner.hits.len() > inner.sweep_at {
            let window = self.window;
            inner
                .hits
                .retain(|_, v| v.iter().any(|t| now.duration_since(*t) < window));
            inner.sweep_at = SWEEP_FLOOR.max(inner.hits.len() * 2);
        }
        let v = inner.hits.entry(key.clone()).or_default();
        v.retain(|t| now.duration_since(*t) < self.window);
        if v.len() >= self.max as usize {
            return false;
        }
        v.push(now);
        true
    }

    /// Takes back the count of a check reserved at `at` that succeeded.
    pub fn release(&self, key: &K, at: Instant) {
        let mut inner = self.lock();
        if let Some(v) = inner.hits.get_mut(key)
            && let Some(i) = v.iter().position(|t| *t == at)
        {
            v.swap_remove(i);
        }
    }
}

/// The key an address is limited by: an IPv6 address counts by its /64
/// (one subscriber's prefix, which hands its hosts any address in it), an
/// IPv4-mapped IPv6 address as the IPv4 address.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
        v4 => v4,
    }
}

/// A login check under way, counted as a failure against its address and
/// user until [`Attempt::succeeded`]; dropped otherwise (a wrong password,
/// or a check cut short), the failure stays counted.
#[derive(Debug)]
#[must_use = "an attempt counts as a failure unless it succeeded"]
pub struct Attempt<'a> {
    auth: &'a Authenticator,
    ip: IpAddr,
    /// The user whose limit counts it (`None` for a RESUME, and for a
    /// login from an address the user logged in from before).
    user: Option<String>,
    at: Instant,
}

impl Attempt<'_> {
    /// The check succeeded: its provisional failure is taken back.
    pub fn succeeded(self) {
        self.auth.by_ip.release(&self.ip, self.at);
        if let Some(user) = &self.user {
            self.auth.by_user.release(user, self.at);
        }
    }
}

/// How many addresses (IPv6: /64s) are remembered per user as ones it
/// logged in from.
const KNOWN_PER_USER: usize = 8;

/// How long an address stays known after the user's last login from it.
const KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// Users remembered with known addresses at most (the least recently
/// seen go first).
const KNOWN_USERS: usize = 100_000;

/// Checks passwords and owns the rate limiters.
#[derive(Debug)]
pub struct Authenticator {
    store: Arc<UserStore>,
    by_ip: FailureLimiter<IpAddr>,
    by_user: FailureLimiter<String>,
    /// Bounds concurrent Argon2 runs (each uses the configured memory).
    argon2_slots: Semaphore,
    /// Verified against when the user is unknown, to equalise timing.
    dummy_hash: String,
    /// Per user, the addresses it logged in from lately. A login from one
    /// of them is counted against the address only, not the user: someone
    /// failing passwords for a user from elsewhere cannot lock its own
    /// devices out (the per-user limit still stops a guesser spread over
    /// many addresses).
    known: Mutex<HashMap<String, Vec<(IpAddr, Instant)>>>,
}

impl Authenticator {
    /// Builds an authenticator over `store`.
    pub fn new(
        store: Arc<UserStore>,
        max_per_ip: u32,
        max_per_user: u32,
        window: Duration,
    ) -> Result<Self, crate::store::StoreError> {
        let dummy_hash = store.hash_password("faxgate-timing-equaliser")?;
        let slots = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Ok(Self {
            store,
            by_ip: FailureLimiter::new(max_per_ip, window),
            by_user: FailureLimiter::new(max_per_user, window),
            argon2_slots: Semaphore::new(slots),
            dummy_hash,
            known: Mutex::new(HashMap::new()),
        })
    }

    /// The store behind this authenticator.
    pub fn store(&self) -> &Arc<UserStore> {
        &self.store
    }

    /// Starts a login check for `user` from `ip`, counted as a failure
    /// until it succeeds; refused when the address or the user already
    /// has its limit of failures and checks under way.
    ///
    /// From an address the user logged in from lately, only the address
    /// limit applies (see `known`).
    pub fn begin(&self, ip: IpAddr, user: &str) -> Result<Attempt<'_>, AuthFailure> {
        let now = Instant::now();
        let ip = limit_key(ip);
        if !self.by_ip.try_reserve(&ip, now) {
            return Err(AuthFailure::RateLimited);
        }
        let user = if self.is_known(user, ip, now) {
            None
        } else {
            let user = user.to_owned();
            if !self.by_user.try_reserve(&user, now) {
                self.by_ip.release(&ip, now);
                return Err(AuthFailure::RateLimited);
            }
            Some(user)
        };
        Ok(Attempt {
            auth: self,
            ip,
            user,
            at: now,
        })
    }

    /// Starts a RESUME check: only the address limit applies. A resume
    /// token is 256 random bits, so the user's limit protects nothing
    /// here, and counting against it would let anyone who fails passwords
    /// for the user keep its device from opening spare connections.
    pub fn begin_resume(&self, ip: IpAddr) -> Result<Attempt<'_>, AuthFailure> {
        let now = Instant::now();
        let ip = limit_key(ip);
        if !self.by_ip.try_reserve(&ip, now) {
            return Err(AuthFailure::RateLimited);
        }
        Ok(Attempt {
            auth: self,
            ip,
            user: None,
            at: now,
        })
    }

    fn is_known(&self, user: &str, key: IpAddr, now: Instant) -> bool {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.get(user).is_some_and(|v| {
            v.iter()
                .any(|(ip, at)| *ip == key && now.duration_since(*at) < KNOWN_FOR)
        })
    }

    /// Remembers that `user` logged in from `ip` (by its limit key).
    fn remember(&self, user: &str, ip: IpAddr) {
        let (key, now) = (limit_key(ip), Instant::now());
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= KNOWN_USERS && !known.contains_key(user) {
            // Forget the user seen least recently.
            let oldest = known
                .iter()
                .min_by_key(|(_, v)| v.iter().map(|(_, at)| *at).max())
                .map(|(u, _)| u.clone());
            if let Some(u) = oldest {
                known.remove(&u);
            }
        }
        let v = known.entry(user.to_owned()).or_default();
        v.retain(|(ip, at)| *ip != key && now.duration_since(*at) < KNOWN_FOR);
        v.push((key, now));
        if v.len() > KNOWN_PER_USER {
            v.remove(0);
        }
    }

    /// Verifies a password login. Runs Argon2 on the blocking pool.
    pub async fn check_password(
        self: &Arc<Self>,
        ip: IpAddr,
        user: &str,
        password: String,
    ) -> Result<UserRecord, AuthFailure> {
        let attempt = self.begin(ip, user)?;
        let result = {
            let _permit = self
                .argon2_slots
                .acquire()
                .await
                .map_err(|_| AuthFailure::RateLimited)?;
            let this = Arc::clone(self);
            let user_owned = user.to_owned();
            tokio::task::spawn_blocking(move || this.verify_blocking(&user_owned, &password))
                .await
                .unwrap_or(Err(AuthFailure::WrongPassword))
        };
        if result.is_ok() {
            attempt.succeeded();
            self.remember(user, ip);
        }
        result
    }

    fn verify_blocking(&self, user: &str, password: &str) -> Result<UserRecord, AuthFailure> {
        let record = match self.store.get(user) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "User store lookup failed during login.");
                None
            }
        };
        match record {
            None => {
                let _ = verify_password(&self.dummy_hash, password);
                Err(AuthFailure::UnknownUser)
            }
            Some(r) => {
                let ok = verify_password(&r.hash, password);
                if r.disabled {
                    Err(AuthFailure::Disabled)
                } else if ok {
                    Ok(r)
                } else {
                    Err(AuthFailure::WrongPassword)
                }
            }
        }
    }
}

/// A resume token as the relay keeps it: only its SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a token.
    pub fn of(token: &[u8]) -> Self {
        Self(Sha256::digest(token).into())
    }

    /// Constant-time comparison.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// A fresh random resume token.
pub fn new_token() -> [u8; crate::protocol::TOKEN_LEN] {
    use rand::RngCore;
    let mut t = [0u8; crate::protocol::TOKEN_LEN];
    rand::rngs::OsRng.fill_bytes(&mut t);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_failures_in_window() {
        let l = FailureLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(l.try_reserve(&"a", t0));
        }
        assert!(!l.is_limited(&"a", t0));
        assert!(l.try_reserve(&"a", t0));
        assert!(l.is_limited(&"a", t0));
        assert!(
            !l.try_reserve(&"a", t0),
            "a full window lets nothing through"
        );
        assert!(!l.is_limited(&"b", t0));
        assert!(!l.is_limited(&"a", t0 + Duration::from_secs(11)));
        // A released (successful) check gives its cell back.
        let t1 = t0 + Duration::from_secs(20);
        assert!(l.try_reserve(&"c", t1));
        l.release(&"c", t1);
        for _ in 0..3 {
            assert!(l.try_reserve(&"c", t1));
        }
        assert!(!l.try_reserve(&"c", t1));
    }

    #[test]
    fn the_map_is_swept_once_it_doubles() {
        let l = FailureLimiter::new(1, Duration::from_secs(10));
        let t0 = Instant::now();
        for k in 0..=SWEEP_FLOOR {
            assert!(l.try_reserve(&k, t0));
        }
        // All expired: the next failure sweeps them.
        let later = t0 + Duration::from_secs(11);
        assert!(l.try_reserve(&usize::MAX, later));
        assert_eq!(l.lock().hits.len(), 1);
        // All live: the failure that finds 10,001 keys sweeps, drops
        // nothing, and the next sweep waits for twice as many.
        for k in 0..=SWEEP_FLOOR {
            assert!(l.try_reserve(&k, later));
        }
        assert_eq!(l.lock().hits.len(), SWEEP_FLOOR + 2);
        assert_eq!(l.lock().sweep_at, (SWEEP_FLOOR + 1) * 2);
        assert!(!l.try_reserve(&7, later), "live failures survive the sweep");
    }

    #[test]
    fn addresses_are_limited_by_ipv4_or_ipv6_slash_64() {
        let key = |s: &str| limit_key(s.parse().unwrap());
        assert_eq!(key("192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:1:2:3"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    #[tokio::test]
    async fn checks_started_together_try_no_more_passwords_than_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(UserStore::open(&dir.path().join("users.db"), 64, 1).unwrap());
        store.add_user("osaka", "right", &["b".into()]).unwrap();
        let auth = Arc::new(Authenticator::new(store, 1000, 3, Duration::from_secs(60)).unwrap());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // join_all polls every check once before any Argon2 run can end,
        // so all 30 pass the limit check together unless a check under way
        // already counts.
        let results = futures_util::future::join_all(
            (0..30).map(|i| auth.check_password(ip, "osaka", format!("guess-{i}"))),
        )
        .await;
        let count = |f: AuthFailure| results.iter().filter(|r| **r == Err(f)).count();
        assert_eq!(count(AuthFailure::WrongPassword), 3);
        assert_eq!(count(AuthFailure::RateLimited), 27);
        // A success gives its cell back; here the user is full anyway.
        assert_eq!(
            auth.check_password(ip, "osaka", "right".into()).await,
            Err(AuthFailure::RateLimited)
        );
    }

    #[test]
    fn token_hash_compares() {
        let t = new_token();
        assert!(TokenHash::of(&t).matches(&TokenHash::of(&t)));
        assert!(!TokenHash::of(&t).matches(&TokenHash::of(&new_token())));
    }
}
