//! The `datagrams` fuzz target: a guest's UDP flow through the stack to a [`SimHost`] peer,
//! or a UDP port forward with several host peers sending to the guest, with the datagrams
//! each side sends, their sizes, the peer's port unreachables and the passing of time chosen
//! by the input. It reaches what the `frames` target cannot: the
//! relay of datagrams both ways, the batching of the guest's datagrams into GSO sends, the
//! fragmentation of the host peer's datagrams that exceed the guest's MTU (their size is the
//! host peer's choice, an untrusted one), port unreachables, and flow expiry.
//!
//! Checked on every step:
//! - each host peer received exactly the guest's datagrams to it, in order;
//! - the guest received exactly each host peer's datagrams, in order, each whole (fragments
//!   put back together), with valid IP and UDP checksums;
//! - every frame fits the MTU, and fragment offsets fall on 8-byte boundaries;
//! - a port unreachable reaches the guest as ICMP quoting its flow's ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet, IpAddress,
    IpProtocol, Ipv4Packet, UdpPacket,
};

use super::Input;
use super::sim_host::SimHost;
use crate::config::NetConfig;
use crate::stack::forward::Proto;
use crate::stack::frame::{Link, finish_udp_frame, udp_payload_offset};
use crate::stack::{Stack, StackConfig};

const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x64]);
/// The guest's port: its flow's source, or the forward's target.
const GUEST_PORT: u16 = 5000;
/// A test-network address (RFC 2544): nothing is sent anywhere, the host is simulated.
const REMOTE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 7);
/// Host peers that send to a forward.
const CLIENTS: usize = 4;

fn client(index: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10 + index as u8)),
        40000 + index as u16,
    )
}
/// The largest UDP payload in one IPv4 packet.
const MAX_DATAGRAM: usize = 65535 - 20 - 8;

/// Datagram `index`'s bytes: its length and index scrambled, so a datagram cut, merged or
/// swapped with another shows.
pub fn datagram(index: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32 ^ (index as u32) << 20).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// What [`drive_datagrams`] saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DatagramsOutcome {
    /// Datagrams the host peer got from the guest, and the guest from the host peer.
    pub to_host: usize,
    pub to_guest: usize,
    /// Frames that were fragments of a datagram to the guest.
    pub fragments: usize,
    /// Port unreachables the guest got.
    pub unreachables: usize,
    /// Host sockets used: the flow's (a new one after each expiry), or the forward's and
    /// those the guest's own datagrams opened once a forwarded flow had expired.
    pub sockets: usize,
}

struct Driver {
    stack: Stack<SimHost>,
    now: Instant,
    mtu: usize,
    /// The host peers: the remote the guest sends to, or the forward's clients.
    peers: Vec<SocketAddr>,
    /// The forward's host socket, when the host peers come through a forward.
    forward_socket: Option<usize>,
    /// Per peer: datagrams the guest sent it, datagrams it sent, and those of them the guest
    /// received whole, in order.
    guest_sent: Vec<Vec<Vec<u8>>>,
    host_sent: Vec<Vec<Vec<u8>>>,
    guest_received: Vec<Vec<Vec<u8>>>,
    /// Every datagram gets its own bytes.
    next_datagram: usize,
    /// A datagram being put back together: its IP ident and the bytes so far.
    partial: Option<(u16, Vec<u8>)>,
    outcome: DatagramsOutcome,
}

/// The `datagrams` target. Input: one configuration byte (the MTU: 576, 1500, 9000 or
/// 65520; bit 2: a forward), then operations, each an opcode byte and its arguments (see
/// [`Driver::step`]).
pub fn drive_datagrams(data: &[u8]) -> DatagramsOutcome {
    let mut input = Input(data);
    let config_bits = input.u8();
    let mtu = [576, 1500, 9000, 65520][usize::from(config_bits & 3)];
    let forwarded = config_bits & 4 != 0;
    let peers: Vec<SocketAddr> = if forwarded {
        (0..CLIENTS).map(client).collect()
    } else {
        vec![REMOTE]
    };
    let config = StackConfig::plain(mtu);
    let now = Instant::now();
    let mut driver = Driver {
        stack: Stack::new(SimHost::default(), config, now),
        now,
        mtu,
        forward_socket: None,
        guest_sent: vec![Vec::new(); peers.len()],
        host_sent: vec![Vec::new(); peers.len()],
        guest_received: vec![Vec::new(); peers.len()],
        peers,
        next_datagram: 0,
        partial: None,
        outcome: DatagramsOutcome::default(),
    };
    if forwarded {
        let guest = SocketAddr::new(IpAddr::V4(NetConfig::default().guest), GUEST_PORT);
        let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5353));
        driver
            .stack
            .add_forward(Proto::Udp, any, guest)
            .expect("the simulated host binds");
        driver.forward_socket = Some(driver.stack.host.udp.len() - 1);
    }
    while !input.is_empty() {
        driver.step(&mut input);
    }
    driver.outcome.to_host = (0..driver.peers.len())
        .map(|p| driver.to_host(p).len())
        .sum();
    driver.outcome.to_guest = driver.guest_received.iter().map(Vec::len).sum();
    driver.outcome.sockets = driver.stack.host.udp.len();
    driver.outcome
}

