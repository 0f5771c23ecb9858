//! Privileged system calls: the only module allowed `unsafe`.
//!
//! - [`open_tap`]: fork a child that joins the target's user and network namespaces, opens
//!   (or attaches to) the TAP device, optionally configures the link, and passes the TAP fd
//!   back over `SCM_RIGHTS`.
//! - [`spawn_in_new_namespace`]: run mode, a child in a fresh user + network namespace that
//!   execs the command once released.
//! - [`seccomp::install`]: `--enable-seccomp`, the system call allow-list.
//! - [`enter_sandbox`]: `--enable-sandbox`, an empty root, no capabilities, no-new-privs.
//! - Small fd helpers for the event loop.
//!
//! Every unsafe block carries a `// SAFETY:` comment. Code that runs in a forked child only
//! makes system calls and formats error messages (glibc's `fork` resets the malloc locks in
//! the child, so allocating there is sound even when the parent is multithreaded); it never
//! returns into the caller: it ends with `_exit`.

#![allow(unsafe_code)]

mod child;
mod factory;
mod link;
mod netns;
mod run;
mod sandbox;
pub mod seccomp;
pub mod sock;
mod tap;

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};

pub use factory::SocketFactory;
pub use link::LinkConfig;
pub use netns::{NetnsRef, TapRequest, open_tap};
pub use run::{NamespacedChild, spawn_in_new_namespace};
pub use sandbox::enter_sandbox;
pub use tap::enable_vnet_offloads;

/// A failed system operation. `Display` names the operation and its object, then the
/// system's reason: `creating TAP tap0: Device or resource busy`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SysError {
    /// A system call failed; `op` says what we were doing, e.g.
    /// `joining the network namespace of pid 1234`.
    #[error("{op}: {}", strerror(.errno))]
    Os { op: String, errno: Errno },
    /// The MTU cannot be set on the device (below the Ethernet/IPv4 minimum of 68).
    #[error("cannot set MTU {mtu} on {dev}: the minimum is 68")]
    MtuTooSmall { mtu: u32, dev: String },
    /// A TAP name the kernel would refuse or silently mangle.
    #[error("invalid TAP name {0:?}: must be 1 to 15 bytes, without '/', ':', NUL or whitespace")]
    InvalidTapName(String),
    /// Run mode was given an empty command or an argument with a NUL byte.
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// A forked helper child failed without saying why (it crashed or was killed).
    #[error("{what}: the helper child {how}")]
    ChildDied { what: String, how: String },
    /// A message from a helper child that carries no errno (kept verbatim).
    #[error("{0}")]
    Child(String),
}

impl SysError {
    /// The errno behind this error, if it came from a system call.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            SysError::Os { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The C library's text for `errno` (`strerror`), e.g. `Bad file descriptor`. nix's own
/// `Errno::desc` differs from it for some codes (`Bad file number`, `Try again`).
pub fn strerror(errno: &Errno) -> String {
    let mut buf = [0 as libc::c_char; 256];
    // SAFETY: `buf` is writable for `buf.len()` bytes; the XSI strerror_r (which the libc
    // crate binds on glibc) writes at most that many bytes, NUL included, and returns 0.
    let rc = unsafe { libc::strerror_r(*errno as libc::c_int, buf.as_mut_ptr(), buf.len()) };
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    if rc != 0 || bytes.is_empty() {
        return format!("error {}", *errno as i32);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Builds a `map_err` closure: `.map_err(os("opening /dev/net/tun"))`.
pub(crate) fn os(op: impl Into<String>) -> impl FnOnce(Errno) -> SysError {
    let op = op.into();
    move |errno| SysError::Os { op, errno }
}

/// Sets `O_NONBLOCK` on a file descriptor (keeping its other status flags).
pub fn set_nonblocking(fd: BorrowedFd) -> Result<(), SysError> {
    let raw = fd.as_raw_fd();
    let flags = fcntl(fd, FcntlArg::F_GETFL)
        .map_err(os(format!("reading the status flags of fd {raw}")))?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(os(format!("setting O_NONBLOCK on fd {raw}")))?;
    Ok(())
}

/// `--ready-fd`: writes the single byte `1`, then closes `fd`. Takes ownership of `fd`: the
/// caller must not use or close it afterwards (it is closed even when the write fails).
/// A descriptor that is not open is reported (`EBADF`), not closed.
pub fn write_ready_byte(fd: RawFd) -> Result<(), SysError> {
    let op = || format!("writing to the ready-fd {fd}");
    // SAFETY: F_GETFD only queries the descriptor flags of `fd`; it touches no memory and is
    // harmless on a descriptor that is not open (it fails with EBADF).
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(os(op())(Errno::last()));
    }
    // SAFETY: `fd` is open (checked just above) and the caller hands its ownership to us, so
    // nothing else closes it; OwnedFd closes it exactly once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    loop {
        match nix::unistd::write(&owned, b"1") {
            Ok(1) => break,
            Ok(_) => return Err(os(op())(Errno::EIO)),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(os(op())(e)),
        }
    }
    // close(2) errors on a pipe or socket are not actionable, but report them anyway.
    nix::unistd::close(owned).map_err(os(format!("closing the ready-fd {fd}")))
}

/// `PR_SET_PDEATHSIG(SIGKILL)`: the calling process is killed when the thread that forked
/// it exits. Survives `execve` (except of set-user-ID programs).
pub fn set_parent_death_signal() -> Result<(), SysError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(os(
        "setting the parent death signal (PR_SET_PDEATHSIG SIGKILL)",
    ))
}

/// `_exit(2)`: ends a forked child at once, without running atexit handlers, destructors or
/// stdio flushes that belong to the parent's state.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an integer and never returns; it is async-signal-safe and has no
    // preconditions.
    unsafe { libc::_exit(code) }
}
