//! Running the external programs we lean on (`pdftoppm`, `pdfinfo`,
//! `scanimage`): a missing program becomes [`ScanError::ToolMissing`]
//! naming its Debian package, a hung one is killed at a deadline.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

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

/// Runs `program args...` to completion with stdin closed, or kills it at
/// `timeout`. Returns its output whatever the exit status; see [`check`].
pub(crate) async fn run(
    program: &Path,
    args: &[&OsStr],
    info: ToolInfo,
    subject: &str,
    timeout: Duration,
) -> Result<Output, ScanError> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let tool = program.display().to_string();
    let child = match child {
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
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(ScanError::ToolFailed {
            tool,
            subject: subject.into(),
            status: "wait failed".into(),
            stderr: e.to_string(),
        }),
        // Dropping the future drops the child, which kills it.
        Err(_) => Err(ScanError::ToolFailed {
            tool,
            subject: subject.into(),
            status: format!("timed out after {timeout:?}"),
            stderr: String::new(),
        }),
    }
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
