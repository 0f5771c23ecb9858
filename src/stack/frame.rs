//! Building frames for the guest with smoltcp's `wire` types.
//!
//! Every builder writes Ethernet + IP + transport headers in place. The TCP data path writes
//! its payload first (peeked straight from the host socket into the frame) and the headers
//! afterwards, so payload bytes are copied exactly once, kernel to frame.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4DstUnreachable,
    Icmpv4Packet, Icmpv4Repr, Icmpv6DstUnreachable, Icmpv6Packet, Icmpv6Repr, IpAddress,
    IpProtocol, IpRepr, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber, UdpPacket,
};

pub const ETHERNET_HEADER_LEN: usize = 14;
pub const IPV4_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;
pub const TCP_HEADER_LEN: usize = 20;
pub const UDP_HEADER_LEN: usize = 8;
/// Hop limit of everything we originate, as a router one hop away would.
const HOP_LIMIT: u8 = 64;

/// Source and destination link addresses of a frame to the guest.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub src: EthernetAddress,
    pub dst: EthernetAddress,
}

pub fn ip_header_len(addr: IpAddr) -> usize {
    match addr {
        IpAddr::V4(_) => IPV4_HEADER_LEN,
        IpAddr::V6(_) => IPV6_HEADER_LEN,
    }
}

/// Offset of the TCP payload in a frame without TCP options.
pub fn tcp_payload_offset(addr: IpAddr) -> usize {
    ETHERNET_HEADER_LEN + ip_header_len(addr) + TCP_HEADER_LEN
}

/// Writes Ethernet and IP headers for an L4 payload of `l4_len` bytes at the start of `frame`,
/// returning where the L4 header starts.
pub fn emit_l2_l3(
    frame: &mut [u8],
    link: Link,
    src: IpAddr,
    dst: IpAddr,
    protocol: IpProtocol,
    l4_len: usize,
) -> usize {
    let ethertype = match dst {
        IpAddr::V4(_) => EthernetProtocol::Ipv4,
        IpAddr::V6(_) => EthernetProtocol::Ipv6,
    };
    let eth = EthernetRepr {
        src_addr: link.src,
        dst_addr: link.dst,
        ethertype,
    };
    eth.emit(&mut EthernetFrame::new_unchecked(
        &mut frame[..ETHERNET_HEADER_LEN],
    ));
    let l3 = &mut frame[ETHERNET_HEADER_LEN..];
    match (src, dst) {
        (IpAddr::V4(src_addr), IpAddr::V4(dst_addr)) => {
            let repr = Ipv4Repr {
                src_addr,
                dst_addr,
                next_header: protocol,
                payload_len: l4_len,
                hop_limit: HOP_LIMIT,
            };
            repr.emit(
                &mut Ipv4Packet::new_unchecked(&mut l3[..IPV4_HEADER_LEN]),
                &ChecksumCapabilities::default(),
            );
            ETHERNET_HEADER_LEN + IPV4_HEADER_LEN
        }
        (IpAddr::V6(src_addr), IpAddr::V6(dst_addr)) => {
            let repr = Ipv6Repr {
                src_addr,
                dst_addr,
                next_header: protocol,
                payload_len: l4_len,
                hop_limit: HOP_LIMIT,
            };
            repr.emit(&mut Ipv6Packet::new_unchecked(&mut l3[..IPV6_HEADER_LEN]));
            ETHERNET_HEADER_LEN + IPV6_HEADER_LEN
        }
        _ => unreachable!("flows never mix address families"),
    }
}

/// What a TCP segment to the guest carries besides its payload.
#[derive(Debug, Clone, Copy)]
pub struct TcpHeader {
    pub src_port: u16,
    pub dst_port: u16,
    pub control: TcpControl,
    pub seq: u32,
    pub ack: Option<u32>,
    pub window: u16,
    /// Only on SYN-ACKs.
    pub max_seg_size: Option<u16>,
    /// Only on SYN-ACKs.
    pub window_scale: Option<u8>,
    /// Only on SYN-ACKs: the guest may report what it received with SACK blocks (RFC 2018).
    pub sack_permitted: bool,
    /// Only on pure ACKs: guest data we hold past a hole (RFC 2018).
    pub sack: [Option<(u32, u32)>; 3],
}

