//! The one place where the appliance's actors are built from config and
//! wired together (see ARCHITECTURE.md for the picture).
//!
//! ```text
//!  panel API ──mpsc──▶ outbox ──relay CONNECT──▶ session (T.30/T.38) ──▶ store
//!      │                  ▲                                              │
//!      │ scan (SANE)      └──────────── store (due jobs) ◀───────────────┘
//!      ▼
//!  relay client ──Incoming demands──▶ inbound ──session──▶ store ──wake──▶ print ──▶ printer/archive
//!  modem (RING) ──▶ pstn ──T.30 over Class 1──▶ store ──wake──▶ print
//!                                   all actors ──BusEvent──▶ bus (broadcast)
//!
//!  IMAP watcher ──Incoming commands──▶ agent ──INFRA (outbound)──▶ relay's IPP front
//!                                        └──Print-Job──▶ printer (the same [printer])
//! ```
//!
//! The print agent (`[agent]`) starts before the relay login, so the
//! printer serves its site even while the fax relay is unreachable.
//!
//! Shutdown: the root token is cancelled (SIGTERM); the panel stops
//! taking requests, sessions park at their next page boundary (a page in
//! flight is finished and made durable, or resent after restart), the
//! print actor finishes the document it is printing, the agent finishes
//! the document at the printer (or hands its job back unreported) and
//! deregisters, the modem hangs up a call in progress (its pages are
//! kept as a partial document), then the relay client logs out.
//! [`Appliance::stop`] waits with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use faxgate_config::{ApplianceConfig, FaxResolution, PaperName};
use faxgate_relay::{ClientError, RelayClient};
use faxgate_scanner::{ConvertOptions, Mode, Paper, SaneOptions, SaneScanner};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::appliance::inbound::Inbound;
use crate::appliance::panel::{self, PanelState};
use crate::appliance::pstn::Pstn;
use crate::appliance::store::Store;
use crate::appliance::{AgentHandle, Bus, OutboxHandle, PrintHandle, resolution_of};
use crate::print::Printer;

/// A running appliance.
#[derive(Debug)]
pub struct Appliance {
    /// Where the panel API listens.
    pub panel_addr: SocketAddr,
    /// The relay client (for tests and the demo).
    pub relay: RelayClient,
    /// The event bus.
    pub bus: Bus,
    /// The print agent, when `[agent]` is configured.
    pub agent: Option<AgentHandle>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Appliance {
    /// Builds and starts every actor. Keeps trying to log in to the relay
    /// (with backoff) until it succeeds or `shutdown` fires; a wrong
    /// password is an error at once.
    pub async fn start(cfg: ApplianceConfig, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let store = Store::open(&cfg.state_dir)?;
        let bus = Bus::default();
        let tracker = TaskTracker::new();

        // The print agent needs only the printer and the IPP front, not
        // the fax relay, so it starts first.
        let agent_shutdown = shutdown.child_token();
        let agent = match (&cfg.agent, &cfg.printer) {
            (Some(a), Some(p)) => Some(
                AgentHandle::spawn(
                    a.clone(),
                    &p.uri,
                    &cfg.state_dir,
                    agent_shutdown.clone(),
                    &tracker,
                )
                .context("while starting the print agent")?,
            ),
            _ => None,
        };

        let (relay, incoming) = match login(&cfg, &shutdown).await {
            Ok(r) => r,
            Err(e) => {
                // Let the agent deregister before the error ends the process.
                unwind(&agent_shutdown, &tracker).await;
                return Err(e);
            }
        };
        tracing::info!(user = %relay.user(), "Logged in to the relay.");

        let printer = match &cfg.printer {
            Some(p) => Some(
                Printer::from_uri(&p.uri)
                    .with_context(|| format!("while setting up printer {}", p.uri))?
                    .with_job_timeout(p.job_timeout),
            ),
            None => None,
        };
        let retry = cfg
            .printer
            .as_ref()
            .map_or(Duration::from_secs(30), |p| p.retry);
        let print = PrintHandle::spawn(
            store.clone(),
            printer,
            &cfg.inbox,
            retry,
            bus.clone(),
            shutdown.child_token(),
            &tracker,
        );
        // The telephone line (one actor: it answers calls and places the
        // outbox's calls to tel: numbers).
        let pstn = cfg.modem.as_ref().map(|m| {
            if !m.answer {
                tracing::info!(device = %m.device, "The fax modem is set not to answer; it only places calls.");
            }
            Pstn {
                store: store.clone(),
                modem: m.clone(),
                fax: cfg.fax.clone(),
                inbox: cfg.inbox.clone(),
                print: print.clone(),
                bus: bus.clone(),
            }
            .spawn(shutdown.child_token(), &tracker)
        });
        let outbox = OutboxHandle::spawn(
            store.clone(),
            relay.clone(),
            pstn,
            cfg.fax.clone(),
            bus.clone(),
            shutdown.child_token(),
            &tracker,
        );
        Inbound {
            store: store.clone(),
            fax: cfg.fax.clone(),
            inbox: cfg.inbox.clone(),
            print: print.clone(),
            bus: bus.clone(),
        }
        .spawn(relay.clone(), incoming, shutdown.child_token(), &tracker);

        let scanner = cfg.scanner.as_ref().map(|s| {
            let mut sane = SaneOptions::new(&s.device);
            sane.pages = s.pages;
            sane.resolution_dpi = resolution_of(s.resolution).dpi().1.max(200);
            Arc::new(SaneScanner::new(
                sane,
                convert_options(s.resolution, s.paper, &s.mode),
            ))
        });
        let late = async {
            crate::appliance::hotfolder::spawn(
                &cfg.hot_folders,
                |h| convert_options(h.resolution, h.paper, &h.mode),
                &store,
                &outbox,
                &shutdown,
                &tracker,
            )
            .await?;
            panel::spawn(
                cfg.panel.listen,
                PanelState {
                    store: store.clone(),
                    outbox,
                    relay: relay.clone(),
                    print,
                    scanner,
                    agent: agent.clone(),
                },
                shutdown.child_token(),
                &tracker,
            )
            .await
        };
        let panel_addr = match late.await {
            Ok(addr) => addr,
            Err(e) => {
                // The actors already running (a session may be under way)
                // stop at their safe points, as at a shutdown, before the
                // error ends the process.
                unwind(&shutdown, &tracker).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), relay.logout()).await;
                return Err(e);
            }
        };
        Ok(Appliance {
            panel_addr,
            relay,
            bus,
            agent,
            tracker,
            shutdown,
        })
    }

    /// Stops every actor (if `shutdown` has not already) and waits up to
    /// `deadline` for them to reach their safe points, then logs out.
    pub async fn stop(self, deadline: Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(?deadline, "Some actors did not stop in time.");
        }
        if let Some(agent) = &self.agent {
            let s = agent.status();
            tracing::info!(
                site = %s.site,
                printed = s.jobs_printed,
                canceled = s.jobs_canceled,
                failed = s.jobs_failed,
                "Print agent summary."
            );
        }
        // The relay may be gone (that may be why we stop): a logout gets
        // a few seconds, not forever.
        match tokio::time::timeout(Duration::from_secs(5), self.relay.logout()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "Logout was not clean."),
            Err(_) => tracing::info!("The relay did not answer the logout within 5 s; leaving."),
        }
    }
}

