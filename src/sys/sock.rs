//! Socket calls nix and socket2 do not wrap: the peek offset and discarding peeked bytes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `SO_PEEK_OFF`: each `MSG_PEEK` continues where the last one stopped, and consuming reads
/// move the offset back by what they consumed (socket(7)).
pub fn set_peek_offset(fd: BorrowedFd, offset: i32) -> io::Result<()> {
    // SAFETY: the option value is a valid c_int for the duration of the call, and the fd is
    // borrowed, so open.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            (&raw const offset).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Consumes `len` bytes from a TCP socket's receive queue without copying them
/// (`MSG_TRUNC`, tcp(7)).
pub fn discard(fd: BorrowedFd, len: usize) -> io::Result<usize> {
    // SAFETY: with MSG_TRUNC on a TCP socket the kernel never writes through the buffer
    // pointer, so a null pointer is not dereferenced; the fd is borrowed, so open.
    let rc = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Borrows an fd the caller handed us by number (`-e FD`) for the rest of the process.
/// Whether it is open is checked by the first call that uses it.
pub fn borrow_inherited(fd: std::os::fd::RawFd) -> BorrowedFd<'static> {
    // SAFETY: inherited fds named on the command line are never closed by this process, so
    // the borrow cannot outlive the descriptor; a number that is not open makes the first
    // system call on it fail with EBADF, which callers treat as "exit".
    unsafe { BorrowedFd::borrow_raw(fd) }
}
