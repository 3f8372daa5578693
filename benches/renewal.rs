//! Renewal figures: 20,000 terminal certificates issued in the same second (one import, one day's pairings) and
//! when they renew. Without spreading every one of them would renew at its window's opening, in one second; with
//! the per-certificate renewal point (`domain::renewal`) the batch spreads over the first half of the window. Also
//! what reading the fleet's renewal progress costs (`app::renewal::fleet`: what `status` and every `/metrics`
//! scrape do) on a store holding that batch. Run: `scripts/bench-renewal`.

use std::collections::HashMap;
use std::time::Instant;

use cas_vpn::db::{NewCert, NewTerminal, Store, TerminalLayout};
use cas_vpn::domain::Name;
use cas_vpn::domain::renewal::{FailureSource, RenewalPolicy};

const N: usize = 20_000;
const DAY: i64 = 86_400;

/// The largest number of points sharing one slot of `width` seconds.
fn busiest(points: &[i64], width: i64) -> usize {
    let mut per = HashMap::<i64, usize>::new();
    for p in points {
        *per.entry(p.div_euclid(width)).or_default() += 1;
    }
    per.values().copied().max().unwrap_or(0)
}

/// CPU time this process has used (every thread, user + system), in ms: wall time on 2 cores shared with other
/// work says more about the load than about the code.
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name (which is in parentheses): utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    ticks as f64 * 10.0
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let policy = RenewalPolicy::from_days(60);
    let now = cas_vpn::app::now();
    // Issued now for 730 days, like `terminal import` or a day of pairings: one end for the whole batch.
    let not_after = now + 730 * DAY;
    let serials: Vec<String> = (0..N).map(|_| cas_pki::Serial::random().to_hex()).collect();
    let spread: Vec<i64> = serials.iter().map(|s| policy.point(s, not_after)).collect();
    let unspread = vec![policy.window_opens(not_after); N];
    println!("batch={N}");
    println!("renewals_busiest_minute_unspread={}", busiest(&unspread, 60));
    println!("renewals_busiest_minute_spread={}", busiest(&spread, 60));
    println!("renewals_busiest_hour_spread={}", busiest(&spread, 3600));
    println!("renewals_busiest_day_spread={}", busiest(&spread, DAY));
    let (first, last) = (spread.iter().min().unwrap(), spread.iter().max().unwrap());
    println!("renewals_first_days_before_end={:.1}", (not_after - first) as f64 / DAY as f64);
    println!("renewals_last_days_before_end={:.1}", (not_after - last) as f64 / DAY as f64);

    // The store: the batch, its window open today (45 days left), 100 of them with a failed renewal.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("cas-vpn.sqlite")).await.unwrap();
    let ends = now + 45 * DAY;
    let new: Vec<NewTerminal> = serials
        .iter()
        .enumerate()
        .map(|(i, serial)| NewTerminal {
            name: format!("atm-{i:05}").parse::<Name>().unwrap(),
            cert: Some(NewCert {
                serial: serial.clone(),
                common_name: format!("atm-{i:05}"),
                not_before: ends - 730 * DAY,
                not_after: ends,
                cert_pem: String::new(),
            }),
            token: None,
        })
        .collect();
    let layout = TerminalLayout { instances: 11, hosts_per_instance: 4093 };
    let created = store.create_terminals(&new, layout, now).await.unwrap();
    let (code, detail) = ("signer_unavailable".parse().unwrap(), "the signer did not sign".parse().unwrap());
    for c in created.iter().take(100) {
        store.record_renewal_failure(c.id, FailureSource::Master, &code, &detail, now).await.unwrap();
    }
    let mut runs = Vec::new();
    let mut overdue = 0;
    let cpu0 = cpu_ms();
    for _ in 0..5 {
        let t = Instant::now();
        let f = cas_vpn::app::renewal::fleet(&store, policy, now, 20).await.unwrap();
        runs.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!((f.expiring[2], f.failed, f.failures.len()), (N as u64, 100, 20));
        overdue = f.overdue;
    }
    let cpu = (cpu_ms() - cpu0) / 5.0;
    runs.sort_by(|a, b| a.total_cmp(b));
    println!("fleet_progress_{N}_in_window_overdue={overdue}");
    println!("fleet_progress_{N}_in_window_cpu_ms_mean={cpu:.0}");
    println!("fleet_progress_{N}_in_window_ms_median={:.0}", runs[2]);
    println!("fleet_progress_{N}_in_window_ms_max={:.0}", runs[4]);
    store.close().await;
}
