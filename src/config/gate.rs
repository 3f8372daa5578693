//! `config/gate.properties`: CAS's gate settings, in Java properties syntax.
//!
//! The file belongs to CAS as much as to us, so it is edited, never regenerated: the `java-properties` crate parses
//! it (separators `=`, `:` and whitespace, `#`/`!` comments, backslash continuations, `\uXXXX` and other escapes),
//! while the original bytes of every line are kept. A write replaces only the lines of keys whose value changed and
//! appends keys that were absent; comments, blank lines, unknown keys and their order survive byte for byte.
//!
//! Encoding: Java reads properties files as ISO-8859-1, so the file is read as bytes and decoded the same way
//! (the crate's default); lines we write are plain ASCII (anything else escaped as `\uXXXX`), which reads the same
//! in every encoding CAS might use.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use java_properties::{LineContent, PropertiesIter};

use super::error::shown_key;
use super::{ConfigError, FileState, KeyLines, Root};
use crate::domain::{Host, shown};
use crate::sys::fs::{FsError, write_atomic};

/// The keys cas-vpn interprets; every other key is kept as it is.
pub const GATE_KEYS: [&str; 4] = ["batm.processing-slots", "batm.download", "batm.master.hostname", "batm.vpn-skip"];

/// The gate settings, plus the document they were read from (so that a write can keep everything else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateConfig {
    /// `batm.processing-slots` (default 20): upgrade downloads served at once; the others get 503 `slots_full`.
    pub processing_slots: u32,
    /// `batm.download` (default `<root>/app/shared/`): where the terminal upgrade package is kept.
    pub download_dir: PathBuf,
    /// `batm.master.hostname`: what terminals are told master is; `None` means `master_bind_ip`.
    pub master_hostname: Option<Host>,
    /// `batm.vpn-skip` (default false): true means Scenario B.
    pub vpn_skip: bool,
    doc: PropsDoc,
    /// The values `doc` holds, to tell which fields were changed since (only those lines are rewritten).
    in_doc: Values,
    path: PathBuf,
    state: FileState,
}

/// The typed values, separate from the document so they can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Values {
    processing_slots: u32,
    download_dir: PathBuf,
    master_hostname: Option<Host>,
    vpn_skip: bool,
}

impl Values {
    fn defaults(root: &Root) -> Values {
        Values {
            processing_slots: 20,
            download_dir: root.default_download_dir(),
            master_hostname: None,
            vpn_skip: false,
        }
    }

    /// Applies one of `GATE_KEYS`; the error says what is wrong and what is expected.
    fn apply(&mut self, key: &str, value: &str) -> Result<(), String> {
        // Java keeps trailing spaces in a value; CAS's own parsing of these keys does not care, and neither do we.
        let value = value.trim_end();
        match key {
            "batm.processing-slots" => self.processing_slots = parse_slots(value)?,
            "batm.download" => self.download_dir = parse_download(value)?,
            "batm.master.hostname" => {
                self.master_hostname =
                    if value.is_empty() { None } else { Some(value.parse::<Host>().map_err(|e| e.to_string())?) }
            }
            "batm.vpn-skip" => self.vpn_skip = parse_bool(value)?,
            _ => unreachable!("only GATE_KEYS are applied"),
        }
        Ok(())
    }

    /// The value of `key` as cas-vpn writes it.
    fn render(&self, key: &str) -> String {
        match key {
            "batm.processing-slots" => self.processing_slots.to_string(),
            "batm.download" => self.download_dir.to_string_lossy().into_owned(),
            "batm.master.hostname" => self.master_hostname.as_ref().map(|h| h.to_string()).unwrap_or_default(),
            "batm.vpn-skip" => self.vpn_skip.to_string(),
            _ => unreachable!("only GATE_KEYS are rendered"),
        }
    }

    /// Checks values that may have been put in the public fields by code.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        parse_slots(&self.processing_slots.to_string()).map_err(|e| ("batm.processing-slots", e))?;
        let dir = self.download_dir.to_str().ok_or(("batm.download", "the path is not valid UTF-8".to_owned()))?;
        parse_download(dir).map_err(|e| ("batm.download", e))?;
        Ok(())
    }
}

fn parse_slots(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1 (it is how many upgrade downloads run at once)".into()),
        Err(_) => Err(format!("invalid number {}: expected a whole number of at least 1, e.g. 20", shown(value))),
    }
}

