//! The TAP device: `/dev/net/tun`, `TUNSETIFF`, and the virtio-net offload ioctls.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use super::{SysError, os};

/// A zeroed `struct ifreq` carrying `name` (which the caller validated: < IFNAMSIZ bytes).
pub(crate) fn ifreq_named(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (a byte array and a union of integers, sockaddrs and
    // a pointer); all-zero bytes are a valid value of every field.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}

/// The interface name stored in an `ifreq` (as the kernel wrote it back).
pub(crate) fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Checks a TAP name as the kernel's `dev_valid_name` does. A `%d` is allowed: the kernel
/// picks the number, and [`open_tap_device`] reports the name it chose.
pub(crate) fn validate_tap_name(name: &str) -> Result<(), SysError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(SysError::InvalidTapName(name.to_owned()))
    }
}

/// Opens `/dev/net/tun` and attaches it to the TAP `name` (`IFF_TAP | IFF_NO_PI`, plus
/// `IFF_VNET_HDR` when asked), creating the device unless it exists. Returns the fd and the
/// device's name. Must run inside the target network namespace.
pub(crate) fn open_tap_device(name: &str, vnet_hdr: bool) -> Result<(OwnedFd, String), SysError> {
    let fd = open(
        "/dev/net/tun",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(os("opening /dev/net/tun"))?;
    let mut ifr = ifreq_named(name);
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes back one `struct ifreq`; `ifr` is a valid,
    // exclusively borrowed ifreq that lives across the call.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETIFF,
            &mut ifr as *mut libc::ifreq,
        )
    };
    if rc < 0 {
        return Err(os(format!("creating TAP {name}"))(Errno::last()));
    }
    Ok((fd, ifreq_name(&ifr)))
}

/// Enables virtio-net offloads on a TAP opened with `vnet_hdr`: `TUNSETVNETHDRSZ` to
/// `hdr_len` (10 for `virtio_net_hdr`, 12 for `virtio_net_hdr_mrg_rxbuf`), then
/// `TUNSETOFFLOAD` with `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`, which lets the guest kernel
/// send unchecksummed 64 KiB TCP segments and accept them from us.
pub fn enable_vnet_offloads(tap: BorrowedFd, hdr_len: i32) -> Result<(), SysError> {
    let len: libc::c_int = hdr_len;
    // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer; `len` outlives the call.
    let rc = unsafe {
        libc::ioctl(
            tap.as_raw_fd(),
            libc::TUNSETVNETHDRSZ,
            &len as *const libc::c_int,
        )
    };
    if rc < 0 {
        return Err(os(format!(
            "setting the TAP's vnet header size to {hdr_len}"
        ))(Errno::last()));
    }
    let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long of flags); no
    // memory is passed.
    let rc = unsafe {
        libc::ioctl(
            tap.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(offloads),
        )
    };
    if rc < 0 {
        return Err(os("enabling TAP offloads (csum, tso4, tso6)")(Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_tap_name("tap0").is_ok());
        assert!(validate_tap_name("tap%d").is_ok());
        assert!(validate_tap_name("abcdefghijklmno").is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "abcdefghijklmnop"] {
            assert!(validate_tap_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ifreq_name(&ifreq_named("tap0")), "tap0");
    }
}
