//! Certificate serial numbers.
//!
//! A serial is an unsigned integer of at most 128 bits, held as 16 big-endian bytes so that the derived
//! ordering is the numeric one. Serials we create are random (rcgen would otherwise derive the serial from
//! the public key, giving the same serial to two certificates of one key), have the top bit cleared so the
//! DER INTEGER stays positive in at most 16 content bytes, and are never zero (RFC 5280 §4.1.2.2).

use std::fmt;
use std::str::FromStr;

use rand::RngCore as _;
use thiserror::Error;

/// Why a serial number was refused. Inputs are not echoed: they may be arbitrary text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SerialError {
    #[error("serial number is empty")]
    Empty,
    #[error("serial number has more than 32 hex digits (128 bits)")]
    TooLong,
    #[error("serial number is not hexadecimal")]
    NotHex,
    #[error("serial number is zero")]
    Zero,
    #[error("serial number is negative")]
    Negative,
}

/// A certificate serial number (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial([u8; 16]);

impl Serial {
    /// A fresh random serial: 127 random bits, positive and non-zero.
    pub fn random() -> Serial {
        let mut rng = rand::rng();
        loop {
            let mut bytes = [0u8; 16];
            rng.fill_bytes(&mut bytes);
            bytes[0] &= 0x7f;
            // All-zero has probability 2^-127; looping keeps the invariant without an error path.
            if bytes != [0u8; 16] {
                return Serial(bytes);
            }
        }
    }

    /// 32 lowercase hex digits, zero-padded (the form we store and compare).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Decimal form, as OpenVPN's `crl-verify DIR dir` expects file names.
    pub fn to_decimal(&self) -> String {
        u128::from_be_bytes(self.0).to_string()
    }

    /// The 16 big-endian bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// From a DER INTEGER's content bytes (two's complement, big-endian), as found in certificates.
    pub(crate) fn from_der_integer(bytes: &[u8]) -> Result<Serial, SerialError> {
        if bytes.is_empty() {
            return Err(SerialError::Empty);
        }
        if bytes[0] & 0x80 != 0 {
            return Err(SerialError::Negative);
        }
        let first_non_zero = bytes.iter().position(|b| *b != 0).ok_or(SerialError::Zero)?;
        let significant = &bytes[first_non_zero..];
        if significant.len() > 16 {
            return Err(SerialError::TooLong);
        }
        let mut out = [0u8; 16];
        out[16 - significant.len()..].copy_from_slice(significant);
        Ok(Serial(out))
    }
}

impl FromStr for Serial {
    type Err = SerialError;

    /// 1 to 32 hex digits, either case, with an optional `0x` prefix. Shorter values are left-padded,
    /// so `"1f"` and `"0x001F"` are the same serial.
    fn from_str(s: &str) -> Result<Serial, SerialError> {
        let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
        if digits.is_empty() {
            return Err(SerialError::Empty);
        }
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SerialError::NotHex);
        }
        if digits.len() > 32 {
            return Err(SerialError::TooLong);
        }
        // Right-aligned nibble by nibble (no padded copy: a CRL reads 100,000 of these).
        let mut out = [0u8; 16];
        for (i, b) in (32 - digits.len()..).zip(digits.bytes()) {
            let v = (b as char).to_digit(16).ok_or(SerialError::NotHex)? as u8;
            out[i / 2] |= if i % 2 == 0 { v << 4 } else { v };
        }
        if out == [0u8; 16] {
            return Err(SerialError::Zero);
        }
        Ok(Serial(out))
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn random_serials_are_positive_nonzero_and_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let s = Serial::random();
            assert_eq!(s.as_bytes()[0] & 0x80, 0);
            assert_ne!(s.as_bytes(), &[0u8; 16]);
            assert!(seen.insert(s));
        }
    }

    #[test]
    fn hex_and_decimal_forms() {
        let s: Serial = "0x00000000000000000000000000000100".parse().unwrap();
        assert_eq!(s.to_hex(), "00000000000000000000000000000100");
        assert_eq!(s.to_decimal(), "256");
        assert_eq!(s.to_string(), s.to_hex());
        let max: Serial = "ffffffffffffffffffffffffffffffff".parse().unwrap();
        assert_eq!(max.to_decimal(), u128::MAX.to_string());
        let r = Serial::random();
        assert_eq!(r.to_hex().len(), 32);
        assert_eq!(r.to_hex(), r.to_hex().to_lowercase());
        assert_eq!(r.to_hex().parse::<Serial>().unwrap(), r);
        assert_eq!(u128::from_str_radix(&r.to_hex(), 16).unwrap().to_string(), r.to_decimal());
    }

    #[test]
    fn parsing_is_case_insensitive_and_pads() {
        let a: Serial = "1F".parse().unwrap();
        let b: Serial = "0x001f".parse().unwrap();
        let c: Serial = "0X1f".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.to_decimal(), "31");
        assert!(a < "20".parse().unwrap());
    }

    #[test]
    fn parsing_rejects_bad_input() {
        assert_eq!("".parse::<Serial>(), Err(SerialError::Empty));
        assert_eq!("0x".parse::<Serial>(), Err(SerialError::Empty));
        assert_eq!("0".parse::<Serial>(), Err(SerialError::Zero));
        assert_eq!("g1".parse::<Serial>(), Err(SerialError::NotHex));
        assert_eq!(" 1".parse::<Serial>(), Err(SerialError::NotHex));
        assert_eq!("+1".parse::<Serial>(), Err(SerialError::NotHex));
        assert_eq!("1".repeat(33).parse::<Serial>(), Err(SerialError::TooLong));
        assert_eq!("é".parse::<Serial>(), Err(SerialError::NotHex));
    }

    #[test]
    fn from_der_integer_handles_padding_and_sign() {
        let s = Serial::from_der_integer(&[0x00, 0x80, 0x01]).unwrap();
        assert_eq!(s.to_decimal(), (0x8001u32).to_string());
        // 16 significant bytes with the top bit set arrive with a leading zero byte.
        let mut seventeen = vec![0u8];
        seventeen.extend([0xffu8; 16]);
        assert_eq!(Serial::from_der_integer(&seventeen).unwrap().to_decimal(), u128::MAX.to_string());
        assert_eq!(Serial::from_der_integer(&[0x80]), Err(SerialError::Negative));
        assert_eq!(Serial::from_der_integer(&[0x00]), Err(SerialError::Zero));
        assert_eq!(Serial::from_der_integer(&[]), Err(SerialError::Empty));
        assert_eq!(Serial::from_der_integer(&[0x01; 17]), Err(SerialError::TooLong));
    }
}
