//! The boundary between the core and the host: the few socket operations the translation
//! needs. The event loop implements it with real sockets; tests may implement it with fakes.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

/// Identifies a flow to the event loop, which hands it back when the flow's socket is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub u64);

/// How an ICMP echo socket talks to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingKind {
    /// `SOCK_DGRAM`/`IPPROTO_ICMP`: the kernel owns the identifier, replies carry no IP header.
    Datagram,
    /// `SOCK_RAW`: we own the identifier, replies start with the IP header.
    Raw,
}

/// A forward's spliced connections (src/splice.rs), for its `get_stats` entry.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SplicedStats {
    pub active: u64,
    pub bytes_to_guest: u64,
    pub bytes_to_host: u64,
}

pub trait Host {
    type Socket;

    /// Starts a non-blocking connect; completion is reported through the socket's token.
    fn tcp_connect(&mut self, dst: SocketAddr, token: Token) -> io::Result<Self::Socket>;
    /// `Ok` once connected, `WouldBlock` while in progress, else the connect error.
    fn connect_result(&mut self, socket: &Self::Socket) -> io::Result<()>;
    fn send(&mut self, socket: &Self::Socket, buf: &[u8]) -> io::Result<usize>;
    /// Copies received bytes from the current peek offset without consuming them, and
    /// advances the offset. `Ok(0)` means the peer closed and everything was peeked.
    fn peek(&mut self, socket: &Self::Socket, buf: &mut [u8]) -> io::Result<usize>;
    /// [`Self::peek`] into several buffers in turn, in one call where the host can: the bytes
    /// fill each buffer before the next. Stops at the first short peek; an end or a
    /// would-block after some bytes returns those bytes.
    fn peek_vectored(
        &mut self,
        socket: &Self::Socket,
        bufs: &mut [IoSliceMut<'_>],
    ) -> io::Result<usize> {
        let mut total = 0;
        for buf in bufs {
            match self.peek(socket, buf) {
                Ok(n) => {
                    total += n;
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if total > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }
    /// Moves the peek offset to `offset` bytes past the first unconsumed byte: back to it for
    /// a retransmission of everything, into the middle to resend one hole.
    fn seek_peek(&mut self, socket: &Self::Socket, offset: usize) -> io::Result<()>;
    /// Consumes `len` bytes already peeked (the guest acknowledged them).
    fn discard(&mut self, socket: &Self::Socket, len: usize) -> io::Result<()>;
    fn shutdown_write(&mut self, socket: &Self::Socket) -> io::Result<()>;
    /// The socket's pending error (`SO_ERROR`), cleared by reading it: how a reset shows once
    /// the peer's FIN was read, since reads then only ever return EOF.
    fn take_error(&mut self, socket: &Self::Socket) -> io::Result<Option<io::Error>>;
    /// Closes with a reset instead of a FIN.
    fn abort(&mut self, socket: Self::Socket);

    /// A UDP socket connected to `dst`.
    fn udp_connect(&mut self, dst: SocketAddr, token: Token) -> io::Result<Self::Socket>;
    fn recv(&mut self, socket: &Self::Socket, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends `buf` as datagrams of `segment` bytes (the last may be shorter) in one call
    /// (UDP GSO); an error means nothing was sent.
    fn send_segments(
        &mut self,
        socket: &Self::Socket,
        buf: &[u8],
        segment: usize,
    ) -> io::Result<usize>;

    /// A listening TCP socket for a port forward; returns it with the address it is bound to
    /// (port 0 picks one).
    fn tcp_listen(
        &mut self,
        addr: SocketAddr,
        token: Token,
    ) -> io::Result<(Self::Socket, SocketAddr)>;
    /// Accepts one connection, registered under `token`, with its peer address.
    fn accept(
        &mut self,
        listener: &Self::Socket,
        token: Token,
    ) -> io::Result<(Self::Socket, SocketAddr)>;
    /// A bound UDP socket for a port forward, with the address it is bound to.
    fn udp_bind(
        &mut self,
        addr: SocketAddr,
        token: Token,
    ) -> io::Result<(Self::Socket, SocketAddr)>;
    fn recv_from(
        &mut self,
        socket: &Self::Socket,
        buf: &mut [u8],
    ) -> io::Result<(usize, SocketAddr)>;
    fn send_to(&mut self, socket: &Self::Socket, buf: &[u8], to: SocketAddr) -> io::Result<usize>;

    /// A socket for ICMP echo to `dst`.
    fn ping_connect(&mut self, dst: IpAddr, token: Token) -> io::Result<(Self::Socket, PingKind)>;

    /// Carries a connection accepted on a port forward to `guest` without the TAP, over a
    /// socket in the guest's own namespace (src/splice.rs), or gives it back (still
    /// registered under the token it was accepted with) when that cannot be done. The
    /// simulated host never can.
    fn splice_to_guest(
        &mut self,
        accepted: Self::Socket,
        token: Token,
        guest: SocketAddr,
        forward: u64,
    ) -> Result<(), Self::Socket> {
        let _ = (token, guest, forward);
        Err(accepted)
    }
    /// Spliced connections still open (they count against the forward connection limit).
    fn spliced_open(&self) -> usize {
        0
    }
    /// What forward `forward`'s spliced connections carried, and how many are open.
    fn spliced_stats(&self, forward: u64) -> SplicedStats {
        let _ = forward;
        SplicedStats::default()
    }
    /// Forward `forward` was removed: its counters may go once its connections have ended.
    fn forget_spliced(&mut self, forward: u64) {
        let _ = forward;
    }
}
