//! Options of the suite (std-only parsing: `--opt VAL` and `--opt=VAL`).

use std::path::PathBuf;

use crate::model::{HelperKind, Mode};

pub const USAGE: &str = "\
slirpnet network benchmark suite: slirpnet against slirp4netns and pasta, with iperf3,
and against the kernel's own path (a veth pair, no user-mode helper) as the ceiling.

Run as root (it makes its own network namespaces; nothing leaves the machine):
    cargo bench --bench net -- [OPTIONS]
(cargo builds this crate's slirpnet for the bench, with the bench profile: optimised)

Options:
    --duration SECS     seconds per iperf3/latency run (default 10; --quick: 1)
    --reps N            repetitions per cell, interleaved across helpers (default 3; --quick: 1)
    --helpers LIST      comma-separated: slirpnet,slirp4netns,pasta,slirpnet-splice,kernel
                        (default: all five)
                        slirpnet-splice: slirpnet with --enable-forward-splice, in the
                        forward modes only (the one place the option acts)
                        kernel: no user-mode helper; the namespace gets a veth pair to the
                        suite's namespace and the same clients and servers talk across it
                        (forward modes: straight to the namespace's address, no forward).
                        With it and a forward mode, each repetition also measures direct
                        host loopback (127.0.0.1 to 127.0.0.1) once
    --mtu LIST          comma-separated MTUs (default 1500,65520; --quick: 65520)
    --modes LIST        comma-separated modes (default: all):
                          tcp-ns-host, tcp-host-ns, tcp6-ns-host, tcp6-host-ns,
                          tcp-fwd-in, tcp-fwd-out, udp-ns-host, tcp-rr, tcp-crr
    --quick             smoke test for CI: whole run under a minute, numbers not asserted
    --json PATH         results file (default target/bench/net.json)
    --write-docs        after the run, write docs/benchmarks.md, docs/benchmarks.svg and
                        docs/benchmarks.json
    --docs-name NAME    write docs/NAME.{md,svg,json} instead (default benchmarks)
    --docs-only         do not measure: regenerate the docs from --json PATH (no root needed)
    --slirpnet PATH     slirpnet binary (default: the one cargo built for the bench)
    --slirpnet-arg ARG  one more argument for slirpnet, before its positionals (repeatable;
                        e.g. --slirpnet-arg=--busy-poll=0 to measure an option's effect)
    --slirp4netns PATH  slirp4netns binary (default: from PATH)
    --pasta PATH        pasta binary (default: from PATH)
    --congestion-control NAME
                        TCP congestion control in every namespace the suite makes (e.g.
                        cubic); default: the kernel's default, which the report names
    -h, --help          this text
";

#[derive(Debug, Clone)]
pub struct Options {
    pub duration: f64,
    pub reps: u32,
    pub helpers: Vec<HelperKind>,
    pub mtus: Vec<u32>,
    pub modes: Vec<Mode>,
    pub quick: bool,
    pub json: PathBuf,
    pub write_docs: bool,
    pub docs_only: bool,
    /// `--docs-name`: the docs files' stem.
    pub docs_name: String,
    /// `--congestion-control`: set in every namespace of the suite.
    pub congestion_control: Option<String>,
    pub slirpnet: Option<PathBuf>,
    /// `--slirpnet-arg`, in order.
    pub slirpnet_args: Vec<String>,
    pub slirp4netns: Option<PathBuf>,
    pub pasta: Option<PathBuf>,
    pub help: bool,
    /// Whether cargo bench started us (it passes `--bench`); `cargo test --all-targets`
    /// does not, and then nothing is measured.
    pub via_cargo_bench: bool,
    /// The options as given (without cargo's `--bench`), for the record of the exact command.
    pub given: Vec<String>,
}

fn list<T>(value: &str, parse: impl Fn(&str) -> Option<T>, what: &str) -> Result<Vec<T>, String> {
    let items: Result<Vec<T>, String> = value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| parse(s.trim()).ok_or_else(|| format!("unknown {what}: {s}")))
        .collect();
    let items = items?;
    if items.is_empty() {
        return Err(format!("empty list of {what}s"));
    }
    Ok(items)
}

pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut duration = None;
    let mut reps = None;
    let mut helpers = None;
    let mut mtus = None;
    let mut modes = None;
    let mut opts = Options {
        duration: 10.0,
        reps: 3,
        helpers: HelperKind::ALL.to_vec(),
        mtus: vec![1500, 65520],
        modes: Mode::ALL.to_vec(),
        quick: false,
        json: PathBuf::from("target/bench/net.json"),
        write_docs: false,
        docs_only: false,
        docs_name: "benchmarks".into(),
        congestion_control: None,
        slirpnet: None,
        slirpnet_args: Vec::new(),
        slirp4netns: None,
        pasta: None,
        help: false,
        via_cargo_bench: false,
        given: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        // cargo bench appends `--bench` to the arguments of harness = false benches.
        if arg == "--bench" {
            opts.via_cargo_bench = true;
            continue;
        }
        opts.given.push(arg.clone());
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let takes_value = matches!(
            name.as_str(),
            "--duration"
                | "--reps"
                | "--helpers"
                | "--mtu"
                | "--modes"
                | "--json"
                | "--slirpnet"
                | "--slirpnet-arg"
                | "--slirp4netns"
                | "--pasta"
                | "--docs-name"
                | "--congestion-control"
        );
        let value = if takes_value {
            match inline {
                Some(v) => v,
                None => {
                    let v = it
                        .next()
                        .ok_or_else(|| format!("{name} needs a value"))?
                        .clone();
                    opts.given.push(v.clone());
                    v
                }
            }
        } else {
            if inline.is_some() {
                return Err(format!("{name} takes no value"));
            }
            String::new()
        };
        match name.as_str() {
            "--duration" => {
                let d: f64 = value
                    .parse()
                    .map_err(|_| format!("bad --duration: {value}"))?;
                if !(0.5..=3600.0).contains(&d) {
                    return Err("--duration must be between 0.5 and 3600 seconds".into());
                }
                duration = Some(d);
            }
            "--reps" => {
                let n: u32 = value.parse().map_err(|_| format!("bad --reps: {value}"))?;
                if n == 0 {
                    return Err("--reps must be at least 1".into());
                }
                reps = Some(n);
            }
            "--helpers" => helpers = Some(list(&value, HelperKind::from_name, "helper")?),
            "--mtu" => {
                mtus = Some(list(
                    &value,
                    |s| s.parse().ok().filter(|m| (68..=65520).contains(m)),
                    "MTU (68..65520)",
                )?)
            }
            "--modes" => modes = Some(list(&value, Mode::from_name, "mode")?),
            "--quick" => opts.quick = true,
            "--json" => opts.json = PathBuf::from(value),
            "--write-docs" => opts.write_docs = true,
            "--docs-only" => opts.docs_only = true,
            "--slirpnet" => opts.slirpnet = Some(PathBuf::from(value)),
            "--slirpnet-arg" => opts.slirpnet_args.push(value),
            "--slirp4netns" => opts.slirp4netns = Some(PathBuf::from(value)),
            "--pasta" => opts.pasta = Some(PathBuf::from(value)),
            "--docs-name" => {
                if !is_word(&value, "-_") {
                    return Err(format!(
                        "bad --docs-name: {value} (letters, digits, - and _)"
                    ));
                }
                opts.docs_name = value;
            }
            "--congestion-control" => {
                // Written to a sysctl file: a plain algorithm name only.
                if !is_word(&value, "_") {
                    return Err(format!("bad --congestion-control: {value}"));
                }
                opts.congestion_control = Some(value);
            }
            "-h" | "--help" => opts.help = true,
            other => return Err(format!("unknown option: {other}")),
        }
    }
    let quick = opts.quick;
    opts.duration = duration.unwrap_or(if quick { 1.0 } else { 10.0 });
    opts.reps = reps.unwrap_or(if quick { 1 } else { 3 });
    opts.mtus = mtus.unwrap_or(if quick {
        vec![65520]
    } else {
        vec![1500, 65520]
    });
    if let Some(h) = helpers {
        opts.helpers = dedup(h);
    }
    if let Some(m) = modes {
        opts.modes = dedup(m);
    }
    opts.mtus = dedup(opts.mtus);
    Ok(opts)
}

fn is_word(s: &str, extra: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// The command line that reproduces this run, for the report.
pub fn command_line(given: &[String]) -> String {
    let mut line = String::from("cargo bench --bench net --");
    for arg in given {
        line.push(' ');
        if arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=,./:".contains(c))
        {
            line.push_str(arg);
        } else {
            line.push('\'');
            line.push_str(&arg.replace('\'', "'\\''"));
            line.push('\'');
        }
    }
    line
}
