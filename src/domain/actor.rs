//! `Actor`: who did something, as every audit row records it.
//!
//! The text form is what the store keeps and what an operator reads, so it is stable and parses back to the same
//! value: `cli:root` (the CLI, run by unix user root; `cli:uid:1000` when the uid has no name), `web:alice` (a user
//! logged in to the admin web UI), `api:alice` (one of alice's API tokens), `admin` (the web UI service itself), `gate`, `master`, `vpn`, `signer`, `net`
//! (the services), `uid:1234` (a socket caller that is none of these). Anything else is refused, so a row can
//! never name an actor the code does not know.

use std::fmt;
use std::str::FromStr;

use super::{DomainError, Name, shown};

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Actor {
    /// The command line, as the unix user running it (resolved from the real uid).
    Cli {
        unix_user: UnixUser,
    },
    /// A user logged in to the admin web UI.
    WebUser(Name),
    /// An API token of that web user.
    ApiUser(Name),
    /// The admin web UI service itself (its service account called a socket).
    Admin,
    Gate,
    Master,
    Vpn,
    Signer,
    Net,
    /// A socket caller that is none of the above.
    Uid(u32),
}

impl Actor {
    /// The CLI run by `uid`, named by its unix user when it has a name that fits, else `uid:N`.
    pub fn cli(uid: u32, user_name: Option<&str>) -> Actor {
        let unix_user = user_name.and_then(|n| n.parse().ok()).unwrap_or(UnixUser::Uid(uid));
        Actor::Cli { unix_user }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Cli { unix_user } => write!(f, "cli:{unix_user}"),
            Actor::WebUser(name) => write!(f, "web:{name}"),
            Actor::ApiUser(name) => write!(f, "api:{name}"),
            Actor::Admin => f.write_str("admin"),
            Actor::Gate => f.write_str("gate"),
            Actor::Master => f.write_str("master"),
            Actor::Vpn => f.write_str("vpn"),
            Actor::Signer => f.write_str("signer"),
            Actor::Net => f.write_str("net"),
            Actor::Uid(uid) => write!(f, "uid:{uid}"),
        }
    }
}

impl FromStr for Actor {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Actor, DomainError> {
        let refused = || DomainError::Actor { shown: shown(s) };
        Ok(match s {
            "admin" => Actor::Admin,
            "gate" => Actor::Gate,
            "master" => Actor::Master,
            "vpn" => Actor::Vpn,
            "signer" => Actor::Signer,
            "net" => Actor::Net,
            _ => {
                if let Some(user) = s.strip_prefix("cli:") {
                    Actor::Cli { unix_user: user.parse().map_err(|_| refused())? }
                } else if let Some(name) = s.strip_prefix("web:") {
                    Actor::WebUser(name.parse().map_err(|_| refused())?)
                } else if let Some(name) = s.strip_prefix("api:") {
                    Actor::ApiUser(name.parse().map_err(|_| refused())?)
                } else if let Some(uid) = s.strip_prefix("uid:") {
                    Actor::Uid(parse_uid(uid).ok_or_else(refused)?)
                } else {
                    return Err(refused());
                }
            }
        })
    }
}

impl TryFrom<String> for Actor {
    type Error = DomainError;

    /// For reading the store's `actor` column.
    fn try_from(s: String) -> Result<Actor, DomainError> {
        s.parse()
    }
}

/// The unix user behind a CLI command: its name, or `uid:N` when the uid has none (or one that is not a plain
/// user name, which is then not worth trusting in a log line).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UnixUser {
    Named(String),
    Uid(u32),
}

impl fmt::Display for UnixUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixUser::Named(n) => f.write_str(n),
            UnixUser::Uid(uid) => write!(f, "uid:{uid}"),
        }
    }
}

impl FromStr for UnixUser {
    type Err = DomainError;

    /// A name as `useradd` accepts it by default (1-32 characters: lowercase letters, digits, `_`, `-`, `.`, not
    /// starting with `-` or a digit), or `uid:N`.
    fn from_str(s: &str) -> Result<UnixUser, DomainError> {
        if let Some(uid) = s.strip_prefix("uid:") {
            return parse_uid(uid).map(UnixUser::Uid).ok_or_else(|| DomainError::Actor { shown: shown(s) });
        }
        let ok = (1..=32).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.'))
            && !s.starts_with(|c: char| c == '-' || c.is_ascii_digit());
        if ok { Ok(UnixUser::Named(s.to_owned())) } else { Err(DomainError::Actor { shown: shown(s) }) }
    }
}

/// Digits only (no sign, no leading zero but `0` itself), so each uid has exactly one spelling.
fn parse_uid(s: &str) -> Option<u32> {
    let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        let cases = [
            (Actor::cli(0, Some("root")), "cli:root"),
            (Actor::cli(1000, None), "cli:uid:1000"),
            (Actor::WebUser("alice".parse().unwrap()), "web:alice"),
            (Actor::ApiUser("alice".parse().unwrap()), "api:alice"),
            (Actor::Admin, "admin"),
            (Actor::Gate, "gate"),
            (Actor::Master, "master"),
            (Actor::Vpn, "vpn"),
            (Actor::Signer, "signer"),
            (Actor::Net, "net"),
            (Actor::Uid(1234), "uid:1234"),
            (Actor::Uid(0), "uid:0"),
        ];
        for (actor, text) in cases {
            assert_eq!(actor.to_string(), text);
            assert_eq!(text.parse::<Actor>().unwrap(), actor, "{text}");
        }
    }

    #[test]
    fn a_user_name_that_does_not_fit_becomes_the_uid() {
        assert_eq!(Actor::cli(7, Some("evil\nname")).to_string(), "cli:uid:7");
        assert_eq!(Actor::cli(7, Some("")).to_string(), "cli:uid:7");
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            "",
            "cli",
            "cli:",
            "cli:Root",
            "cli:-x",
            "cli:uid:",
            "cli:uid:-1",
            "web:",
            "web:a b",
            "uid:",
            "uid:01",
            "uid:+1",
            "uid:4294967296",
            "uid 1234",
            "GATE",
            "gate ",
            "operator",
            "signer-owner(uid 0)",
        ] {
            let err = bad.parse::<Actor>().unwrap_err();
            assert!(matches!(err, DomainError::Actor { .. }), "{bad:?}: {err}");
        }
    }
}
