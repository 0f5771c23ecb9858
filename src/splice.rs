//! Zero-copy relays for port forwards.
//!
//! A forwarded connection has two kernel TCP sockets: `host` (accepted on host loopback) and
//! `guest` (opened inside the container's namespace towards the guest's address). Instead of
//! carrying the bytes through the TAP and the userspace stack, each direction is moved with
//! `splice(2)` through its own pipe, so the payload never enters our address space (what pasta
//! does). This module owns those relays; the event loop registers nothing itself, it only
//! forwards the epoll events of the sockets registered here to [`Splices::handle`].
//!
//! The sockets are registered edge-triggered, so every pass over a relay must leave each
//! direction waiting on an edge that is sure to come: either the source said EAGAIN while the
//! pipe was empty (its next EPOLLIN edge wakes us) or the destination said EAGAIN while the pipe
//! held bytes (its next EPOLLOUT edge wakes us). `pump` loops until neither end makes progress,
//! which reaches one of those two states (or EOF).
//!
//! `splice` into a socket does not pass MSG_NOSIGNAL, so a write to a peer that has gone away can
//! raise SIGPIPE; the event loop blocks SIGPIPE (and Rust programs ignore it by default), so that
//! only surfaces here as EPIPE.

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::unistd::pipe2;
use socket2::Socket;

use crate::stack::host::SplicedStats;

/// Side bit of a token: the host (accepted) socket.
const HOST: usize = 0;
/// Side bit of a token: the guest (connecting) socket.
const GUEST: usize = 1;
/// Slots must fit in the token between the side bit and the caller's kind bits.
const MAX_SLOTS: usize = 1 << 30;
/// The pipe size asked for.
const PIPE_SIZE: i32 = 1 << 20;
/// Linux's default pipe capacity, used only if F_GETPIPE_SZ fails.
const DEFAULT_PIPE_SIZE: usize = 16 * 4096;

/// One direction of a relay: src → pipe → dst.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Capacity in bytes. Asked from the kernel rather than assumed: an unprivileged user past
    /// fs.pipe-user-pages-soft gets 2-page pipes, not the usual 16.
    capacity: usize,
    /// Bytes spliced in from src and not yet out to dst.
    queued: usize,
    /// src has reported EOF.
    eof: bool,
    /// dst has been shut down for writing (EOF passed on); the direction is finished.
    shut: bool,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // 1 MiB moves a whole burst per splice call: a third less CPU than the default 64 KiB
        // in the forward benchmarks (docs/performance.md). Past the user's pipe quota
        // (fs.pipe-user-pages-soft) the kernel refuses; the default size then still works.
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        let capacity = fcntl(&write, FcntlArg::F_GETPIPE_SZ)
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_PIPE_SIZE);
        Ok(Self {
            read,
            write,
            capacity,
            queued: 0,
            eof: false,
            shut: false,
        })
    }
}

/// What a pass over a relay decided.
enum Outcome {
    Keep,
    /// Both directions finished cleanly: close gracefully.
    Close,
    /// An error or a failed connect: close with a reset so the peers see it.
    Reset,
}

#[derive(Debug)]
struct Relay {
    /// Indexed by side: `[host, guest]`.
    sockets: [Socket; 2],
    /// Indexed by source side: `[host → guest, guest → host]`.
    pipes: [Pipe; 2],
    /// The guest socket's connect has completed; nothing moves before.
    connected: bool,
    /// The port forward it belongs to, for that forward's counters.
    owner: u64,
}

