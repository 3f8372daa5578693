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
    run_with_input(program, args, None)
}

/// As [`run`], writing `input` to the child's stdin first (e.g. a rule set for `iptables-restore`).
pub fn run_with_input<I, S>(program: &str, args: I, input: Option<&[u8]>) -> Result<String, CmdError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    use std::io::Write as _;
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    tracing::debug!(program, ?args, "run");
    let spawn_err = |source| CmdError::Spawn { program: program.to_owned(), source };
    let mut child = std::process::Command::new(program)
        .args(&args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        // Dropped right after: the child sees end of input.
        stdin.write_all(bytes).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        // The line that says what went wrong is not always the last (nft ends with a caret line under the
        // offending text): keep the last few non-empty lines, on one line.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let stderr = lines[lines.len().saturating_sub(3)..].join(" | ");
        return Err(CmdError::Failed { program: program.to_owned(), status: out.status, stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