fn parse_download(value: &str) -> Result<PathBuf, String> {
    if value.chars().any(char::is_control) {
        return Err(format!("invalid path {}: control characters are not allowed", shown(value)));
    }
    let path = PathBuf::from(value);
    if !path.is_absolute() {
        return Err(format!("invalid path {}: expected an absolute path, e.g. /batm/app/shared/", shown(value)));
    }
    Ok(path)
}

/// `true` or `false` in any case (what Java's `Boolean.parseBoolean` reads as true is `true` in any case; anything
/// else would silently be false there, which is exactly the typo this refuses).
fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("invalid boolean {}: expected true or false", shown(value))),
    }
}

impl GateConfig {
    /// The settings of a fresh install at `root` (`<root>/config/gate.properties` does not exist): every key written out with
    /// a comment, so that `write` creates a file an operator can read.
    pub fn default_for(root: impl AsRef<Path>) -> GateConfig {
        // Not validated here (this cannot fail): `write` checks the root it is given.
        let root = &Root(root.as_ref().to_path_buf());
        let values = Values::defaults(root);
        let mut doc = PropsDoc::default();
        doc.push_comment(
            "CAS gate settings (Java properties). cas-vpn reads the keys below and keeps every other line.",
        );
        let comments = [
            "Upgrade downloads served at the same time; the others get 503 with Retry-After.",
            "Folder the terminal upgrade package is fetched into once and then served from.",
            "Host name terminals are told to reach master at; empty means master_bind_ip from config/network.",
            "true = Scenario B: the gate hands out no VPN config (a VPN router in front of the server).",
        ];
        for (key, comment) in GATE_KEYS.iter().zip(comments) {
            doc.push_comment(comment);
            doc.set(key, &values.render(key));
        }
        GateConfig::from_parts(values.clone(), values, doc, root.gate_file(), FileState::Missing)
    }

    /// Parses the bytes of `gate.properties`; `path` is used in messages, `root` for the default of `batm.download`.
    /// Unknown keys are kept (they are CAS's); a repeated key that cas-vpn reads is an error (Java would silently
    /// take the last one, and the operator probably meant the other).
    pub fn parse(bytes: impl AsRef<[u8]>, path: &Path, root: impl AsRef<Path>) -> Result<GateConfig, ConfigError> {
        let root = &Root(root.as_ref().to_path_buf());
        let doc = PropsDoc::parse(bytes.as_ref(), path)?;
        let mut values = Values::defaults(root);
        let mut seen = KeyLines::default();
        for (line, key, value) in doc.pairs() {
            let Some(&known) = GATE_KEYS.iter().find(|k| **k == key) else {
                continue;
            };
            super::note_line(&mut seen, known, line, path)?;
            values.apply(known, value).map_err(|why| ConfigError::Value {
                path: path.to_owned(),
                line,
                key: known.to_owned(),
                why,
            })?;
        }
        Ok(GateConfig::from_parts(values.clone(), values, doc, path.to_owned(), FileState::Present))
    }

    /// Reads `<root>/config/gate.properties`; a missing file gives `defaults` (and `file_state()` says so).
    pub fn load(root: impl AsRef<Path>) -> Result<GateConfig, ConfigError> {
        let root = &Root::new(root)?;
        let path = root.gate_file();
        match std::fs::read(&path) {
            Ok(bytes) => GateConfig::parse(bytes, &path, root),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(GateConfig::default_for(root)),
            // Read as bytes, not through `read_optional`: a Latin-1 file (Java's encoding) is not UTF-8.
            Err(source) => Err(FsError::Read { path, source }.into()),
        }
    }

    fn from_parts(fields: Values, in_doc: Values, doc: PropsDoc, path: PathBuf, state: FileState) -> GateConfig {
        GateConfig {
            processing_slots: fields.processing_slots,
            download_dir: fields.download_dir,
            master_hostname: fields.master_hostname,
            vpn_skip: fields.vpn_skip,
            doc,
            in_doc,
            path,
            state,
        }
    }

    fn values(&self) -> Values {
        Values {
            processing_slots: self.processing_slots,
            download_dir: self.download_dir.clone(),
            master_hostname: self.master_hostname.clone(),
            vpn_skip: self.vpn_skip,
        }
    }

    /// Whether the file existed when loaded.
    pub fn file_state(&self) -> FileState {
        self.state
    }

