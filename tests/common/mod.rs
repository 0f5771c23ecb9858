//! Harness for the root-only end-to-end namespace tests.
//!
//! Each test is a bash body run after `lib.sh` (in this folder) as PID 1 of fresh PID, mount
//! and network namespaces:
//!
//! ```text
//! timeout -k 5 60 unshare --net --mount --pid --fork --kill-child --mount-proc \
//!     --propagation private bash -c "$LIB_SH $BODY"
//! ```
//!
//! `setup_outer` (lib.sh) then checks the new network namespace holds nothing but `lo`, makes a
//! private `/tmp`, a "remote test host" namespace on 198.18.0.2 behind a veth (the outer
//! namespace's default route, so stray traffic dies there), and bind-mounts a test
//! `resolv.conf` (`nameserver 127.0.0.1`) over `/etc/resolv.conf`. The helper under test only
//! ever runs inside that outer namespace: nothing reaches the machine's network. When the
//! script ends, the kernel kills everything in its PID namespace, so the namespaces vanish
//! with it; tests share no names and run in parallel.
//!
//! The body reports with `result KEY VALUE...` lines, which the Rust side asserts on.
//!
//! The binary under test is `CARGO_BIN_EXE_slirpnet`, or `$SLIRPNET_TEST_BIN` when set (e.g.
//! `/usr/bin/slirp4netns`, which has the same command line, to validate the suite itself).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

/// The shell library every test body runs after.
pub const LIB_SH: &str = include_str!("lib.sh");
/// Engine helpers (Podman, RootlessKit) for tests/engines.rs, appended after [`LIB_SH`].
pub const ENGINES_SH: &str = include_str!("engines.sh");
/// Small servers and clients (TCP, UDP, DNS) the bodies run with python3.
pub const TOOL_PY: &str = include_str!("tool.py");
/// The unprivileged user the rootless tests run as (created if missing).
pub const TEST_USER: &str = "slirpnet-test";
/// Upper bound for one test's script, in seconds.
pub const SCRIPT_TIMEOUT_SECS: u32 = 60;

/// The binary under test.
pub fn helper_bin() -> PathBuf {
    match std::env::var_os("SLIRPNET_TEST_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_slirpnet")),
    }
}

/// True when the binary under test is slirp4netns (the reference implementation), not
/// slirpnet: slirpnet-only behaviour is then skipped or checked in slirp4netns's form.
pub fn is_peer() -> bool {
    helper_bin()
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains("slirp4netns"))
}

/// Says (on stderr) that a slirpnet-only assertion is skipped because the peer runs; returns
/// true in that case.
pub fn peer_skips(what: &str) -> bool {
    if is_peer() {
        eprintln!("note: slirp4netns under test: not asserting slirpnet-only behaviour: {what}");
        true
    } else {
        false
    }
}

/// Whether root-only tests can run here. Not root: with `$CI` set that is a failure (panic);
/// otherwise a message and `false`, and the test returns early.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: the namespace tests need root (CI is set, so this is a failure)");
    }
    eprintln!("{test}: skipped: needs root (run `sudo bash .ci/run`, or the suite as root)");
    false
}

fn check_tools() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let r = CHECKED.get_or_init(|| {
        let missing: Vec<&str> = [
            "timeout",
            "unshare",
            "nsenter",
            "setpriv",
            "ip",
            "ss",
            "sysctl",
            "mount",
            "python3",
            "busybox",
            "sha256sum",
        ]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "missing tools: {} (`sudo bash .ci/run` installs them)",
                missing.join(" ")
            ))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
    let bin = helper_bin();
    assert!(
        bin.is_file(),
        "binary under test {} does not exist",
        bin.display()
    );
}

/// Panics unless every command in `tools` is on the PATH (or is an existing path). For tests
/// that need more than [`check_tools`] covers (the engine tests: podman, runc, rootlesskit,
/// newuidmap): once root, a missing tool is a failure, never a skip.
pub fn require_tools(test: &str, tools: &[&str]) {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{test}: missing tools: {} (`sudo bash .ci/run` installs them)",
        missing.join(" ")
    );
}

/// Creates the unprivileged test user if missing and opens /dev/net/tun to everyone (as CI
/// does), once per test process.
pub fn ensure_test_user() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        let exists = Command::new("id")
            .arg(TEST_USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            let st = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    TEST_USER,
                ])
                .status()
                .map_err(|e| format!("useradd: {e}"))?;
            if !st.success() {
                return Err(format!("useradd {TEST_USER} failed: {st}"));
            }
        }
        let st = Command::new("chmod")
            .args(["0666", "/dev/net/tun"])
            .status()
            .map_err(|e| format!("chmod: {e}"))?;
        if !st.success() {
            return Err("chmod 0666 /dev/net/tun failed".into());
        }
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// Size of the subordinate id ranges the engine tests give [`TEST_USER`].
pub const SUBID_COUNT: u64 = 65536;

