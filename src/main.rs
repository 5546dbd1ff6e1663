//! `faxgate`: the Internet fax and print gateway.
//!
//! This file holds the command line and signal handling only. Each
//! subcommand lives in `commands/`; the relay server itself is built by
//! `faxgate_relay::RelayServer::start`.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod appliance;
mod commands;
mod print;
mod relay_topology;
mod topology;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Internet fax and print gateway.
#[derive(Debug, Parser)]
#[command(name = "faxgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay server, or manage its users and sessions.
    Relay(commands::relay::RelayArgs),
    /// Log in to a relay by hand: login, list, connect, listen.
    RelayClient(commands::relay_client::ClientArgs),
    /// Run the demo: a relay with a generated certificate and two
    /// branches; tokyo faxes the bundled sample to osaka through the
    /// relay, and osaka prints it to a PDF under ./out.
    Demo(commands::demo::DemoArgs),
    /// Run the benchmarks and print ratios against same-run references.
    Bench(commands::bench::BenchArgs),
    /// Convert documents (PBM, TIFF-F, PNG, JPEG, PDF) to TIFF-F, PDF or PBM fax pages.
    Convert(commands::convert::ConvertArgs),
    /// Print a document (TIFF-F, PBM, PNG, JPEG, PDF) on a printer given by URI.
    Print(Box<commands::print::PrintArgs>),
    /// Fax over a telephone line through a Class 1 fax modem: send, receive.
    Modem(commands::modem::ModemArgs),
    /// Run the appliance daemon: relay login, fax sessions, print, panel.
    Appliance(commands::appliance::DaemonArgs),
    /// Send files to a relay user through the running appliance.
    Send(commands::appliance::SendArgs),
    /// Scan with the appliance's scanner and send to a relay user.
    ScanSend(commands::appliance::ScanSendArgs),
    /// The relay directory: who is logged in and reachable.
    Users(commands::appliance::ListArgs),
    /// The appliance's outbox jobs.
    Jobs(commands::appliance::ListArgs),
    /// Cancel an outbox job.
    Cancel(commands::appliance::CancelArgs),
    /// Received documents; `inbox release ID` prints a held one.
    Inbox(commands::appliance::InboxArgs),
    /// The appliance's history: jobs, receptions, refused demands.
    History(commands::appliance::HistoryArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // The demo prints its own story; its logs stay quiet unless asked.
            EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                EnvFilter::new(if matches!(cli.command, Command::Demo(_)) {
                    "warn"
                } else {
                    "info"
                })
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    commands::raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faxgate: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    runtime.spawn(watch_signals(shutdown.clone()));
    let result = runtime.block_on(async {
        match cli.command {
            Command::Relay(a) => commands::relay::run(a, shutdown).await,
            Command::RelayClient(a) => commands::relay_client::run(a, shutdown).await,
            Command::Demo(a) => commands::demo::run(a, shutdown).await,
            Command::Bench(a) => commands::bench::run(a, shutdown).await,
            Command::Convert(a) => commands::convert::run(a).await,
            Command::Print(a) => commands::print::run(*a, shutdown).await,
            Command::Modem(a) => commands::modem::run(a, shutdown).await,
            Command::Appliance(a) => commands::appliance::daemon(a, shutdown).await,
            Command::Send(a) => commands::appliance::send(a).await,
            Command::ScanSend(a) => commands::appliance::scan_send(a).await,
            Command::Users(a) => commands::appliance::users(a).await,
            Command::Jobs(a) => commands::appliance::jobs(a).await,
            Command::Cancel(a) => commands::appliance::cancel(a).await,
            Command::Inbox(a) => commands::appliance::inbox(a).await,
            Command::History(a) => commands::appliance::history(a).await,
        }
    });
    // Tasks still running (e.g. a relay client's pool) end with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faxgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// SIGINT and SIGTERM cancel the root token; every command shuts down
/// from there.
async fn watch_signals(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("Cannot install signal handlers; Ctrl-C will not shut down cleanly.");
        return;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT received; shutting down."),
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down."),
    }
    token.cancel();
}
