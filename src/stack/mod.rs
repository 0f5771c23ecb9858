//! The virtual network core: what the guest sees on its TAP, and how each frame becomes host
//! socket operations.
//!
//! It answers ARP for the gateway and DNS addresses, serves DHCP and ping for them, and turns
//! every TCP connection, UDP flow and ICMP echo the guest sends elsewhere into host sockets
//! (through [`host::Host`]). No clock is read here: every input carries `now`. Output frames
//! collect in [`frame::Tx`] for the event loop to write.
//!
//! With IPv6 on, it also sends router advertisements for SLAAC and answers neighbour
//! discovery ([`ndp`]); TCP, UDP and ICMPv6 echo are relayed as for IPv4.

pub mod dhcp;
pub mod forward;
pub mod frame;
pub mod host;
pub mod limits;
pub mod ndp;
pub mod reassembly;
pub mod tcp;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpProtocol, IpRepr, Ipv4Packet, Ipv4Repr,
    Ipv6Packet, Ipv6Repr, NdiscRepr, TcpPacket, UdpPacket,
};

use crate::config::NetConfig;
use forward::{Forward, ForwardId, ForwardInfo, ForwardStats, Proto};
use frame::{Link, Tx, TxFrame, Unreachable};
use host::{Host, PingKind, Token};
pub use limits::{Bound, Limits};
use tcp::{FlowKey, Segment, TcpFlow, TcpState, Verdict};

/// How the stack reaches the host besides the guest's own destinations.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub net: NetConfig,
    pub mtu: usize,
    pub disable_host_loopback: bool,
    /// Where DNS to net+3:53 goes; `None` when `--disable-dns` or no resolver is known.
    pub dns_upstream: Option<SocketAddr>,
    pub limits: Limits,
    /// The TAP takes GSO frames (vnet header with TSO offloads): TCP data to the guest goes
    /// out in frames of up to 64 KiB, whatever the MTU.
    pub gso: bool,
    /// `-6`: serve IPv6 on `net.prefix6`; otherwise IPv6 frames are dropped and counted.
    pub ipv6: bool,
}

impl StackConfig {
    /// The default network at `mtu` with nothing else on: no DNS upstream, the default
    /// limits, no GSO, IPv4 only (the simulated setups of tests and fuzz targets start here).
    pub fn plain(mtu: usize) -> Self {
        StackConfig {
            net: NetConfig::default(),
            mtu,
            disable_host_loopback: false,
            dns_upstream: None,
            limits: Limits::default(),
            gso: false,
            ipv6: false,
        }
    }
}

const MIN_MTU: usize = 68;
const MAX_MTU: usize = 65521;
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;

/// Guest addresses whose MAC we remember.
const MAX_NEIGHBOURS: usize = 1024;
/// Idle time after which a UDP flow is forgotten.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// DNS flows carry one query and its answer: forget them sooner.
pub const DNS_IDLE: Duration = Duration::from_secs(10);
pub const PING_IDLE: Duration = Duration::from_secs(30);
/// How often idle flows are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How soon listeners are tried again after `accept` failed (out of descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(250);

const KIND_TCP: u64 = 1 << 32;
const KIND_UDP: u64 = 2 << 32;
const KIND_PING: u64 = 3 << 32;
const KIND_FORWARD: u64 = 4 << 32;
const INDEX_MASK: u64 = (1 << 32) - 1;

/// Counters a user can read to see what happened (and what was dropped, and why).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    pub frames_in: u64,
    pub frames_out: u64,
    pub dropped_malformed: u64,
    pub dropped_unsupported: u64,
    pub dropped_fragments: u64,
    pub dropped_no_flow: u64,
    pub dropped_flow_limit: u64,
    pub dropped_ping_unavailable: u64,
    pub dropped_oversized: u64,
    pub dropped_tap_full: u64,
    /// Frames to the guest dropped because it had set its TAP down (`EIO`).
    pub dropped_tap_down: u64,
    /// Guest addresses not remembered because [`MAX_NEIGHBOURS`] were.
    pub neighbours_full: u64,
    pub tcp_flows_opened: u64,
    pub tcp_connects_refused: u64,
    pub udp_flows_opened: u64,
    pub ping_flows_opened: u64,
    /// How often each bound was hit; new flows refused at one also count in
    /// `dropped_flow_limit`.
    pub limit_hits: limits::LimitHits,
}

impl Counters {
    /// A new flow refused at `bound`: counted by bound and in the total.
    fn refuse_flow(&mut self, bound: Bound) {
        tracing::trace!(%bound, "new flow refused at its bound");
        self.limit_hits.count(bound);
        self.dropped_flow_limit += 1;
    }
}

/// A slab of flows: stable indices used as event loop tokens.
struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    fn vacant_index(&self) -> usize {
        self.free.last().copied().unwrap_or(self.entries.len())
    }

    fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(index) => {
                self.entries[index] = Some(value);
                index
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    fn remove(&mut self, index: usize) -> Option<T> {
        let value = self.entries.get_mut(index)?.take();
        if value.is_some() {
            self.len -= 1;
            self.free.push(index);
        }
        value
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.entries.get_mut(index)?.as_mut()
    }
}

struct UdpFlow<S> {
    key: FlowKey,
    end: UdpEnd<S>,
    last_active: Instant,
    idle: Duration,
    /// Datagrams from the guest waiting for the end of the batch.
    batch: UdpBatch,
}

/// Guest datagrams of one flow collected during a batch of frames and sent to the host in
/// one `sendmsg` with `UDP_SEGMENT` (GSO): the kernel splits them back into the same
/// datagrams, at a fraction of the per-datagram cost of one `send()` each.
#[derive(Default)]
struct UdpBatch {
    bytes: Vec<u8>,
    /// Size of every datagram but possibly the last.
    segment: usize,
    count: usize,
}

/// Datagrams per GSO send (the kernel allows up to 64 or 128, depending on its version).
const UDP_GSO_MAX_SEGMENTS: usize = 64;
/// Payload bytes per GSO send: one IPv4 packet's worth.
const UDP_GSO_MAX_BYTES: usize = 65535 - 20 - 8;

/// Where a UDP flow's datagrams go on the host.
enum UdpEnd<S> {
    /// Guest-initiated: a socket of its own, connected to the destination.
    Own(S),
    /// A port forward's client: answered through the forward's socket.
    Forward { id: ForwardId, client: SocketAddr },
}

/// Guest address, destination, and the guest's echo identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PingKey {
    guest: IpAddr,
    remote: IpAddr,
    ident: u16,
}

struct PingFlow<S> {
    key: PingKey,
    socket: S,
    kind: PingKind,
    last_active: Instant,
}

pub struct Stack<H: Host> {
    pub host: H,
    config: StackConfig,
    /// Our MAC, for the gateway and DNS addresses.
    mac: EthernetAddress,
    /// Guest addresses (IPv4 and IPv6) and their MACs, learned from what the guest sends.
    neighbours: HashMap<IpAddr, EthernetAddress>,
    dhcp: dhcp::DhcpServer,
    reassembly: reassembly::Reassembler,
    tcp: Slab<TcpFlow<H::Socket>>,
    tcp_index: HashMap<FlowKey, usize>,
    connecting: usize,
    /// TCP flows that came through a port forward.
    forwarded: usize,
    udp: Slab<UdpFlow<H::Socket>>,
    udp_index: HashMap<FlowKey, usize>,
    ping: Slab<PingFlow<H::Socket>>,
    ping_index: HashMap<PingKey, usize>,
    forwards: Slab<Forward<H::Socket>>,
    forward_by_id: HashMap<ForwardId, usize>,
    last_forward_id: u64,
    /// TCP flows owing the guest an ACK at the end of this batch.
    acks_due: Vec<usize>,
    /// TCP flows with guest data to send to the host at the end of this batch.
    flushes_due: Vec<usize>,
    /// TCP flows whose guest ACKs may have opened the window, with when the first came:
    /// polled once for all of them ([`Self::poll_sends`]).
    sends_due: Vec<(usize, Instant)>,
    /// UDP flows with guest datagrams to send at the end of this batch.
    udp_batches_due: Vec<usize>,
    pub tx: Tx,
    pub counters: Counters,
    next_iss: u32,
    /// Identification for the fragments we send (RFC 6864).
    next_ip_ident: u16,
    next_sweep: Option<Instant>,
    next_timer: Option<Instant>,
    /// When the next unsolicited router advertisement is due (IPv6 only).
    next_ra: Option<Instant>,
    ras_sent: u32,
    /// When to try the forwards' listeners again after `accept` failed.
    accept_retry: Option<Instant>,
    scratch: Vec<u8>,
}

fn gateway_mac(gateway: Ipv4Addr) -> EthernetAddress {
    // libslirp's convention: 52:55 followed by the gateway's address.
    let o = gateway.octets();
    EthernetAddress([0x52, 0x55, o[0], o[1], o[2], o[3]])
}