impl Relay {
    fn step(&mut self, side: usize, events: EpollFlags, moved: &mut [u64; 2]) -> Outcome {
        if !self.connected {
            if side == HOST {
                // Client gone before the guest answered: no point waiting for the connect.
                // take_error (not the flags alone) so a stale event for a reused slot is harmless.
                if events.contains(EpollFlags::EPOLLERR) && has_error(&self.sockets[HOST]) {
                    return Outcome::Reset;
                }
                // Its readable edge is not lost: the first pass after connecting reads anyway.
                return Outcome::Keep;
            }
            let guest = &self.sockets[GUEST];
            if has_error(guest) {
                return Outcome::Reset; // ECONNREFUSED, EHOSTUNREACH, ETIMEDOUT...
            }
            // getpeername fails (ENOTCONN) while the handshake is still in SYN_SENT, and after a
            // failed connect whose error was somehow already consumed.
            if guest.peer_addr().is_err() {
                return if events.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP) {
                    Outcome::Reset
                } else {
                    Outcome::Keep
                };
            }
            self.connected = true;
        }
        // Both directions on every event: an event on one socket may be the only wake-up the
        // other direction gets (e.g. the connect completing while host data already waits).
        for dir in [HOST, GUEST] {
            let src = &self.sockets[dir];
            let dst = &self.sockets[1 - dir];
            if pump(&mut self.pipes[dir], src, dst, &mut moved[dir]).is_err() {
                return Outcome::Reset;
            }
        }
        // A pending error the passes above did not touch (e.g. the socket is only a destination
        // with an empty pipe) would otherwise keep the relay until the other side moves.
        if events.contains(EpollFlags::EPOLLERR) && has_error(&self.sockets[side]) {
            return Outcome::Reset;
        }
        if self.pipes.iter().all(|p| p.shut) {
            Outcome::Close
        } else {
            Outcome::Keep
        }
    }
}

/// Whether SO_ERROR holds an error (consuming it); failing to ask counts as an error.
fn has_error(socket: &Socket) -> bool {
    !matches!(socket.take_error(), Ok(None))
}

/// Moves what can be moved in one direction, until neither end makes progress, then passes an
/// EOF on once the pipe is drained. `moved` counts bytes delivered to `dst`.
fn pump(pipe: &mut Pipe, src: &Socket, dst: &Socket, moved: &mut u64) -> io::Result<()> {
    // SPLICE_F_MORE is left out: it sets MSG_MORE, which holds a partial segment back until a
    // later send, and we never know that more is coming soon.
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    loop {
        let mut progress = false;
        // Flush first, so the fill below has the whole pipe to work with.
        if pipe.queued > 0 {
            match splice(&pipe.read, None, dst, None, pipe.queued, flags) {
                Ok(n) => {
                    progress = n > 0;
                    pipe.queued = pipe.queued.saturating_sub(n);
                    *moved += n as u64;
                }
                Err(Errno::EAGAIN) => {} // dst full: its EPOLLOUT edge comes when it drains
                Err(Errno::EINTR) => progress = true,
                Err(e) => return Err(e.into()),
            }
        }
        if !pipe.eof && pipe.queued < pipe.capacity {
            match splice(
                src,
                None,
                &pipe.write,
                None,
                pipe.capacity - pipe.queued,
                flags,
            ) {
                Ok(0) => {
                    pipe.eof = true;
                    progress = true;
                }
                Ok(n) => {
                    pipe.queued += n;
                    progress = true;
                }
                // src empty (edge comes with new data), or the pipe is out of slots though not
                // of bytes (socket data can fill a slot with less than a page): then it is not
                // empty, and the flush above either frees slots or waits on dst's edge.
                Err(Errno::EAGAIN) => {}
                Err(Errno::EINTR) => progress = true,
                Err(e) => return Err(e.into()),
            }
        }
        if !progress {
            break;
        }
    }
    if pipe.eof && pipe.queued == 0 && !pipe.shut {
        pipe.shut = true;
        dst.shutdown(Shutdown::Write)?;
    }
    Ok(())
}

/// The open splice relays, in a slab whose index is carried in the epoll tokens.
#[derive(Debug, Default)]
pub struct Splices {
    slots: Vec<Option<Relay>>,
    /// Vacant slots, reused before the slab grows.
    free: Vec<usize>,
    open: usize,
    /// Per owner (port forward): open relays and bytes, kept while the owner exists or still
    /// has relays open.
    owners: HashMap<u64, Owner>,
}

#[derive(Debug, Default)]
struct Owner {
    stats: SplicedStats,
    /// The forward was removed: drop the entry when its last relay ends.
    forgotten: bool,
}

