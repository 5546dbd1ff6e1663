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
            AuthFailure::RateLimited => "rate_limited",
        }
    }
}

/// Counts failures per key in a sliding window: a key is refused once it
/// has `max` failures younger than `window`. Hand-written rather than
/// `governor` because only failures count, and a success must not use up
/// a cell; this is a few lines over a `HashMap`.
#[derive(Debug)]
pub struct FailureLimiter<K> {
    max: u32,
    window: Duration,
    hits: Mutex<HashMap<K, Vec<Instant>>>,
}

impl<K: Hash + Eq + Clone> FailureLimiter<K> {
    /// A limiter allowing `max` failures per `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            hits: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Vec<Instant>>> {
        self.hits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `key` is currently refused.
    pub fn is_limited(&self, key: &K, now: Instant) -> bool {
        let mut hits = self.lock();
        match hits.get_mut(key) {
            Some(v) => {
                v.retain(|t| now.duration_since(*t) < self.window);
                v.len() >= self.max as usize
            }
            None => false,
        }
    }

    /// Records one failure for `key`.
    pub fn record(&self, key: &K, now: Instant) {
        let mut hits = self.lock();
        // Keep the map bounded: drop keys whose failures have all expired.
        if hits.len() > 10_000 {
            let window = self.window;
            hits.retain(|_, v| v.iter().any(|t| now.duration_since(*t) < window));
        }
        let v = hits.entry(key.clone()).or_default();
        v.retain(|t| now.duration_since(*t) < self.window);
        if v.len() < self.max as usize * 2 {
            v.push(now);
        }
    }
}

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
        })
    }

    /// The store behind this authenticator.
    pub fn store(&self) -> &Arc<UserStore> {
        &self.store
    }

    /// Whether this address or user must be refused without checking.
    pub fn limited(&self, ip: IpAddr, user: &str) -> bool {
        let now = Instant::now();
        self.by_ip.is_limited(&ip, now) || self.by_user.is_limited(&user.to_owned(), now)
    }

    /// Records a failure against the address and the user.
    pub fn record_failure(&self, ip: IpAddr, user: &str) {
        let now = Instant::now();
        self.by_ip.record(&ip, now);
        self.by_user.record(&user.to_owned(), now);
    }

    /// Verifies a password login. Runs Argon2 on the blocking pool.
    pub async fn check_password(
        self: &Arc<Self>,
        ip: IpAddr,
        user: &str,
        password: String,
    ) -> Result<UserRecord, AuthFailure> {
        if self.limited(ip, user) {
            return Err(AuthFailure::RateLimited);
        }
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
        if result.is_err() {
            self.record_failure(ip, user);
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
            l.record(&"a", t0);
        }
        assert!(!l.is_limited(&"a", t0));
        l.record(&"a", t0);
        assert!(l.is_limited(&"a", t0));
        assert!(!l.is_limited(&"b", t0));
        assert!(!l.is_limited(&"a", t0 + Duration::from_secs(11)));
    }

    #[test]
    fn token_hash_compares() {
        let t = new_token();
        assert!(TokenHash::of(&t).matches(&TokenHash::of(&t)));
        assert!(!TokenHash::of(&t).matches(&TokenHash::of(&new_token())));
    }
}