impl<H: Host> Stack<H> {
    pub fn new(host: H, mut config: StackConfig, now: Instant) -> Self {
        // IPv4 requires every link to carry 68 bytes (RFC 791); without -c nothing else
        // checks the MTU slirpnet was given.
        config.mtu = config.mtu.clamp(MIN_MTU, MAX_MTU);
        let seed = now.elapsed().as_nanos() as u32 ^ std::process::id().rotate_left(16);
        let next_ra = config.ipv6.then_some(now);
        Stack {
            host,
            mac: gateway_mac(config.net.gateway),
            dhcp: dhcp::DhcpServer::new(config.net)
                .with_dns(config.dns_upstream.map(|_| config.net.dns)),
            config,
            reassembly: reassembly::Reassembler::default(),
            neighbours: HashMap::new(),
            tcp: Slab::new(),
            tcp_index: HashMap::new(),
            connecting: 0,
            forwarded: 0,
            udp: Slab::new(),
            udp_index: HashMap::new(),
            ping: Slab::new(),
            ping_index: HashMap::new(),
            forwards: Slab::new(),
            forward_by_id: HashMap::new(),
            last_forward_id: 0,
            acks_due: Vec::new(),
            flushes_due: Vec::new(),
            sends_due: Vec::new(),
            udp_batches_due: Vec::new(),
            tx: Tx::default(),
            counters: Counters::default(),
            next_iss: seed.wrapping_mul(2_654_435_761) | 1,
            next_ip_ident: 0,
            next_sweep: None,
            next_timer: None,
            next_ra,
            ras_sent: 0,
            accept_retry: None,
            scratch: vec![0; 65536],
        }
    }

    pub fn tcp_flow_count(&self) -> usize {
        self.tcp.len
    }

    pub fn udp_flow_count(&self) -> usize {
        self.udp.len
    }

    /// Every counter by name, for `get_stats`: live flows by protocol, flows opened, and
    /// frames dropped by reason.
    pub fn counter_list(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        [
            ("tcp_flows", self.tcp.len as u64),
            ("tcp_connecting", self.connecting as u64),
            ("udp_flows", self.udp.len as u64),
            ("ping_flows", self.ping.len as u64),
            ("tcp_flows_opened", c.tcp_flows_opened),
            ("tcp_connects_refused", c.tcp_connects_refused),
            ("udp_flows_opened", c.udp_flows_opened),
            ("ping_flows_opened", c.ping_flows_opened),
            ("frames_in", c.frames_in),
            ("frames_out", c.frames_out),
            ("dropped_malformed", c.dropped_malformed),
            ("dropped_unsupported", c.dropped_unsupported),
            ("dropped_fragments", c.dropped_fragments),
            ("dropped_no_flow", c.dropped_no_flow),
            ("dropped_flow_limit", c.dropped_flow_limit),
            ("dropped_ping_unavailable", c.dropped_ping_unavailable),
            ("dropped_oversized", c.dropped_oversized),
            ("dropped_tap_full", c.dropped_tap_full),
            ("dropped_tap_down", c.dropped_tap_down),
            ("neighbours_full", c.neighbours_full),
        ]
        .into_iter()
        .chain(c.limit_hits.list())
        .collect()
    }

    /// The bound a new TCP flow would exceed, if any: every flow counts against the TCP
    /// table, a guest's connect also against connects in progress, an accepted forward
    /// connection against forwarded connections.
    fn full_tcp_bound(&self, forwarded: bool) -> Option<Bound> {
        let limits = &self.config.limits;
        if self.tcp.len >= limits.tcp_flows {
            return Some(Bound::TcpFlows);
        }
        let (held, bound) = if forwarded {
            (
                self.forwarded + self.host.spliced_open(),
                Bound::ForwardConnections,
            )
        } else {
            (self.connecting, Bound::PendingConnects)
        };
        (held >= limits.get(bound)).then_some(bound)
    }

    /// The largest TCP segment the guest's link carries, for a flow of `addr`'s family.
    fn link_mss(&self, addr: IpAddr) -> usize {
        link_mss(self.config.mtu, addr)
    }

    /// Remembers where a guest address is. Bounded: a guest can send from any number of
    /// addresses (a /64, or a short `--cidr`), but frames to one we do not know still go out,
    /// to the broadcast address.
    fn learn_neighbour(&mut self, ip: IpAddr, mac: EthernetAddress) {
        if let Some(known) = self.neighbours.get_mut(&ip) {
            *known = mac;
        } else if self.neighbours.len() < MAX_NEIGHBOURS {
            self.neighbours.insert(ip, mac);
        } else {
            self.counters.neighbours_full += 1;
        }
    }

    fn link_to(&self, guest: IpAddr) -> Link {
        link_for(self.mac, &self.neighbours, guest)
    }

    /// When the event loop must call [`Stack::poll_timers`] next.
    pub fn poll_at(&self) -> Option<Instant> {
        [
            self.next_timer,
            self.next_sweep,
            self.next_ra,
            self.accept_retry,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn arm(&mut self, at: Option<Instant>) {
        if let Some(at) = at {
            self.next_timer = Some(self.next_timer.map_or(at, |t| t.min(at)));
        }
    }

    // ---- Input from the guest ----

    /// One Ethernet frame from the TAP.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) {
        self.counters.frames_in += 1;
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => self.handle_arp(eth.src_addr(), eth.payload()),
            EthernetProtocol::Ipv4 => self.handle_ipv4(now, eth.src_addr(), eth.payload()),
            EthernetProtocol::Ipv6 if self.config.ipv6 => {
                self.handle_ipv6(now, eth.src_addr(), eth.payload())
            }
            _ => self.counters.dropped_unsupported += 1,
        }
    }

    /// Call after a batch of frames, and write the frames it adds to the TAP before calling
    /// [`Self::flush`]: acknowledges the bulk data each flow collected, which `flush` then
    /// sends to the host. The guest's sender learns of it a host send earlier (docs/
    /// performance.md, "Levers kept": 1.04–1.22× forward namespace → host at MTU 1500).
    pub fn acknowledge_batch(&mut self) {
        for &index in &self.flushes_due {
            let Some(flow) = self.tcp.get_mut(index) else {
                continue;
            };
            if flow.state != TcpState::Established || !flow.acknowledge_batch() {
                continue;
            }
            let header = flow.ack_header();
            let (src, guest) = (flow.key.remote.ip(), flow.key.guest.ip());
            let link = self.link_to(guest);
            self.tx.push_tcp(link, src, guest, &header);
        }
    }

    /// Call after a batch of frames: sends the guest data and datagrams the batch collected,
    /// then the ACKs it made due (one per flow). Acknowledges the batch first if the caller
    /// did not ([`Self::acknowledge_batch`]).
    pub fn flush(&mut self) {
        self.acknowledge_batch();
        self.poll_sends();
        let udp_batches = std::mem::take(&mut self.udp_batches_due);
        for &index in &udp_batches {
            self.send_udp_batch(index);
        }
        self.udp_batches_due = udp_batches;
        self.udp_batches_due.clear();
        let flushes = std::mem::take(&mut self.flushes_due);
        for &index in &flushes {
            let Some(flow) = self.tcp.get_mut(index) else {
                continue;
            };
            if !flow.flush_due {
                continue;
            }
            let verdict = flow.on_writable(&mut self.host);
            if flow.ack_due {
                self.acks_due.push(index);
            }
            self.apply_verdict(index, verdict);
        }
        self.flushes_due = flushes;
        self.flushes_due.clear();
        let due = std::mem::take(&mut self.acks_due);
        for index in &due {
            let Some(flow) = self.tcp.get_mut(*index) else {
                continue;
            };
            if flow.ack_due && flow.state == TcpState::Established {
                if !flow.ack_is_news() {
                    flow.ack_due = false;
                    continue;
                }
                let header = flow.ack_header();
                let (src, guest) = (flow.key.remote.ip(), flow.key.guest.ip());
                let link = self.link_to(guest);
                self.tx.push_tcp(link, src, guest, &header);
            }
        }
        self.acks_due = due;
        self.acks_due.clear();
    }

    /// Sends what the guest's ACKs since the last call let each flow send. [`Self::flush`]
    /// calls it; the event loop also does during long batches, so data keeps flowing.
    pub fn poll_sends(&mut self) {
        let due = std::mem::take(&mut self.sends_due);
        for &(index, now) in &due {
            let Some(flow) = self.tcp.get_mut(index).filter(|flow| flow.send_due) else {
                continue;
            };
            let link = link_for(self.mac, &self.neighbours, flow.key.guest.ip());
            let verdict = flow.poll_send(&mut self.host, now, link, &mut self.tx);
            if flow.ack_due {
                self.acks_due.push(index);
            }
            let timer = flow.timer;
            self.arm(timer);
            self.apply_verdict(index, verdict);
        }
        self.sends_due = due;
        self.sends_due.clear();
    }

    /// Takes the frames made for the guest, to be written (and counted) now; hand the
    /// buffers back with [`Tx::recycle`].
    pub fn take_frames(&mut self) -> Vec<TxFrame> {
        self.counters.frames_out += self.tx.frames.len() as u64;
        self.tx.take()
    }

