//! `POST /v1/pair` bodies as the gate reads them: JSON → `PairRequest`, then every field it interprets (version,
//! serial, token, CSR). Nothing may panic, whatever the bytes.
#![no_main]

use cas_vpn::wire::{HeartbeatRequest, PairRequest, RenewRequest, version_date};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<HeartbeatRequest>(data);
    let _ = serde_json::from_slice::<RenewRequest>(data).map(|r| cas_vpn::app::csr::check(&r.csr, Some("atm-1")));
    let Ok(req) = serde_json::from_slice::<PairRequest>(data) else { return };
    let _ = version_date(&req.terminal.version);
    if let Some(t) = &req.token {
        let _ = t.parse::<cas_vpn::domain::PairingToken>();
    }
    if let Some(csr) = &req.csr {
        let _ = cas_vpn::app::csr::check(csr, None);
        let _ = cas_vpn::app::csr::check(csr, Some("atm-1"));
    }
});
