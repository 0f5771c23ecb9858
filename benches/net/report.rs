//! Results: the JSON document, the summary table, docs/benchmarks.md and the SVG plot.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::cli::{self, Options};
use crate::model::{self, HelperKind, Mode, Run, Spread};

pub fn fmt_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_kib: Option<u64> = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines().find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    });
    let iperf3 = std::process::Command::new("iperf3")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": cores,
        "kernel": kernel,
        "mem_kib": mem_kib,
        "iperf3": iperf3,
        "tcp_congestion_control": crate::env::congestion_control(),
    })
}

/// `helpers`: kind, binary (none for the kernel baseline), version. `loopback`: the direct host
/// loopback runs (Gbit/s), when measured.
pub fn results_json(
    opts: &Options,
    helpers: &[(HelperKind, Option<String>, String)],
    runs: &[Run],
    loopback: Option<&[Result<f64, String>]>,
) -> Value {
    json!({
        "suite": "slirpnet benches/net.rs",
        "format": 1,
        "date": utc_now(),
        "command": cli::command_line(&opts.given),
        "machine": machine(),
        "options": {
            "duration_s": opts.duration,
            "reps": opts.reps,
            "mtus": opts.mtus,
            "modes": opts.modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "quick": opts.quick,
            "congestion_control": opts.congestion_control,
            "udp_rate": model::UDP_RATE,
            "udp_len": model::UDP_LEN,
        },
        "helpers": helpers.iter().map(|(k, path, version)| json!({
            "name": k.name(), "path": path, "version": version,
        })).collect::<Vec<_>>(),
        "runs": runs.iter().map(Run::to_json).collect::<Vec<_>>(),
        "loopback": loopback.map(|l| l.iter().map(|r| match r {
            Ok(v) => json!({ "value": v, "error": null }),
            Err(e) => json!({ "value": null, "error": e }),
        }).collect::<Vec<_>>()),
    })
}

/// Everything the reports need, read back from the JSON document.
pub struct Summary {
    doc: Value,
    helpers: Vec<HelperKind>,
    modes: Vec<Mode>,
    mtus: Vec<u32>,
    runs: Vec<Run>,
    /// Direct host loopback (Gbit/s) and how many of its runs failed, when measured.
    loopback: Option<(Option<Spread>, usize)>,
}

