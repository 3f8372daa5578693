//! Who may connect to an instance: the answer to every CONNECT/REAUTH, decided from the store. Pure: the instance
//! task fetches the rows and carries out the decision.
//!
//! Invariants held here (ARCHITECTURE.md, "Security invariants"): a credential of the wrong kind never gets in (3); an admin
//! instance admits only its own credential (4, with the instance's session bookkeeping); a revoked credential or
//! certificate never gets in (5). Anything unknown or malformed is denied: the default is no.

use std::net::Ipv4Addr;

use crate::app::instances::InstanceRole;
use crate::db::{CertRow, Credential};
use crate::domain::addressing::host_ip;
use crate::domain::{Kind, Name};

/// What openvpn told us about the client (from its ENV block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub common_name: String,
    /// Certificate serial as openvpn prints it (`tls_serial_hex_0`: colon-separated hex).
    pub serial_hex: String,
}

/// The denial for a passing fault (the store did not answer): never a guess that lets a client in, but a
/// *temporary* one. OpenVPN 2.6 and OpenVPN 3 core ≥ 3.8 retry a `TEMP[backoff N]` denial by themselves (after N
/// seconds), where a plain AUTH_FAILED would stop an OpenVPN 3 terminal for good: an unattended ATM must come back
/// once the store is back.
pub const PASSING_FAULT: &str = "TEMP[backoff 10]:store temporarily unavailable";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow { credential_id: i64, name: Name, tunnel_ip: Ipv4Addr, netmask: Ipv4Addr },
    Deny(&'static str),
}

/// Normalises openvpn's serial (`0a:1b:…`, leading zero bytes possibly dropped) to the store's form: 32
/// lowercase hex digits.
pub fn normalise_serial(hex: &str) -> Option<String> {
    let digits: String = hex.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    if digits.is_empty() || digits.len() > 32 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!("{digits:0>32}"))
}

