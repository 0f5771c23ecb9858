//! An in-memory [`Host`] for tests on a virtual clock: every TCP connect reaches a simulated
//! host peer at once, with no socket and no kernel involved.
//!
//! Each connection is a pair of byte pipes. Upload: what the stack sends lands in a send
//! buffer of [`SimHost::send_buffer`] bytes that the peer application empties when the test
//! calls [`SimHost::drain`]; a full buffer refuses with `WouldBlock`, as a non-blocking socket
//! does. Download: the peer has [`SimHost::download`] to send, delivered into a receive buffer
//! of [`SimHost::receive_buffer`] bytes as fast as it is consumed; `peek` reads it from the
//! peek offset and advances it (`SO_PEEK_OFF`), `seek_peek` and `discard` work as on a real
//! socket. There is no epoll: readiness is a queue of tokens the harness hands to the stack
//! ([`SimHost::dispatch`]). One TCP listener (a port forward) is simulated: host peers
//! connect to it with [`SimHost::connect_from`], and each accepted connection serves the same
//! download. A UDP socket's host peers keep every datagram they got, and send the datagrams
//! [`SimHost::udp_reply`] and [`SimHost::udp_send_from`] give them (or an ICMP port
//! unreachable, [`SimHost::udp_refuse`]); a socket is connected to one peer, or bound for a
//! port forward and open to any. Ping sockets are not simulated (`Unsupported`).
//!
//! It serves the virtual-clock tests (tests/core_vclock.rs) and the `flows` fuzz target, so
//! it checks what a kernel socket would not: a stack that discards or seeks past the bytes
//! delivered, or sends after shutting down writing, has a bug, and the simulation panics.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use crate::stack::Stack;
use crate::stack::host::{Host, PingKind, Token};

/// A socket of the simulated host: an index into [`SimHost::connections`].
#[derive(Debug)]
pub struct SimSocket(usize);

/// One connection's state, as its host peer sees it.
#[derive(Debug)]
pub struct Connection {
    pub token: Token,
    pub dst: SocketAddr,
    /// Everything the peer application read, in order.
    pub received: Vec<u8>,
    /// Bytes in the send buffer, not read by the peer yet.
    unread: usize,
    /// A send was refused for want of room: the next drain makes the socket writable.
    send_blocked: bool,
    /// The stack shut down writing (the guest's FIN reached the peer).
    pub write_shut: bool,
    /// The stack reset the connection.
    pub aborted: bool,
    /// The host peer reset the connection: every operation on the socket fails.
    pub reset: bool,
    download: Rc<[u8]>,
    /// Downloaded bytes the stack consumed (the guest acknowledged them).
    pub consumed: usize,
    /// Where the next peek starts, from the start of the download.
    peeked: usize,
    /// The furthest any peek reached: the stack never sent the guest anything beyond, so it
    /// cannot have been acknowledged.
    peeked_max: usize,
}

pub struct SimHost {
    /// Bytes each new connection's peer sends, then closes its side.
    pub download: Rc<[u8]>,
    /// The host socket's send buffer: what the stack can send before the peer reads.
    pub send_buffer: usize,
    /// The host socket's receive buffer: how much of the download is delivered ahead of what
    /// the stack consumed (`usize::MAX`: all of it at once).
    pub receive_buffer: usize,
    pub connections: Vec<Connection>,
    /// Readiness not yet handed to the stack: token, readable, writable.
    ready: VecDeque<(Token, bool, bool)>,
    /// Bytes peeked, retransmissions included, and how often the peek offset was rewound.
    pub peeked_bytes: u64,
    pub rewinds: u64,
    /// The most bytes ever peeked and not yet consumed (in flight to the guest).
    pub max_in_flight: usize,
    /// The listener's token, once the stack listens.
    listener: Option<Token>,
    pub udp: Vec<UdpPeer>,
    /// Every datagram any UDP socket sent, in order, with the peer it went to.
    pub udp_sent: Vec<(SocketAddr, Vec<u8>)>,
    /// Host peers that connected to the listener and wait to be accepted.
    waiting_peers: VecDeque<SocketAddr>,
}

/// The listener's socket: it is not an index into the connections.
const LISTENER: usize = usize::MAX;
/// UDP sockets are `UDP_BASE + i` for `udp[i]`.
const UDP_BASE: usize = 1 << 40;

