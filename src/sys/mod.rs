//! The only place that touches the operating system: files with modes, child commands, interfaces.
//!
//! Keeping these here means the rest of the crate can be read (and tested) as plain logic, and every command
//! cas-vpn runs goes through one helper that logs its argv and keeps its stderr.

pub mod cmd;
pub mod fs;
pub mod net;
pub mod process;