/// `a / b` of two medians (`None` without both, or with `b` zero).
pub fn ratio_of(a: Option<Spread>, b: Option<Spread>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

/// A ratio as a factor ("1.27×").
fn times(r: Option<f64>) -> String {
    r.map_or("—".into(), |r| format!("{r:.2}×"))
}

/// A ratio as a share ("86 %").
fn percent(r: Option<f64>) -> String {
    r.map_or("—".into(), |r| format!("{:.0} %", r * 100.0))
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn spread_text(s: &Spread) -> String {
    if s.n == 1 {
        num(s.median)
    } else {
        format!("{} [{}–{}]", num(s.median), num(s.min), num(s.max))
    }
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

impl Summary {
    pub fn from_json(doc: &Value) -> Result<Summary, String> {
        let runs: Vec<Run> = doc["runs"]
            .as_array()
            .ok_or("results: no runs")?
            .iter()
            .filter_map(Run::from_json)
            .collect();
        let helpers: Vec<HelperKind> = doc["helpers"]
            .as_array()
            .ok_or("results: no helpers")?
            .iter()
            .filter_map(|h| HelperKind::from_name(h["name"].as_str()?))
            .collect();
        let modes = doc["options"]["modes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| Mode::from_name(m.as_str()?))
                    .collect()
            })
            .unwrap_or_default();
        let mtus = doc["options"]["mtus"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| Some(m.as_u64()? as u32)).collect())
            .unwrap_or_default();
        let loopback = doc["loopback"].as_array().map(|l| {
            let values = l.iter().filter_map(|r| r["value"].as_f64());
            let failed = l.iter().filter(|r| r["value"].as_f64().is_none()).count();
            (Spread::of(values), failed)
        });
        Ok(Summary {
            doc: doc.clone(),
            helpers,
            modes,
            mtus,
            runs,
            loopback,
        })
    }

    /// The helpers that are processes (start-up, CPU and RSS columns).
    fn processes(&self) -> impl Iterator<Item = HelperKind> + '_ {
        self.helpers.iter().copied().filter(|h| h.has_process())
    }

    fn cell(&self, h: HelperKind, mode: Mode, mtu: u32) -> model::Cell {
        model::cell(&self.runs, h, mode, mtu)
    }

    fn value_text(&self, h: HelperKind, mode: Mode, mtu: u32) -> String {
        let c = self.cell(h, mode, mtu);
        let mut t = match &c.value {
            Some(s) => spread_text(s),
            None if c.runs == 0 => "—".into(),
            None if c.unsupported > 0 => "unsupported".into(),
            None => "failed".into(),
        };
        if let Some(l) = c.loss.filter(|_| mode == Mode::UdpNsHost) {
            let _ = write!(t, " (loss {:.1} %)", l.median);
        }
        let bad = c.failed + c.unsupported;
        if c.value.is_some() && bad > 0 {
            let _ = write!(t, " ({bad}/{} failed)", c.runs);
        }
        t
    }

    /// slirpnet's median over `other`'s.
    fn ratio(&self, mode: Mode, mtu: u32, other: HelperKind) -> Option<f64> {
        self.ratio_between(HelperKind::Slirpnet, other, mode, mtu)
    }

    /// `a`'s median over `b`'s.
    fn ratio_between(&self, a: HelperKind, b: HelperKind, mode: Mode, mtu: u32) -> Option<f64> {
        ratio_of(self.cell(a, mode, mtu).value, self.cell(b, mode, mtu).value)
    }

    fn has_spliced(&self) -> bool {
        self.helpers.contains(&HelperKind::SlirpnetSplice)
    }

    fn has_kernel(&self) -> bool {
        self.helpers.contains(&HelperKind::Kernel)
    }

    /// Rows of the main table: mode, MTU, unit, one column per helper, two ratios, and with the
    /// kernel baseline slirpnet's share of it.
    fn main_rows(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let mut head = vec!["mode".to_string(), "MTU".into(), "unit".into()];
        head.extend(self.helpers.iter().map(|h| h.label().to_string()));
        head.push("slirpnet/slirp4netns".into());
        head.push("slirpnet/pasta".into());
        if self.has_spliced() {
            head.push("spliced/pasta".into());
        }
        if self.has_kernel() {
            head.push("slirpnet/kernel".into());
        }
        let mut rows = Vec::new();
        for &mode in &self.modes {
            for &mtu in &self.mtus {
                let mut row = vec![mode.name().to_string(), mtu.to_string(), mode.unit().into()];
                row.extend(self.helpers.iter().map(|&h| self.value_text(h, mode, mtu)));
                row.push(times(self.ratio(mode, mtu, HelperKind::Slirp4netns)));
                row.push(times(self.ratio(mode, mtu, HelperKind::Pasta)));
                if self.has_spliced() {
                    row.push(times(self.ratio_between(
                        HelperKind::SlirpnetSplice,
                        HelperKind::Pasta,
                        mode,
                        mtu,
                    )));
                }
                if self.has_kernel() {
                    row.push(percent(self.ratio(mode, mtu, HelperKind::Kernel)));
                }
                rows.push(row);
            }
        }
        (head, rows)
    }

    /// The direct host loopback figure, one line, when measured.
    fn loopback_text(&self) -> Option<String> {
        let (spread, failed) = self.loopback.as_ref()?;
        let value = match spread {
            Some(s) => format!("{} Gbit/s", spread_text(s)),
            None => "failed".into(),
        };
        let failed = if *failed > 0 && spread.is_some() {
            format!(" ({failed} run(s) failed)")
        } else {
            String::new()
        };
        Some(format!(
            "direct host loopback (iperf3 client and server both on 127.0.0.1, no namespace \
             crossed; the ceiling of any forward from host loopback): {value}{failed}"
        ))
    }

    /// Rows of the resource table: helper CPU (cores) and peak RSS per cell.
    fn resource_rows(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let mut head = vec!["mode".to_string(), "MTU".into()];
        for h in self.processes() {
            head.push(format!("{} CPU", h.name()));
            head.push(format!("{} peak RSS", h.name()));
        }
        let mut rows = Vec::new();
        for &mode in &self.modes {
            for &mtu in &self.mtus {
                let mut row = vec![mode.name().to_string(), mtu.to_string()];
                for h in self.processes() {
                    let c = self.cell(h, mode, mtu);
                    row.push(
                        c.cpu
                            .map(|s| format!("{:.2}", s.median))
                            .unwrap_or("—".into()),
                    );
                    row.push(c.peak_rss.map(|s| mib(s.median)).unwrap_or("—".into()));
                }
                rows.push(row);
            }
        }
        (head, rows)
    }

    fn startup_rows(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let head = ["helper", "version", "start → ready (ms)", "idle RSS"]
            .map(String::from)
            .to_vec();
        let rows = self
            .processes()
            .map(|h| {
                let s = model::startup(&self.runs, h);
                let version = self.doc["helpers"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["name"] == h.name()))
                    .and_then(|x| x["version"].as_str())
                    .unwrap_or("")
                    .to_string();
                vec![
                    h.name().to_string(),
                    version,
                    s.ready_ms.as_ref().map(spread_text).unwrap_or("—".into()),
                    s.idle_rss.map(|s| mib(s.median)).unwrap_or("—".into()),
                ]
            })
            .collect();
        (head, rows)
    }

    /// Failed or unsupported cells, grouped by helper and first error, for the record.
    fn failures(&self) -> Vec<String> {
        let mut groups: Vec<(HelperKind, String, Vec<String>)> = Vec::new();
        for &h in &self.helpers {
            for &mode in &self.modes {
                for &mtu in &self.mtus {
                    let c = self.cell(h, mode, mtu);
                    let bad = c.failed + c.unsupported;
                    let Some(e) = c.first_error.filter(|_| bad > 0) else {
                        continue;
                    };
                    let what = if c.unsupported > 0 {
                        "unsupported"
                    } else {
                        "failed"
                    };
                    let key = format!("{what}: {e}");
                    let cell = format!("{} MTU {mtu} ({bad}/{})", mode.name(), c.runs);
                    match groups.iter_mut().find(|(gh, gk, _)| *gh == h && *gk == key) {
                        Some(g) => g.2.push(cell),
                        None => groups.push((h, key, vec![cell])),
                    }
                }
            }
        }
        groups
            .into_iter()
            .map(|(h, key, cells)| format!("{} {key} — in {}", h.label(), cells.join(", ")))
            .collect()
    }

    pub fn text_table(&self) -> String {
        let mut out = String::new();
        let (h, r) = self.main_rows();
        out.push_str(
            "\nmedian [min–max] over repetitions; ratios of medians (higher = slirpnet faster)\n",
        );
        out.push_str(&aligned(&h, &r));
        if let Some(l) = self.loopback_text() {
            let _ = writeln!(out, "{l}");
        }
        let (h, r) = self.resource_rows();
        out.push_str(
            "\nhelper CPU (user+sys cores per second of wall time) and peak RSS (VmHWM), medians\n",
        );
        out.push_str(&aligned(&h, &r));
        let (h, r) = self.startup_rows();
        out.push('\n');
        out.push_str(&aligned(&h, &r));
        let failures = self.failures();
        if !failures.is_empty() {
            out.push_str("\nfailures (first error, and the cells where it happened):\n");
            for f in failures {
                let _ = writeln!(out, "  {f}");
            }
        }
        out
    }

    /// `name`: the docs files' stem (`--docs-name`), for the plot and the regeneration command.
    pub fn markdown(&self, name: &str) -> String {
        let d = &self.doc;
        let m = &d["machine"];
        let o = &d["options"];
        let mut s = String::new();
        s.push_str("# Benchmarks\n\n");
        s.push_str(
            "slirpnet against slirp4netns and pasta on the same machine in the same run, \
             with the kernel itself (a veth pair, no user-mode helper) as the ceiling, \
             generated by the benchmark suite (`benches/net.rs`); do not edit by hand.\n\n",
        );
        let _ = writeln!(s, "- date: {}", d["date"].as_str().unwrap_or("?"));
        let _ = writeln!(
            s,
            "- machine: {}, {} cores, kernel {}, {:.1} GiB RAM",
            m["cpu"].as_str().unwrap_or("?"),
            m["cores"],
            m["kernel"].as_str().unwrap_or("?"),
            m["mem_kib"].as_f64().unwrap_or(0.0) / 1048576.0
        );
        let _ = writeln!(s, "- {}", m["iperf3"].as_str().unwrap_or("iperf3"));
        if let Some(cc) = m["tcp_congestion_control"].as_str() {
            let how = if o["congestion_control"].is_string() {
                "set by `--congestion-control`"
            } else {
                "the kernel's default here"
            };
            let _ = writeln!(
                s,
                "- TCP congestion control in every namespace: {cc} ({how}; it sets the pace of \
                 every sender, see performance.md, \"Congestion control\")"
            );
        }
        let _ = writeln!(
            s,
            "- command (as root): `{}`",
            d["command"].as_str().unwrap_or("?")
        );
        let _ = writeln!(
            s,
            "- {} s per run, {} repetition(s) per cell, helpers interleaved (A B C A B C …), \
             a fresh namespace and helper per run",
            o["duration_s"], o["reps"]
        );
        let _ = write!(
            s,
            "\n![throughput and latency per mode and MTU]({name}.svg)\n\n"
        );
        s.push_str("## Results\n\nMedian [min–max] over repetitions. Ratios are of medians: above 1× slirpnet is faster.");
        if self.has_kernel() {
            s.push_str(
                " `kernel (veth)` is no user-mode helper at all: the run's namespace is linked \
                 to the suite's namespace (the \"host\") by a veth pair, and the same clients \
                 and servers talk across it, so the kernel does all the work; it is the ceiling \
                 a user-mode helper on this machine is measured against. `slirpnet/kernel` is \
                 slirpnet's share of it (100 % = as fast as the kernel's own path).",
            );
        }
        if self.has_spliced() {
            s.push_str(
                " `slirpnet (spliced)` is the same binary with `--enable-forward-splice`, \
                 measured in the forward modes only (the one place the option acts): a \
                 connection from host loopback is spliced socket to socket into the namespace, \
                 as pasta's forwards are, instead of crossing the TAP; the guest then sees it \
                 from its own address, not the gateway, so it is not the default. \
                 `spliced/pasta` is its median over pasta's.",
            );
        }
        s.push_str("\n\n");
        let (h, r) = self.main_rows();
        s.push_str(&markdown_table(&h, &r));
        if let Some(l) = self.loopback_text() {
            let mut l = l;
            l[..1].make_ascii_uppercase();
            let _ = writeln!(
                s,
                "\n{l}; {} s per run, one run per repetition.",
                o["duration_s"]
            );
        }
        s.push_str("\n## Helper CPU and memory\n\nCPU: the helper's user+sys time per second of wall time during the measurement (1.00 = one core busy). Peak RSS: VmHWM at the end of the run. (The kernel baseline has no process: its work is done in the clients', servers' and softirq context and is not counted here.)\n\n");
        let (h, r) = self.resource_rows();
        s.push_str(&markdown_table(&h, &r));
        s.push_str("\n## Start-up\n\nFrom spawning the helper to readiness (slirp4netns, slirpnet: the byte on the ready fd; pasta: its parent's exit once it daemonizes, as Podman waits for it; the `ip netns attach` before it is not counted), and RSS 50 ms later. Medians over all runs of the helper.\n\n");
        let (h, r) = self.startup_rows();
        s.push_str(&markdown_table(&h, &r));
        let failures = self.failures();
        if !failures.is_empty() {
            s.push_str("\n## Failed or unsupported cells\n\n");
            for f in failures {
                let _ = writeln!(s, "- {}", f.replace('|', "\\|"));
            }
        }
        let _ = write!(
            s,
            "\n## Modes\n\n\
             - `tcp-ns-host`: iperf3 client in the namespace, server on host 127.0.0.1, reached \
             through the gateway (10.0.2.2 for slirp4netns and slirpnet; for pasta the namespace's \
             default gateway, which it maps to host loopback).\n\
             - `tcp-host-ns`: the same with `-R` (data flows host → namespace).\n\
             - `tcp6-ns-host`, `tcp6-host-ns`: the same two over IPv6, server on host `::1`, \
             reached through the IPv6 gateway (slirp4netns and slirpnet started with `-6`: \
             fd00::2; pasta: the namespace's IPv6 default gateway, fd99::2 copied from the \
             suite's namespace, which it maps to host loopback), measured once the namespace \
             has a global IPv6 address and default route (SLAAC, not timed).\n\
             - `tcp-fwd-in`: iperf3 server in the namespace, client on the host to \
             127.0.0.1:{fwd}, forwarded (slirp4netns, slirpnet: `add_hostfwd` over the `-a` API \
             socket; pasta: `-t {fwd}`); data flows host → namespace.\n\
             - `tcp-fwd-out`: the same with `-R` (namespace → host).\n\
             - `udp-ns-host`: iperf3 UDP, namespace → host at {rate}bit/s offered, {len}-byte \
             datagrams; received rate and loss.\n\
             - `tcp-rr`: 1-byte request/response round trips per second on one connection \
             (TCP_NODELAY), client in the namespace, server on host loopback.\n\
             - `tcp-crr`: connect + 1-byte request/response + close per second.\n\n\
             The kernel baseline (`kernel (veth)`, `--helpers kernel`) runs the same modes with \
             no user-mode helper: the run's namespace gets a veth pair to the suite's namespace \
             (198.18.1.1 there, 198.18.1.2 in the namespace; fd98::1 and fd98::2; both ends at \
             the run's MTU). The servers in the suite's namespace bind its end of the pair (the \
             namespace cannot reach the suite's loopback over a veth) and the namespace's clients \
             connect to it; in the forward modes there is no forward: the client connects \
             straight to the namespace's end, the kernel's own path into a namespace. \
             With the kernel baseline and a forward mode, each repetition also measures direct \
             host loopback (client and server both on 127.0.0.1 in the suite's namespace), the \
             ceiling of a forward from host loopback.\n\n\
             Everything runs inside a network namespace the suite makes itself \
             (`unshare --net --mount --pid`), holding only `lo` and a veth to a dead-end \
             namespace (198.18.0.2 and fd99::2, needed by pasta, which refuses to start without \
             a routable interface and sets up IPv6 only with an IPv6 default route), and for the \
             kernel baseline the veth pair to the run's namespace: no packet can leave the \
             machine.\n\n\
             Rerun: `sudo cargo bench --bench net` (about 45 minutes with the defaults; \
             `-- --quick` takes under a minute). Regenerate this page from the raw results: \
             `cargo bench --bench net -- --docs-only --json docs/{name}.json{name_arg}`.\n",
            name_arg = if name == "benchmarks" {
                String::new()
            } else {
                format!(" --docs-name {name}")
            },
            fwd = crate::FWD_PORT,
            rate = model::UDP_RATE,
            len = model::UDP_LEN,
        );
        s
    }

    /// "slirpnet vs slirp4netns vs pasta", and the kernel baseline when there.
    fn title(&self) -> String {
        let mut t = self
            .processes()
            .map(|h| h.label())
            .collect::<Vec<_>>()
            .join(" vs ");
        if self.has_kernel() {
            if !t.is_empty() {
                t.push_str(", ");
            }
            t.push_str("kernel (veth) as the ceiling");
        }
        t
    }

    /// Small multiples: one panel per mode, groups per MTU, one bar per helper (median, with a
    /// min–max whisker).
    pub fn svg(&self) -> String {
        let cols = 2usize;
        let (pw, ph) = (460.0, 250.0);
        let (ml, mr, mt, mb) = (70.0, 15.0, 34.0, 40.0);
        let top = 50.0;
        let rows = self.modes.len().div_ceil(cols);
        let width = pw * cols as f64;
        let height = top + ph * rows as f64 + 10.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="15" font-weight="bold">{} — {}</text>"#,
            self.title(),
            esc(self.doc["date"].as_str().unwrap_or(""))
        );
        // Legend.
        let mut lx = 10.0;
        for &h in &self.helpers {
            let _ = writeln!(
                s,
                r#"<rect x="{lx}" y="30" width="12" height="12" fill="{}"/><text x="{}" y="40">{}</text>"#,
                h.colour(),
                lx + 16.0,
                h.label()
            );
            lx += 30.0 + 8.0 * h.label().len() as f64;
        }
        let _ = writeln!(
            s,
            r##"<text x="{lx}" y="40" fill="#555">bars: median, whiskers: min–max; higher is better</text>"##
        );
        for (i, &mode) in self.modes.iter().enumerate() {
            let x0 = pw * (i % cols) as f64;
            let y0 = top + ph * (i / cols) as f64;
            let (px, py) = (x0 + ml, y0 + mt);
            let (w, h) = (pw - ml - mr, ph - mt - mb);
            let max = self
                .mtus
                .iter()
                .flat_map(|&mtu| {
                    self.helpers
                        .iter()
                        .filter_map(move |&hk| self.cell(hk, mode, mtu).value.map(|v| v.max))
                })
                .fold(0.0, f64::max);
            let (step, top_val) = nice_axis(max);
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
                px,
                y0 + 20.0,
                esc(mode.label())
            );
            // Y axis, grid, ticks.
            let mut t = 0.0;
            while t <= top_val + step / 2.0 {
                let y = py + h - t / top_val * h;
                let _ = writeln!(
                    s,
                    r##"<line x1="{px}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="10">{}</text>"##,
                    px + w,
                    px - 4.0,
                    y + 3.5,
                    tick(t, step)
                );
                t += step;
            }
            let _ = writeln!(
                s,
                r##"<line x1="{px}" y1="{py}" x2="{px}" y2="{:.1}" stroke="#333"/><line x1="{px}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
                py + h,
                py + h,
                px + w,
                py + h
            );
            let (lx, ly) = (x0 + 16.0, py + h / 2.0);
            let _ = writeln!(
                s,
                r#"<text x="{lx}" y="{ly:.1}" text-anchor="middle" transform="rotate(-90 {lx} {ly:.1})">{}</text>"#,
                mode.unit()
            );
            // Groups per MTU.
            let groups = self.mtus.len().max(1) as f64;
            let gw = w / groups;
            let nb = self.helpers.len().max(1) as f64;
            let bw = (gw * 0.7 / nb).min(50.0);
            for (g, &mtu) in self.mtus.iter().enumerate() {
                let gx = px + gw * g as f64 + (gw - bw * nb) / 2.0;
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">MTU {mtu}</text>"#,
                    px + gw * (g as f64 + 0.5),
                    py + h + 16.0
                );
                for (b, &hk) in self.helpers.iter().enumerate() {
                    let bx = gx + bw * b as f64;
                    let c = self.cell(hk, mode, mtu);
                    match c.value {
                        Some(v) => {
                            let bh = v.median / top_val * h;
                            let _ = writeln!(
                                s,
                                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{} MTU {mtu}: {} {}</title></rect>"#,
                                bx + 1.0,
                                py + h - bh,
                                bw - 2.0,
                                hk.colour(),
                                hk.label(),
                                spread_text(&v),
                                mode.unit()
                            );
                            if v.n > 1 {
                                let cx = bx + bw / 2.0;
                                let (y1, y2) =
                                    (py + h - v.min / top_val * h, py + h - v.max / top_val * h);
                                let _ = writeln!(
                                    s,
                                    r#"<line x1="{cx:.1}" y1="{y1:.1}" x2="{cx:.1}" y2="{y2:.1}" stroke="black"/><line x1="{:.1}" y1="{y2:.1}" x2="{:.1}" y2="{y2:.1}" stroke="black"/><line x1="{:.1}" y1="{y1:.1}" x2="{:.1}" y2="{y1:.1}" stroke="black"/>"#,
                                    cx - 3.0,
                                    cx + 3.0,
                                    cx - 3.0,
                                    cx + 3.0
                                );
                            }
                            let _ = writeln!(
                                s,
                                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"#,
                                bx + bw / 2.0,
                                py + h - bh.max(v.max / top_val * h) - 3.0,
                                num(v.median)
                            );
                        }
                        None if c.runs > 0 => {
                            let _ = writeln!(
                                s,
                                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9" fill="{}">{}</text>"##,
                                bx + bw / 2.0,
                                py + h - 4.0,
                                hk.colour(),
                                if c.unsupported > 0 { "n/s" } else { "fail" }
                            );
                        }
                        None => {}
                    }
                }
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// A tick step of 1, 2 or 5 × 10^k giving about five ticks, and the axis top.
fn nice_axis(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 5.0);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    (step, (max / step).ceil().max(1.0) * step)
}

