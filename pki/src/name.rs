//! Validation of the common names this crate puts into certificates.
//!
//! A certificate's CN ends up in OpenVPN configs, `client-config-dir` file names, management-interface
//! commands (`kill CN`, whose parser splits on whitespace and quotes) and log lines. So the set of accepted
//! names is deliberately small: 1 to 64 characters of `[A-Za-z0-9._-]`. On top of that rule, two shapes are
//! refused because of where names land: a leading `-` (it reads as an option when a name is passed on a
//! command line) and names made only of dots (`.` and `..` are directory entries, not file names).

use thiserror::Error;

/// Longest accepted common name; also the X.509 upper bound for a CN (`ub-common-name`).
pub const MAX_COMMON_NAME_LEN: usize = 64;

/// Why a common name was refused. The offending name is not echoed in full: it may be arbitrary input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("common name is empty")]
    Empty,
    #[error("common name is {0} characters long; at most 64 are allowed")]
    TooLong(usize),
    #[error("common name contains {0:?}; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed")]
    BadCharacter(char),
    #[error("common name must not start with '-'")]
    LeadingDash,
    #[error("common name must not consist of dots only")]
    OnlyDots,
}

/// Checks `name` against the common-name rule described in the module docs.
pub fn validate_common_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    // Count chars, not bytes, so that a multi-byte character is reported as a bad character below
    // rather than as an inflated length.
    let len = name.chars().count();
    if len > MAX_COMMON_NAME_LEN {
        return Err(NameError::TooLong(len));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(NameError::BadCharacter(bad));
    }
    if name.starts_with('-') {
        return Err(NameError::LeadingDash);
    }
    if name.chars().all(|c| c == '.') {
        return Err(NameError::OnlyDots);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["a", "atm-001", "admin.alice", "terminal_42", "A.b-C_9", &"x".repeat(64)] {
            assert_eq!(validate_common_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(validate_common_name(""), Err(NameError::Empty));
        assert_eq!(validate_common_name(&"x".repeat(65)), Err(NameError::TooLong(65)));
        for (bad, c) in [
            ("a b", ' '),
            ("a\"b", '"'),
            ("a'b", '\''),
            ("a\nb", '\n'),
            ("a/b", '/'),
            ("a\\b", '\\'),
            ("é", 'é'),
            ("a,b", ','),
            ("a=b", '='),
            ("a\0", '\0'),
        ] {
            assert_eq!(validate_common_name(bad), Err(NameError::BadCharacter(c)), "{bad:?}");
        }
        assert_eq!(validate_common_name("-x"), Err(NameError::LeadingDash));
        assert_eq!(validate_common_name("."), Err(NameError::OnlyDots));
        assert_eq!(validate_common_name(".."), Err(NameError::OnlyDots));
        // A dot elsewhere is fine.
        assert_eq!(validate_common_name(".x"), Ok(()));
    }
}
