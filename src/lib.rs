//! cas-vpn: an OpenVPN orchestrator for Bitcoin ATM fleets. See ARCHITECTURE.md for the map and the floors:
//! `cli → ops/daemon/web → services (vpn, gate, master, net, firewall, agent) → app/http/wire/control/cluster → db/config/pkifiles/ovpn →
//! domain/sys (and cas-pki)`. Nothing imports upward; services never import `ops` or each other
//! (`tests/it/layers.rs` enforces it).

// Floor 6: the command line.
pub mod cli;
// Floor 5: use cases, the process launcher, and the admin web UI (it calls the use cases, like the CLI).
pub mod daemon;
pub mod ops;
pub mod web;
// Floor 4: the services (one process each) and the reference terminal.
pub mod agent;
pub mod firewall;
pub mod gate;
pub mod master;
pub mod net;
pub mod signer;
pub mod vpn;
// Floor 3: what services share.
pub mod app;
pub mod cluster;
pub mod control;
pub mod http;
pub mod wire;
// Floor 2: the store, the configuration files, the PKI on disk, OpenVPN rendering.
pub mod config;
pub mod db;
pub mod ovpn;
pub mod pkifiles;
// Floor 1: validated types and pure policy; the only code that touches the OS.
pub mod domain;
pub mod sys;
