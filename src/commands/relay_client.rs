//! `faxgate relay-client`: try the relay by hand. `connect` and `listen`
//! pipe standard input and output through a session, like netcat through
//! the relay.

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use faxgate_config::{ClientTlsConfig, RelayClientConfig, Secret};
use faxgate_relay::{RelayClient, Session};
use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Arguments of `faxgate relay-client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// A client config file (see config/examples/relay-client.toml).
    /// Flags below override it or replace it.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Relay host:port.
    #[arg(long, global = true)]
    server: Option<String>,
    /// User ID to log in as.
    #[arg(long, global = true)]
    user: Option<String>,
    /// Read the password from this environment variable (default: the
    /// config file, else FAXGATE_PASSWORD).
    #[arg(long, global = true)]
    password_env: Option<String>,
    /// Use TLS and accept only the certificate with this SHA-256.
    #[arg(long, global = true)]
    pin: Option<String>,
    #[command(subcommand)]
    action: ClientAction,
}

#[derive(Debug, Subcommand)]
enum ClientAction {
    /// Log in and stay logged in (HOLD, spares) until Ctrl-C.
    Login,
    /// Print the logged-in users you may reach.
    List,
    /// Connect to a user and pipe stdin/stdout through the session.
    Connect {
        /// The target user ID.
        target: String,
    },
    /// Wait for demands; accept and pipe stdin/stdout through each.
    Listen {
        /// Exit after the first session.
        #[arg(long)]
        once: bool,
    },
}

fn build_config(a: &ClientArgs) -> anyhow::Result<RelayClientConfig> {
    let mut cfg = match &a.config {
        Some(p) => RelayClientConfig::from_file(p)?,
        None => {
            let server = a.server.clone().context("give --config or --server")?;
            let user = a.user.clone().context("give --config or --user")?;
            let var = a.password_env.as_deref().unwrap_or("FAXGATE_PASSWORD");
            let pw = std::env::var(var)
                .with_context(|| format!("set the password in ${var} (or use --password-env)"))?;
            let text = format!(
                "server = {server:?}\nuser = {user:?}\npassword = \"x\"\nreconnect_initial = \"200ms\"\n"
            );
            let mut c = RelayClientConfig::from_str(&text)?;
            c.password = Secret::new(pw);
            c
        }
    };
    if let Some(s) = &a.server {
        cfg.server = s.clone();
    }
    if let Some(u) = &a.user {
        cfg.user = u.clone();
    }
    if let (Some(var), Some(_)) = (&a.password_env, &a.config) {
        cfg.password =
            Secret::new(std::env::var(var).with_context(|| format!("while reading ${var}"))?);
    }
    if let Some(pin) = &a.pin {
        cfg.tls = Some(ClientTlsConfig {
            pin_sha256: Some(pin.clone()),
            ca_file: None,
            server_name: None,
        });
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Runs `faxgate relay-client ...`.
pub async fn run(args: ClientArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cfg = build_config(&args)?;
    let (client, mut incoming) = RelayClient::start(cfg)
        .await
        .context("while logging in to the relay")?;
    let result = match args.action {
        ClientAction::Login => {
            let s = client.status();
            eprintln!(
                "logged in as {} ({} connections); Ctrl-C logs out",
                client.user(),
                s.connections
            );
            shutdown.cancelled().await;
            Ok(())
        }
        ClientAction::List => {
            let users = client.list().await?;
            println!("{:<24} {:>6} {:>11}", "user", "vacant", "connections");
            for u in users {
                println!("{:<24} {:>6} {:>11}", u.user, u.vacant, u.connections);
            }
            Ok(())
        }
        ClientAction::Connect { target } => {
            let session = tokio::select! {
                s = client.connect(&target) => s.with_context(|| format!("while connecting to {target}"))?,
                _ = shutdown.cancelled() => bail!("interrupted"),
            };
            eprintln!("connected to {} (session {})", session.peer(), session.id());
            pipe(session, &shutdown).await
        }
        ClientAction::Listen { once } => loop {
            let demand = tokio::select! {
                d = incoming.recv() => d.context("the client stopped")?,
                _ = shutdown.cancelled() => break Ok(()),
            };
            eprintln!(
                "demand from {} (session {}); accepting",
                demand.from, demand.session_id
            );
            let session = demand.accept().await?;
            let r = pipe(session, &shutdown).await;
            if once || r.is_err() || shutdown.is_cancelled() {
                break r;
            }
        },
    };
    if let Err(e) = client.logout().await {
        tracing::debug!(error = %e, "Logout did not complete cleanly.");
    }
    result
}

/// Copies stdin into the session and the session to stdout. TERMINATE
/// is a half-close, like TCP's FIN: stdin EOF sends ours, the peer's ends
/// the output, and the session ends when both have. Stdin read before the
/// peer's TERMINATE, or after it, is still sent in full (the relay gives
/// that side its terminate deadline to finish).
async fn pipe(session: Session, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let (mut rx, mut tx) = tokio::io::split(session);
    {
        let up = async {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stdin.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                tx.write_all(&buf[..n]).await?;
                tx.flush().await?;
            }
            tx.shutdown().await?;
            anyhow::Ok(())
        };
        let down = async {
            let mut stdout = tokio::io::stdout();
            tokio::io::copy(&mut rx, &mut stdout).await?;
            stdout.flush().await?;
            anyhow::Ok(())
        };
        tokio::pin!(up, down);
        tokio::select! {
            r = &mut down => {
                r?;
                // The peer is done sending, not done reading: what stdin
                // still has goes out before our TERMINATE.
                tokio::select! {
                    r = &mut up => r?,
                    _ = shutdown.cancelled() => bail!("interrupted"),
                }
            }
            r = &mut up => {
                r?;
                tokio::select! {
                    r = &mut down => r?,
                    _ = shutdown.cancelled() => bail!("interrupted"),
                }
            }
            _ = shutdown.cancelled() => bail!("interrupted"),
        }
    }
    let session = rx.unsplit(tx);
    tokio::time::timeout(Duration::from_secs(30), session.close())
        .await
        .context("while ending the session")??;
    Ok(())
}
