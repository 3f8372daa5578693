//! The reference terminal agent (`cas-vpn agent`).

pub mod http;
