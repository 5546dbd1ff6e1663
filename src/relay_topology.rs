//! The relay's half of the topology: the IPP front (seed 000) and the
//! mailer that wakes printer agents, wired to the running relay server.
//!
//! ```text
//!   IPP clients --HTTP(S)--> IppFront --WakeRequest (mpsc)--> bridge --MailOrder--> Mailer --SMTP-->
//!                               ^                                |                      |
//!                               +---- wake_outcome() <-----------+<---- MailReport -----+
//! ```
//!
//! The appliance's half stays in `topology.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use faxgate_config::{IppFrontSection, MailerSection};
use faxgate_ipp::server::{IppFront, WakeKind, WakeOutcome, WakeRequest};
use faxgate_mail::{
    Kind, MailOrder, MailReport, Mailer, MailerConfig, Signer, SmtpConfig, SmtpSender, Tls,
};
use faxgate_relay::RelayServer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, warn};

/// Starts the IPP front next to a running relay, sharing its user store
/// (agents log in with their relay user ID) and its TLS identity, plus the
/// mailer when any site wakes its agent by mail.
pub async fn start_ipp_front(
    cfg: IppFrontSection,
    mailer_cfg: Option<MailerSection>,
    state_dir: &Path,
    tls_files: Option<(PathBuf, PathBuf)>,
    relay: &RelayServer,
    shutdown: CancellationToken,
) -> anyhow::Result<IppFront> {
    let tls = match (&cfg.listen_tls, &relay.identity) {
        (None, _) => None,
        (Some(_), Some(id)) => Some(Arc::clone(&id.config)),
        (Some(_), None) => {
            let configured = tls_files.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
            let id = faxgate_relay::tls::server_identity(configured, state_dir)
                .context("while loading the TLS certificate for the IPP front")?;
            println!(
                "IPP TLS certificate fingerprint (SHA-256): {}",
                faxgate_relay::tls::format_fingerprint(&id.fingerprint)
            );
            Some(id.config)
        }
    };
    let wakes_by_mail = cfg.sites.iter().any(|s| s.wake.is_some());
    let (wake_tx, wake_rx) = mpsc::unbounded_channel();
    let front = IppFront::start(
        cfg.clone(),
        state_dir,
        Arc::clone(&relay.shared.auth),
        tls,
        wakes_by_mail.then_some(wake_tx),
        shutdown.clone(),
    )
    .await?;
    if wakes_by_mail {
        let m = mailer_cfg.context("a site wakes its agent by mail but [mailer] is missing")?;
        let mailer = start_mailer(&cfg, &m, shutdown.clone())?;
        let front = front.handle();
        tokio::spawn(
            bridge(front, mailer, m.from.clone(), wake_rx, shutdown)
                .instrument(tracing::info_span!("wake-bridge")),
        );
    }
    Ok(front)
}

fn start_mailer(
    cfg: &IppFrontSection,
    m: &MailerSection,
    shutdown: CancellationToken,
) -> anyhow::Result<(Mailer, mpsc::Receiver<MailReport>)> {
    let mut smtp = SmtpConfig::new(m.host.clone(), m.port);
    smtp.tls = match m.tls.as_str() {
        "implicit" => Tls::Implicit,
        "none" => Tls::None,
        _ => Tls::StartTls,
    };
    smtp.ca_file = m.ca_file.clone();
    smtp.user = m.user.clone();
    smtp.password = m.password.clone();
    let sender = SmtpSender::new(&smtp).context("while preparing the SMTP sender")?;
    // Signers are built per mail from the key (ring's keys do not clone);
    // each key is checked once here so a bad one fails at start.
    let mut keys: HashMap<String, (bool, Vec<u8>)> = HashMap::new();
    for site in &cfg.sites {
        let Some(w) = &site.wake else { continue };
        let key = hex::decode(w.key.expose())
            .with_context(|| format!("site {}: wake.key is not hex", site.name))?;
        let ed25519 = w.scheme == "ed25519";
        signer(ed25519, &key).with_context(|| format!("site {}: wake.key", site.name))?;
        keys.insert(site.name.clone(), (ed25519, key));
    }
    let keys = Arc::new(keys);
    let config = MailerConfig {
        retry_initial: m.retry_initial,
        retry_max: m.retry_max,
        max_attempts: m.max_attempts,
    };
    Ok(Mailer::spawn(
        sender,
        Arc::new(move |site: &str| {
            let (ed25519, key) = keys.get(site)?;
            signer(*ed25519, key).ok()
        }),
        config,
        shutdown,
    ))
}

fn signer(ed25519: bool, key: &[u8]) -> Result<Signer, faxgate_mail::KeyError> {
    if ed25519 {
        Signer::ed25519_from_seed(key)
    } else {
        Signer::hmac(key)
    }
}

/// Turns the front's wake requests into mail orders, and the mailer's
/// reports back into outcomes for the front.
async fn bridge(
    front: faxgate_ipp::server::FrontHandle,
    (mailer, mut reports): (Mailer, mpsc::Receiver<MailReport>),
    from: String,
    mut requests: mpsc::UnboundedReceiver<WakeRequest>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some(r) = requests.recv() => {
                let order = MailOrder {
                    kind: match r.kind { WakeKind::Wake => Kind::Wake, WakeKind::Cancel => Kind::Cancel },
                    printer: r.site,
                    to: r.to,
                    from: from.clone(),
                    proxy_uri: r.proxy_uri,
                    jobs: r.jobs,
                    ttl: r.ttl.max(Duration::from_secs(60)),
                    wake: r.wake,
                };
                if mailer.send(order).await.is_err() {
                    warn!("The mailer has stopped; wake-up mails can no longer be sent.");
                }
            }
            Some(report) = reports.recv() => {
                let order = report.order();
                let kind = match order.kind { Kind::Cancel => WakeKind::Cancel, _ => WakeKind::Wake };
                let (site, wake) = (order.printer.clone(), order.wake);
                let outcome = match report {
                    MailReport::Sent { .. } => WakeOutcome::Sent,
                    MailReport::Retrying { error, .. } => WakeOutcome::Retrying { error },
                    MailReport::GaveUp { error, .. } => WakeOutcome::GaveUp { error },
                };
                front.wake_outcome(&site, kind, wake, outcome);
            }
            else => return,
        }
    }
}
