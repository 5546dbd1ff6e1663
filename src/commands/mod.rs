//! The subcommands of `faxgate`.

pub mod appliance;
pub mod bench;
pub mod bench_fax;
pub mod bench_ipp;
pub mod convert;
pub mod demo;
pub mod modem;
pub mod print;
pub mod print_mail;
pub mod relay;
pub mod relay_client;

/// Raises the soft open-file limit to the hard limit: a relay holds one
/// descriptor per device connection.
pub fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "Cannot raise the open-file limit.");
    }
}

/// Reads a password: from the named environment variable, or else the
/// first line of standard input.
pub fn read_password(env: Option<&str>) -> anyhow::Result<String> {
    use anyhow::Context as _;
    if let Some(var) = env {
        return std::env::var(var)
            .with_context(|| format!("while reading the password from ${var}"));
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("while reading the password from standard input")?;
    let pw = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(!pw.is_empty(), "no password given on standard input");
    Ok(pw)
}
