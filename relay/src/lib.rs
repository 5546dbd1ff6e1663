//! faxgate-relay: the relay of seed 001, both ends of it.
//!
//! Devices behind NAT log in to the relay, keep their connections alive
//! with HOLD, and ask to be bridged to another logged-in user. The relay
//! notifies the target on one of its vacant connections, passes its
//! ACCEPT or REJECT back, and then copies bytes both ways unchanged until
//! TERMINATE; RELEASE makes each connection vacant again.
//!
//! # Layout
//! - [`protocol`]: the wire format (pure; see `relay/PROTOCOL.md`).
//! - [`connection`]: a stream with a read buffer, speaking frames.
//! - [`transport`]: plain TCP or TLS under one type; socket tuning.
//! - [`tls`]: certificates, fingerprints, pinning.
//! - [`lean_tls`]: the relay's TLS server stream on rustls's unbuffered
//!   API, holding no TLS buffers while idle.
//! - [`store`]: the SQLite user store with Argon2id hashes.
//! - [`auth`]: password and token checks, failed-login rate limits.
//! - [`registry`]: presence, vacancy, sessions, the ACL.
//! - [`bridge`]: the frame-aware byte pump of a session.
//! - [`server`]: listeners, handshake, one task per connection.
//! - [`status`]: HTTP JSON status, Prometheus metrics, admin kick.
//! - [`metrics`]: the counters behind `/metrics`.
//! - [`client`]: the device side: login, hold, spares, sessions.
//!
//! # Channels
//! A server connection task owns its connection. A CONNECT reaches the
//! target's task through a `oneshot` parked in the [`registry`]; the
//! answer comes back through another `oneshot`, carrying the target's
//! connection for the caller's task to bridge and return. Kicks, logouts
//! and shutdown reach tasks through per-connection `CancellationToken`s.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod bridge;
pub mod client;
pub mod connection;
pub mod lean_tls;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod status;
pub mod store;
pub mod tls;
pub mod transport;

pub use client::{ClientError, IncomingDemand, RelayClient, Session};
pub use protocol::Code;
pub use server::RelayServer;
