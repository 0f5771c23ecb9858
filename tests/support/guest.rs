//! A simulated guest for core tests: a smoltcp interface at 10.0.2.100 whose "TAP" is a pair
//! of in-memory queues into a real [`Stack`] over real loopback sockets (no root, and nothing
//! leaves 127.0.0.1), or over a simulated host on a virtual clock (`sim_host.rs`).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use slirpnet::event_loop::{SystemHost, dispatch_host_events};
use slirpnet::stack::host::Host;
use slirpnet::stack::{Stack, StackConfig};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv6Address,
};

pub const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x64]);
/// The guest's IPv6 address once [`Harness::enable_ipv6`] gave it (as SLAAC would).
pub const GUEST_IPV6: Ipv6Address = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
/// A link-local address for hand-made NDP frames.
pub const GUEST_LINK_LOCAL: Ipv6Address = Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x64);

#[derive(Default)]
pub struct Wire {
    /// Frames the stack sent to the guest.
    pub to_guest: VecDeque<Vec<u8>>,
    /// Frames the guest sent.
    pub from_guest: VecDeque<Vec<u8>>,
    pub mtu: usize,
}

pub struct Rx(Vec<u8>);
pub struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl smoltcp::phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.to_guest.pop_front()?;
        Some((Rx(frame), Tx(&mut self.from_guest)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.from_guest))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + 14;
        caps
    }
}

/// Impairments of the simulated link, applied to frames in both directions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impairment {
    /// Drop one frame in this many (0: none).
    pub drop_one_in: u64,
    /// Swap a frame with the next one in this many (0: none).
    pub reorder_one_in: u64,
    pub seed: u64,
    /// Each direction's latency: a round trip takes twice this.
    pub one_way_delay: Duration,
    /// The guest's SYNs lose their SACK-permitted option on the way, as from a guest without
    /// SACK (smoltcp always offers it): the stack must recover without SACK blocks.
    pub strip_sack_permitted: bool,
}

impl Impairment {
    fn roll(&mut self, one_in: u64) -> bool {
        if one_in == 0 {
            return false;
        }
        // xorshift64
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed % one_in == 0
    }

    /// Applies drops and swaps to a batch of frames in flight.
    pub fn apply(&mut self, frames: &mut VecDeque<Vec<u8>>) {
        let mut out = VecDeque::with_capacity(frames.len());
        while let Some(frame) = frames.pop_front() {
            if self.roll(self.drop_one_in) {
                continue;
            }
            out.push_back(frame);
        }
        let n = out.len();
        for i in 0..n.saturating_sub(1) {
            if self.roll(self.reorder_one_in) {
                out.swap(i, i + 1);
            }
        }
        *frames = out;
    }
}

/// What the harness needs of a host besides [`Host`]: handing its ready sockets to the stack.
pub trait TestHost: Host + Sized {
    /// Hands the host sockets that are ready to the stack.
    fn dispatch(stack: &mut Stack<Self>, now: Instant);
    /// Readiness waits to be dispatched (virtual time must not move on yet).
    fn has_ready(&self) -> bool {
        false
    }
}

impl TestHost for SystemHost {
    fn dispatch(stack: &mut Stack<Self>, _: Instant) {
        dispatch_host_events(stack, 1).unwrap();
    }
}

/// Where the harness's time comes from.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    Real,
    /// Simulated time: moved on by [`Harness::run_until`] to the next thing due.
    Virtual(Instant),
}

pub struct Harness<H: TestHost = SystemHost> {
    pub impairment: Impairment,
    /// Frames on the delayed link, with the time they arrive.
    to_stack: VecDeque<(Instant, Vec<u8>)>,
    to_guest: VecDeque<(Instant, Vec<u8>)>,
    pub stack: Stack<H>,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub wire: Wire,
    pub start: Instant,
    pub clock: Clock,
    /// When set, every frame the stack sends the guest is also kept here.
    pub to_guest_log: Option<Vec<Vec<u8>>>,
}