    fn handle_arp(&mut self, src_mac: EthernetAddress, payload: &[u8]) {
        let Ok(packet) = ArpPacket::new_checked(payload) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        let Ok(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = ArpRepr::parse(&packet)
        else {
            self.counters.dropped_malformed += 1;
            return;
        };
        if self.config.net.contains(source_protocol_addr)
            && !source_protocol_addr.is_unspecified()
            && source_hardware_addr.is_unicast()
        {
            self.learn_neighbour(source_protocol_addr.into(), source_hardware_addr);
        }
        let net = self.config.net;
        if operation == ArpOperation::Request
            && (target_protocol_addr == net.gateway || target_protocol_addr == net.dns)
        {
            let reply = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: self.mac,
                source_protocol_addr: target_protocol_addr,
                target_hardware_addr: source_hardware_addr,
                target_protocol_addr: source_protocol_addr,
            };
            let mut frame = self.tx.buffer(14 + reply.buffer_len());
            let len = 14 + reply.buffer_len();
            let mut eth = EthernetFrame::new_unchecked(&mut frame[..len]);
            eth.set_src_addr(self.mac);
            eth.set_dst_addr(src_mac);
            eth.set_ethertype(EthernetProtocol::Arp);
            reply.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
            self.tx.push(frame, len);
        }
    }

