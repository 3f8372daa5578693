//! `ConfigError`: the one error type of the configuration module.
//!
//! Every message is a single line that names the file (and, when the problem comes from a line of it, the 1-based
//! line number and the key), says what is wrong and what is expected. Operators fix config files from these
//! messages alone, often over a slow SSH session, so they must not need a debugger or a second read.

use std::path::PathBuf;

use crate::sys::fs::FsError;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key's value is refused, or the key itself is unknown or repeated.
    #[error("{}:{line}: key {key}: {why}", path.display())]
    Value { path: PathBuf, line: usize, key: String, why: String },

    /// A line that is not a `key=value` pair at all (so there is no key to name).
    #[error("{}:{line}: {why}", path.display())]
    Syntax { path: PathBuf, line: usize, why: String },

    /// Values that are each valid but do not fit together. `keys` names every key involved, with the line each
    /// came from when known (e.g. `keys terminal_ports (line 3) and admin_ports (default)`).
    #[error("{}: {keys}: {why}", path.display())]
    Conflict { path: PathBuf, keys: String, why: String },

    /// A value that did not come from a line of the file (given to a setter such as `GateConfig::set`, or put in a
    /// public field by code) is refused; nothing was changed or written.
    #[error("{}: key {key}: {why}", path.display())]
    Invalid { path: PathBuf, key: String, why: String },

    /// The root directory itself is unusable.
    #[error("invalid root directory {shown}: {why}")]
    Root { shown: String, why: String },

    /// A file could not be read or written: the path and the OS error (from `sys::fs`).
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Renders a key for an error message: as is when it is an ordinary key name, otherwise escaped and cut short
/// (an unknown key is untrusted text, and a newline in it must not forge a second log line).
pub(crate) fn shown_key(key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= 64
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain { key.to_owned() } else { crate::domain::shown(key) }
}
