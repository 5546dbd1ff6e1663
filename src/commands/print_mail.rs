//! `faxgate print --via-mail ADDRESS --proxy URI FILE`: the seed's basic
//! model. The client itself sends the signed command mail that wakes the
//! printer's agent, prints to the server site as a standard IPP client,
//! follows the job, and sends a cancel mail if the agent never attaches.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Args;
use faxgate_config::Secret;
use faxgate_ipp::client::{Document, IppClient};
use faxgate_ipp::codes::{job_state, op};
use faxgate_ipp::message::{self, attribute};
use faxgate_mail::{Command, Kind, Signer, SmtpConfig, SmtpSender, Tls};
use ipp::model::DelimiterTag;
use tokio_util::sync::CancellationToken;

/// The options of the basic model (with `--via-mail`).
#[derive(Debug, Args)]
pub struct ViaMailArgs {
    /// The printer's mail address: send it a signed command mail first.
    #[arg(long, value_name = "ADDRESS", requires = "proxy")]
    pub via_mail: Option<String>,
    /// The server site URI, e.g. ipps://relay:8632/ipp/print/expp1%abc.com.
    #[arg(long, value_name = "URI")]
    pub proxy: Option<String>,
    /// SMTP submission server, HOST:PORT.
    #[arg(long, default_value = "localhost:587")]
    pub smtp: String,
    /// SMTP security: starttls, implicit or none (loopback only).
    #[arg(long, default_value = "starttls")]
    pub smtp_tls: String,
    /// SMTP login.
    #[arg(long)]
    pub smtp_user: Option<String>,
    /// Environment variable holding the SMTP password.
    #[arg(long)]
    pub smtp_password_env: Option<String>,
    /// The From address of the command mail.
    #[arg(long, default_value = "faxgate-print@localhost")]
    pub from: String,
    /// Environment variable holding the printer's key in hex (HMAC
    /// secret, or Ed25519 seed with --scheme ed25519).
    #[arg(long, default_value = "FAXGATE_PRINTER_KEY")]
    pub key_env: String,
    /// hmac-sha256 or ed25519.
    #[arg(long, default_value = "hmac-sha256")]
    pub scheme: String,
    /// How long the agent has to fetch the job before a cancel mail goes.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub attach_timeout: Duration,
    /// SHA-256 fingerprint of the site's certificate (ipps://).
    #[arg(long)]
    pub pin: Option<String>,
    /// document-format (default: from the file name, else
    /// application/octet-stream).
    #[arg(long)]
    pub format: Option<String>,
    /// requesting-user-name.
    #[arg(long, env = "USER", default_value = "faxgate")]
    pub user: String,
}

fn guess_format(file: &Path) -> &'static str {
    match file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("pdf") => "application/pdf",
        Some("pwg") => "image/pwg-raster",
        Some("urf") => "image/urf",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("ps") => "application/postscript",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

