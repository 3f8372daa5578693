//! Addressing policy: how a slice of a VPN subnet is split into the server address and client addresses.

use std::net::Ipv4Addr;

use super::Subnet;

/// Client addresses per slice: everything but the network address, the server (`.1`) and broadcast.
pub fn hosts_per_slice(slice: &Subnet) -> u32 {
    (1u32 << (32 - u32::from(slice.prefix_len()))).saturating_sub(3)
}

/// The first client address index in a slice (`.0` is the network, `.1` the server).
pub const FIRST_HOST_INDEX: u32 = 2;

pub fn host_ip(slice: &Subnet, host_index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(slice.network()) + host_index)
}

/// A terminal's tunnel address, from its allocation.
pub fn terminal_ip(slices: &[Subnet], home: u32, host_index: u32) -> Option<Ipv4Addr> {
    slices.get(home as usize).map(|s| host_ip(s, host_index))
}
