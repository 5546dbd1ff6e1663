//! Integration tests of the relay's IPP front (`ipp/INFRA.md`): real
//! listeners on `127.0.0.1:0`, state in a temporary directory, requests
//! over HTTP/1.1 and HTTPS as an IPP client and as a printer agent would
//! send them.
//!
//! - `bad_input`: malformed requests get the right status, and the front
//!   keeps serving; so does a client that stalls or opens too many
//!   connections.
//! - `auth`: INFRA operations need TLS and the site's agent.
//! - `infra`: the agent's session end to end, printer state, cancel,
//!   deregistration.
//! - `durability`: jobs across a restart and across a new device.
//! - `documents`: multi-document jobs: the multiple-operation-time-out,
//!   documents that arrive after their job ended.
//! - `ownership`: only a job's owner (or the site's agent) changes it
//!   or sees its private attributes.
//! - `wake`: wake-up requests, mailer outcomes and the wake timeout.
//! - `parse`: property tests of `message::parse` (what CI runs instead
//!   of the fuzzer in `ipp/fuzz`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[path = "front/auth.rs"]
mod auth;
#[path = "front/bad_input.rs"]
mod bad_input;
#[path = "front/documents.rs"]
mod documents;
#[path = "front/durability.rs"]
mod durability;
#[path = "front/infra.rs"]
mod infra;
#[path = "front/ownership.rs"]
mod ownership;
#[path = "front/parse.rs"]
mod parse;
#[path = "front/wake.rs"]
mod wake;