    fn handle_ipv4(&mut self, now: Instant, src_mac: EthernetAddress, payload: &[u8]) {
        let Ok(packet) = Ipv4Packet::new_checked(payload) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        if packet.version() != 4 {
            self.counters.dropped_malformed += 1;
            return;
        }
        let header_len = usize::from(packet.header_len());
        let ip = Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.total_len()) - header_len,
            hop_limit: packet.hop_limit(),
        };
        let net = self.config.net;
        if net.contains(ip.src_addr) && src_mac.is_unicast() {
            self.learn_neighbour(IpAddr::V4(ip.src_addr), src_mac);
        } else if !(ip.src_addr.is_unspecified() && ip.next_header == IpProtocol::Udp) {
            // Only a DHCP client may speak without an address of ours.
            self.counters.dropped_unsupported += 1;
            return;
        }
        if !packet.more_frags() && packet.frag_offset() == 0 {
            self.handle_ipv4_datagram(now, src_mac, &ip, packet.payload());
            return;
        }
        let key = reassembly::FragmentKey {
            src: ip.src_addr.into(),
            dst: ip.dst_addr.into(),
            protocol: ip.next_header,
            id: u32::from(packet.ident()),
        };
        let offset = usize::from(packet.frag_offset());
        let more = packet.more_frags();
        if let Some(datagram) = self.reassemble(now, key, offset, packet.payload(), more) {
            let ip = Ipv4Repr {
                payload_len: datagram.len(),
                ..ip
            };
            self.handle_ipv4_datagram(now, src_mac, &ip, &datagram);
        }
    }

    /// Adds a fragment of either family; the whole datagram once its last piece is in.
    /// Rejected fragments are counted.
    fn reassemble(
        &mut self,
        now: Instant,
        key: reassembly::FragmentKey,
        offset: usize,
        payload: &[u8],
        more: bool,
    ) -> Option<Vec<u8>> {
        self.reassembly
            .add(now, key, offset, payload, more)
            .unwrap_or_else(|_| {
                self.counters.dropped_fragments += 1;
                None
            })
    }

    fn handle_ipv4_datagram(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        ip: &Ipv4Repr,
        l4: &[u8],
    ) {
        match ip.next_header {
            IpProtocol::Tcp => self.handle_tcp(now, &IpRepr::Ipv4(*ip), l4),
            IpProtocol::Udp => self.handle_udp(now, src_mac, &IpRepr::Ipv4(*ip), l4),
            IpProtocol::Icmp => self.handle_icmp(now, ip, l4),
            _ => self.counters.dropped_unsupported += 1,
        }
    }

    fn handle_ipv6(&mut self, now: Instant, src_mac: EthernetAddress, payload: &[u8]) {
        let Ok(packet) = Ipv6Packet::new_checked(payload) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        if packet.version() != 6 {
            self.counters.dropped_malformed += 1;
            return;
        }
        let ip = Ipv6Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
        };
        let src = ip.src_addr;
        let net = self.config.net;
        if (net.contains6(src) || ndp::is_link_local(src)) && src_mac.is_unicast() {
            if !net.is_own6(src) {
                self.learn_neighbour(IpAddr::V6(src), src_mac);
            }
        } else if !(src.is_unspecified() && ip.next_header == IpProtocol::Icmpv6) {
            // Only neighbour discovery may speak before the guest has an address.
            self.counters.dropped_unsupported += 1;
            return;
        }
        let l4 = packet.payload();
        if ip.next_header == IpProtocol::Ipv6Frag {
            self.handle_ipv6_fragment(now, src_mac, ip, l4);
            return;
        }
        self.handle_ipv6_datagram(now, src_mac, &ip, l4);
    }

    fn handle_ipv6_datagram(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        ip: &Ipv6Repr,
        l4: &[u8],
    ) {
        match ip.next_header {
            IpProtocol::Tcp => self.handle_tcp(now, &IpRepr::Ipv6(*ip), l4),
            IpProtocol::Udp => self.handle_udp(now, src_mac, &IpRepr::Ipv6(*ip), l4),
            IpProtocol::Icmpv6 => self.handle_icmpv6(now, src_mac, ip, l4),
            // Other extension headers (hop-by-hop MLD reports) carry nothing we relay.
            _ => self.counters.dropped_unsupported += 1,
        }
    }

    /// A fragment (RFC 8200 section 4.5): next header, reserved, offset in 8-byte units with the
    /// "more" flag, identification; reassembled with the IPv4 fragments' bounds.
    fn handle_ipv6_fragment(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        ip: Ipv6Repr,
        l4: &[u8],
    ) {
        let Some(header) = l4.get(..8) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        let protocol = IpProtocol::from(header[0]);
        let offset_and_more = u16::from_be_bytes([header[2], header[3]]);
        let offset = usize::from(offset_and_more & 0xfff8);
        let more = offset_and_more & 1 == 1;
        let id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let payload = &l4[8..];
        if protocol == IpProtocol::Ipv6Frag {
            self.counters.dropped_malformed += 1;
            return;
        }
        let whole = Ipv6Repr {
            next_header: protocol,
            ..ip
        };
        if offset == 0 && !more {
            // An atomic fragment (RFC 6946): the datagram itself.
            let whole = Ipv6Repr {
                payload_len: payload.len(),
                ..whole
            };
            self.handle_ipv6_datagram(now, src_mac, &whole, payload);
            return;
        }
        let key = reassembly::FragmentKey {
            src: ip.src_addr.into(),
            dst: ip.dst_addr.into(),
            protocol,
            id,
        };
        if let Some(datagram) = self.reassemble(now, key, offset, payload, more) {
            let whole = Ipv6Repr {
                payload_len: datagram.len(),
                ..whole
            };
            self.handle_ipv6_datagram(now, src_mac, &whole, &datagram);
        }
    }

    /// Where a guest destination really goes on the host, or why it cannot.
    fn map_destination(&self, dst: SocketAddr) -> Result<SocketAddr, Unreachable> {
        let net = self.config.net;
        let (gateway, dns, localhost, local) = match dst.ip() {
            IpAddr::V4(ip) => (
                ip == net.gateway,
                ip == net.dns,
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                net.contains(ip)
                    || ip.is_broadcast()
                    || ip.is_multicast()
                    || ip.is_unspecified()
                    || ip.is_loopback(),
            ),
            IpAddr::V6(ip) => (
                ip == net.gateway6() || ip == crate::config::ROUTER_LINK_LOCAL,
                ip == net.dns6(),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                // Mapped and compatible IPv4 addresses (::ffff:0:0/96, ::/96) would reach
                // IPv4 destinations, host loopback included, around the IPv4 rules.
                net.contains6(ip)
                    || ndp::is_link_local(ip)
                    || ip.is_multicast()
                    || u128::from(ip) >> 32 == 0xffff
                    || u128::from(ip) >> 32 == 0,
            ),
        };
        if gateway {
            if self.config.disable_host_loopback {
                return Err(Unreachable::Net);
            }
            return Ok(SocketAddr::new(localhost, dst.port()));
        }
        if dns {
            return match self.config.dns_upstream {
                Some(upstream) if dst.port() == 53 => Ok(upstream),
                _ => Err(Unreachable::Port),
            };
        }
        if local {
            return Err(Unreachable::Host);
        }
        Ok(dst)
    }

    /// Tells the guest that the datagram `ip` + `l4` goes nowhere.
    fn unreachable(&mut self, ip: &IpRepr, l4: &[u8], reason: Unreachable) {
        let guest = IpAddr::from(ip.src_addr());
        let link = self.link_to(guest);
        let router = self.config.net.gateway_for(guest);
        let original = match ip {
            IpRepr::Ipv4(v4) => IpRepr::Ipv4(Ipv4Repr {
                payload_len: l4.len().max(8),
                ..*v4
            }),
            other => other.clone(),
        };
        let mut frame = self.tx.buffer(0);
        let len = frame::build_unreachable_frame(&mut frame, link, router, &original, l4, reason);
        self.tx.push(frame, len);
    }

    // ---- TCP ----

    fn handle_tcp(&mut self, now: Instant, ip: &IpRepr, l4: &[u8]) {
        let Ok(packet) = TcpPacket::new_checked(l4) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        let Some(segment) = parse_segment(&packet) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        let key = FlowKey {
            guest: SocketAddr::new(ip.src_addr().into(), packet.src_port()),
            remote: SocketAddr::new(ip.dst_addr().into(), packet.dst_port()),
        };
        let Some(&index) = self.tcp_index.get(&key) else {
            self.handle_tcp_no_flow(ip, l4, key, &segment);
            return;
        };
        let link_mss = self.link_mss(key.guest.ip());
        let link = self.link_to(key.guest.ip());
        let flow = self.tcp.get_mut(index).expect("index maps only live flows");
        let verdict = flow.on_segment(&mut self.host, now, &segment);
        if std::mem::take(&mut flow.buffer_filled) {
            self.counters.limit_hits.count(Bound::FlowBuffer);
        }
        if segment.syn && flow.state == TcpState::SynAckSent {
            // Retransmitted SYN: repeat our SYN-ACK.
            let header = flow.syn_ack(link_mss);
            self.tx
                .push_tcp(link, key.remote.ip(), key.guest.ip(), &header);
        }
        if verdict == Verdict::Keep && flow.state == TcpState::Established && !flow.send_due {
            // What this segment lets us send goes out with what the rest of the batch lets:
            // one peek and one consume of the host socket for a run of ACKs, not one each.
            flow.send_due = true;
            self.sends_due.push((index, now));
        }
        if flow.ack_now && verdict == Verdict::Keep {
            flow.ack_now = false;
            let header = flow.ack_header();
            self.tx
                .push_tcp(link, key.remote.ip(), key.guest.ip(), &header);
        }
        if flow.ack_due {
            self.acks_due.push(index);
        }
        if flow.flush_due {
            self.flushes_due.push(index);
        }
        let timer = flow.timer;
        self.arm(timer);
        self.apply_verdict(index, verdict);
    }

    fn handle_tcp_no_flow(&mut self, ip: &IpRepr, l4: &[u8], key: FlowKey, segment: &Segment) {
        if segment.rst {
            return;
        }
        if !segment.syn || segment.ack.is_some() {
            self.counters.dropped_no_flow += 1;
            self.reset_unknown(key, segment);
            return;
        }
        if let Some(bound) = self.full_tcp_bound(false) {
            self.counters.refuse_flow(bound);
            self.reset_unknown(key, segment);
            return;
        }
        let target = match self.map_destination(key.remote) {
            Ok(target) => target,
            Err(reason) => {
                self.unreachable(ip, l4, reason);
                return;
            }
        };
        let token = Token(KIND_TCP | self.tcp.vacant_index() as u64);
        match self.host.tcp_connect(target, token) {
            Ok(socket) => {
                let iss = self.next_iss;
                self.next_iss = self.next_iss.wrapping_add(0x0101_0101).rotate_left(7);
                let link_mss = self.link_mss(key.guest.ip());
                let mut flow = TcpFlow::new(key, socket, segment, iss, link_mss);
                flow.gso = self.config.gso;
                flow.set_buffer_limit(self.config.limits.flow_buffer);
                let index = self.tcp.insert(flow);
                self.tcp_index.insert(key, index);
                self.connecting += 1;
                self.counters.tcp_flows_opened += 1;
                tracing::trace!(guest = %key.guest, remote = %key.remote, "tcp connect");
            }
            Err(e) => self.connect_failed(ip, l4, key, segment, &e),
        }
    }

    fn connect_failed(
        &mut self,
        ip: &IpRepr,
        l4: &[u8],
        key: FlowKey,
        segment: &Segment,
        error: &io::Error,
    ) {
        tracing::debug!(remote = %key.remote, %error, "host connect failed");
        match error.raw_os_error() {
            Some(libc::ENETUNREACH) => self.unreachable(ip, l4, Unreachable::Net),
            Some(libc::EHOSTUNREACH) | Some(libc::ETIMEDOUT) => {
                self.unreachable(ip, l4, Unreachable::Host)
            }
            _ => {
                self.counters.tcp_connects_refused += 1;
                self.reset_unknown(key, segment);
            }
        }
    }

    /// RFC 9293 3.10.7.1: the reset for a segment that belongs to no connection.
    fn reset_unknown(&mut self, key: FlowKey, segment: &Segment) {
        let (seq, ack) = match segment.ack {
            Some(ack) => (ack, None),
            None => {
                let len =
                    segment.payload.len() as u32 + u32::from(segment.syn) + u32::from(segment.fin);
                (0, Some(segment.seq.wrapping_add(len)))
            }
        };
        let header = frame::TcpHeader {
            src_port: key.remote.port(),
            dst_port: key.guest.port(),
            control: smoltcp::wire::TcpControl::Rst,
            seq,
            ack,
            window: 0,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            sack: [None; 3],
        };
        let link = self.link_to(key.guest.ip());
        self.tx
            .push_tcp(link, key.remote.ip(), key.guest.ip(), &header);
    }

    fn apply_verdict(&mut self, index: usize, verdict: Verdict) {
        if verdict == Verdict::Keep {
            return;
        }
        let Some(flow) = self.tcp.remove(index) else {
            return;
        };
        self.tcp_index.remove(&flow.key);
        if flow.state == TcpState::Connecting {
            self.connecting -= 1;
        }
        if flow.forward.is_some() {
            self.forwarded -= 1;
        }
        if let Some(forward) = flow
            .forward
            .and_then(|id| self.forward_by_id.get(&id))
            .and_then(|&i| self.forwards.get_mut(i))
        {
            forward.stats.bytes_to_guest += flow.bytes_to_guest;
            forward.stats.bytes_to_host += flow.bytes_to_host;
        }
        match verdict {
            Verdict::Reset => {
                let header = flow.rst_header();
                let link = self.link_to(flow.key.guest.ip());
                self.tx
                    .push_tcp(link, flow.key.remote.ip(), flow.key.guest.ip(), &header);
                self.host.abort(flow.socket);
            }
            Verdict::Abort => self.host.abort(flow.socket),
            Verdict::Close | Verdict::Keep => drop(flow.socket),
        }
    }

    fn handle_tcp_event(
        &mut self,
        now: Instant,
        index: usize,
        readable: bool,
        writable: bool,
        peer_closed: bool,
    ) {
        let Some(flow) = self.tcp.entries.get(index).and_then(Option::as_ref) else {
            return;
        };
        let link_mss = self.link_mss(flow.key.guest.ip());
        let flow = self.tcp.get_mut(index).expect("checked live");
        let link = link_for(self.mac, &self.neighbours, flow.key.guest.ip());
        let mut verdict = Verdict::Keep;
        if flow.state == TcpState::Connecting {
            match self.host.connect_result(&flow.socket) {
                Ok(()) => {
                    self.connecting -= 1;
                    flow.on_connected(now);
                    let header = flow.syn_ack(link_mss);
                    self.tx
                        .push_tcp(link, flow.key.remote.ip(), flow.key.guest.ip(), &header);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    let key = flow.key;
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ETIMEDOUT)
                    ) {
                        let flow = self.tcp.remove(index).expect("flow is live");
                        self.tcp_index.remove(&key);
                        self.connecting -= 1;
                        let isn = flow.guest_isn();
                        drop(flow.socket);
                        self.connect_failed_async(key, isn, &e);
                    } else {
                        tracing::debug!(remote = %key.remote, error = %e, "host connect failed");
                        self.counters.tcp_connects_refused += 1;
                        // The RST acknowledges the guest's SYN, as a refusing host would.
                        self.apply_verdict(index, Verdict::Reset);
                    }
                    return;
                }
            }
        } else {
            if readable {
                flow.on_readable(peer_closed);
            }
            if writable {
                verdict = flow.on_writable(&mut self.host);
            }
            if verdict == Verdict::Keep && (readable || writable) {
                verdict = flow.poll_send(&mut self.host, now, link, &mut self.tx);
            }
            if flow.ack_due {
                self.acks_due.push(index);
            }
        }
        let timer = flow.timer;
        self.arm(timer);
        self.apply_verdict(index, verdict);
    }

    /// The host connect failed after the SYN was taken: answer the guest's SYN now.
    fn connect_failed_async(&mut self, key: FlowKey, guest_isn: u32, error: &io::Error) {
        // Quote the start of the guest's SYN: ports and its sequence number.
        let mut head = [0u8; 8];
        head[..2].copy_from_slice(&key.guest.port().to_be_bytes());
        head[2..4].copy_from_slice(&key.remote.port().to_be_bytes());
        head[4..8].copy_from_slice(&guest_isn.to_be_bytes());
        let reason = match error.raw_os_error() {
            Some(libc::ENETUNREACH) => Unreachable::Net,
            _ => Unreachable::Host,
        };
        self.unreachable_for_flow(key, IpProtocol::Tcp, head, reason);
    }

    // ---- UDP ----

    fn handle_udp(&mut self, now: Instant, src_mac: EthernetAddress, ip: &IpRepr, l4: &[u8]) {
        let Ok(packet) = UdpPacket::new_checked(l4) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        let payload = packet.payload();
        let net = self.config.net;
        let (src, dst) = (IpAddr::from(ip.src_addr()), IpAddr::from(ip.dst_addr()));
        if packet.dst_port() == DHCP_SERVER_PORT
            && (dst == IpAddr::V4(net.gateway) || dst == IpAddr::V4(Ipv4Addr::BROADCAST))
        {
            if let Some(reply) = self.dhcp.handle(src_mac, payload) {
                self.send_dhcp_reply(reply);
            }
            return;
        }
        if src.is_unspecified() {
            self.counters.dropped_unsupported += 1;
            return;
        }
        let key = FlowKey {
            guest: SocketAddr::new(src, packet.src_port()),
            remote: SocketAddr::new(dst, packet.dst_port()),
        };
        let index = match self.udp_index.get(&key) {
            Some(&index) => index,
            None => {
                let target = match self.map_destination(key.remote) {
                    Ok(target) => target,
                    Err(reason) => {
                        if !self.is_group_address(dst) {
                            // Linux treats network and host unreachable as soft errors for
                            // UDP and never tells the socket; "administratively prohibited"
                            // is a hard error (EHOSTUNREACH, EACCES for IPv6), and it is
                            // what this is.
                            let reason = match reason {
                                Unreachable::Net | Unreachable::Host => Unreachable::Prohibited,
                                other => other,
                            };
                            self.unreachable(ip, l4, reason);
                        }
                        return;
                    }
                };
                if self.udp.len >= self.config.limits.udp_flows {
                    self.counters.refuse_flow(Bound::UdpFlows);
                    return;
                }
                let token = Token(KIND_UDP | self.udp.vacant_index() as u64);
                let socket = match self.host.udp_connect(target, token) {
                    Ok(socket) => socket,
                    Err(e) => {
                        tracing::debug!(remote = %target, error = %e, "udp socket failed");
                        self.unreachable(ip, l4, Unreachable::Net);
                        return;
                    }
                };
                let idle = if dst == IpAddr::V4(net.dns) || dst == IpAddr::V6(net.dns6()) {
                    DNS_IDLE
                } else {
                    UDP_IDLE
                };
                let index = self.udp.insert(UdpFlow {
                    key,
                    end: UdpEnd::Own(socket),
                    last_active: now,
                    idle,
                    batch: UdpBatch::default(),
                });
                self.udp_index.insert(key, index);
                self.counters.udp_flows_opened += 1;
                self.next_sweep.get_or_insert(now + SWEEP_INTERVAL);
                index
            }
        };
        let flow = self.udp.get_mut(index).expect("index maps only live flows");
        flow.last_active = now;
        if matches!(flow.end, UdpEnd::Own(_)) && !payload.is_empty() {
            let batch = &flow.batch;
            let fits = batch.count == 0
                || (payload.len() <= batch.segment
                    && batch.count < UDP_GSO_MAX_SEGMENTS
                    && batch.bytes.len() + payload.len() <= UDP_GSO_MAX_BYTES);
            if !fits {
                self.send_udp_batch(index);
            }
            let flow = self.udp.get_mut(index).expect("index maps only live flows");
            let batch = &mut flow.batch;
            if batch.count == 0 {
                batch.segment = payload.len();
                self.udp_batches_due.push(index);
            }
            batch.bytes.extend_from_slice(payload);
            batch.count += 1;
            if payload.len() < batch.segment {
                // Only the last datagram of a GSO send may be shorter.
                self.send_udp_batch(index);
            }
            return;
        }
        // An empty datagram cannot join a GSO batch, and must not overtake one (a forward's
        // flow has no batch: this does nothing there).
        self.send_udp_batch(index);
        let flow = self.udp.get_mut(index).expect("index maps only live flows");
        let result = match &flow.end {
            UdpEnd::Own(socket) => self.host.send(socket, payload),
            UdpEnd::Forward { id, client } => {
                let Some(forward) = self
                    .forward_by_id
                    .get(id)
                    .and_then(|&i| self.forwards.get_mut(i))
                else {
                    return;
                };
                forward.stats.bytes_to_host += payload.len() as u64;
                self.host.send_to(&forward.socket, payload, *client)
            }
        };
        if let Err(e) = result {
            tracing::trace!(error = %e, "udp send failed");
        }
    }

    /// Sends a flow's collected datagrams: one GSO send, or one datagram at a time where the
    /// kernel refuses GSO (for example datagrams larger than the route's MTU).
    fn send_udp_batch(&mut self, index: usize) {
        let Some(flow) = self.udp.get_mut(index) else {
            return;
        };
        let UdpEnd::Own(socket) = &flow.end else {
            return;
        };
        let batch = &mut flow.batch;
        if batch.count == 0 {
            return;
        }
        let result = if batch.count == 1 {
            self.host.send(socket, &batch.bytes)
        } else {
            self.host
                .send_segments(socket, &batch.bytes, batch.segment)
                .or_else(|_| {
                    for datagram in batch.bytes.chunks(batch.segment) {
                        self.host.send(socket, datagram)?;
                    }
                    Ok(batch.bytes.len())
                })
        };
        if let Err(e) = result {
            tracing::trace!(error = %e, "udp send failed");
        }
        batch.bytes.clear();
        batch.count = 0;
    }

    /// Broadcast and multicast destinations: never answered with an ICMP error.
    fn is_group_address(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(v4) => {
                v4.is_broadcast() || v4.is_multicast() || v4 == self.config.net.broadcast()
            }
            IpAddr::V6(v6) => v6.is_multicast(),
        }
    }

    fn send_dhcp_reply(&mut self, reply: dhcp::DhcpReply) {
        let net = self.config.net;
        let src = SocketAddr::new(net.gateway.into(), DHCP_SERVER_PORT);
        let dst = SocketAddr::new(reply.dst_ip.into(), DHCP_CLIENT_PORT);
        let offset = frame::udp_payload_offset(src.ip());
        let mut buf = self.tx.buffer(offset + reply.payload.len());
        buf[offset..offset + reply.payload.len()].copy_from_slice(&reply.payload);
        let link = Link {
            src: self.mac,
            dst: reply.dst_mac,
        };
        let len = frame::finish_udp_frame(&mut buf, link, src, dst, reply.payload.len());
        self.tx.push(buf, len);
    }

    fn handle_udp_event(&mut self, now: Instant, index: usize) {
        let mut refused = None;
        loop {
            let Some(flow) = self.udp.get_mut(index) else {
                return;
            };
            let UdpEnd::Own(socket) = &flow.end else {
                return;
            };
            let key = flow.key;
            let offset = frame::udp_payload_offset(key.guest.ip());
            let mut buf = self.tx.buffer(offset + 65536);
            match self.host.recv(socket, &mut buf[offset..offset + 65536]) {
                Ok(n) => {
                    flow.last_active = now;
                    self.udp_to_guest(buf, n, key.remote, key.guest);
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    // The host got ICMP port unreachable for our datagram: pass it on, so the
                    // guest's socket sees ECONNREFUSED as on a real network.
                    self.tx.recycle(buf);
                    refused = Some(key);
                }
                Err(e) => {
                    self.tx.recycle(buf);
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::trace!(error = %e, "udp recv failed");
                    }
                    break;
                }
            }
        }
        if let Some(key) = refused {
            self.udp_port_unreachable(key);
        }
    }

    /// Sends a datagram whose `n` payload bytes sit at the UDP payload offset of `buf` to the
    /// guest, in fragments if it exceeds the guest's MTU (as a router would).
    fn udp_to_guest(&mut self, mut buf: Vec<u8>, n: usize, src: SocketAddr, dst: SocketAddr) {
        let offset = frame::udp_payload_offset(dst.ip());
        let max_payload = self.config.mtu - (offset - frame::ETHERNET_HEADER_LEN);
        let link = self.link_to(dst.ip());
        if n <= max_payload {
            let len = frame::finish_udp_frame(&mut buf, link, src, dst, n);
            self.tx.push(buf, len);
            return;
        }
        let l4_start = offset - frame::UDP_HEADER_LEN;
        let Ok(udp_len) = u16::try_from(frame::UDP_HEADER_LEN + n) else {
            self.counters.dropped_oversized += 1;
            self.tx.recycle(buf);
            return;
        };
        let mut packet = UdpPacket::new_unchecked(&mut buf[l4_start..offset + n]);
        packet.set_src_port(src.port());
        packet.set_dst_port(dst.port());
        packet.set_len(udp_len);
        packet.fill_checksum(&src.ip().into(), &dst.ip().into());
        self.next_ip_ident = self.next_ip_ident.wrapping_add(1);
        let l4 = &buf[l4_start..offset + n];
        if src.is_ipv4() == dst.is_ipv4() {
            frame::push_fragments(
                &mut self.tx,
                link,
                src.ip(),
                dst.ip(),
                IpProtocol::Udp,
                u32::from(self.next_ip_ident),
                l4,
                self.config.mtu,
            );
        } else {
            self.counters.dropped_oversized += 1;
        }
        self.tx.recycle(buf);
    }

    fn udp_port_unreachable(&mut self, key: FlowKey) {
        // Quote the UDP header: ports and a length of 8.
        let mut head = [0u8; 8];
        head[..2].copy_from_slice(&key.guest.port().to_be_bytes());
        head[2..4].copy_from_slice(&key.remote.port().to_be_bytes());
        head[4..6].copy_from_slice(&8u16.to_be_bytes());
        self.unreachable_for_flow(key, IpProtocol::Udp, head, Unreachable::Port);
    }

    /// ICMP unreachable for a flow whose original datagram is gone: its IP header is rebuilt
    /// and `head` stands for the first 8 bytes of its payload (RFC 792).
    fn unreachable_for_flow(
        &mut self,
        key: FlowKey,
        protocol: IpProtocol,
        head: [u8; 8],
        reason: Unreachable,
    ) {
        let ip = match (key.guest.ip(), key.remote.ip()) {
            (IpAddr::V4(guest), IpAddr::V4(remote)) => IpRepr::Ipv4(Ipv4Repr {
                src_addr: guest,
                dst_addr: remote,
                next_header: protocol,
                payload_len: head.len(),
                hop_limit: 64,
            }),
            (IpAddr::V6(guest), IpAddr::V6(remote)) => IpRepr::Ipv6(Ipv6Repr {
                src_addr: guest,
                dst_addr: remote,
                next_header: protocol,
                payload_len: head.len(),
                hop_limit: 64,
            }),
            _ => return,
        };
        self.unreachable(&ip, &head, reason);
    }

    // ---- Port forwards ----

    /// Starts forwarding `host` (port 0: any free port) to `guest`. Ids start at 1 and are
    /// never reused; a bind failure uses no id.
    pub fn add_forward(
        &mut self,
        proto: Proto,
        host: SocketAddr,
        guest: SocketAddr,
    ) -> io::Result<ForwardInfo> {
        let token = Token(KIND_FORWARD | self.forwards.vacant_index() as u64);
        let (socket, bound) = match proto {
            Proto::Tcp => self.host.tcp_listen(host, token)?,
            Proto::Udp => self.host.udp_bind(host, token)?,
        };
        self.last_forward_id += 1;
        let info = ForwardInfo {
            id: ForwardId(self.last_forward_id),
            proto,
            host: bound,
            guest,
        };
        let index = self.forwards.insert(Forward {
            info,
            socket,
            stats: ForwardStats::default(),
        });
        self.forward_by_id.insert(info.id, index);
        tracing::debug!(id = info.id.0, host = %bound, %guest, "forward added");
        Ok(info)
    }

    /// Stops a forward: its listener closes at once; established TCP connections carry on.
    pub fn remove_forward(&mut self, id: ForwardId) -> bool {
        let Some(index) = self.forward_by_id.remove(&id) else {
            return false;
        };
        self.forwards.remove(index);
        self.host.forget_spliced(id.0);
        // UDP clients of the forward were answered through its socket, now gone.
        for index in 0..self.udp.entries.len() {
            let belongs = self.udp.entries[index].as_ref().is_some_and(
                |flow| matches!(flow.end, UdpEnd::Forward { id: fid, .. } if fid == id),
            );
            if belongs {
                let flow = self.udp.remove(index).expect("checked live");
                self.udp_index.remove(&flow.key);
            }
        }
        true
    }

    /// The forwards, in the order they were added.
    pub fn forwards(&self) -> Vec<ForwardInfo> {
        let mut list: Vec<ForwardInfo> = self
            .forwards
            .entries
            .iter()
            .flatten()
            .map(|f| f.info)
            .collect();
        list.sort_by_key(|info| info.id);
        list
    }

    /// Each forward with its counters, live connections included.
    pub fn forward_stats(&self) -> Vec<(ForwardInfo, ForwardStats)> {
        let mut list: Vec<(ForwardInfo, ForwardStats)> = self
            .forwards
            .entries
            .iter()
            .flatten()
            .map(|f| {
                let mut stats = f.stats;
                for flow in self.tcp.entries.iter().flatten() {
                    if flow.forward == Some(f.info.id) {
                        stats.bytes_to_guest += flow.bytes_to_guest;
                        stats.bytes_to_host += flow.bytes_to_host;
                    }
                }
                let spliced = self.host.spliced_stats(f.info.id.0);
                stats.bytes_to_guest += spliced.bytes_to_guest;
                stats.bytes_to_host += spliced.bytes_to_host;
                stats.connections_active = match f.info.proto {
                    Proto::Tcp => {
                        spliced.active
                            + self
                                .tcp
                                .entries
                                .iter()
                                .flatten()
                                .filter(|flow| flow.forward == Some(f.info.id))
                                .count() as u64
                    }
                    Proto::Udp => self
                        .udp
                        .entries
                        .iter()
                        .flatten()
                        .filter(|flow| {
                            matches!(flow.end, UdpEnd::Forward { id, .. } if id == f.info.id)
                        })
                        .count() as u64,
                };
                (f.info, stats)
            })
            .collect();
        list.sort_by_key(|(info, _)| info.id);
        list
    }

    fn handle_forward_event(&mut self, now: Instant, index: usize) {
        let Some(forward) = self.forwards.get_mut(index) else {
            return;
        };
        match forward.info.proto {
            Proto::Tcp => self.accept_forwarded(now, index),
            Proto::Udp => self.receive_forwarded(now, index),
        }
    }

    fn accept_forwarded(&mut self, now: Instant, index: usize) {
        loop {
            let token = Token(KIND_TCP | self.tcp.vacant_index() as u64);
            let Some(forward) = self.forwards.get_mut(index) else {
                return;
            };
            let (socket, peer) = match self.host.accept(&forward.socket, token) {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // That client gave up while queued: the next one may be fine.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // Out of descriptors, most likely (the host logs that): the connection
                    // stays queued, and nothing would wake an edge-triggered listener for it
                    // again. Look again soon.
                    tracing::debug!(error = %e, "accepting a forwarded connection failed");
                    self.accept_retry.get_or_insert(now + ACCEPT_RETRY);
                    return;
                }
            };
            let info = forward.info;
            if let Some(bound) = self.full_tcp_bound(true) {
                // Accepted and closed at once: the host client sees a reset, not a hang.
                self.counters.refuse_flow(bound);
                self.host.abort(socket);
                continue;
            }
            if let Some(forward) = self.forwards.get_mut(index) {
                forward.stats.connections_total += 1;
            }
            // From host loopback the guest would see the gateway's address anyway: no
            // source to preserve, so the bytes may skip the TAP (if the host can).
            let socket = if peer.ip().is_loopback() {
                match self
                    .host
                    .splice_to_guest(socket, token, info.guest, info.id.0)
                {
                    Ok(()) => continue,
                    Err(socket) => socket,
                }
            } else {
                socket
            };
            let gateway = self.config.net.gateway_for(info.guest.ip());
            let link_mss = self.link_mss(info.guest.ip());
            let mut remote = forward::guest_visible_source(peer, gateway);
            if remote.is_ipv4() != info.guest.is_ipv4() {
                remote = SocketAddr::new(gateway, peer.port());
            }
            let mut key = FlowKey {
                guest: info.guest,
                remote,
            };
            // Two loopback clients on different 127.x addresses may share a port.
            while self.tcp_index.contains_key(&key) {
                key.remote
                    .set_port(key.remote.port().wrapping_add(1).max(1024));
            }
            let iss = self.next_iss;
            self.next_iss = self.next_iss.wrapping_add(0x0101_0101).rotate_left(7);
            let mut flow = TcpFlow::new_outbound(key, socket, iss, link_mss, now);
            flow.forward = Some(info.id);
            self.forwarded += 1;
            flow.gso = self.config.gso;
            flow.set_buffer_limit(self.config.limits.flow_buffer);
            let index = self.tcp.insert(flow);
            self.tcp_index.insert(key, index);
            self.counters.tcp_flows_opened += 1;
            self.arm(Some(now));
            let guest = info.guest.ip();
            if !self.neighbours.contains_key(&guest) {
                self.request_mac(guest);
            }
        }
    }

    fn receive_forwarded(&mut self, now: Instant, index: usize) {
        loop {
            let Some(forward) = self.forwards.get_mut(index) else {
                return;
            };
            let info = forward.info;
            let offset = frame::udp_payload_offset(info.guest.ip());
            let mut buf = self.tx.buffer(offset + 65536);
            let (n, client) = match self
                .host
                .recv_from(&forward.socket, &mut buf[offset..offset + 65536])
            {
                Ok(received) => received,
                Err(e) => {
                    self.tx.recycle(buf);
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::debug!(error = %e, "forwarded udp recv failed");
                    }
                    return;
                }
            };
            forward.stats.bytes_to_guest += n as u64;
            let gateway = self.config.net.gateway_for(info.guest.ip());
            let mut remote = forward::guest_visible_source(client, gateway);
            if remote.is_ipv4() != info.guest.is_ipv4() {
                remote = SocketAddr::new(gateway, client.port());
            }
            let key = FlowKey {
                guest: info.guest,
                remote,
            };
            match self.udp_index.get(&key) {
                Some(&flow_index) => {
                    if let Some(flow) = self.udp.get_mut(flow_index) {
                        flow.last_active = now;
                    }
                }
                None => {
                    if self.udp.len >= self.config.limits.udp_flows {
                        self.counters.refuse_flow(Bound::UdpFlows);
                        self.tx.recycle(buf);
                        continue;
                    }
                    forward.stats.connections_total += 1;
                    let flow_index = self.udp.insert(UdpFlow {
                        key,
                        end: UdpEnd::Forward {
                            id: info.id,
                            client,
                        },
                        last_active: now,
                        idle: UDP_IDLE,
                        batch: UdpBatch::default(),
                    });
                    self.udp_index.insert(key, flow_index);
                    self.counters.udp_flows_opened += 1;
                    self.next_sweep.get_or_insert(now + SWEEP_INTERVAL);
                }
            }
            let guest = info.guest.ip();
            if !self.neighbours.contains_key(&guest) {
                self.request_mac(guest);
            }
            self.udp_to_guest(buf, n, remote, info.guest);
        }
    }

    /// ARP request or neighbour solicitation for a guest address we must send to before it
    /// spoke (forwards).
    fn request_mac(&mut self, ip: IpAddr) {
        let ip = match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => {
                let mut frame = self.tx.buffer(0);
                let len = ndp::build_neighbor_solicit(&mut frame, self.mac, v6);
                self.tx.push(frame, len);
                return;
            }
        };
        let request = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: self.mac,
            source_protocol_addr: self.config.net.gateway,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: ip,
        };
        let len = 14 + request.buffer_len();
        let mut frame = self.tx.buffer(len);
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..len]);
        eth.set_src_addr(self.mac);
        eth.set_dst_addr(EthernetAddress::BROADCAST);
        eth.set_ethertype(EthernetProtocol::Arp);
        request.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
        self.tx.push(frame, len);
    }

    // ---- ICMP ----

    fn handle_icmp(&mut self, now: Instant, ip: &Ipv4Repr, l4: &[u8]) {
        let Ok(packet) = Icmpv4Packet::new_checked(l4) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        let Ok(Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        }) = Icmpv4Repr::parse(&packet, &ChecksumCapabilities::ignored())
        else {
            self.counters.dropped_unsupported += 1;
            return;
        };
        let net = self.config.net;
        if ip.dst_addr == net.gateway || ip.dst_addr == net.dns {
            let reply = Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            };
            self.echo_reply_to_guest(ip.dst_addr.into(), ip.src_addr.into(), |frame, link| {
                frame::build_icmpv4_frame(frame, link, ip.dst_addr, ip.src_addr, &reply)
            });
            return;
        }
        self.relay_echo(now, &IpRepr::Ipv4(*ip), l4, ident);
    }

    fn handle_icmpv6(&mut self, now: Instant, src_mac: EthernetAddress, ip: &Ipv6Repr, l4: &[u8]) {
        let Ok(packet) = Icmpv6Packet::new_checked(l4) else {
            self.counters.dropped_malformed += 1;
            return;
        };
        let Ok(repr) = Icmpv6Repr::parse(
            &ip.src_addr,
            &ip.dst_addr,
            &packet,
            &ChecksumCapabilities::ignored(),
        ) else {
            self.counters.dropped_unsupported += 1;
            return;
        };
        let net = self.config.net;
        match repr {
            // Only neighbour discovery may come from the unspecified address.
            Icmpv6Repr::EchoRequest { .. } if ip.src_addr.is_unspecified() => {
                self.counters.dropped_unsupported += 1
            }
            Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => {
                if !net.is_own6(ip.dst_addr) {
                    self.relay_echo(now, &IpRepr::Ipv6(*ip), l4, ident);
                    return;
                }
                let reply = Icmpv6Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                };
                self.echo_reply_to_guest(ip.dst_addr.into(), ip.src_addr.into(), |frame, link| {
                    frame::build_icmpv6_frame(frame, link, ip.dst_addr, ip.src_addr, &reply)
                });
            }
            // NDP that was routed (hop limit below 255) is forged (RFC 4861 section 6.1).
            Icmpv6Repr::Ndisc(_) if ip.hop_limit != 255 => self.counters.dropped_malformed += 1,
            Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit { .. }) => self.send_router_advert(),
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr, .. }) => {
                if !net.is_own6(target_addr) {
                    // Another guest address, or the guest checking its own for duplicates.
                    return;
                }
                let solicited = !ip.src_addr.is_unspecified();
                let (dst, link) = if solicited {
                    (
                        ip.src_addr,
                        Link {
                            src: self.mac,
                            dst: src_mac,
                        },
                    )
                } else {
                    (
                        ndp::ALL_NODES,
                        Link {
                            src: self.mac,
                            dst: ndp::multicast_mac(ndp::ALL_NODES),
                        },
                    )
                };
                let mut frame = self.tx.buffer(0);
                let len = ndp::build_neighbor_advert(&mut frame, link, target_addr, dst, solicited);
                self.tx.push(frame, len);
            }
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                target_addr,
                lladdr,
                ..
            }) => {
                // The answer to our solicitation for a forward's guest address.
                let mac = lladdr
                    .filter(|raw| raw.len() == 6)
                    .map(|raw| EthernetAddress::from_bytes(raw.as_bytes()))
                    .unwrap_or(src_mac);
                if net.contains6(target_addr) && !net.is_own6(target_addr) && mac.is_unicast() {
                    self.learn_neighbour(target_addr.into(), mac);
                }
            }
            _ => self.counters.dropped_unsupported += 1,
        }
    }

    /// A router advertisement to all nodes: the guest's SLAAC address, default route and DNS
    /// server come from it.
    fn send_router_advert(&mut self) {
        let ra = ndp::RouterAdvert {
            prefix: self.config.net.prefix6,
            mtu: self.config.mtu,
            dns: self.config.dns_upstream.map(|_| self.config.net.dns6()),
        };
        let link = Link {
            src: self.mac,
            dst: ndp::multicast_mac(ndp::ALL_NODES),
        };
        let mut frame = self.tx.buffer(0);
        let len = ndp::build_router_advert(&mut frame, link, ndp::ALL_NODES, &ra);
        self.tx.push(frame, len);
    }

    /// An echo request to anywhere but us: sent from a host ICMP socket of the flow.
    fn relay_echo(&mut self, now: Instant, ip: &IpRepr, l4: &[u8], ident: u16) {
        let (src, dst) = (IpAddr::from(ip.src_addr()), IpAddr::from(ip.dst_addr()));
        let key = PingKey {
            guest: src,
            remote: dst,
            ident,
        };
        let index = match self.ping_index.get(&key) {
            Some(&index) => index,
            None => {
                if let Err(reason) = self.map_destination(SocketAddr::new(dst, 0)) {
                    if !self.is_group_address(dst) {
                        self.unreachable(ip, l4, reason);
                    }
                    return;
                }
                if self.ping.len >= self.config.limits.ping_flows {
                    self.counters.refuse_flow(Bound::PingFlows);
                    return;
                }
                let token = Token(KIND_PING | self.ping.vacant_index() as u64);
                let (socket, kind) = match self.host.ping_connect(dst, token) {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::debug!(error = %e, "no ICMP socket available");
                        self.counters.dropped_ping_unavailable += 1;
                        return;
                    }
                };
                let index = self.ping.insert(PingFlow {
                    key,
                    socket,
                    kind,
                    last_active: now,
                });
                self.ping_index.insert(key, index);
                self.counters.ping_flows_opened += 1;
                self.next_sweep.get_or_insert(now + SWEEP_INTERVAL);
                index
            }
        };
        let flow = self
            .ping
            .get_mut(index)
            .expect("index maps only live flows");
        flow.last_active = now;
        // The same request goes out; a datagram socket replaces the identifier with its own,
        // and the kernel computes the ICMPv6 checksum over its own pseudo-header.
        if let Err(e) = self.host.send(&flow.socket, l4) {
            tracing::trace!(error = %e, "ping send failed");
        }
    }

    fn handle_ping_event(&mut self, now: Instant, index: usize) {
        let Some(flow) = self.ping.get_mut(index) else {
            return;
        };
        loop {
            let buf = &mut self.scratch;
            let n = match self.host.recv(&flow.socket, buf) {
                Ok(n) => n,
                Err(_) => break,
            };
            let key = flow.key;
            let link = link_for(self.mac, &self.neighbours, key.guest);
            let mut frame = self.tx.buffer(0);
            let (len, protocol) = match (key.remote, key.guest) {
                (IpAddr::V4(remote), IpAddr::V4(guest)) => {
                    // Raw IPv4 sockets deliver the IP header too.
                    let message = match flow.kind {
                        PingKind::Datagram => &buf[..n],
                        PingKind::Raw => match Ipv4Packet::new_checked(&buf[..n]) {
                            Ok(packet) => &buf[usize::from(packet.header_len())..n],
                            Err(_) => continue,
                        },
                    };
                    let Ok(packet) = Icmpv4Packet::new_checked(message) else {
                        continue;
                    };
                    let Ok(Icmpv4Repr::EchoReply {
                        ident,
                        seq_no,
                        data,
                    }) = Icmpv4Repr::parse(&packet, &ChecksumCapabilities::ignored())
                    else {
                        continue;
                    };
                    if flow.kind == PingKind::Raw && ident != key.ident {
                        continue;
                    }
                    let reply = Icmpv4Repr::EchoReply {
                        ident: key.ident,
                        seq_no,
                        data,
                    };
                    let len = frame::build_icmpv4_frame(&mut frame, link, remote, guest, &reply);
                    (len, IpProtocol::Icmp)
                }
                (IpAddr::V6(remote), IpAddr::V6(guest)) => {
                    // IPv6 sockets of both kinds deliver only the ICMPv6 message.
                    let Ok(packet) = Icmpv6Packet::new_checked(&buf[..n]) else {
                        continue;
                    };
                    let Ok(Icmpv6Repr::EchoReply {
                        ident,
                        seq_no,
                        data,
                    }) = Icmpv6Repr::parse(
                        &remote,
                        &guest,
                        &packet,
                        &ChecksumCapabilities::ignored(),
                    )
                    else {
                        continue;
                    };
                    if flow.kind == PingKind::Raw && ident != key.ident {
                        continue;
                    }
                    let reply = Icmpv6Repr::EchoReply {
                        ident: key.ident,
                        seq_no,
                        data,
                    };
                    let len = frame::build_icmpv6_frame(&mut frame, link, remote, guest, &reply);
                    (len, IpProtocol::Icmpv6)
                }
                _ => continue,
            };
            flow.last_active = now;
            push_or_fragment(
                &mut self.tx,
                &mut self.next_ip_ident,
                self.config.mtu,
                Packet {
                    frame,
                    len,
                    link,
                    src: key.remote,
                    dst: key.guest,
                    protocol,
                },
            );
        }
    }

    /// An echo reply from one of our addresses (`from`) to the guest, which `build` writes
    /// into a frame: in fragments if it exceeds the guest's MTU, as the request may have come.
    fn echo_reply_to_guest(
        &mut self,
        from: IpAddr,
        guest: IpAddr,
        build: impl FnOnce(&mut Vec<u8>, Link) -> usize,
    ) {
        let link = self.link_to(guest);
        let mut frame = self.tx.buffer(0);
        let len = build(&mut frame, link);
        let protocol = match guest {
            IpAddr::V4(_) => IpProtocol::Icmp,
            IpAddr::V6(_) => IpProtocol::Icmpv6,
        };
        self.push_or_fragment(Packet {
            frame,
            len,
            link,
            src: from,
            dst: guest,
            protocol,
        });
    }

    /// [`push_or_fragment`] with this stack's MTU and IP identifiers.
    fn push_or_fragment(&mut self, packet: Packet) {
        push_or_fragment(
            &mut self.tx,
            &mut self.next_ip_ident,
            self.config.mtu,
            packet,
        );
    }

    // ---- Host readiness and timers ----

    /// A host socket the stack registered is ready. `peer_closed`: the event also said the
    /// peer closed or the socket failed (`EPOLLRDHUP`, `EPOLLHUP`, `EPOLLERR`); a host that
    /// cannot tell passes `true`.
    pub fn handle_host_event(
        &mut self,
        now: Instant,
        token: Token,
        readable: bool,
        writable: bool,
        peer_closed: bool,
    ) {
        let index = (token.0 & INDEX_MASK) as usize;
        match token.0 & !INDEX_MASK {
            KIND_TCP => self.handle_tcp_event(now, index, readable, writable, peer_closed),
            KIND_UDP => self.handle_udp_event(now, index),
            KIND_PING => self.handle_ping_event(now, index),
            KIND_FORWARD => self.handle_forward_event(now, index),
            _ => {}
        }
    }

    /// Retransmissions, persist probes, idle expiry.
    pub fn poll_timers(&mut self, now: Instant) {
        if self.next_ra.is_some_and(|t| t <= now) {
            self.send_router_advert();
            self.ras_sent += 1;
            let interval = if self.ras_sent < ndp::RA_INITIAL_COUNT {
                ndp::RA_INITIAL_INTERVAL
            } else {
                ndp::RA_INTERVAL
            };
            self.next_ra = Some(now + interval);
        }
        if self.accept_retry.is_some_and(|t| t <= now) {
            self.accept_retry = None;
            for index in 0..self.forwards.entries.len() {
                if self.forwards.entries[index]
                    .as_ref()
                    .is_some_and(|f| f.info.proto == Proto::Tcp)
                {
                    self.accept_forwarded(now, index);
                }
            }
        }
        if self.next_timer.is_some_and(|t| t <= now) {
            self.next_timer = None;
            let mut arp_for = Vec::new();
            for index in 0..self.tcp.entries.len() {
                let Some(flow) = self.tcp.entries[index].as_mut() else {
                    continue;
                };
                match flow.timer {
                    Some(at) if at <= now => {}
                    Some(at) => {
                        self.next_timer = Some(self.next_timer.map_or(at, |t| t.min(at)));
                        continue;
                    }
                    None => continue,
                }
                let guest = flow.key.guest.ip();
                let link = link_for(self.mac, &self.neighbours, guest);
                if flow.state == TcpState::SynSent && link.dst == EthernetAddress::BROADCAST {
                    arp_for.push(guest);
                }
                let link_mss = link_mss(self.config.mtu, guest);
                let verdict = flow.on_timer(&mut self.host, now, link, link_mss, &mut self.tx);
                let timer = flow.timer;
                self.arm(timer);
                self.apply_verdict(index, verdict);
            }
            arp_for.dedup();
            for ip in arp_for {
                if !self.neighbours.contains_key(&ip) {
                    self.request_mac(ip);
                }
            }
        }
        if self.next_sweep.is_some_and(|t| t <= now) {
            self.sweep_idle(now);
        }
    }

    fn sweep_idle(&mut self, now: Instant) {
        for index in 0..self.udp.entries.len() {
            let expired = self.udp.entries[index]
                .as_ref()
                .is_some_and(|flow| now.duration_since(flow.last_active) >= flow.idle);
            if expired {
                let flow = self.udp.remove(index).expect("checked live");
                self.udp_index.remove(&flow.key);
            }
        }
        for index in 0..self.ping.entries.len() {
            let expired = self.ping.entries[index]
                .as_ref()
                .is_some_and(|flow| now.duration_since(flow.last_active) >= PING_IDLE);
            if expired {
                let flow = self.ping.remove(index).expect("checked live");
                self.ping_index.remove(&flow.key);
            }
        }
        self.next_sweep = (self.udp.len + self.ping.len > 0).then(|| now + SWEEP_INTERVAL);
    }
}

