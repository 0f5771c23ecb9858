//! Network benchmark suite: slirpnet against slirp4netns and pasta, side by side, with iperf3,
//! and against the kernel itself (a veth pair between the namespaces, no user-mode helper) as
//! the ceiling.
//!
//! Run as root: `cargo bench --bench net -- [OPTIONS]` (`--help`); cargo builds slirpnet for
//! it (`CARGO_BIN_EXE_slirpnet`, bench profile).
//!
//! Network safety: the suite re-executes itself under
//! `unshare --net --mount --pid --fork --kill-child --mount-proc`, and measures only there:
//! in a network namespace of its own that holds `lo` and a veth to a dead-end "sink"
//! namespace. Every helper, server and client runs in that namespace or in per-run namespaces
//! inside it (the kernel baseline links a per-run namespace to it with a veth pair); nothing
//! targets any address but loopback and the suite's own namespaces. When the
//! suite ends (or is killed), the kernel kills everything it started.

#[path = "net/checks.rs"]
mod checks;
#[path = "net/cli.rs"]
mod cli;
#[path = "net/env.rs"]
mod env;
#[path = "net/measure.rs"]
mod measure;
#[path = "net/model.rs"]
mod model;
#[path = "net/report.rs"]
mod report;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use model::{HelperKind, Run, Status};

/// iperf3 server on host loopback (namespace → host modes; the kernel baseline: on the suite's
/// end of the veth pair).
pub const HOST_PORT: u16 = 5201;
/// iperf3 server in the namespace, reached through a forward of 127.0.0.1:FWD_PORT (the kernel
/// baseline: directly, at the namespace's end of the veth pair).
pub const FWD_PORT: u16 = 5301;
/// The latency server in the suite's namespace (host loopback for the helpers).
pub const LATENCY_PORT: u16 = 5401;

const INNER_ENV: &str = "SLIRPNET_BENCH_INNER";
const SCRATCH_ENV: &str = "SLIRPNET_BENCH_SCRATCH";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__latency") {
        return measure::latency_client_main(&args[1..]);
    }
    let opts = match cli::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("net bench: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    if opts.help {
        print!("{}", cli::USAGE);
        return ExitCode::SUCCESS;
    }
    let inner = std::env::var_os(INNER_ENV).is_some();
    if !opts.docs_only && !inner && !opts.via_cargo_bench {
        // Built and started by `cargo test` (`test = true` in Cargo.toml): compiling and the
        // self-checks of the bookkeeping are the test.
        checks::run();
        eprintln!(
            "net bench: not started by `cargo bench`: self-checks passed, nothing measured \
             (see --help)"
        );
        return ExitCode::SUCCESS;
    }
    let result = if opts.docs_only {
        report::write_docs_from(&opts.json, &opts.docs_name)
    } else if inner {
        inner_main(&opts)
    } else {
        outer_main(&opts)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("net bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// In the machine's namespaces: check, then re-execute inside fresh namespaces.
fn outer_main(opts: &cli::Options) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root: it creates network namespaces and TAP devices \
             (run `sudo cargo bench --bench net`)"
            .into());
    }
    for tool in ["unshare", "nsenter", "ip", "iperf3", "mount"] {
        if env::which(tool).is_none() {
            return Err(format!(
                "{tool} not found (packages util-linux, iproute2, iperf3)"
            ));
        }
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let scratch = std::env::temp_dir().join(format!("slirpnet-bench.{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let status = Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
        ])
        .arg(&exe)
        .args(&opts.given)
        .env(INNER_ENV, "1")
        .env(SCRATCH_ENV, &scratch)
        .status()
        .map_err(|e| format!("unshare: {e}"));
    let _ = std::fs::remove_dir_all(&scratch);
    let status = status?;
    if !status.success() {
        return Err(format!("the measuring process failed: {status}"));
    }
    if opts.write_docs {
        report::write_docs_from(&opts.json, &opts.docs_name)?;
    }
    Ok(())
}

