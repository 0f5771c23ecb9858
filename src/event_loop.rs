//! The I/O shell around the core: one thread, one epoll set over the TAP, every host socket,
//! the exit fd and a signalfd. It does what [`Stack`] decides and nothing else.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::MsgFlags;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::api_server::ApiServer;
use crate::busy_poll::BusyPoll;
use crate::splice::Splices;
use crate::stack::Stack;
use crate::stack::frame::TxFrame;
use crate::stack::host::{Host, PingKind, SplicedStats, Token};
use crate::sys::{SocketFactory, sock};
use crate::throttle::Throttle;

const TOKEN_TAP: u64 = 1;
const TOKEN_EXIT_FD: u64 = 2;
const TOKEN_SIGNAL: u64 = 3;
const TOKEN_API: u64 = 4;
/// API clients: this kind in the high bits, the client's slot below (the stack's flow kinds
/// use 1..=4).
const KIND_API_CLIENT: u64 = 0x100 << 32;
/// Frames read from the TAP per wake-up before output is flushed, so neither direction
/// starves the other.
const TAP_BATCH: usize = 128;
/// Queued frames for the guest are written once they hold this much, even mid-batch: each
/// guest ACK lets a 64 KiB frame be peeked, and 128 of them (8 MiB) would leave the cache
/// before their copy into the TAP. Written sooner, they are copied from the cache.
const TX_WRITE_BYTES: usize = 256 * 1024;
/// Frames read from the TAP between polls of what the guest's ACKs let flows send: a few
/// ACKs share one peek of the host socket, and the data still goes out within the batch.
const SEND_POLL_FRAMES: usize = 4;
const INDEX_MASK: u64 = (1 << 32) - 1;
/// A spliced forward's socket (src/splice.rs numbers its relays and their two sides).
const KIND_SPLICE: u64 = 0x200 << 32;
/// Room for the largest frame: MTU 65521 plus the Ethernet header.
const FRAME_BUFFER: usize = 65536 + 64;

/// Host sockets, owned by the user who runs slirpnet, in the caller's network namespace.
pub struct SystemHost {
    epoll: Epoll,
    outbound: Option<Ipv4Addr>,
    outbound6: Option<Ipv6Addr>,
    loopback_only: bool,
    /// Logs running out of descriptors or memory for host sockets, once per interval: a guest
    /// opening flows meanwhile would otherwise write a line per refused flow.
    exhausted: Throttle,
    /// Makes sockets inside the guest's namespace, for spliced forwards; `None`: every
    /// forwarded connection crosses the TAP.
    factory: Option<SocketFactory>,
    splices: Splices,
}

impl SystemHost {
    /// `outbound` and `outbound6`: the source addresses of `--outbound-addr(6)`.
    pub fn new(outbound: Option<Ipv4Addr>, outbound6: Option<Ipv6Addr>) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        Ok(SystemHost {
            epoll,
            outbound,
            outbound6,
            loopback_only: false,
            exhausted: Throttle::default(),
            factory: None,
            splices: Splices::new(),
        })
    }

    /// Forwarded connections from host loopback are spliced into the guest's namespace
    /// through sockets `factory` makes there.
    pub fn enable_splice(&mut self, factory: SocketFactory) {
        self.factory = Some(factory);
    }

    /// A host that refuses every destination but loopback (`ENETUNREACH`): for tests and
    /// benchmarks that drive the stack in the machine's own network namespace, so that no
    /// guest frame, however random, can make a connection leave the machine.
    pub fn loopback_only() -> io::Result<Self> {
        let mut host = SystemHost::new(None, None)?;
        host.loopback_only = true;
        Ok(host)
    }

    fn check_destination(&self, dst: IpAddr) -> io::Result<()> {
        if self.loopback_only && !dst.is_loopback() {
            return Err(io::Error::from_raw_os_error(libc::ENETUNREACH));
        }
        Ok(())
    }

    fn register(&mut self, socket: &Socket, token: Token, flags: EpollFlags) -> io::Result<()> {
        let added = self.epoll.add(
            socket,
            EpollEvent::new(flags | EpollFlags::EPOLLET, token.0),
        );
        added.map_err(|errno| self.checked(errno.into()))
    }

    /// A new host socket (for a flow, not for a forward the API asked for).
    fn new_socket(&mut self, domain: Domain, ty: Type, protocol: Protocol) -> io::Result<Socket> {
        Socket::new(domain, ty, Some(protocol)).map_err(|e| self.checked(e))
    }

    /// Passes `error` on, logging it first (rate-limited) when it means the process or the
    /// machine ran out of descriptors or memory. The stack refuses the flow either way; other
    /// errors (a destination refusing, no route) are the guest's business and not logged.
    fn checked(&mut self, error: io::Error) -> io::Error {
        let exhausted = matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ENOSPC)
        );
        if exhausted {
            if let Some(suppressed) = self.exhausted.record(Instant::now()) {
                tracing::warn!(
                    %error,
                    suppressed,
                    "out of resources for host sockets: new flows are refused, existing ones carry on"
                );
            }
        }
        error
    }

    /// `--outbound-addr(6)` applies to connections leaving the host, not to its loopback.
    fn bind_outbound(&self, socket: &Socket, dst: SocketAddr) -> io::Result<()> {
        let source = match dst.ip() {
            IpAddr::V4(ip) if !ip.is_loopback() => self.outbound.map(IpAddr::V4),
            IpAddr::V6(ip) if !ip.is_loopback() => self.outbound6.map(IpAddr::V6),
            _ => None,
        };
        if let Some(addr) = source {
            socket.bind(&SockAddr::from(SocketAddr::new(addr, 0)))?;
        }
        Ok(())
    }
}

