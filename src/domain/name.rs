//! `Name`: a terminal or admin credential name. It becomes a certificate CN, a file name, a management-interface
//! argument and part of log lines, so it is deliberately narrow.

use std::fmt;
use std::str::FromStr;

use super::{DomainError, shown};

/// 1 to 64 characters of `[A-Za-z0-9._-]`, starting with a letter or digit, with no `..`.
///
/// Why this set: OpenVPN's management parser splits on whitespace and quotes, config lines end at a newline, and
/// names are used as file names (`..` and `/` would escape the directory).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    pub const MAX_LEN: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = DomainError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let err = |why| DomainError::Name { shown: shown(raw), why };
        if raw.is_empty() {
            return Err(err("it is empty"));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(err("longer than 64 characters"));
        }
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(err("only letters, digits, '.', '_' and '-' are allowed"));
        }
        if !raw.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(err("it must start with a letter or digit"));
        }
        if raw.contains("..") {
            return Err(err("it must not contain '..'"));
        }
        Ok(Name(raw.to_owned()))
    }
}

impl TryFrom<String> for Name {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, not `write_str`: honours width and alignment in tables.
        f.pad(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["atm-001", "BT300.lisbon_2", "a", &"x".repeat(64)] {
            assert_eq!(ok.parse::<Name>().unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_hostile_names() {
        let long = "a".repeat(300);
        for bad in [
            "",
            "atm 1",
            "atm\n",
            "atm\nup /bin/sh",
            "\"q\"",
            "'q'",
            "../etc",
            "a/b",
            "a..b",
            ".hidden",
            "-flag",
            "tab\tx",
            "ünï",
            "a\\b",
            "a;b",
            "a#b",
            "a\0b",
            &long,
        ] {
            let e = bad.parse::<Name>().unwrap_err();
            assert!(!e.to_string().contains('\n'), "error message must stay on one line: {e}");
        }
    }
}