/// Stops what `start` has started so far (cancelling `stop`) and waits
/// up to 10 s for it to reach its safe points.
async fn unwind(stop: &CancellationToken, tracker: &TaskTracker) {
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("Some actors did not stop in time.");
    }
}

/// How scanned and dropped pages become fax pages.
fn convert_options(resolution: FaxResolution, paper: PaperName, mode: &str) -> ConvertOptions {
    ConvertOptions {
        paper: match paper {
            PaperName::A4 => Paper::A4,
            PaperName::Letter => Paper::Letter,
            PaperName::B4 => Paper::B4,
            PaperName::A3 => Paper::A3,
        },
        resolution: resolution_of(resolution),
        mode: if mode == "photo" {
            Mode::Photo
        } else {
            Mode::Text
        },
        ..ConvertOptions::default()
    }
}

/// Logs in, retrying with backoff while the relay is unreachable.
async fn login(
    cfg: &ApplianceConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<(RelayClient, faxgate_relay::client::Incoming)> {
    let mut n = 0;
    loop {
        let attempt = RelayClient::start(cfg.relay.clone())
            .instrument(tracing::info_span!("login", user = %cfg.relay.user));
        match attempt.await {
            Ok(r) => return Ok(r),
            Err(e @ ClientError::Refused { .. }) => {
                return Err(e).context("the relay refused the login");
            }
            Err(e) => {
                let delay = crate::appliance::outbox::backoff(
                    cfg.relay.reconnect_initial,
                    cfg.relay.reconnect_max,
                    n,
                );
                n += 1;
                tracing::warn!(error = %e, retry_in = ?delay, "Cannot reach the relay; will retry.");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => anyhow::bail!("shut down before the relay answered"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use faxgate_config::RelayServerConfig;
    use faxgate_relay::RelayServer;
    use std::str::FromStr as _;

    /// The panel's port is taken, so `Appliance::start` fails after the
    /// relay actor has started. The actors already running are stopped
    /// before the error returns: the device is logged out of the relay
    /// rather than left holding connections (and taking faxes) for a
    /// daemon that exits. The error names the address.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_start_that_fails_part_way_logs_the_device_out_of_the_relay() {
        let dir = tempfile::tempdir().unwrap();
        let relay_cfg = RelayServerConfig::from_str(&format!(
            "[relay]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\nargon2_memory_kib = 64\nargon2_iterations = 1\n",
            dir.path().join("relay").display().to_string()
        ))
        .unwrap();
        let relay = RelayServer::start(relay_cfg, CancellationToken::new())
            .await
            .unwrap();
        relay
            .shared
            .store()
            .add_user("tokyo", "correct horse", &["g".into()])
            .unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_addr = taken.local_addr().unwrap();
        let cfg = ApplianceConfig::from_str(&format!(
            "state_dir = {state:?}\n\
             [relay]\nserver = \"{relay}\"\nuser = \"tokyo\"\npassword = \"correct horse\"\n\
             [printer]\nuri = \"dir:{printed}\"\n\
             [panel]\nlisten = \"{taken_addr}\"\n",
            state = dir.path().join("tokyo").display().to_string(),
            relay = relay.tcp_addr.unwrap(),
            printed = dir.path().join("printed").display(),
        ))
        .unwrap();
        let logged_in = || {
            relay
                .shared
                .registry
                .snapshot()
                .users
                .iter()
                .any(|u| u.user == "tokyo")
        };
        let err = match Appliance::start(cfg, CancellationToken::new()).await {
            Ok(_) => panic!("the appliance started on a taken panel port"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(&taken_addr.to_string()), "{err}");
        // Long enough for a relay actor left running to log in (it took
        // well under a second where it was left running).
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < until {
            assert!(!logged_in(), "tokyo is logged in after the failed start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(taken);
        relay.shutdown(Duration::from_secs(5)).await;
    }
}