/// Runs the basic model for `file`.
pub async fn run(
    args: &ViaMailArgs,
    file: &Path,
    title: Option<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (Some(address), Some(proxy)) = (&args.via_mail, &args.proxy) else {
        bail!("--via-mail needs --proxy URI (the server site)");
    };
    let key_hex = std::env::var(&args.key_env)
        .with_context(|| format!("the printer key: set {} to its hex value", args.key_env))?;
    let key = hex::decode(key_hex.trim()).context("the printer key is not hex")?;
    let signer = match args.scheme.as_str() {
        "hmac-sha256" => Signer::hmac(&key)?,
        "ed25519" => Signer::ed25519_from_seed(&key)?,
        other => bail!("--scheme {other}: use hmac-sha256 or ed25519"),
    };
    let (host, port) = args
        .smtp
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .with_context(|| format!("--smtp {}: expected HOST:PORT", args.smtp))?;
    let mut smtp = SmtpConfig::new(host, port);
    smtp.tls = match args.smtp_tls.as_str() {
        "starttls" => Tls::StartTls,
        "implicit" => Tls::Implicit,
        "none" => Tls::None,
        other => bail!("--smtp-tls {other}: use starttls, implicit or none"),
    };
    smtp.user = args.smtp_user.clone();
    if let Some(var) = &args.smtp_password_env {
        smtp.password = Secret::new(
            std::env::var(var).with_context(|| format!("the SMTP password: set {var}"))?,
        );
    }
    let sender = SmtpSender::new(&smtp).context("while preparing SMTP")?;

    let mut builder = IppClient::builder(proxy.clone());
    if let Some(pin) = &args.pin {
        let pin = faxgate_relay::tls::parse_fingerprint(pin)?;
        builder = builder.tls(faxgate_relay::tls::pinned_client_config(pin));
    }
    let client = builder.build().context("while preparing the IPP client")?;

    // 1. Print to the server site, as any IPP client would.
    let format = args
        .format
        .clone()
        .unwrap_or_else(|| guess_format(file).to_owned());
    let title = title.unwrap_or_else(|| {
        file.file_name()
            .map_or_else(|| "document".into(), |s| s.to_string_lossy().into_owned())
    });
    let mut req = message::request(op::PRINT_JOB, proxy, &args.user, 1);
    let ops = DelimiterTag::OperationAttributes;
    req.attributes_mut()
        .add(ops, attribute("job-name", message::name(&title)));
    req.attributes_mut()
        .add(ops, attribute("document-format", message::mime(&format)));
    let resp = client
        .call(req, Some(Document::File(file.to_path_buf())))
        .await
        .with_context(|| format!("while sending {} to {proxy}", file.display()))?;
    let job_id = message::attr(&resp, DelimiterTag::JobAttributes, "job-id")
        .and_then(message::as_int)
        .context("the site's Print-Job answer has no job-id")?;
    println!("job {job_id} accepted by {proxy}");

    // 2. The command mail that wakes the agent (seed 000, basic model).
    let nonce = faxgate_mail::command::random_nonce();
    let now = SystemTime::now();
    let wake = Command::new(
        Kind::Wake,
        proxy.clone(),
        printer_of(proxy),
        vec![job_id as u64],
        now + args.attach_timeout,
        nonce,
    );
    // A server that says "not now" (4xx, greylisting) gets two more
    // tries; one that cannot be reached or refuses for good leaves the
    // job canceled at the site rather than waiting for an agent that no
    // mail will wake.
    let mut tries = 0;
    let sent = loop {
        tries += 1;
        match sender
            .send_command(&wake, &signer, &args.from, address, SystemTime::now())
            .await
        {
            Err(e) if !e.is_permanent() && tries < MAIL_TRIES => {
                let wait = Duration::from_secs(2 << tries);
                eprintln!("command mail not sent yet ({e}); trying again in {wait:?}");
                tokio::select! {
                    () = shutdown.cancelled() => break Err(e),
                    () = tokio::time::sleep(wait) => {}
                }
            }
            r => break r,
        }
    };
    if let Err(e) = sent {
        let mut req = message::request(op::CANCEL_JOB, proxy, &args.user, 1);
        req.attributes_mut().add(
            ops,
            attribute("job-id", ipp::value::IppValue::Integer(job_id)),
        );
        let canceled = match client.call(req, None).await {
            Ok(_) => "canceled".to_owned(),
            Err(c) => format!("not canceled ({c})"),
        };
        return Err(anyhow::Error::new(e).context(format!(
            "while sending the command mail to {address} ({tries} tries); job {job_id} {canceled}"
        )));
    }
    println!("command mail sent to {address}");

    // 3. Follow the job: fetched within the attach timeout, then final.
    let started = Instant::now();
    let mut fetched = false;
    let mut held = false;
    loop {
        let mut req = message::request(op::GET_JOB_ATTRIBUTES, proxy, &args.user, 1);
        req.attributes_mut().add(
            ops,
            attribute("job-id", ipp::value::IppValue::Integer(job_id)),
        );
        let state = match client.call(req, None).await {
            Ok(r) => {
                let state = message::attr(&r, DelimiterTag::JobAttributes, "job-state")
                    .and_then(message::as_int)
                    .unwrap_or(job_state::PENDING);
                let msg = message::attr(&r, DelimiterTag::JobAttributes, "job-state-message")
                    .and_then(message::as_str)
                    .unwrap_or("")
                    .to_owned();
                (state, msg)
            }
            Err(e) => {
                tracing::warn!(error = %e, "Get-Job-Attributes failed; retrying.");
                (job_state::PENDING, String::new())
            }
        };
        if picked_up(state.0) && !fetched {
            fetched = true;
            println!("job {job_id} fetched by the printer agent");
        }
        if state.0 == job_state::PENDING_HELD && !held {
            // The site held it (its wake-up timed out with `on_timeout =
            // hold`): not fetched, so the attach timeout still runs.
            held = true;
            println!("job {job_id} held at the site: {}", state.1);
        }
        if job_state::is_final(state.0) {
            println!(
                "job {job_id} {}{}",
                job_state::name(state.0),
                if state.1.is_empty() {
                    String::new()
                } else {
                    format!(": {}", state.1)
                }
            );
            if state.0 == job_state::COMPLETED {
                return Ok(());
            }
            bail!("job {job_id} ended {}", job_state::name(state.0));
        }
        if !fetched && started.elapsed() >= args.attach_timeout {
            break;
        }
        tokio::select! {
            () = shutdown.cancelled() => bail!("interrupted; job {job_id} stays at the site"),
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }

    // 4. The agent never came: cancel mail, and cancel the job.
    let cancel = Command::new(
        Kind::Cancel,
        proxy.clone(),
        printer_of(proxy),
        vec![job_id as u64],
        SystemTime::now() + args.attach_timeout,
        faxgate_mail::command::random_nonce(),
    );
    let mail = sender
        .send_command(&cancel, &signer, &args.from, address, SystemTime::now())
        .await;
    let mut req = message::request(op::CANCEL_JOB, proxy, &args.user, 1);
    req.attributes_mut().add(
        ops,
        attribute("job-id", ipp::value::IppValue::Integer(job_id)),
    );
    let canceled = client.call(req, None).await;
    bail!(
        "the printer agent did not fetch job {job_id} within {}; cancel mail {}, job {}",
        humantime::format_duration(args.attach_timeout),
        if mail.is_ok() { "sent" } else { "NOT sent" },
        if canceled.is_ok() {
            "canceled"
        } else {
            "not canceled"
        }
    )
}

/// The site name in a site URI (the last path segment).
fn printer_of(uri: &str) -> String {
    uri.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(uri)
        .to_owned()
}

/// Tries at sending the command mail when the server says "not now".
const MAIL_TRIES: u32 = 3;

/// Whether a job in `state` has been taken by a printer agent: it is
/// processing (or stopped while processing) or has ended. A job pending,
/// or held at the site, has not.
fn picked_up(state: i32) -> bool {
    !matches!(state, job_state::PENDING | job_state::PENDING_HELD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_job_is_not_taken_for_fetched() {
        assert!(!picked_up(job_state::PENDING));
        assert!(!picked_up(job_state::PENDING_HELD));
        assert!(picked_up(job_state::PROCESSING));
        assert!(picked_up(job_state::PROCESSING_STOPPED));
        assert!(picked_up(job_state::COMPLETED));
    }
}