fn would_block_or(e: Errno) -> io::Error {
    io::Error::from(e)
}

impl Host for SystemHost {
    type Socket = Socket;

    fn tcp_connect(&mut self, dst: SocketAddr, token: Token) -> io::Result<Socket> {
        self.check_destination(dst.ip())?;
        let socket = self.new_socket(
            Domain::for_address(dst),
            Type::STREAM.nonblocking().cloexec(),
            Protocol::TCP,
        )?;
        // Segments arrive already sized by the guest's stack: do not hold them back.
        socket.set_tcp_nodelay(true)?;
        sock::set_peek_offset(socket.as_fd(), 0)?;
        self.bind_outbound(&socket, dst)?;
        match socket.connect(&SockAddr::from(dst)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        self.register(
            &socket,
            token,
            EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLRDHUP,
        )?;
        Ok(socket)
    }

    fn connect_result(&mut self, socket: &Socket) -> io::Result<()> {
        if let Some(error) = socket.take_error()? {
            return Err(error);
        }
        match socket.peer_addr() {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                Err(io::ErrorKind::WouldBlock.into())
            }
            Err(e) => Err(e),
        }
    }

    fn send(&mut self, socket: &Socket, buf: &[u8]) -> io::Result<usize> {
        socket.send_with_flags(buf, libc::MSG_NOSIGNAL)
    }

    fn take_error(&mut self, socket: &Socket) -> io::Result<Option<io::Error>> {
        socket.take_error()
    }

    fn peek(&mut self, socket: &Socket, buf: &mut [u8]) -> io::Result<usize> {
        nix::sys::socket::recv(socket.as_raw_fd(), buf, MsgFlags::MSG_PEEK).map_err(would_block_or)
    }

    fn peek_vectored(&mut self, socket: &Socket, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        nix::sys::socket::recvmsg::<()>(socket.as_raw_fd(), bufs, None, MsgFlags::MSG_PEEK)
            .map(|message| message.bytes)
            .map_err(would_block_or)
    }

    fn seek_peek(&mut self, socket: &Socket, offset: usize) -> io::Result<()> {
        // Never past what the receive buffer can hold, far below i32::MAX.
        let offset = i32::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        sock::set_peek_offset(socket.as_fd(), offset)
    }

    fn discard(&mut self, socket: &Socket, mut len: usize) -> io::Result<()> {
        while len > 0 {
            let n = sock::discard(socket.as_fd(), len)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            len -= n;
        }
        Ok(())
    }

