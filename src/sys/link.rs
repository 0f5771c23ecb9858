//! `--configure`: link setup inside the namespace through the classic `SIOC*` ioctls on an
//! `AF_INET` datagram socket (no netlink, no external binaries), in slirp4netns's order:
//! `lo` up, MTU, MAC, address, netmask, TAP up, default route.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use super::tap::ifreq_named;
use super::{SysError, os};

/// What `--configure` sets on the TAP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// 68..=65535 (the kernel's limits for an Ethernet device).
    pub mtu: u32,
    /// `--macaddress`; `None` keeps the kernel's random one.
    pub mac: Option<[u8; 6]>,
    /// The guest address, net+100.
    pub address: Ipv4Addr,
    /// 1..=32.
    pub prefix_len: u8,
    /// The default route's next hop, net+2.
    pub gateway: Ipv4Addr,
}

/// The smallest MTU an Ethernet device (and IPv4) accepts.
pub(crate) const MIN_MTU: u32 = 68;

impl LinkConfig {
    /// Checks what can be checked before forking, so nothing is created for a request that
    /// must fail.
    pub(crate) fn validate(&self, dev: &str) -> Result<(), SysError> {
        if self.mtu < MIN_MTU {
            return Err(SysError::MtuTooSmall {
                mtu: self.mtu,
                dev: dev.to_owned(),
            });
        }
        if self.prefix_len > 32 {
            return Err(SysError::Os {
                op: format!("assigning {}/{} to {dev}", self.address, self.prefix_len),
                errno: Errno::EINVAL,
            });
        }
        Ok(())
    }

    fn netmask(&self) -> Ipv4Addr {
        let bits = u32::from(self.prefix_len);
        Ipv4Addr::from(u32::MAX.checked_shl(32 - bits).unwrap_or(0))
    }
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A `struct sockaddr` holding an IPv4 address (as `struct sockaddr_in`, port 0).
fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let mut data = [0 as libc::c_char; 14];
    for (dst, src) in data[2..6].iter_mut().zip(addr.octets()) {
        *dst = src as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data: data,
    }
}

/// A `struct sockaddr` holding an Ethernet hardware address (for `SIOCSIFHWADDR`).
fn sockaddr_ether(mac: &[u8; 6]) -> libc::sockaddr {
    let mut data = [0 as libc::c_char; 14];
    for (dst, src) in data.iter_mut().zip(mac) {
        *dst = *src as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::ARPHRD_ETHER,
        sa_data: data,
    }
}

/// `struct rtentry` as the kernel reads it for `SIOCADDRT` (glibc's libc crate lacks it).
/// The layout matches `<net/route.h>` on Linux for both pointer widths.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// Issues one `SIOC*` ioctl with an `ifreq`.
fn ioctl_ifreq(sock: &OwnedFd, request: libc::Ioctl, ifr: &mut libc::ifreq) -> Result<(), Errno> {
    // SAFETY: every request passed here (SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFMTU,
    // SIOCSIFHWADDR, SIOCSIFADDR, SIOCSIFNETMASK) reads and/or writes exactly one
    // `struct ifreq`, and `ifr` is a valid, exclusively borrowed one.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, ifr as *mut libc::ifreq) };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Sets `IFF_UP` on `dev`, keeping its other flags.
fn bring_up(sock: &OwnedFd, dev: &str) -> Result<(), SysError> {
    let mut ifr = ifreq_named(dev);
    ioctl_ifreq(sock, libc::SIOCGIFFLAGS, &mut ifr)
        .map_err(os(format!("reading the flags of {dev}")))?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the kernel stored `ifru_flags` in the union (and
    // the union was zero-initialised before, so any field is initialised anyway).
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ioctl_ifreq(sock, libc::SIOCSIFFLAGS, &mut ifr).map_err(os(format!("bringing {dev} up")))
}

/// Configures `lo` and the TAP `dev` in the current network namespace.
pub(crate) fn configure(dev: &str, cfg: &LinkConfig) -> Result<(), SysError> {
    cfg.validate(dev)?;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(os("creating an AF_INET socket for interface configuration"))?;

    bring_up(&sock, "lo")?;

    let mut ifr = ifreq_named(dev);
    ifr.ifr_ifru.ifru_mtu = cfg.mtu as libc::c_int;
    ioctl_ifreq(&sock, libc::SIOCSIFMTU, &mut ifr)
        .map_err(os(format!("setting MTU {} on {dev}", cfg.mtu)))?;

    if let Some(mac) = &cfg.mac {
        let mut ifr = ifreq_named(dev);
        ifr.ifr_ifru.ifru_hwaddr = sockaddr_ether(mac);
        ioctl_ifreq(&sock, libc::SIOCSIFHWADDR, &mut ifr)
            .map_err(os(format!("setting MAC {} on {dev}", format_mac(mac))))?;
    }

    let assigning = || format!("assigning {}/{} to {dev}", cfg.address, cfg.prefix_len);
    let mut ifr = ifreq_named(dev);
    ifr.ifr_ifru.ifru_addr = sockaddr_v4(cfg.address);
    ioctl_ifreq(&sock, libc::SIOCSIFADDR, &mut ifr).map_err(os(assigning()))?;
    let mut ifr = ifreq_named(dev);
    ifr.ifr_ifru.ifru_netmask = sockaddr_v4(cfg.netmask());
    ioctl_ifreq(&sock, libc::SIOCSIFNETMASK, &mut ifr).map_err(os(assigning()))?;

    bring_up(&sock, dev)?;

    add_default_route(&sock, dev, cfg.gateway)
}

/// `SIOCADDRT`: `default via GATEWAY dev DEV`.
fn add_default_route(sock: &OwnedFd, dev: &str, gateway: Ipv4Addr) -> Result<(), SysError> {
    let op = || format!("adding the default route via {gateway} dev {dev}");
    let dev_c = CString::new(dev).map_err(|_| os(op())(Errno::EINVAL))?;
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_v4(gateway),
        rt_genmask: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        // The kernel only reads through this pointer.
        rt_dev: dev_c.as_ptr().cast_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT reads one `struct rtentry` (laid out as `RtEntry`) and the
    // NUL-terminated device name `rt_dev` points to; both `route` and `dev_c` outlive the
    // call.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCADDRT,
            &mut route as *mut RtEntry,
        )
    };
    if rc < 0 {
        return Err(os(op())(Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel() {
        // struct rtentry is 120 bytes on LP64, 92 on ILP32.
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
        #[cfg(target_pointer_width = "32")]
        assert_eq!(std::mem::size_of::<RtEntry>(), 92);
        assert_eq!(std::mem::size_of::<libc::sockaddr>(), 16);
    }

    #[test]
    fn netmasks_and_addresses() {
        let cfg = |prefix_len| LinkConfig {
            mtu: 1500,
            mac: None,
            address: Ipv4Addr::new(10, 0, 2, 100),
            prefix_len,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
        };
        assert_eq!(cfg(24).netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(cfg(0).netmask(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(cfg(32).netmask(), Ipv4Addr::BROADCAST);
        let sa = sockaddr_v4(Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        assert_eq!(&sa.sa_data[..6], &[0, 0, 10, 0, 2, 100]);
        assert_eq!(
            format_mac(&[0x02, 0, 0xab, 1, 2, 0xff]),
            "02:00:ab:01:02:ff"
        );
        let mut small = cfg(24);
        small.mtu = 67;
        assert_eq!(
            small.validate("tap0").unwrap_err().to_string(),
            "cannot set MTU 67 on tap0: the minimum is 68"
        );
    }
}