/// Link addresses for a frame to a guest address: its learned MAC, or broadcast until known.
/// A free function so callers can hold a flow borrowed from the stack meanwhile.
fn link_for(
    mac: EthernetAddress,
    neighbours: &HashMap<IpAddr, EthernetAddress>,
    guest: IpAddr,
) -> Link {
    Link {
        src: mac,
        dst: neighbours
            .get(&guest)
            .copied()
            .unwrap_or(EthernetAddress::BROADCAST),
    }
}

/// A whole frame for the guest, with what [`push_or_fragment`] needs to split it.
struct Packet {
    frame: Vec<u8>,
    len: usize,
    link: Link,
    src: IpAddr,
    dst: IpAddr,
    protocol: IpProtocol,
}

/// Queues a frame for the guest, or, when it exceeds the guest's MTU, its IP payload in
/// fragments: an echo reply is as large as the request, which the guest may have sent in
/// fragments, and the host it came from would fragment it too.
fn push_or_fragment(tx: &mut Tx, next_ip_ident: &mut u16, mtu: usize, packet: Packet) {
    if packet.len <= mtu + frame::ETHERNET_HEADER_LEN {
        tx.push(packet.frame, packet.len);
        return;
    }
    let l4_start = frame::ETHERNET_HEADER_LEN + frame::ip_header_len(packet.dst);
    *next_ip_ident = next_ip_ident.wrapping_add(1);
    frame::push_fragments(
        tx,
        packet.link,
        packet.src,
        packet.dst,
        packet.protocol,
        u32::from(*next_ip_ident),
        &packet.frame[l4_start..packet.len],
        mtu,
    );
    tx.recycle(packet.frame);
}