/// The operations of a `datagrams` input. `peer` picks one of the forward's host peers
/// (modulo 4; ignored without a forward).
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// The guest sends a datagram of this many bytes (at most what one frame carries).
    Guest { peer: u8, len: u16 },
    /// The guest sends `count` (up to 7) datagrams of `len` bytes, then one of `last`, in one
    /// batch of frames.
    GuestBatch {
        peer: u8,
        count: u8,
        len: u16,
        last: u16,
    },
    /// A host peer sends a datagram of this many bytes (at most 65,507).
    Host { peer: u8, len: u16 },
    /// The guest's last datagram met a closed port on the host side.
    Refuse,
    /// Seconds pass.
    Wait(u8),
}

/// The bytes of a `datagrams` input at MTU `[576, 1500, 9000, 65520][mtu]`, through a
/// forward if `forwarded`.
pub fn encode(mtu: u8, forwarded: bool, ops: &[Op]) -> Vec<u8> {
    let mut out = vec![mtu & 3 | u8::from(forwarded) << 2];
    for op in ops {
        match *op {
            Op::Guest { peer, len } => {
                out.extend_from_slice(&[0, peer]);
                out.extend_from_slice(&len.to_be_bytes());
            }
            Op::GuestBatch {
                peer,
                count,
                len,
                last,
            } => {
                out.extend_from_slice(&[1, peer, count]);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&last.to_be_bytes());
            }
            Op::Host { peer, len } => {
                out.extend_from_slice(&[2, peer]);
                out.extend_from_slice(&len.to_be_bytes());
            }
            Op::Refuse => out.push(3),
            Op::Wait(seconds) => out.extend_from_slice(&[4, seconds]),
        }
    }
    out
}

impl Driver {
    fn step(&mut self, input: &mut Input) {
        match input.u8() % 5 {
            0 => {
                let peer = self.peer(input.u8());
                let len = self.guest_len(input.u16());
                self.guest_datagram(peer, len);
                self.pump();
            }
            1 => {
                let peer = self.peer(input.u8());
                let count = input.u8() % 8;
                let len = self.guest_len(input.u16());
                let last = self.guest_len(input.u16());
                for _ in 0..count {
                    self.guest_datagram(peer, len);
                }
                self.guest_datagram(peer, last);
                self.pump();
            }
            2 => {
                let peer = self.peer(input.u8());
                let len = usize::from(input.u16()) % (MAX_DATAGRAM + 1);
                let bytes = self.new_datagram(len);
                if let Some(forward) = self.forward_socket {
                    self.host_sent[peer].push(bytes.clone());
                    let from = self.peers[peer];
                    self.stack.host.udp_send_from(forward, from, bytes);
                } else if self.stack.udp_flow_count() > 0 {
                    // Only a live flow has a host socket to send from.
                    self.host_sent[peer].push(bytes.clone());
                    let last = self.stack.host.udp.len() - 1;
                    self.stack.host.udp_reply(last, bytes);
                }
                self.pump();
            }
            3 => {
                if self.forward_socket.is_none() && self.stack.udp_flow_count() > 0 {
                    let last = self.stack.host.udp.len() - 1;
                    self.stack.host.udp_refuse(last);
                }
                self.pump();
            }
            _ => {
                self.now += Duration::from_secs(u64::from(input.u8()));
                self.pump();
            }
        }
    }

    /// A guest datagram's length: as much as one frame carries at most.
    fn guest_len(&self, len: u16) -> usize {
        usize::from(len) % (self.mtu - 20 - 8 + 1)
    }

    fn peer(&self, choice: u8) -> usize {
        usize::from(choice) % self.peers.len()
    }

    fn new_datagram(&mut self, len: usize) -> Vec<u8> {
        self.next_datagram += 1;
        datagram(self.next_datagram, len)
    }

