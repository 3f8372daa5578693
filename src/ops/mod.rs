//! What the operator can do, as functions that return reports: `init`, terminals, admin credentials,
//! revocation, CRLs, status. They never print (`cli.rs` does); the web UI and the gate call the same functions.

pub mod admin;
pub mod audit;
pub mod backup;
pub mod browse;
pub mod bulk_revoke;
pub mod doctor;
pub mod firewall;
pub mod import;
pub mod init;
pub mod metrics;
pub mod nodes;
pub mod ownership;
pub mod pairing;
pub mod revoke;
pub mod status;
pub mod terminal;
pub mod web_users;

pub use crate::app::{AppError as OpsError, Ctx, crl, instances, now, profile, rfc3339, to_datetime};
