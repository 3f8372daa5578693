//! OpenVPN management protocol, parsing only (no I/O): real-time `>CLIENT:` notifications with their ENV blocks,
//! and the `status 3` table read by its HEADER lines (2.4 and 2.6 differ in columns, so never by position).

use std::collections::HashMap;

/// The environment openvpn sends with a client notification (`>CLIENT:ENV,name=value`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env(Vec<(String, String)>);

impl Env {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A new client waits for `client-auth`/`client-deny`.
    Connect {
        cid: u64,
        kid: u64,
        env: Env,
    },
    /// A renegotiation waits for an answer too: the credential may have been revoked since.
    Reauth {
        cid: u64,
        kid: u64,
        env: Env,
    },
    Established {
        cid: u64,
        env: Env,
    },
    Disconnect {
        cid: u64,
        env: Env,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Client(ClientEvent),
    /// `>INFO:`, `>LOG:`, `>STATE:`, `>CLIENT:ADDRESS` …: logged, not acted on.
    Other(String),
    /// A line that is not a notification: part of a command's answer.
    Reply(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connect,
    Reauth,
    Established,
    Disconnect,
}

/// A notification whose ENV block is still arriving: kind, client id, key id, variables so far.
type Open = (Kind, u64, u64, Vec<(String, String)>);

/// Feeds lines, yields messages. A client notification is yielded once its `ENV,END` arrived.
#[derive(Debug, Default)]
pub struct Parser {
    open: Option<Open>,
}

/// Bounds on what a misbehaving peer can make us hold.
const MAX_ENV: usize = 512;

impl Parser {
    pub fn feed(&mut self, line: &str) -> Option<Message> {
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(rest) = line.strip_prefix(">CLIENT:ENV,") {
            let (kind, cid, kid, mut env) = self.open.take()?;
            if rest == "END" {
                let env = Env(env);
                return Some(Message::Client(match kind {
                    Kind::Connect => ClientEvent::Connect { cid, kid, env },
                    Kind::Reauth => ClientEvent::Reauth { cid, kid, env },
                    Kind::Established => ClientEvent::Established { cid, env },
                    Kind::Disconnect => ClientEvent::Disconnect { cid, env },
                }));
            }
            if env.len() < MAX_ENV {
                let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                env.push((k.to_owned(), v.to_owned()));
            }
            self.open = Some((kind, cid, kid, env));
            return None;
        }
        if let Some(rest) = line.strip_prefix(">CLIENT:") {
            let mut parts = rest.split(',');
            let kind = match parts.next() {
                Some("CONNECT") => Kind::Connect,
                Some("REAUTH") => Kind::Reauth,
                Some("ESTABLISHED") => Kind::Established,
                Some("DISCONNECT") => Kind::Disconnect,
                _ => return Some(Message::Other(line.to_owned())),
            };
            let cid = parts.next().and_then(|s| s.parse().ok());
            let kid = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let Some(cid) = cid else { return Some(Message::Other(line.to_owned())) };
            self.open = Some((kind, cid, kid, Vec::new()));
            return None;
        }
        if line.starts_with('>') {
            return Some(Message::Other(line.to_owned()));
        }
        Some(Message::Reply(line.to_owned()))
    }
}

/// One row of `CLIENT_LIST` in `status 3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusClient {
    pub common_name: String,
    pub real_address: String,
    pub virtual_address: String,
    pub bytes_received: i64,
    pub bytes_sent: i64,
    pub connected_since: i64,
    pub client_id: Option<u64>,
}

/// Parses the lines of a `status 3` answer (tab-separated), mapping columns by the `HEADER,CLIENT_LIST` line.
pub fn parse_status(lines: &[String]) -> Vec<StatusClient> {
    let mut columns: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["HEADER", "CLIENT_LIST", rest @ ..] => {
                // Data rows start with the row type, so column i of the header is field i + 1 of a row.
                columns = rest.iter().enumerate().map(|(i, name)| ((*name).to_owned(), i + 1)).collect();
            }
            ["CLIENT_LIST", ..] => {
                let get = |name: &str| columns.get(name).and_then(|&i| fields.get(i)).copied().unwrap_or("");
                let num = |name: &str| get(name).parse::<i64>().unwrap_or(0);
                out.push(StatusClient {
                    common_name: get("Common Name").to_owned(),
                    real_address: get("Real Address").to_owned(),
                    virtual_address: get("Virtual Address").to_owned(),
                    bytes_received: num("Bytes Received"),
                    bytes_sent: num("Bytes Sent"),
                    connected_since: num("Connected Since (time_t)"),
                    client_id: get("Client ID").parse().ok(),
                });
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_connect_block() {
        let mut p = Parser::default();
        assert_eq!(p.feed(">CLIENT:CONNECT,4,1"), None);
        assert_eq!(p.feed(">CLIENT:ENV,common_name=atm-1"), None);
        assert_eq!(p.feed(">CLIENT:ENV,untrusted_ip=127.0.0.1"), None);
        assert_eq!(p.feed(">CLIENT:ENV,odd"), None);
        let Some(Message::Client(ClientEvent::Connect { cid, kid, env })) = p.feed(">CLIENT:ENV,END") else { panic!() };
        assert_eq!((cid, kid), (4, 1));
        assert_eq!(env.get("common_name"), Some("atm-1"));
        assert_eq!(env.get("untrusted_ip"), Some("127.0.0.1"));
        assert_eq!(env.get("odd"), Some(""));
        assert_eq!(
            p.feed("SUCCESS: client-auth command succeeded"),
            Some(Message::Reply("SUCCESS: client-auth command succeeded".into()))
        );
        assert!(matches!(p.feed(">INFO:OpenVPN Management Interface Version 5"), Some(Message::Other(_))));
        assert!(matches!(p.feed(">CLIENT:ADDRESS,4,198.18.0.2,1"), Some(Message::Other(_))));
    }

    #[test]
    fn env_without_header_and_garbage_do_not_panic() {
        let mut p = Parser::default();
        assert_eq!(p.feed(">CLIENT:ENV,END"), None);
        assert!(matches!(p.feed(">CLIENT:CONNECT,x,y"), Some(Message::Other(_))));
        for _ in 0..10_000 {
            p.feed(">CLIENT:ENV,a=b");
        }
    }

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_owned).collect()
    }

