//! The `flows` fuzz target: one guest TCP connection, over IPv4 or IPv6, through the stack to
//! a [`SimHost`] peer that accepts it, with the guest's segments chosen by the input. It
//! reaches what the `frames` target cannot (its host refuses every socket): the data relay
//! both ways, retransmission, SACK scoreboards and loss recovery, zero windows and timers.
//!
//! The driver makes the handshake itself, so every input starts from an established
//! connection; the input then picks the guest's segments (sequence and ACK numbers relative to
//! the connection's, windows, flags, SACK blocks), the passing of time, and when the host peer
//! reads. Payload bytes are a function of their place in the stream, so a retransmission,
//! however it overlaps, carries the same bytes as the original. Checked on every step:
//! - every byte the host peer received is the guest's stream, in order, from its start;
//! - every data segment to the guest carries the host peer's bytes for its sequence numbers;
//! - the stack never acknowledges guest data the guest did not send;
//! - frames fit their buffers and the MTU (GSO frames excepted), and non-GSO checksums hold;
//! - the stack never discards or seeks past what it peeked, nor sends after shutting down
//!   writing ([`SimHost`] panics).
//!
//! And at the end, liveness: the guest turns well-behaved (it acknowledges what it holds and
//! resends what was not acknowledged); unless the stack reset the connection, every byte must
//! then cross both ways within the retransmission timer's reach.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpControl, TcpPacket,
};

use super::Input;
use super::sim_host::SimHost;
use crate::config::NetConfig;
use crate::stack::forward::Proto;
use crate::stack::frame::{Link, TcpHeader, TxFrame, build_tcp_frame, pseudo_header_sum};
use crate::stack::ndp;
use crate::stack::{Limits, Stack, StackConfig};

const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x64]);
/// The guest connects from this port to [`REMOTE`]; or, on a forward, [`REMOTE_CLIENT`]
/// connects to the forward and reaches the guest at [`FORWARDED_PORT`].
const GUEST_PORT: u16 = 40000;
/// Test-network addresses (RFC 2544): nothing is sent anywhere, the host is simulated.
const REMOTE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 80);
const REMOTE_CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9)), 50000);
/// The same over IPv6, in the benchmarking prefix 2001:2::/48 (RFC 5180).
const REMOTE6: SocketAddr =
    SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1)), 80);
const REMOTE_CLIENT6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 9)),
    50000,
);
/// The guest's IPv6 address: one a SLAAC guest could take in the advertised prefix.
const GUEST_INTERFACE_ID6: u64 = 0x100;
const FORWARDED_PORT: u16 = 8080;
/// Each step of the liveness phase advances the clock this much, or to the stack's next
/// timer if that is later; it gives up after this many steps in which the stack sent nothing.
const SETTLE_STEP: Duration = Duration::from_millis(500);
const SETTLE_PATIENCE: u32 = 4;
const SETTLE_MAX_STEPS: u32 = 4000;

/// Byte `offset` of a stream: a scramble of the offset, so bytes carried at the wrong place
/// show (`salt` tells the two directions apart).
pub fn stream_byte(offset: usize, salt: u32) -> u8 {
    ((offset as u32 ^ salt).wrapping_mul(2_654_435_761) >> 24) as u8
}

fn stream(start: usize, len: usize, salt: u32) -> Vec<u8> {
    (start..start + len).map(|i| stream_byte(i, salt)).collect()
}

fn is_stream(bytes: &[u8], start: usize, salt: u32) -> bool {
    bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b == stream_byte(start + i, salt))
}

const UPLOAD_SALT: u32 = 0x5eed_0001;
const DOWNLOAD_SALT: u32 = 0x5eed_0002;

/// What the guest knows and has done.
struct Guest {
    isn: u32,
    /// Stream bytes sent so far (the furthest byte any segment carried).
    sent: usize,
    /// Our (the stack's) initial sequence number, from its SYN-ACK.
    peer_isn: u32,
    /// The furthest sequence number the stack's segments reached, FIN included.
    peer_high: u32,
    /// The stack's latest ACK number.
    peer_ack: u32,
    /// Which download bytes arrived, as a bitmap over offsets.
    received: Vec<bool>,
    /// How many download bytes arrived in order (the first hole in `received`).
    contiguous: usize,
    /// The stack's FIN arrived (its host peer closed).
    peer_fin: bool,
    /// This many more of the stack's data or FIN segments are lost on the way.
    lose: u8,
    /// The stack sent a RST.
    reset_seen: bool,
    /// The furthest download offset the guest acknowledged: it claims those bytes.
    acked: usize,
    /// The input made the guest send a FIN, SYN or RST after the handshake, or ACK bytes it
    /// never received: the stream model no longer holds, so liveness is not checked.
    unruly: bool,
}

