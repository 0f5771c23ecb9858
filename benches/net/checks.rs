//! Self-checks of the suite's bookkeeping (no namespaces, no root): run when the bench binary is
//! started by `cargo test` rather than `cargo bench` (harness = false: no #[test] runner).

use serde_json::json;

use crate::cli;
use crate::model::{HelperKind, Mode, Run, Spread, Status};
use crate::report::{self, Summary};

/// Runs every check; panics (with the check's message) on the first that fails.
pub fn run() {
    helper_names();
    slirpnet_args_keep_their_order();
    congestion_control_and_docs_name();
    kernel_run_round_trip();
    share_of_kernel();
    summary_with_kernel();
    summary_without_kernel();
    summary_with_spliced();
}

/// The suite's command line, from string literals.
fn parse(args: &[&str]) -> Result<cli::Options, String> {
    cli::parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
}

fn helper_names() {
    let opts = parse(&["--helpers", "kernel,slirpnet"]).unwrap();
    assert_eq!(opts.helpers, [HelperKind::Kernel, HelperKind::Slirpnet]);
    let default = parse(&[]).unwrap();
    assert!(default.helpers.contains(&HelperKind::Kernel));
    assert_eq!(HelperKind::Kernel.label(), "kernel (veth)");
    assert!(!HelperKind::Kernel.has_process());
    assert!(HelperKind::ALL[..3].iter().all(|h| h.has_process()));
    let spliced = parse(&["--helpers", "slirpnet-splice"]).unwrap();
    assert_eq!(spliced.helpers, [HelperKind::SlirpnetSplice]);
    assert!(HelperKind::SlirpnetSplice.is_slirpnet() && HelperKind::SlirpnetSplice.has_process());
    assert!(HelperKind::SlirpnetSplice.measures(Mode::TcpFwdIn));
    assert!(HelperKind::SlirpnetSplice.measures(Mode::TcpFwdOut));
    assert!(!HelperKind::SlirpnetSplice.measures(Mode::TcpNsHost));
    assert!(HelperKind::Pasta.measures(Mode::TcpNsHost));
}

fn slirpnet_args_keep_their_order() {
    let opts = parse(&[
        "--slirpnet-arg=--busy-poll=0",
        "--slirpnet-arg",
        "--limit=tcp-flows=9",
    ])
    .unwrap();
    assert_eq!(opts.slirpnet_args, ["--busy-poll=0", "--limit=tcp-flows=9"]);
    assert!(parse(&["--slirpnet-arg"]).is_err(), "needs a value");
}

/// `--congestion-control` goes into a sysctl file and `--docs-name` into file names: plain words
/// only. The report names the algorithm and whether the suite set it.
fn congestion_control_and_docs_name() {
    let opts = parse(&[
        "--congestion-control=cubic",
        "--docs-name",
        "benchmarks-cubic",
    ])
    .unwrap();
    assert_eq!(opts.congestion_control.as_deref(), Some("cubic"));
    assert_eq!(opts.docs_name, "benchmarks-cubic");
    let defaults = parse(&[]).unwrap();
    assert_eq!(defaults.congestion_control, None);
    assert_eq!(defaults.docs_name, "benchmarks");
    for bad in ["cu bic", "cubic\n", "../x", ""] {
        assert!(parse(&["--congestion-control", bad]).is_err(), "{bad:?}");
    }
    assert!(parse(&["--docs-name", "../benchmarks"]).is_err());

    let runs = [ok_run(HelperKind::Slirpnet, Mode::TcpNsHost, 1500, 6.0)];
    let mut doc = doc_json(&[HelperKind::Slirpnet], &runs, None);
    doc["machine"]["tcp_congestion_control"] = json!("cubic");
    doc["options"]["congestion_control"] = json!("cubic");
    let md = summary(&doc).markdown("benchmarks-cubic");
    assert!(
        md.contains("congestion control in every namespace: cubic (set by `--congestion-control`")
            && md.contains("(benchmarks-cubic.svg)")
            && md.contains("--json docs/benchmarks-cubic.json --docs-name benchmarks-cubic`"),
        "{md}"
    );
    doc["machine"]["tcp_congestion_control"] = json!("bbr");
    doc["options"]["congestion_control"] = json!(null);
    let md = summary(&doc).markdown("benchmarks");
    assert!(md.contains(": bbr (the kernel's default here;"), "{md}");
    assert!(md.contains("--json docs/benchmarks.json`"), "{md}");
}

fn ok_run(helper: HelperKind, mode: Mode, mtu: u32, value: f64) -> Run {
    let mut r = Run::new(helper, mode, mtu, 0);
    r.status = Status::Ok;
    r.value = Some(value);
    if helper.has_process() {
        r.cpu = Some(0.5);
        r.peak_rss_kib = Some(4096);
        r.idle_rss_kib = Some(3000);
        r.ready_ms = Some(5.0);
    }
    r
}

/// A kernel run (no process: no CPU, RSS, start-up) survives JSON as it was.
fn kernel_run_round_trip() {
    let r = ok_run(HelperKind::Kernel, Mode::TcpFwdIn, 65520, 12.5);
    let back = Run::from_json(&r.to_json()).expect("kernel run read back");
    assert_eq!(back.helper, HelperKind::Kernel);
    assert_eq!(back.mode, Mode::TcpFwdIn);
    assert_eq!(back.value, Some(12.5));
    assert_eq!(back.status, Status::Ok);
    assert!(back.cpu.is_none() && back.peak_rss_kib.is_none() && back.ready_ms.is_none());
}

fn share_of_kernel() {
    let s = |v: f64| Spread::of([v]);
    assert_eq!(report::ratio_of(s(6.0), s(12.0)), Some(0.5));
    assert_eq!(report::ratio_of(s(6.0), None), None);
    assert_eq!(report::ratio_of(None, s(12.0)), None);
    assert_eq!(report::ratio_of(s(6.0), s(0.0)), None);
}

