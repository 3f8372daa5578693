//! The only place that touches the operating system: files with modes and owners, child commands, interfaces,
//! processes and their credentials, unix accounts, single-instance locks.
//!
//! Keeping these here means the rest of the crate can be read (and tested) as plain logic, and every command
//! cas-vpn runs goes through one helper that logs its argv and keeps its stderr.

pub mod cmd;
pub mod firewall;
pub mod fs;
pub mod lock;
pub mod net;
pub mod process;
pub mod users;