/// [`ensure_test_user`], plus entries for [`TEST_USER`] in `/etc/subuid` and `/etc/subgid`
/// (what rootless Podman and RootlessKit map through `newuidmap`/`newgidmap`), each a fresh
/// range of [`SUBID_COUNT`] ids above every range already there. Once per test process;
/// existing entries for the user are kept as they are.
pub fn ensure_test_user_subids() {
    ensure_test_user();
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        for file in ["/etc/subuid", "/etc/subgid"] {
            add_subid_range(file)?;
        }
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

fn add_subid_range(file: &str) -> Result<(), String> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("reading {file}: {e}")),
    };
    let mut end = 100_000u64;
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(owner), Some(start), Some(count)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if owner == TEST_USER {
            return Ok(());
        }
        if let (Ok(start), Ok(count)) = (start.parse::<u64>(), count.parse::<u64>()) {
            end = end.max(start + count);
        }
    }
    let mut new = text;
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&format!("{TEST_USER}:{end}:{SUBID_COUNT}\n"));
    std::fs::write(file, new).map_err(|e| format!("writing {file}: {e}"))
}

/// What a test script printed.
pub struct Outcome {
    pub name: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub results: BTreeMap<String, String>,
}

impl Outcome {
    fn dump(&self) -> String {
        format!(
            "test {} (binary {}), script exit {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.name,
            helper_bin().display(),
            self.code,
            self.stdout,
            self.stderr
        )
    }

    /// The value of `result KEY ...`; panics (with the whole log) when absent.
    pub fn get(&self, key: &str) -> &str {
        match self.results.get(key) {
            Some(v) => v,
            None => panic!("no result `{key}`\n{}", self.dump()),
        }
    }

    /// Asserts `result KEY` equals `want`.
    pub fn expect_eq(&self, key: &str, want: &str) {
        let got = self.get(key);
        assert!(
            got == want,
            "`{key}`: expected `{want}`, got `{got}`\n{}",
            self.dump()
        );
    }

    /// Asserts `result KEY` contains `want`.
    pub fn expect_contains(&self, key: &str, want: &str) {
        let got = self.get(key);
        assert!(
            got.contains(want),
            "`{key}`: expected to contain `{want}`, got `{got}`\n{}",
            self.dump()
        );
    }

    /// Asserts `result KEY` is one of `allowed`.
    pub fn expect_one_of(&self, key: &str, allowed: &[&str]) {
        let got = self.get(key);
        assert!(
            allowed.contains(&got),
            "`{key}`: expected one of {allowed:?}, got `{got}`\n{}",
            self.dump()
        );
    }

    /// Asserts a custom condition on `result KEY`.
    pub fn expect(&self, key: &str, what: &str, ok: impl FnOnce(&str) -> bool) {
        let got = self.get(key);
        assert!(
            ok(got),
            "`{key}`: expected {what}, got `{got}`\n{}",
            self.dump()
        );
    }

    /// `result KEY` as milliseconds (values like `123ms` or `0.123` seconds).
    pub fn millis(&self, key: &str) -> u64 {
        let got = self.get(key);
        let v = if let Some(ms) = got.strip_suffix("ms") {
            ms.parse::<u64>().ok()
        } else {
            got.parse::<f64>().ok().map(|s| (s * 1000.0) as u64)
        };
        match v {
            Some(v) => v,
            None => panic!("`{key}`: not a duration: `{got}`\n{}", self.dump()),
        }
    }

    /// Fails the test with `msg` and the whole log.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n{}", self.dump())
    }
}

/// Runs `body` after lib.sh in fresh namespaces (see the module docs). Returns `None` when the
/// test is skipped (not root, no CI). Panics, with everything the script printed, when the
/// script fails or does not reach its end.
pub fn run(name: &str, body: &str) -> Option<Outcome> {
    run_with_timeout(name, body, SCRIPT_TIMEOUT_SECS)
}

/// [`run`] with another bound than [`SCRIPT_TIMEOUT_SECS`] for the whole script (the engine
/// tests start Podman and RootlessKit, which take longer than the helper alone).
pub fn run_with_timeout(name: &str, body: &str, timeout_secs: u32) -> Option<Outcome> {
    if !require_root(name) {
        return None;
    }
    check_tools();
    let script = format!("{LIB_SH}\n# ---- test body: {name}\n{body}\nresult done yes\n");
    let started = Instant::now();
    let output = Command::new("timeout")
        .args(["-k", "5", &timeout_secs.to_string()])
        .args([
            "unshare",
            "--net",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
            "bash",
            "-c",
            &script,
            name,
        ])
        .env("HELPER", helper_bin())
        .env("TOOL_PY", TOOL_PY)
        .env("TEST_USER", TEST_USER)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run timeout/unshare");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut results = BTreeMap::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("RESULT ") {
            let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
            results.insert(k.to_string(), v.to_string());
        }
    }
    let out = Outcome {
        name: name.to_string(),
        code: output.status.code(),
        stdout,
        stderr,
        results,
    };
    eprintln!(
        "{name}: script took {:.1}s; results:",
        started.elapsed().as_secs_f64()
    );
    for (k, v) in &out.results {
        eprintln!("  {k} = {v}");
    }
    if out.code == Some(124) || out.code == Some(137) {
        out.fail(&format!("test script timed out after {timeout_secs}s"));
    }
    if !output.status.success() || out.results.get("done").map(String::as_str) != Some("yes") {
        out.fail("test script failed");
    }
    Some(out)
}