impl Splices {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts relaying. Registers both sockets in `epoll` with data `kind | (index << 1) | side`
    /// (side 0 = host, 1 = guest; index < 2^30). On failure (pipe2 or epoll_ctl failed, e.g. out
    /// of fds) nothing stays registered and both sockets are given back.
    pub fn start(
        &mut self,
        epoll: &Epoll,
        kind: u64,
        owner: u64,
        host: Socket,
        guest: Socket,
    ) -> Result<(), (io::Error, Socket, Socket)> {
        let index = self.free.last().copied().unwrap_or(self.slots.len());
        if index >= MAX_SLOTS {
            return Err((io::Error::other("too many splice relays"), host, guest));
        }
        // The sockets' own O_NONBLOCK is what keeps splice from blocking on them
        // (SPLICE_F_NONBLOCK only covers the pipe), and a blocked loop stalls everything.
        if let Err(e) = host.set_nonblocking(true).and(guest.set_nonblocking(true)) {
            return Err((e, host, guest));
        }
        let pipes = match (Pipe::new(), Pipe::new()) {
            (Ok(a), Ok(b)) => [a, b],
            (Err(e), _) | (_, Err(e)) => return Err((e, host, guest)),
        };
        let flags = EpollFlags::EPOLLIN
            | EpollFlags::EPOLLOUT
            | EpollFlags::EPOLLRDHUP
            | EpollFlags::EPOLLET;
        let token = kind | (index as u64) << 1;
        if let Err(e) = epoll.add(&host, EpollEvent::new(flags, token | HOST as u64)) {
            return Err((e.into(), host, guest));
        }
        if let Err(e) = epoll.add(&guest, EpollEvent::new(flags, token | GUEST as u64)) {
            let _ = epoll.delete(&host);
            return Err((e.into(), host, guest));
        }
        // Adding an fd that is already ready queues an event at once, so a connect that
        // completed before this call is not missed.
        let relay = Relay {
            sockets: [host, guest],
            pipes,
            connected: false,
            owner,
        };
        if index == self.slots.len() {
            self.slots.push(Some(relay));
        } else {
            self.free.pop();
            self.slots[index] = Some(relay);
        }
        self.open += 1;
        self.owners.entry(owner).or_default().stats.active += 1;
        Ok(())
    }

    /// One epoll event; `token` is the event data with `kind` already masked off (so
    /// `index<<1|side`). Tokens of vacant slots are ignored.
    pub fn handle(&mut self, epoll: &Epoll, token: u64, events: EpollFlags) {
        let side = (token & 1) as usize;
        let Ok(index) = usize::try_from(token >> 1) else {
            return;
        };
        let Some(Some(relay)) = self.slots.get_mut(index) else {
            return;
        };
        // Bytes delivered, indexed by source side: `[host → guest, guest → host]`.
        let mut moved = [0; 2];
        let outcome = relay.step(side, events, &mut moved);
        if let Some(owner) = self.owners.get_mut(&relay.owner) {
            owner.stats.bytes_to_guest += moved[HOST];
            owner.stats.bytes_to_host += moved[GUEST];
        }
        match outcome {
            Outcome::Keep => {}
            Outcome::Close => self.remove(epoll, index, false),
            Outcome::Reset => self.remove(epoll, index, true),
        }
    }

    /// Relays still open.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Open relays and bytes moved for `owner`.
    pub fn stats(&self, owner: u64) -> SplicedStats {
        self.owners.get(&owner).map(|o| o.stats).unwrap_or_default()
    }

    /// `owner` is gone: its counters are dropped now, or when its last relay ends.
    pub fn forget(&mut self, owner: u64) {
        if let Some(entry) = self.owners.get_mut(&owner) {
            if entry.stats.active == 0 {
                self.owners.remove(&owner);
            } else {
                entry.forgotten = true;
            }
        }
    }

