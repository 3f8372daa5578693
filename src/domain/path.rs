//! `ConfPath`: an absolute path that may be written into an OpenVPN config line unquoted.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{DomainError, shown};

/// An absolute UTF-8 path with no whitespace, quotes, `#`, `;`, backslash or control characters: OpenVPN's config
/// parser splits on whitespace and treats `#`/`;` as comments, so anything else could change what a line means.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfPath(PathBuf);

impl ConfPath {
    pub fn new(p: impl AsRef<Path>) -> Result<Self, DomainError> {
        let p = p.as_ref();
        let Some(s) = p.to_str() else {
            return Err(DomainError::Path { shown: shown(&p.to_string_lossy()), why: "not valid UTF-8" });
        };
        let err = |why| DomainError::Path { shown: shown(s), why };
        if !p.is_absolute() {
            return Err(err("must be absolute"));
        }
        if s.len() > 1024 {
            return Err(err("longer than 1024 bytes"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '#' | ';' | '\\')) {
            return Err(err(
                "whitespace, quotes, '#', ';', '\\' and control characters cannot appear in an OpenVPN config path",
            ));
        }
        Ok(ConfPath(p.to_path_buf()))
    }

    pub fn join(&self, child: &str) -> Result<Self, DomainError> {
        ConfPath::new(self.0.join(child))
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ConfPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl fmt::Display for ConfPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Checked UTF-8 in `new`.
        f.write_str(self.0.to_str().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_that_would_break_a_config_line() {
        for bad in ["relative/x", "/a b", "/a\nup /bin/sh", "/a\"b", "/a#b", "/a;b", "/a\tb"] {
            assert!(ConfPath::new(bad).is_err(), "{bad:?}");
        }
        assert!(ConfPath::new("/batm/vpn/t0/server.conf").is_ok());
    }
}
