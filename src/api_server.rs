//! The API socket's I/O: a non-blocking Unix listener in the event loop's epoll set, one
//! request per connection (COMPAT.md section 2). A client that sends nothing, or sends
//! slowly, only holds its own slot until its deadline: the data plane never waits for it.

use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::api::{self, ApiError, Request};
use crate::config::NetConfig;
use crate::event_loop::SystemHost;
use crate::stack::Stack;
use crate::stack::limits::{Bound, LimitHits};
use crate::throttle::Throttle;

/// How long a client may take to send its request and read the reply.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the listener rests after `accept` failed (out of descriptors, most likely).
pub const ACCEPT_RETRY: Duration = Duration::from_millis(250);

struct Client {
    stream: UnixStream,
    request: Vec<u8>,
    /// The reply and how much of it was written.
    reply: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

pub struct ApiServer {
    pub listener: UnixListener,
    /// The socket file's directory (an `O_PATH` fd opened at bind) and name: the file is
    /// removed through it on exit, which works after `--enable-sandbox` hid the path.
    dir: std::os::fd::OwnedFd,
    name: PathBuf,
    /// The socket file's device and inode when bound: on exit, the name is removed only if
    /// it still leads there.
    file_id: Option<(u64, u64)>,
    clients: Vec<Option<Client>>,
    /// Clients served at once (`--limit api-clients`); more are accepted and closed.
    max_clients: usize,
    net: NetConfig,
    ipv6: bool,
    /// Logs failing accepts once per interval.
    accept_faults: Throttle,
    /// After a failed accept the listener leaves the epoll set until then: it stays readable
    /// while the connection waits, and would wake the loop at once, forever (EMFILE).
    paused_until: Option<Instant>,
}

/// What the event loop should do with a client after an event.
enum Progress {
    Open,
    Done,
}

impl ApiServer {
    /// Binds the socket, replacing a stale file at `path`.
    pub fn bind(path: &Path, net: NetConfig, ipv6: bool, max_clients: usize) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let file_id = std::fs::symlink_metadata(path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = nix::fcntl::open(
            parent,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|errno| {
            let _ = std::fs::remove_file(path);
            io::Error::from_raw_os_error(errno as i32)
        })?;
        Ok(ApiServer {
            listener,
            dir,
            name: path
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_else(|| path.to_owned()),
            file_id,
            clients: Vec::new(),
            max_clients,
            net,
            ipv6,
            accept_faults: Throttle::default(),
            paused_until: None,
        })
    }

    /// Accepts waiting clients; returns the slots to register with epoll. Clients over the
    /// bound are closed at once and counted in `hits`.
    pub fn accept(&mut self, now: Instant, hits: &mut LimitHits) -> Vec<(usize, &UnixStream)> {
        let mut accepted = Vec::new();
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(error) => {
                    if let Some(suppressed) = self.accept_faults.record(now) {
                        tracing::warn!(
                            %error,
                            suppressed,
                            "API socket: accept failed; trying again every {} ms",
                            ACCEPT_RETRY.as_millis()
                        );
                    }
                    self.paused_until = Some(now + ACCEPT_RETRY);
                    break;
                }
            };
            let open = self.clients.iter().filter(|c| c.is_some()).count();
            if open >= self.max_clients {
                hits.count(Bound::ApiClients);
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let client = Client {
                stream,
                request: Vec::new(),
                reply: None,
                deadline: now + CLIENT_TIMEOUT,
            };
            let slot = match self.clients.iter().position(Option::is_none) {
                Some(slot) => {
                    self.clients[slot] = Some(client);
                    slot
                }
                None => {
                    self.clients.push(Some(client));
                    self.clients.len() - 1
                }
            };
            accepted.push(slot);
        }
        accepted
            .into_iter()
            .filter_map(|slot| Some((slot, &self.clients[slot].as_ref()?.stream)))
            .collect()
    }

    /// A client's socket is ready: read its request, answer, write the reply.
    pub fn handle(&mut self, slot: usize, stack: &mut Stack<SystemHost>) {
        let Some(client) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let progress = match client.reply {
            None => read_request(client, &self.net, self.ipv6, stack),
            Some(_) => write_reply(client),
        };
        if matches!(progress, Progress::Done) {
            self.clients[slot] = None;
        }
    }