/// Completes a TCP frame whose `payload_len` payload bytes already sit at
/// [`tcp_payload_offset`] (possible only without options, i.e. not for SYN-ACKs).
/// Returns the frame length.
pub fn finish_tcp_frame(
    frame: &mut [u8],
    link: Link,
    src: IpAddr,
    dst: IpAddr,
    header: &TcpHeader,
    payload_len: usize,
) -> usize {
    debug_assert!(
        header.max_seg_size.is_none()
            && header.window_scale.is_none()
            && !header.sack_permitted
            && header.sack == [None; 3]
    );
    let l4_len = TCP_HEADER_LEN + payload_len;
    let l4_start = emit_l2_l3(frame, link, src, dst, IpProtocol::Tcp, l4_len);
    let segment = &mut frame[l4_start..l4_start + l4_len];
    emit_tcp_header(&mut segment[..TCP_HEADER_LEN], header);
    let mut packet = TcpPacket::new_unchecked(segment);
    if header.control == TcpControl::None && payload_len > 0 {
        packet.set_psh(true);
    }
    packet.fill_checksum(&IpAddress::from(src), &IpAddress::from(dst));
    l4_start + l4_len
}

/// Like [`finish_tcp_frame`], for a TAP with offloads: the checksum is left for the guest
/// kernel (partial, pseudo-header only), and a payload larger than `mss` is taken as
/// `mss`-sized segments, as virtio-net's GSO expects.
pub fn finish_tcp_gso_frame(
    frame: &mut [u8],
    link: Link,
    src: IpAddr,
    dst: IpAddr,
    header: &TcpHeader,
    payload_len: usize,
    mss: usize,
) -> (usize, Gso) {
    let l4_len = TCP_HEADER_LEN + payload_len;
    let l4_start = emit_l2_l3(frame, link, src, dst, IpProtocol::Tcp, l4_len);
    let segment = &mut frame[l4_start..l4_start + l4_len];
    emit_tcp_header(&mut segment[..TCP_HEADER_LEN], header);
    let mut packet = TcpPacket::new_unchecked(segment);
    packet.set_psh(true);
    packet.set_checksum(pseudo_header_sum(src, dst, IpProtocol::Tcp, l4_len as u32));
    let gso = Gso {
        mss: mss as u16,
        header_len: (l4_start + TCP_HEADER_LEN) as u16,
        csum_start: l4_start as u16,
        ipv6: dst.is_ipv6(),
    };
    (l4_start + l4_len, gso)
}

/// The one's complement sum of the pseudo-header (RFC 9293 3.1, RFC 8200 8.1), folded and
/// not inverted: what a partial checksum field holds for the receiver to finish.
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, protocol: IpProtocol, l4_len: u32) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            add(&s.octets());
            add(&d.octets());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(v6) => v6.octets(),
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            };
            add(&v6(s));
            add(&v6(d));
        }
    }
    add(&l4_len.to_be_bytes());
    add(&[0, u8::from(protocol)]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Builds a whole TCP frame (any header, small payload copied in). Returns the frame length.
pub fn build_tcp_frame(
    frame: &mut Vec<u8>,
    link: Link,
    src: IpAddr,
    dst: IpAddr,
    header: &TcpHeader,
    payload: &[u8],
) -> usize {
    let repr = tcp_repr(header, payload);
    build_frame(
        frame,
        link,
        src,
        dst,
        IpProtocol::Tcp,
        repr.buffer_len(),
        |l4| {
            repr.emit(
                &mut TcpPacket::new_unchecked(l4),
                &IpAddress::from(src),
                &IpAddress::from(dst),
                &ChecksumCapabilities::default(),
            )
        },
    )
}

fn tcp_repr<'a>(header: &TcpHeader, payload: &'a [u8]) -> TcpRepr<'a> {
    TcpRepr {
        src_port: header.src_port,
        dst_port: header.dst_port,
        control: header.control,
        seq_number: TcpSeqNumber(header.seq as i32),
        ack_number: header.ack.map(|ack| TcpSeqNumber(ack as i32)),
        window_len: header.window,
        window_scale: header.window_scale,
        max_seg_size: header.max_seg_size,
        sack_permitted: header.sack_permitted,
        sack_ranges: header.sack,
        timestamp: None,
        payload,
    }
}

fn emit_tcp_header(buf: &mut [u8], header: &TcpHeader) {
    let repr = tcp_repr(header, &[]);
    // Checksum is filled over header and payload by the caller.
    repr.emit(
        &mut TcpPacket::new_unchecked(buf),
        &IpAddress::Ipv4(std::net::Ipv4Addr::UNSPECIFIED),
        &IpAddress::Ipv4(std::net::Ipv4Addr::UNSPECIFIED),
        &ChecksumCapabilities::ignored(),
    );
}

