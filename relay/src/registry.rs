//! Presence: which users are logged in, on which connections, which of
//! those are vacant, and which sessions are bridged. One mutex over plain
//! maps (as in mini-redis's `Db`); it is never held across an `.await`.
//!
//! A vacant connection is one whose task has parked a `oneshot::Sender`
//! here: reserving it for a CONNECT takes that sender out, so a
//! connection can never receive two demands at once.

use crate::auth::TokenHash;
use crate::connection::Connection;
use crate::protocol::{Code, PresenceEntry};
use faxgate_config::{AclConfig, AclDefault};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// A CONNECT-NOTIFY to deliver on a vacant connection.
#[derive(Debug)]
pub struct Demand {
    /// The session being set up.
    pub session_id: u64,
    /// The caller's user ID.
    pub from: String,
    /// Where the target's answer goes.
    pub reply: oneshot::Sender<DemandOutcome>,
}

/// The target's answer to a [`Demand`].
#[derive(Debug)]
pub enum DemandOutcome {
    /// ACCEPT: the target lends its connection to the caller's task,
    /// which bridges and then gives it back (or `None` if it died).
    Accepted {
        /// The target's connection.
        conn: Connection,
        /// The target connection's ID.
        conn_id: u64,
        /// The target connection's kill token.
        kill: CancellationToken,
        /// Where the connection goes back after the session.
        back: oneshot::Sender<Option<Connection>>,
    },
    /// REJECT, timeout, or the target went away; the code says which.
    Rejected(Code),
}

/// What a connection is doing, for LIST and the status endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// Can take a demand.
    Vacant,
    /// A CONNECT-NOTIFY is out, waiting for ACCEPT/REJECT.
    Notifying,
    /// Its device sent CONNECT and waits for the answer.
    Connecting,
    /// Bridged in a session.
    InSession,
    /// The session ended; waiting for RELEASE.
    Draining,
}

#[derive(Debug)]
struct ConnEntry {
    id: u64,
    peer: SocketAddr,
    tls: bool,
    state: ConnState,
    since: SystemTime,
    demand: Option<oneshot::Sender<Demand>>,
    kill: CancellationToken,
    kill_code: Code,
}

/// A resume token issued at a password login, with the credential it was
/// issued under (a hash of the user's stored password hash then), so that
/// a password change ends it.
#[derive(Debug, Clone, Copy)]
pub struct IssuedToken {
    /// The token's hash.
    pub token: TokenHash,
    /// The credential it is bound to.
    pub credential: TokenHash,
}

/// Why a RESUME was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeRefused {
    /// No live login of the user issued the token.
    BadToken,
    /// The token was issued under a password that has changed since.
    PasswordChanged,
    /// The user holds `max_connections_per_user` already.
    TooManyConnections,
}

#[derive(Debug)]
struct Presence {
    groups: Arc<[String]>,
    tokens: Vec<IssuedToken>,
    conns: Vec<ConnEntry>,
    since: SystemTime,
}

/// A bridged session, for the status endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// Session ID.
    pub id: u64,
    /// Caller user ID.
    pub caller: String,
    /// Target user ID.
    pub target: String,
    /// Caller's connection ID.
    pub caller_conn: u64,
    /// Target's connection ID.
    pub target_conn: u64,
    /// When it was bridged (seconds since the epoch).
    pub started: u64,
    /// Bytes forwarded caller to target so far.
    #[serde(skip)]
    pub up: Arc<AtomicU64>,
    /// Bytes forwarded target to caller so far.
    #[serde(skip)]
    pub down: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct State {
    users: HashMap<String, Presence>,
    sessions: HashMap<u64, SessionInfo>,
}

/// The ACL, compiled from config.
#[derive(Debug, Clone)]
pub struct Acl {
    default: AclDefault,
    allow: Vec<(String, String)>,
}

impl Acl {
    /// Builds the ACL from its config section.
    pub fn new(cfg: &AclConfig) -> Self {
        Self {
            default: cfg.default,
            allow: cfg
                .allow
                .iter()
                .map(|r| (r.from.clone(), r.to.clone()))
                .collect(),
        }
    }

