//! A small, strict PEM reader and writer (RFC 7468 "strict" textual encoding).
//!
//! Our own encoder is needed because OpenVPN's tls-crypt-v2 keys use labels of their own and must come out
//! exactly as OpenSSL's `PEM_write_bio` writes them (64 columns, `\n`), and because private keys should pass
//! through buffers that are wiped afterwards. The reader takes the first block whose label is one of the
//! expected ones, ignores text around it (`openssl x509 -text` output, bundles), and refuses
//! RFC 1421 headers such as `Proc-Type: 4,ENCRYPTED`: those mark legacy encrypted keys that we do not read.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

/// Width of a base64 line; OpenSSL and OpenVPN write 64.
const LINE_WIDTH: usize = 64;
/// Bytes that encode to exactly one full line.
const BYTES_PER_LINE: usize = LINE_WIDTH / 4 * 3;

/// What went wrong while reading PEM. Never contains the encoded payload.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PemError {
    #[error("no PEM block labelled {0} found")]
    NotFound(String),
    #[error("PEM block {0} has no END line")]
    Unterminated(String),
    #[error("PEM block {0} has headers (legacy encrypted PEM is not supported)")]
    Headers(String),
    #[error("PEM block {0} is not valid base64")]
    Base64(String),
    #[error("PEM block {0} is empty")]
    Empty(String),
}

/// A decoded PEM block: which of the expected labels matched, and the payload (wiped on drop).
pub(crate) struct Block {
    pub label: &'static str,
    pub der: Zeroizing<Vec<u8>>,
}

/// Decodes the first block labelled with one of `labels`.
pub(crate) fn decode(input: &str, labels: &[&'static str]) -> Result<Block, PemError> {
    let all = labels.join(" or ");
    let mut lines = input.lines().map(|l| l.trim_end_matches([' ', '\t', '\r']));
    let label = loop {
        let Some(line) = lines.next() else {
            return Err(PemError::NotFound(all));
        };
        let found = labels.iter().find(|label| {
            line.trim_start().strip_prefix("-----BEGIN ").and_then(|rest| rest.strip_suffix("-----")) == Some(**label)
        });
        if let Some(label) = found {
            break *label;
        }
    };

    let end = format!("-----END {label}-----");
    // The base64 text is as secret as the key it encodes.
    let mut b64 = Zeroizing::new(String::new());
    let mut terminated = false;
    for line in lines {
        let line = line.trim_start();
        if line == end {
            terminated = true;
            break;
        }
        if line.starts_with("-----") {
            // A BEGIN or a mismatched END before ours: the block is broken.
            break;
        }
        if line.contains(':') {
            return Err(PemError::Headers(label.to_string()));
        }
        b64.push_str(line);
    }
    if !terminated {
        return Err(PemError::Unterminated(label.to_string()));
    }
    let der = STANDARD.decode(b64.as_bytes()).map(Zeroizing::new).map_err(|_| PemError::Base64(label.to_string()))?;
    if der.is_empty() {
        return Err(PemError::Empty(label.to_string()));
    }
    Ok(Block { label, der })
}

/// Encodes `data` as one PEM block: 64-column base64, `\n` line ends, a final newline.
pub(crate) fn encode(label: &str, data: &[u8]) -> Zeroizing<String> {
    let begin = format!("-----BEGIN {label}-----\n");
    let end = format!("-----END {label}-----\n");
    let body_chars = data.len().div_ceil(3) * 4;
    let body_lines = body_chars.div_ceil(LINE_WIDTH);
    // Reserve everything up front: a reallocation would leave an unwiped copy of the old buffer behind.
    let mut out = Zeroizing::new(String::with_capacity(begin.len() + body_chars + body_lines + end.len()));
    out.push_str(&begin);
    let mut line = [0u8; LINE_WIDTH];
    for chunk in data.chunks(BYTES_PER_LINE) {
        let n = STANDARD.encode_slice(chunk, &mut line).expect("a 48-byte chunk always fits a 64-byte line");
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(&line[..n]).expect("base64 is ASCII"));
        out.push('\n');
    }
    line.zeroize();
    out.push_str(&end);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        for len in [1usize, 47, 48, 49, 96, 100, 1000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let pem = encode("TEST THING", &data);
            assert!(pem.starts_with("-----BEGIN TEST THING-----\n"));
            assert!(pem.ends_with("-----END TEST THING-----\n"));
            for line in pem.lines() {
                assert!(line.len() <= 64, "{line}");
            }
            let block = decode(&pem, &["OTHER", "TEST THING"]).unwrap();
            assert_eq!(block.label, "TEST THING");
            assert_eq!(&block.der[..], &data[..]);
        }
    }

    #[test]
    fn matches_openssl_layout() {
        // 100 bytes give 136 base64 characters: two full 64-column lines and one of 8.
        let pem = encode("X", &[0u8; 100]);
        let b64 = STANDARD.encode([0u8; 100]);
        let want = format!("-----BEGIN X-----\n{}\n{}\n{}\n-----END X-----\n", &b64[..64], &b64[64..128], &b64[128..]);
        assert_eq!(&*pem, &want);
    }

    #[test]
    fn tolerates_surrounding_text_and_crlf() {
        let pem = encode("CERTIFICATE", b"hello world");
        let noisy = format!("Certificate:\n  junk: here\n{}\r\ntrailing", pem.replace('\n', "\r\n"));
        let block = decode(&noisy, &["CERTIFICATE"]).unwrap();
        assert_eq!(&block.der[..], b"hello world");
    }

    #[test]
    fn rejects_broken_blocks() {
        assert!(matches!(decode("", &["A"]), Err(PemError::NotFound(_))));
        assert!(matches!(decode("garbage", &["A"]), Err(PemError::NotFound(_))));
        assert!(matches!(decode("-----BEGIN A-----\nAAAA\n", &["A"]), Err(PemError::Unterminated(_))));
        assert!(matches!(decode("-----BEGIN A-----\nAAAA\n-----END B-----\n", &["A"]), Err(PemError::Unterminated(_))));
        assert!(matches!(
            decode("-----BEGIN A-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END A-----\n", &["A"]),
            Err(PemError::Headers(_))
        ));
        assert!(matches!(decode("-----BEGIN A-----\nA!AA\n-----END A-----\n", &["A"]), Err(PemError::Base64(_))));
        assert!(matches!(decode("-----BEGIN A-----\n-----END A-----\n", &["A"]), Err(PemError::Empty(_))));
        // A label that merely starts with the wanted one is a different label.
        assert!(matches!(decode("-----BEGIN A B-----\nAAAA\n-----END A B-----\n", &["A"]), Err(PemError::NotFound(_))));
    }
}
