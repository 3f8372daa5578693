//! One helper to run a child command: it logs argv, captures stdout, and keeps stderr for the error message.

use std::ffi::OsStr;
use std::process::Stdio;

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{program} failed ({status}): {stderr}")]
    Failed { program: String, status: std::process::ExitStatus, stderr: String },
}

/// Runs `program args…` to completion and returns its stdout. Arguments are passed as argv, never through a shell.
pub fn run<I, S>(program: &str, args: I) -> Result<String, CmdError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    tracing::debug!(program, ?args, "run");
    let out = std::process::Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CmdError::Spawn { program: program.to_owned(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim().lines().last().unwrap_or("").to_owned();
        return Err(CmdError::Failed { program: program.to_owned(), status: out.status, stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
