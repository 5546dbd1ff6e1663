//! `faxgate demo`: the README's main job. For now it shows the relay:
//! a relay with a generated certificate and two demo branches, tokyo and
//! osaka, that log in over TLS (pinned), find each other, and exchange a
//! message through a bridged session. Later issues grow it into the full
//! scan-to-print demo.

use anyhow::{Context as _, ensure};
use clap::Args;
use faxgate_config::{ClientTlsConfig, RelayClientConfig, RelayServerConfig, Secret};
use faxgate_relay::{RelayClient, RelayServer};
use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Arguments of `faxgate demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo keeps its relay state and transcript.
    #[arg(long, default_value = "out")]
    out: PathBuf,
}

/// Runs the demo.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let state = args.out.join("demo-relay");
    if state.exists() {
        std::fs::remove_dir_all(&state)
            .with_context(|| format!("while clearing {}", state.display()))?;
    }
    std::fs::create_dir_all(&state)?;
    let config = RelayServerConfig::from_str(&format!(
        "[relay]\nlisten_tls = \"127.0.0.1:0\"\nstate_dir = {:?}\nhold_interval = \"10s\"\n\
         [status]\nlisten = \"127.0.0.1:0\"\n",
        state.display().to_string()
    ))?;
    let server = RelayServer::start(config, shutdown.child_token()).await?;
    let id = server
        .identity
        .as_ref()
        .context("the demo relay has no TLS identity")?;
    let pin = faxgate_relay::tls::format_fingerprint(&id.fingerprint);
    let tls_addr = server
        .tls_addr
        .context("the demo relay has no TLS listener")?;
    println!(
        "relay: TLS on {tls_addr}, certificate generated in {}",
        state.display()
    );
    println!("relay: fingerprint {pin}");

    let store = std::sync::Arc::clone(server.shared.store());
    let mut passwords = Vec::new();
    for user in ["tokyo", "osaka"] {
        let pw = random_password();
        let (s, u, p) = (std::sync::Arc::clone(&store), user.to_owned(), pw.clone());
        tokio::task::spawn_blocking(move || s.add_user(&u, &p, &["branches".to_owned()])).await??;
        passwords.push(pw);
        println!("relay: demo user {user} in group branches");
    }
    let client_cfg = |user: &str, pw: &str| -> anyhow::Result<RelayClientConfig> {
        let mut c = RelayClientConfig::from_str(&format!(
            "server = \"{tls_addr}\"\nuser = \"{user}\"\npassword = \"x\"\n"
        ))?;
        c.password = Secret::new(pw.to_owned());
        c.tls = Some(ClientTlsConfig {
            pin_sha256: Some(pin.clone()),
            ca_file: None,
            server_name: Some("faxgate-relay".into()),
        });
        Ok(c)
    };
    let (osaka, mut osaka_in) = RelayClient::start(client_cfg("osaka", &passwords[1])?).await?;
    let (tokyo, _tokyo_in) = RelayClient::start(client_cfg("tokyo", &passwords[0])?).await?;
    tokyo.wait_vacant(2, Duration::from_secs(10)).await?;
    osaka.wait_vacant(2, Duration::from_secs(10)).await?;
    for u in tokyo.list().await? {
        println!(
            "tokyo sees: {} ({} vacant of {} connections)",
            u.user, u.vacant, u.connections
        );
    }

    let answer = tokio::spawn(async move {
        let demand = osaka_in.recv().await.context("no demand reached osaka")?;
        println!("osaka: demand from {}; accepting", demand.from);
        let mut s = demand.accept().await?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await?;
        println!("osaka: received {:?}", String::from_utf8_lossy(&got));
        s.write_all(b"Received in Osaka, thank you.").await?;
        s.shutdown().await?;
        s.close().await?;
        anyhow::Ok(got)
    });
    let mut session = tokyo.connect("osaka").await?;
    println!(
        "tokyo: bridged to {} (session {})",
        session.peer(),
        session.id()
    );
    let message = b"Hello from Tokyo: this message crossed the relay unchanged.";
    session.write_all(message).await?;
    session.shutdown().await?;
    let mut reply = Vec::new();
    session.read_to_end(&mut reply).await?;
    println!("tokyo: received {:?}", String::from_utf8_lossy(&reply));
    session.close().await?;
    let got = answer.await??;
    ensure!(
        got == message,
        "osaka received different bytes than tokyo sent"
    );

    let transcript = state.join("transcript.txt");
    std::fs::write(
        &transcript,
        format!(
            "tokyo -> osaka: {}\nosaka -> tokyo: {}\n",
            String::from_utf8_lossy(message),
            String::from_utf8_lossy(&reply)
        ),
    )?;
    tokyo.logout().await?;
    osaka.logout().await?;
    println!("demo: done; transcript in {}", transcript.display());
    server.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

fn random_password() -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}
