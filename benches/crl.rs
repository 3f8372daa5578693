//! CRL figure: a CRL for `CRL_N` (default 100,000) revoked certificates made end to end as `revoke` makes it
//! (read the revoked serials from the store, sign, pre-flight check, write atomically, record in the store),
//! side by side with the anchor `openssl ca -gencrl` on the same list (its own index.txt). Run:
//! `scripts/bench-crl`.

use std::io::Write as _;
use std::time::Instant;

use cas_pki::RevocationReason;
use cas_vpn::db::{NewCert, NewTerminal, TerminalLayout};
use cas_vpn::domain::{Kind, Name};
use cas_vpn::ops::{self, Ctx};

fn median(mut runs: Vec<f64>) -> (f64, f64) {
    runs.sort_by(|a, b| a.total_cmp(b));
    (runs[runs.len() / 2], runs[runs.len() - 1])
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("CRL_N").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
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
    // N terminals with certificate rows (serials are what a CRL lists), then revoked in one bulk revocation.
    let now = ops::now();
    let new: Vec<NewTerminal> = (0..n)
        .map(|i| NewTerminal {
            name: format!("atm-{i:06}").parse::<Name>().unwrap(),
            cert: Some(NewCert {
                serial: cas_pki::Serial::random().to_hex(),
                common_name: format!("atm-{i:06}"),
                not_before: now,
                not_after: now + 86400,
                cert_pem: String::new(),
            }),
            token: None,
        })
        .collect();
    let layout = TerminalLayout { instances: 64, hosts_per_instance: 4093 };
    let names: Vec<Name> = new.iter().map(|t| t.name.clone()).collect();
    ctx.store.create_terminals(&new, layout, now).await.unwrap();
    let t = Instant::now();
    ctx.store.revoke_many(&names, RevocationReason::CessationOfOperation, &ctx.actor, now, false).await.unwrap();
    println!("store_revoke_many_{n}_ms={}", t.elapsed().as_millis());

    let mut runs = Vec::new();
    let mut steps: [Vec<f64>; 6] = Default::default();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    for _ in 0..5 {
        let t = Instant::now();
        let r = ops::crl::refresh(&ctx, Kind::Terminal).await.unwrap();
        runs.push(ms(t.elapsed()));
        assert_eq!(r.revoked, n);
        let s = r.timings;
        for (i, d) in
            [s.store_read, s.store_number, s.sign, s.preflight, s.write, s.store_record].into_iter().enumerate()
        {
            steps[i].push(ms(d));
        }
    }
    let (med, max) = median(runs);
    println!("crl_{n}_revoked_end_to_end_ms_median={med:.0}");
    println!("crl_{n}_revoked_end_to_end_ms_max={max:.0}");
    // Each step's median: where the time goes.
    let names = ["store_read", "store_number", "sign", "preflight", "write", "store_record"];
    for (name, runs) in names.into_iter().zip(steps) {
        println!("crl_{n}_step_{name}_ms_median={:.1}", median(runs).0);
    }
    let crl_path = root.join("pki/crl-terminal.pem");
    println!("crl_bytes={}", std::fs::metadata(&crl_path).unwrap().len());

    // The anchor: `openssl ca -gencrl` over the same revoked list, from its own text database.
    let rows = ctx.store.revoked_certificates(Kind::Terminal).await.unwrap();
    let work = root.join("openssl-ca");
    std::fs::create_dir_all(&work).unwrap();
    let mut index = std::io::BufWriter::new(std::fs::File::create(work.join("index.txt")).unwrap());
    let stamp = |t: i64| {
        let d = time::OffsetDateTime::from_unix_timestamp(t).unwrap();
        format!(
            "{:02}{:02}{:02}{:02}{:02}{:02}Z",
            d.year() % 100,
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        )
    };
    for (i, (serial, at, _)) in rows.iter().enumerate() {
        writeln!(
            index,
            "R\t{}\t{},cessationOfOperation\t{}\tunknown\t/CN=atm-{i:06}",
            stamp(now + 86400),
            stamp(*at),
            serial.to_uppercase()
        )
        .unwrap();
    }
    drop(index);
    std::fs::write(work.join("crlnumber"), "01\n").unwrap();
    let conf = format!(
        "[ca]\ndefault_ca = bench\n[bench]\ndatabase = {w}/index.txt\ncrlnumber = {w}/crlnumber\n\
         default_md = sha256\ndefault_crl_days = 7\nunique_subject = no\n",
        w = work.display()
    );
    std::fs::write(work.join("ca.cnf"), conf).unwrap();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let out = std::process::Command::new("openssl")
            .args(["ca", "-gencrl", "-batch", "-config"])
            .arg(work.join("ca.cnf"))
            .arg("-keyfile")
            .arg(root.join("pki/terminal-ca.key"))
            .arg("-cert")
            .arg(root.join("pki/terminal-ca.crt"))
            .arg("-out")
            .arg(work.join("crl.pem"))
            .output()
            .unwrap();
        runs.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(out.status.success(), "openssl ca -gencrl: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (med, max) = median(runs);
    println!("anchor_openssl_ca_gencrl_{n}_ms_median={med:.0}");
    println!("anchor_openssl_ca_gencrl_{n}_ms_max={max:.0}");
    println!("goal_crl_{n}_end_to_end_ms=200");
}
