//! cas-vpn: an OpenVPN orchestrator for Bitcoin ATM fleets. See ARCHITECTURE.md for the map.

pub mod agent;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod gate;
pub mod master;
pub mod ops;
pub mod ovpn;
pub mod pkifiles;
pub mod supervisor;
pub mod sys;