/// Decides from the credential found by the claimed CN and the certificate found by the claimed serial.
pub fn decide(role: &InstanceRole, claim: &Claim, cred: Option<&Credential>, cert: Option<&CertRow>) -> Decision {
    let Some(cred) = cred else { return Decision::Deny("unknown credential") };
    if cred.name.as_str() != claim.common_name {
        return Decision::Deny("unknown credential");
    }
    if cred.revoked_at.is_some() {
        return Decision::Deny("credential revoked");
    }
    if cred.kind != role.kind {
        return Decision::Deny("wrong VPN for this credential");
    }
    if cred.suspended_at.is_some() {
        return Decision::Deny("credential suspended after repeated takeovers");
    }
    // The certificate presented must be one of this credential's, and not revoked: a renewed terminal's old
    // certificate stops working when it is revoked, even before the CRL is re-read.
    let Some(cert) = cert else { return Decision::Deny("unknown certificate") };
    if cert.credential_id != Some(cred.id) || cert.ca != role.kind {
        return Decision::Deny("certificate does not belong to this credential");
    }
    if cert.revoked_at.is_some() {
        return Decision::Deny("certificate revoked");
    }
    let (tunnel_ip, netmask) = match role.kind {
        Kind::Admin => {
            if role.credential.as_ref() != Some(&cred.name) {
                return Decision::Deny("not this credential's instance");
            }
            (host_ip(&role.subnet, crate::app::instances::FIRST_HOST_INDEX), role.subnet.netmask())
        }
        Kind::Terminal => {
            let (Some(home), Some(host)) = (cred.home_instance, cred.host_index) else {
                return Decision::Deny("terminal has no address");
            };
            if role.index != Some(home) {
                return Decision::Deny("not this terminal's instance");
            }
            let ip = host_ip(&role.subnet, host);
            if !role.subnet.contains(ip) || ip == role.subnet.network() {
                return Decision::Deny("terminal address outside this instance");
            }
            (ip, role.subnet.netmask())
        }
    };
    Decision::Allow { credential_id: cred.id, name: cred.name.clone(), tunnel_ip, netmask }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(kind: Kind, name: &str) -> Credential {
        Credential {
            id: 1,
            name: name.parse().unwrap(),
            kind,
            created_at: 0,
            revoked_at: None,
            revoke_reason: None,
            home_instance: (kind == Kind::Terminal).then_some(2),
            host_index: (kind == Kind::Terminal).then_some(5),
            admin_port: (kind == Kind::Admin).then_some(12000),
            hw_serial: None,
            version: None,
            last_seen: None,
            paired_at: None,
            suspended_at: None,
        }
    }

    fn cert(ca: Kind) -> CertRow {
        CertRow {
            serial: "0".repeat(31) + "a",
            ca,
            credential_id: Some(1),
            common_name: String::new(),
            not_before: 0,
            not_after: 0,
            cert_pem: String::new(),
            created_at: 0,
            revoked_at: None,
            revoke_reason: None,
        }
    }

    fn terminal_role(index: u32) -> InstanceRole {
        InstanceRole {
            kind: Kind::Terminal,
            index: Some(index),
            credential: None,
            subnet: "198.18.32.0/20".parse().unwrap(),
        }
    }

    fn admin_role(name: &str) -> InstanceRole {
        InstanceRole {
            kind: Kind::Admin,
            index: None,
            credential: Some(name.parse().unwrap()),
            subnet: "198.19.0.0/29".parse().unwrap(),
        }
    }

    fn claim(cn: &str) -> Claim {
        Claim { common_name: cn.into(), serial_hex: "0a".into() }
    }

    #[test]
    fn a_terminal_gets_its_stable_address_on_its_home_instance() {
        let d = decide(
            &terminal_role(2),
            &claim("atm-1"),
            Some(&cred(Kind::Terminal, "atm-1")),
            Some(&cert(Kind::Terminal)),
        );
        assert_eq!(
            d,
            Decision::Allow {
                credential_id: 1,
                name: "atm-1".parse().unwrap(),
                tunnel_ip: "198.18.32.5".parse().unwrap(),
                netmask: "255.255.240.0".parse().unwrap()
            }
        );
        let d = decide(
            &terminal_role(3),
            &claim("atm-1"),
            Some(&cred(Kind::Terminal, "atm-1")),
            Some(&cert(Kind::Terminal)),
        );
        assert_eq!(d, Decision::Deny("not this terminal's instance"));
    }

    #[test]
    fn credentials_never_cross_vpns() {
        // Invariant 3: a terminal credential on an admin instance, an admin credential on a terminal instance.
        let d = decide(
            &admin_role("atm-1"),
            &claim("atm-1"),
            Some(&cred(Kind::Terminal, "atm-1")),
            Some(&cert(Kind::Terminal)),
        );
        assert_eq!(d, Decision::Deny("wrong VPN for this credential"));
        let d = decide(&terminal_role(2), &claim("alice"), Some(&cred(Kind::Admin, "alice")), Some(&cert(Kind::Admin)));
        assert_eq!(d, Decision::Deny("wrong VPN for this credential"));
    }

    #[test]
    fn an_admin_only_on_its_own_instance() {
        let d =
            decide(&admin_role("bob"), &claim("alice"), Some(&cred(Kind::Admin, "alice")), Some(&cert(Kind::Admin)));
        assert_eq!(d, Decision::Deny("not this credential's instance"));
        let d =
            decide(&admin_role("alice"), &claim("alice"), Some(&cred(Kind::Admin, "alice")), Some(&cert(Kind::Admin)));
        assert!(
            matches!(d, Decision::Allow { tunnel_ip, .. } if tunnel_ip == "198.19.0.2".parse::<Ipv4Addr>().unwrap())
        );
    }

    #[test]
    fn revoked_unknown_or_foreign_is_denied() {
        let mut c = cred(Kind::Terminal, "atm-1");
        c.revoked_at = Some(5);
        assert_eq!(
            decide(&terminal_role(2), &claim("atm-1"), Some(&c), Some(&cert(Kind::Terminal))),
            Decision::Deny("credential revoked")
        );
        assert_eq!(decide(&terminal_role(2), &claim("atm-1"), None, None), Decision::Deny("unknown credential"));
        let c = cred(Kind::Terminal, "atm-1");
        assert_eq!(
            decide(&terminal_role(2), &claim("atm-2"), Some(&c), Some(&cert(Kind::Terminal))),
            Decision::Deny("unknown credential")
        );
        assert_eq!(decide(&terminal_role(2), &claim("atm-1"), Some(&c), None), Decision::Deny("unknown certificate"));
        let mut other = cert(Kind::Terminal);
        other.credential_id = Some(99);
        assert_eq!(
            decide(&terminal_role(2), &claim("atm-1"), Some(&c), Some(&other)),
            Decision::Deny("certificate does not belong to this credential")
        );
        let mut revoked = cert(Kind::Terminal);
        revoked.revoked_at = Some(1);
        assert_eq!(
            decide(&terminal_role(2), &claim("atm-1"), Some(&c), Some(&revoked)),
            Decision::Deny("certificate revoked")
        );
    }

    #[test]
    fn serials_normalise() {
        assert_eq!(normalise_serial("0A:1b").unwrap(), format!("{}0a1b", "0".repeat(28)));
        assert_eq!(normalise_serial(&"ff".repeat(16)).unwrap(), "ff".repeat(16));
        assert!(normalise_serial("").is_none());
        assert!(normalise_serial("zz").is_none());
        assert!(normalise_serial(&"1".repeat(33)).is_none());
    }

    #[test]
    fn a_passing_fault_is_a_temporary_denial_and_a_verdict_is_not() {
        // The form OpenVPN clients retry by themselves: TEMP[backoff N]:text, inside the management quotes.
        assert!(PASSING_FAULT.starts_with("TEMP[backoff ") && PASSING_FAULT.contains("]:"));
        assert!(!PASSING_FAULT.contains('"'));
        let mut revoked = cred(Kind::Terminal, "atm-1");
        revoked.revoked_at = Some(1);
        let claim = Claim { common_name: "atm-1".into(), serial_hex: "00".repeat(16) };
        match decide(&terminal_role(2), &claim, Some(&revoked), Some(&cert(Kind::Terminal))) {
            Decision::Deny(why) => assert!(!why.starts_with("TEMP"), "a revoked credential is refused for good"),
            other => panic!("{other:?}"),
        }
    }
}
