//! Validated run-time configuration: what the command line asked for, with every
//! derived address computed once. Nothing downstream re-validates.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use std::path::PathBuf;

/// Which network namespace slirpnet serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `PID` with `--netns-type=pid` (the default): `/proc/PID/ns/net`, and the PID's user
    /// namespace unless `--userns-path` names another.
    Pid(i32),
    /// `PATH` with `--netns-type=path`: a netns file such as `/run/netns/NAME`.
    Path(PathBuf),
    /// Run mode (`slirpnet [OPTIONS] -- COMMAND [ARG]...`): make a fresh user + network
    /// namespace, run COMMAND inside it, exit with its status.
    Command(Vec<OsString>),
}

/// The virtual IPv4 network (COMPAT.md section 3), derived from `--cidr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// Network address, e.g. 10.0.2.0.
    pub network: Ipv4Addr,
    /// Prefix length, 1..=25.
    pub prefix_len: u8,
    /// net+2: answers ARP and ping; TCP/UDP to it reach host loopback.
    pub gateway: Ipv4Addr,
    /// net+3: DNS redirect to the host's resolver.
    pub dns: Ipv4Addr,
    /// net+15: first DHCP lease.
    pub dhcp_start: Ipv4Addr,
    /// net+30: last DHCP lease.
    pub dhcp_end: Ipv4Addr,
    /// net+100: the guest address `-c` assigns, and the default forward target.
    pub guest: Ipv4Addr,
    /// The IPv6 /64 (`--cidr6`, default fd00::/64), served only with `-6`.
    pub prefix6: Ipv6Addr,
}

impl NetConfig {
    /// Derives every address from a network address and prefix length. The caller has
    /// checked that `network` has no host bits and `prefix_len` is 1..=25.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Self {
        let base = u32::from(network);
        let at = |offset: u32| Ipv4Addr::from(base + offset);
        NetConfig {
            network,
            prefix_len,
            gateway: at(2),
            dns: at(3),
            dhcp_start: at(15),
            dhcp_end: at(30),
            guest: at(100),
            prefix6: DEFAULT_PREFIX6,
        }
    }

    /// The same network with another IPv6 /64 (the caller has checked it has no host bits).
    pub fn with_prefix6(self, prefix6: Ipv6Addr) -> Self {
        NetConfig { prefix6, ..self }
    }

    /// The address `host` in the IPv6 /64.
    pub fn in_prefix6(&self, host: u64) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.prefix6) | u128::from(host))
    }

    /// prefix::2, the gateway's global address (TCP/UDP to it reach host `::1`).
    pub fn gateway6(&self) -> Ipv6Addr {
        self.in_prefix6(2)
    }

    /// prefix::3, the DNS redirect.
    pub fn dns6(&self) -> Ipv6Addr {
        self.in_prefix6(3)
    }

    pub fn contains6(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) >> 64 == u128::from(self.prefix6) >> 64
    }

    /// The gateway address of `addr`'s family: where ICMP errors and host loopback clients
    /// appear from.
    pub fn gateway_for(&self, addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V4(_) => IpAddr::V4(self.gateway),
            IpAddr::V6(_) => IpAddr::V6(self.gateway6()),
        }
    }

    /// One of the helper's own IPv6 addresses (gateway, DNS, the router's link-local).
    pub fn is_own6(&self, addr: Ipv6Addr) -> bool {
        addr == self.gateway6() || addr == self.dns6() || addr == ROUTER_LINK_LOCAL
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(self.prefix_len)))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !u32::from(self.netmask()))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & u32::from(self.netmask()) == u32::from(self.network)
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig::new(Ipv4Addr::new(10, 0, 2, 0), 24)
    }
}

/// The IPv6 prefix of slirp4netns (COMPAT.md section 3).
pub const DEFAULT_PREFIX6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0);
/// fe80::2: where router advertisements come from, so the guest's default route points here.
pub const ROUTER_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);

/// Everything a run needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub target: Target,
    /// TAP device name inside the namespace (default `tap0`).
    pub tap_name: String,
    /// `-c`: bring lo and the TAP up, set MTU, MAC, address and default route.
    pub configure: bool,
    /// `-e FD`: exit 0 when it hangs up.
    pub exit_fd: Option<RawFd>,
    /// `-r FD`: write `1` and close once ready.
    pub ready_fd: Option<RawFd>,
    /// 1..=65521.
    pub mtu: u32,
    pub net: NetConfig,
    pub disable_host_loopback: bool,
    pub userns_path: Option<PathBuf>,
    /// `--outbound-addr`, resolved to an address (an IFNAME is looked up at parse time).
    pub outbound_addr: Option<Ipv4Addr>,
    /// `--outbound-addr6`, likewise.
    pub outbound_addr6: Option<Ipv6Addr>,
    pub disable_dns: bool,
    /// `--enable-forward-splice`: forwarded TCP connections from host loopback are spliced
    /// to a socket inside the namespace (the guest sees them from its own address) instead of
    /// crossing the TAP (from the gateway, as with slirp4netns).
    pub enable_forward_splice: bool,
    /// `--busy-poll=USEC`: after small exchanges the event loop polls this long before
    /// sleeping (src/busy_poll.rs); zero: it always sleeps.
    pub busy_poll: std::time::Duration,
    /// `--macaddress`, only valid with `-c`.
    pub mac: Option<[u8; 6]>,
    pub api_socket: Option<PathBuf>,
    /// `-p/--publish`: forwards set up before the ready byte.
    pub publish: Vec<crate::api::ForwardSpec>,
    /// `-6`: serve IPv6 too (router advertisements for `net.prefix6`, NDP, ICMPv6, relays).
    pub enable_ipv6: bool,
    /// `--enable-seccomp`: install the system call allow-list before the ready byte.
    pub enable_seccomp: bool,
    /// `--enable-sandbox`: after start-up, an empty root, no capabilities, no-new-privs.
    pub enable_sandbox: bool,
    /// `--limit NAME=N`: resource bounds, the defaults unless changed.
    pub limits: crate::stack::Limits,
}
