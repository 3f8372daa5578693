//! The terminal front port's first-packet reader (Internet input): arbitrary bytes as a first packet, and genuine
//! wrapped keys carrying arbitrary metadata (to get past the HMAC and reach the metadata parser).
#![no_main]

use std::sync::OnceLock;

use cas_pki::{ClientMetadata, TlsCryptV2ServerKey};
use libfuzzer_sys::fuzz_target;

fn key() -> &'static TlsCryptV2ServerKey {
    static KEY: OnceLock<TlsCryptV2ServerKey> = OnceLock::new();
    KEY.get_or_init(TlsCryptV2ServerKey::generate)
}

fuzz_target!(|data: &[u8]| {
    let _ = cas_vpn::vpn::front::terminal_of(data, key());
    if let Ok(client) = key().wrap_client_key(&ClientMetadata::User(data.to_vec())) {
        let mut packet = vec![10 << 3];
        packet.extend_from_slice(&[0u8; 48]);
        packet.extend_from_slice(client.wrapped_key());
        let _ = cas_vpn::vpn::front::terminal_of(&packet, key());
    }
});
