//! The suite's world: the outer network namespace, one fresh namespace per run, the helpers
//! started the way engines start them, and process bookkeeping (/proc).
//!
//! Network safety: everything here runs inside the outer namespace made by `net.rs`
//! (`unshare --net --mount --pid ...`). `check_outer` refuses to go on unless that namespace
//! holds nothing but `lo`; then the only other link is a veth to a "sink" namespace
//! (198.18.0.2, RFC 2544 benchmarking range, and fd99::2) which has no further links, so a
//! stray packet dies there. The sink only exists because pasta refuses to start without a
//! routable host interface (and configures IPv6 in the namespace only with a host IPv6 default
//! route); pasta maps the namespace's gateways (198.18.0.2, fd99::2) to host loopback.
//!
//! The `kernel` baseline gives a run's namespace a veth pair to the suite's namespace instead
//! of a helper (198.18.1.0/30 and fd98::/64); the run's namespace has no default route, and the
//! suite's namespace does not forward, so nothing from it goes further than the suite's
//! namespace either.

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::model::HelperKind;

pub const SINK_ADDR: &str = "198.18.0.2";
pub const OUTER_ADDR: &str = "198.18.0.1/24";
/// The IPv6 side of the sink (unique local addresses of the suite's own).
pub const SINK_ADDR6: &str = "fd99::2";
pub const OUTER_ADDR6: &str = "fd99::1/64";
/// slirp4netns's (and slirpnet's) gateway, which reaches host loopback.
pub const SLIRP_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Their IPv6 gateway with `-6` (fd00::/64 by default), which reaches host `::1`.
pub const SLIRP_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// The `kernel` baseline's veth pair: the suite's ("host") end and the namespace's end.
pub const KERNEL_HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const KERNEL_NS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const KERNEL_PREFIX: u8 = 30;
pub const KERNEL_HOST6: Ipv6Addr = Ipv6Addr::new(0xfd98, 0, 0, 0, 0, 0, 0, 1);
pub const KERNEL_NS6: Ipv6Addr = Ipv6Addr::new(0xfd98, 0, 0, 0, 0, 0, 0, 2);
const KERNEL_PREFIX6: u8 = 64;

pub type Res<T> = Result<T, String>;

