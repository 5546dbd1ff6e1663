//! Counters for the status endpoint. Plain atomics, rendered by hand in
//! the Prometheus text format: about a dozen series do not justify a
//! metrics framework.

use crate::registry::Registry;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Relay counters. Gauges that the registry already knows (users,
/// connections, sessions) are read from it when rendering.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Successful password logins.
    pub logins: AtomicU64,
    /// Successful RESUME logins of spare connections.
    pub resumes: AtomicU64,
    /// Failed logins: unknown user.
    pub fail_unknown_user: AtomicU64,
    /// Failed logins: wrong password.
    pub fail_wrong_password: AtomicU64,
    /// Failed logins: disabled user.
    pub fail_disabled: AtomicU64,
    /// Failed logins: bad resume token.
    pub fail_bad_token: AtomicU64,
    /// Logins refused by the rate limiter.
    pub fail_rate_limited: AtomicU64,
    /// Connections dropped for not finishing the handshake in time.
    pub handshake_timeouts: AtomicU64,
    /// Connections refused because too many were handshaking.
    pub pending_refused: AtomicU64,
    /// Connections closed for bad frames.
    pub protocol_errors: AtomicU64,
    /// Connections closed after 2.5 silent hold intervals.
    pub hold_timeouts: AtomicU64,
    /// CONNECT requests.
    pub connects: AtomicU64,
    /// CONNECT failures by code.
    pub connect_not_logged_in: AtomicU64,
    /// CONNECT: BUSY.
    pub connect_busy: AtomicU64,
    /// CONNECT: FORBIDDEN.
    pub connect_forbidden: AtomicU64,
    /// CONNECT: TIMEOUT.
    pub connect_timeout: AtomicU64,
    /// CONNECT: REJECTED.
    pub connect_rejected: AtomicU64,
    /// Sessions bridged.
    pub sessions: AtomicU64,
    /// Session sides closed for taking no bytes for 2.5 hold intervals.
    pub session_stalls: AtomicU64,
    /// Bytes forwarded caller to target.
    pub bytes_up: AtomicU64,
    /// Bytes forwarded target to caller.
    pub bytes_down: AtomicU64,
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// Connections currently handshaking.
    pub pending: AtomicU64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders all series in the Prometheus text exposition format.
    pub fn render(&self, registry: &Registry) -> String {
        let (users, conns, vacant, sessions) = registry.counts();
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let mut series = |name: &str, kind: &str, help: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP faxgate_relay_{name} {help}");
            let _ = writeln!(out, "# TYPE faxgate_relay_{name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "faxgate_relay_{name}{labels} {v}");
            }
        };
        series(
            "logins_total",
            "counter",
            "Successful logins.",
            &[
                ("{kind=\"password\"}", g(&self.logins)),
                ("{kind=\"resume\"}", g(&self.resumes)),
            ],
        );
        series(
            "login_failures_total",
            "counter",
            "Failed logins by reason.",
            &[
                ("{reason=\"unknown_user\"}", g(&self.fail_unknown_user)),
                ("{reason=\"wrong_password\"}", g(&self.fail_wrong_password)),
                ("{reason=\"disabled\"}", g(&self.fail_disabled)),
                ("{reason=\"bad_token\"}", g(&self.fail_bad_token)),
                ("{reason=\"rate_limited\"}", g(&self.fail_rate_limited)),
                (
                    "{reason=\"handshake_timeout\"}",
                    g(&self.handshake_timeouts),
                ),
                ("{reason=\"too_many_pending\"}", g(&self.pending_refused)),
            ],
        );
        series(
            "connect_requests_total",
            "counter",
            "CONNECT requests.",
            &[("", g(&self.connects))],
        );
        series(
            "connect_failures_total",
            "counter",
            "CONNECT failures by code.",
            &[
                ("{code=\"NOT_LOGGED_IN\"}", g(&self.connect_not_logged_in)),
                ("{code=\"BUSY\"}", g(&self.connect_busy)),
                ("{code=\"FORBIDDEN\"}", g(&self.connect_forbidden)),
                ("{code=\"TIMEOUT\"}", g(&self.connect_timeout)),
                ("{code=\"REJECTED\"}", g(&self.connect_rejected)),
            ],
        );
        series(
            "sessions_total",
            "counter",
            "Sessions bridged.",
            &[("", g(&self.sessions))],
        );
        series(
            "sessions_active",
            "gauge",
            "Sessions bridged now.",
            &[("", sessions as u64)],
        );
        series(
            "bytes_forwarded_total",
            "counter",
            "Session bytes forwarded, frame headers included.",
            &[
                ("{direction=\"caller_to_target\"}", g(&self.bytes_up)),
                ("{direction=\"target_to_caller\"}", g(&self.bytes_down)),
            ],
        );
        series(
            "connections",
            "gauge",
            "Connections by state.",
            &[
                ("{state=\"handshaking\"}", g(&self.pending)),
                ("{state=\"logged_in\"}", conns as u64),
                ("{state=\"vacant\"}", vacant as u64),
            ],
        );
        series(
            "connections_accepted_total",
            "counter",
            "TCP connections accepted.",
            &[("", g(&self.accepted))],
        );
        series(
            "users_logged_in",
            "gauge",
            "Users with at least one connection.",
            &[("", users as u64)],
        );
        series(
            "closed_total",
            "counter",
            "Connections closed by the relay, by reason.",
            &[
                ("{reason=\"hold_timeout\"}", g(&self.hold_timeouts)),
                ("{reason=\"protocol_error\"}", g(&self.protocol_errors)),
                ("{reason=\"session_stall\"}", g(&self.session_stalls)),
            ],
        );
        out
    }
}
