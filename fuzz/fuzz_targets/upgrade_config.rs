//! `config/upgrade`, upstream URLs, `HOST:PORT` arguments and pins: the small parsers of outside text in the gate and
//! the agent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = cas_vpn::gate::upgrade::Package::parse(text, std::path::Path::new("/fuzz/config/upgrade"));
    let _ = cas_vpn::gate::upgrade::Upstream::parse(text);
    let _ = cas_vpn::http::client::Target::parse(text, 7741, None);
    let _ = cas_vpn::wire::parse_pin(text);
    let _ = cas_vpn::wire::version_date(text);
    let _ = cas_vpn::wire::code_matches(text, "ABCD-EFGH");
});