/// A tick label with as many decimals as the step needs.
fn tick(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    format!("{v:.decimals$}")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn aligned(head: &[String], rows: &[Vec<String>]) -> String {
    let n = head.len();
    let mut w = vec![0usize; n];
    for r in std::iter::once(head).chain(rows.iter().map(Vec::as_slice)) {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(head).chain(rows.iter().map(Vec::as_slice)) {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(w[i] - c.chars().count())))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn markdown_table(head: &[String], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", head.join(" | "));
    out.push_str(&format!("|{}\n", "---|".repeat(head.len())));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}

/// docs/NAME.md, docs/NAME.svg and a copy of the results as docs/NAME.json (NAME: `--docs-name`,
/// by default benchmarks).
pub fn write_docs_from(json: &Path, name: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(json).map_err(|e| format!("{}: {e}", json.display()))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    let summary = Summary::from_json(&doc)?;
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::create_dir_all(&docs).map_err(|e| e.to_string())?;
    let write = |name: &str, body: &str| {
        let p = docs.join(name);
        std::fs::write(&p, body).map_err(|e| format!("{}: {e}", p.display()))
    };
    write(&format!("{name}.md"), &summary.markdown(name))?;
    write(&format!("{name}.svg"), &summary.svg())?;
    let target = docs.join(format!("{name}.json"));
    if std::fs::canonicalize(json).ok() != std::fs::canonicalize(&target).ok() {
        write(&format!("{name}.json"), &text)?;
    }
    eprintln!("wrote {}/{name}.{{md,svg,json}}", docs.display());
    Ok(())
}
