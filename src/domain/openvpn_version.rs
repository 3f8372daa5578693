//! The OpenVPN version a terminal reports when it pairs, and whether it can use the profiles cas-vpn issues. Every
//! terminal profile relies on tls-crypt-v2 (the front port routes by its wrapped key): OpenVPN 2.5.0 and newer and
//! OpenVPN 3 core 3.4 and newer have it; 2.4 and OpenVPN 3 core ≤ 3.3 do not. OpenVPN 2 never reached 3.x, so a
//! 3.x version is OpenVPN 3 core.

use std::fmt;
use std::str::FromStr;

use super::{DomainError, shown};

/// `MAJOR.MINOR[.PATCH][suffix]`, as `openvpn --version` prints it (`2.6.14`, `2.7_rc2`, `3.8.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct OpenVpnVersion {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl OpenVpnVersion {
    /// Whether this client can use an issued profile (tls-crypt-v2).
    pub fn supports_tls_crypt_v2(self) -> bool {
        match self.major {
            2 => self.minor >= 5,
            3 => self.minor >= 4,
            m => m > 3,
        }
    }
}

impl FromStr for OpenVpnVersion {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| DomainError::OpenVpnVersion { shown: shown(s), why };
        if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("expected MAJOR.MINOR[.PATCH], e.g. 2.6.14"));
        }
        // The numeric part ends at the first character that is neither a digit nor a dot (`2.7_rc2`, `2.6.14-1`).
        let numeric = s.split(|c: char| !(c.is_ascii_digit() || c == '.')).next().unwrap_or("");
        let mut parts = numeric.split('.').map(str::parse::<u16>);
        let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
            return Err(bad("expected MAJOR.MINOR[.PATCH], e.g. 2.6.14"));
        };
        let patch = match parts.next() {
            Some(Ok(p)) => p,
            Some(Err(_)) => return Err(bad("expected MAJOR.MINOR[.PATCH], e.g. 2.6.14")),
            None => 0,
        };
        if major == 0 {
            return Err(bad("there is no OpenVPN 0.x"));
        }
        Ok(OpenVpnVersion { major, minor, patch })
    }
}

impl fmt::Display for OpenVpnVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> OpenVpnVersion {
        s.parse().unwrap()
    }

    #[test]
    fn the_clients_that_can_and_cannot_use_tls_crypt_v2() {
        for ok in ["2.5.0", "2.5.11", "2.6.0", "2.6.14", "2.7.6", "2.7_rc2", "3.4", "3.7.2", "3.11.7", "4.0"] {
            assert!(v(ok).supports_tls_crypt_v2(), "{ok}");
        }
        for old in ["2.4.12", "2.4", "2.3.18", "3.3.6", "3.0", "1.6"] {
            assert!(!v(old).supports_tls_crypt_v2(), "{old}");
        }
        assert_eq!(v("2.6.14-1+deb13u1"), OpenVpnVersion { major: 2, minor: 6, patch: 14 });
    }

    #[test]
    fn garbage_is_refused_without_echoing_much() {
        for bad in ["", "2", "two.six", "2.x", "0.9", ".6.1", "2.6.99999", "2.6 .1", "2.6\n"] {
            assert!(bad.parse::<OpenVpnVersion>().is_err(), "{bad:?}");
        }
    }
}
