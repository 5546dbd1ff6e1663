//! `faxgate bench`: benchmarks that report ratios against a reference
//! measured in the same run (see BENCHMARKS.md).

use clap::Args;
use tokio_util::sync::CancellationToken;

/// Arguments of `faxgate bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {}

/// Runs the benchmarks.
pub async fn run(_args: BenchArgs, _shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::bail!("no benchmark is built yet")
}
