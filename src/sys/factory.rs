//! A child process that stays in the container's user and network namespaces and makes TCP
//! sockets there on request, for spliced port forwards (src/splice.rs).
//!
//! A socket belongs to the network namespace it was created in, whoever uses it later. The
//! event loop cannot enter the container's namespace itself: a multithreaded process (or an
//! unprivileged one, in the host's user namespace) may not `setns` into it. So a child forked
//! at start-up joins the namespaces the way the TAP child does and then answers, over a
//! `SOCK_SEQPACKET` socketpair, each one-byte request (`4` or `6`) with a fresh non-blocking
//! TCP socket (`SCM_RIGHTS`) or an error, in the wire format of src/sys/child.rs. It ends when
//! the parent's end closes (the parent exited or dropped the factory), and is killed with its
//! parent (`PR_SET_PDEATHSIG`). With `--enable-seccomp` it runs under an allow-list of its own,
//! installed once it is in the namespaces (src/sys/seccomp.rs).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, Shutdown, SockFlag, SockType, recv, setsockopt, shutdown, socket,
    socketpair, sockopt,
};
use nix::sys::time::TimeVal;
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid};

use super::child::{close_inherited_fds, encode_error, reap, receive, send};
use super::netns::{NsFile, join, open_namespaces};
use super::{NetnsRef, SysError, exit_now, os, set_parent_death_signal};

/// How long the event loop waits for a socket before giving up on the shortcut for that
/// connection (the child answers in microseconds; this only bounds a child that is stuck).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// The parent's handle on the socket-making child.
#[derive(Debug)]
pub struct SocketFactory {
    sock: OwnedFd,
    child: Pid,
}

impl SocketFactory {
    /// Forks the child into the namespaces `netns` (and `userns`, as for the TAP), with its
    /// seccomp allow-list when `seccomp`, and checks that it can make a socket there.
    pub fn spawn(netns: &NetnsRef, userns: Option<&Path>, seccomp: bool) -> Result<Self, SysError> {
        let (netns, userns) = open_namespaces(netns, userns)?;
        let (parent_end, child_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(os("socket helper: creating a socketpair"))?;
        let parent = getpid();
        // SAFETY: the child only makes system calls and small allocations (glibc's fork makes
        // malloc usable in the child), takes no lock another thread may hold, and ends with
        // `_exit` without returning into the caller.
        let forked = unsafe { fork() }.map_err(os("socket helper: forking"))?;
        match forked {
            ForkResult::Child => {
                drop(parent_end);
                let mut keep = vec![child_end.as_raw_fd(), netns.fd.as_raw_fd()];
                keep.extend(userns.as_ref().map(|ns| ns.fd.as_raw_fd()));
                close_inherited_fds(&keep, false);
                factory_main(child_end, parent, netns, userns, seccomp)
            }
            ForkResult::Parent { child } => {
                drop(child_end);
                drop(netns);
                drop(userns);
                setsockopt(
                    &parent_end,
                    sockopt::ReceiveTimeout,
                    &TimeVal::from(libc::timeval {
                        tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
                        tv_usec: 0,
                    }),
                )
                .map_err(os("socket helper: setting a receive timeout"))?;
                let factory = SocketFactory {
                    sock: parent_end,
                    child,
                };
                // The child's first answer also says whether it got into the namespaces.
                factory.tcp_socket(false)?;
                Ok(factory)
            }
        }
    }

    /// A non-blocking, close-on-exec TCP socket in the container's network namespace.
    pub fn tcp_socket(&self, ipv6: bool) -> Result<OwnedFd, SysError> {
        // A failed send (the child is gone) shows as end-of-file below.
        let _ = send(&self.sock, if ipv6 { b"6" } else { b"4" }, None);
        match receive(&self.sock) {
            Ok(Some(answer)) => answer,
            Ok(None) => Err(SysError::Child(
                "the namespace socket helper exited".to_owned(),
            )),
            Err(errno) => Err(os("receiving a socket from the namespace socket helper")(
                errno,
            )),
        }
    }
}

impl Drop for SocketFactory {
    fn drop(&mut self) {
        // The child sees end-of-file and exits; the fd itself closes after this body.
        let _ = shutdown(self.sock.as_raw_fd(), Shutdown::Both);
        reap(self.child);
    }
}

fn factory_main(
    sock: OwnedFd,
    parent: Pid,
    netns: NsFile,
    userns: Option<NsFile>,
    seccomp: bool,
) -> ! {
    let joined = set_parent_death_signal()
        .and_then(|()| {
            if getppid() == parent {
                Ok(())
            } else {
                Err(SysError::Child("the parent exited".to_owned()))
            }
        })
        .and_then(|()| join(&netns, userns.as_ref()));
    drop(netns);
    drop(userns);
    let joined = joined.and_then(|()| {
        if seccomp {
            super::seccomp::install_for_socket_helper()
        } else {
            Ok(())
        }
    });
    if let Err(error) = joined {
        let _ = send(&sock, &encode_error(&error), None);
        exit_now(1);
    }
    let mut request = [0u8; 1];
    loop {
        match recv(sock.as_raw_fd(), &mut request, MsgFlags::empty()) {
            Ok(1) => {}
            Err(Errno::EINTR) => continue,
            // End-of-file: the parent is done with us.
            _ => exit_now(0),
        }
        let family = if request[0] == b'6' {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let sent = match socket(family, SockType::Stream, flags, None) {
            Ok(fd) => send(&sock, b"F", Some(fd.as_raw_fd() as RawFd)),
            Err(errno) => send(
                &sock,
                &encode_error(&os("making a socket in the namespace")(errno)),
                None,
            ),
        };
        if sent.is_err() {
            exit_now(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In our own namespaces (no setns needed beyond the network namespace we are in): the
    /// factory hands out working sockets, and its child is gone once it is dropped.
    #[test]
    fn sockets_come_back_and_the_child_ends_with_the_factory() {
        for seccomp in [false, true] {
            let factory =
                SocketFactory::spawn(&NetnsRef::Path("/proc/self/ns/net".into()), None, seccomp)
                    .expect("spawn");
            let child = factory.child;
            for ipv6 in [false, true, false] {
                let fd = factory.tcp_socket(ipv6).expect("socket");
                let socket = socket2::Socket::from(fd);
                assert_eq!(socket.r#type().unwrap(), socket2::Type::STREAM);
                assert_eq!(socket.domain().unwrap() == socket2::Domain::IPV6, ipv6);
                assert!(socket.nonblocking().unwrap());
            }
            // /proc/PID/status: "Seccomp: 2" is filter mode.
            let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap();
            let mode = status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .map(str::trim);
            assert_eq!(mode, Some(if seccomp { "2" } else { "0" }), "{status}");
            drop(factory);
            // Reaped by drop (it exited, not killed by SIGSYS on the way out): the pid no
            // longer names our child.
            assert_eq!(
                nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
                Err(Errno::ECHILD)
            );
        }
    }

    #[test]
    fn a_namespace_that_cannot_be_opened_is_an_error() {
        let error = SocketFactory::spawn(&NetnsRef::Path("/nonexistent/netns".into()), None, false)
            .expect_err("no such file");
        assert_eq!(error.errno(), Some(Errno::ENOENT));
    }
}
