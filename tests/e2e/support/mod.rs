//! The e2e harness: network namespaces, a bridged test LAN, guarded child processes, polling waits, openvpn and
//! reachability helpers, a throwaway openssl PKI, a headless browser inside a namespace, and several cas-vpn nodes
//! sharing one store (`cluster`).
//!
//! It depends on std, tokio, nix and tempfile (and fantoccini and serde_json for the browser) only, never on the
//! cas-vpn library: the tests drive the `cas-vpn` binary (`env!("CARGO_BIN_EXE_cas-vpn")`) like an operator would,
//! and the harness keeps working while the library is being changed.
//!
//! Rules: names start with `cv<run id>-` (one id per test process, see `netns.rs`);
//! addresses only from 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 and 198.18.0.0/15, and only inside
//! namespaces the test created; no traffic to anything else; the host's interfaces, routes and firewall are never
//! touched. `scripts/e2e-cleanup` removes what a killed run left behind (never what a live run holds).

// Not every test uses every helper (nor every re-export below); unused ones must not turn into warnings.
#![allow(dead_code, unused_imports)]

pub mod browser;
pub mod child;
pub mod cluster;
pub mod deploy;
pub mod env;
pub mod flood;
pub mod lan;
pub mod netns;
pub mod openvpn;
pub mod pg;
pub mod pki;
pub mod reach;
pub mod wait;

pub use browser::{Browser, require_browser, spawn_in_netns};
pub use child::ChildGuard;
pub use env::{require_root, temp_dir};
pub use lan::Lan;
pub use netns::{Netns, list_netns};
pub use openvpn::{client_address, openvpn_client, openvpn_server, tun_device, tun_ipv4, wait_initialized};
pub use pki::{TestPki, Usage};
pub use reach::{Answer, ping, tcp_connect, tcp_listener, tcp_probe};
pub use wait::{wait_for, wait_for_async, wait_until, wait_until_async};