impl Guest {
    fn contiguous(&self) -> usize {
        self.contiguous
    }

    fn mark_received(&mut self, offset: usize, len: usize) {
        self.received[offset..offset + len].fill(true);
        while self.received.get(self.contiguous) == Some(&true) {
            self.contiguous += 1;
        }
    }
}

struct Driver {
    stack: Stack<SimHost>,
    guest: Guest,
    now: Instant,
    mtu: usize,
    /// Frames the stack sent to the guest.
    frames_seen: u64,
    /// The host peer reset the connection: the flow must end.
    host_reset: bool,
    /// Bytes of the host peer's `received` already checked.
    upload_checked: usize,
    /// The MSS option of the guest's SYN.
    announced_mss: Option<u16>,
    /// The TAP takes GSO frames: guest segments of up to 64 KiB whatever the MTU.
    gso: bool,
    download_len: usize,
    /// The host side's address as the guest sees it, and the guest's port.
    remote: SocketAddr,
    guest_port: u16,
    /// The connection runs over IPv6.
    ipv6: bool,
}

/// What [`drive_flows`] saw, for the corpus replay test.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlowsOutcome {
    /// The connection got through the handshake.
    pub established: bool,
    /// Guest bytes the host peer received, and download bytes the guest holds in order.
    pub uploaded: usize,
    pub downloaded: usize,
    /// The liveness check ran (the guest kept to the stream model and the flow survived).
    pub liveness_checked: bool,
    /// Download bytes peeked more than once (resent).
    pub resent: u64,
    /// The stack reset the connection towards the guest.
    pub reset_by_stack: bool,
}

/// The `flows` target. Input: a header of 8 bytes (configuration, guest ISN, download size),
/// then operations, each an opcode byte and its arguments (see [`Driver::step`]).
pub fn drive_flows(data: &[u8]) -> FlowsOutcome {
    let mut input = Input(data);
    let config_bits = input.u8();
    let gso = config_bits & 1 != 0;
    let mtu = if config_bits & 2 != 0 { 65520 } else { 1500 };
    let offer_sack = config_bits & 4 != 0;
    let offer_scale = config_bits & 8 != 0;
    let send_buffer = [1 << 10, 16 << 10, 256 << 10, 4 << 20][usize::from(config_bits >> 4 & 3)];
    let receive_buffer = [4 << 10, 64 << 10, 1 << 20, usize::MAX][usize::from(config_bits >> 6)];
    let guest_isn = input.u32();
    let more_bits = input.u8();
    let flow_buffer = if more_bits & 1 != 0 {
        16 << 10
    } else {
        Limits::default().flow_buffer
    };
    let ipv6 = more_bits & 16 != 0;
    // The MSS the guest's SYN announces: its link's, none (RFC 9293 says 536 then), or small.
    let announced_mss = match more_bits >> 1 & 3 {
        0 => Some((mtu - tcp_ip_header(ipv6)) as u16),
        1 => None,
        2 => Some(536),
        _ => Some(64),
    };
    // Up to 256 KiB: enough for many segments in flight, small enough to run fast.
    let download_len = usize::from(input.u16()) * 4;
    // The host peer connects to a port forward, instead of the guest to the host.
    let forwarded = more_bits & 8 != 0;

    let mut host = SimHost::with_download(stream(0, download_len, DOWNLOAD_SALT));
    host.send_buffer = send_buffer;
    host.receive_buffer = receive_buffer;
    let config = StackConfig {
        limits: Limits {
            flow_buffer,
            ..Limits::default()
        },
        gso,
        ipv6,
        ..StackConfig::plain(mtu)
    };
    let now = Instant::now();
    let mut driver = Driver {
        stack: Stack::new(host, config, now),
        guest: Guest {
            isn: guest_isn,
            sent: 0,
            peer_isn: 0,
            peer_high: 0,
            peer_ack: 0,
            received: vec![false; download_len],
            contiguous: 0,
            peer_fin: false,
            lose: 0,
            reset_seen: false,
            acked: 0,
            unruly: false,
        },
        now,
        mtu,
        frames_seen: 0,
        host_reset: false,
        upload_checked: 0,
        announced_mss,
        gso,
        download_len,
        remote: match (forwarded, ipv6) {
            (false, false) => REMOTE,
            (false, true) => REMOTE6,
            (true, false) => REMOTE_CLIENT,
            (true, true) => REMOTE_CLIENT6,
        },
        guest_port: if forwarded {
            FORWARDED_PORT
        } else {
            GUEST_PORT
        },
        ipv6,
    };
    let mut outcome = FlowsOutcome::default();
    let established = if forwarded {
        driver.accept_forwarded(offer_sack, offer_scale)
    } else {
        driver.handshake(offer_sack, offer_scale)
    };
    if !established {
        return outcome;
    }
    outcome.established = true;
    while !input.is_empty() {
        driver.step(&mut input);
    }
    outcome.liveness_checked = driver.settle();
    outcome.uploaded = driver.uploaded();
    outcome.downloaded = driver.guest.contiguous();
    let host = &driver.stack.host;
    outcome.resent = host.peeked_bytes.saturating_sub(download_len as u64);
    outcome.reset_by_stack = driver.guest.reset_seen;
    outcome
}