    /// Whether a user in `from` groups may see and connect to a user in
    /// `to` groups. A user may always reach itself.
    pub fn allows(&self, from_user: &str, from: &[String], to_user: &str, to: &[String]) -> bool {
        if from_user == to_user {
            return true;
        }
        let base = match self.default {
            AclDefault::All => true,
            AclDefault::None => false,
            AclDefault::SameGroup => from.iter().any(|g| to.contains(g)),
        };
        base || self
            .allow
            .iter()
            .any(|(f, t)| (f == "*" || from.contains(f)) && (t == "*" || to.contains(t)))
    }
}

/// A logged-in connection's identity in the registry.
#[derive(Debug, Clone)]
pub struct ConnTicket {
    /// Connection ID (also sent to the device in LOGIN-OK).
    pub id: u64,
    /// The user.
    pub user: String,
    /// The user's groups at login.
    pub groups: Arc<[String]>,
    /// Cancelled when the connection must close (kick, logout, shutdown).
    pub kill: CancellationToken,
}

/// Result of trying to reserve a target's vacant connection.
#[derive(Debug)]
pub enum Reserve {
    /// Reserved: send the demand through `demand`.
    Ok {
        /// New session ID.
        session_id: u64,
        /// The target connection's parked sender.
        demand: oneshot::Sender<Demand>,
    },
    /// The target is not logged in; the caller must still check the ACL
    /// against the stored user to choose FORBIDDEN or NOT_LOGGED_IN.
    Absent,
    /// Refused with this code (FORBIDDEN or BUSY).
    Refused(Code),
}

/// The presence registry.
#[derive(Debug)]
pub struct Registry {
    state: Mutex<State>,
    next_id: AtomicU64,
    acl: Acl,
    root: CancellationToken,
}

/// One connection in a status snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct ConnStatus {
    /// Connection ID.
    pub id: u64,
    /// Remote address.
    pub peer: String,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// What it is doing.
    pub state: ConnState,
    /// When it entered the state (seconds since the epoch).
    pub since: u64,
}

/// One user in a status snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct UserStatus {
    /// User ID.
    pub user: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Logged in since (seconds since the epoch).
    pub since: u64,
    /// Connections.
    pub connections: Vec<ConnStatus>,
}

/// One session in a status snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SessionStatus {
    /// The session.
    #[serde(flatten)]
    pub info: SessionInfo,
    /// Bytes caller to target.
    pub bytes_up: u64,
    /// Bytes target to caller.
    pub bytes_down: u64,
}