pub fn stack_config(mtu: usize) -> StackConfig {
    StackConfig::plain(mtu)
}

/// [`stack_config`] with `-6`.
pub fn stack_config_v6(mtu: usize) -> StackConfig {
    StackConfig {
        ipv6: true,
        ..stack_config(mtu)
    }
}

impl Harness<SystemHost> {
    /// A stack over real loopback sockets, on the real clock.
    pub fn new(config: StackConfig) -> Self {
        // Loopback only: no guest frame in a test can reach beyond this machine.
        Harness::with_host(SystemHost::loopback_only().unwrap(), config, Clock::Real)
    }
}

impl<H: TestHost> Harness<H> {
    pub fn with_host(host: H, config: StackConfig, clock: Clock) -> Self {
        // The simulated guest keeps a sane MTU whatever the stack was told.
        let mtu = config.mtu.max(68);
        let start = match clock {
            Clock::Real => Instant::now(),
            Clock::Virtual(at) => at,
        };
        let stack = Stack::new(host, config, start);
        let mut wire = Wire {
            mtu,
            ..Wire::default()
        };
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ethernet(GUEST_MAC)),
            &mut wire,
            smoltcp::time::Instant::from_millis(0),
        );
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::v4(10, 0, 2, 100), 24))
                .unwrap();
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(10, 0, 2, 2))
            .unwrap();
        Harness {
            impairment: Impairment::default(),
            to_stack: VecDeque::new(),
            to_guest: VecDeque::new(),
            stack,
            iface,
            sockets: SocketSet::new(vec![]),
            wire,
            start,
            clock,
            to_guest_log: None,
        }
    }

    /// Gives the guest fd00::100/64, with its default route via fe80::2, the
    /// router our advertisements name (smoltcp does not do SLAAC itself).
    pub fn enable_ipv6(&mut self) {
        self.iface.update_ip_addrs(|addrs| {
            // smoltcp holds two addresses by default: no room for a link-local one.
            addrs
                .push(IpCidr::new(IpAddress::Ipv6(GUEST_IPV6), 64))
                .unwrap();
        });
        self.iface
            .routes_mut()
            .add_default_ipv6_route(Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 2))
            .unwrap();
    }

    /// The harness's time: the real clock's, or the simulated one.
    pub fn now(&self) -> Instant {
        match self.clock {
            Clock::Real => Instant::now(),
            Clock::Virtual(now) => now,
        }
    }

    /// Time since the harness started, as the guest's smoltcp counts it.
    pub fn guest_now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros((self.now() - self.start).as_micros() as i64)
    }

    /// One round: guest output into the stack, host sockets, timers, stack output to the guest.
    pub fn step(&mut self) {
        let now = self.guest_now();
        self.iface.poll(now, &mut self.wire, &mut self.sockets);
        self.impairment.apply(&mut self.wire.from_guest);
        if self.impairment.strip_sack_permitted {
            self.wire
                .from_guest
                .iter_mut()
                .for_each(|frame| strip_sack_permitted(frame));
        }
        let now = self.now();
        let release = now + self.impairment.one_way_delay;
        self.to_stack
            .extend(self.wire.from_guest.drain(..).map(|frame| (release, frame)));
        while self.to_stack.front().is_some_and(|(at, _)| *at <= now) {
            let (_, frame) = self.to_stack.pop_front().expect("checked");
            self.stack.handle_frame(now, &frame);
        }
        self.stack.flush();
        self.collect();
        H::dispatch(&mut self.stack, now);
        let now = self.now();
        if self.stack.poll_at().is_some_and(|at| at <= now) {
            self.stack.poll_timers(now);
        }
        self.stack.flush();
        self.collect();
        let now = self.now();
        while self.to_guest.front().is_some_and(|(at, _)| *at <= now) {
            let (_, frame) = self.to_guest.pop_front().expect("checked");
            self.wire.to_guest.push_back(frame);
        }
        let now = self.guest_now();
        self.iface.poll(now, &mut self.wire, &mut self.sockets);
    }

    /// The frames the stack has made since they were last taken, off its queue.
    pub fn take_output(&mut self) -> Vec<Vec<u8>> {
        self.stack
            .take_frames()
            .into_iter()
            .map(|frame| frame.buf[..frame.len].to_vec())
            .collect()
    }

    /// Moves the stack's output onto the guest's wire (after the link's delay).
    pub fn collect(&mut self) {
        let mut batch = VecDeque::new();
        for frame in self.stack.take_frames() {
            assert!(frame.gso.is_none(), "no GSO without a vnet header");
            if let Some(log) = &mut self.to_guest_log {
                log.push(frame.buf[..frame.len].to_vec());
            }
            batch.push_back(frame.buf[..frame.len].to_vec());
            self.stack.tx.recycle(frame.buf);
        }
        self.impairment.apply(&mut batch);
        let release = self.now() + self.impairment.one_way_delay;
        if self.impairment.one_way_delay.is_zero() {
            self.wire.to_guest.extend(batch);
        } else {
            self.to_guest
                .extend(batch.into_iter().map(|frame| (release, frame)));
        }
    }

    /// On a virtual clock, moves time on to the next thing due: a frame arriving, a timer of
    /// the stack or of the guest, or host readiness (which is due now). With nothing due, time
    /// jumps to `limit`.
    fn advance(&mut self, limit: Instant) {
        let Clock::Virtual(now) = self.clock else {
            return;
        };
        // Frames the guest sent at the end of the last step leave now, and frames that
        // reached it are taken now.
        if self.stack.host.has_ready()
            || !self.wire.from_guest.is_empty()
            || !self.wire.to_guest.is_empty()
        {
            return;
        }
        let guest = self
            .iface
            .poll_at(self.guest_now(), &self.sockets)
            .map(|at| self.start + Duration::from_micros(at.total_micros() as u64));
        let next = [
            self.to_stack.front().map(|(at, _)| *at),
            self.to_guest.front().map(|(at, _)| *at),
            self.stack.poll_at(),
            guest,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(limit);
        self.clock = Clock::Virtual(next.max(now));
    }

    /// Steps until `done` or the deadline (real or virtual, as the clock is); panics on
    /// timeout with `what`.
    pub fn run_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&mut Self) -> bool,
    ) {
        let deadline = self.now() + timeout;
        // Steps at one virtual instant: a loop that never lets time move is a harness bug.
        let (mut last, mut same) = (self.now(), 0u32);
        while !done(self) {
            assert!(self.now() < deadline, "timed out waiting for {what}");
            self.advance(deadline);
            if matches!(self.clock, Clock::Virtual(_)) {
                same = if self.now() == last { same + 1 } else { 0 };
                last = self.now();
                assert!(same < 100_000, "virtual time stuck waiting for {what}");
            }
            self.step();
        }
    }

    /// Sends `upload` on the connected socket `s` while receiving until `expect_len` bytes
    /// came, then closes it; returns what was received.
    pub fn exchange(
        &mut self,
        s: SocketHandle,
        upload: &[u8],
        expect_len: usize,
        timeout: Duration,
    ) -> Vec<u8> {
        let mut received = Vec::new();
        let mut sent = 0;
        self.run_until("transfer", timeout, |h| {
            let sock = h.tcp(s);
            recv_all(sock, &mut received);
            if sent < upload.len() && sock.can_send() {
                sent += sock.send_slice(&upload[sent..]).unwrap();
            }
            if std::env::var_os("TRACE_PROGRESS").is_some() {
                eprintln!(
                    "sent {sent} received {} state {:?}",
                    received.len(),
                    sock.state()
                );
            }
            if sent == upload.len() && received.len() == expect_len {
                sock.close();
                return true;
            }
            false
        });
        received
    }

    /// A `get_stats` counter by name; panics on a name the stack does not have.
    pub fn counter(&self, name: &str) -> u64 {
        self.stack
            .counter_list()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no counter {name}"))
            .1
    }

    pub fn tcp_socket(&mut self, buffer: usize) -> SocketHandle {
        let socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buffer]),
            tcp::SocketBuffer::new(vec![0; buffer]),
        );
        self.sockets.add(socket)
    }

    pub fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    pub fn connect(&mut self, handle: SocketHandle, remote: SocketAddr, local_port: u16) {
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(handle)
            .connect(
                cx,
                (IpAddress::from(remote.ip()), remote.port()),
                local_port,
            )
            .unwrap();
    }

    /// Connects and steps until the connection is established (5 s at most).
    pub fn connect_established(
        &mut self,
        handle: SocketHandle,
        remote: SocketAddr,
        local_port: u16,
    ) {
        self.connect(handle, remote, local_port);
        self.run_until("established", Duration::from_secs(5), |h| {
            h.tcp(handle).state() == tcp::State::Established
        });
    }
}

