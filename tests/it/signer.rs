//! The signer's requests as the owner (this test process) makes them: server-made keys and CSR signatures only for
//! active credentials of the right kind, every answer audited. The uid rules (the gate's user refused) are proven
//! with real users in `tests/e2e/privsep.rs`.

use cas_vpn::control::signer::{self, SignerError};
use cas_vpn::domain::{Kind, Name};

use crate::gate::Fixture;

#[tokio::test]
async fn server_made_keys_only_for_active_credentials_of_their_kind() {
    let f = Fixture::new().await;
    let root = f.ctx.cfg.root.clone();
    f.add_terminal("atm-1", &[]);
    f.add_terminal("atm-2", &[]);
    f.install.ok(&["revoke", "atm-2"]);
    let name = |n: &str| n.parse::<Name>().unwrap();

    let (key, cert, serial) = signer::issue(&root, Kind::Terminal, &name("atm-1")).await.unwrap();
    let x509 = openssl::x509::X509::from_pem(cert.as_bytes()).unwrap();
    let pkey = openssl::pkey::PKey::private_key_from_pem(key.as_bytes()).unwrap();
    assert!(x509.public_key().unwrap().public_eq(&pkey), "the key is the certificate's");
    let cn = x509.subject_name().entries_by_nid(openssl::nid::Nid::COMMONNAME).next().unwrap();
    assert_eq!(cn.data().to_string().unwrap(), "atm-1");
    assert_eq!(
        x509.serial_number().to_bn().unwrap().to_hex_str().unwrap().to_lowercase().trim_start_matches('0'),
        serial.trim_start_matches('0')
    );

    for (kind, n, why) in [
        (Kind::Terminal, "atm-2", "revoked"),
        (Kind::Terminal, "nobody", "no such"),
        (Kind::Admin, "atm-1", "not admin"),
    ] {
        match signer::issue(&root, kind, &name(n)).await {
            Err(SignerError::Refused(reason)) => assert!(reason.contains(why), "{n}: {reason}"),
            other => panic!("{n} as {kind}: expected a refusal, got {other:?}"),
        }
    }
    let audit = f.ctx.store.list_audit(100).await.unwrap();
    assert_eq!(audit.iter().filter(|r| r.action == "signer.sign").count(), 1);
    assert_eq!(audit.iter().filter(|r| r.action == "signer.refused").count(), 3);
}
