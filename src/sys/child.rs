//! Fork a short-lived helper child that does one job and sends back a file descriptor, or
//! an error, over a `SOCK_SEQPACKET` socketpair.
//!
//! Wire format (one datagram): `F` with the fd in `SCM_RIGHTS`; `E` + errno (i32, native
//! endian) + the operation text; `M` + a verbatim message.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::{SysError, os};

/// Largest message a child sends; longer error texts are cut.
const MAX_MESSAGE: usize = 4096;

/// Runs `work` in a forked child and returns the fd it produced, or its error.
///
/// `what` describes the job for the rare case that the child dies without a word
/// (e.g. `opening TAP tap0`). The parent reaps the child before returning.
///
/// The caller must make sure `work` only does what is sound in the child of a possibly
/// multithreaded process: system calls, and allocation (glibc's fork makes malloc safe in
/// the child). It must not take locks other threads might hold (stdout, stderr, logging).
///
/// Right after the fork the child closes every descriptor above stderr except its end of
/// the socketpair and those in `keep` (which `work` needs): a helper forked while other
/// threads hold, say, a TAP fd must not keep that device open or busy.
pub(crate) fn run_in_child(
    what: &str,
    keep: &[RawFd],
    work: impl FnOnce() -> Result<OwnedFd, SysError>,
) -> Result<OwnedFd, SysError> {
    let (parent_end, child_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(os(format!("{what}: creating a socketpair")))?;

    // SAFETY: the child only runs `work` (restricted as documented above) and `child_main`,
    // which sends one message and ends with `_exit` without returning into the caller, so
    // no state shared with the parent's other threads is used after the fork.
    let fork_result = unsafe { fork() }.map_err(os(format!("{what}: forking a helper child")))?;
    match fork_result {
        ForkResult::Child => {
            drop(parent_end);
            let mut keep = keep.to_vec();
            keep.push(child_end.as_raw_fd());
            close_inherited_fds(&keep, false);
            child_main(child_end, work)
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            let received = receive(&parent_end);
            drop(parent_end);
            let status = reap(child);
            match received {
                Ok(Some(result)) => result,
                Ok(None) => Err(SysError::ChildDied {
                    what: what.to_owned(),
                    how: describe_status(status),
                }),
                Err(errno) => Err(os(format!("{what}: receiving the helper child's answer"))(
                    errno,
                )),
            }
        }
    }
}

fn child_main(sock: OwnedFd, work: impl FnOnce() -> Result<OwnedFd, SysError>) -> ! {
    let result = catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| {
        Err(SysError::Child(
            "the namespace helper child panicked".to_owned(),
        ))
    });
    let sent = match &result {
        Ok(fd) => send(&sock, b"F", Some(fd.as_raw_fd())),
        Err(err) => send(&sock, &encode_error(err), None),
    };
    let code = match (&result, sent) {
        (Ok(_), Ok(())) => 0,
        _ => 1,
    };
    super::exit_now(code)
}

pub(crate) fn encode_error(err: &SysError) -> Vec<u8> {
    let mut msg = Vec::with_capacity(MAX_MESSAGE);
    match err {
        SysError::Os { op, errno } => {
            msg.push(b'E');
            msg.extend_from_slice(&(*errno as i32).to_ne_bytes());
            msg.extend_from_slice(op.as_bytes());
        }
        other => {
            msg.push(b'M');
            msg.extend_from_slice(other.to_string().as_bytes());
        }
    }
    msg.truncate(MAX_MESSAGE);
    msg
}

pub(crate) fn decode_error(msg: &[u8]) -> SysError {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim_end().to_owned();
    match msg {
        [b'E', a, b, c, d, op @ ..] => SysError::Os {
            op: text(op),
            errno: Errno::from_raw(i32::from_ne_bytes([*a, *b, *c, *d])),
        },
        [b'M', rest @ ..] => SysError::Child(text(rest)),
        other => SysError::Child(format!(
            "malformed answer from the helper child: {:?}",
            text(other)
        )),
    }
}

pub(crate) fn send(sock: &OwnedFd, bytes: &[u8], fd: Option<RawFd>) -> Result<(), Errno> {
    let iov = [IoSlice::new(bytes)];
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(()),
        }
    }
}