/// Appends everything `socket` has received to `into`.
pub fn recv_all(socket: &mut tcp::Socket, into: &mut Vec<u8>) {
    while socket.can_recv() {
        socket
            .recv(|b| {
                into.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
    }
}

/// Deterministic test data.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 10) as u8)
        .collect()
}

/// A TCP header the stack sent the guest, as [`tcp_to_guest`] reads it.
#[derive(Debug, Clone, Copy)]
pub struct SeenTcp {
    pub syn: bool,
    pub rst: bool,
    pub seq: u32,
    pub ack: Option<u32>,
    /// The raw window field (not scaled).
    pub window: u16,
    /// The window scale option (SYN-ACKs only).
    pub window_scale: Option<u8>,
    /// SACK blocks, as sent.
    pub sack: [Option<(u32, u32)>; 3],
    pub payload_len: usize,
}

/// Overwrites a TCP SYN's SACK-permitted option (IPv4) with two no-ops. The checksum goes
/// stale, which the stack does not check.
fn strip_sack_permitted(frame: &mut [u8]) {
    use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket};
    let Ok(mut eth) = EthernetFrame::new_checked(&mut frame[..]) else {
        return;
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return;
    }
    let Ok(mut ip) = Ipv4Packet::new_checked(eth.payload_mut()) else {
        return;
    };
    if ip.next_header() != IpProtocol::Tcp {
        return;
    }
    let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) else {
        return;
    };
    if !tcp.syn() {
        return;
    }
    let options = tcp.options_mut();
    let mut at = 0;
    while at < options.len() {
        match options[at] {
            0 => break,
            1 => at += 1,
            kind => {
                let len = usize::from(*options.get(at + 1).unwrap_or(&0)).max(2);
                if kind == 4 && len == 2 {
                    options[at] = 1;
                    options[at + 1] = 1;
                }
                at += len;
            }
        }
    }
}

/// The TCP headers among `frames` (IPv4), in order: the stack's, or the guest's.
pub fn tcp_to_guest(frames: &[Vec<u8>]) -> Vec<SeenTcp> {
    use smoltcp::wire::{
        EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpOption, TcpPacket,
    };
    let mut seen = Vec::new();
    for frame in frames {
        let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
            continue;
        };
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            continue;
        }
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            continue;
        };
        if ip.next_header() != IpProtocol::Tcp {
            continue;
        }
        let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
            continue;
        };
        let mut window_scale = None;
        let mut sack = [None; 3];
        let mut options = tcp.options();
        while let Ok((rest, option)) = TcpOption::parse(options) {
            match option {
                TcpOption::WindowScale(s) => window_scale = Some(s),
                TcpOption::SackRange(blocks) => sack = blocks,
                TcpOption::EndOfList => break,
                _ => {}
            }
            options = rest;
        }
        seen.push(SeenTcp {
            syn: tcp.syn(),
            rst: tcp.rst(),
            seq: tcp.seq_number().0 as u32,
            ack: tcp.ack().then(|| tcp.ack_number().0 as u32),
            window: tcp.window_len(),
            window_scale,
            sack,
            payload_len: tcp.payload().len(),
        });
    }
    seen
}
