//! `cas-vpn audit`: the audit trail as a table or a JSON array, streamed a page at a time. Every value read from
//! the store is shown escaped: a subject written by an older version (or by anyone with write access to the
//! database) may hold a newline or a terminal escape sequence, and none reaches the terminal as such.

use std::borrow::Cow;
use std::io::{self, Write};

use clap::Args;

use crate::domain::{Actor, Since, unsafe_char};
use crate::ops::{self, Ctx};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only rows from this time on: an RFC 3339 time (2026-01-31T08:00:00Z) or a duration back from now (24h, 7d).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<Since>,
    /// Only rows of this actor, as rows name them: cli:root, web:alice, api:alice, gate, master, vpn, signer, net,
    /// admin, uid:N.
    #[arg(long)]
    pub actor: Option<Actor>,
    /// Only actions starting with this (terminal., revoke, web_user).
    #[arg(long, value_name = "PREFIX", value_parser = action_prefix)]
    pub action: Option<String>,
    /// Only the newest N matching rows (still oldest first). Default: all of them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub json: super::Json,
}

/// The longest action prefix taken (actions are short dotted words).
const MAX_ACTION: usize = 64;

fn action_prefix(s: &str) -> Result<String, String> {
    let ok = (1..=MAX_ACTION).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "expected an action prefix of 1-{MAX_ACTION} lowercase letters, digits, `.`, `_` or `-` (terminal., revoke)"
        ))
    }
}

pub async fn run(ctx: Ctx, args: AuditArgs) -> anyhow::Result<()> {
    let req = ops::audit::AuditRequest { since: args.since, actor: args.actor, action: args.action, limit: args.limit };
    let mut trail = ops::audit::trail(&ctx, &req).await?;
    // Not the stdout lock: it would be held across the store's awaits.
    let mut out = io::BufWriter::new(io::stdout());
    let json = args.json.json;
    if json {
        out.write_all(b"[")?;
    } else {
        writeln!(out, "{:<20}  {:<14} {:<15} {:<20} {:<24} DETAIL", "TIME", "ACTOR", "SOURCE", "ACTION", "SUBJECT")?;
    }
    let mut first = true;
    loop {
        let page = trail.next_page().await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            if json {
                // One object per line: the whole is one JSON array, and each row stays greppable.
                out.write_all(if first { b"\n" } else { b",\n" })?;
                serde::Serialize::serialize(e, &mut serde_json::Serializer::with_formatter(&mut out, SafeJson))?;
            } else {
                writeln!(
                    out,
                    "{:<20}  {:<14} {:<15} {:<20} {:<24} {}",
                    escaped(&e.at),
                    escaped(&e.actor),
                    e.source.as_deref().map_or(Cow::Borrowed("-"), escaped),
                    escaped(&e.action),
                    escaped(&e.subject),
                    escaped(&e.detail)
                )?;
            }
            first = false;
        }
        out.flush()?;
    }
    if json {
        out.write_all(if first { b"]\n" } else { b"\n]\n" })?;
    }
    out.flush()?;
    Ok(())
}

/// A stored value for the table: unsafe characters as escapes (`\n`, `\r`, `\t`, `\u{1b}`), and the backslash
/// doubled so that an escape shown is never mistaken for the text `\n`.
pub(crate) fn escaped(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || unsafe_char(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Compact JSON whose strings carry no unsafe character raw: serde_json escapes C0 controls itself; DEL, C1 and
/// the format characters are written as `\uXXXX` here. The value a JSON reader gets is unchanged.
struct SafeJson;

impl serde_json::ser::Formatter for SafeJson {
    fn write_string_fragment<W: ?Sized + Write>(&mut self, w: &mut W, fragment: &str) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if unsafe_char(c) {
                w.write_all(&fragment.as_bytes()[start..i])?;
                // Every unsafe character is in the Basic Multilingual Plane: one \u escape each.
                write!(w, "\\u{:04x}", u32::from(c))?;
                start = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_escaped_for_the_terminal() {
        assert_eq!(escaped("atm-1"), "atm-1");
        assert_eq!(escaped("a\nb\r\tc\\n"), "a\\nb\\r\\tc\\\\n");
        assert_eq!(escaped("\u{1b}[2J\u{7f}\u{9b}"), "\\u{1b}[2J\\u{7f}\\u{9b}");
        assert_eq!(escaped("abc\u{202e}def\u{200b}"), "abc\\u{202e}def\\u{200b}");
        assert_eq!(escaped("café ✓"), "café ✓");
    }

    #[test]
    fn json_strings_keep_their_value_and_lose_their_raw_controls() {
        let hostile = "x\u{1b}[31m\n\u{7f}\u{9b}\u{202e}y\"\\ é";
        let mut buf = Vec::new();
        serde::Serialize::serialize(&hostile, &mut serde_json::Serializer::with_formatter(&mut buf, SafeJson)).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(!text.chars().any(unsafe_char), "{text:?}");
        assert_eq!(serde_json::from_str::<String>(&text).unwrap(), hostile);
        assert!(text.contains("\\u007f") && text.contains("\\u202e") && text.contains('é'), "{text}");
    }

    #[test]
    fn action_prefixes_are_plain_words() {
        assert_eq!(action_prefix("terminal.").unwrap(), "terminal.");
        for bad in ["", "Terminal", "a b", "a%", "x\n", &"a".repeat(65)] {
            assert!(action_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