/// Writes Ethernet + IP + UDP headers in front of `payload_len` bytes already placed at
/// [`udp_payload_offset`]. Returns the frame length.
pub fn finish_udp_frame(
    frame: &mut [u8],
    link: Link,
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    payload_len: usize,
) -> usize {
    let l4_len = UDP_HEADER_LEN + payload_len;
    let l4_start = emit_l2_l3(frame, link, src.ip(), dst.ip(), IpProtocol::Udp, l4_len);
    let mut packet = UdpPacket::new_unchecked(&mut frame[l4_start..l4_start + l4_len]);
    packet.set_src_port(src.port());
    packet.set_dst_port(dst.port());
    packet.set_len(l4_len as u16);
    packet.fill_checksum(&IpAddress::from(src.ip()), &IpAddress::from(dst.ip()));
    l4_start + l4_len
}

pub fn udp_payload_offset(addr: IpAddr) -> usize {
    ETHERNET_HEADER_LEN + ip_header_len(addr) + UDP_HEADER_LEN
}

/// Builds a whole frame whose L4 part (`l4_len` bytes) `emit_l4` writes after the Ethernet
/// and IP headers. Returns the frame length.
pub fn build_frame(
    frame: &mut Vec<u8>,
    link: Link,
    src: IpAddr,
    dst: IpAddr,
    protocol: IpProtocol,
    l4_len: usize,
    emit_l4: impl FnOnce(&mut [u8]),
) -> usize {
    let total = ETHERNET_HEADER_LEN + ip_header_len(dst) + l4_len;
    frame.resize(total, 0);
    let l4_start = emit_l2_l3(frame, link, src, dst, protocol, l4_len);
    emit_l4(&mut frame[l4_start..total]);
    total
}

/// Builds an ICMPv4 message from `src` to `dst`. Returns the frame length.
pub fn build_icmpv4_frame(
    frame: &mut Vec<u8>,
    link: Link,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    repr: &Icmpv4Repr,
) -> usize {
    let (src, dst) = (src.into(), dst.into());
    build_frame(
        frame,
        link,
        src,
        dst,
        IpProtocol::Icmp,
        repr.buffer_len(),
        |l4| {
            repr.emit(
                &mut Icmpv4Packet::new_unchecked(l4),
                &ChecksumCapabilities::default(),
            )
        },
    )
}

/// Builds an ICMPv6 message from `src` to `dst`. Returns the frame length.
pub fn build_icmpv6_frame(
    frame: &mut Vec<u8>,
    link: Link,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    repr: &Icmpv6Repr,
) -> usize {
    let len = repr.buffer_len();
    build_frame(
        frame,
        link,
        src.into(),
        dst.into(),
        IpProtocol::Icmpv6,
        len,
        |l4| {
            repr.emit(
                &src,
                &dst,
                &mut Icmpv6Packet::new_unchecked(l4),
                &ChecksumCapabilities::default(),
            )
        },
    )
}

/// Why a guest datagram goes nowhere, in terms both ICMP versions have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    Net,
    Host,
    Port,
    /// Administratively prohibited: a hard error for the guest's UDP socket, where network
    /// and host unreachable are soft ones it never sees.
    Prohibited,
}

impl Unreachable {
    fn v4(self) -> Icmpv4DstUnreachable {
        match self {
            Unreachable::Net => Icmpv4DstUnreachable::NetUnreachable,
            Unreachable::Host => Icmpv4DstUnreachable::HostUnreachable,
            Unreachable::Port => Icmpv4DstUnreachable::PortUnreachable,
            Unreachable::Prohibited => Icmpv4DstUnreachable::CommProhibited,
        }
    }

    fn v6(self) -> Icmpv6DstUnreachable {
        match self {
            Unreachable::Net => Icmpv6DstUnreachable::NoRoute,
            Unreachable::Host => Icmpv6DstUnreachable::AddrUnreachable,
            Unreachable::Port => Icmpv6DstUnreachable::PortUnreachable,
            Unreachable::Prohibited => Icmpv6DstUnreachable::AdminProhibit,
        }
    }
}

