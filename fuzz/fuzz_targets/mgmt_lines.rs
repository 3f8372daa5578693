//! The OpenVPN management protocol parser: ENV lines carry client-controlled peer info (IV_* variables), so any
//! sequence of lines must parse without panicking, and `status 3` tables of any shape too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut p = cas_vpn::vpn::mgmt::proto::Parser::default();
    for line in text.lines() {
        let _ = p.feed(line);
    }
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let _ = cas_vpn::vpn::mgmt::proto::parse_status(&lines);
});
