//! End-to-end tests: real `openvpn` (and later the `cas-vpn` binary) in network namespaces.
//!
//! Needs root, iproute2, openvpn, openssl and iputils-ping; skips without them unless `CI=true` (then fails).
//! After a run that was killed (Ctrl-C, timeout), `scripts/e2e-cleanup` removes leftover `cv*` namespaces.

mod pairing;
mod smoke;
mod support;
mod vpn;