    fn shutdown_write(&mut self, socket: &Socket) -> io::Result<()> {
        match socket.shutdown(std::net::Shutdown::Write) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
            other => other,
        }
    }

    fn abort(&mut self, socket: Socket) {
        // Linger 0 turns close() into a RST.
        let _ = socket.set_linger(Some(std::time::Duration::ZERO));
        drop(socket);
    }

    fn udp_connect(&mut self, dst: SocketAddr, token: Token) -> io::Result<Socket> {
        self.check_destination(dst.ip())?;
        let socket = self.new_socket(
            Domain::for_address(dst),
            Type::DGRAM.nonblocking().cloexec(),
            Protocol::UDP,
        )?;
        self.bind_outbound(&socket, dst)?;
        socket.connect(&SockAddr::from(dst))?;
        self.register(&socket, token, EpollFlags::EPOLLIN)?;
        Ok(socket)
    }

    fn send_segments(&mut self, socket: &Socket, buf: &[u8], segment: usize) -> io::Result<usize> {
        let segment = u16::try_from(segment).map_err(|_| io::ErrorKind::InvalidInput)?;
        let iov = [IoSlice::new(buf)];
        let cmsg = [nix::sys::socket::ControlMessage::UdpGsoSegments(&segment)];
        nix::sys::socket::sendmsg::<()>(
            socket.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io::Error::from)
    }

    fn recv(&mut self, socket: &Socket, buf: &mut [u8]) -> io::Result<usize> {
        nix::sys::socket::recv(socket.as_raw_fd(), buf, MsgFlags::empty()).map_err(would_block_or)
    }

    fn tcp_listen(&mut self, addr: SocketAddr, token: Token) -> io::Result<(Socket, SocketAddr)> {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.bind(&SockAddr::from(addr))?;
        // Hundreds of clients may arrive at once: the kernel caps this at somaxconn.
        socket.listen(4096)?;
        let bound = local_addr(&socket)?;
        self.register(&socket, token, EpollFlags::EPOLLIN)?;
        Ok((socket, bound))
    }

    fn accept(&mut self, listener: &Socket, token: Token) -> io::Result<(Socket, SocketAddr)> {
        let (socket, peer) = listener.accept().map_err(|e| self.checked(e))?;
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        socket.set_tcp_nodelay(true)?;
        sock::set_peek_offset(socket.as_fd(), 0)?;
        let peer = peer
            .as_socket()
            .ok_or_else(|| io::Error::other("accepted a non-IP peer"))?;
        self.register(
            &socket,
            token,
            EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLRDHUP,
        )?;
        Ok((socket, peer))
    }

    fn udp_bind(&mut self, addr: SocketAddr, token: Token) -> io::Result<(Socket, SocketAddr)> {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::DGRAM.nonblocking().cloexec(),
            Some(Protocol::UDP),
        )?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.bind(&SockAddr::from(addr))?;
        let bound = local_addr(&socket)?;
        self.register(&socket, token, EpollFlags::EPOLLIN)?;
        Ok((socket, bound))
    }

    fn recv_from(&mut self, socket: &Socket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (n, from) = nix::sys::socket::recvfrom::<nix::sys::socket::SockaddrStorage>(
            socket.as_raw_fd(),
            buf,
        )
        .map_err(would_block_or)?;
        let from = from
            .and_then(|f| {
                f.as_sockaddr_in()
                    .map(|a| SocketAddr::from(std::net::SocketAddrV4::from(*a)))
                    .or_else(|| {
                        f.as_sockaddr_in6()
                            .map(|a| SocketAddr::from(std::net::SocketAddrV6::from(*a)))
                    })
            })
            .ok_or_else(|| io::Error::other("datagram without an IP source"))?;
        Ok((n, from))
    }

    fn send_to(&mut self, socket: &Socket, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        socket.send_to(buf, &SockAddr::from(to))
    }

    fn ping_connect(&mut self, dst: IpAddr, token: Token) -> io::Result<(Socket, PingKind)> {
        self.check_destination(dst)?;
        let domain = Domain::for_address(SocketAddr::new(dst, 0));
        let protocol = match dst {
            IpAddr::V4(_) => Protocol::ICMPV4,
            IpAddr::V6(_) => Protocol::ICMPV6,
        };
        // Unprivileged ping sockets where net.ipv4.ping_group_range allows, else raw sockets
        // where we hold CAP_NET_RAW.
        let (socket, kind) =
            match Socket::new(domain, Type::DGRAM.nonblocking().cloexec(), Some(protocol)) {
                Ok(socket) => (socket, PingKind::Datagram),
                Err(_) => (
                    self.new_socket(domain, Type::RAW.nonblocking().cloexec(), protocol)?,
                    PingKind::Raw,
                ),
            };
        socket.connect(&SockAddr::from(SocketAddr::new(dst, 0)))?;
        self.register(&socket, token, EpollFlags::EPOLLIN)?;
        Ok((socket, kind))
    }

    fn splice_to_guest(
        &mut self,
        accepted: Socket,
        token: Token,
        guest: SocketAddr,
        forward: u64,
    ) -> Result<(), Socket> {
        let Some(factory) = &self.factory else {
            return Err(accepted);
        };
        let inside = match factory.tcp_socket(guest.is_ipv6()) {
            Ok(fd) => Socket::from(fd),
            Err(error) => {
                tracing::debug!(%error, "no socket in the guest's namespace: through the TAP");
                return Err(accepted);
            }
        };
        // Binding the guest's address works only where it is the namespace's own: the connect
        // then stays inside the namespace instead of leaving through the TAP back to us.
        if inside
            .bind(&SockAddr::from(SocketAddr::new(guest.ip(), 0)))
            .is_err()
        {
            return Err(accepted);
        }
        // Both ends' writers already decided how to segment; do not delay in between.
        let _ = inside.set_tcp_nodelay(true);
        match inside.connect(&SockAddr::from(guest)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(_) => return Err(accepted),
        }
        // The accept registered it for the TCP flow it would otherwise have become.
        if self.epoll.delete(&accepted).is_err() {
            return Err(accepted);
        }
        match self
            .splices
            .start(&self.epoll, KIND_SPLICE, forward, accepted, inside)
        {
            Ok(()) => Ok(()),
            Err((error, accepted, _inside)) => {
                tracing::debug!(%error, "splicing a forwarded connection: through the TAP");
                let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLRDHUP;
                if self.register(&accepted, token, flags).is_ok() {
                    return Err(accepted);
                }
                // Unwatchable, so no use to the TAP path either: the client sees a reset.
                self.abort(accepted);
                Ok(())
            }
        }
    }

    fn spliced_open(&self) -> usize {
        self.splices.open()
    }

    fn spliced_stats(&self, forward: u64) -> SplicedStats {
        self.splices.stats(forward)
    }

    fn forget_spliced(&mut self, forward: u64) {
        self.splices.forget(forward);
    }
}

