//! Passwords of web users: the policy (at least 12 characters, not a common password, not the user's name) and
//! argon2id hashing with the crate's recommended parameters and a random salt per hash.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

/// The shortest password accepted.
pub const MIN_LEN: usize = 12;
/// The longest: argon2 takes any length, but a megabyte "password" is only a way to burn our CPU.
pub const MAX_LEN: usize = 256;

/// Passwords that meet the length rule and are still among the first an attacker tries (from public breach
/// lists); compared case-insensitively.
const COMMON: &[&str] = &[
    "123456789012",
    "1234567890123",
    "12345678901234",
    "qwertyuiopasdfgh",
    "qwertyuiop123",
    "qwerty123456",
    "password1234",
    "password12345",
    "password123456",
    "passwordpassword",
    "iloveyou1234",
    "administrator",
    "administrator1",
    "adminadminadmin",
    "admin1234567",
    "letmein12345",
    "welcome12345",
    "changeme1234",
    "trustno1trustno1",
    "aaaaaaaaaaaa",
    "111111111111",
    "000000000000",
    "abcdefghijkl",
    "abc123abc123",
    "1q2w3e4r5t6y",
    "1qaz2wsx3edc",
    "zaq12wsxcde3",
    "football1234",
    "baseball1234",
    "superman1234",
    "bitcoin12345",
    "bitcoinbitcoin",
    "satoshinakamoto",
    "generalbytes",
    "casadmin1234",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the password must have at least {MIN_LEN} characters")]
    TooShort,
    #[error("the password must have at most {MAX_LEN} characters")]
    TooLong,
    #[error("this password is among the most common ones; choose another")]
    Common,
    #[error("the password must not be the user name")]
    IsName,
    #[error("the two passwords differ")]
    Mismatch,
    #[error("password hashing failed")]
    Hash,
}

/// Checks `password` (typed twice) for user `name` against the policy.
pub fn check_policy(name: &str, password: &str, again: &str) -> Result<(), PasswordError> {
    if password != again {
        return Err(PasswordError::Mismatch);
    }
    let n = password.chars().count();
    if n < MIN_LEN {
        return Err(PasswordError::TooShort);
    }
    if n > MAX_LEN {
        return Err(PasswordError::TooLong);
    }
    let lower = password.to_lowercase();
    if lower.contains(&name.to_lowercase()) && name.len() >= 4 {
        return Err(PasswordError::IsName);
    }
    // A single repeated character, or a known one.
    if COMMON.contains(&lower.as_str()) || lower.chars().all(|c| lower.starts_with(c)) {
        return Err(PasswordError::Common);
    }
    Ok(())
}

/// The PHC string of an argon2id hash of `password` (random salt).
pub fn hash(password: &str) -> Result<String, PasswordError> {
    Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(|_| PasswordError::Hash)
}

/// Whether `password` matches `phc` (constant time inside argon2). A malformed hash never matches.
pub fn verify(password: &str, phc: &str) -> bool {
    password.len() <= MAX_LEN * 4 && Argon2::default().verify_password(password.as_bytes(), phc).is_ok()
}

/// A hash no password matches, verified against when the user does not exist, so that an unknown name takes as
/// long as a wrong password (no user enumeration by timing).
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash(&hex::encode(rand::random::<[u8; 16]>())).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        assert_eq!(check_policy("alice", "short", "short"), Err(PasswordError::TooShort));
        assert_eq!(check_policy("alice", "Password1234", "Password1234"), Err(PasswordError::Common));
        assert_eq!(check_policy("alice", "zzzzzzzzzzzzzz", "zzzzzzzzzzzzzz"), Err(PasswordError::Common));
        assert_eq!(check_policy("alice", "alice-the-admin", "alice-the-admin"), Err(PasswordError::IsName));
        assert_eq!(
            check_policy("alice", "correct horse battery", "correct horse batterY"),
            Err(PasswordError::Mismatch)
        );
        let long = "x".repeat(MAX_LEN) + "y";
        assert_eq!(check_policy("alice", &long, &long), Err(PasswordError::TooLong));
        assert_eq!(check_policy("alice", "correct horse battery", "correct horse battery"), Ok(()));
    }

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify("correct horse battery", &h));
        assert!(!verify("correct horse batterx", &h));
        assert!(!verify("correct horse battery", "not a hash"));
        assert_ne!(hash("correct horse battery").unwrap(), h, "every hash has its own salt");
        assert!(!verify("anything", dummy_hash()));
    }
}
