//! CSR text as a terminal sends it: PEM → PKCS#10 → key checks → signature → what it asks for. Also raw DER wrapped
//! in PEM armour, to reach the ASN.1 parser with arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = cas_vpn::app::csr::check(text, Some("atm-1"));
        let _ = cas_vpn::app::csr::check(text, None);
    }
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE REQUEST-----\n");
    let _ = cas_vpn::app::csr::check(&pem, None);
});