/// Waits up to `timeout_ms` for host sockets and hands their readiness to the stack; returns
/// how many were ready. The event loop does this with the TAP in the same set; tests drive a
/// stack with it alone.
pub fn dispatch_host_events(stack: &mut Stack<SystemHost>, timeout_ms: u16) -> io::Result<usize> {
    let mut events = [EpollEvent::empty(); 64];
    let ready = match stack
        .host
        .epoll
        .wait(&mut events, EpollTimeout::from(timeout_ms))
    {
        Ok(n) => n,
        Err(Errno::EINTR) => 0,
        Err(e) => return Err(e.into()),
    };
    let now = Instant::now();
    for event in &events[..ready] {
        dispatch_host_event(stack, now, event);
    }
    Ok(ready)
}

fn dispatch_host_event(stack: &mut Stack<SystemHost>, now: Instant, event: &EpollEvent) {
    let flags = event.events();
    if event.data() & !INDEX_MASK == KIND_SPLICE {
        let host = &mut stack.host;
        host.splices
            .handle(&host.epoll, event.data() & INDEX_MASK, flags);
        return;
    }
    let readable = flags.intersects(
        EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR,
    );
    let writable = flags.intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR);
    let peer_closed =
        flags.intersects(EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR);
    stack.handle_host_event(now, Token(event.data()), readable, writable, peer_closed);
}

/// `struct virtio_net_hdr` (linux/virtio_net.h), in native byte order since the TAP is not
/// told otherwise (TUNSETVNETLE).
const VNET_HDR_LEN: usize = 10;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// Offset of the checksum field in a TCP header.
const TCP_CHECKSUM_OFFSET: u16 = 16;