    /// Closes a client without answering.
    pub fn close(&mut self, slot: usize) {
        if let Some(client) = self.clients.get_mut(slot) {
            *client = None;
        }
    }

    /// Closes clients past their deadline; returns the next deadline (a client's, or the
    /// end of a pause).
    pub fn expire(&mut self, now: Instant) -> Option<Instant> {
        for slot in &mut self.clients {
            if slot.as_ref().is_some_and(|c| c.deadline <= now) {
                *slot = None;
            }
        }
        let next_client = self.clients.iter().flatten().map(|c| c.deadline).min();
        next_client.into_iter().chain(self.paused_until).min()
    }

    /// The listener must leave the epoll set: an accept failed.
    pub fn paused(&self) -> bool {
        self.paused_until.is_some()
    }

    /// Ends a pause that is over; true when the listener must be watched again.
    pub fn resume(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|until| until <= now) {
            self.paused_until = None;
            return true;
        }
        false
    }
}

impl Drop for ApiServer {
    /// Removes the socket file, if the name still leads to the file we bound. Someone may
    /// have deleted it while we ran (slirpnet cannot notice: clients already connected carry
    /// on, new ones cannot reach us), and perhaps put another there, such as the socket of a
    /// slirpnet started for the same container: that one stays.
    fn drop(&mut self) {
        let found = nix::sys::stat::fstatat(
            &self.dir,
            &self.name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        let ours = found.is_ok_and(|st| Some((st.st_dev, st.st_ino)) == self.file_id);
        if !ours {
            tracing::debug!(name = ?self.name, "API socket file gone or replaced: left as it is");
            return;
        }
        let flags = nix::unistd::UnlinkatFlags::NoRemoveDir;
        let _ = nix::unistd::unlinkat(&self.dir, &self.name, flags);
    }
}

fn read_request(
    client: &mut Client,
    net: &NetConfig,
    ipv6: bool,
    stack: &mut Stack<SystemHost>,
) -> Progress {
    let mut chunk = [0u8; 4096];
    let complete = loop {
        match client.stream.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => {
                client.request.extend_from_slice(&chunk[..n]);
                if client.request.len() >= api::MAX_REQUEST_LEN {
                    break true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Progress::Done,
        }
    };
    if !complete {
        return Progress::Open;
    }
    let reply = respond(&client.request, net, ipv6, stack);
    client.reply = Some((reply.into_bytes(), 0));
    write_reply(client)
}

fn write_reply(client: &mut Client) -> Progress {
    let Some((reply, written)) = &mut client.reply else {
        return Progress::Done;
    };
    while *written < reply.len() {
        match client.stream.write(&reply[*written..]) {
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Open,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Progress::Done,
        }
    }
    Progress::Done
}

/// Answers one request against the running stack.
pub fn respond(
    request: &[u8],
    net: &NetConfig,
    ipv6: bool,
    stack: &mut Stack<SystemHost>,
) -> String {
    let request = match api::parse_request(request, net, ipv6) {
        Ok(request) => request,
        Err(error) => return api::error_reply(&error),
    };
    match request {
        Request::AddHostfwd(spec) => match stack.add_forward(spec.proto, spec.host, spec.guest) {
            Ok(info) => {
                let ephemeral = spec.is_ephemeral().then_some(info.host.port());
                api::add_reply(info.id, ephemeral)
            }
            Err(error) => {
                tracing::info!(host = %spec.host, %error, "add_hostfwd: bind failed");
                api::error_reply(&ApiError::AddFailed)
            }
        },
        Request::ListHostfwd => api::list_reply(&stack.forwards()),
        Request::RemoveHostfwd(id) => {
            if stack.remove_forward(id) {
                api::remove_reply()
            } else {
                api::error_reply(&ApiError::RemoveBadId)
            }
        }
        Request::GetStats => api::stats_reply(&stats(stack)),
    }
}

fn stats(stack: &Stack<SystemHost>) -> api::Stats {
    let forwards = stack
        .forward_stats()
        .into_iter()
        .map(|(info, s)| api::ForwardStats {
            id: info.id,
            connections_total: s.connections_total,
            connections_active: s.connections_active,
            bytes_to_guest: s.bytes_to_guest,
            bytes_to_host: s.bytes_to_host,
        })
        .collect();
    api::Stats {
        forwards,
        counters: stack.counter_list(),
    }
}
