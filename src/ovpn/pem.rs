//! `Pem`: text that is provably only PEM armour and base64, so it can be inlined in `<ca>…</ca>` blocks without
//! being able to close the block and add config lines.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a PEM block (line {line}): {why}")]
pub struct PemError {
    pub line: usize,
    pub why: &'static str,
}

/// One or more PEM blocks, normalised to end with a newline.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem(String);

impl Pem {
    pub fn new(text: &str) -> Result<Pem, PemError> {
        let mut open: Option<&str> = None;
        let mut blocks = 0;
        for (i, line) in text.lines().enumerate() {
            let err = |why| PemError { line: i + 1, why };
            if let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) {
                if open.is_some() {
                    return Err(err("BEGIN inside a block"));
                }
                if label.is_empty() || !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'-') {
                    return Err(err("bad label"));
                }
                open = Some(label);
            } else if let Some(label) = line.strip_prefix("-----END ").and_then(|l| l.strip_suffix("-----")) {
                if open != Some(label) {
                    return Err(err("END does not match BEGIN"));
                }
                open = None;
                blocks += 1;
            } else if open.is_some() {
                if !line.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=') {
                    return Err(err("only base64 characters may stand between BEGIN and END"));
                }
            } else if !line.is_empty() {
                return Err(err("text outside a BEGIN/END block"));
            }
        }
        if open.is_some() {
            return Err(PemError { line: text.lines().count(), why: "block not closed" });
        }
        if blocks == 0 {
            return Err(PemError { line: 1, why: "no PEM block" });
        }
        let mut s: String = text.lines().filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n");
        s.push('\n');
        Ok(Pem(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Never print key material by accident: Debug shows only the block labels.
impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<&str> = self.0.lines().filter_map(|l| l.strip_prefix("-----BEGIN ")).collect();
        write!(f, "Pem({labels:?})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_pem_and_refuses_block_escapes() {
        let ok = "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n";
        assert_eq!(Pem::new(ok).unwrap().as_str(), ok);
        for bad in [
            "",
            "QUJD",
            "-----BEGIN CERTIFICATE-----\nQUJD\n</ca>\nup /bin/sh\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\nup /bin/sh\n",
            "-----BEGIN CERTIFICATE-----\nQUJD\n",
            "-----BEGIN X\"Y-----\nQUJD\n-----END X\"Y-----\n",
        ] {
            assert!(Pem::new(bad).is_err(), "{bad:?}");
        }
    }
}
