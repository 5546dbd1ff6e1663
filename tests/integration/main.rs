//! Cross-crate integration tests that drive the real `faxgate` binary
//! against real system parts (network namespaces, iptables).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bench;
mod common;
mod convert;
mod cups;
mod demo;
mod fax;
mod infra;
mod infra_mail;
mod modem;
mod nat;
mod netns;
mod print;
mod relay_cli;