/// An ARP request from the guest for the gateway.
fn arp_request_frame() -> Vec<u8> {
    let net = NetConfig::default();
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: net.guest,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: net.gateway,
    };
    let mut frame = vec![0; 14 + arp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut eth);
    arp.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    frame
}

/// IP and TCP headers without options, which an MSS leaves out of the MTU.
fn tcp_ip_header(ipv6: bool) -> usize {
    if ipv6 { 60 } else { 40 }
}

impl Driver {
    /// The largest segment the stack may send the guest: what its SYN announced (RFC 9293:
    /// 536 without the option).
    fn peer_mss(&self) -> usize {
        usize::from(self.announced_mss.unwrap_or(536))
    }

    fn guest_ip(&self) -> IpAddr {
        let net = NetConfig::default();
        if self.ipv6 {
            IpAddr::V6(net.in_prefix6(GUEST_INTERFACE_ID6))
        } else {
            IpAddr::V4(net.guest)
        }
    }

    /// Sends the guest's SYN, lets the host connect, and ACKs the SYN-ACK.
    fn handshake(&mut self, offer_sack: bool, offer_scale: bool) -> bool {
        let syn = self.syn(None, offer_sack, offer_scale);
        self.send(&syn, &[]);
        SimHost::dispatch(&mut self.stack, self.now);
        let Some((peer_isn, ack)) = self.take_syn() else {
            return false;
        };
        assert_eq!(ack, Some(self.guest.isn.wrapping_add(1)), "SYN-ACK's ACK");
        self.start_streams(peer_isn);
        let ack = TcpHeader {
            ack: Some(peer_isn.wrapping_add(1)),
            ..self.header()
        };
        self.send(&ack, &[]);
        self.pump();
        true
    }

    /// A host peer connects to a port forward to the guest; the guest answers the stack's SYN
    /// with a SYN-ACK carrying its options, and the stack's ACK completes the handshake.
    fn accept_forwarded(&mut self, offer_sack: bool, offer_scale: bool) -> bool {
        // The guest makes its link address known, as a guest does before any peer reaches
        // it (otherwise the stack asks with ARP or a neighbour solicitation first).
        self.announce_guest();
        let guest = SocketAddr::new(self.guest_ip(), FORWARDED_PORT);
        let unspecified = if self.ipv6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let any = SocketAddr::new(unspecified, FORWARDED_PORT);
        self.stack
            .add_forward(Proto::Tcp, any, guest)
            .expect("the simulated host listens");
        self.stack.host.connect_from(self.remote);
        SimHost::dispatch(&mut self.stack, self.now);
        // The SYN goes out from the flow's timer, armed for now.
        self.stack.poll_timers(self.now);
        let Some((peer_isn, ack)) = self.take_syn() else {
            return false;
        };
        assert_eq!(ack, None, "the stack's SYN carries an ACK");
        self.start_streams(peer_isn);
        let syn_ack = self.syn(Some(peer_isn.wrapping_add(1)), offer_sack, offer_scale);
        self.send(&syn_ack, &[]);
        self.pump();
        true
    }

    /// The guest's SYN (or SYN-ACK, with `ack`) with the options the input chose.
    fn syn(&self, ack: Option<u32>, offer_sack: bool, offer_scale: bool) -> TcpHeader {
        TcpHeader {
            control: TcpControl::Syn,
            seq: self.guest.isn,
            ack,
            window: 0xffff,
            max_seg_size: self.announced_mss,
            window_scale: offer_scale.then_some(7),
            sack_permitted: offer_sack,
            ..self.header()
        }
    }