    /// Sets a key. One of `GATE_KEYS` is validated and updates its field; any other key is stored as given (it is
    /// CAS's). Nothing changes when the value is refused. Control characters (newlines included) are refused in
    /// keys and values alike, so `set` can never add a line the caller did not mean.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let invalid = |why: String| ConfigError::Invalid { path: self.path.clone(), key: shown_key(key), why };
        if key.is_empty() {
            return Err(invalid("the key is empty".into()));
        }
        for (what, text) in [("key", key), ("value", value)] {
            if text.chars().any(char::is_control) {
                return Err(invalid(format!("control characters (newlines, tabs, …) are not allowed in the {what}")));
            }
            // Java writes these as UTF-16 surrogate pairs, which the parser we use cannot read back.
            if text.chars().any(|c| u32::from(c) > 0xFFFF) {
                return Err(invalid(format!("characters beyond U+FFFF are not supported in the {what}")));
            }
        }
        if let Some(&known) = GATE_KEYS.iter().find(|k| **k == key) {
            let mut values = self.values();
            values.apply(known, value).map_err(invalid)?;
            // Applied to a copy first, so a refused value leaves every field as it was.
            self.processing_slots = values.processing_slots;
            self.download_dir = values.download_dir;
            self.master_hostname = values.master_hostname;
            self.vpn_skip = values.vpn_skip;
        } else {
            self.doc.set(key, value);
        }
        Ok(())
    }

    /// Checks the public fields (they may have been set by code): `path` is named in the error.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.values().validate().map_err(|(key, why)| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            why,
        })
    }

    /// The file's bytes: the document as read, with the lines of changed keys rewritten and new keys appended.
    pub fn render(&self) -> Vec<u8> {
        let mut doc = self.doc.clone();
        let now = self.values();
        for key in GATE_KEYS {
            let value = now.render(key);
            if value != self.in_doc.render(key) {
                doc.set(key, &value);
            }
        }
        doc.to_bytes()
    }

    /// Validates, then writes `<root>/config/gate.properties` atomically, keeping the existing file's mode.
    pub fn write(&self, root: impl AsRef<Path>) -> Result<(), ConfigError> {
        let root = Root::new(root)?;
        let path = root.gate_file();
        self.validate(&path)?;
        super::ensure_config_dir(&root)?;
        write_atomic(&path, &self.render(), super::file_mode(&path))?;
        Ok(())
    }
}

/// A properties file as a list of segments covering every byte of it: key/value pairs (with the raw bytes of all
/// the physical lines they span) and everything else (comments, blank lines) as raw bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PropsDoc {
    segs: Vec<Seg>,
    /// The file's line ending (from its first line), used for lines we add.
    crlf: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Raw(Vec<u8>),
    /// `line` is 1-based; 0 for a pair added by `set`.
    Pair {
        key: String,
        value: String,
        line: usize,
        raw: Vec<u8>,
    },
}

impl PropsDoc {
    fn parse(bytes: &[u8], path: &Path) -> Result<PropsDoc, ConfigError> {
        let mut starts: HashMap<usize, (String, String)> = HashMap::new();
        for line in PropertiesIter::new(bytes) {
            let line = line.map_err(|e| {
                let text = e.to_string();
                // The crate appends " (line_number = N)"; we say it our way.
                let why = text.split(" (line_number").next().unwrap_or(&text).to_owned();
                ConfigError::Syntax { path: path.to_owned(), line: e.line_number().unwrap_or(0), why }
            })?;
            let n = line.line_number();
            if let LineContent::KVPair(key, value) = line.consume_content() {
                starts.insert(n, (key, value));
            }
        }

        let lines = physical_lines(bytes);
        let mut doc = PropsDoc { segs: Vec::new(), crlf: lines.first().is_some_and(|l| l.ends_with(b"\r\n")) };
        let mut i = 0;
        while i < lines.len() {
            match starts.remove(&(i + 1)) {
                Some((key, value)) => {
                    let end = logical_end(&lines, i);
                    doc.segs.push(Seg::Pair { key, value, line: i + 1, raw: lines[i..=end].concat() });
                    i = end + 1;
                }
                None => {
                    doc.push_raw(lines[i]);
                    i += 1;
                }
            }
        }
        debug_assert!(starts.is_empty(), "every pair the crate found starts on a physical line: {starts:?}");
        Ok(doc)
    }

