//! `faxgate demo`: the README's main job. A relay with a generated
//! certificate and two appliances, tokyo and osaka, each logged in over
//! TLS (pinned). Tokyo sends the bundled two-page sample document to
//! osaka through its panel API, exactly as `faxgate send` does; the fax
//! runs as T.30 over T.38 through the relay, and osaka prints it to a PDF
//! in `./out/`.

use anyhow::{Context as _, ensure};
use clap::Args;
use faxgate_config::{ApplianceConfig, RelayServerConfig, Secret};
use faxgate_relay::RelayServer;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::appliance::api;
use crate::topology::Appliance;

/// The bundled sample: two A4 pages at fine resolution, TIFF-F (MMR).
const SAMPLE: &[u8] = include_bytes!("../../assets/sample.tif");

/// Arguments of `faxgate demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo keeps its state, and where the printed PDF goes.
    #[arg(long, default_value = "out")]
    out: PathBuf,
}

/// A relay and two appliances on loopback, as the demo and the fax
/// benchmark use them.
#[derive(Debug)]
pub struct Pair {
    /// The relay.
    pub server: RelayServer,
    /// The sending branch.
    pub tokyo: Appliance,
    /// The receiving branch (prints to a folder).
    pub osaka: Appliance,
}

impl Pair {
    /// Starts a TLS relay with generated certificate and users tokyo and
    /// osaka, then both appliances; state goes under `dir`, osaka prints
    /// PDFs (or `format`) into `printed`. `verbose` prints each step.
    pub async fn start(
        dir: &std::path::Path,
        printed: &std::path::Path,
        format: &str,
        verbose: bool,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Pair> {
        let state = dir.join("demo-relay");
        for sub in ["demo-relay", "demo-tokyo", "demo-osaka"] {
            let p = dir.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p)
                    .with_context(|| format!("while clearing {}", p.display()))?;
            }
        }
        std::fs::create_dir_all(&state)?;
        std::fs::create_dir_all(printed)?;
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
        if verbose {
            println!(
                "relay: TLS on {tls_addr}, certificate generated in {}",
                state.display()
            );
            println!("relay: fingerprint {pin}");
        }
        let store = std::sync::Arc::clone(server.shared.store());
        let mut passwords = Vec::new();
        for user in ["tokyo", "osaka"] {
            let pw = random_password();
            let (s, u, p) = (std::sync::Arc::clone(&store), user.to_owned(), pw.clone());
            tokio::task::spawn_blocking(move || s.add_user(&u, &p, &["branches".to_owned()]))
                .await??;
            passwords.push(pw);
            if verbose {
                println!("relay: demo user {user} in group branches");
            }
        }
        let printed = std::path::absolute(printed)?;
        let appliance_cfg =
            |user: &str, pw: &str, ident: &str| -> anyhow::Result<ApplianceConfig> {
                let home = dir.join(format!("demo-{user}"));
                let text = format!(
                    "state_dir = {state:?}\n\
                 [relay]\nserver = \"{tls_addr}\"\nuser = \"{user}\"\npassword = \"x\"\n\
                 [relay.tls]\npin_sha256 = \"{pin}\"\nserver_name = \"faxgate-relay\"\n\
                 [fax]\nident = \"{ident}\"\n\
                 [printer]\nuri = \"dir:{printed}?format={format}\"\n\
                 [panel]\nlisten = \"127.0.0.1:0\"\n",
                    state = home.display().to_string(),
                    printed = printed.display(),
                );
                let mut c = ApplianceConfig::from_str(&text)?;
                c.relay.password = Secret::new(pw.to_owned());
                Ok(c)
            };
        let osaka = Appliance::start(
            appliance_cfg("osaka", &passwords[1], "+81 6 5555 0200")?,
            shutdown.child_token(),
        )
        .await?;
        let tokyo = Appliance::start(
            appliance_cfg("tokyo", &passwords[0], "+81 3 5555 0100")?,
            shutdown.child_token(),
        )
        .await?;
        tokyo.relay.wait_vacant(2, Duration::from_secs(10)).await?;
        osaka.relay.wait_vacant(2, Duration::from_secs(10)).await?;
        Ok(Pair {
            server,
            tokyo,
            osaka,
        })
    }

    /// Stops both appliances, then the relay.
    pub async fn stop(self) {
        self.tokyo.stop(Duration::from_secs(5)).await;
        self.osaka.stop(Duration::from_secs(5)).await;
        self.server.shutdown(Duration::from_secs(5)).await;
    }
}

/// Runs the demo.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pair = Pair::start(&args.out, &args.out, "pdf", true, &shutdown).await?;
    let (tokyo, osaka) = (&pair.tokyo, &pair.osaka);
    println!("tokyo: panel API on http://{}", tokyo.panel_addr);
    println!("osaka: panel API on http://{}", osaka.panel_addr);
    for u in api(tokyo.panel_addr, "GET", "/api/users", None)
        .await?
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "tokyo sees: {} ({} vacant of {} connections)",
            u["user"].as_str().unwrap_or("?"),
            u["vacant"],
            u["connections"]
        );
    }

    let started = std::time::Instant::now();
    let job = api(
        tokyo.panel_addr,
        "POST",
        "/api/jobs?to=osaka&title=sample.tif",
        Some(SAMPLE.to_vec()),
    )
    .await?;
    let id = job["id"].as_str().context("no job id")?.to_owned();
    println!("tokyo: job {id} queued: {} pages to osaka", job["pages"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let printed = loop {
        ensure!(
            std::time::Instant::now() < deadline,
            "the demo fax did not arrive within 60 s"
        );
        let j = api(tokyo.panel_addr, "GET", &format!("/api/jobs/{id}"), None).await?;
        ensure!(
            !matches!(j["state"].as_str(), Some("failed" | "cancelled")),
            "the demo job ended: {}",
            j["status"]
        );
        let inbox = api(osaka.panel_addr, "GET", "/api/inbox", None).await?;
        let doc = inbox
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["job_id"].as_str() == Some(id.as_str()))
            .cloned();
        if j["state"].as_str() == Some("done")
            && let Some(d) = doc
            && d["print"].as_str() == Some("printed")
        {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = started.elapsed();
    let j = api(tokyo.panel_addr, "GET", &format!("/api/jobs/{id}"), None).await?;
    println!("tokyo: job {id}: {}", j["status"].as_str().unwrap_or("?"));
    println!(
        "osaka: received {} pages from {} ({}), printed in {:.0} ms after sending",
        printed["pages"],
        printed["from"].as_str().unwrap_or("?"),
        printed["remote_ident"].as_str().unwrap_or("?"),
        elapsed.as_secs_f64() * 1000.0
    );
    let pdf = printed["print_reason"].as_str().unwrap_or("?").to_owned();
    pair.stop().await;
    println!("demo: done; the printed fax is {pdf}");
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