/// One UDP socket, as its host peers see it.
#[derive(Debug)]
pub struct UdpPeer {
    pub token: Token,
    /// The peer a connected socket talks to, or the address a forward's socket is bound to.
    pub dst: SocketAddr,
    /// Datagrams peers sent that the stack has not read yet, with their senders.
    inbox: VecDeque<(SocketAddr, Vec<u8>)>,
    /// An ICMP port unreachable came back: the next read fails with `ECONNREFUSED`.
    refused: bool,
}

impl Default for SimHost {
    fn default() -> Self {
        SimHost {
            download: Rc::from(Vec::new()),
            send_buffer: 4 << 20,
            receive_buffer: usize::MAX,
            connections: Vec::new(),
            ready: VecDeque::new(),
            peeked_bytes: 0,
            rewinds: 0,
            max_in_flight: 0,
            listener: None,
            udp: Vec::new(),
            udp_sent: Vec::new(),
            waiting_peers: VecDeque::new(),
        }
    }
}

impl Connection {
    fn available(&self, receive_buffer: usize) -> usize {
        self.consumed
            .saturating_add(receive_buffer)
            .min(self.download.len())
    }
}

fn unsupported<T>() -> io::Result<T> {
    Err(io::ErrorKind::Unsupported.into())
}

impl SimHost {
    /// A host whose peers send `download` on every connection.
    pub fn with_download(download: Vec<u8>) -> Self {
        SimHost {
            download: Rc::from(download),
            ..SimHost::default()
        }
    }

    /// Queues readiness for `token`, merged with what is already queued for it.
    fn wake(&mut self, token: Token, readable: bool, writable: bool) {
        match self.ready.iter_mut().find(|(t, ..)| *t == token) {
            Some((_, r, w)) => {
                *r |= readable;
                *w |= writable;
            }
            None => self.ready.push_back((token, readable, writable)),
        }
    }

    /// The peer application reads everything in connection `index`'s send buffer; the socket
    /// becomes writable if a send was refused. Returns how many bytes it read.
    pub fn drain(&mut self, index: usize) -> usize {
        let conn = &mut self.connections[index];
        let n = std::mem::take(&mut conn.unread);
        if n > 0 && std::mem::take(&mut conn.send_blocked) {
            let token = conn.token;
            self.wake(token, false, true);
        }
        n
    }

    /// Hands the stack what is ready now: handling it may make more ready, for the next call.
    pub fn dispatch(stack: &mut Stack<Self>, now: Instant) {
        let ready = std::mem::take(&mut stack.host.ready);
        for (token, readable, writable) in ready {
            // The simulation does not say when the peer closed: the stack must assume it may.
            stack.handle_host_event(now, token, readable, writable, true);
        }
    }

    /// Lets the stack run at `now`: its due timers, then the sockets ready, then its flush.
    pub fn run(stack: &mut Stack<Self>, now: Instant) {
        if stack.poll_at().is_some_and(|at| at <= now) {
            stack.poll_timers(now);
        }
        Self::dispatch(stack, now);
        stack.flush();
    }

    /// Readiness waits to be dispatched.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// UDP socket `index`'s peer sends `datagram`.
    pub fn udp_reply(&mut self, index: usize, datagram: Vec<u8>) {
        let from = self.udp[index].dst;
        self.udp_send_from(index, from, datagram);
    }

    /// A peer at `from` sends `datagram` to UDP socket `index` (a forward's bound socket).
    pub fn udp_send_from(&mut self, index: usize, from: SocketAddr, datagram: Vec<u8>) {
        let peer = &mut self.udp[index];
        peer.inbox.push_back((from, datagram));
        let token = peer.token;
        self.wake(token, true, false);
    }

    /// UDP socket `index`'s last datagram met a closed port.
    pub fn udp_refuse(&mut self, index: usize) {
        let peer = &mut self.udp[index];
        peer.refused = true;
        let token = peer.token;
        self.wake(token, true, false);
    }

    fn new_udp(&mut self, dst: SocketAddr, token: Token) -> SimSocket {
        self.udp.push(UdpPeer {
            token,
            dst,
            inbox: VecDeque::new(),
            refused: false,
        });
        SimSocket(UDP_BASE + self.udp.len() - 1)
    }

