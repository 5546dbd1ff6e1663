//! Running the external programs we lean on (`pdftoppm`, `pdfinfo`,
//! `scanimage`): a missing program becomes [`ScanError::ToolMissing`]
//! naming its Debian package, a hung one is killed at a deadline.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::error::ScanError;

/// An external program and where it comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ToolInfo {
    /// The Debian package that ships it.
    pub package: &'static str,
    /// What we need it for, for the error message.
    pub purpose: &'static str,
}

/// The most bytes read from a tool's stdout (a single scanned page comes
/// this way: 256 MiB is an A4 page at 1200 dpi grey with room to spare).
/// More is refused with [`ScanError::ToolFailed`] and the tool is killed.
pub(crate) const MAX_TOOL_STDOUT: u64 = 256 << 20;

/// The most bytes of a tool's stderr kept for messages; the rest is read
/// and dropped so that the tool never blocks on a full pipe.
const MAX_TOOL_STDERR: u64 = 64 << 10;

/// How long a killed tool gets to be reaped before we leave it to tokio.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why collecting a tool's output stopped early.
enum Collect {
    /// stdout passed [`MAX_TOOL_STDOUT`].
    Overflow,
    /// Reading a pipe or waiting failed.
    Io(std::io::Error),
}

impl From<std::io::Error> for Collect {
    fn from(e: std::io::Error) -> Self {
        Collect::Io(e)
    }
}

/// Runs `program args...` to completion with stdin closed and the C locale
/// (so that messages we match, such as scanimage's "out of documents", are
/// in English), or kills it at `timeout`. At most [`MAX_TOOL_STDOUT`]
/// bytes of stdout are read. Returns its output whatever the exit status;
/// see [`check`]. A killed tool is reaped, and what it wrote to stderr is
/// in the error.
pub(crate) async fn run(
    program: &Path,
    args: &[&OsStr],
    info: ToolInfo,
    subject: &str,
    timeout: Duration,
) -> Result<Output, ScanError> {
    run_limited(program, args, info, subject, timeout, MAX_TOOL_STDOUT).await
}

/// [`run`] with a given stdout limit.
pub(crate) async fn run_limited(
    program: &Path,
    args: &[&OsStr],
    info: ToolInfo,
    subject: &str,
    timeout: Duration,
    max_stdout: u64,
) -> Result<Output, ScanError> {
    let child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .env_remove("LANGUAGE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let tool = program.display().to_string();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ScanError::ToolMissing {
                tool,
                purpose: info.purpose,
                package: info.package,
            });
        }
        Err(e) => {
            return Err(ScanError::ToolFailed {
                tool,
                subject: subject.into(),
                status: "could not start".into(),
                stderr: e.to_string(),
            });
        }
    };
    let mut stdout_pipe = child.stdout.take();
    let mut stderr_pipe = child.stderr.take();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let collected = tokio::time::timeout(timeout, async {
        tokio::try_join!(
            read_capped(stdout_pipe.as_mut(), &mut stdout, max_stdout),
            read_stderr(stderr_pipe.as_mut(), &mut stderr),
        )?;
        Ok::<_, Collect>(child.wait().await?)
    })
    .await;
    let status = match collected {
        Ok(Ok(status)) => {
            return Ok(Output {
                status,
                stdout,
                stderr,
            });
        }
        Ok(Err(Collect::Overflow)) => {
            format!("it wrote more than {max_stdout} bytes to stdout, the limit; it was stopped")
        }
        Ok(Err(Collect::Io(e))) => format!("reading its output failed: {e}"),
        Err(_) => format!("timed out after {timeout:?}"),
    };
    // Kill and reap it; if even that hangs, kill_on_drop and tokio's
    // orphan reaping take over.
    let _ = child.start_kill();
    let _ = tokio::time::timeout(REAP_TIMEOUT, child.wait()).await;
    Err(ScanError::ToolFailed {
        tool,
        subject: subject.into(),
        status,
        stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
    })
}

/// Reads a pipe into `buf`, failing once it holds more than `max` bytes.
async fn read_capped<R: AsyncRead + Unpin>(
    pipe: Option<&mut R>,
    buf: &mut Vec<u8>,
    max: u64,
) -> Result<(), Collect> {
    let Some(pipe) = pipe else {
        return Ok(());
    };
    pipe.take(max.saturating_add(1)).read_to_end(buf).await?;
    if buf.len() as u64 > max {
        return Err(Collect::Overflow);
    }
    Ok(())
}

/// Keeps the first [`MAX_TOOL_STDERR`] bytes of a pipe and drains the rest.
async fn read_stderr<R: AsyncRead + Unpin>(
    pipe: Option<&mut R>,
    buf: &mut Vec<u8>,
) -> Result<(), Collect> {
    let Some(pipe) = pipe else {
        return Ok(());
    };
    (&mut *pipe).take(MAX_TOOL_STDERR).read_to_end(buf).await?;
    tokio::io::copy(pipe, &mut tokio::io::sink()).await?;
    Ok(())
}

/// stderr as trimmed text.
pub(crate) fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// `Ok(out)` if the program exited with status 0, else `ToolFailed` with
/// its stderr.
pub(crate) fn check(program: &Path, subject: &str, out: Output) -> Result<Output, ScanError> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(ScanError::ToolFailed {
            tool: program.display().to_string(),
            subject: subject.into(),
            status: out.status.to_string(),
            stderr: stderr_text(&out),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SH: ToolInfo = ToolInfo {
        package: "dash",
        purpose: "tests",
    };

    async fn sh(script: &str, timeout: Duration, max: u64) -> Result<Output, ScanError> {
        let args: [&OsStr; 2] = ["-c".as_ref(), script.as_ref()];
        run_limited(Path::new("sh"), &args, SH, "test", timeout, max).await
    }

    #[tokio::test]
    async fn tools_run_in_the_c_locale() {
        let out = sh("echo \"$LC_ALL $LANG\"", Duration::from_secs(10), 1024)
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "C C");
    }

    #[tokio::test]
    async fn stdout_over_the_limit_is_refused_naming_tool_and_limit() {
        let err = sh(
            "i=0; while [ $i -lt 2000 ]; do echo 0123456789; i=$((i+1)); done",
            Duration::from_secs(20),
            1000,
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ScanError::ToolFailed { .. }), "{msg}");
        assert!(msg.contains("sh") && msg.contains("1000"), "{msg}");
    }

    #[tokio::test]
    async fn a_timed_out_tool_keeps_its_stderr_and_is_reaped() {
        let start = std::time::Instant::now();
        let err = sh(
            "echo 'still warming up' >&2; sleep 30",
            Duration::from_millis(500),
            1024,
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("timed out") && msg.contains("still warming up"),
            "{msg}"
        );
        assert!(start.elapsed() < Duration::from_secs(10), "{msg}");
    }
}
