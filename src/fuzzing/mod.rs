//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus replay test
//! (`tests/fuzz_corpus.rs`), so both drive exactly the same code. See docs/fuzzing.md.
//!
//! Nothing here touches the host: [`NullHost`] refuses every socket operation, and its socket
//! type has no values, so no input can open a socket or send a packet; [`sim_host::SimHost`]
//! keeps its connections in memory.

use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStringExt;
use std::time::{Duration, Instant};

use crate::config::NetConfig;
use crate::stack::host::{Host, PingKind, Token};
use crate::stack::{Stack, StackConfig};

pub mod datagrams;
pub mod flows;
pub mod sim_host;

/// Reads a structured fuzz input front to back; past its end every read is zero.
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
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A socket that cannot exist: [`NullHost`] never hands one out.
#[derive(Debug)]
pub enum NoSocket {}

/// A [`Host`] that refuses every operation with `PermissionDenied`.
#[derive(Debug, Default)]
pub struct NullHost {
    /// How many operations were refused.
    pub refused: u64,
}

impl NullHost {
    fn refuse<T>(&mut self) -> io::Result<T> {
        self.refused += 1;
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "NullHost refuses every socket operation",
        ))
    }
}

impl Host for NullHost {
    type Socket = NoSocket;

    fn tcp_connect(&mut self, _: SocketAddr, _: Token) -> io::Result<NoSocket> {
        self.refuse()
    }
    fn connect_result(&mut self, socket: &NoSocket) -> io::Result<()> {
        match *socket {}
    }
    fn send(&mut self, socket: &NoSocket, _: &[u8]) -> io::Result<usize> {
        match *socket {}
    }
    fn peek(&mut self, socket: &NoSocket, _: &mut [u8]) -> io::Result<usize> {
        match *socket {}
    }
    fn seek_peek(&mut self, socket: &NoSocket, _: usize) -> io::Result<()> {
        match *socket {}
    }
    fn discard(&mut self, socket: &NoSocket, _: usize) -> io::Result<()> {
        match *socket {}
    }
    fn shutdown_write(&mut self, socket: &NoSocket) -> io::Result<()> {
        match *socket {}
    }
    fn take_error(&mut self, socket: &NoSocket) -> io::Result<Option<io::Error>> {
        match *socket {}
    }
    fn abort(&mut self, socket: NoSocket) {
        match socket {}
    }
    fn udp_connect(&mut self, _: SocketAddr, _: Token) -> io::Result<NoSocket> {
        self.refuse()
    }
    fn recv(&mut self, socket: &NoSocket, _: &mut [u8]) -> io::Result<usize> {
        match *socket {}
    }
    fn send_segments(&mut self, socket: &NoSocket, _: &[u8], _: usize) -> io::Result<usize> {
        match *socket {}
    }
    fn tcp_listen(&mut self, _: SocketAddr, _: Token) -> io::Result<(NoSocket, SocketAddr)> {
        self.refuse()
    }
    fn accept(&mut self, listener: &NoSocket, _: Token) -> io::Result<(NoSocket, SocketAddr)> {
        match *listener {}
    }
    fn udp_bind(&mut self, _: SocketAddr, _: Token) -> io::Result<(NoSocket, SocketAddr)> {
        self.refuse()
    }
    fn recv_from(&mut self, socket: &NoSocket, _: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match *socket {}
    }
    fn send_to(&mut self, socket: &NoSocket, _: &[u8], _: SocketAddr) -> io::Result<usize> {
        match *socket {}
    }
    fn ping_connect(&mut self, _: IpAddr, _: Token) -> io::Result<(NoSocket, PingKind)> {
        self.refuse()
    }
}

/// The stack configuration the `frames` target uses: the default network, MTU 1500, and a
/// DNS upstream so that the DNS redirect path is reached too.
pub fn stack_config() -> StackConfig {
    StackConfig {
        dns_upstream: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 53))),
        ipv6: true,
        ..StackConfig::plain(1500)
    }
}

/// One record of a `frames` input: a time step before the frame, and the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The clock advances by this many tenths of a second before the frame.
    pub step: u8,
    pub frame: &'a [u8],
}

/// Splits a `frames` input into records, each `[step: u8][len: u16 BE][len bytes]`; a last
/// record shorter than its length takes what is left.
pub fn split_frames(mut data: &[u8]) -> Vec<Record<'_>> {
    let mut records = Vec::new();
    while data.len() >= 3 {
        let step = data[0];
        let len = usize::from(u16::from_be_bytes([data[1], data[2]]));
        let rest = &data[3..];
        let len = len.min(rest.len());
        records.push(Record {
            step,
            frame: &rest[..len],
        });
        data = &rest[len..];
    }
    records
}

