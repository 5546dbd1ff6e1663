//! faxgate-ipp: printing through a firewall (seed 000) on IPP.
//!
//! The relay's IPP front is a PWG 5100.18 *Infrastructure Printer*: one
//! public server site per printer agent, serving standard IPP clients
//! (RFC 8011) and the agents' INFRA operations. The appliance's print agent
//! is the INFRA *Proxy*; it uses [`client`] to reach the front.
//! `INFRA.md` is the contract between the two.
//!
//! # Layout
//!
//! - [`codes`]: operation, status and state codes, including the INFRA,
//!   notification and Get-Printers ones the `ipp` crate lacks.
//! - [`message`]: pure helpers over the `ipp` crate's request type: request
//!   checks (RFC 8011 section 4.1), attribute getters and response
//!   builders.
//! - [`client`]: an IPP client over HTTP/1.1 or HTTPS with Basic
//!   authentication, streaming documents both ways.
//! - [`server`]: the front: HTTP listener, sites, durable job spool
//!   (SQLite plus files), INFRA, notifications and wake-up requests.

#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
pub mod codes;
pub mod message;
pub mod server;
