//! The real engines drive the helper (root only, like tests/namespaces.rs): rootless Podman
//! with `network_cmd_path` pointing at it, and RootlessKit with `--slirp4netns-binary`, both
//! run unchanged from their Debian packages as an unprivileged user.
//!
//! Same harness (tests/common/mod.rs, lib.sh): every test runs in an outer network namespace
//! of its own with a remote test host on 198.18.0.2, so the engines, their containers and the
//! helper reach nothing beyond those namespaces. tests/common/engines.sh has the engine
//! helpers: the user's HOME, XDG_RUNTIME_DIR, containers.conf and storage.conf, a busybox root
//! filesystem for `podman run --rootfs` (no image is ever pulled), and the RootlessKit runs.
//! The user gets `/etc/subuid` and `/etc/subgid` entries (`ensure_test_user_subids`).
//!
//! `SLIRPNET_TEST_BIN=/usr/bin/slirp4netns cargo test --test engines` runs the same tests with
//! Debian's slirp4netns as the engines' binary, which validates the tests themselves.
//!
//! Needs podman, runc, conmon, rootlesskit and newuidmap/newgidmap (uidmap), which `.ci/run`
//! installs; as root, a missing one is a failure, not a skip. Without root the tests skip,
//! unless `CI` is set (then they fail), as the namespace tests do.

mod common;

use common::{ENGINES_SH, ensure_test_user_subids, require_root, require_tools, run_with_timeout};

/// Bound for one engine test's script: Podman's first run as a fresh user sets up its
/// storage, which takes a few seconds on a loaded two-core machine.
const ENGINE_TIMEOUT_SECS: u32 = 150;

const PODMAN_TOOLS: &[&str] = &["podman", "runc", "conmon", "newuidmap", "newgidmap"];
const ROOTLESSKIT_TOOLS: &[&str] = &["rootlesskit", "newuidmap", "newgidmap"];

/// Root check, the test user with subordinate ids, and the engine's tools; `false` when the
/// test is skipped (not root, not CI).
fn prepare(test: &str, tools: &[&str]) -> bool {
    if !require_root(test) {
        return false;
    }
    ensure_test_user_subids();
    require_tools(test, tools);
    true
}

fn run_engine(test: &str, body: &str) -> Option<common::Outcome> {
    run_with_timeout(
        test,
        &format!("{ENGINES_SH}\n# ---- engine test body\n{body}"),
        ENGINE_TIMEOUT_SECS,
    )
}

/// The words of a command line, for exact flag checks (`-c` must not match `--cidr`).
fn words(cmdline: &str) -> Vec<&str> {
    cmdline.split_whitespace().collect()
}

