//! Real namespaces, real TAP devices: each test makes a throwaway network namespace (a
//! `sleep` started by `unshare`), works inside it and kills it at the end. Nothing sends
//! packets. Needs root: without it these tests fail when `CI` is set, and are skipped with a
//! note otherwise.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, IntoRawFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use slirpnet::sys::{
    LinkConfig, NetnsRef, SysError, TapRequest, enable_vnet_offloads, open_tap, set_nonblocking,
    spawn_in_new_namespace, write_ready_byte,
};

const MAC: [u8; 6] = [0x02, 0x50, 0x00, 0x00, 0x00, 0x01];

fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("these tests need root (CI is set, so they fail instead of skipping)");
    }
    eprintln!("skipping: needs root");
    false
}

/// A throwaway namespace: `unshare [--user --map-root-user] --net sleep 30`.
struct Sandbox {
    child: Child,
}

impl Sandbox {
    fn new(with_userns: bool) -> Sandbox {
        let mut cmd = Command::new("unshare");
        if with_userns {
            cmd.args(["--user", "--map-root-user"]);
        }
        cmd.args(["--net", "sleep", "30"]).stdin(Stdio::null());
        let child = cmd.spawn().expect("running unshare");
        let sandbox = Sandbox { child };
        // unshare execs sleep once the namespaces exist (and the maps are written).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", sandbox.pid()))
                .unwrap_or_default();
            if comm.trim() == "sleep" {
                break;
            }
            assert!(Instant::now() < deadline, "unshare did not start sleep");
            std::thread::sleep(Duration::from_millis(5));
        }
        sandbox
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Runs `ip ARGS` inside the namespace; returns (success, stdout + stderr).
    fn ip(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-n", "ip"])
            .args(args)
            .output()
            .expect("running nsenter");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn ip_ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.ip(args);
        assert!(ok, "ip {args:?} failed: {text}");
        text
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` for up to 5 s.
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn link_config(mtu: u32) -> LinkConfig {
    LinkConfig {
        mtu,
        mac: Some(MAC),
        address: Ipv4Addr::new(10, 0, 2, 100),
        prefix_len: 24,
        gateway: Ipv4Addr::new(10, 0, 2, 2),
    }
}

fn request(netns: NetnsRef, configure: Option<LinkConfig>) -> TapRequest {
    TapRequest {
        netns,
        userns: None,
        tap_name: "tap0".to_owned(),
        configure,
        vnet_hdr: false,
    }
}

/// The interface flags between `<` and `>` in `ip link`/`ip addr` output.
fn flags(text: &str) -> Vec<String> {
    let start = text.find('<').expect("flags") + 1;
    let end = text[start..].find('>').expect("flags") + start;
    text[start..end].split(',').map(str::to_owned).collect()
}

fn assert_configured(sb: &Sandbox) {
    let addr = sb.ip_ok(&["-d", "addr", "show", "tap0"]);
    assert!(
        flags(&addr).iter().any(|f| f == "UP"),
        "tap0 not up: {addr}"
    );
    assert!(
        addr.contains("inet 10.0.2.100/24"),
        "address missing: {addr}"
    );
    assert!(addr.contains("mtu 65520"), "MTU not set: {addr}");
    assert!(
        addr.contains("link/ether 02:50:00:00:00:01"),
        "MAC not set: {addr}"
    );
    assert!(addr.contains("tun type tap"), "not a TAP: {addr}");
    let route = sb.ip_ok(&["route"]);
    assert!(
        route.contains("default via 10.0.2.2 dev tap0"),
        "no default route: {route}"
    );
    let lo = sb.ip_ok(&["link", "show", "lo"]);
    assert!(flags(&lo).iter().any(|f| f == "UP"), "lo not up: {lo}");
}

#[test]
fn configure_in_a_plain_netns() {
    if !have_root() {
        return;
    }
    let sb = Sandbox::new(false);
    let tap = open_tap(&request(NetnsRef::Pid(sb.pid()), Some(link_config(65520)))).unwrap();
    assert_configured(&sb);
    drop(tap);
    // Not persistent: gone with its fd. (Polled: a process another test thread is spawning
    // holds copies of our fds until it execs.)
    assert!(
        eventually(|| !sb.ip(&["link", "show", "tap0"]).0),
        "tap0 outlived its fd"
    );
}

#[test]
fn configure_in_a_netns_owned_by_a_child_userns() {
    if !have_root() {
        return;
    }
    let sb = Sandbox::new(true);
    let tap = open_tap(&request(NetnsRef::Pid(sb.pid()), Some(link_config(65520)))).unwrap();
    assert_configured(&sb);
    drop(tap);
}

#[test]
fn without_configure_the_tap_is_left_alone() {
    if !have_root() {
        return;
    }
    let sb = Sandbox::new(true);
    let _tap = open_tap(&request(NetnsRef::Pid(sb.pid()), None)).unwrap();
    let addr = sb.ip_ok(&["-d", "addr", "show", "tap0"]);
    assert!(addr.contains("tun type tap"), "{addr}");
    assert!(
        !flags(&addr).iter().any(|f| f == "UP"),
        "tap0 is up: {addr}"
    );
    assert!(!addr.contains("inet "), "tap0 has an address: {addr}");
    assert!(addr.contains("mtu 1500"), "{addr}");
    let route = sb.ip_ok(&["route"]);
    assert!(route.trim().is_empty(), "routes appeared: {route}");
}

#[test]
fn attaches_to_a_precreated_tap_and_a_busy_one_fails() {
    if !have_root() {
        return;
    }
    let sb = Sandbox::new(true);
    sb.ip_ok(&["tuntap", "add", "tap0", "mode", "tap"]);
    let before = sb.ip_ok(&["-d", "link", "show", "tap0"]);
    let index = before.split(':').next().unwrap().to_owned();

    let tap = open_tap(&request(NetnsRef::Pid(sb.pid()), None)).unwrap();
    let after = sb.ip_ok(&["-d", "link", "show", "tap0"]);
    assert_eq!(
        after.split(':').next().unwrap(),
        index,
        "a new device: {after}"
    );
    assert!(after.contains("persist"), "{after}");

    // Attached now, so busy for anyone else.
    let err = open_tap(&request(NetnsRef::Pid(sb.pid()), None)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "creating TAP tap0: Device or resource busy"
    );
    assert_eq!(err.errno(), Some(Errno::EBUSY));

    // Released: attachable again, this time configured. (Retried on EBUSY: a process another
    // test thread is spawning may hold a copy of the fd until it execs.)
    drop(tap);
    let req = request(NetnsRef::Pid(sb.pid()), Some(link_config(65520)));
    let mut again = open_tap(&req);
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(&again, Err(e) if e.errno() == Some(Errno::EBUSY)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        again = open_tap(&req);
    }
    let _tap = again.unwrap();
    assert_configured(&sb);
}

#[test]
fn a_busy_non_persistent_tap_fails() {
    if !have_root() {
        return;
    }
    let sb = Sandbox::new(false);
    let _first = open_tap(&request(NetnsRef::Pid(sb.pid()), None)).unwrap();
    let err = open_tap(&request(NetnsRef::Pid(sb.pid()), None)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "creating TAP tap0: Device or resource busy"
    );
}

#[test]
fn a_nonexistent_pid_is_reported() {
    if !have_root() {
        return;
    }
    // Above PID_MAX_LIMIT (4194304): cannot exist.
    let err = open_tap(&request(NetnsRef::Pid(2_000_000_000), None)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "joining the network namespace of pid 2000000000: No such process"
    );
}

#[test]
fn a_bad_netns_path_is_reported() {
    let err = open_tap(&request(
        NetnsRef::Path(PathBuf::from("/nonexistent/netns")),
        None,
    ))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "joining the network namespace at /nonexistent/netns: No such file or directory"
    );
    if !have_root() {
        return;
    }
    // A regular file is no namespace.
    let err = open_tap(&request(
        NetnsRef::Path(PathBuf::from("/etc/hostname")),
        None,
    ))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "joining the network namespace at /etc/hostname: Invalid argument"
    );
}

/// A bind mount of the sandbox's netns on a temporary file, unmounted on drop.
struct BindMount {
    dir: PathBuf,
    file: PathBuf,
}

impl BindMount {
    fn new(sb: &Sandbox, tag: &str) -> BindMount {
        // Unique even when a PID comes round again and an earlier run left its mount behind.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "slirpnet-test-{}-{tag}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("netns");
        std::fs::write(&file, b"").unwrap();
        let status = Command::new("mount")
            .arg("--bind")
            .arg(format!("/proc/{}/ns/net", sb.pid()))
            .arg(&file)
            .status()
            .unwrap();
        assert!(status.success(), "bind mount failed");
        BindMount { dir, file }
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.file).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn path_mode_with_a_bind_mounted_netns() {
    if !have_root() {
        return;
    }
    let sb = Sandbox::new(false);
    let mount = BindMount::new(&sb, "plain");
    let _tap = open_tap(&request(
        NetnsRef::Path(mount.file.clone()),
        Some(link_config(65520)),
    ))
    .unwrap();
    assert_configured(&sb);
}

#[test]
fn path_mode_with_an_explicit_userns() {
    if !have_root() {
        return;
    }
    let sb = Sandbox::new(true);
    let mount = BindMount::new(&sb, "userns");
    let mut req = request(NetnsRef::Path(mount.file.clone()), Some(link_config(65520)));
    req.userns = Some(PathBuf::from(format!("/proc/{}/ns/user", sb.pid())));
    let _tap = open_tap(&req).unwrap();
    assert_configured(&sb);

    // Naming our own user namespace explicitly is not an error either.
    let sb2 = Sandbox::new(false);
    let mut req = request(NetnsRef::Pid(sb2.pid()), None);
    req.userns = Some(PathBuf::from("/proc/self/ns/user"));
    let _tap2 = open_tap(&req).unwrap();
}

#[test]
fn a_missing_userns_path_is_reported() {
    let mut req = request(NetnsRef::Pid(std::process::id() as i32), None);
    req.userns = Some(PathBuf::from("/nonexistent/userns"));
    let err = open_tap(&req).unwrap_err();
    assert_eq!(
        err.to_string(),
        "joining the user namespace at /nonexistent/userns: No such file or directory"
    );
}

#[test]
fn mtu_below_68_is_refused_and_nothing_is_created() {
    if !have_root() {
        return;
    }
    let sb = Sandbox::new(false);
    let err = open_tap(&request(NetnsRef::Pid(sb.pid()), Some(link_config(67)))).unwrap_err();
    assert!(matches!(err, SysError::MtuTooSmall { .. }));
    assert_eq!(
        err.to_string(),
        "cannot set MTU 67 on tap0: the minimum is 68"
    );
    let (exists, _) = sb.ip(&["link", "show", "tap0"]);
    assert!(!exists);
    // 68 itself is fine.
    let _tap = open_tap(&request(NetnsRef::Pid(sb.pid()), Some(link_config(68)))).unwrap();
    assert!(sb.ip_ok(&["link", "show", "tap0"]).contains("mtu 68 "));
}

#[test]
fn a_failure_in_configure_leaves_nothing_behind() {
    if !have_root() {
        return;
    }
    let sb = Sandbox::new(true);
    let mut cfg = link_config(65520);
    cfg.mac = Some([0x01, 0, 0, 0, 0, 1]); // multicast: the kernel refuses it
    let err = open_tap(&request(NetnsRef::Pid(sb.pid()), Some(cfg))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "setting MAC 01:00:00:00:00:01 on tap0: Cannot assign requested address"
    );
    let (exists, text) = sb.ip(&["link", "show", "tap0"]);
    assert!(!exists, "tap0 left behind: {text}");
}

#[test]
fn invalid_tap_names_are_refused_before_forking() {
    let mut req = request(NetnsRef::Pid(1), None);
    req.tap_name = "a-name-that-is-too-long".to_owned();
    assert!(matches!(open_tap(&req), Err(SysError::InvalidTapName(_))));
}

#[test]
fn vnet_header_and_offloads() {
    if !have_root() {
        return;
    }
    let sb = Sandbox::new(false);
    let mut req = request(NetnsRef::Pid(sb.pid()), Some(link_config(1500)));
    req.vnet_hdr = true;
    let tap = open_tap(&req).unwrap();
    enable_vnet_offloads(tap.as_fd(), 12).unwrap();
    let err = enable_vnet_offloads(tap.as_fd(), 4).unwrap_err();
    assert_eq!(
        err.to_string(),
        "setting the TAP's vnet header size to 4: Invalid argument"
    );
    set_nonblocking(tap.as_fd()).unwrap();
}

fn wait_exit(pid: i32) -> i32 {
    match waitpid(Pid::from_raw(pid), None).unwrap() {
        WaitStatus::Exited(_, code) => code,
        other => panic!("unexpected wait status {other:?}"),
    }
}

fn cmd(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

#[test]
fn run_mode_exit_statuses() {
    if !have_root() {
        return;
    }
    let child = spawn_in_new_namespace(&cmd(&["true"])).unwrap();
    let pid = child.pid();
    child.release().unwrap();
    assert_eq!(wait_exit(pid), 0);

    let child = spawn_in_new_namespace(&cmd(&["sh", "-c", "exit 3"])).unwrap();
    let pid = child.pid();
    child.release().unwrap();
    assert_eq!(wait_exit(pid), 3);

    let child = spawn_in_new_namespace(&cmd(&["/nonexistent/program"])).unwrap();
    let pid = child.pid();
    child.release().unwrap();
    assert_eq!(wait_exit(pid), 127);
}

#[test]
fn run_mode_namespaces_and_tap() {
    if !have_root() {
        return;
    }
    // Inside: root, in a fresh netns holding only lo and our configured tap0.
    let script = "test \"$(id -u)\" = 0 && test \"$(id -g)\" = 0 \
                  && ip addr show tap0 | grep -q 'inet 10.0.2.100/24' \
                  && ip route | grep -q 'default via 10.0.2.2 dev tap0' \
                  && test \"$(ip -o link | cut -d: -f2 | tr -d ' \\n')\" = lotap0";
    let child = spawn_in_new_namespace(&cmd(&["sh", "-c", script])).unwrap();
    let pid = child.pid();
    let own_netns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let child_netns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(
        own_netns, child_netns,
        "the child has no netns of its own yet"
    );
    let _tap = open_tap(&request(NetnsRef::Pid(pid), Some(link_config(65520)))).unwrap();
    child.release().unwrap();
    assert_eq!(wait_exit(pid), 0, "the checks inside the namespace failed");
}

#[test]
fn run_mode_dropped_without_release_is_reaped() {
    if !have_root() {
        return;
    }
    let child = spawn_in_new_namespace(&cmd(&["true"])).unwrap();
    let pid = child.pid();
    drop(child);
    assert_eq!(
        waitpid(Pid::from_raw(pid), None).unwrap_err(),
        Errno::ECHILD,
        "the child was not reaped"
    );
}

#[test]
fn run_mode_rejects_bad_commands() {
    assert!(matches!(
        spawn_in_new_namespace(&[]),
        Err(SysError::InvalidCommand(_))
    ));
    let nul = OsString::from("a\0b");
    assert!(matches!(
        spawn_in_new_namespace(&[nul]),
        Err(SysError::InvalidCommand(_))
    ));
}

#[test]
fn ready_byte_is_written_and_the_fd_closed() {
    let (r, w) = nix::unistd::pipe().unwrap();
    let raw = w.into_raw_fd();
    write_ready_byte(raw).unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(nix::unistd::read(&r, &mut buf).unwrap(), 1);
    assert_eq!(buf[0], b'1');
    // The write end is closed: EOF.
    assert_eq!(nix::unistd::read(&r, &mut buf).unwrap(), 0);
}

#[test]
fn ready_byte_on_a_closed_fd_is_an_error() {
    // A high fd number nothing opens.
    let err = write_ready_byte(999_999).unwrap_err();
    assert_eq!(
        err.to_string(),
        "writing to the ready-fd 999999: Bad file descriptor"
    );
}

#[test]
fn set_nonblocking_sets_the_flag() {
    let (r, _w) = nix::unistd::pipe().unwrap();
    set_nonblocking(r.as_fd()).unwrap();
    let flags = nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    assert!(nix::fcntl::OFlag::from_bits_retain(flags).contains(nix::fcntl::OFlag::O_NONBLOCK));
    let mut buf = [0u8; 1];
    assert_eq!(nix::unistd::read(&r, &mut buf), Err(Errno::EAGAIN));
}