    fn udp_peer(&mut self, socket: &SimSocket) -> Option<&mut UdpPeer> {
        let index = socket.0.checked_sub(UDP_BASE)?;
        (socket.0 != LISTENER).then(|| &mut self.udp[index])
    }

    /// A host peer at `peer` connects to the listener; the stack hears of it at the next
    /// dispatch. Panics if nothing listens.
    pub fn connect_from(&mut self, peer: SocketAddr) {
        let token = self.listener.expect("a peer connects, but nothing listens");
        self.waiting_peers.push_back(peer);
        self.wake(token, true, false);
    }

    /// A new connection, ready at the next dispatch with the peer's data (or its EOF).
    fn open(&mut self, peer: SocketAddr, token: Token) -> SimSocket {
        self.connections.push(Connection {
            token,
            dst: peer,
            received: Vec::new(),
            unread: 0,
            send_blocked: false,
            write_shut: false,
            aborted: false,
            reset: false,
            download: self.download.clone(),
            consumed: 0,
            peeked: 0,
            peeked_max: 0,
        });
        self.wake(token, true, true);
        SimSocket(self.connections.len() - 1)
    }

    /// The host peer of connection `index` resets it: the stack hears of it at the next
    /// dispatch, as an error on its next operation.
    pub fn reset(&mut self, index: usize) {
        let conn = &mut self.connections[index];
        conn.reset = true;
        let token = conn.token;
        self.wake(token, true, true);
    }

    /// `ECONNRESET` once the peer reset the connection.
    fn check_reset(&self, socket: &SimSocket) -> io::Result<()> {
        if self.connections[socket.0].reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        Ok(())
    }

    fn conn(&mut self, socket: &SimSocket) -> &mut Connection {
        &mut self.connections[socket.0]
    }
}

impl Host for SimHost {
    type Socket = SimSocket;

    fn tcp_connect(&mut self, dst: SocketAddr, token: Token) -> io::Result<SimSocket> {
        Ok(self.open(dst, token))
    }
    fn connect_result(&mut self, _: &SimSocket) -> io::Result<()> {
        Ok(())
    }

