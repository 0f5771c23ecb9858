//! One run of one cell: fresh namespace, helper (or, for the kernel baseline, a veth pair),
//! servers, client, helper CPU and RSS.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::env::{self, Helper, Netns, Res};
use crate::model::{HelperKind, Mode, Run, Status, UDP_LEN, UDP_RATE};
use crate::{FWD_PORT, HOST_PORT, LATENCY_PORT};

pub struct Plan<'a> {
    pub kind: HelperKind,
    /// The helper's binary (`None` for the kernel baseline).
    pub binary: Option<&'a Path>,
    pub mode: Mode,
    pub mtu: u32,
    pub rep: u32,
    pub duration: f64,
    pub scratch: &'a Path,
    pub run_id: usize,
    /// Set when the suite's namespace has no IPv6: why the IPv6 modes cannot run.
    pub no_ipv6: Option<&'a str>,
    /// More arguments for the helper (`--slirpnet-arg`; none for the others).
    pub extra_args: &'a [String],
}

/// How long the namespace may take to get an IPv6 address and route (SLAAC takes 1–2 s).
const IPV6_WAIT: Duration = Duration::from_secs(10);

pub fn run(plan: &Plan) -> Run {
    let t0 = Instant::now();
    let mut result = Run::new(plan.kind, plan.mode, plan.mtu, plan.rep);
    if let Err((status, why)) = run_inner(plan, &mut result) {
        result.status = status;
        result.error = Some(why);
        result.value = None;
    }
    result.wall_s = t0.elapsed().as_secs_f64();
    result
}

type RunErr = (Status, String);

fn failed(why: impl Into<String>) -> RunErr {
    (Status::Failed, why.into())
}

/// Where the servers listen and the clients connect.
struct Ends {
    /// The address the iperf3 server in the suite's namespace binds (namespace → host modes).
    bind: String,
    /// The address the client in the namespace connects to, to reach that server.
    target: String,
    /// The address the client in the suite's namespace connects to, to reach the iperf3 server
    /// in the namespace (forward modes).
    fwd_target: String,
    /// The address the latency client in the namespace connects to, to reach the suite's
    /// latency server.
    latency: IpAddr,
}

impl Ends {
    /// Through a helper: servers on host loopback, reached through the helper's gateway
    /// (`target`, `gateway`); forwards from host loopback.
    fn helper(ipv6: bool, target: String, gateway: Ipv4Addr) -> Ends {
        Ends {
            bind: if ipv6 { V6 } else { V4 }.into(),
            target,
            fwd_target: V4.into(),
            latency: gateway.into(),
        }
    }

    /// The kernel baseline: the servers in the suite's namespace bind its end of the veth pair
    /// (the namespace cannot reach the suite's loopback), the clients connect across the pair.
    fn kernel(ipv6: bool) -> Ends {
        let host = if ipv6 {
            env::KERNEL_HOST6.to_string()
        } else {
            env::KERNEL_HOST.to_string()
        };
        Ends {
            bind: host.clone(),
            target: host,
            fwd_target: env::KERNEL_NS.to_string(),
            latency: env::KERNEL_HOST.into(),
        }
    }
}

fn record(result: &mut Run, m: Measured) {
    result.value = Some(m.value);
    result.loss_pct = m.loss_pct;
    result.retransmits = m.retransmits;
    result.status = Status::Ok;
}

