//! `faxgate relay`: run the relay server, manage users, show status,
//! kick a user.

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use faxgate_config::RelayServerConfig;
use faxgate_relay::RelayServer;
use faxgate_relay::store::UserStore;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Arguments of `faxgate relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The relay config file (see config/examples/relay.toml).
    #[arg(long, short, global = true, default_value = "relay.toml")]
    config: PathBuf,
    #[command(subcommand)]
    action: Option<RelayAction>,
}

#[derive(Debug, Subcommand)]
enum RelayAction {
    /// Manage the users in the relay's user store.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Show who is logged in, the sessions and their bytes.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Close every connection of a user (admin token required).
    Kick {
        /// The user ID.
        user: String,
    },
}

#[derive(Debug, Subcommand)]
enum UserAction {
    /// Add a user. The password is read from --password-env or stdin.
    Add {
        /// The user ID.
        name: String,
        /// A group to join (repeatable).
        #[arg(long = "group", short = 'g')]
        groups: Vec<String>,
        /// Read the password from this environment variable.
        #[arg(long)]
        password_env: Option<String>,
    },
    /// Set a new password (from --password-env or stdin).
    Passwd {
        /// The user ID.
        name: String,
        /// Read the password from this environment variable.
        #[arg(long)]
        password_env: Option<String>,
    },
    /// Disable a user: it can no longer log in.
    Disable {
        /// The user ID.
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        /// The user ID.
        name: String,
    },
    /// Replace a user's groups.
    Groups {
        /// The user ID.
        name: String,
        /// The groups (repeatable); none leaves the user in no group.
        #[arg(long = "group", short = 'g')]
        groups: Vec<String>,
    },
    /// Delete a user.
    Del {
        /// The user ID.
        name: String,
    },
    /// List users.
    List,
}

/// Runs `faxgate relay ...`.
pub async fn run(args: RelayArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = RelayServerConfig::from_file(&args.config)?;
    match args.action {
        None => serve(config, shutdown).await,
        Some(RelayAction::User { action }) => {
            tokio::task::spawn_blocking(move || users(&config, action)).await?
        }
        Some(RelayAction::Status { json }) => status(&config, json).await,
        Some(RelayAction::Kick { user }) => kick(&config, &user).await,
    }
}

async fn serve(config: RelayServerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ipp_cfg = config.ipp.clone();
    let mailer_cfg = config.mailer.clone();
    let state_dir = config.relay.state_dir.clone();
    let tls_files = config
        .relay
        .tls
        .as_ref()
        .map(|t| (t.cert.clone(), t.key.clone()));
    let server = RelayServer::start(config, shutdown.clone()).await?;
    let front = match ipp_cfg {
        None => None,
        Some(ipp_cfg) => Some(
            crate::relay_topology::start_ipp_front(
                ipp_cfg,
                mailer_cfg,
                &state_dir,
                tls_files,
                &server,
                shutdown.clone(),
            )
            .await
            .context("while starting the IPP front")?,
        ),
    };
    if let Some(front) = &front {
        for (what, addr) in [("ipp (http)", front.addr), ("ipp (https)", front.tls_addr)] {
            if let Some(a) = addr {
                println!("{what} listening on {a}");
            }
        }
    }
    if let Some(id) = &server.identity {
        println!(
            "relay TLS certificate fingerprint (SHA-256): {}",
            faxgate_relay::tls::format_fingerprint(&id.fingerprint)
        );
    }
    for (what, addr) in [
        ("relay (tcp)", server.tcp_addr),
        ("relay (tls)", server.tls_addr),
        ("status", server.status_addr),
    ] {
        if let Some(a) = addr {
            println!("{what} listening on {a}");
        }
    }
    shutdown.cancelled().await;
    if let Some(front) = front
        && !front.shutdown(Duration::from_secs(10)).await
    {
        tracing::warn!("Some IPP connections did not close within 10 s.");
    }
    if !server.shutdown(Duration::from_secs(10)).await {
        tracing::warn!("Some connections did not close within 10 s.");
    }
    Ok(())
}

fn open_store(config: &RelayServerConfig) -> anyhow::Result<UserStore> {
    let r = &config.relay;
    std::fs::create_dir_all(&r.state_dir)
        .with_context(|| format!("while creating {}", r.state_dir.display()))?;
    Ok(UserStore::open(
        &r.state_dir.join("users.db"),
        r.argon2_memory_kib,
        r.argon2_iterations,
    )?)
}

fn users(config: &RelayServerConfig, action: UserAction) -> anyhow::Result<()> {
    let store = open_store(config)?;
    match action {
        UserAction::Add {
            name,
            groups,
            password_env,
        } => {
            let pw = super::read_password(password_env.as_deref())?;
            store.add_user(&name, &pw, &groups)?;
            println!("added user {name}");
        }
        UserAction::Passwd { name, password_env } => {
            let pw = super::read_password(password_env.as_deref())?;
            store.set_password(&name, &pw)?;
            println!("password changed for {name}");
        }
        UserAction::Disable { name } => {
            store.set_disabled(&name, true)?;
            println!("disabled {name} (kick it to close its live connections)");
        }
        UserAction::Enable { name } => {
            store.set_disabled(&name, false)?;
            println!("enabled {name}");
        }
        UserAction::Groups { name, groups } => {
            store.set_groups(&name, &groups)?;
            println!("{name} is now in: {}", groups.join(", "));
        }
        UserAction::Del { name } => {
            store.delete_user(&name)?;
            println!("deleted {name}");
        }
        UserAction::List => {
            println!("{:<24} {:<9} groups", "user", "state");
            for u in store.list()? {
                let state = if u.disabled { "disabled" } else { "enabled" };
                println!("{:<24} {:<9} {}", u.name, state, u.groups.join(","));
            }
        }
    }
    Ok(())
}

/// A minimal HTTP/1.1 request to the status endpoint, through hyper.
async fn http(
    config: &RelayServerConfig,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    let status = config
        .status
        .as_ref()
        .context("the config has no [status] section, so there is no status endpoint")?;
    let addr = status.listen;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| {
            format!("while connecting to the status endpoint at {addr}; is the relay running?")
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = sender
        .send_request(req.body(Empty::<bytes::Bytes>::new())?)
        .await?;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

async fn status(config: &RelayServerConfig, json: bool) -> anyhow::Result<()> {
    let (code, body) = http(config, "GET", "/status", None).await?;
    if code != 200 {
        bail!("status endpoint answered {code}: {body}");
    }
    if json {
        println!("{body}");
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("while parsing /status")?;
    println!(
        "users logged in: {}   connections: {} ({} vacant)   sessions: {}",
        v["users_logged_in"], v["connections"], v["vacant"], v["sessions_active"]
    );
    for u in v["users"].as_array().into_iter().flatten() {
        println!("user {}", u["user"].as_str().unwrap_or("?"));
        for c in u["connections"].as_array().into_iter().flatten() {
            println!(
                "  conn {:<6} {:<22} {:<11} tls={}",
                c["id"],
                c["peer"].as_str().unwrap_or("?"),
                c["state"].as_str().unwrap_or("?"),
                c["tls"]
            );
        }
    }
    for s in v["sessions"].as_array().into_iter().flatten() {
        println!(
            "session {} {} -> {}: {} bytes up, {} bytes down",
            s["id"],
            s["caller"].as_str().unwrap_or("?"),
            s["target"].as_str().unwrap_or("?"),
            s["bytes_up"],
            s["bytes_down"]
        );
    }
    Ok(())
}

async fn kick(config: &RelayServerConfig, user: &str) -> anyhow::Result<()> {
    let token = config
        .status
        .as_ref()
        .and_then(|s| s.admin_token.as_ref())
        .context("kick needs status.admin_token in the config")?;
    let (code, body) = http(
        config,
        "POST",
        // The path is percent-decoded; user IDs may hold '%'.
        &format!("/admin/kick/{}", user.replace('%', "%25")),
        Some(token.expose()),
    )
    .await?;
    if code != 200 {
        bail!("kick failed ({code}): {}", body.trim());
    }
    println!("{}", body.trim());
    Ok(())
}
