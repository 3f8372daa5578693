//! Rough timings for the bulk paths: a CRL with 10,000 entries, 2,000 EC client certificates, and 2,000
//! tls-crypt-v2 client keys. Run with `cargo run -p cas-pki --release --example bench_crl`.
//!
//! Prints `name=value` lines so scripts can pick the numbers up.

use std::time::Instant;

use cas_pki::{Ca, ClientMetadata, KeyType, RevocationReason, Revoked, Serial, TlsCryptV2ServerKey, Validity};
use time::{Duration, OffsetDateTime};

fn main() {
    let ca = Ca::generate("bench-ca", KeyType::EcP256, Validity::days_from_now(3650)).expect("generate CA");
    let now = OffsetDateTime::now_utc();

    let revoked: Vec<Revoked> = (0..10_000)
        .map(|_| Revoked {
            serial: Serial::random(),
            revoked_at: now - Duration::days(1),
            reason: RevocationReason::Superseded,
        })
        .collect();
    let start = Instant::now();
    let crl = ca.crl(&revoked, 1, now - Duration::minutes(5), now + Duration::days(7)).expect("CRL");
    println!("crl_10000_entries_ms={}", start.elapsed().as_millis());
    println!("crl_10000_entries_bytes={}", crl.len());

    // 100,000 entries: the signing alone, then what a parse and check of it costs with openssl.
    let revoked: Vec<Revoked> = (0..100_000)
        .map(|_| Revoked {
            serial: Serial::random(),
            revoked_at: now - Duration::days(1),
            reason: RevocationReason::CessationOfOperation,
        })
        .collect();
    let start = Instant::now();
    let crl = ca.crl(&revoked, 1, now - Duration::minutes(5), now + Duration::days(7)).expect("CRL");
    println!("crl_100000_entries_sign_ms={}", start.elapsed().as_millis());
    let start = Instant::now();
    let parsed = openssl::x509::X509Crl::from_pem(crl.as_bytes()).expect("parse");
    println!("crl_100000_openssl_parse_ms={}", start.elapsed().as_millis());
    let start = Instant::now();
    let key = openssl::x509::X509::from_pem(ca.cert_pem().as_bytes()).unwrap().public_key().unwrap();
    assert!(parsed.verify(&key).unwrap());
    println!("crl_100000_openssl_verify_ms={}", start.elapsed().as_millis());
    // What the pre-flight check costs now: one walk over the DER and the signature over its tbsCertList.
    let der = ca.crl_der(&revoked, 1, now - Duration::minutes(5), now + Duration::days(7)).expect("CRL");
    let start = Instant::now();
    cas_pki::check_crl(ca.cert_pem(), &der).expect("check");
    println!("crl_100000_check_ms={}", start.elapsed().as_millis());

    let start = Instant::now();
    for i in 0..2000 {
        ca.issue_client(&format!("atm-{i:04}"), KeyType::EcP256, Validity::days_from_now(825)).expect("issue client");
    }
    println!("issue_client_ec_2000_ms={}", start.elapsed().as_millis());

    let server = TlsCryptV2ServerKey::generate();
    let start = Instant::now();
    for _ in 0..2000 {
        server.wrap_client_key(&ClientMetadata::timestamp_now()).expect("wrap");
    }
    println!("tls_crypt_v2_wrap_2000_ms={}", start.elapsed().as_millis());
}