/// Rootless Podman, `--network slirp4netns:allow_host_loopback=true`: the container gets tap0
/// with 10.0.2.100/24 and a default route via 10.0.2.2, and fetches a page from a web server
/// on the host's 127.0.0.1 through 10.0.2.2; with IPv6 (Podman's default) it gets an fd00::/64
/// address by SLAAC and fetches the page from the host's ::1 through fd00::2. Podman starts the helper the way it starts
/// slirp4netns: `-c`, `--netns-type=path`, MTU 65520 and, by default, `--enable-ipv6`. When the
/// container ends, no helper is left running.
#[test]
fn podman_container_reaches_host_loopback() {
    let test = "podman_container_reaches_host_loopback";
    if !prepare(test, PODMAN_TOOLS) {
        return;
    }
    let Some(out) = run_engine(
        test,
        r#"
setup_outer
podman_setup
result podman "$(podman --version)"
mkdir -p "$T/www"
echo "hello from the host" > "$T/www/index.html"
chmod -R a+rX "$T/www"
"$PY" -m http.server 18081 --bind 127.0.0.1 --directory "$T/www" > "$T/http.log" 2>&1 &
mkdir -p "$T/www6"
echo "hello over ipv6" > "$T/www6/index.html"
chmod -R a+rX "$T/www6"
"$PY" -m http.server 18082 --bind ::1 --directory "$T/www6" > "$T/http6.log" 2>&1 &
wait_listen 18081
wait_listen 18082
# Record the helper's command line while the container runs.
( for i in $(seq 1200); do c=$(helper_cmdline); if [ -n "$c" ]; then echo "$c" > "$T/cmdline"; break; fi; sleep 0.05; done ) &
rc=0
pm run --rm --network slirp4netns:allow_host_loopback=true --rootfs "$ROOTFS" \
    sh -c 'ip -o -4 addr show dev tap0; ip route; wget -q -O- http://10.0.2.2:18081/index.html || echo "wget failed: $?"
           i=0; while [ $i -lt 100 ]; do case "$(ip -6 addr show dev tap0 scope global) $(ip -6 route)" in *"inet6 fd00:"*default*) break ;; esac; i=$((i + 1)); sleep 0.1; done
           ip -o -6 addr show dev tap0 scope global
           wget -q -O- "http://[fd00::2]:18082/index.html" || echo "wget6 failed: $?"; sleep 1' \
    > "$T/pm.out" 2> "$T/pm.err" || rc=$?
result rc "$rc"
result addr "$(grep -o 'inet [0-9./]*' "$T/pm.out" | head -n1)"
result route "$(grep '^default' "$T/pm.out" | head -n1)"
result body "$(grep -c '^hello from the host' "$T/pm.out" || true)"
result addr6 "$(grep -o 'inet6 fd00:[0-9a-f:]*/64' "$T/pm.out" | head -n1)"
result body6 "$(grep -c '^hello over ipv6' "$T/pm.out" || true)"
result cmdline "$(cat "$T/cmdline" 2>/dev/null)"
result left "$(wait_no_helper 10)"
echo "--- podman stdout:" >&2; cat "$T/pm.out" >&2
echo "--- podman stderr:" >&2; cat "$T/pm.err" >&2
"#,
    ) else {
        return;
    };
    eprintln!("{test}: {}", out.get("podman"));
    out.expect_eq("rc", "0");
    out.expect_eq("addr", "inet 10.0.2.100/24");
    out.expect("route", "default via 10.0.2.2", |v| {
        v.starts_with("default via 10.0.2.2")
    });
    out.expect_eq("body", "1");
    // Podman's default --enable-ipv6: SLAAC in fd00::/64, and fd00::2 reaches host ::1.
    out.expect("addr6", "an fd00::/64 address", |v| {
        v.starts_with("inet6 fd00:") && v.ends_with("/64")
    });
    out.expect_eq("body6", "1");
    let cmdline = out.get("cmdline").to_string();
    let w = words(&cmdline);
    for flag in [
        "-c",
        "--netns-type=path",
        "--mtu=65520",
        "--enable-ipv6",
        "tap0",
    ] {
        out.expect("cmdline", &format!("the word `{flag}`"), |_| {
            w.contains(&flag)
        });
    }
    out.expect("cmdline", "no --disable-host-loopback", |_| {
        !w.contains(&"--disable-host-loopback")
    });
    out.expect("cmdline", "--enable-sandbox (advertised)", |_| {
        w.contains(&"--enable-sandbox")
    });
    // Podman passes each of these that `--help` advertises: both are.
    out.expect("cmdline", "--enable-seccomp (advertised)", |_| {
        w.contains(&"--enable-seccomp")
    });
    out.expect_eq("left", "0");
}