/// Encodes frames as a `frames` input (each with a time step of 0), for seed corpora.
pub fn join_frames<'a>(frames: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        let len = u16::try_from(frame.len()).expect("frame longer than 65535 bytes");
        out.push(0);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(frame);
    }
    out
}

/// What [`drive_frames`] saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FramesOutcome {
    /// Frames the stack sent to the guest.
    pub frames_out: usize,
    /// Of those, the ones sent in answer to a frame (not by a timer, such as the periodic
    /// router advertisements).
    pub answers: usize,
    /// Socket operations the host refused.
    pub refused: u64,
    /// The stack's counters at the end ([`Stack::counter_list`]).
    pub counters: Vec<(&'static str, u64)>,
}

/// The `frames` target: feeds every record of `data` into a fresh [`Stack`] over a
/// [`NullHost`] (flushing after each), then fires every timer at a far-future instant and
/// takes the frames for the guest. Panics if the stack breaks an invariant: a frame longer
/// than its buffer or than the MTU, or a flow left open although the host refused them all.
pub fn drive_frames(data: &[u8]) -> FramesOutcome {
    let config = stack_config();
    let max_frame = config.mtu + 14;
    let start = Instant::now();
    let mut now = start;
    let mut stack = Stack::new(NullHost::default(), config, now);
    let mut frames_out = 0;
    let mut answers = 0;
    let mut collect = |stack: &mut Stack<NullHost>| -> usize {
        let mut taken = 0;
        for frame in stack.take_frames() {
            assert!(
                frame.len <= frame.buf.len(),
                "tx frame of {} bytes in a buffer of {}",
                frame.len,
                frame.buf.len()
            );
            assert!(
                frame.is_segmented() || frame.len <= max_frame,
                "tx frame of {} bytes exceeds the MTU",
                frame.len
            );
            taken += 1;
            stack.tx.recycle(frame.buf);
        }
        frames_out += taken;
        taken
    };
    for record in split_frames(data) {
        now += Duration::from_millis(100) * u32::from(record.step);
        if stack.poll_at().is_some_and(|at| at <= now) {
            stack.poll_timers(now);
            stack.flush();
            collect(&mut stack);
        }
        stack.handle_frame(now, record.frame);
        stack.flush();
        answers += collect(&mut stack);
    }
    // Far enough for every retransmission, idle and reassembly timer to have expired.
    let later = start + Duration::from_secs(24 * 3600);
    stack.poll_timers(later);
    stack.flush();
    collect(&mut stack);
    assert_no_flows(&stack);
    assert_eq!(stack.counters.frames_out, frames_out as u64);
    FramesOutcome {
        frames_out,
        answers,
        refused: stack.host.refused,
        counters: stack.counter_list(),
    }
}

/// Panics unless the stack holds no flow of any kind (over a [`NullHost`] none can open).
pub fn assert_no_flows(stack: &Stack<NullHost>) {
    assert_eq!(stack.tcp_flow_count(), 0, "TCP flows left");
    assert_eq!(stack.udp_flow_count(), 0, "UDP flows left");
    for (name, value) in stack.counter_list() {
        if matches!(name, "tcp_connecting" | "ping_flows") {
            assert_eq!(value, 0, "{name} left");
        }
    }
}

/// The `api` target: `data` as an API request, with IPv6 off and on. Returns whether each
/// parsed.
pub fn drive_api(data: &[u8]) -> [bool; 2] {
    let net = NetConfig::default();
    [false, true].map(|ipv6| crate::api::parse_request(data, &net, ipv6).is_ok())
}

/// Splits a `cli` input on NUL into an argv (the program name first).
pub fn split_argv(data: &[u8]) -> Vec<OsString> {
    std::iter::once(OsString::from("slirpnet"))
        .chain(
            data.split(|&b| b == 0)
                .map(|arg| OsString::from_vec(arg.to_vec())),
        )
        .collect()
}

/// The `cli` target: `data` split on NUL as the arguments after the program name. Returns
/// whether it parsed. (A surplus positional makes the parser print a warning on stderr.)
pub fn drive_cli(data: &[u8]) -> bool {
    crate::cli::parse(split_argv(data)).is_ok()
}