/// Everything the status endpoint shows.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Logged-in users.
    pub users: Vec<UserStatus>,
    /// Bridged sessions.
    pub sessions: Vec<SessionStatus>,
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Registry {
    /// The resume tokens a user keeps at most: two per connection it may
    /// hold, the newest.
    pub fn max_tokens(max_connections: u16) -> usize {
        2 * usize::from(max_connections.max(1))
    }

    /// An empty registry; connection kill tokens are children of `root`.
    pub fn new(acl: Acl, root: CancellationToken) -> Self {
        Self {
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            acl,
            root,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation below leaves the maps consistent before any point
        // that could panic, so a poisoned lock still guards valid data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh ID for a connection or session.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The ACL in force.
    pub fn acl(&self) -> &Acl {
        &self.acl
    }

    /// Adds a connection after a password login. `token` joins the user's
    /// live tokens. Fails with TOO_MANY_CONNECTIONS at the limit.
    pub fn add_login(
        &self,
        user: &str,
        groups: Vec<String>,
        token: IssuedToken,
        peer: SocketAddr,
        tls: bool,
        max: u16,
    ) -> Result<ConnTicket, Code> {
        let mut st = self.lock();
        let presence = st.users.entry(user.to_owned()).or_insert_with(|| Presence {
            groups: groups.clone().into(),
            tokens: Vec::new(),
            conns: Vec::new(),
            since: SystemTime::now(),
        });
        if presence.conns.len() >= usize::from(max) {
            return Err(Code::TooManyConnections);
        }
        // A fresh password login refreshes the groups (an admin may have
        // changed them) for everyone's later ACL checks.
        presence.groups = groups.into();
        presence.tokens.push(token);
        // Every password login issues a token; while the user stays
        // logged in they would pile up (each RESUME compares them all,
        // under the registry lock). The newest few stay valid.
        let keep = Self::max_tokens(max);
        if presence.tokens.len() > keep {
            let drop = presence.tokens.len() - keep;
            presence.tokens.drain(..drop);
        }
        Ok(self.push_conn(presence, user, peer, tls))
    }

    /// The resume tokens `user` holds now (tests).
    pub fn token_count(&self, user: &str) -> usize {
        self.lock().users.get(user).map_or(0, |p| p.tokens.len())
    }

    /// Adds a spare connection that presented a resume token. Refused if
    /// no live login of `user` issued that token, or if it was issued
    /// under another `credential` than the user's now (the password was
    /// changed since; such tokens are dropped).
    pub fn add_resume(
        &self,
        user: &str,
        token: &TokenHash,
        credential: &TokenHash,
        peer: SocketAddr,
        tls: bool,
        max: u16,
    ) -> Result<ConnTicket, ResumeRefused> {
        let mut st = self.lock();
        let Some(presence) = st.users.get_mut(user) else {
            return Err(ResumeRefused::BadToken);
        };
        // Compare against every token so the time does not depend on
        // which one matched.
        let (matched, current) = presence.tokens.iter().fold((false, false), |acc, t| {
            let m = t.token.matches(token);
            (acc.0 | m, acc.1 | (m & t.credential.matches(credential)))
        });
        if !matched {
            return Err(ResumeRefused::BadToken);
        }
        if !current {
            presence.tokens.retain(|t| t.credential.matches(credential));
            return Err(ResumeRefused::PasswordChanged);
        }
        if presence.conns.len() >= usize::from(max) {
            return Err(ResumeRefused::TooManyConnections);
        }
        Ok(self.push_conn(presence, user, peer, tls))
    }

    fn push_conn(&self, p: &mut Presence, user: &str, peer: SocketAddr, tls: bool) -> ConnTicket {
        let id = self.next_id();
        let kill = self.root.child_token();
        p.conns.push(ConnEntry {
            id,
            peer,
            tls,
            state: ConnState::Draining,
            since: SystemTime::now(),
            demand: None,
            kill: kill.clone(),
            kill_code: Code::Shutdown,
        });
        ConnTicket {
            id,
            user: user.to_owned(),
            groups: p.groups.clone(),
            kill,
        }
    }

    fn with_conn<R>(&self, user: &str, id: u64, f: impl FnOnce(&mut ConnEntry) -> R) -> Option<R> {
        let mut st = self.lock();
        st.users
            .get_mut(user)?
            .conns
            .iter_mut()
            .find(|c| c.id == id)
            .map(f)
    }

    /// Parks a vacant connection's demand sender. A connection being
    /// closed (its kill token fired: kick, logout, shutdown) is not
    /// offered again: the sender is dropped, and its task sees the kill.
    pub fn set_vacant(&self, user: &str, id: u64, demand: oneshot::Sender<Demand>) {
        self.with_conn(user, id, |c| {
            if c.kill.is_cancelled() {
                return;
            }
            c.state = ConnState::Vacant;
            c.since = SystemTime::now();
            c.demand = Some(demand);
        });
    }

    /// Records a state change; leaving Vacant drops the parked sender.
    pub fn set_state(&self, user: &str, id: u64, state: ConnState) {
        self.with_conn(user, id, |c| {
            if state != ConnState::Vacant {
                c.demand = None;
            }
            c.state = state;
            c.since = SystemTime::now();
        });
    }

    /// Why a connection's kill token was cancelled.
    pub fn kill_code(&self, user: &str, id: u64) -> Code {
        self.with_conn(user, id, |c| c.kill_code)
            .unwrap_or(Code::Shutdown)
    }

    /// Removes a closed connection. The user's presence (and its resume
    /// tokens) goes with its last connection. Returns the connections left.
    pub fn remove(&self, user: &str, id: u64) -> usize {
        let mut st = self.lock();
        let Some(p) = st.users.get_mut(user) else {
            return 0;
        };
        p.conns.retain(|c| c.id != id);
        let left = p.conns.len();
        if left == 0 {
            st.users.remove(user);
        }
        left
    }

    /// Closes every connection of `user` with `code` (LOGOUT or a kick).
    /// Returns how many were told to close.
    pub fn close_user(&self, user: &str, code: Code) -> usize {
        let mut st = self.lock();
        let Some(p) = st.users.get_mut(user) else {
            return 0;
        };
        // No resume after logout: the tokens die now, not with the last socket.
        p.tokens.clear();
        for c in &mut p.conns {
            c.kill_code = code;
            c.kill.cancel();
        }
        p.conns.len()
    }

    /// The users `user` may see, with their vacant connection counts.
    pub fn list_for(&self, user: &str, groups: &[String]) -> Vec<PresenceEntry> {
        let st = self.lock();
        let mut out: Vec<PresenceEntry> = st
            .users
            .iter()
            .filter(|(name, p)| self.acl.allows(user, groups, name, &p.groups))
            .map(|(name, p)| PresenceEntry {
                user: name.clone(),
                vacant: p.conns.iter().filter(|c| c.demand.is_some()).count() as u16,
                connections: p.conns.len() as u16,
            })
            .collect();
        out.sort_by(|a, b| a.user.cmp(&b.user));
        out
    }

    /// For a CONNECT: marks the caller's connection Connecting, checks the
    /// ACL, and takes a vacant connection of `target` other than the
    /// caller's own.
    pub fn reserve(&self, caller: &ConnTicket, target: &str) -> Reserve {
        let mut st = self.lock();
        if let Some(c) = st
            .users
            .get_mut(&caller.user)
            .and_then(|p| p.conns.iter_mut().find(|c| c.id == caller.id))
        {
            c.demand = None;
            c.state = ConnState::Connecting;
            c.since = SystemTime::now();
        }
        let Some(p) = st.users.get_mut(target) else {
            return Reserve::Absent;
        };
        if !self
            .acl
            .allows(&caller.user, &caller.groups, target, &p.groups)
        {
            return Reserve::Refused(Code::Forbidden);
        }
        let vacant = p
            .conns
            .iter_mut()
            .find(|c| c.id != caller.id && c.demand.is_some());
        match vacant.and_then(|c| {
            c.state = ConnState::Notifying;
            c.since = SystemTime::now();
            c.demand.take()
        }) {
            Some(demand) => Reserve::Ok {
                session_id: self.next_id(),
                demand,
            },
            None => Reserve::Refused(Code::Busy),
        }
    }

    /// Records a bridged session and marks both connections InSession.
    pub fn start_session(&self, info: SessionInfo) {
        let mut st = self.lock();
        for (user, id) in [
            (&info.caller, info.caller_conn),
            (&info.target, info.target_conn),
        ] {
            if let Some(c) = st
                .users
                .get_mut(user)
                .and_then(|p| p.conns.iter_mut().find(|c| c.id == id))
            {
                c.state = ConnState::InSession;
                c.since = SystemTime::now();
            }
        }
        st.sessions.insert(info.id, info);
    }

    /// Forgets a finished session.
    pub fn end_session(&self, id: u64) -> Option<SessionInfo> {
        self.lock().sessions.remove(&id)
    }

    /// Counts for metrics: (users, connections, vacant, sessions).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let st = self.lock();
        let conns = st.users.values().map(|p| p.conns.len()).sum();
        let vacant = st
            .users
            .values()
            .flat_map(|p| p.conns.iter())
            .filter(|c| c.demand.is_some())
            .count();
        (st.users.len(), conns, vacant, st.sessions.len())
    }

    /// A copy of everything, for `faxgate relay status`.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        let mut users: Vec<UserStatus> = st
            .users
            .iter()
            .map(|(name, p)| UserStatus {
                user: name.clone(),
                groups: p.groups.to_vec(),
                since: epoch(p.since),
                connections: p
                    .conns
                    .iter()
                    .map(|c| ConnStatus {
                        id: c.id,
                        peer: c.peer.to_string(),
                        tls: c.tls,
                        state: c.state,
                        since: epoch(c.since),
                    })
                    .collect(),
            })
            .collect();
        users.sort_by(|a, b| a.user.cmp(&b.user));
        let mut sessions: Vec<SessionStatus> = st
            .sessions
            .values()
            .map(|s| SessionStatus {
                info: s.clone(),
                bytes_up: s.up.load(Ordering::Relaxed),
                bytes_down: s.down.load(Ordering::Relaxed),
            })
            .collect();
        sessions.sort_by_key(|s| s.info.id);
        Snapshot { users, sessions }
    }

    /// Seconds since the epoch now, for session records.
    pub fn now_epoch() -> u64 {
        epoch(SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faxgate_config::AclRule;

    fn g(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// A registry with the default ACL and users "a" and "b" (both in
    /// group "x") logged in from `peer` with `issued`: it and their tickets.
    fn a_and_b_logged_in(
        issued: IssuedToken,
        peer: SocketAddr,
    ) -> (Registry, ConnTicket, ConnTicket) {
        let reg = Registry::new(Acl::new(&AclConfig::default()), CancellationToken::new());
        let a = reg
            .add_login("a", g(&["x"]), issued, peer, false, 4)
            .unwrap();
        let b = reg
            .add_login("b", g(&["x"]), issued, peer, false, 4)
            .unwrap();
        (reg, a, b)
    }

    #[test]
    fn acl_same_group_and_rules() {
        let acl = Acl::new(&AclConfig {
            default: AclDefault::SameGroup,
            allow: vec![AclRule {
                from: "hq".into(),
                to: "*".into(),
            }],
        });
        assert!(acl.allows("a", &g(&["x"]), "b", &g(&["x", "y"])));
        assert!(!acl.allows("a", &g(&["x"]), "b", &g(&["y"])));
        assert!(acl.allows("boss", &g(&["hq"]), "b", &g(&["y"])));
        assert!(!acl.allows("b", &g(&["y"]), "boss", &g(&["hq"])));
        assert!(acl.allows("a", &[], "a", &[]));
        let none = Acl::new(&AclConfig {
            default: AclDefault::None,
            allow: vec![],
        });
        assert!(!none.allows("a", &g(&["x"]), "b", &g(&["x"])));
    }

    #[test]
    fn reserve_takes_one_vacant_connection_at_a_time() {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let tok = TokenHash::of(b"t");
        let cred = TokenHash::of(b"$argon2id$1");
        let issued = IssuedToken {
            token: tok,
            credential: cred,
        };
        let (reg, a, b) = a_and_b_logged_in(issued, peer);
        assert!(matches!(reg.reserve(&a, "b"), Reserve::Refused(Code::Busy)));
        let (tx, _rx) = oneshot::channel();
        reg.set_vacant("b", b.id, tx);
        assert_eq!(reg.list_for("a", &a.groups)[1].vacant, 1);
        assert!(matches!(reg.reserve(&a, "b"), Reserve::Ok { .. }));
        assert!(matches!(reg.reserve(&a, "b"), Reserve::Refused(Code::Busy)));
        assert!(matches!(reg.reserve(&a, "nobody"), Reserve::Absent));
        assert!(
            reg.add_resume("b", &TokenHash::of(b"t"), &cred, peer, false, 4)
                .is_ok()
        );
        assert!(matches!(
            reg.add_resume("b", &TokenHash::of(b"u"), &cred, peer, false, 4),
            Err(ResumeRefused::BadToken)
        ));
        assert_eq!(reg.close_user("b", Code::LoggedOut), 2);
        assert!(b.kill.is_cancelled());
        assert!(matches!(
            reg.add_resume("b", &TokenHash::of(b"t"), &cred, peer, false, 4),
            Err(ResumeRefused::BadToken)
        ));
    }

    /// A killed connection coming back from a demand or a CONNECT (the
    /// kill seen there) is not offered as vacant on its way out, so no
    /// caller reserves it only to hear BUSY.
    #[test]
    fn a_killed_connection_is_not_offered_as_vacant() {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let issued = IssuedToken {
            token: TokenHash::of(b"t"),
            credential: TokenHash::of(b"c"),
        };
        let (reg, a, b) = a_and_b_logged_in(issued, peer);
        reg.close_user("b", Code::Kicked);
        let (tx, _rx) = oneshot::channel();
        reg.set_vacant("b", b.id, tx);
        assert_eq!(reg.counts().2, 0, "a killed connection is vacant");
        assert!(matches!(reg.reserve(&a, "b"), Reserve::Refused(Code::Busy)));
    }
}