/// Rootless Podman, `-p 18080:80` with `port_handler=slirp4netns`: Podman adds the forward over
/// the helper's API socket (`add_hostfwd`, host address 0.0.0.0), and busybox httpd in the
/// container serves a host client on 127.0.0.1 and one on the remote test host. The default
/// (no `allow_host_loopback`) passes `--disable-host-loopback`. `podman stop` ends the helper
/// and closes the published port.
#[test]
fn podman_publish_with_slirp4netns_port_handler_and_stop() {
    let test = "podman_publish_with_slirp4netns_port_handler_and_stop";
    if !prepare(test, PODMAN_TOOLS) {
        return;
    }
    let Some(out) = run_engine(
        test,
        r#"
setup_outer
podman_setup
rc=0
pm run -d --name web --network slirp4netns:port_handler=slirp4netns -p 18080:80 \
    --rootfs "$ROOTFS" httpd -f -p 80 -h /www > "$T/pm.out" 2> "$T/pm.err" || rc=$?
result run_rc "$rc"
if [ "$rc" != 0 ]; then
    echo "--- podman stdout:" >&2; cat "$T/pm.out" >&2
    echo "--- podman stderr:" >&2; cat "$T/pm.err" >&2
fi
result cmdline "$(helper_cmdline)"
result sandbox "$(helper_sandbox)"
result helpers "$(engine_helper_count)"
result local "$(http_get http://127.0.0.1:18080/index.html 15)"
result remote "$(in_remote timeout 5 busybox wget -q -O- http://198.18.0.1:18080/index.html 2>&1)"
rc=0
pm stop -t 1 web > "$T/stop.out" 2>&1 || rc=$?
result stop_rc "$rc"
result left "$(wait_no_helper 10)"
result port_after_stop "$(listening tcp 18080)"
pm rm -f web > /dev/null 2>&1 || true
"#,
    ) else {
        return;
    };
    out.expect_eq("run_rc", "0");
    out.expect_eq("helpers", "1");
    let cmdline = out.get("cmdline").to_string();
    let w = words(&cmdline);
    for flag in [
        "-c",
        "--api-socket",
        "--netns-type=path",
        "--enable-ipv6",
        "--disable-host-loopback",
    ] {
        out.expect("cmdline", &format!("the word `{flag}`"), |_| {
            w.contains(&flag)
        });
    }
    out.expect_eq("local", "hello from the container");
    out.expect_eq("remote", "hello from the container");
    out.expect_eq("stop_rc", "0");
    out.expect_eq("left", "0");
    out.expect_eq("port_after_stop", "no");
    // Podman passes --enable-sandbox: an empty tmpfs root and no-new-privs.
    out.expect("sandbox", "root=tmpfs nnp=1", |v| {
        v.starts_with("root=tmpfs nnp=1 ")
    });
}

/// The RootlessKit body shared by the three cases: a host loopback server (port 18090) and
/// the payload the child serves through the published port (18091).
const RK_SETUP: &str = r#"
setup_outer
engine_user
result rootlesskit "$(rootlesskit --version 2>&1 | head -n1)"
make_payload
result want "$PAYLOAD_SHA 1048576"
start_server dl opy tcp-download-server --addr 127.0.0.1 --port 18090 --file "$T/payload" --log "$T/host-peers.log"
"#;

/// Assertions every RootlessKit case shares: the child's address and route, the published
/// port carrying the payload (the host client appears as the gateway), a port added and
/// removed at run time through `rootlessctl`, a clean exit, and no helper left running.
fn rootlesskit_common(out: &common::Outcome, case: &str) {
    let want = out.get("want").to_string();
    out.expect_eq(&format!("{case}_rc"), "0");
    out.expect_eq(&format!("{case}_addr"), "10.0.2.100/24");
    out.expect(&format!("{case}_route"), "default via 10.0.2.2", |v| {
        v.starts_with("default via 10.0.2.2 dev tap0")
    });
    out.expect_eq(&format!("{case}_fwd"), &want);
    out.expect_eq(&format!("{case}_peer"), "10.0.2.2 ");
    out.expect_eq(&format!("{case}_left"), "0");
    let cmdline = out.get(&format!("{case}_cmdline")).to_string();
    let w = words(&cmdline);
    // RootlessKit creates tap0 itself and starts the helper without -c.
    for flag in ["--mtu", "65520", "-r", "--api-socket", "tap0"] {
        out.expect(
            &format!("{case}_cmdline"),
            &format!("the word `{flag}`"),
            |_| w.contains(&flag),
        );
    }
    out.expect(&format!("{case}_cmdline"), "no -c", |_| !w.contains(&"-c"));
    // A second forward added and removed at run time with rootlessctl (ids 2 and 1).
    out.expect(&format!("{case}_ctl_add"), "id 2", |v| v.trim() == "2");
    out.expect_eq(&format!("{case}_ctl_fwd"), &want);
    for entry in [
        "1 tcp 127.0.0.1 18091 18091;",
        "2 tcp 127.0.0.1 18092 18091;",
    ] {
        out.expect_contains(&format!("{case}_ctl_list"), entry);
    }
    out.expect(&format!("{case}_ctl_remove"), "id 2 removed", |v| {
        v.trim() == "2"
    });
    out.expect_eq(&format!("{case}_ctl_after"), "no");
}