struct Found {
    kind: HelperKind,
    /// `None` for the kernel baseline.
    path: Option<PathBuf>,
    version: String,
}

fn locate(kind: HelperKind, opts: &cli::Options) -> Option<PathBuf> {
    let given = match kind {
        HelperKind::Slirpnet | HelperKind::SlirpnetSplice => &opts.slirpnet,
        HelperKind::Slirp4netns => &opts.slirp4netns,
        HelperKind::Pasta => &opts.pasta,
        HelperKind::Kernel => return None,
    };
    if let Some(p) = given {
        return p.is_file().then(|| p.clone());
    }
    match kind {
        HelperKind::Slirpnet | HelperKind::SlirpnetSplice => {
            // Cargo builds the crate's binaries for benches and says where.
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            [
                PathBuf::from(env!("CARGO_BIN_EXE_slirpnet")),
                manifest.join("target/release/slirpnet"),
                manifest.join("target/debug/slirpnet"),
            ]
            .into_iter()
            .find(|p| p.is_file())
        }
        HelperKind::Slirp4netns => env::which("slirp4netns"),
        HelperKind::Pasta => env::which("pasta"),
        HelperKind::Kernel => None,
    }
}

fn kernel_version() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("Linux {}: veth pair, no user-mode helper", release.trim())
}

fn version_of(kind: HelperKind, path: &Path) -> String {
    let first_line = Command::new(path)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    let package = match kind {
        HelperKind::Slirpnet | HelperKind::SlirpnetSplice | HelperKind::Kernel => None,
        HelperKind::Slirp4netns => Some("slirp4netns"),
        HelperKind::Pasta => Some("passt"),
    };
    let deb = package.and_then(|p| {
        let o = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", p])
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| format!("Debian {p} {}", String::from_utf8_lossy(&o.stdout)))
    });
    match (first_line.is_empty(), deb) {
        (true, None) => "unknown version".into(),
        (false, None) => first_line,
        (true, Some(d)) => d,
        (false, Some(d)) => format!("{first_line} ({d})"),
    }
}

/// One step of the plan.
enum Step {
    /// rep, MTU, mode, index into the helpers found.
    Run(u32, u32, model::Mode, usize),
    /// Direct host loopback (reference for the forward modes), once per rep.
    Loopback(u32),
}