fn vnet_header(frame: &TxFrame) -> [u8; VNET_HDR_LEN] {
    let mut header = [0u8; VNET_HDR_LEN];
    if let Some(gso) = frame.gso {
        header[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        // A single segment stays GSO_NONE (0): only its checksum is left to finish.
        if frame.is_segmented() {
            header[1] = if gso.ipv6 {
                VIRTIO_NET_HDR_GSO_TCPV6
            } else {
                VIRTIO_NET_HDR_GSO_TCPV4
            };
            header[4..6].copy_from_slice(&gso.mss.to_ne_bytes());
        }
        header[2..4].copy_from_slice(&gso.header_len.to_ne_bytes());
        header[6..8].copy_from_slice(&gso.csum_start.to_ne_bytes());
        header[8..10].copy_from_slice(&TCP_CHECKSUM_OFFSET.to_ne_bytes());
    }
    header
}

fn local_addr(socket: &Socket) -> io::Result<SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound to a non-IP address"))
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM, SIGINT, or the exit fd hung up.
    Requested,
    /// Run mode: the command exited with this status.
    Child(i32),
}

/// Signals the loop handles; block them before any child is forked so none is lost.
pub fn block_signals() -> io::Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGCHLD);
    set.thread_block()?;
    // A peer closing a socket must not kill us; send() already says MSG_NOSIGNAL, this
    // covers writes to the exit and ready fds.
    let mut pipe = SigSet::empty();
    pipe.add(Signal::SIGPIPE);
    pipe.thread_block()?;
    Ok(set)
}

/// Rate limits for the loop's own repeated faults.
#[derive(Debug, Default)]
pub struct FaultLogs {
    tap_down: Throttle,
    tap_write: Throttle,
}

pub struct EventLoop {
    pub stack: Stack<SystemHost>,
    /// The TAP was opened with `IFF_VNET_HDR`: every frame carries a virtio-net header.
    pub vnet_hdr: bool,
    pub api: Option<ApiServer>,
    pub tap: OwnedFd,
    pub exit_fd: Option<RawFd>,
    pub signals: SigSet,
    /// Run mode: the command whose exit ends the loop.
    pub child: Option<Pid>,
    pub faults: FaultLogs,
    /// Whether to poll for a while before sleeping (`--busy-poll`).
    pub busy_poll: BusyPoll,
}