/// `rootlesskit --net=slirp4netns --slirp4netns-binary=HELPER --port-driver=slirp4netns
/// -p 127.0.0.1:18091:18091/tcp --copy-up=/etc`: the child has 10.0.2.100/24 and a default
/// route via 10.0.2.2, downloads 1 MiB from the host's 127.0.0.1 through 10.0.2.2, and a host
/// client downloads 1 MiB from the child through the published port.
#[test]
fn rootlesskit_slirp4netns_network_and_port_driver() {
    let test = "rootlesskit_slirp4netns_network_and_port_driver";
    if !prepare(test, ROOTLESSKIT_TOOLS) {
        return;
    }
    let Some(out) = run_engine(
        test,
        &format!("{RK_SETUP}\nrootlesskit_case rk 18090 18091\n"),
    ) else {
        return;
    };
    eprintln!("{test}: {}", out.get("rootlesskit"));
    rootlesskit_common(&out, "rk");
    let want = out.get("want").to_string();
    out.expect_eq("rk_probe", "OK");
    out.expect_eq("rk_down", &want);
    out.expect("rk_cmdline", "no --disable-host-loopback", |v| {
        !words(v).contains(&"--disable-host-loopback")
    });
}

/// The same with `--disable-host-loopback`: the child's connect to 10.0.2.2 fails (refused or
/// unreachable) and the host's loopback server sees nothing; the published port still works.
#[test]
fn rootlesskit_disable_host_loopback() {
    let test = "rootlesskit_disable_host_loopback";
    if !prepare(test, ROOTLESSKIT_TOOLS) {
        return;
    }
    let Some(out) = run_engine(
        test,
        &format!(
            "{RK_SETUP}\nrootlesskit_case rk 18090 18091 --disable-host-loopback\n{}",
            r#"result host_accepts "$(grep -c accepted "$T/dl.log" || true)""#
        ),
    ) else {
        return;
    };
    rootlesskit_common(&out, "rk");
    out.expect_one_of("rk_probe", &["ENETUNREACH", "EHOSTUNREACH", "ECONNREFUSED"]);
    out.expect_eq("host_accepts", "0");
    out.expect("rk_cmdline", "--disable-host-loopback", |v| {
        words(v).contains(&"--disable-host-loopback")
    });
}

/// `--slirp4netns-sandbox=auto --slirp4netns-seccomp=auto` (dockerd-rootless.sh's defaults):
/// RootlessKit turns sandbox and seccomp on only when `--help` advertises them. slirpnet
/// advertises both, so, like slirp4netns, it gets `--enable-sandbox --enable-seccomp` and
/// everything works inside the sandbox and under the filter.
#[test]
fn rootlesskit_sandbox_and_seccomp_auto() {
    let test = "rootlesskit_sandbox_and_seccomp_auto";
    if !prepare(test, ROOTLESSKIT_TOOLS) {
        return;
    }
    let Some(out) = run_engine(
        test,
        &format!(
            "{RK_SETUP}\nrootlesskit_case rk 18090 18091 --slirp4netns-sandbox=auto --slirp4netns-seccomp=auto\n"
        ),
    ) else {
        return;
    };
    rootlesskit_common(&out, "rk");
    let want = out.get("want").to_string();
    out.expect_eq("rk_down", &want);
    let cmdline = out.get("rk_cmdline").to_string();
    let w = words(&cmdline);
    let sandboxed = w.contains(&"--enable-sandbox") && w.contains(&"--enable-seccomp");
    // Sandboxed: an empty tmpfs root and no-new-privs (slirp4netns: tmpfs too).
    out.expect("rk_sandbox", "root=tmpfs nnp=1", |v| {
        v.starts_with("root=tmpfs nnp=1 ")
    });
    out.expect(
        "rk_cmdline",
        "--enable-sandbox and --enable-seccomp",
        |_| sandboxed,
    );
}
