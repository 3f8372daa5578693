//! The one integration test binary: drives the `cas-vpn` CLI, the store on both backends, and the HTTP routers.

mod cli;
mod hostile;
mod store;
mod support;