impl EventLoop {
    pub fn run(mut self) -> io::Result<Exit> {
        let signal_fd = SignalFd::with_flags(
            &self.signals,
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )?;
        let epoll = &self.stack.host.epoll;
        epoll.add(&self.tap, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_TAP))?;
        epoll.add(
            &signal_fd,
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_SIGNAL),
        )?;
        if let Some(fd) = self.exit_fd {
            // Registered for no events: HUP and ERR are always reported, data is not. An fd
            // that is not open fails here, which means exit (slirp4netns exits on POLLNVAL).
            let borrowed = sock::borrow_inherited(fd);
            if epoll
                .add(
                    borrowed,
                    EpollEvent::new(EpollFlags::empty(), TOKEN_EXIT_FD),
                )
                .is_err()
            {
                return Ok(Exit::Requested);
            }
        }
        if let Some(api) = &self.api {
            epoll.add(
                &api.listener,
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_API),
            )?;
        }
        let mut events = vec![EpollEvent::empty(); 256];
        let mut frame = vec![0u8; FRAME_BUFFER];
        loop {
            let now = Instant::now();
            if let Some(api) = &mut self.api {
                if api.resume(now) {
                    let epoll = &self.stack.host.epoll;
                    epoll.modify(
                        &api.listener,
                        &mut EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_API),
                    )?;
                }
            }
            let api_deadline = self.api.as_mut().and_then(|api| api.expire(now));
            let next = match (self.stack.poll_at(), api_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let until_timer = next.map(|at| at.saturating_duration_since(now));
            let (mut ready, mut now) = (0, now);
            if let Some(budget) = self.busy_poll.budget(until_timer) {
                ready = self.poll_for(&mut events, budget)?;
                now = Instant::now();
            }
            if ready == 0 {
                let timeout = match next {
                    Some(at) => {
                        let left = at.saturating_duration_since(now);
                        let ms = left.as_millis().min(60_000) as u16;
                        // Round up so we do not wake just before the deadline.
                        EpollTimeout::from(ms.saturating_add(1))
                    }
                    None => EpollTimeout::NONE,
                };
                ready = match self.stack.host.epoll.wait(&mut events, timeout) {
                    Ok(n) => n,
                    Err(Errno::EINTR) => 0,
                    Err(e) => return Err(e.into()),
                };
            }
            let now = Instant::now();
            // Bytes read from and written to the TAP in this iteration, for busy polling.
            let mut moved = (0, 0);
            for event in &events[..ready] {
                match event.data() {
                    TOKEN_TAP => {
                        let (read, written) = self.drain_tap(now, &mut frame)?;
                        moved = (moved.0 + read, moved.1 + written);
                    }
                    TOKEN_EXIT_FD => return Ok(Exit::Requested),
                    TOKEN_API => self.accept_api_clients(now)?,
                    token if token & !INDEX_MASK == KIND_API_CLIENT => {
                        if let Some(api) = &mut self.api {
                            api.handle((token & INDEX_MASK) as usize, &mut self.stack);
                        }
                    }
                    TOKEN_SIGNAL => {
                        if let Some(exit) = self.handle_signals(&signal_fd)? {
                            return Ok(exit);
                        }
                    }
                    _ => dispatch_host_event(&mut self.stack, now, event),
                }
            }
            if self.stack.poll_at().is_some_and(|at| at <= now) {
                self.stack.poll_timers(now);
            }
            moved.1 += self.flush_stack()?;
            self.busy_poll.record(moved.0, moved.1);
        }
    }

    /// Polls the epoll set without sleeping for up to `budget` (src/busy_poll.rs says why),
    /// yielding the CPU between polls; returns how many events are ready, 0 if none came.
    fn poll_for(&mut self, events: &mut [EpollEvent], budget: Duration) -> io::Result<usize> {
        let start = Instant::now();
        loop {
            match self.stack.host.epoll.wait(events, EpollTimeout::ZERO) {
                Ok(0) | Err(Errno::EINTR) => {}
                Ok(n) => {
                    self.busy_poll.caught();
                    return Ok(n);
                }
                Err(e) => return Err(e.into()),
            }
            if start.elapsed() >= budget {
                self.busy_poll.went_quiet();
                return Ok(0);
            }
            // Lets a runnable task on this CPU (often the other end of the exchange) go first.
            let _ = nix::sched::sched_yield();
        }
    }

    fn accept_api_clients(&mut self, now: Instant) -> io::Result<()> {
        let Some(api) = &mut self.api else {
            return Ok(());
        };
        let mut unwatched = Vec::new();
        for (slot, stream) in api.accept(now, &mut self.stack.counters.limit_hits) {
            let flags = EpollFlags::EPOLLIN
                | EpollFlags::EPOLLOUT
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLET;
            let added = self.stack.host.epoll.add(
                stream,
                EpollEvent::new(flags, KIND_API_CLIENT | slot as u64),
            );
            if added.is_err() {
                // Out of memory for epoll: that client is closed, the loop carries on.
                unwatched.push(slot);
            }
        }
        for slot in unwatched {
            api.close(slot);
        }
        if api.paused() {
            // Still reports errors, never readiness: the loop sleeps until the pause ends.
            self.stack.host.epoll.modify(
                &api.listener,
                &mut EpollEvent::new(EpollFlags::empty(), TOKEN_API),
            )?;
        }
        Ok(())
    }

    /// Reads and handles what the guest sent; returns the bytes read from the TAP and those
    /// written to it on the way (long bursts are answered as they go).
    fn drain_tap(&mut self, now: Instant, frame: &mut [u8]) -> io::Result<(usize, usize)> {
        let (mut read_bytes, mut written_bytes) = (0, 0);
        let mut vnet = [0u8; VNET_HDR_LEN];
        for read_frames in 1..=TAP_BATCH {
            let read = if self.vnet_hdr {
                // The header says how the guest offloaded this frame (a partial checksum, a
                // TSO super-frame): the stack needs neither, it never verifies checksums and
                // takes TCP segments of any size.
                let mut iov = [IoSliceMut::new(&mut vnet), IoSliceMut::new(frame)];
                nix::sys::uio::readv(&self.tap, &mut iov).map(|n| n.saturating_sub(VNET_HDR_LEN))
            } else {
                nix::unistd::read(&self.tap, frame)
            };
            match read {
                Ok(0) if !self.vnet_hdr => return Err(io::Error::other("TAP device closed")),
                Ok(0) => {}
                Ok(n) => {
                    read_bytes += n;
                    self.stack.handle_frame(now, &frame[..n]);
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => break,
                Err(Errno::EBADFD) | Err(Errno::ENODEV) | Err(Errno::EIO) => {
                    return Err(io::Error::other("the TAP device was removed"));
                }
                Err(e) => return Err(io::Error::other(format!("reading from the TAP: {e}"))),
            }
            // Keep output moving during long bursts so the guest's ACKs are not delayed
            // behind a whole batch of input.
            if read_frames % SEND_POLL_FRAMES == 0 {
                self.stack.poll_sends();
            }
            if self.stack.tx.frames.len() >= TAP_BATCH {
                written_bytes += self.flush_stack()?;
            } else if self.stack.tx.queued_bytes() >= TX_WRITE_BYTES {
                written_bytes += self.write_frames()?;
            }
        }
        Ok((read_bytes, written_bytes))
    }

    /// Ends a batch: the guest gets its ACKs for the data the batch collected before that
    /// data goes to the host, then everything else. Returns the bytes written to the TAP.
    fn flush_stack(&mut self) -> io::Result<usize> {
        self.stack.acknowledge_batch();
        let acks = self.write_frames()?;
        self.stack.flush();
        Ok(acks + self.write_frames()?)
    }

    /// Writes the frames the stack made to the TAP; returns the bytes written.
    fn write_frames(&mut self) -> io::Result<usize> {
        let mut written_bytes = 0;
        for tx_frame in self.stack.take_frames() {
            let (frame, len) = (&tx_frame.buf, tx_frame.len);
            let written = if self.vnet_hdr {
                let vnet = vnet_header(&tx_frame);
                let iov = [IoSlice::new(&vnet), IoSlice::new(&frame[..len])];
                nix::sys::uio::writev(&self.tap, &iov)
            } else {
                nix::unistd::write(&self.tap, &frame[..len])
            };
            match written {
                Ok(_) => written_bytes += len,
                // The guest's queue is full: like a lost frame, TCP recovers.
                Err(Errno::EAGAIN) | Err(Errno::ENOBUFS) => {
                    self.stack.counters.dropped_tap_full += 1
                }
                // The guest set its interface down (`ip link set tap0 down`, a network
                // manager restarting it): frames are dropped until it is up again, as on a
                // real link. Not an error of ours.
                Err(Errno::EIO) => {
                    self.stack.counters.dropped_tap_down += 1;
                    if let Some(suppressed) = self.faults.tap_down.record(Instant::now()) {
                        tracing::info!(suppressed, "the TAP is down: frames to the guest dropped");
                    }
                }
                Err(Errno::EBADFD) | Err(Errno::ENODEV) => {
                    return Err(io::Error::other("the TAP device is gone"));
                }
                Err(error) => {
                    if let Some(suppressed) = self.faults.tap_write.record(Instant::now()) {
                        tracing::warn!(%error, suppressed, "writing a frame to the TAP failed");
                    }
                }
            }
            self.stack.tx.recycle(tx_frame.buf);
        }
        Ok(written_bytes)
    }

    fn handle_signals(&mut self, signal_fd: &SignalFd) -> io::Result<Option<Exit>> {
        while let Some(info) = signal_fd.read_signal()? {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => return Ok(Some(Exit::Requested)),
                Ok(Signal::SIGCHLD) => {
                    let Some(child) = self.child else { continue };
                    match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(_, code)) => return Ok(Some(Exit::Child(code))),
                        Ok(WaitStatus::Signaled(_, signal, _)) => {
                            return Ok(Some(Exit::Child(128 + signal as i32)));
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }
}