    /// Flushes the stack and returns the sequence and ACK numbers of the SYN it sent, if any.
    fn take_syn(&mut self) -> Option<(u32, Option<u32>)> {
        self.stack.flush();
        let mut syn = None;
        self.collect(|seq, ack, control| {
            if control == TcpControl::Syn {
                syn = Some((seq, ack));
            }
        });
        syn
    }

    /// Both streams start after the SYNs: the stack's at `peer_isn + 1`.
    fn start_streams(&mut self, peer_isn: u32) {
        self.guest.peer_isn = peer_isn;
        self.guest.peer_high = peer_isn.wrapping_add(1);
        self.guest.peer_ack = self.guest.isn.wrapping_add(1);
    }

    /// An ARP request for the gateway, or over IPv6 an unsolicited neighbour advertisement
    /// of the guest's address: the stack learns where the guest is from either.
    fn announce_guest(&mut self) {
        let frame = match self.guest_ip() {
            IpAddr::V6(guest) => {
                let link = Link {
                    src: GUEST_MAC,
                    dst: ndp::multicast_mac(ndp::ALL_NODES),
                };
                let mut frame = Vec::new();
                let len =
                    ndp::build_neighbor_advert(&mut frame, link, guest, ndp::ALL_NODES, false);
                frame.truncate(len);
                frame
            }
            IpAddr::V4(_) => arp_request_frame(),
        };
        self.stack.handle_frame(self.now, &frame);
        self.stack.flush();
        self.collect(|_, _, _| {});
    }

    /// A bare ACK header from the guest at its next sequence number.
    fn header(&self) -> TcpHeader {
        TcpHeader {
            src_port: self.guest_port,
            dst_port: self.remote.port(),
            control: TcpControl::None,
            seq: self.seq_at(self.guest.sent),
            ack: Some(self.guest.peer_high),
            window: 0xffff,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            sack: [None; 3],
        }
    }

    fn seq_at(&self, offset: usize) -> u32 {
        self.guest.isn.wrapping_add(1).wrapping_add(offset as u32)
    }

    /// The download offset of sequence number `seq` of the stack's stream.
    fn peer_offset(&self, seq: u32) -> usize {
        seq.wrapping_sub(self.guest.peer_isn.wrapping_add(1)) as usize
    }

    fn send(&mut self, header: &TcpHeader, payload: &[u8]) {
        let link = Link {
            src: GUEST_MAC,
            dst: EthernetAddress::BROADCAST,
        };
        let mut frame = Vec::new();
        let len = build_tcp_frame(
            &mut frame,
            link,
            self.guest_ip(),
            self.remote.ip(),
            header,
            payload,
        );
        self.stack.handle_frame(self.now, &frame[..len]);
    }

    /// One operation of the input.
    fn step(&mut self, input: &mut Input) {
        match input.u8() % 8 {
            // Any segment the input describes.
            0 => {
                let flags = input.u8();
                let seq_back = input.u16();
                let len = usize::from(input.u16());
                let ack_choice = input.u32();
                let window = input.u16();
                let blocks = [(); 3].map(|()| (input.u16(), input.u16()));
                self.any_segment(flags, seq_back, len, ack_choice, window, blocks);
            }
            // Time passes.
            1 => {
                let step = Duration::from_millis(20) * u32::from(input.u8());
                self.now += step;
                self.pump();
            }
            // The host peer reads what was sent to it.
            2 => {
                self.stack.host.drain(0);
                self.pump();
            }
            // The guest sends the next `len` bytes of its stream, ACKing what it holds.
            3 => {
                let len = usize::from(input.u16()) % (self.segment_max() + 1);
                let header = TcpHeader {
                    ack: Some(self.guest_ack()),
                    ..self.header()
                };
                let payload = stream(self.guest.sent, len, UPLOAD_SALT);
                self.guest.sent += len;
                self.send(&header, &payload);
                self.pump();
            }
            // The guest ACKs what it holds in order, with SACK blocks for what it holds
            // beyond, and a window the input picks.
            4 => {
                let window = input.u16();
                self.well_behaved_ack(window);
                self.pump();
            }
            // Several frames in one batch before the stack flushes.
            5 => {
                let count = input.u8() % 8;
                for _ in 0..count {
                    let len = usize::from(input.u16()) % (self.segment_max() + 1);
                    let payload = stream(self.guest.sent, len, UPLOAD_SALT);
                    let header = TcpHeader {
                        ack: Some(self.guest_ack()),
                        ..self.header()
                    };
                    self.guest.sent += len;
                    self.send(&header, &payload);
                }
                self.pump();
            }
            // The stack's next data segments are lost.
            6 => self.guest.lose = input.u8() % 16,
            // The host peer resets the connection.
            7 => {
                if !self.stack.host.connections.is_empty() {
                    self.stack.host.reset(0);
                    self.host_reset = true;
                }
                self.pump();
            }
            _ => unreachable!("opcodes are taken modulo 8"),
        }
    }

