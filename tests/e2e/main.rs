//! End-to-end tests: real `openvpn` (and later the `cas-vpn` binary) in network namespaces.
//!
//! Needs root, iproute2, openvpn, openssl and iputils-ping (and chromium and chromium-driver for the browser tests).
//! Every test is `#[ignore]`d (a plain `cargo test` shows it as ignored); `scripts/test` runs them with
//! `--include-ignored`, and a test run without its prerequisites fails, naming what is missing. After a run that
//! was killed (Ctrl-C, timeout), `scripts/e2e-cleanup` removes what it left behind (see `support/netns.rs` for the
//! names).

mod backup;
mod browser;
mod cleanup;
mod firewall;
mod flood;
mod health;
mod nodes;
mod pairing;
mod privsep;
mod smoke;
mod store_fault;
mod support;
mod vpn;
mod web;
