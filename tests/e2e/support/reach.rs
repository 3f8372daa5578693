//! Reachability checks run from inside a namespace, through the namespace's own routing (and tunnels).
//!
//! They shell out (`ip netns exec NS …`) instead of opening sockets in the test process: a socket belongs to the
//! namespace of the thread that creates it, and switching threads between namespaces needs `setns` and unsafe
//! code for no gain here.

use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

use super::child::ChildGuard;
use super::netns::Netns;

/// Whether a TCP connection from inside `ns` to `ip:port` is accepted within `timeout`.
///
/// bash's `/dev/tcp` does the connect; coreutils' `timeout` bounds it (a dropped SYN would otherwise wait for the
/// kernel's ~2 min retry limit). IP and port are passed as positional parameters, never spliced into the script.
pub fn tcp_connect(ns: &Netns, ip: impl Into<IpAddr>, port: u16, timeout: Duration) -> bool {
    let secs = format!("{:.3}", timeout.as_secs_f64());
    ns.cmd("timeout")
        .args(["--kill-after=1", &secs, "bash", "-c", "exec 3<>\"/dev/tcp/$0/$1\""])
        .arg(ip.into().to_string())
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether one ICMP echo from inside `ns` to `ip` is answered within 1 s (`ping -c1 -W1`).
pub fn ping(ns: &Netns, ip: impl Into<IpAddr>) -> bool {
    ns.cmd("ping")
        .args(["-n", "-q", "-c", "1", "-W", "1"])
        .arg(ip.into().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A TCP listener on `ip:port` inside `ns` that accepts and immediately closes every connection, for tests that
/// check what the firewall or the tunnel lets through. Returns once it listens (it prints "listening").
///
/// Perl because it is always there on Debian (perl-base is essential) and neither nc nor socat is.
pub fn tcp_listener(ns: &Netns, ip: impl Into<IpAddr>, port: u16) -> ChildGuard {
    const SCRIPT: &str = r#"
        use IO::Socket::INET;
        $| = 1;
        my $s = IO::Socket::INET->new(LocalAddr => $ARGV[0], LocalPort => $ARGV[1], Proto => 'tcp',
                                      Listen => 128, ReuseAddr => 1) or die "listen $ARGV[0]:$ARGV[1]: $!\n";
        print "listening on $ARGV[0]:$ARGV[1]\n";
        while (my $c = $s->accept) { print "accepted ", $c->peerhost, "\n"; close $c; }
    "#;
    let ip = ip.into().to_string();
    let guard = ns.spawn(&format!("tcp-listener {ip}:{port}"), "perl", &["-e", SCRIPT, &ip, &port.to_string()]);
    guard.wait_for_text("listening on", Duration::from_secs(5));
    guard
}

/// What a TCP connection attempt got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The handshake completed: something listens and the firewall let it through.
    Accepted,
    /// A reset came back (nothing listens there, or a reject): the host answered.
    Refused,
    /// Nothing came back within the timeout (dropped): the host did not answer at all.
    Silent,
}

/// Like [`tcp_connect`], telling a refusal (the host answered with a reset) from silence (dropped).
pub fn tcp_probe(ns: &Netns, ip: impl Into<IpAddr>, port: u16, timeout: Duration) -> Answer {
    let secs = format!("{:.3}", timeout.as_secs_f64());
    let status = ns
        .cmd("timeout")
        .args(["--kill-after=1", &secs, "bash", "-c", "exec 3<>\"/dev/tcp/$0/$1\""])
        .arg(ip.into().to_string())
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status.ok().and_then(|s| s.code()) {
        Some(0) => Answer::Accepted,
        // coreutils' timeout exits 124 when the time ran out (137 when it had to kill).
        Some(124 | 137) | None => Answer::Silent,
        Some(_) => Answer::Refused,
    }
}
