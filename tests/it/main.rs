//! The one integration test binary: drives the `cas-vpn` CLI, the store on both backends, and the HTTP routers.

mod agent;
mod audit;
mod backup;
mod bulk;
mod cli;
mod gate;
mod golden_json;
mod health;
mod hostile;
mod import;
mod layers;
mod master;
mod metrics;
mod nodes;
mod packaging;
mod renewal;
mod signer;
mod store;
mod support;
mod web;