    /// Ends a relay, closing its 2 sockets and 4 pipe ends; `reset` closes the sockets with an
    /// RST (linger 0) so each peer learns the connection broke instead of seeing a clean EOF.
    fn remove(&mut self, epoll: &Epoll, index: usize, reset: bool) {
        let Some(relay) = self.slots.get_mut(index).and_then(Option::take) else {
            return;
        };
        for socket in &relay.sockets {
            // Closing would deregister too, but only once no other fd refers to the socket.
            let _ = epoll.delete(socket);
            if reset {
                let _ = socket.set_linger(Some(Duration::ZERO));
            }
        }
        if let Some(owner) = self.owners.get_mut(&relay.owner) {
            owner.stats.active -= 1;
            if owner.forgotten && owner.stats.active == 0 {
                self.owners.remove(&relay.owner);
            }
        }
        drop(relay);
        self.free.push(index);
        self.open -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::epoll::{EpollCreateFlags, EpollTimeout};
    use socket2::{Domain, Protocol, SockAddr, SockRef, Type};
    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::OnceLock;
    use std::thread::{self, JoinHandle};
    use std::time::Instant;

    /// The caller's kind bits, as the event loop would put them above the token.
    const KIND: u64 = 0xA5 << 56;
    const KIND_MASK: u64 = 0xFF << 56;
    /// The port forward every test relay belongs to.
    const OWNER: u64 = 7;

    /// Bytes the test relays moved, host → guest and guest → host.
    fn moved(splices: &Splices) -> (u64, u64) {
        let stats = splices.stats(OWNER);
        (stats.bytes_to_guest, stats.bytes_to_host)
    }
    /// Blocking I/O in the helper threads gives up after this, so a stalled relay fails the test
    /// instead of hanging it.
    const IO_TIMEOUT: Duration = Duration::from_secs(3);

    struct Rig {
        epoll: Epoll,
        splices: Splices,
    }

    impl Rig {
        fn new() -> Self {
            Self {
                epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap(),
                splices: Splices::new(),
            }
        }

        /// Runs the event loop until `done` holds or `limit` passes; returns whether it held.
        fn drive(&mut self, limit: Duration, mut done: impl FnMut(&Splices) -> bool) -> bool {
            let end = Instant::now() + limit;
            let mut events = [EpollEvent::empty(); 16];
            loop {
                if done(&self.splices) {
                    return true;
                }
                if Instant::now() >= end {
                    return false;
                }
                let n = match self.epoll.wait(&mut events, EpollTimeout::from(5u8)) {
                    Ok(n) => n,
                    Err(Errno::EINTR) => 0,
                    Err(e) => panic!("epoll_wait: {e}"),
                };
                for event in &events[..n] {
                    assert_eq!(event.data() & KIND_MASK, KIND);
                    self.splices
                        .handle(&self.epoll, event.data() & !KIND_MASK, event.events());
                }
            }
        }

        /// A client C whose accepted `host` socket is relayed to a guest socket connecting to
        /// `target`.
        fn relay_to(&mut self, target: SocketAddr) -> TcpStream {
            let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
            let c = TcpStream::connect(l1.local_addr().unwrap()).unwrap();
            let (host, _) = l1.accept().unwrap();
            let guest = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
            guest.set_nonblocking(true).unwrap();
            match guest.connect(&SockAddr::from(target)) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(Errno::EINPROGRESS as i32) => {}
                Err(e) => panic!("connect: {e}"),
            }
            let host = Socket::from(host);
            host.set_nonblocking(true).unwrap();
            self.splices
                .start(&self.epoll, KIND, OWNER, host, guest)
                .map_err(|(e, _, _)| e)
                .unwrap();
            timeouts(&c);
            c
        }

        /// Client C and the guest's server end S of a new relay.
        fn pair(&mut self) -> (TcpStream, TcpStream) {
            let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
            let c = self.relay_to(l2.local_addr().unwrap());
            let (s, _) = l2.accept().unwrap();
            timeouts(&s);
            (c, s)
        }
    }

    fn timeouts(s: &TcpStream) {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    }

    /// Period of the test pattern: a prime, so no page- or pipe-sized loss, duplication or
    /// reordering maps the stream onto itself.
    const PERIOD: usize = 65521;