    /// The most guest payload one frame may carry: the MSS, or 64 KiB with GSO; either way
    /// leaving room in one IP packet for the largest TCP header (SACK blocks). IPv4's length
    /// field counts its own header, IPv6's does not.
    fn segment_max(&self) -> usize {
        let max_payload = 65535 - 60 - if self.ipv6 { 0 } else { 20 };
        if self.gso {
            max_payload
        } else {
            (self.mtu - tcp_ip_header(self.ipv6)).min(max_payload)
        }
    }

    fn guest_ack(&self) -> u32 {
        let holds = self.guest.contiguous().max(self.guest.acked);
        let fin = u32::from(self.guest.peer_fin && holds == self.download_len);
        self.guest
            .peer_isn
            .wrapping_add(1)
            .wrapping_add(holds as u32)
            .wrapping_add(fin)
    }

    fn well_behaved_ack(&mut self, window: u16) {
        let ack = self.guest_ack();
        let mut sack = [None; 3];
        let mut blocks = 0;
        let mut offset = self.guest.contiguous();
        while blocks < 3 && offset < self.download_len {
            // The next run of received bytes past a hole.
            let Some(start) = self.guest.received[offset..].iter().position(|&b| b) else {
                break;
            };
            let start = offset + start;
            let end = self.guest.received[start..]
                .iter()
                .position(|&b| !b)
                .map_or(self.download_len, |n| start + n);
            if start > self.guest.acked {
                sack[blocks] = Some((
                    self.guest
                        .peer_isn
                        .wrapping_add(1)
                        .wrapping_add(start as u32),
                    self.guest.peer_isn.wrapping_add(1).wrapping_add(end as u32),
                ));
                blocks += 1;
            }
            offset = end;
        }
        let header = TcpHeader {
            ack: Some(ack),
            window,
            sack,
            ..self.header()
        };
        self.send(&header, &[]);
    }

    #[allow(clippy::too_many_arguments)]
    fn any_segment(
        &mut self,
        flags: u8,
        seq_back: u16,
        len: usize,
        ack_choice: u32,
        window: u16,
        blocks: [(u16, u16); 3],
    ) {
        let len = len % (self.segment_max() + 1);
        // From 64 KiB before the guest's next byte to 32 KiB past it (a hole).
        let start = if seq_back & 0x8000 != 0 {
            self.guest.sent + usize::from(seq_back & 0x7fff)
        } else {
            self.guest.sent.saturating_sub(usize::from(seq_back) * 2)
        };
        let payload = stream(start, len, UPLOAD_SALT);
        let high = self.guest.peer_high;
        let ack = match ack_choice >> 30 {
            0 => high.wrapping_sub(ack_choice & 0xffff),
            1 => high.wrapping_add(ack_choice & 0xffff),
            2 => self.guest_ack().wrapping_sub(ack_choice & 0xff),
            _ => ack_choice,
        };
        let mut sack = [None; 3];
        for (i, &(from, span)) in blocks.iter().enumerate().take(usize::from(flags >> 5 & 3)) {
            // Blocks from 512 KiB below the ACK to 512 KiB above, up to 1 MiB long.
            let block_start = ack.wrapping_add(((i32::from(from as i16)) * 16) as u32);
            sack[i] = Some((block_start, block_start.wrapping_add(u32::from(span) * 16)));
        }
        let control = match flags & 7 {
            1 => TcpControl::Fin,
            2 => TcpControl::Rst,
            3 => TcpControl::Syn,
            4 => TcpControl::Psh,
            _ => TcpControl::None,
        };
        let header = TcpHeader {
            control,
            seq: self.seq_at(start),
            ack: (flags & 8 == 0).then_some(ack),
            window,
            sack,
            ..self.header()
        };
        if matches!(control, TcpControl::Fin | TcpControl::Rst | TcpControl::Syn) {
            self.guest.unruly = true;
        }
        if let Some(ack) = header.ack {
            // Acknowledging bytes it does not hold: the guest gives up its claim to them, and
            // the model no longer knows what it should end with.
            let offset = self.peer_offset(ack);
            if offset <= self.download_len + 1 && offset > self.guest.contiguous() {
                self.guest.unruly = true;
                self.guest.acked = self.guest.acked.max(offset.min(self.download_len));
            }
        }
        self.guest.sent = self.guest.sent.max(start + len);
        self.send(&header, &payload);
        self.pump();
    }