/// A destination unreachable from `router` for a datagram the guest sent: `original` is its
/// IP header, `payload` its payload (or at least the first 8 bytes). ICMPv4 quotes 8 bytes
/// (RFC 792), ICMPv6 as much as fits in 1280 (RFC 4443).
pub fn build_unreachable_frame(
    frame: &mut Vec<u8>,
    link: Link,
    router: IpAddr,
    original: &IpRepr,
    payload: &[u8],
    reason: Unreachable,
) -> usize {
    match (router, original) {
        (IpAddr::V4(router), IpRepr::Ipv4(header)) => {
            let repr = Icmpv4Repr::DstUnreachable {
                reason: reason.v4(),
                header: *header,
                data: &payload[..payload.len().min(8)],
            };
            build_icmpv4_frame(frame, link, router, header.src_addr, &repr)
        }
        (IpAddr::V6(router), IpRepr::Ipv6(header)) => {
            let repr = Icmpv6Repr::DstUnreachable {
                reason: reason.v6(),
                header: *header,
                data: payload,
            };
            build_icmpv6_frame(frame, link, router, header.src_addr, &repr)
        }
        _ => unreachable!("an unreachable comes from the datagram's own family"),
    }
}

/// A TCP frame whose checksum the guest kernel takes as partial (virtio-net checksum offload
/// through the TAP's vnet header) and, when its payload is longer than `mss`, as received
/// segments of `mss` bytes (virtio-net GSO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    pub mss: u16,
    /// Ethernet + IP + TCP header bytes.
    pub header_len: u16,
    /// Where the TCP header starts; its checksum field holds only the pseudo-header sum.
    pub csum_start: u16,
    pub ipv6: bool,
}

/// One frame for the guest.
pub struct TxFrame {
    pub buf: Vec<u8>,
    pub len: usize,
    pub gso: Option<Gso>,
}

impl TxFrame {
    /// Whether the guest kernel cuts this frame into segments: it carries more than one MSS.
    /// Otherwise it is one segment, within the MTU, and at most its checksum is left to finish.
    pub fn is_segmented(&self) -> bool {
        self.gso
            .is_some_and(|gso| self.len - usize::from(gso.header_len) > usize::from(gso.mss))
    }
}

/// Frames for the guest, and a pool of buffers to build them in without allocating per frame.
#[derive(Default)]
pub struct Tx {
    /// Built frames, in order, for the event loop to write.
    pub frames: Vec<TxFrame>,
    /// Bytes in `frames`.
    queued_bytes: usize,
    pool: Vec<Vec<u8>>,
}

impl Tx {
    /// A buffer of at least `len` bytes (contents unspecified).
    pub fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = self.pool.pop().unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf
    }

    pub fn push(&mut self, frame: Vec<u8>, len: usize) {
        self.queued_bytes += len;
        self.frames.push(TxFrame {
            buf: frame,
            len,
            gso: None,
        });
    }

    pub fn push_gso(&mut self, frame: Vec<u8>, len: usize, gso: Gso) {
        self.queued_bytes += len;
        self.frames.push(TxFrame {
            buf: frame,
            len,
            gso: Some(gso),
        });
    }

    pub fn recycle(&mut self, frame: Vec<u8>) {
        // Bounded so a burst does not keep its memory forever.
        if self.pool.len() < 256 {
            self.pool.push(frame);
        }
    }

    /// Builds and queues a TCP frame without payload.
    pub fn push_tcp(&mut self, link: Link, src: IpAddr, dst: IpAddr, header: &TcpHeader) {
        let mut frame = self.buffer(0);
        let len = build_tcp_frame(&mut frame, link, src, dst, header, &[]);
        self.push(frame, len);
    }

    /// Takes the queued frames; hand the buffers back with [`Tx::recycle`]. Outside the stack,
    /// [`super::Stack::take_frames`] takes them, and counts them.
    pub(super) fn take(&mut self) -> Vec<TxFrame> {
        self.queued_bytes = 0;
        std::mem::take(&mut self.frames)
    }

    /// Bytes in the queued frames.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }
}