/// Receives the child's one message. `Ok(None)`: the child closed without sending.
pub(crate) fn receive(sock: &OwnedFd) -> Result<Option<Result<OwnedFd, SysError>>, Errno> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; 4]);
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(msg) => {
                let mut fds = Vec::new();
                // A truncated control message (MSG_CTRUNC) yields an error here; any fds
                // that did arrive are then lost, which only happens on a protocol bug.
                if let Ok(cmsgs) = msg.cmsgs() {
                    for cmsg in cmsgs {
                        if let ControlMessageOwned::ScmRights(received) = cmsg {
                            for raw in received {
                                // SAFETY: the kernel just installed `raw` in our fd table
                                // for this message; nothing else knows about it, so we are
                                // its only owner.
                                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                            }
                        }
                    }
                }
                break (msg.bytes, fds);
            }
        }
    };
    let msg = &buf[..len];
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if msg.first() == Some(&b'F') {
        return Ok(Some(fds.into_iter().next().ok_or_else(|| {
            SysError::Child("the helper child's answer carried no file descriptor".to_owned())
        })));
    }
    Ok(Some(Err(decode_error(msg))))
}

/// In a freshly forked child: closes the descriptors above stderr that it inherited, except
/// `keep`; with `only_cloexec`, only those marked close-on-exec (they would be closed at
/// `execve` anyway; the others are meant to be inherited by the command).
///
/// Only for a forked child, which is single-threaded and never returns into the frames that
/// own those descriptors (it ends in `_exit` or `execve`).
pub(crate) fn close_inherited_fds(keep: &[RawFd], only_cloexec: bool) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    // Collect first: the directory's own fd is open while iterating (it is closed when
    // `dir` is dropped, so closing its number later just fails with EBADF).
    let fds: Vec<RawFd> = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd <= 2 || keep.contains(&fd) {
            continue;
        }
        if only_cloexec {
            // SAFETY: F_GETFD only reads the descriptor flags; harmless on any number.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            if flags < 0 || flags & libc::FD_CLOEXEC == 0 {
                continue;
            }
        }
        // SAFETY: we are a forked, single-threaded child; the objects owning these
        // descriptors belong to threads that do not exist here or to caller frames this
        // child never returns to (it ends in _exit or execve), so nothing uses or closes
        // them again. Descriptors in `keep` (the ones still in use) are left alone.
        unsafe { libc::close(fd) };
    }
}

/// Waits for `pid`, retrying on EINTR. `None` if it cannot be waited for.
pub(crate) fn reap(pid: Pid) -> Option<WaitStatus> {
    loop {
        match waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            Err(_) => return None,
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                return Some(status);
            }
            Ok(_) => continue,
        }
    }
}

pub(crate) fn describe_status(status: Option<WaitStatus>) -> String {
    match status {
        Some(WaitStatus::Exited(_, code)) => format!("exited with status {code} without an answer"),
        Some(WaitStatus::Signaled(_, sig, _)) => format!("was killed by {sig}"),
        _ => "vanished without an answer".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip() {
        let err = SysError::Os {
            op: "creating TAP tap0".to_owned(),
            errno: Errno::EBUSY,
        };
        let back = decode_error(&encode_error(&err));
        assert_eq!(back, err);
        assert_eq!(
            back.to_string(),
            "creating TAP tap0: Device or resource busy"
        );

        let err = SysError::MtuTooSmall {
            mtu: 50,
            dev: "tap0".to_owned(),
        };
        assert_eq!(
            decode_error(&encode_error(&err)).to_string(),
            err.to_string()
        );
    }

    #[test]
    fn child_error_and_fd_reach_the_parent() {
        let err = run_in_child("testing", &[], || Err(os("doing a thing")(Errno::EACCES)));
        assert_eq!(
            err.unwrap_err().to_string(),
            "doing a thing: Permission denied"
        );

        let fd = run_in_child("testing", &[], || {
            nix::fcntl::open(
                "/dev/null",
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(os("opening /dev/null"))
        })
        .unwrap();
        assert!(fd.as_raw_fd() >= 0);
    }

    #[test]
    fn a_crashing_child_is_reported() {
        let err = run_in_child("testing", &[], || crate::sys::exit_now(7)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "testing: the helper child exited with status 7 without an answer"
        );
    }
}
