//! IPv6 neighbour discovery (RFC 4861) and the router advertisements that let the guest
//! configure itself by SLAAC (RFC 4862), with its DNS server in an RDNSS option (RFC 8106).
//!
//! We answer neighbour solicitations only for our own addresses (gateway, DNS, the router's
//! link-local), never for an address the guest is checking for duplicates.

use std::net::Ipv6Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv6Packet, NdiscNeighborFlags,
    NdiscRepr, RawHardwareAddress,
};

use super::frame::{ETHERNET_HEADER_LEN, Link, build_frame};
use crate::config::ROUTER_LINK_LOCAL;

/// ff02::1, every node on the link.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// NDP messages must arrive with the largest hop limit, proving they were not routed.
const NDP_HOP_LIMIT: u8 = 255;
/// How long the guest keeps us as its default router without hearing from us again; we
/// advertise every [`RA_INTERVAL`], well within it.
const ROUTER_LIFETIME_S: u16 = 1800;
const PREFIX_VALID_S: u32 = 86400;
const PREFIX_PREFERRED_S: u32 = 14400;
const RDNSS_LIFETIME_S: u32 = 1800;
/// Unsolicited advertisements: the first few close together (a guest that came up before
/// slirpnet started may have stopped soliciting), then this often.
pub const RA_INTERVAL: std::time::Duration = std::time::Duration::from_secs(200);
pub const RA_INITIAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(4);
pub const RA_INITIAL_COUNT: u32 = 3;

/// The Ethernet address a packet to an IPv6 multicast group goes to (RFC 2464 section 7).
pub fn multicast_mac(group: Ipv6Addr) -> EthernetAddress {
    let o = group.octets();
    EthernetAddress([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// The solicited-node multicast group of `addr` (RFC 4291 section 2.7.1).
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

pub fn is_link_local(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

/// What a router advertisement says.
#[derive(Debug, Clone, Copy)]
pub struct RouterAdvert {
    pub prefix: Ipv6Addr,
    pub mtu: usize,
    pub dns: Option<Ipv6Addr>,
}

/// An NDP message: `build_icmpv6_frame` with the hop limit NDP requires.
fn build_ndp_frame(
    frame: &mut Vec<u8>,
    link: Link,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    len: usize,
    emit: impl FnOnce(&mut [u8]),
) -> usize {
    let total = build_frame(
        frame,
        link,
        src.into(),
        dst.into(),
        IpProtocol::Icmpv6,
        len,
        emit,
    );
    Ipv6Packet::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..total]).set_hop_limit(NDP_HOP_LIMIT);
    total
}

/// A router advertisement from fe80::2: the /64 for SLAAC (on-link, autonomous), the MTU, and
/// the DNS server (RDNSS). Returns the frame length.
pub fn build_router_advert(
    frame: &mut Vec<u8>,
    link: Link,
    dst: Ipv6Addr,
    ra: &RouterAdvert,
) -> usize {
    let mut message = Vec::with_capacity(96);
    // Type, code, checksum, current hop limit, flags (no DHCPv6), router lifetime,
    // reachable time and retransmission timer (unspecified).
    message.extend_from_slice(&[134, 0, 0, 0, 64, 0]);
    message.extend_from_slice(&ROUTER_LIFETIME_S.to_be_bytes());
    message.extend_from_slice(&[0; 8]);
    // Source link-layer address.
    message.extend_from_slice(&[1, 1]);
    message.extend_from_slice(link.src.as_bytes());
    // IPv6 needs at least 1280 bytes on a link: below that the guest turns IPv6 off anyway.
    if let Ok(mtu) = u32::try_from(ra.mtu) {
        message.extend_from_slice(&[5, 1, 0, 0]);
        message.extend_from_slice(&mtu.to_be_bytes());
    }
    // Prefix information: /64, on-link and autonomous.
    message.extend_from_slice(&[3, 4, 64, 0xc0]);
    message.extend_from_slice(&PREFIX_VALID_S.to_be_bytes());
    message.extend_from_slice(&PREFIX_PREFERRED_S.to_be_bytes());
    message.extend_from_slice(&[0; 4]);
    message.extend_from_slice(&ra.prefix.octets());
    if let Some(dns) = ra.dns {
        // Recursive DNS server.
        message.extend_from_slice(&[25, 3, 0, 0]);
        message.extend_from_slice(&RDNSS_LIFETIME_S.to_be_bytes());
        message.extend_from_slice(&dns.octets());
    }
    build_ndp_frame(frame, link, ROUTER_LINK_LOCAL, dst, message.len(), |l4| {
        l4.copy_from_slice(&message);
        Icmpv6Packet::new_unchecked(l4).fill_checksum(&ROUTER_LINK_LOCAL, &dst);
    })
}

/// Any NDP message smoltcp can represent, from `src` to `dst`.
fn build_ndisc(
    frame: &mut Vec<u8>,
    link: Link,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    repr: NdiscRepr,
) -> usize {
    let repr = Icmpv6Repr::Ndisc(repr);
    build_ndp_frame(frame, link, src, dst, repr.buffer_len(), |l4| {
        repr.emit(
            &src,
            &dst,
            &mut Icmpv6Packet::new_unchecked(l4),
            &ChecksumCapabilities::default(),
        )
    })
}

/// "`target` is at our MAC", as a router. Solicited answers go to the asker; the answer to
/// a solicitation from the unspecified address goes to all nodes (RFC 4861 section 7.2.4).
pub fn build_neighbor_advert(
    frame: &mut Vec<u8>,
    link: Link,
    target: Ipv6Addr,
    dst: Ipv6Addr,
    solicited: bool,
) -> usize {
    let mut flags = NdiscNeighborFlags::ROUTER | NdiscNeighborFlags::OVERRIDE;
    if solicited {
        flags |= NdiscNeighborFlags::SOLICITED;
    }
    let repr = NdiscRepr::NeighborAdvert {
        flags,
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from(link.src)),
    };
    build_ndisc(frame, link, target, dst, repr)
}

/// "Who has `target`?", to its solicited-node group, from the router's link-local address.
pub fn build_neighbor_solicit(
    frame: &mut Vec<u8>,
    mac: EthernetAddress,
    target: Ipv6Addr,
) -> usize {
    let group = solicited_node(target);
    let link = Link {
        src: mac,
        dst: multicast_mac(group),
    };
    let repr = NdiscRepr::NeighborSolicit {
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from(mac)),
    };
    build_ndisc(frame, link, ROUTER_LINK_LOCAL, group, repr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multicast_addresses() {
        let addr: Ipv6Addr = "fd00::5054:ff:fe12:3456".parse().unwrap();
        assert_eq!(
            solicited_node(addr),
            "ff02::1:ff12:3456".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            multicast_mac(solicited_node(addr)),
            EthernetAddress([0x33, 0x33, 0xff, 0x12, 0x34, 0x56])
        );
        assert!(is_link_local("fe80::1".parse().unwrap()));
        assert!(!is_link_local("fd00::1".parse().unwrap()));
    }
}
