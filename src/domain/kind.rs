//! `Kind`: which VPN a credential belongs to. Terminal and admin credentials come from separate CAs and are
//! never accepted on the other VPN (invariant 3, ARCHITECTURE.md).

use std::fmt;
use std::str::FromStr;

use super::{DomainError, shown};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Terminal,
    Admin,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Terminal => "terminal",
            Kind::Admin => "admin",
        }
    }
}

impl FromStr for Kind {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "terminal" => Ok(Kind::Terminal),
            "admin" => Ok(Kind::Admin),
            _ => Err(DomainError::Kind { shown: shown(s) }),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}