/// Runs a command to completion; an error carries its stderr.
pub fn sh(program: &str, args: &[&str]) -> Res<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {} {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `None` when the child is still running at the deadline.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// SIGTERM, a grace period, then SIGKILL; always reaps.
pub fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    if wait_timeout(child, Duration::from_secs(2)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Stops a process that is not our `Child` (pasta's daemon, reparented to us as PID 1 of the
/// suite's PID namespace) by its id, and reaps it.
fn stop_pid(pid: i32) {
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => return,
            // Not our child: wait for it to vanish.
            Err(_) => {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    return;
                }
            }
        }
        if Instant::now() > deadline {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn netns_id(pid: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

/// Refuses to run unless we are in a network namespace holding only `lo`.
pub fn check_outer() -> Res<()> {
    let dev = std::fs::read_to_string("/proc/net/dev").map_err(|e| e.to_string())?;
    let links: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    if links != ["lo"] {
        return Err(format!(
            "refusing to run: the outer network namespace is not empty (links: {links:?})"
        ));
    }
    Ok(())
}

/// The outer namespace: lo up, private /run/netns and scratch space, the sink behind a veth.
pub struct Outer {
    sink: Child,
    pub scratch: PathBuf,
    /// Why the IPv6 side could not be set up (IPv6 disabled on this machine): the IPv6 modes
    /// then fail with this, the others run.
    pub no_ipv6: Option<String>,
}

impl Outer {
    pub fn setup(scratch: &Path) -> Res<Outer> {
        check_outer()?;
        sh("mount", &["--make-rprivate", "/"])?;
        std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
        let s = scratch.to_str().ok_or("scratch path is not UTF-8")?;
        sh(
            "mount",
            &["-t", "tmpfs", "-o", "mode=0700", "slirpnet-bench", s],
        )?;
        // `ip netns attach` (pasta) binds namespaces under /run/netns: keep those private.
        std::fs::create_dir_all("/run/netns").map_err(|e| format!("/run/netns: {e}"))?;
        sh(
            "mount",
            &["-t", "tmpfs", "slirpnet-bench-netns", "/run/netns"],
        )?;
        sh("ip", &["link", "set", "lo", "up"])?;
        // Room for the connect/request/close mode (per-namespace setting).
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65000");
        let sink = Command::new("unshare")
            .args(["--net", "sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("unshare: {e}"))?;
        let mut outer = Outer {
            sink,
            scratch: scratch.to_path_buf(),
            no_ipv6: None,
        };
        let sink_pid = outer.sink.id().to_string();
        wait_new_netns(&mut outer.sink)?;
        sh(
            "ip",
            &[
                "link",
                "add",
                "veth-bench",
                "type",
                "veth",
                "peer",
                "name",
                "veth-sink",
                "netns",
                &sink_pid,
            ],
        )?;
        sh("ip", &["addr", "add", OUTER_ADDR, "dev", "veth-bench"])?;
        sh("ip", &["link", "set", "veth-bench", "up"])?;
        let in_sink = |args: &[&str]| {
            let mut a = vec!["--target", sink_pid.as_str(), "--net", "--", "ip"];
            a.extend_from_slice(args);
            sh("nsenter", &a)
        };
        in_sink(&["link", "set", "lo", "up"])?;
        in_sink(&["addr", "add", "198.18.0.2/24", "dev", "veth-sink"])?;
        // IPv6 the same way, without duplicate address detection so it is usable at once.
        let ipv6 = lo_has_ipv6()
            .and_then(|_| {
                sh(
                    "ip",
                    &[
                        "-6",
                        "addr",
                        "add",
                        OUTER_ADDR6,
                        "dev",
                        "veth-bench",
                        "nodad",
                    ],
                )
            })
            .and_then(|_| {
                let sink6 = format!("{SINK_ADDR6}/64");
                in_sink(&["-6", "addr", "add", &sink6, "dev", "veth-sink", "nodad"])
            });
        in_sink(&["link", "set", "veth-sink", "up"])?;
        sh("ip", &["route", "add", "default", "via", SINK_ADDR])?;
        // A host IPv6 default route: pasta configures IPv6 in the namespace only with one.
        // Stray IPv6 dies in the sink (no forwarding, no further links), as IPv4 does.
        // (Retried briefly: the veth's carrier and IPv6 setup follow the peer's link-up.)
        let ipv6 = ipv6.and_then(|_| {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match sh("ip", &["-6", "route", "add", "default", "via", SINK_ADDR6]) {
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    r => return r,
                }
            }
        });
        if let Err(e) = ipv6 {
            eprintln!("no IPv6 in the suite's namespace, the IPv6 modes will fail: {e}");
            outer.no_ipv6 = Some(format!("no IPv6 in the suite's namespace: {e}"));
        }
        Ok(outer)
    }
}

/// Whether `lo` (up) has `::1`, which the IPv6 modes' servers bind.
fn lo_has_ipv6() -> Res<()> {
    let has = || {
        std::fs::read_to_string("/proc/net/if_inet6")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("00000000000000000000000000000001 ") && l.ends_with(" lo"))
    };
    if !has() {
        // Disabled by sysctl in this namespace (a new namespace takes the defaults): enable it.
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/lo/disable_ipv6", "0");
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "0");
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "0");
    }
    if has() {
        Ok(())
    } else {
        Err("lo has no ::1 (IPv6 disabled?)".into())
    }
}

impl Drop for Outer {
    fn drop(&mut self) {
        stop(&mut self.sink);
    }
}

const CONGESTION_CONTROL_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_congestion_control";

/// `--congestion-control`, once set in the suite's namespace: every run's namespace gets it too
/// (a new namespace takes the kernel's default, not its creator's).
static CONGESTION_CONTROL: OnceLock<String> = OnceLock::new();

/// Makes `name` the TCP congestion control of the suite's namespace and of every namespace made
/// after this.
pub fn use_congestion_control(name: &str) -> Res<()> {
    std::fs::write(CONGESTION_CONTROL_SYSCTL, name).map_err(|e| {
        let available =
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
                .unwrap_or_default();
        // A namespace other than the first may only take an algorithm the host allows
        // unprivileged users; some kernels with BBR as their default leave CUBIC out.
        let hint = if e.raw_os_error() == Some(libc::EPERM) {
            "; a network namespace takes only what the host's \
             net.ipv4.tcp_allowed_congestion_control lists: add it there, as root"
        } else {
            ""
        };
        format!(
            "congestion control {name}: {e} (available: {}{hint})",
            available.trim()
        )
    })?;
    let _ = CONGESTION_CONTROL.set(name.to_string());
    Ok(())
}

/// The TCP congestion control in the calling process's namespace.
pub fn congestion_control() -> Option<String> {
    std::fs::read_to_string(CONGESTION_CONTROL_SYSCTL)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Waits until a freshly spawned `unshare --net` holder is in its own namespace.
fn wait_new_netns(holder: &mut Child) -> Res<()> {
    let ours = netns_id("self");
    let pid = holder.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let theirs = netns_id(&pid);
        if theirs.is_some() && theirs != ours {
            return Ok(());
        }
        if let Ok(Some(status)) = holder.try_wait() {
            return Err(format!("namespace holder exited: {status}"));
        }
        if Instant::now() > deadline {
            return Err("namespace holder did not unshare in 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A fresh network namespace held by a sleeping process; `lo` is up.
pub struct Netns {
    holder: Child,
    pub pid: u32,
    /// Set once `ip netns attach`ed (pasta).
    name: Option<String>,
}

impl Netns {
    pub fn new() -> Res<Netns> {
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("unshare: {e}"))?;
        let pid = holder.id();
        let mut ns = Netns {
            holder,
            pid,
            name: None,
        };
        wait_new_netns(&mut ns.holder)?;
        ns.sh(&["ip", "link", "set", "lo", "up"])?;
        if let Some(name) = CONGESTION_CONTROL.get() {
            let write = format!("echo {name} > {CONGESTION_CONTROL_SYSCTL}");
            ns.sh(&["sh", "-c", &write])?;
        }
        Ok(ns)
    }

    /// Runs `ARGS...` inside the namespace (`nsenter --target PID --net`).
    pub fn sh(&self, args: &[&str]) -> Res<()> {
        let pid = self.pid.to_string();
        let mut a = vec!["--target", pid.as_str(), "--net", "--"];
        a.extend_from_slice(args);
        sh("nsenter", &a)
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["--target", &self.pid.to_string(), "--net", "--", program]);
        c
    }

    /// The namespace's IPv4 default gateway (from /proc/PID/net/route).
    pub fn default_gateway(&self) -> Option<Ipv4Addr> {
        let routes = std::fs::read_to_string(format!("/proc/{}/net/route", self.pid)).ok()?;
        routes.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 2 && f[1] == "00000000" {
                let gw = u32::from_str_radix(f[2], 16).ok()?;
                Some(Ipv4Addr::from(gw.to_le_bytes()))
            } else {
                None
            }
        })
    }

    /// The namespace's IPv6 addresses (/proc/PID/net/if_inet6) and default route
    /// (/proc/PID/net/ipv6_route).
    pub fn ipv6_state(&self) -> Ipv6State {
        let hex_addr = |s: &str| u128::from_str_radix(s, 16).ok().map(Ipv6Addr::from);
        let mut state = Ipv6State::default();
        let addrs = std::fs::read_to_string(format!("/proc/{}/net/if_inet6", self.pid));
        for line in addrs.unwrap_or_default().lines() {
            // address ifindex prefixlen scope flags name
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(addr), Some(scope), Some(flags)) = (
                f.first().and_then(|a| hex_addr(a)),
                f.get(3).and_then(|x| u8::from_str_radix(x, 16).ok()),
                f.get(4).and_then(|x| u8::from_str_radix(x, 16).ok()),
            ) else {
                continue;
            };
            if scope != 0 {
                continue; // link-local (0x20), host (0x10)
            }
            // IFA_F_TENTATIVE 0x40, IFA_F_DADFAILED 0x08
            if flags & 0x48 == 0 {
                state.global.push(addr);
            } else {
                state.tentative.push(addr);
            }
        }
        let routes = std::fs::read_to_string(format!("/proc/{}/net/ipv6_route", self.pid));
        for line in routes.unwrap_or_default().lines() {
            // dest plen src plen nexthop metric refcnt use flags dev
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[1] != "00" || hex_addr(f[0]) != Some(Ipv6Addr::UNSPECIFIED) {
                continue;
            }
            let flags = u32::from_str_radix(f[8], 16).unwrap_or(0);
            // RTF_GATEWAY 0x2, and not RTF_REJECT 0x200 (the kernel's "unreachable" entry)
            if flags & 0x2 == 0 || flags & 0x200 != 0 {
                continue;
            }
            if let Some(gw) = hex_addr(f[4]).filter(|g| !g.is_unspecified()) {
                state.gateway.get_or_insert((gw, f[9].to_string()));
            }
        }
        state
    }

    /// Waits until the namespace has a global, non-tentative IPv6 address and an IPv6 default
    /// route (SLAAC after a router advertisement takes a second or two); `Err` with the state
    /// at the deadline.
    pub fn wait_ipv6(&self, timeout: Duration) -> Result<Ipv6State, Ipv6State> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.ipv6_state();
            if state.ready() {
                return Ok(state);
            }
            if Instant::now() > deadline {
                return Err(state);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What a namespace has of IPv6.
#[derive(Debug, Default)]
pub struct Ipv6State {
    /// Global scope, usable (not tentative, DAD not failed).
    pub global: Vec<Ipv6Addr>,
    /// Global scope, tentative or with DAD failed.
    pub tentative: Vec<Ipv6Addr>,
    /// The default route's gateway and device.
    pub gateway: Option<(Ipv6Addr, String)>,
}

impl Ipv6State {
    pub fn ready(&self) -> bool {
        !self.global.is_empty() && self.gateway.is_some()
    }

    /// Nothing at all: no global address, not even a tentative one, and no default route.
    pub fn none(&self) -> bool {
        self.global.is_empty() && self.tentative.is_empty() && self.gateway.is_none()
    }

    /// The gateway as a connect target (a link-local one with its zone, `fe80::1%dev`).
    pub fn gateway_target(&self) -> Option<String> {
        let (gw, dev) = self.gateway.as_ref()?;
        Some(if gw.is_unicast_link_local() {
            format!("{gw}%{dev}")
        } else {
            gw.to_string()
        })
    }

    pub fn describe(&self) -> String {
        let list = |v: &[Ipv6Addr]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        format!(
            "global addresses: {}; tentative: {}; default route: {}",
            list(&self.global),
            list(&self.tentative),
            match &self.gateway {
                Some((gw, dev)) => format!("via {gw} dev {dev}"),
                None => "none".into(),
            }
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        stop(&mut self.holder);
        if let Some(name) = self.name.take() {
            let _ = sh("ip", &["netns", "delete", &name]);
        }
    }
}

/// The `kernel` baseline's link: a veth pair between the suite's namespace and a run's
/// namespace, both ends at the run's MTU, addressed (IPv6 without duplicate address detection,
/// usable at once) and up. Deleted on drop (both ends go at once), so the next run can reuse the
/// addresses without waiting for the namespace's asynchronous teardown.
pub struct VethPair {
    host: String,
}

impl VethPair {
    pub fn new(ns: &Netns, mtu: u32, ipv6: bool, run_id: usize) -> Res<VethPair> {
        let host = format!("vk{run_id}");
        let mtu = mtu.to_string();
        let pid = ns.pid.to_string();
        sh(
            "ip",
            &[
                "link", "add", &host, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
                &mtu, "netns", &pid,
            ],
        )?;
        let pair = VethPair { host };
        let host = pair.host.as_str();
        let host4 = format!("{KERNEL_HOST}/{KERNEL_PREFIX}");
        let ns4 = format!("{KERNEL_NS}/{KERNEL_PREFIX}");
        sh("ip", &["addr", "add", &host4, "dev", host])?;
        ns.sh(&["ip", "addr", "add", &ns4, "dev", "eth0"])?;
        if ipv6 {
            let host6 = format!("{KERNEL_HOST6}/{KERNEL_PREFIX6}");
            let ns6 = format!("{KERNEL_NS6}/{KERNEL_PREFIX6}");
            sh("ip", &["-6", "addr", "add", &host6, "dev", host, "nodad"])?;
            ns.sh(&["ip", "-6", "addr", "add", &ns6, "dev", "eth0", "nodad"])?;
        }
        sh("ip", &["link", "set", host, "up"])?;
        ns.sh(&["ip", "link", "set", "eth0", "up"])?;
        Ok(pair)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = sh("ip", &["link", "del", &self.host]);
    }
}

enum Proc {
    Child(Child),
    Daemon(i32),
}

/// A started helper.
pub struct Helper {
    proc: Proc,
    pub pid: i32,
    pub ready: Duration,
    pub gateway: Ipv4Addr,
    pub api: Option<PathBuf>,
    stderr: PathBuf,
}

impl Helper {
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr)
    }

    /// Adds a TCP forward 127.0.0.1:port → guest port through the slirp4netns JSON API.
    /// `Err((unsupported, why))`.
    pub fn add_hostfwd(&self, port: u16) -> Result<(), (bool, String)> {
        let Some(sock) = &self.api else {
            return Ok(()); // pasta: forwards given at start (-t)
        };
        let request = format!(
            r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"127.0.0.1","host_port":{port},"guest_port":{port}}}}}"#
        );
        let mut stream = UnixStream::connect(sock)
            .map_err(|e| (true, format!("API socket {}: {e}", sock.display())))?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        use std::io::Write;
        stream
            .write_all(request.as_bytes())
            .and_then(|_| stream.shutdown(std::net::Shutdown::Write))
            .map_err(|e| (true, format!("API write: {e}")))?;
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        match serde_json::from_str::<serde_json::Value>(&reply) {
            Ok(v) if v.get("return").is_some() => Ok(()),
            _ => Err((true, format!("add_hostfwd answered {reply:?}"))),
        }
    }

    pub fn alive(&mut self) -> bool {
        match &mut self.proc {
            Proc::Child(c) => matches!(c.try_wait(), Ok(None)),
            Proc::Daemon(pid) => Path::new(&format!("/proc/{pid}")).exists(),
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        match &mut self.proc {
            Proc::Child(c) => stop(c),
            Proc::Daemon(pid) => stop_pid(*pid),
        }
    }
}

pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    lines[start..].join(" | ")
}

/// How to start a helper.
pub struct Start<'a> {
    pub kind: HelperKind,
    pub binary: &'a Path,
    pub mtu: u32,
    /// The forward pasta gets at start (`-t`), and whether slirp4netns-like helpers get an API
    /// socket (`-a`).
    pub fwd_port: Option<u16>,
    /// IPv6 too: `-6` for slirp4netns-like helpers (pasta configures IPv6 whenever the host
    /// has an IPv6 default route; its `-6` would mean IPv6 only).
    pub ipv6: bool,
    pub scratch: &'a Path,
    pub run_id: usize,
    /// More arguments, before the positionals (`--slirpnet-arg`).
    pub extra_args: &'a [String],
}

/// Starts a helper for `ns` the way engines do.
pub fn start_helper(start: &Start, ns: &mut Netns) -> Res<Helper> {
    let Start {
        kind,
        binary,
        mtu,
        fwd_port,
        ipv6,
        scratch,
        run_id,
        extra_args,
    } = *start;
    let stderr = scratch.join(format!("{}.{run_id}.err", kind.name()));
    let err_file = File::create(&stderr).map_err(|e| e.to_string())?;
    match kind {
        HelperKind::Slirpnet | HelperKind::SlirpnetSplice | HelperKind::Slirp4netns => {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
            // The write end goes to the helper under its own number.
            fcntl(w.as_fd(), FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| e.to_string())?;
            let api = fwd_port.map(|_| scratch.join(format!("api.{run_id}.sock")));
            let mut cmd = Command::new(binary);
            cmd.args(["-c", "--mtu", &mtu.to_string()])
                .args(["-r", &w.as_raw_fd().to_string()]);
            if let Some(api) = &api {
                cmd.arg("-a").arg(api);
            }
            if ipv6 {
                cmd.arg("-6");
            }
            if kind == HelperKind::SlirpnetSplice {
                cmd.arg("--enable-forward-splice");
            }
            cmd.args(extra_args);
            cmd.args([&ns.pid.to_string(), "tap0"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err_file);
            let t0 = Instant::now();
            let child = cmd
                .spawn()
                .map_err(|e| format!("{}: {e}", binary.display()))?;
            drop(w);
            let pid = child.id() as i32;
            let mut helper = Helper {
                proc: Proc::Child(child),
                pid,
                ready: Duration::ZERO,
                gateway: SLIRP_GATEWAY,
                api,
                stderr,
            };
            let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
            let n = poll(&mut fds, 10_000u16).map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            let got = if n > 0 {
                File::from(r).read(&mut byte).unwrap_or(0)
            } else {
                0
            };
            helper.ready = t0.elapsed();
            if got != 1 || byte[0] != b'1' {
                std::thread::sleep(Duration::from_millis(20));
                let status = match &mut helper.proc {
                    Proc::Child(c) => c.try_wait().ok().flatten(),
                    Proc::Daemon(_) => None,
                };
                let why = if n == 0 {
                    "no ready byte within 10 s".to_string()
                } else {
                    match status {
                        Some(s) => format!("exited ({s}) without the ready byte"),
                        None => "closed the ready fd without writing 1".to_string(),
                    }
                };
                return Err(format!("{why}: {}", helper.stderr_tail()));
            }
            Ok(helper)
        }
        HelperKind::Pasta => {
            let name = format!("slirpnet-bench-{run_id}");
            sh("ip", &["netns", "attach", &name, &ns.pid.to_string()])?;
            ns.name = Some(name.clone());
            let pidfile = scratch.join(format!("pasta.{run_id}.pid"));
            // Without -f pasta daemonizes once the namespace is configured and its ports are
            // bound: the parent's exit is its "ready" (that is how Podman waits for it).
            let mut cmd = Command::new(binary);
            cmd.args(["-q", "--runas", "0", "--config-net", "-m", &mtu.to_string()])
                .args(["-t", &fwd_port.unwrap_or(crate::FWD_PORT).to_string()])
                .args(["--netns", &name, "-P"])
                .arg(&pidfile)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err_file);
            let t0 = Instant::now();
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("{}: {e}", binary.display()))?;
            let status = wait_timeout(&mut child, Duration::from_secs(10));
            let ready = t0.elapsed();
            let Some(status) = status else {
                stop(&mut child);
                return Err(format!("did not daemonize in 10 s: {}", tail(&stderr)));
            };
            if !status.success() {
                return Err(format!("exited {status}: {}", tail(&stderr)));
            }
            let pid: i32 = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| format!("no pid file: {}", tail(&stderr)))?;
            let gateway = ns
                .default_gateway()
                .ok_or("no default route in the namespace")?;
            Ok(Helper {
                proc: Proc::Daemon(pid),
                pid,
                ready,
                gateway,
                api: None,
                stderr,
            })
        }
        HelperKind::Kernel => Err("the kernel baseline has no helper to start".into()),
    }
}

/// user + sys CPU of a process, in seconds.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(ticks as f64 / hz)
}

/// A `kB` line of /proc/PID/status (VmRSS, VmHWM).
pub fn status_kib(pid: i32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Whether a TCP socket listens on `port` in the namespace of `pid` ("self" for ours).
pub fn listening(pid: &str, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3
                    && f[3] == "0A"
                    && f[1]
                        .rsplit(':')
                        .next()
                        .and_then(|p| u16::from_str_radix(p, 16).ok())
                        == Some(port)
            })
    })
}

pub fn wait_listening(pid: &str, port: u16, server: &mut Child) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !listening(pid, port) {
        if let Ok(Some(status)) = server.try_wait() {
            return Err(format!("server exited before listening: {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("nothing listens on port {port} after 5 s"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}