/// In the suite's own namespaces: measure, write JSON, print the summary.
fn inner_main(opts: &cli::Options) -> Result<(), String> {
    let scratch = std::env::var_os(SCRATCH_ENV)
        .map(PathBuf::from)
        .ok_or("scratch directory not set")?;
    let outer = env::Outer::setup(&scratch)?;
    if let Some(name) = &opts.congestion_control {
        env::use_congestion_control(name)?;
    }
    let mut found = Vec::new();
    for &kind in &opts.helpers {
        if !kind.has_process() {
            found.push(Found {
                kind,
                path: None,
                version: kernel_version(),
            });
            continue;
        }
        match locate(kind, opts) {
            Some(path) => {
                let version = version_of(kind, &path);
                eprintln!("found {}: {} ({version})", kind.name(), path.display());
                found.push(Found {
                    kind,
                    path: Some(path),
                    version,
                });
            }
            None => {
                let hint = if kind.is_slirpnet() {
                    " (build it: cargo build --release)"
                } else {
                    ""
                };
                eprintln!("skipping {}: not found{hint}", kind.name());
            }
        }
    }
    if found.is_empty() {
        return Err("no helper found".into());
    }
    measure::start_latency_server()?;

    // Interleaved: for each repetition, each cell, every helper in turn. With the kernel
    // baseline and a forward mode, each repetition also measures direct host loopback once.
    let loopback =
        found.iter().any(|f| !f.kind.has_process()) && opts.modes.iter().any(|m| m.forwards());
    let mut plan = Vec::new();
    for rep in 0..opts.reps {
        if loopback {
            plan.push(Step::Loopback(rep));
        }
        for &mtu in &opts.mtus {
            for &mode in &opts.modes {
                for (i, f) in found.iter().enumerate() {
                    if f.kind.measures(mode) {
                        plan.push(Step::Run(rep, mtu, mode, i));
                    }
                }
            }
        }
    }
    let total = plan.len();
    eprintln!(
        "{total} runs: {} helper(s) × {} mode(s) × {} MTU(s) × {} rep(s){}{}, {} s each",
        found.len(),
        opts.modes.len(),
        opts.mtus.len(),
        opts.reps,
        if found.iter().any(|f| f.kind == HelperKind::SlirpnetSplice) {
            " (slirpnet-splice in the forward modes only)"
        } else {
            ""
        },
        if loopback {
            " + direct host loopback once per rep"
        } else {
            ""
        },
        opts.duration
    );
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut runs: Vec<Run> = Vec::new();
    let mut loopback_runs: Vec<Result<f64, String>> = Vec::new();
    let mut wall_sum = 0.0;
    for (n, step) in plan.iter().enumerate() {
        // Average wall time of the runs so far (failed starts are quick, and count as such).
        let per_run = if n == 0 {
            opts.duration + 1.0
        } else {
            wall_sum / n as f64
        };
        let eta = per_run * (total - n) as f64;
        let what = match *step {
            Step::Loopback(rep) => format!(
                "rep {}/{} · direct host loopback (no namespace)",
                rep + 1,
                opts.reps
            ),
            Step::Run(rep, mtu, mode, i) => format!(
                "rep {}/{} · MTU {mtu} · {} · {}",
                rep + 1,
                opts.reps,
                mode.name(),
                found[i].kind.name()
            ),
        };
        let line = format!(
            "[{}/{total}] {what} · ~{} left",
            n + 1,
            report::fmt_duration(eta)
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
        let (rep, mtu, mode, i) = match *step {
            Step::Run(rep, mtu, mode, i) => (rep, mtu, mode, i),
            Step::Loopback(_) => {
                let t0 = Instant::now();
                let r = measure::loopback(opts.duration);
                wall_sum += t0.elapsed().as_secs_f64();
                if let Err(e) = &r {
                    if tty {
                        eprintln!();
                    }
                    eprintln!("  direct host loopback: failed — {e}");
                }
                loopback_runs.push(r);
                continue;
            }
        };
        let h = &found[i];
        let run = measure::run(&measure::Plan {
            kind: h.kind,
            binary: h.path.as_deref(),
            mode,
            mtu,
            rep,
            duration: opts.duration,
            scratch: &outer.scratch,
            run_id: n,
            no_ipv6: outer.no_ipv6.as_deref(),
            extra_args: if h.kind.is_slirpnet() {
                &opts.slirpnet_args
            } else {
                &[]
            },
        });
        wall_sum += run.wall_s;
        if run.status != Status::Ok {
            let msg = format!(
                "  {} {} MTU {mtu}: {} — {}",
                h.kind.name(),
                mode.name(),
                run.status.name(),
                run.error.as_deref().unwrap_or("")
            );
            if tty {
                eprintln!();
            }
            eprintln!("{msg}");
        }
        runs.push(run);
    }
    if tty {
        eprintln!();
    }
    eprintln!(
        "done in {}",
        report::fmt_duration(started.elapsed().as_secs_f64())
    );

    let doc = report::results_json(
        opts,
        &found
            .iter()
            .map(|f| {
                let path = f.path.as_ref().map(|p| p.display().to_string());
                (f.kind, path, f.version.clone())
            })
            .collect::<Vec<_>>(),
        &runs,
        loopback.then_some(loopback_runs.as_slice()),
    );
    if let Some(dir) = opts.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(&opts.json, text + "\n").map_err(|e| format!("{}: {e}", opts.json.display()))?;
    let summary = report::Summary::from_json(&doc)?;
    println!("{}", summary.text_table());
    eprintln!("results: {}", opts.json.display());
    // A smoke test's only assertion: the suite itself works (some helper measured something).
    if !runs.iter().any(|r| r.status == Status::Ok) {
        return Err("no run succeeded".into());
    }
    Ok(())
}