fn run_inner(plan: &Plan, result: &mut Run) -> Result<(), RunErr> {
    let ipv6 = plan.mode.ipv6();
    if let Some(why) = plan.no_ipv6.filter(|_| ipv6) {
        return Err(failed(why));
    }
    let mut ns = Netns::new().map_err(failed)?;
    if !plan.kind.has_process() {
        // The kernel baseline: no helper, so no start-up time, CPU or RSS to record.
        let _pair = env::VethPair::new(&ns, plan.mtu, ipv6, plan.run_id)
            .map_err(|e| failed(format!("veth pair: {e}")))?;
        let m = measure(plan, &ns, &Ends::kernel(ipv6)).map_err(failed)?;
        record(result, m);
        return Ok(());
    }
    let binary = plan.binary.ok_or_else(|| failed("no helper binary"))?;
    // pasta always gets its forward at start, as engines pass `-t` for published ports;
    // slirp4netns-like helpers get an API socket only when the mode needs a forward.
    let fwd = (plan.mode.forwards() || plan.kind == HelperKind::Pasta).then_some(FWD_PORT);
    let start = env::Start {
        kind: plan.kind,
        binary,
        mtu: plan.mtu,
        fwd_port: fwd,
        ipv6,
        scratch: plan.scratch,
        run_id: plan.run_id,
        extra_args: plan.extra_args,
    };
    let mut helper =
        env::start_helper(&start, &mut ns).map_err(|e| failed(format!("start: {e}")))?;
    result.ready_ms = Some(helper.ready.as_secs_f64() * 1000.0);
    std::thread::sleep(Duration::from_millis(50));
    result.idle_rss_kib = env::status_kib(helper.pid, "VmRSS");
    if plan.mode.forwards() {
        helper.add_hostfwd(FWD_PORT).map_err(|(unsupported, why)| {
            let status = if unsupported {
                Status::Unsupported
            } else {
                Status::Failed
            };
            (status, why)
        })?;
    }

    // Where the client connects: the gateway that reaches host loopback.
    let target = if ipv6 {
        ipv6_target(plan.kind, &ns, &mut helper)?
    } else {
        helper.gateway.to_string()
    };
    let ends = Ends::helper(ipv6, target, helper.gateway);

    let cpu0 = env::cpu_seconds(helper.pid);
    let w0 = Instant::now();
    let measured = measure(plan, &ns, &ends);
    let wall = w0.elapsed().as_secs_f64();
    let cpu1 = env::cpu_seconds(helper.pid);
    result.peak_rss_kib = env::status_kib(helper.pid, "VmHWM");
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        result.cpu = Some((b - a) / wall);
    }
    let alive = helper.alive();
    match measured {
        Ok(m) => {
            record(result, m);
            if !alive {
                result.status = Status::Failed;
                return Err(failed(format!(
                    "helper died during the run: {}",
                    helper.stderr_tail()
                )));
            }
            Ok(())
        }
        Err(e) => {
            let extra = if alive {
                String::new()
            } else {
                format!(" (helper died: {})", helper.stderr_tail())
            };
            Err(failed(format!("{e}{extra}")))
        }
    }
}

/// Waits for the namespace's IPv6 (address and default route) and picks the IPv6 gateway:
/// fd00::2 for slirp4netns and slirpnet, the namespace's default gateway for pasta (mapped to
/// host `::1` by its --map-gw default).
fn ipv6_target(kind: HelperKind, ns: &Netns, helper: &mut Helper) -> Result<String, RunErr> {
    let t0 = Instant::now();
    let state = ns.wait_ipv6(IPV6_WAIT).map_err(|state| {
        let waited = t0.elapsed().as_secs_f64();
        let dead = if helper.alive() {
            String::new()
        } else {
            format!(" (helper died: {})", helper.stderr_tail())
        };
        if kind == HelperKind::Pasta && state.none() && dead.is_empty() {
            (
                Status::Unsupported,
                format!(
                    "pasta configured no IPv6 in the namespace ({}): {}",
                    state.describe(),
                    helper.stderr_tail()
                ),
            )
        } else {
            failed(format!(
                "no usable IPv6 in the namespace after {waited:.0} s ({}){dead}",
                state.describe()
            ))
        }
    })?;
    match kind {
        HelperKind::Slirpnet | HelperKind::SlirpnetSplice | HelperKind::Slirp4netns => {
            Ok(env::SLIRP_GATEWAY6.to_string())
        }
        HelperKind::Pasta => state
            .gateway_target()
            .ok_or_else(|| failed("no IPv6 default gateway")),
        HelperKind::Kernel => Err(failed("the kernel baseline has no gateway")),
    }
}

struct Measured {
    value: f64,
    loss_pct: Option<f64>,
    retransmits: Option<u64>,
}