    /// Two periods of pseudo-random bytes, so any window of up to PERIOD bytes is one slice.
    fn table() -> &'static [u8] {
        static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
        TABLE.get_or_init(|| {
            let mut x = 0x2545_F491_4F6C_DD1Du64;
            let one: Vec<u8> = (0..PERIOD)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            [one.as_slice(), one.as_slice()].concat()
        })
    }

    /// The pattern bytes at stream offset `pos` (`seed` shifts it, so each direction differs).
    fn expected(seed: usize, pos: usize, len: usize) -> &'static [u8] {
        let start = (pos + seed) % PERIOD;
        &table()[start..start + len.min(PERIOD)]
    }

    fn send_pattern(w: &mut impl Write, seed: usize, len: usize) -> io::Result<()> {
        let mut pos = 0;
        while pos < len {
            let chunk = expected(seed, pos, len - pos);
            w.write_all(chunk)?;
            pos += chunk.len();
        }
        Ok(())
    }

    /// Reads exactly `len` bytes and checks them against the pattern.
    fn recv_pattern(r: &mut impl Read, seed: usize, len: usize) -> Result<(), String> {
        let mut buf = vec![0u8; PERIOD];
        let mut pos = 0;
        while pos < len {
            let want = (len - pos).min(buf.len());
            let n = match r.read(&mut buf[..want]) {
                Ok(0) => return Err(format!("EOF after {pos} of {len} bytes")),
                Ok(n) => n,
                Err(e) => return Err(format!("read after {pos} of {len} bytes: {e}")),
            };
            if buf[..n] != *expected(seed, pos, n) {
                return Err(format!("wrong bytes in {n} read at offset {pos}"));
            }
            pos += n;
        }
        Ok(())
    }

    fn all_finished<T>(threads: &[JoinHandle<T>]) -> bool {
        threads.iter().all(JoinHandle::is_finished)
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn relays_both_ways_intact() {
        const N: usize = 8 * MIB;
        let mut rig = Rig::new();
        let (c, s) = rig.pair();
        let (mut c2, mut s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
        let (mut c, mut s) = (c, s);
        let threads: Vec<JoinHandle<Result<(), String>>> = vec![
            thread::spawn(move || send_pattern(&mut c2, 1, N).map_err(|e| e.to_string())),
            thread::spawn(move || send_pattern(&mut s2, 2, N).map_err(|e| e.to_string())),
            thread::spawn(move || recv_pattern(&mut c, 2, N)),
            thread::spawn(move || recv_pattern(&mut s, 1, N)),
        ];
        let finished = rig.drive(Duration::from_secs(5), |_| all_finished(&threads));
        for t in threads {
            t.join().unwrap().unwrap();
        }
        assert!(finished);
        assert_eq!(moved(&rig.splices), (N as u64, N as u64));
        assert_eq!(rig.splices.stats(OWNER + 1), SplicedStats::default());
    }

    #[test]
    fn half_close_passes_eof_and_allows_reply() {
        const N: usize = 300_000;
        const REPLY: usize = 200_000;
        let mut rig = Rig::new();
        let (mut c, mut s) = rig.pair();
        let client = thread::spawn(move || -> Result<Vec<u8>, String> {
            send_pattern(&mut c, 3, N).map_err(|e| e.to_string())?;
            c.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
            let mut reply = Vec::new();
            c.read_to_end(&mut reply).map_err(|e| e.to_string())?;
            Ok(reply)
        });
        let server = thread::spawn(move || -> Result<(), String> {
            recv_pattern(&mut s, 3, N)?;
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).map_err(|e| e.to_string())?;
            if !rest.is_empty() {
                return Err(format!("{} bytes past the end", rest.len()));
            }
            // Our write side is still open after the client's EOF.
            send_pattern(&mut s, 4, REPLY).map_err(|e| e.to_string())
            // Dropping s closes it: the client must see EOF after the reply.
        });
        let done = rig.drive(Duration::from_secs(2), |sp| {
            client.is_finished() && server.is_finished() && sp.open() == 0
        });
        server.join().unwrap().unwrap();
        let reply = client.join().unwrap().unwrap();
        assert_eq!(reply.len(), REPLY);
        recv_pattern(&mut reply.as_slice(), 4, REPLY).unwrap();
        assert!(done, "relay still open: {}", rig.splices.open());
        assert_eq!(moved(&rig.splices), (N as u64, REPLY as u64));

        // The slot is reused, and a relay whose both peers just close ends too. Its owner's
        // counters outlive the owner's removal only while the relay is open.
        let (c, s) = rig.pair();
        assert_eq!(rig.splices.open(), 1);
        assert_eq!(rig.splices.slots.len(), 1);
        assert_eq!(rig.splices.stats(OWNER).active, 1);
        rig.splices.forget(OWNER);
        assert_eq!(rig.splices.stats(OWNER).active, 1);
        drop((c, s));
        assert!(rig.drive(Duration::from_secs(1), |sp| sp.open() == 0));
        assert_eq!(rig.splices.stats(OWNER), SplicedStats::default());
        assert!(rig.splices.owners.is_empty());
    }

    #[test]
    fn slow_reader_backs_up_then_drains() {
        const N: usize = 48 * MIB;
        let mut rig = Rig::new();
        let (mut c, mut s) = rig.pair();
        let writer = thread::spawn(move || send_pattern(&mut c, 5, N).map_err(|e| e.to_string()));
        // S reads nothing: the guest socket and then the pipe fill, the host socket stops
        // being drained, and C's writes block.
        rig.drive(Duration::from_millis(300), |_| false);
        let stuck = moved(&rig.splices).0;
        rig.drive(Duration::from_millis(100), |_| false);
        assert_eq!(moved(&rig.splices).0, stuck, "still moving: not backed up");
        assert!((stuck as usize) < N);
        assert!(!writer.is_finished());
        // Now only edges (guest writable, host readable) can restart it.
        let reader = thread::spawn(move || recv_pattern(&mut s, 5, N));
        let done = rig.drive(Duration::from_secs(4), |_| {
            writer.is_finished() && reader.is_finished()
        });
        writer.join().unwrap().unwrap();
        reader.join().unwrap().unwrap();
        assert!(done);
        assert_eq!(moved(&rig.splices).0, N as u64);
    }

    #[test]
    fn data_sent_before_connect_completes_arrives() {
        let mut rig = Rig::new();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l1.local_addr().unwrap()).unwrap();
        timeouts(&c);
        let (host, _) = l1.accept().unwrap();
        // The host socket is readable before it is even registered, so its only edge comes
        // while the relay is not connected yet.
        c.write_all(b"early bytes").unwrap();
        let guest = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        guest.set_nonblocking(true).unwrap();
        let _ = guest.connect(&SockAddr::from(l2.local_addr().unwrap()));
        rig.splices
            .start(&rig.epoll, KIND, OWNER, Socket::from(host), guest)
            .map_err(|(e, _, _)| e)
            .unwrap();
        let (mut s, _) = l2.accept().unwrap();
        timeouts(&s);
        assert!(rig.drive(Duration::from_secs(1), |sp| moved(sp).0 == 11));
        let mut buf = [0u8; 11];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"early bytes");
    }

    #[test]
    fn refused_connect_resets_client() {
        let mut rig = Rig::new();
        // Bound but not listening: a SYN to it is answered with RST, and the port stays ours.
        let closed = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        closed
            .bind(&SockAddr::from(
                "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
            ))
            .unwrap();
        let target = closed.local_addr().unwrap().as_socket().unwrap();
        let mut c = rig.relay_to(target);
        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        assert!(rig.drive(Duration::from_secs(1), |sp| sp.open() == 0));
        let mut buf = [0u8; 16];
        match c.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("client saw {other:?}, not a reset or EOF"),
        }
        assert_eq!(moved(&rig.splices), (0, 0));
    }

    #[test]
    fn server_reset_resets_client() {
        let mut rig = Rig::new();
        let (mut c, mut s) = rig.pair();
        let writer = thread::spawn(move || -> Result<ErrorKind, String> {
            let mut pos = 0;
            while pos < 512 * MIB {
                let chunk = expected(6, pos, PERIOD);
                match c.write(chunk) {
                    Ok(n) => pos += n,
                    Err(e) => return Ok(e.kind()),
                }
            }
            Err("every write succeeded".into())
        });
        let server = thread::spawn(move || -> Result<(), String> {
            recv_pattern(&mut s, 6, 256 * 1024)?;
            SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .map_err(|e| e.to_string())
            // Dropped here with linger 0: an RST to the guest socket.
        });
        let done = rig.drive(Duration::from_secs(2), |sp| {
            writer.is_finished() && server.is_finished() && sp.open() == 0
        });
        server.join().unwrap().unwrap();
        let kind = writer.join().unwrap().unwrap();
        assert!(
            matches!(kind, ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
            "client write failed with {kind:?}, not a reset"
        );
        assert!(done, "relay still open");
    }

    #[test]
    fn stray_tokens_are_ignored() {
        let mut rig = Rig::new();
        let all = EpollFlags::all();
        rig.splices.handle(&rig.epoll, 0, all);
        rig.splices.handle(&rig.epoll, u64::MAX >> 8, all);
        let (c, s) = rig.pair();
        rig.splices.handle(&rig.epoll, 7 << 1, all); // vacant slot beyond the end
        drop((c, s));
        assert!(rig.drive(Duration::from_secs(1), |sp| sp.open() == 0));
        rig.splices.handle(&rig.epoll, 0, all); // the freed slot, host side
        rig.splices.handle(&rig.epoll, 1, all); // and guest side
        assert_eq!(rig.splices.open(), 0);
    }
}