    fn send(&mut self, socket: &SimSocket, buf: &[u8]) -> io::Result<usize> {
        if let Some(peer) = self.udp_peer(socket) {
            let dst = peer.dst;
            self.udp_sent.push((dst, buf.to_vec()));
            return Ok(buf.len());
        }
        self.check_reset(socket)?;
        let capacity = self.send_buffer;
        let conn = self.conn(socket);
        assert!(
            !conn.write_shut,
            "the stack sent after shutting down writing"
        );
        let n = buf.len().min(capacity - conn.unread);
        if n == 0 && !buf.is_empty() {
            conn.send_blocked = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        conn.received.extend_from_slice(&buf[..n]);
        conn.unread += n;
        Ok(n)
    }

    fn peek(&mut self, socket: &SimSocket, buf: &mut [u8]) -> io::Result<usize> {
        self.check_reset(socket)?;
        let receive_buffer = self.receive_buffer;
        let conn = &mut self.connections[socket.0];
        let available = conn.available(receive_buffer);
        if conn.peeked == available {
            if available == conn.download.len() {
                // The peer closed after its last byte.
                return Ok(0);
            }
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(available - conn.peeked);
        buf[..n].copy_from_slice(&conn.download[conn.peeked..conn.peeked + n]);
        conn.peeked += n;
        conn.peeked_max = conn.peeked_max.max(conn.peeked);
        let in_flight = conn.peeked - conn.consumed;
        self.peeked_bytes += n as u64;
        self.max_in_flight = self.max_in_flight.max(in_flight);
        Ok(n)
    }

    fn seek_peek(&mut self, socket: &SimSocket, offset: usize) -> io::Result<()> {
        self.check_reset(socket)?;
        if offset == 0 {
            self.rewinds += 1;
        }
        let conn = &mut self.connections[socket.0];
        // A resend starts within what was sent: the kernel would accept any offset (and peek
        // nothing past its data), but anything further is a bug in the stack.
        assert!(
            conn.consumed + offset <= conn.peeked_max,
            "the stack moved the peek offset {offset} past the {} bytes it ever peeked",
            conn.peeked_max - conn.consumed
        );
        conn.peeked = conn.consumed + offset;
        Ok(())
    }

    fn discard(&mut self, socket: &SimSocket, len: usize) -> io::Result<()> {
        self.check_reset(socket)?;
        let receive_buffer = self.receive_buffer;
        let conn = &mut self.connections[socket.0];
        let before = conn.available(receive_buffer);
        assert!(
            conn.consumed + len <= conn.peeked_max,
            "the stack discarded {len} bytes, {} more than it ever peeked",
            conn.consumed + len - conn.peeked_max
        );
        conn.consumed += len;
        conn.peeked = conn.peeked.max(conn.consumed);
        if conn.available(receive_buffer) > before {
            // The peer's next bytes arrived in the room made.
            let token = conn.token;
            self.wake(token, true, false);
        }
        Ok(())
    }

    fn take_error(&mut self, socket: &SimSocket) -> io::Result<Option<io::Error>> {
        Ok(self.check_reset(socket).err())
    }

    fn shutdown_write(&mut self, socket: &SimSocket) -> io::Result<()> {
        self.check_reset(socket)?;
        self.conn(socket).write_shut = true;
        Ok(())
    }

    fn abort(&mut self, socket: SimSocket) {
        self.conn(&socket).aborted = true;
    }

    fn udp_connect(&mut self, dst: SocketAddr, token: Token) -> io::Result<SimSocket> {
        Ok(self.new_udp(dst, token))
    }
    fn recv(&mut self, socket: &SimSocket, buf: &mut [u8]) -> io::Result<usize> {
        let peer = self.udp_peer(socket).expect("recv on a UDP socket");
        if std::mem::take(&mut peer.refused) {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        let (_, datagram) = peer.inbox.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        // As recv(2) without MSG_TRUNC: the rest of a longer datagram is lost.
        let n = datagram.len().min(buf.len());
        buf[..n].copy_from_slice(&datagram[..n]);
        Ok(n)
    }

    fn send_segments(
        &mut self,
        socket: &SimSocket,
        buf: &[u8],
        segment: usize,
    ) -> io::Result<usize> {
        assert!(segment > 0, "UDP GSO with a segment of 0 bytes");
        let peer = self
            .udp_peer(socket)
            .expect("send_segments on a UDP socket");
        // The kernel splits the buffer into datagrams of `segment` bytes, the last shorter.
        let dst = peer.dst;
        self.udp_sent
            .extend(buf.chunks(segment).map(|datagram| (dst, datagram.to_vec())));
        Ok(buf.len())
    }

    fn tcp_listen(
        &mut self,
        addr: SocketAddr,
        token: Token,
    ) -> io::Result<(SimSocket, SocketAddr)> {
        if self.listener.is_some() {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        self.listener = Some(token);
        let port = if addr.port() == 0 { 40000 } else { addr.port() };
        Ok((SimSocket(LISTENER), SocketAddr::new(addr.ip(), port)))
    }

    fn accept(
        &mut self,
        listener: &SimSocket,
        token: Token,
    ) -> io::Result<(SimSocket, SocketAddr)> {
        assert_eq!(listener.0, LISTENER, "accept on a connection");
        let peer = self
            .waiting_peers
            .pop_front()
            .ok_or(io::ErrorKind::WouldBlock)?;
        Ok((self.open(peer, token), peer))
    }

    fn udp_bind(&mut self, addr: SocketAddr, token: Token) -> io::Result<(SimSocket, SocketAddr)> {
        let port = if addr.port() == 0 { 40000 } else { addr.port() };
        let bound = SocketAddr::new(addr.ip(), port);
        Ok((self.new_udp(bound, token), bound))
    }

    fn recv_from(&mut self, socket: &SimSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let peer = self.udp_peer(socket).expect("recv_from on a UDP socket");
        let (from, datagram) = peer.inbox.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        let n = datagram.len().min(buf.len());
        buf[..n].copy_from_slice(&datagram[..n]);
        Ok((n, from))
    }

    fn send_to(&mut self, socket: &SimSocket, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.udp_peer(socket).expect("send_to on a UDP socket");
        self.udp_sent.push((to, buf.to_vec()));
        Ok(buf.len())
    }

    fn ping_connect(&mut self, _: IpAddr, _: Token) -> io::Result<(SimSocket, PingKind)> {
        unsupported()
    }
}