fn measure(plan: &Plan, ns: &Netns, ends: &Ends) -> Res<Measured> {
    let d = plan.duration;
    match plan.mode {
        Mode::TcpNsHost | Mode::Tcp6NsHost => iperf_to_host(ns, ends, d, &[]),
        Mode::TcpHostNs | Mode::Tcp6HostNs => iperf_to_host(ns, ends, d, &["-R"]),
        Mode::UdpNsHost => iperf_to_host(
            ns,
            ends,
            d,
            &["-u", "-b", UDP_RATE, "-l", &UDP_LEN.to_string()],
        ),
        Mode::TcpFwdIn => iperf_into_ns(ns, ends, d, &[]),
        Mode::TcpFwdOut => iperf_into_ns(ns, ends, d, &["-R"]),
        Mode::TcpRr => latency(ns, ends.latency, d, "rr"),
        Mode::TcpCrr => latency(ns, ends.latency, d, "crr"),
    }
}

fn iperf_client_args(target: &str, port: u16, duration: f64, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "-c",
        target,
        "-p",
        &port.to_string(),
        "-t",
        &format!("{duration}"),
        "-J",
        "--connect-timeout",
        "5000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Host loopback addresses the iperf3 server binds.
const V4: &str = "127.0.0.1";
const V6: &str = "::1";

/// iperf3 server in the suite's namespace (`ends.bind`: host loopback, or the kernel
/// baseline's end of the veth pair), client in the namespace connecting to `ends.target`.
fn iperf_to_host(ns: &Netns, ends: &Ends, duration: f64, extra: &[&str]) -> Res<Measured> {
    let mut server = Command::new("iperf3");
    server.args(["-s", "-1", "-B", &ends.bind, "-p", &HOST_PORT.to_string()]);
    let mut client = ns.command("iperf3");
    client.args(iperf_client_args(&ends.target, HOST_PORT, duration, extra));
    iperf_pair(server, "self", client, HOST_PORT, duration)
}

/// iperf3 server in the namespace, client in the suite's namespace to `ends.fwd_target`
/// (127.0.0.1:FWD_PORT, forwarded by the helper; or the namespace's end of the veth pair).
fn iperf_into_ns(ns: &Netns, ends: &Ends, duration: f64, extra: &[&str]) -> Res<Measured> {
    let mut server = ns.command("iperf3");
    server.args(["-s", "-1", "-p", &FWD_PORT.to_string()]);
    let mut client = Command::new("iperf3");
    client.args(iperf_client_args(
        &ends.fwd_target,
        FWD_PORT,
        duration,
        extra,
    ));
    iperf_pair(server, &ns.pid.to_string(), client, FWD_PORT, duration)
}

/// Direct host loopback: iperf3 client and server both on 127.0.0.1 in the suite's namespace,
/// no namespace crossed (the ceiling of any forward from host loopback); Gbit/s.
pub fn loopback(duration: f64) -> Res<f64> {
    let mut server = Command::new("iperf3");
    server.args(["-s", "-1", "-B", V4, "-p", &HOST_PORT.to_string()]);
    let mut client = Command::new("iperf3");
    client.args(iperf_client_args(V4, HOST_PORT, duration, &[]));
    iperf_pair(server, "self", client, HOST_PORT, duration).map(|m| m.value)
}

/// Starts the iperf3 `server` (one test, `-1`), waits until it listens on `port` in the
/// namespace of `server_pid`, runs the `client` and reads its JSON.
fn iperf_pair(
    mut server: Command,
    server_pid: &str,
    client: Command,
    port: u16,
    duration: f64,
) -> Res<Measured> {
    let mut server = server
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3: {e}"))?;
    let r = env::wait_listening(server_pid, port, &mut server)
        .and_then(|_| iperf_client(client, duration));
    finish_server(&mut server);
    r
}

fn finish_server(server: &mut std::process::Child) {
    if env::wait_timeout(server, Duration::from_secs(2)).is_none() {
        env::stop(server);
    }
}

fn iperf_client(mut client: Command, duration: f64) -> Res<Measured> {
    let out = run_with_timeout(&mut client, duration + 20.0)?;
    let v: Value = serde_json::from_str(&out).map_err(|_| {
        format!(
            "iperf3 gave no JSON: {}",
            out.chars().take(200).collect::<String>()
        )
    })?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(format!("iperf3: {e}"));
    }
    let end = &v["end"];
    let received = &end["sum_received"];
    let bps = received["bits_per_second"]
        .as_f64()
        .ok_or("iperf3: no end.sum_received.bits_per_second")?;
    Ok(Measured {
        value: bps / 1e9,
        loss_pct: received["lost_percent"].as_f64(),
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
    })
}

