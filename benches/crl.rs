//! CRL figure: a CRL for 10,000 revoked certificates made end to end as `revoke` makes it (read the revoked
//! serials from the store, sign, pre-flight check, write atomically). Run: `scripts/bench-crl`.

use std::time::Instant;

use cas_pki::RevocationReason;
use cas_vpn::db::{NewCert, NewTerminal, TerminalLayout};
use cas_vpn::domain::{Kind, Name};
use cas_vpn::ops::{self, Ctx};

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    const N: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let t0 = Instant::now();
    ops::init::init(
        root,
        None,
        ops::init::InitOptions { public_ip: Some("198.51.100.1".parse().unwrap()), ..Default::default() },
    )
    .await
    .unwrap();
    println!("init_ec_ms={}", t0.elapsed().as_millis());
    let ctx = Ctx::open(root, None).await.unwrap();
    // 10,000 terminals with certificate rows (serials are what a CRL lists), then revoked.
    let now = ops::now();
    let new: Vec<NewTerminal> = (0..N)
        .map(|i| NewTerminal {
            name: format!("atm-{i:05}").parse::<Name>().unwrap(),
            cert: Some(NewCert {
                serial: cas_pki::Serial::random().to_hex(),
                common_name: format!("atm-{i:05}"),
                not_before: now,
                not_after: now + 86400,
                cert_pem: String::new(),
            }),
            token: None,
        })
        .collect();
    let layout = TerminalLayout { instances: 11, hosts_per_instance: 4093 };
    ctx.store.create_terminals(&new, layout, now).await.unwrap();
    for t in &new {
        ctx.store.revoke(&t.name, RevocationReason::CessationOfOperation, &ctx.actor, now).await.unwrap();
    }
    let mut runs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = ops::crl::refresh(&ctx, Kind::Terminal).await.unwrap();
        runs.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.revoked, N);
    }
    runs.sort_by(|a, b| a.total_cmp(b));
    println!("crl_10000_revoked_end_to_end_ms_median={:.0}", runs[2]);
    println!("crl_10000_revoked_end_to_end_ms_max={:.0}", runs[4]);
    println!("crl_bytes={}", std::fs::metadata(root.join("pki/crl-terminal.pem")).unwrap().len());
}