    #[test]
    fn status_2_6_by_header() {
        let s = lines(
            "TITLE\tOpenVPN 2.6.14\nTIME\t2026-11-21 10:00:00\t1795000000\n\
HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tVirtual IPv6 Address\tBytes Received\tBytes Sent\tConnected Since\tConnected Since (time_t)\tUsername\tClient ID\tPeer ID\tData Channel Cipher\n\
CLIENT_LIST\tatm-1\t127.0.0.1:40000\t198.18.0.2\t\t100\t200\t2026-11-21 10:00:00\t1795000000\tUNDEF\t7\t0\tAES-256-GCM\n\
HEADER\tROUTING_TABLE\tVirtual Address\tCommon Name\tReal Address\tLast Ref\tLast Ref (time_t)\nEND",
        );
        let c = parse_status(&s);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].common_name, "atm-1");
        assert_eq!(c[0].virtual_address, "198.18.0.2");
        assert_eq!((c[0].bytes_received, c[0].bytes_sent), (100, 200));
        assert_eq!(c[0].client_id, Some(7));
    }

    #[test]
    fn status_2_4_by_header() {
        // 2.4: no "Data Channel Cipher" column, and older builds no Client ID / Peer ID.
        let s = lines(
            "TITLE\tOpenVPN 2.4.7\n\
HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tBytes Received\tBytes Sent\tConnected Since\tConnected Since (time_t)\tUsername\n\
CLIENT_LIST\tatm-2\t192.0.2.5:1194\t198.18.0.3\t5\t6\tThu\t1795000001\tUNDEF\nEND",
        );
        let c = parse_status(&s);
        assert_eq!(c[0].common_name, "atm-2");
        assert_eq!(c[0].virtual_address, "198.18.0.3");
        assert_eq!(c[0].connected_since, 1795000001);
        assert_eq!(c[0].client_id, None);
    }
}