/// A results document as the suite writes it, for checks that change a field before reading.
fn doc_json(
    helpers: &[HelperKind],
    runs: &[Run],
    loopback: Option<serde_json::Value>,
) -> serde_json::Value {
    json!({
        "date": "2000-01-01 00:00 UTC",
        "machine": {},
        "options": { "modes": ["tcp-ns-host", "tcp-fwd-in"], "mtus": [1500], "duration_s": 1.0 },
        "helpers": helpers.iter().map(|h| json!({ "name": h.name(), "path": null, "version": "v" }))
            .collect::<Vec<_>>(),
        "runs": runs.iter().map(Run::to_json).collect::<Vec<_>>(),
        "loopback": loopback,
    })
}

/// Reads `doc` through text, as --docs-only does.
fn summary(doc: &serde_json::Value) -> Summary {
    let text = serde_json::to_string(doc).unwrap();
    Summary::from_json(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn doc(helpers: &[HelperKind], runs: &[Run], loopback: Option<serde_json::Value>) -> Summary {
    summary(&doc_json(helpers, runs, loopback))
}

/// The kernel gets a value column and a share, no CPU/RSS/start-up columns; the loopback figure
/// is reported; markdown and SVG render.
fn summary_with_kernel() {
    let runs = [
        ok_run(HelperKind::Slirpnet, Mode::TcpNsHost, 1500, 6.0),
        ok_run(HelperKind::Kernel, Mode::TcpNsHost, 1500, 8.0),
        ok_run(HelperKind::Slirpnet, Mode::TcpFwdIn, 1500, 9.0),
        Run::new(HelperKind::Kernel, Mode::TcpFwdIn, 1500, 0), // failed
    ];
    let loopback = json!([{ "value": 16.0, "error": null }, { "value": null, "error": "x" }]);
    let sum = doc(
        &[HelperKind::Slirpnet, HelperKind::Kernel],
        &runs,
        Some(loopback),
    );
    let text = sum.text_table();
    let main = text.lines().find(|l| l.starts_with("mode  ")).unwrap();
    assert!(
        main.contains("kernel (veth)") && main.ends_with("slirpnet/kernel"),
        "{main}"
    );
    let row = text.lines().find(|l| l.starts_with("tcp-ns-host")).unwrap();
    assert!(row.trim_end().ends_with("75 %"), "{row}");
    let fwd = text.lines().find(|l| l.starts_with("tcp-fwd-in")).unwrap();
    assert!(
        fwd.contains("failed") && fwd.trim_end().ends_with('—'),
        "{fwd}"
    );
    assert!(
        !text.contains("kernel CPU") && !text.contains("kernel peak RSS"),
        "{text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("kernel ")), "{text}");
    assert!(
        text.contains("no namespace crossed") && text.contains("16.0 Gbit/s (1 run(s) failed)"),
        "{text}"
    );
    let md = sum.markdown("benchmarks");
    assert!(
        md.contains("| slirpnet/kernel |") && md.contains("| 75 % |"),
        "{md}"
    );
    assert!(md.contains("Direct host loopback"), "{md}");
    assert!(sum.svg().contains("kernel (veth)"));
}

/// Results without the kernel (older JSON) read as before: no share column, no loopback line.
fn summary_without_kernel() {
    let runs = [
        ok_run(HelperKind::Slirpnet, Mode::TcpNsHost, 1500, 6.0),
        ok_run(HelperKind::Slirp4netns, Mode::TcpNsHost, 1500, 3.0),
    ];
    let sum = doc(
        &[HelperKind::Slirpnet, HelperKind::Slirp4netns],
        &runs,
        None,
    );
    let text = sum.text_table();
    assert!(
        !text.contains("slirpnet/kernel") && !text.contains("loopback"),
        "{text}"
    );
    assert!(text.contains("2.00×"), "{text}");
}

/// The spliced slirpnet gets a value column and its own ratio to pasta; its cells outside the
/// forward modes stay empty.
fn summary_with_spliced() {
    let runs = [
        ok_run(HelperKind::Slirpnet, Mode::TcpNsHost, 1500, 6.0),
        ok_run(HelperKind::Pasta, Mode::TcpNsHost, 1500, 0.5),
        ok_run(HelperKind::Slirpnet, Mode::TcpFwdIn, 1500, 9.0),
        ok_run(HelperKind::Pasta, Mode::TcpFwdIn, 1500, 10.0),
        ok_run(HelperKind::SlirpnetSplice, Mode::TcpFwdIn, 1500, 12.5),
    ];
    let sum = doc(
        &[
            HelperKind::Slirpnet,
            HelperKind::Pasta,
            HelperKind::SlirpnetSplice,
        ],
        &runs,
        None,
    );
    let text = sum.text_table();
    let main = text.lines().find(|l| l.starts_with("mode  ")).unwrap();
    assert!(
        main.contains("slirpnet (spliced)") && main.trim_end().ends_with("spliced/pasta"),
        "{main}"
    );
    let fwd = text.lines().find(|l| l.starts_with("tcp-fwd-in")).unwrap();
    assert!(
        fwd.contains("0.90×") && fwd.trim_end().ends_with("1.25×"),
        "{fwd}"
    );
    let plain = text.lines().find(|l| l.starts_with("tcp-ns-host")).unwrap();
    assert!(
        plain.contains("12.00×") && plain.trim_end().ends_with('—'),
        "{plain}"
    );
    let md = sum.markdown("benchmarks");
    assert!(md.contains("| spliced/pasta |") && md.contains("--enable-forward-splice"));
    assert!(sum.svg().contains("slirpnet (spliced)"));
}