    /// `(line, key, value)` of every pair, in file order.
    fn pairs(&self) -> impl Iterator<Item = (usize, &str, &str)> {
        self.segs.iter().filter_map(|s| match s {
            Seg::Pair { key, value, line, .. } => Some((*line, key.as_str(), value.as_str())),
            Seg::Raw(_) => None,
        })
    }

    fn eol(&self) -> &'static [u8] {
        if self.crlf { b"\r\n" } else { b"\n" }
    }

    fn push_raw(&mut self, bytes: &[u8]) {
        match self.segs.last_mut() {
            Some(Seg::Raw(raw)) => raw.extend_from_slice(bytes),
            _ => self.segs.push(Seg::Raw(bytes.to_vec())),
        }
    }

    fn push_comment(&mut self, text: &str) {
        self.end_last_line();
        let mut line = format!("# {text}").into_bytes();
        line.extend_from_slice(self.eol());
        self.push_raw(&line);
    }

    /// Replaces the last occurrence of `key` (the one Java uses) with a fresh `key=value` line, keeping that line's
    /// ending; or appends one.
    fn set(&mut self, key: &str, value: &str) {
        let text = format!("{}={}", escape(key, true), escape(value, false)).into_bytes();
        let found = self.segs.iter_mut().rev().find_map(|s| match s {
            Seg::Pair { key: k, value: v, raw, .. } if k == key => Some((v, raw)),
            _ => None,
        });
        if let Some((v, raw)) = found {
            let ending = line_ending(raw).to_vec();
            *raw = [text, ending].concat();
            *v = value.to_owned();
            return;
        }
        self.end_last_line();
        let raw = [text, self.eol().to_vec()].concat();
        self.segs.push(Seg::Pair { key: key.to_owned(), value: value.to_owned(), line: 0, raw });
    }

    /// A file may end without a newline; what we append must start on a line of its own.
    fn end_last_line(&mut self) {
        let eol = self.eol();
        let last = match self.segs.last_mut() {
            Some(Seg::Raw(raw)) | Some(Seg::Pair { raw, .. }) => raw,
            None => return,
        };
        if !last.is_empty() && line_ending(last).is_empty() {
            last.extend_from_slice(eol);
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.segs
            .iter()
            .flat_map(|s| match s {
                Seg::Raw(raw) | Seg::Pair { raw, .. } => raw.as_slice(),
            })
            .copied()
            .collect()
    }
}