/// Runs a client to completion with a deadline, returning its stdout.
fn run_with_timeout(cmd: &mut Command, timeout_s: f64) -> Res<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("client: {e}"))?;
    // Drain the pipes on threads so a chatty client cannot block on a full pipe.
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let status = env::wait_timeout(&mut child, Duration::from_secs_f64(timeout_s));
    if status.is_none() {
        env::stop(&mut child);
    }
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    match status {
        None => Err(format!("client did not finish within {timeout_s:.0} s")),
        Some(s) if !s.success() && out.trim().is_empty() => Err(format!(
            "client exited {s}: {}",
            err.trim().chars().take(300).collect::<String>()
        )),
        Some(_) => Ok(out),
    }
}

/// The latency client (this binary, `__latency`) in the namespace against the host server.
fn latency(ns: &Netns, server: IpAddr, duration: f64, kind: &str) -> Res<Measured> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut client = ns.command(exe.to_str().ok_or("exe path not UTF-8")?);
    client.args([
        "__latency",
        kind,
        &SocketAddr::from((server, LATENCY_PORT)).to_string(),
        &format!("{duration}"),
    ]);
    let out = run_with_timeout(&mut client, duration + 20.0)?;
    let mut words = out.split_whitespace();
    let count: f64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("latency client: {}", out.trim()))?;
    let secs: f64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or("latency client: no time")?;
    Ok(Measured {
        value: count / secs,
        loss_pct: None,
        retransmits: None,
    })
}

/// Host side of the latency modes, on LATENCY_PORT of every address of the suite's namespace
/// for the whole suite: host loopback for the helpers, the suite's end of the kernel baseline's
/// veth pair (which exists only during a run). The first byte of a connection selects: `r` =
/// echo one byte per request until EOF; `c` = answer one byte, then close (the server closes
/// first, so TIME_WAIT stays on the host side and the namespace never runs out of ports).
pub fn start_latency_server() -> Res<()> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, LATENCY_PORT))
        .map_err(|e| format!("latency server: {e}"))?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_err() {
                continue;
            }
            if b[0] == b'c' {
                let _ = s.write_all(b"C");
                continue; // dropped: closed
            }
            std::thread::spawn(move || {
                loop {
                    if s.write_all(&b).is_err() || s.read_exact(&mut b).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// `__latency rr|crr ADDR:PORT SECS`: prints "COUNT SECONDS".
pub fn latency_client_main(args: &[String]) -> ExitCode {
    match latency_client(args) {
        Ok((count, secs)) => {
            println!("{count} {secs}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("latency client: {e}");
            ExitCode::from(1)
        }
    }
}

fn latency_client(args: &[String]) -> Result<(u64, f64), String> {
    let [kind, addr, secs] = args else {
        return Err("usage: __latency rr|crr ADDR:PORT SECS".into());
    };
    let addr: SocketAddr = addr.parse().map_err(|_| format!("bad address {addr}"))?;
    let secs: f64 = secs.parse().map_err(|_| format!("bad duration {secs}"))?;
    let timeout = Duration::from_secs(5);
    let connect = || -> std::io::Result<TcpStream> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(s)
    };
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    let mut count = 0u64;
    let mut b = [0u8; 1];
    match kind.as_str() {
        "rr" => {
            let mut s = connect().map_err(|e| format!("connect {addr}: {e}"))?;
            while Instant::now() < deadline {
                s.write_all(b"r").map_err(|e| format!("write: {e}"))?;
                s.read_exact(&mut b).map_err(|e| format!("read: {e}"))?;
                count += 1;
            }
        }
        "crr" => {
            while Instant::now() < deadline {
                let mut s = connect().map_err(|e| format!("connect {addr}: {e}"))?;
                s.write_all(b"c").map_err(|e| format!("write: {e}"))?;
                s.read_exact(&mut b).map_err(|e| format!("read: {e}"))?;
                // Wait for the server's close.
                let mut rest = Vec::new();
                s.read_to_end(&mut rest)
                    .map_err(|e| format!("read EOF: {e}"))?;
                count += 1;
            }
        }
        other => return Err(format!("unknown kind {other}")),
    }
    Ok((count, t0.elapsed().as_secs_f64()))
}
