//! The management interface of one openvpn instance. cas-vpn owns the unix socket (openvpn accepts one client at
//! a time): it answers every CONNECT/REAUTH, kills sessions, and reads status.

mod client;
pub mod proto;

pub use client::{Answer, Mgmt, MgmtError};
pub use proto::{ClientEvent, Env, StatusClient};