/// Splits into physical lines, each with its terminator; `\n`, `\r\n` and a lone `\r` all end a line, as in Java
/// (and in the crate, whose line numbers these must match).
fn physical_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                lines.push(&bytes[start..=i]);
                start = i + 1;
            }
            b'\r' => {
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                lines.push(&bytes[start..=i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < bytes.len() {
        lines.push(&bytes[start..]);
    }
    lines
}

fn line_ending(line: &[u8]) -> &[u8] {
    if line.ends_with(b"\r\n") {
        &line[line.len() - 2..]
    } else if line.ends_with(b"\n") || line.ends_with(b"\r") {
        &line[line.len() - 1..]
    } else {
        &[]
    }
}

/// The index of the last physical line of the logical line starting at `first`, by the Java rules the crate
/// follows: a comment line never continues; otherwise a line ending in an odd number of backslashes does.
fn logical_end(lines: &[&[u8]], first: usize) -> usize {
    let content = |i: usize| {
        let l = lines[i];
        &l[..l.len() - line_ending(l).len()]
    };
    let is_comment =
        content(first).iter().find(|b| !matches!(b, b' ' | b'\t' | b'\x0c')).is_some_and(|b| matches!(b, b'#' | b'!'));
    let mut i = first;
    if is_comment {
        return i;
    }
    while content(i).iter().rev().take_while(|b| **b == b'\\').count() % 2 == 1 && i + 1 < lines.len() {
        i += 1;
    }
    i
}

/// Escapes a key or value the way Java's `Properties.store` does, and produces ASCII only (`\uXXXX` for the rest):
/// `\`, separators and comment characters are escaped, spaces too in a key and at the start of a value.
fn escape(text: &str, is_key: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\x0c' => out.push_str("\\f"),
            '=' | ':' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if is_key || i == 0 => out.push_str("\\ "),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/batm/config/gate.properties";

    fn root() -> Root {
        Root::default()
    }

    fn parse(text: &str) -> Result<GateConfig, String> {
        GateConfig::parse(text, Path::new(P), root()).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_when_keys_absent() {
        let g = parse("# nothing here\nbatm.other=1\n").unwrap();
        assert_eq!(g.processing_slots, 20);
        assert_eq!(g.download_dir.to_str(), Some("/batm/app/shared/"));
        assert_eq!(g.master_hostname, None);
        assert!(!g.vpn_skip);
        assert_eq!(g.file_state(), FileState::Present);
    }

    #[test]
    fn java_syntax() {
        let text = "! bang comment\n\
                    # hash comment\n\
                    batm.processing-slots : 7\n\
                    batm.vpn-skip   TRUE\n\
                    batm.down\\\n\
                    \x20   load=/srv/\\\n\
                    \x20        cas\\u002Dshare/\n\
                    batm.master\\.hostname\\=x=ignored\n\
                    batm.master.hostname=gate\\u002eexample.com\n";
        let g = parse(text).unwrap();
        assert_eq!(g.processing_slots, 7);
        assert!(g.vpn_skip);
        assert_eq!(g.download_dir.to_str(), Some("/srv/cas-share/"));
        assert_eq!(g.master_hostname.unwrap().as_str(), "gate.example.com");
    }

    #[test]
    fn errors_have_file_line_and_key() {
        assert_eq!(
            parse("# c\n\nbatm.processing-slots=0\n").unwrap_err(),
            "/batm/config/gate.properties:3: key batm.processing-slots: must be at least 1 (it is how many upgrade \
             downloads run at once)"
        );
        assert_eq!(
            parse("a=b\\\n  c\nbatm.processing-slots: lots\n").unwrap_err(),
            "/batm/config/gate.properties:3: key batm.processing-slots: invalid number \"lots\": expected a whole \
             number of at least 1, e.g. 20"
        );
        assert_eq!(
            parse("batm.vpn-skip=yes").unwrap_err(),
            "/batm/config/gate.properties:1: key batm.vpn-skip: invalid boolean \"yes\": expected true or false"
        );
        assert_eq!(
            parse("batm.download=relative/dir").unwrap_err(),
            "/batm/config/gate.properties:1: key batm.download: invalid path \"relative/dir\": expected an absolute \
             path, e.g. /batm/app/shared/"
        );
        let e = parse("batm.master.hostname=a b").unwrap_err();
        assert!(e.starts_with("/batm/config/gate.properties:1: key batm.master.hostname: invalid host \"a b\""), "{e}");
        assert_eq!(
            parse("batm.vpn-skip=true\nbatm.vpn-skip=false\n").unwrap_err(),
            "/batm/config/gate.properties:2: key batm.vpn-skip: set again (first set on line 1); keep only one"
        );
        let e = parse("x=1\nbad=\\u12G4\n").unwrap_err();
        assert!(e.starts_with("/batm/config/gate.properties:2: Malformed \\uxxxx encoding"), "{e}");
        // Unknown keys may repeat: they are CAS's business.
        assert!(parse("x=1\nx=2\n").is_ok());
    }

    #[test]
    fn cas_fixture_set_and_write_keep_everything_else() {
        let original = include_bytes!("../../tests/fixtures/config/gate.properties");
        let mut g = GateConfig::parse(original, Path::new(P), root()).unwrap();
        assert_eq!(g.processing_slots, 30);
        assert_eq!(g.download_dir.to_str(), Some("/batm/app/shared/"));
        assert!(!g.vpn_skip);
        assert_eq!(g.render(), original, "no change, no difference");

        g.set("batm.vpn-skip", "true").unwrap();
        g.master_hostname = Some("master.example.com".parse().unwrap());
        g.set("cas.custom.key", "with spaces = and # and ünï").unwrap();
        let out = String::from_utf8(g.render()).unwrap();
        let expected = String::from_utf8(original.to_vec())
            .unwrap()
            .replace("batm.vpn-skip = false\n", "batm.vpn-skip=true\n")
            // Keys `set` adds come in call order; fields changed directly are appended when rendering.
            + "cas.custom.key=with spaces \\= and \\# and \\u00FCn\\u00EF\n"
            + "batm.master.hostname=master.example.com\n";
        assert_eq!(out, expected);

        let again = GateConfig::parse(out.as_bytes(), Path::new(P), root()).unwrap();
        assert!(again.vpn_skip);
        assert_eq!(again.master_hostname.as_ref().unwrap().as_str(), "master.example.com");
        assert_eq!(again.doc.pairs().find(|p| p.1 == "cas.custom.key").unwrap().2, "with spaces = and # and ünï");
        assert_eq!(again.doc.pairs().find(|p| p.1 == "batm.upgrade.url").unwrap().2, "https://example.com/upgrade/pkg");
    }

    #[test]
    fn crlf_and_missing_final_newline_are_kept() {
        let text = "# c\r\nbatm.vpn-skip=false\r\nother=1";
        let mut g = parse(text).unwrap();
        g.set("batm.vpn-skip", "true").unwrap();
        g.set("batm.processing-slots", "5").unwrap();
        assert_eq!(
            String::from_utf8(g.render()).unwrap(),
            "# c\r\nbatm.vpn-skip=true\r\nother=1\r\nbatm.processing-slots=5\r\n"
        );
    }

    #[test]
    fn latin1_bytes_survive_untouched() {
        // "caf\xe9" is Latin-1, not UTF-8: Java's own encoding for this file.
        let bytes = b"# caf\xe9\nname=caf\xe9\nbatm.vpn-skip=false\n";
        let mut g = GateConfig::parse(bytes, Path::new(P), root()).unwrap();
        assert_eq!(g.doc.pairs().next().unwrap().2, "café");
        g.set("batm.vpn-skip", "true").unwrap();
        assert_eq!(g.render(), b"# caf\xe9\nname=caf\xe9\nbatm.vpn-skip=true\n");
    }

    #[test]
    fn set_refuses_bad_values_and_changes_nothing() {
        let mut g = parse("batm.processing-slots=4\n").unwrap();
        let before = g.clone();
        for (k, v) in [
            ("batm.processing-slots", "-1"),
            ("batm.vpn-skip", "1"),
            ("batm.master.hostname", "x\nup /bin/sh"),
            ("batm.master.hostname", "\"quoted\""),
            ("other", "two\nlines"),
            ("bad\nkey", "v"),
            ("", "v"),
            ("emoji", "\u{1F600}"),
        ] {
            let e = g.set(k, v).unwrap_err().to_string();
            assert!(e.starts_with("/batm/config/gate.properties: key "), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        assert_eq!(g, before);
        g.set("batm.master.hostname", "m.example.com").unwrap();
        g.set("batm.master.hostname", "").unwrap();
        assert_eq!(g.master_hostname, None);
    }

    #[test]
    fn escapes_round_trip_through_the_parser() {
        for s in ["plain", " lead", "a b", "x=y:z", "#!", "back\\slash", "tab\tnl\ncr\r", "ünï€", "end\\"] {
            let mut doc = PropsDoc::default();
            doc.set(s, s);
            let bytes = doc.to_bytes();
            assert!(bytes.is_ascii());
            let back = PropsDoc::parse(&bytes, Path::new(P)).unwrap();
            assert_eq!(back.pairs().collect::<Vec<_>>(), [(1, s, s)], "{}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn physical_and_logical_lines_match_the_crate() {
        let text = "a=1\\\n  2\r\n#c\\\nb=3\rc=4\\\\\nd=5\\";
        let doc = PropsDoc::parse(text.as_bytes(), Path::new(P)).unwrap();
        assert_eq!(doc.to_bytes(), text.as_bytes());
        let pairs: Vec<_> = doc.pairs().collect();
        assert_eq!(pairs, [(1, "a", "12"), (4, "b", "3"), (5, "c", "4\\")]);
    }

    #[test]
    fn defaults_write_and_load() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path()).unwrap();
        let g = GateConfig::load(&root).unwrap();
        assert_eq!(g.file_state(), FileState::Missing);
        assert_eq!(g.download_dir, root.default_download_dir());
        g.write(&root).unwrap();
        let text = std::fs::read_to_string(root.gate_file()).unwrap();
        for key in GATE_KEYS {
            assert!(text.contains(&format!("\n{key}=")), "{text}");
        }
        let back = GateConfig::load(&root).unwrap();
        assert_eq!(back.file_state(), FileState::Present);
        assert_eq!(back.values(), g.values());

        // Nothing is written when validation fails.
        let mut bad = back.clone();
        bad.processing_slots = 0;
        let e = bad.write(&root).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "gate.properties: key batm.processing-slots: must be at least 1 (it is how many upgrade \
                             downloads run at once)"
            ),
            "{e}"
        );
        bad.processing_slots = 3;
        bad.download_dir = PathBuf::from("rel");
        assert!(bad.write(&root).is_err());
        assert_eq!(std::fs::read_to_string(root.gate_file()).unwrap(), text);
    }
}
