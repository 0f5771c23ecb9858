//! The `datagrams` fuzz target: a guest's UDP flow through the stack to a [`SimHost`] peer,
//! with the datagrams each side sends, their sizes, the peer's port unreachables and the
//! passing of time chosen by the input. It reaches what the `frames` target cannot: the
//! relay of datagrams both ways, the batching of the guest's datagrams into GSO sends, the
//! fragmentation of the host peer's datagrams that exceed the guest's MTU (their size is the
//! host peer's choice, an untrusted one), port unreachables, and flow expiry.
//!
//! Checked on every step:
//! - the host peer received exactly the guest's datagrams, in order;
//! - the guest received exactly the host peer's datagrams, in order, each whole (fragments
//!   put back together), with valid IP and UDP checksums;
//! - every frame fits the MTU, and fragment offsets fall on 8-byte boundaries;
//! - a port unreachable reaches the guest as ICMP quoting its flow's ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet, IpAddress,
    IpProtocol, Ipv4Packet, UdpPacket,
};

use super::sim_host::SimHost;
use crate::config::NetConfig;
use crate::stack::frame::{Link, finish_udp_frame, udp_payload_offset};
use crate::stack::{Limits, Stack, StackConfig};

const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x64]);
const GUEST_PORT: u16 = 5000;
/// A test-network address (RFC 2544): nothing is sent anywhere, the host is simulated.
const REMOTE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 7);
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
    /// Host sockets the flow used (a new one after each expiry).
    pub sockets: usize,
}

struct Driver {
    stack: Stack<SimHost>,
    now: Instant,
    mtu: usize,
    /// Datagrams the guest sent, and those the host peer sent, in order.
    guest_sent: Vec<Vec<u8>>,
    host_sent: Vec<Vec<u8>>,
    /// Datagrams the guest received whole, in order.
    guest_received: Vec<Vec<u8>>,
    /// A datagram being put back together: its IP ident and the bytes so far.
    partial: Option<(u16, Vec<u8>)>,
    outcome: DatagramsOutcome,
}

/// Reads the input front to back; past its end every read is zero.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
}

/// The `datagrams` target. Input: one configuration byte (the MTU: 576, 1500, 9000 or
/// 65520), then operations, each an opcode byte and its arguments (see [`Driver::step`]).
pub fn drive_datagrams(data: &[u8]) -> DatagramsOutcome {
    let mut input = Input(data);
    let mtu = [576, 1500, 9000, 65520][usize::from(input.u8() & 3)];
    let config = StackConfig {
        net: NetConfig::default(),
        mtu,
        disable_host_loopback: false,
        dns_upstream: None,
        limits: Limits::default(),
        gso: false,
        ipv6: false,
    };
    let now = Instant::now();
    let mut driver = Driver {
        stack: Stack::new(SimHost::default(), config, now),
        now,
        mtu,
        guest_sent: Vec::new(),
        host_sent: Vec::new(),
        guest_received: Vec::new(),
        partial: None,
        outcome: DatagramsOutcome::default(),
    };
    while !input.0.is_empty() {
        driver.step(&mut input);
    }
    driver.outcome.to_host = driver.to_host().len();
    driver.outcome.to_guest = driver.guest_received.len();
    driver.outcome.sockets = driver.stack.host.udp.len();
    driver.outcome
}

/// The operations of a `datagrams` input.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// The guest sends a datagram of this many bytes (at most what one frame carries).
    Guest(u16),
    /// The guest sends `count` (up to 7) datagrams of `len` bytes, then one of `last`, in one
    /// batch of frames.
    GuestBatch { count: u8, len: u16, last: u16 },
    /// The host peer sends a datagram of this many bytes (at most 65,507).
    Host(u16),
    /// The guest's last datagram met a closed port on the host side.
    Refuse,
    /// Seconds pass.
    Wait(u8),
}

/// The bytes of a `datagrams` input at MTU `[576, 1500, 9000, 65520][mtu]`.
pub fn encode(mtu: u8, ops: &[Op]) -> Vec<u8> {
    let mut out = vec![mtu];
    for op in ops {
        match *op {
            Op::Guest(len) => {
                out.push(0);
                out.extend_from_slice(&len.to_be_bytes());
            }
            Op::GuestBatch { count, len, last } => {
                out.extend_from_slice(&[1, count]);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&last.to_be_bytes());
            }
            Op::Host(len) => {
                out.push(2);
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
                let len = self.guest_len(input.u16());
                self.guest_datagram(len);
                self.pump();
            }
            1 => {
                let count = input.u8() % 8;
                let len = self.guest_len(input.u16());
                let last = self.guest_len(input.u16());
                for _ in 0..count {
                    self.guest_datagram(len);
                }
                self.guest_datagram(last);
                self.pump();
            }
            2 => {
                let len = usize::from(input.u16()) % (MAX_DATAGRAM + 1);
                // Only a live flow has a host socket to send from.
                if self.stack.udp_flow_count() > 0 {
                    let bytes = datagram(self.host_sent.len(), len);
                    self.host_sent.push(bytes.clone());
                    let last = self.stack.host.udp.len() - 1;
                    self.stack.host.udp_reply(last, bytes);
                }
                self.pump();
            }
            3 => {
                if self.stack.udp_flow_count() > 0 {
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

    fn guest_datagram(&mut self, len: usize) {
        let bytes = datagram(self.guest_sent.len(), len);
        let guest = SocketAddr::new(IpAddr::V4(NetConfig::default().guest), GUEST_PORT);
        let offset = udp_payload_offset(guest.ip());
        let mut frame = vec![0; offset + len];
        frame[offset..].copy_from_slice(&bytes);
        let link = Link {
            src: GUEST_MAC,
            dst: EthernetAddress::BROADCAST,
        };
        let frame_len = finish_udp_frame(&mut frame, link, guest, REMOTE, len);
        self.stack.handle_frame(self.now, &frame[..frame_len]);
        self.guest_sent.push(bytes);
    }

    /// Lets the stack run (due timers, ready host sockets, its flush), then reads and checks
    /// every frame it sent and what the host peer received.
    fn pump(&mut self) {
        for _ in 0..4 {
            if self.stack.poll_at().is_some_and(|at| at <= self.now) {
                self.stack.poll_timers(self.now);
            }
            SimHost::dispatch(&mut self.stack, self.now);
            self.stack.flush();
            for frame in self.stack.tx.take() {
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
        let to_host = self.to_host();
        assert!(
            self.guest_sent.starts_with(&to_host),
            "the host peer got datagrams the guest did not send, or out of order"
        );
        assert!(
            self.host_sent.starts_with(&self.guest_received),
            "the guest got datagrams the host peer did not send, or out of order"
        );
    }

    /// Every datagram the host peer received, over all the flow's sockets.
    fn to_host(&self) -> Vec<Vec<u8>> {
        let udp = &self.stack.host.udp;
        udp.iter().flat_map(|peer| peer.received.clone()).collect()
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
                    assert_eq!(
                        ports,
                        [GUEST_PORT.to_be_bytes(), REMOTE.port().to_be_bytes()].concat(),
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
        if udp.dst_port() != GUEST_PORT || udp.src_port() != REMOTE.port() {
            return;
        }
        self.guest_received.push(udp.payload().to_vec());
    }
}