/// The largest TCP segment a link of `mtu` carries for `addr`'s family.
fn link_mss(mtu: usize, addr: IpAddr) -> usize {
    mtu.saturating_sub(frame::ip_header_len(addr) + frame::TCP_HEADER_LEN)
        .max(8)
}

/// Reads a guest TCP segment; `None` for header combinations no stack sends.
fn parse_segment<'a>(packet: &TcpPacket<&'a [u8]>) -> Option<Segment<'a>> {
    if packet.src_port() == 0 || packet.dst_port() == 0 {
        return None;
    }
    if packet.syn() && (packet.fin() || packet.rst()) {
        return None;
    }
    let mut max_seg_size = None;
    let mut window_scale = None;
    let mut sack_permitted = false;
    let mut sack = [None; 3];
    let mut options = packet.options();
    while !options.is_empty() {
        let Ok((rest, option)) = smoltcp::wire::TcpOption::parse(options) else {
            break;
        };
        match option {
            smoltcp::wire::TcpOption::EndOfList => break,
            // RFC 9293 3.2, RFC 7323 2.2, RFC 2018 2: these count in SYNs only.
            smoltcp::wire::TcpOption::MaxSegmentSize(mss) if packet.syn() => {
                max_seg_size = Some(mss)
            }
            smoltcp::wire::TcpOption::WindowScale(shift) if packet.syn() => {
                window_scale = Some(shift)
            }
            smoltcp::wire::TcpOption::SackPermitted if packet.syn() => sack_permitted = true,
            smoltcp::wire::TcpOption::SackRange(blocks) if !packet.syn() => sack = blocks,
            _ => {}
        }
        options = rest;
    }
    Some(Segment {
        seq: packet.seq_number().0 as u32,
        ack: packet.ack().then(|| packet.ack_number().0 as u32),
        syn: packet.syn(),
        fin: packet.fin(),
        rst: packet.rst(),
        window: packet.window_len(),
        max_seg_size,
        window_scale,
        sack_permitted,
        sack,
        payload: packet.payload(),
    })
}