    /// Lets the stack run: due timers, ready host sockets, its flush; then reads and checks
    /// every frame it sent.
    fn pump(&mut self) {
        for _ in 0..4 {
            SimHost::run(&mut self.stack, self.now);
            self.collect(|_, _, _| {});
            if !self.stack.host.has_ready() {
                break;
            }
        }
        self.check_upload();
    }

    /// Takes the stack's frames for the guest, checks each, and records what arrived.
    fn collect(&mut self, mut on_segment: impl FnMut(u32, Option<u32>, TcpControl)) {
        let max_frame = self.mtu + 14;
        let frames = self.stack.take_frames();
        self.frames_seen += frames.len() as u64;
        for frame in frames {
            assert!(frame.len <= frame.buf.len(), "frame longer than its buffer");
            assert!(
                frame.is_segmented() || frame.len <= max_frame,
                "frame of {} bytes over the MTU",
                frame.len
            );
            let mss = frame.gso.as_ref().map(|gso| usize::from(gso.mss));
            assert!(
                mss.is_none_or(|mss| mss <= self.peer_mss()),
                "GSO frame cut at {mss:?}, more than the guest's MSS {}",
                self.peer_mss()
            );
            if let Some((seq, ack, control)) = self.read_segment(&frame) {
                on_segment(seq, ack, control);
            }
            self.stack.tx.recycle(frame.buf);
        }
    }

