//! `PairingState`: where an approval-flow pairing stands. The text form is what the store keeps (and what
//! `pairing status --json` shows), so it never changes.

use std::fmt;
use std::str::FromStr;

use super::{DomainError, shown};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairingState {
    /// Waiting for an admin (until it expires).
    Pending,
    /// An admin approved it: the terminal's certificate exists.
    Approved,
    /// An admin rejected it: the terminal must start again with a new key.
    Rejected,
}

impl PairingState {
    pub fn as_str(self) -> &'static str {
        match self {
            PairingState::Pending => "pending",
            PairingState::Approved => "approved",
            PairingState::Rejected => "rejected",
        }
    }
}

impl FromStr for PairingState {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(PairingState::Pending),
            "approved" => Ok(PairingState::Approved),
            "rejected" => Ok(PairingState::Rejected),
            _ => Err(DomainError::PairingState { shown: shown(s) }),
        }
    }
}

impl TryFrom<String> for PairingState {
    type Error = DomainError;

    /// For reading the store's `state` column.
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for PairingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_round_trips_and_nothing_else_parses() {
        for s in [PairingState::Pending, PairingState::Approved, PairingState::Rejected] {
            assert_eq!(s.as_str().parse::<PairingState>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for bad in ["", "Pending", "pending ", "expired"] {
            assert!(bad.parse::<PairingState>().is_err(), "{bad:?}");
        }
    }
}