    fn guest_datagram(&mut self, peer: usize, len: usize) {
        let bytes = self.new_datagram(len);
        let guest = SocketAddr::new(IpAddr::V4(NetConfig::default().guest), GUEST_PORT);
        let offset = udp_payload_offset(guest.ip());
        let mut frame = vec![0; offset + len];
        frame[offset..].copy_from_slice(&bytes);
        let link = Link {
            src: GUEST_MAC,
            dst: EthernetAddress::BROADCAST,
        };
        let frame_len = finish_udp_frame(&mut frame, link, guest, self.peers[peer], len);
        self.stack.handle_frame(self.now, &frame[..frame_len]);
        self.guest_sent[peer].push(bytes);
    }

    /// Lets the stack run (due timers, ready host sockets, its flush), then reads and checks
    /// every frame it sent and what the host peer received.
    fn pump(&mut self) {
        for _ in 0..4 {
            SimHost::run(&mut self.stack, self.now);
            for frame in self.stack.take_frames() {
                assert!(
                    frame.len <= self.mtu + 14,
                    "a frame of {} bytes at MTU {}",
                    frame.len,
                    self.mtu
                );
                self.read_frame(&frame.buf[..frame.len]);
                self.stack.tx.recycle(frame.buf);
            }
            if !self.stack.host.has_ready() {
                break;
            }
        }
        for peer in 0..self.peers.len() {
            let to_host = self.to_host(peer);
            assert!(
                self.guest_sent[peer].starts_with(&to_host),
                "a host peer got datagrams the guest did not send it, or out of order"
            );
            assert!(
                self.host_sent[peer].starts_with(&self.guest_received[peer]),
                "the guest got datagrams a host peer did not send, or out of order"
            );
        }
    }

    /// Every datagram host peer `peer` received, over all sockets, in order.
    fn to_host(&self, peer: usize) -> Vec<Vec<u8>> {
        let addr = self.peers[peer];
        let sent = &self.stack.host.udp_sent;
        sent.iter()
            .filter(|(to, _)| *to == addr)
            .map(|(_, bytes)| bytes.clone())
            .collect()
    }

    fn read_frame(&mut self, frame: &[u8]) {
        let eth = EthernetFrame::new_checked(frame).expect("malformed Ethernet frame");
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return;
        }
        let ip = Ipv4Packet::new_checked(eth.payload()).expect("malformed IPv4 packet");
        assert!(ip.verify_checksum(), "bad IPv4 header checksum");
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        match ip.next_header() {
            IpProtocol::Udp => {}
            IpProtocol::Icmp => {
                let icmp = Icmpv4Packet::new_checked(ip.payload()).expect("malformed ICMP");
                assert!(icmp.verify_checksum(), "bad ICMP checksum");
                if icmp.msg_type() == Icmpv4Message::DstUnreachable {
                    // The quoted datagram: IP header, then the UDP ports.
                    let quoted = Ipv4Packet::new_checked(icmp.data()).expect("quoted IP header");
                    let ports = &quoted.payload()[..4];
                    assert!(
                        self.peers.iter().any(|peer| ports
                            == [GUEST_PORT.to_be_bytes(), peer.port().to_be_bytes()].concat()),
                        "the unreachable quotes another flow"
                    );
                    self.outcome.unreachables += 1;
                }
                return;
            }
            _ => return,
        }
        let offset = usize::from(ip.frag_offset());
        let fragmented = ip.more_frags() || offset > 0;
        let whole = if fragmented {
            self.outcome.fragments += 1;
            if ip.more_frags() {
                assert_eq!(ip.payload().len() % 8, 0, "a fragment not a multiple of 8");
            }
            let (ident, bytes) = self.partial.get_or_insert_with(|| (ip.ident(), Vec::new()));
            // The stack sends a datagram's fragments in order, one datagram at a time.
            assert_eq!(*ident, ip.ident(), "fragments of two datagrams interleaved");
            assert_eq!(offset, bytes.len(), "a fragment out of place");
            bytes.extend_from_slice(ip.payload());
            if ip.more_frags() {
                return;
            }
            self.partial.take().expect("being assembled").1
        } else {
            ip.payload().to_vec()
        };
        let udp = UdpPacket::new_checked(&whole[..]).expect("malformed UDP datagram");
        assert!(
            udp.verify_checksum(&IpAddress::from(src), &IpAddress::from(dst)),
            "bad UDP checksum"
        );
        let from = SocketAddr::new(IpAddr::V4(src), udp.src_port());
        let Some(peer) = self.peers.iter().position(|&peer| peer == from) else {
            return;
        };
        assert_eq!(
            udp.dst_port(),
            GUEST_PORT,
            "a datagram for another guest port"
        );
        self.guest_received[peer].push(udp.payload().to_vec());
    }
}