    /// Checks one frame for the guest and records its segment; returns its sequence and
    /// ACK numbers and control flag if it is the connection's.
    fn read_segment(&mut self, frame: &TxFrame) -> Option<(u32, Option<u32>, TcpControl)> {
        let eth =
            EthernetFrame::new_checked(&frame.buf[..frame.len]).expect("malformed Ethernet frame");
        let (src, dst, protocol, l4) = match eth.ethertype() {
            EthernetProtocol::Ipv4 => {
                let ip = Ipv4Packet::new_checked(eth.payload()).expect("malformed IPv4 packet");
                let (src, dst) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
                (src, dst, ip.next_header(), ip.payload())
            }
            EthernetProtocol::Ipv6 => {
                let ip = Ipv6Packet::new_checked(eth.payload()).expect("malformed IPv6 packet");
                let (src, dst) = (IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()));
                (src, dst, ip.next_header(), ip.payload())
            }
            _ => return None,
        };
        if protocol != IpProtocol::Tcp {
            return None;
        }
        let tcp = TcpPacket::new_checked(l4).expect("malformed TCP segment");
        if frame.gso.is_some() {
            // Left for the guest kernel to finish: the pseudo-header's sum, not inverted.
            assert_eq!(
                tcp.checksum(),
                pseudo_header_sum(src, dst, IpProtocol::Tcp, l4.len() as u32),
                "bad partial TCP checksum"
            );
        } else {
            assert!(
                tcp.verify_checksum(&IpAddress::from(src), &IpAddress::from(dst)),
                "bad TCP checksum"
            );
        }
        if tcp.dst_port() != self.guest_port || tcp.src_port() != self.remote.port() {
            return None;
        }
        let seq = tcp.seq_number().0 as u32;
        let ack = tcp.ack().then(|| tcp.ack_number().0 as u32);
        let control = if tcp.syn() {
            TcpControl::Syn
        } else if tcp.rst() {
            TcpControl::Rst
        } else if tcp.fin() {
            TcpControl::Fin
        } else {
            TcpControl::None
        };
        if control == TcpControl::Rst {
            self.guest.reset_seen = true;
        }
        if control == TcpControl::Syn || control == TcpControl::Rst {
            return Some((seq, ack, control));
        }
        let payload = tcp.payload();
        assert!(
            frame.is_segmented() || payload.len() <= self.peer_mss(),
            "a segment of {} bytes, more than the guest's MSS {}",
            payload.len(),
            self.peer_mss()
        );
        if (!payload.is_empty() || tcp.fin()) && self.guest.lose > 0 {
            self.guest.lose -= 1;
            return None;
        }
        if !payload.is_empty() {
            let offset = self.peer_offset(seq);
            assert!(
                offset + payload.len() <= self.download_len,
                "segment at offset {offset} of {} bytes beyond the {} the peer sent",
                payload.len(),
                self.download_len
            );
            assert!(
                is_stream(payload, offset, DOWNLOAD_SALT),
                "segment at offset {offset} carries the wrong bytes"
            );
            self.guest.mark_received(offset, payload.len());
        }
        let end = seq
            .wrapping_add(payload.len() as u32)
            .wrapping_add(u32::from(tcp.fin()));
        if (end.wrapping_sub(self.guest.peer_high) as i32) > 0 {
            self.guest.peer_high = end;
        }
        if tcp.fin() {
            assert_eq!(
                self.peer_offset(seq) + payload.len(),
                self.download_len,
                "FIN before the end of the peer's bytes"
            );
            self.guest.peer_fin = true;
        }
        if let Some(ack) = ack {
            // Never past what the guest sent (its FIN, one more, only when unruly).
            let acked = ack.wrapping_sub(self.guest.isn.wrapping_add(1)) as usize;
            assert!(
                acked <= self.guest.sent + usize::from(self.guest.unruly),
                "the stack acknowledged {acked} bytes of the {} the guest sent",
                self.guest.sent
            );
            self.guest.peer_ack = ack;
        }
        Some((seq, ack, control))
    }

    /// The host peer received the guest's stream, in order and nothing else.
    fn check_upload(&mut self) {
        let Some(conn) = self.stack.host.connections.first() else {
            return;
        };
        let received = &conn.received;
        assert!(received.len() <= self.guest.sent, "host got more than sent");
        let new = &received[self.upload_checked..];
        assert!(
            is_stream(new, self.upload_checked, UPLOAD_SALT),
            "the host peer received bytes out of place"
        );
        self.upload_checked = received.len();
    }

    fn uploaded(&self) -> usize {
        self.stack
            .host
            .connections
            .first()
            .map_or(0, |conn| conn.received.len())
    }

    /// The liveness phase: the guest resends what the stack did not acknowledge and ACKs
    /// what it holds, the host peer reads, time passes. Returns whether it checked (the
    /// flow is still there and the guest kept to the stream model).
    fn settle(&mut self) -> bool {
        if self.guest.unruly && !self.host_reset {
            // Nothing to check against: the guest broke its own stream.
            return false;
        }
        let mut idle = 0;
        // Frames to the guest, and bytes to the host peer: with the upload acknowledged
        // early, the stack can go on moving bytes from its buffer to a slow peer without
        // a frame.
        let mut last = (u64::MAX, usize::MAX);
        for _ in 0..SETTLE_MAX_STEPS {
            if self.stack.tcp_flow_count() == 0 {
                return false;
            }
            self.stack.host.drain(0);
            let acked = self
                .guest
                .peer_ack
                .wrapping_sub(self.guest.isn.wrapping_add(1)) as usize;
            if acked < self.guest.sent {
                // Resend from the stack's ACK, a window's worth at most.
                let mut offset = acked;
                while offset < self.guest.sent && offset < acked + (256 << 10) {
                    let len = (self.guest.sent - offset).min(self.segment_max());
                    let header = TcpHeader {
                        seq: self.seq_at(offset),
                        ack: Some(self.guest_ack()),
                        ..self.header()
                    };
                    self.send(&header, &stream(offset, len, UPLOAD_SALT));
                    offset += len;
                }
            }
            self.well_behaved_ack(0xffff);
            let timer = self
                .stack
                .poll_at()
                .map(|at| at.saturating_duration_since(self.now));
            self.now += timer.unwrap_or_default().max(SETTLE_STEP);
            self.pump();
            let progress = (self.uploaded(), self.guest.contiguous());
            if progress == (self.guest.sent, self.download_len) && !self.host_reset {
                break;
            }
            let now = (self.frames_seen, self.uploaded());
            if now == last {
                idle += 1;
                if idle > SETTLE_PATIENCE {
                    break;
                }
            } else {
                idle = 0;
                last = now;
            }
        }
        if self.host_reset {
            assert_eq!(
                self.stack.tcp_flow_count(),
                0,
                "the flow outlived its host socket's reset"
            );
        }
        if self.stack.tcp_flow_count() == 0 {
            return false;
        }
        assert_eq!(self.uploaded(), self.guest.sent, "upload stuck");
        assert_eq!(self.guest.contiguous(), self.download_len, "download stuck");
        true
    }
}