/// Sends a datagram whose L4 bytes exceed the guest's MTU as fragments: as a router would for
/// IPv4 (RFC 791), and with a fragment header as its source would have had to for IPv6
/// (RFC 8200 section 4.5). `src` and `dst` are of one family.
#[allow(clippy::too_many_arguments)]
pub fn push_fragments(
    tx: &mut Tx,
    link: Link,
    src: IpAddr,
    dst: IpAddr,
    protocol: IpProtocol,
    ident: u32,
    l4: &[u8],
    mtu: usize,
) {
    const FRAGMENT_HEADER_LEN: usize = 8;
    let (extra, l3_protocol) = match dst {
        IpAddr::V4(_) => (0, protocol),
        IpAddr::V6(_) => (FRAGMENT_HEADER_LEN, IpProtocol::Ipv6Frag),
    };
    // Every fragment but the last carries a multiple of 8 bytes.
    let chunk = mtu.saturating_sub(ip_header_len(dst) + extra) & !7;
    if chunk == 0 {
        return;
    }
    let mut offset = 0;
    while offset < l4.len() {
        let len = chunk.min(l4.len() - offset);
        let more = offset + len < l4.len();
        let mut frame = tx.buffer(ETHERNET_HEADER_LEN + ip_header_len(dst) + extra + len);
        let start = emit_l2_l3(&mut frame, link, src, dst, l3_protocol, extra + len);
        let data = start + extra;
        frame[data..data + len].copy_from_slice(&l4[offset..offset + len]);
        if dst.is_ipv6() {
            let header = &mut frame[start..data];
            header[0] = protocol.into();
            header[1] = 0;
            header[2..4].copy_from_slice(&((offset as u16) | u16::from(more)).to_be_bytes());
            header[4..8].copy_from_slice(&ident.to_be_bytes());
        } else {
            let mut packet = Ipv4Packet::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..data + len]);
            packet.set_ident(ident as u16);
            packet.set_dont_frag(false);
            packet.set_more_frags(more);
            packet.set_frag_offset(offset as u16);
            packet.fill_checksum();
        }
        tx.push(frame, data + len);
        offset += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_link() -> Link {
        Link {
            src: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst: EthernetAddress([2, 0, 0, 0, 0, 2]),
        }
    }

    fn test_header() -> TcpHeader {
        TcpHeader {
            src_port: 80,
            dst_port: 40000,
            control: TcpControl::None,
            seq: 1,
            ack: Some(2),
            window: 100,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            sack: [None; 3],
        }
    }

    #[test]
    fn partial_checksum_completes_to_the_full_one() {
        // A full checksum over a frame equals the inverted sum of the pseudo-header sum and
        // the segment bytes with a zero checksum field.
        let mut frame = vec![0u8; 200];
        let payload_at = tcp_payload_offset("10.0.2.2".parse().unwrap());
        for (i, b) in frame[payload_at..payload_at + 100].iter_mut().enumerate() {
            *b = i as u8 ^ 0x5a;
        }
        let (link, header) = (test_link(), test_header());
        let (src, dst) = ("10.0.2.2".parse().unwrap(), "10.0.2.100".parse().unwrap());
        let mut full = frame.clone();
        let len = finish_tcp_frame(&mut full, link, src, dst, &header, 100);
        let (gso_len, gso) = finish_tcp_gso_frame(&mut frame, link, src, dst, &header, 100, 50);
        assert_eq!(len, gso_len);
        let start = usize::from(gso.csum_start);
        let mut segment = frame[start..len].to_vec();
        let partial = u16::from_be_bytes([segment[16], segment[17]]);
        segment[16] = 0;
        segment[17] = 0;
        let mut sum = u32::from(partial);
        for pair in segment.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let expected = u16::from_be_bytes([full[start + 16], full[start + 17]]);
        assert_eq!(!(sum as u16), expected);
        assert_eq!(usize::from(gso.header_len), start + TCP_HEADER_LEN);
    }

    #[test]
    fn queued_bytes_count_what_waits_for_the_tap() {
        let mut tx = Tx::default();
        let gso = Gso {
            mss: 1460,
            header_len: 54,
            csum_start: 34,
            ipv6: false,
        };
        let frame = tx.buffer(100);
        tx.push(frame, 60);
        let frame = tx.buffer(70_000);
        tx.push_gso(frame, 65_536, gso);
        assert_eq!(tx.queued_bytes(), 65_596);
        for frame in tx.take() {
            tx.recycle(frame.buf);
        }
        assert_eq!(tx.queued_bytes(), 0);
        let (src, dst) = ("10.0.2.2".parse().unwrap(), "10.0.2.100".parse().unwrap());
        tx.push_tcp(test_link(), src, dst, &test_header());
        assert_eq!(tx.queued_bytes(), tx.frames[0].len);
    }
}