/// How a `flows` input starts: the connection's configuration (for seeds and tests; the
/// fuzzer writes the bytes directly).
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub gso: bool,
    /// MTU 65520 instead of 1500.
    pub jumbo: bool,
    /// The guest's SYN offers SACK, and a window scale (7).
    pub sack: bool,
    pub window_scale: bool,
    /// The host socket's send buffer: 1 KiB, 16 KiB, 256 KiB, 4 MiB (0–3).
    pub send_buffer: u8,
    /// The host socket's receive buffer: 4 KiB, 64 KiB, 1 MiB, unbounded (0–3).
    pub receive_buffer: u8,
    pub guest_isn: u32,
    /// `--limit flow-buffer=16K` instead of the default.
    pub small_flow_buffer: bool,
    /// The MSS option of the guest's SYN: its link's, none, 536, 64 (0–3).
    pub announced_mss: u8,
    /// A host peer connects to a port forward, instead of the guest to the host.
    pub forwarded: bool,
    /// The connection runs over IPv6.
    pub ipv6: bool,
    /// What the host peer sends (rounded down to a multiple of 4, at most 256 KiB).
    pub download: usize,
}

/// One operation of a `flows` input.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// A segment as the input describes it ([`Driver::any_segment`]'s arguments).
    Segment {
        flags: u8,
        seq_back: u16,
        len: u16,
        ack_choice: u32,
        window: u16,
        blocks: [(u16, u16); 3],
    },
    /// Time passes, in steps of 20 ms.
    Wait(u8),
    /// The host peer reads what was sent to it.
    Drain,
    /// The guest sends the next bytes of its stream.
    Send(u16),
    /// The guest acknowledges what it holds, with SACK blocks, and this window.
    Ack(u16),
    /// Up to 7 segments of the guest's stream in one batch.
    Batch(&'static [u16]),
    /// The stack's next data (or FIN) segments, up to 15, are lost on the way to the guest.
    Lose(u8),
    /// The host peer resets the connection.
    HostReset,
}

/// Flags of [`Op::Segment`]: the low three bits pick the control flag, bit 3 drops the ACK,
/// bits 5–6 the number of SACK blocks.
pub const SEGMENT_FIN: u8 = 1;
pub const SEGMENT_RST: u8 = 2;

/// The bytes of a `flows` input.
pub fn encode(setup: Setup, ops: &[Op]) -> Vec<u8> {
    let mut out = vec![
        u8::from(setup.gso)
            | u8::from(setup.jumbo) << 1
            | u8::from(setup.sack) << 2
            | u8::from(setup.window_scale) << 3
            | (setup.send_buffer & 3) << 4
            | (setup.receive_buffer & 3) << 6,
    ];
    out.extend_from_slice(&setup.guest_isn.to_be_bytes());
    out.push(
        u8::from(setup.small_flow_buffer)
            | (setup.announced_mss & 3) << 1
            | u8::from(setup.forwarded) << 3
            | u8::from(setup.ipv6) << 4,
    );
    out.extend_from_slice(&((setup.download / 4).min(0xffff) as u16).to_be_bytes());
    for op in ops {
        match *op {
            Op::Segment {
                flags,
                seq_back,
                len,
                ack_choice,
                window,
                blocks,
            } => {
                out.extend_from_slice(&[0, flags]);
                out.extend_from_slice(&seq_back.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&ack_choice.to_be_bytes());
                out.extend_from_slice(&window.to_be_bytes());
                for (from, span) in blocks {
                    out.extend_from_slice(&from.to_be_bytes());
                    out.extend_from_slice(&span.to_be_bytes());
                }
            }
            Op::Wait(step) => out.extend_from_slice(&[1, step]),
            Op::Drain => out.push(2),
            Op::Send(len) => {
                out.push(3);
                out.extend_from_slice(&len.to_be_bytes());
            }
            Op::Ack(window) => {
                out.push(4);
                out.extend_from_slice(&window.to_be_bytes());
            }
            Op::Lose(count) => out.extend_from_slice(&[6, count]),
            Op::HostReset => out.push(7),
            Op::Batch(lens) => {
                out.extend_from_slice(&[5, lens.len() as u8]);
                for len in lens {
                    out.extend_from_slice(&len.to_be_bytes());
                }
            }
        }
    }
    out
}
