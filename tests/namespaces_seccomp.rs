//! End-to-end tests of `--enable-seccomp` (issue 8) in network namespaces (root only): the
//! filter is on once the ready byte has come (`/proc/PID/status` says `Seccomp: 2`), and
//! every feature still works under it: TCP both ways, UDP, ping through ping and raw sockets,
//! DNS, forwards over the API and `-p`, API errors, and every exit path (exit fd, SIGTERM,
//! the TAP removed, run mode). That a call outside the list kills the process is proved by
//! the unit tests in src/sys/seccomp.rs, which install the same filter in a forked child.
//!
//! Same harness as tests/namespaces.rs (tests/common/mod.rs and tests/common/lib.sh).
//! `SLIRPNET_TEST_BIN=/usr/bin/slirp4netns cargo test --test namespaces_seccomp` runs the same
//! suite against slirp4netns, whose `--enable-seccomp` is a deny-list: slirpnet-only behaviour
//! is then skipped, and says so.

mod common;

use common::{ensure_test_user, is_peer, peer_skips, run};

/// `Seccomp:` and `Seccomp_filters:` of the helper, as "MODE FILTERS".
const SECCOMP_STATUS: &str = r#"
seccomp_status() {
    awk '/^Seccomp:/ {m = $2} /^Seccomp_filters:/ {f = $2} END {print m, f}' "/proc/$1/status"
}
"#;

fn expect_filter_on(out: &common::Outcome) {
    if peer_skips("exactly one seccomp filter (libseccomp may stack several)") {
        out.expect("seccomp", "mode 2", |v| v.starts_with("2 "));
    } else {
        out.expect_eq("seccomp", "2 1");
    }
}

/// One helper with `--enable-seccomp`, the API socket and an exit fd carries every kind of
/// traffic (TCP down and up to host loopback and the remote host, UDP, ping, DNS over UDP and
/// TCP, a TCP and a UDP forward added over the API), answers API errors, and exits 0 when the
/// exit fd hangs up, removing its API socket. Without the option there is no filter.
#[test]
fn seccomp_on_and_every_feature_works() {
    let Some(out) = run(
        "seccomp_on_and_every_feature_works",
        &format!(
            "{SECCOMP_STATUS}{}",
            r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
start_server dl opy tcp-download-server --addr 127.0.0.1 --port 8080 --file "$T/payload"
start_server ul opy tcp-upload-server --addr 127.0.0.1 --port 8081
start_server rdl rpy tcp-download-server --addr 198.18.0.2 --port 8080 --file "$T/payload"
start_server rul rpy tcp-upload-server --addr 198.18.0.2 --port 8081
start_server ue opy udp-echo-server --addr 127.0.0.1 --port 7777
start_server rue rpy udp-echo-server --addr 198.18.0.2 --port 7777
start_server dns opy dns-server --addr 127.0.0.1 --port 53 --record test.example=198.18.0.9
start_guest root
start_helper -c "$GUEST" tap0
result seccomp_off "$(seccomp_status "$HPID")"
kill "$HPID"; wait "$HPID" || true
start_guest root
start_server gul gpy tcp-upload-server --addr 0.0.0.0 --port 80
start_server gdl gpy tcp-download-server --addr 0.0.0.0 --port 81 --file "$T/payload"
start_server gue gpy udp-echo-server --addr 0.0.0.0 --port 7000
mkfifo "$T/exitfifo"
sleep infinity > "$T/exitfifo" &
WRITER=$!
API=$T/api.sock
start_helper --enable-seccomp -c -e 4 -a "$API" "$GUEST" tap0 4<"$T/exitfifo"
result seccomp "$(seccomp_status "$HPID")"
result down "$(gpy tcp-get 10.0.2.2 8080 2>&1)"
result up "$(gpy tcp-put 10.0.2.2 8081 --file "$T/payload" 2>&1)"
result rdown "$(gpy tcp-get 198.18.0.2 8080 2>&1)"
result rup "$(gpy tcp-put 198.18.0.2 8081 --file "$T/payload" 2>&1)"
result udp "$(gpy udp-echo 10.0.2.2 7777 --message local 2>&1) $(gpy udp-echo 198.18.0.2 7777 --message remote 2>&1)"
result ping_gw "$(in_guest timeout 10 busybox ping -c 2 -W 2 10.0.2.2 2>&1 | grep -o '[0-9]* packets received')"
result ping_remote "$(in_guest timeout 10 busybox ping -c 2 -W 2 198.18.0.2 2>&1 | grep -o '[0-9]* packets received')"
result dns "$(gpy dns-query 10.0.2.3 test.example 2>&1) $(gpy dns-query 10.0.2.3 test.example --tcp 2>&1) $(gpy dns-query 10.0.2.3 nothere.example 2>&1)"
result refused "$(gpy connect-probe 10.0.2.2 9 --timeout 5 | awk '{print $1}')"
result add_tcp "$(api "$(add_req tcp 127.0.0.1 8180 80)")"
result add_tcp2 "$(api "$(add_req tcp 127.0.0.1 8181 81)")"
result add_udp "$(api "$(add_req udp 127.0.0.1 7000 7000)")"
result fw_up "$(opy tcp-put 127.0.0.1 8180 --file "$T/payload" 2>&1)"
result fw_down "$(opy tcp-get 127.0.0.1 8181 2>&1)"
result fw_udp "$(opy udp-echo 127.0.0.1 7000 --message forwarded 2>&1)"
result api_unknown "$(api '{"execute":"nope"}')"
result api_garbage "$(api 'garbage')"
result api_in_use "$(api "$(add_req tcp 127.0.0.1 8180 80)")"
result api_remove "$(api "$(remove_req 1)")"
result api_list "$(api '{"execute":"list_hostfwd"}' | grep -o '"id":[0-9]*' | tr '\n' ' ')"
result alive "$(helper_alive "$HPID")"
result seccomp_after "$(seccomp_status "$HPID")"
kill "$WRITER"
wait_exit "$HPID" 5
result rc "$RC"
result api_file "$(if [ -e "$API" ]; then echo present; else echo removed; fi)"
result stderr "$(tr '\n' '|' < "$HERR")"
"#
        ),
    ) else {
        return;
    };
    out.expect_eq("seccomp_off", "0 0");
    expect_filter_on(&out);
    let want = out.get("want").to_string();
    for key in ["down", "up", "rdown", "rup", "fw_up", "fw_down"] {
        out.expect_eq(key, &want);
    }
    out.expect_eq("udp", "echo:local echo:remote");
    out.expect_eq("ping_gw", "2 packets received");
    out.expect_eq("ping_remote", "2 packets received");
    out.expect_eq("dns", "198.18.0.9 198.18.0.9 RCODE3");
    out.expect_eq("refused", "ECONNREFUSED");
    out.expect_eq("add_tcp", r#"{"return":{"id":1}}"#);
    out.expect_eq("add_tcp2", r#"{"return":{"id":2}}"#);
    out.expect_eq("add_udp", r#"{"return":{"id":3}}"#);
    out.expect_eq("fw_udp", "echo:forwarded");
    out.expect_eq(
        "api_unknown",
        r#"{"error":{"desc":"bad request: unknown execute"}}"#,
    );
    out.expect_eq(
        "api_garbage",
        r#"{"error":{"desc":"bad request: cannot parse JSON"}}"#,
    );
    out.expect_eq(
        "api_in_use",
        r#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#,
    );
    out.expect_eq("api_remove", r#"{"return":{}}"#);
    out.expect_eq("api_list", r#""id":2 "id":3 "#);
    out.expect_eq("alive", "yes");
    expect_filter_on(&out);
    out.expect_eq("seccomp_after", out.get("seccomp"));
    out.expect_eq("rc", "0");
    out.expect_eq("api_file", "removed");
    if !peer_skips("nothing on stderr") {
        out.expect_eq("stderr", "");
    }
}

/// Ping through a raw socket (ping sockets not allowed: `ping_group_range` "1 0"), and
/// `-p/--publish` forwards (TCP and UDP), under the filter; SIGTERM then ends the helper with
/// status 0, removing the API socket.
#[test]
fn seccomp_raw_ping_publish_and_sigterm() {
    let publish = if is_peer() {
        ""
    } else {
        "-p 8180:80 -p 7000:7000/udp"
    };
    let Some(out) = run(
        "seccomp_raw_ping_publish_and_sigterm",
        &format!(
            "{SECCOMP_STATUS}PUBLISH='{publish}'\n{}",
            r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
sysctl -q -w net.ipv4.ping_group_range="1 0"
start_guest root
start_server gul gpy tcp-upload-server --addr 0.0.0.0 --port 80
start_server gue gpy udp-echo-server --addr 0.0.0.0 --port 7000
API=$T/api.sock
# shellcheck disable=SC2086
start_helper --enable-seccomp -c -a "$API" $PUBLISH "$GUEST" tap0
result seccomp "$(seccomp_status "$HPID")"
result raw_ping "$(in_guest timeout 10 busybox ping -c 2 -W 2 198.18.0.2 2>&1 | grep -o '[0-9]* packets received')"
if [ -n "$PUBLISH" ]; then
    result fw_up "$(opy tcp-put 127.0.0.1 8180 --file "$T/payload" 2>&1)"
    result fw_udp "$(opy udp-echo 127.0.0.1 7000 --message published 2>&1)"
fi
kill -TERM "$HPID"
wait_exit "$HPID" 5
result rc "$RC"
result api_file "$(if [ -e "$API" ]; then echo present; else echo removed; fi)"
result left "$(helper_count)"
"#
        ),
    ) else {
        return;
    };
    expect_filter_on(&out);
    out.expect_eq("raw_ping", "2 packets received");
    out.expect_eq("left", "0");
    if peer_skips("-p/--publish, exit 0 on SIGTERM, API socket removed on SIGTERM") {
        return;
    }
    let want = out.get("want").to_string();
    out.expect_eq("fw_up", &want);
    out.expect_eq("fw_udp", "echo:published");
    out.expect_eq("rc", "0");
    out.expect_eq("api_file", "removed");
}

/// The TAP removed under the filter: still the one-line message and status 1, not a SIGSYS.
#[test]
fn seccomp_tap_removed_exits_with_a_message() {
    if is_peer() {
        eprintln!("seccomp_tap_removed_exits_with_a_message: skipped: slirp4netns does not exit");
        return;
    }
    let Some(out) = run(
        "seccomp_tap_removed_exits_with_a_message",
        r#"
setup_outer
start_guest root
start_helper --enable-seccomp -c "$GUEST" tap0
in_guest ip link del tap0
wait_exit "$HPID" 5
result rc "$RC"
result stderr "$(tr '\n' '|' < "$HERR")"
"#,
    ) else {
        return;
    };
    out.expect_eq("rc", "1");
    out.expect_eq("stderr", "slirpnet: the TAP device was removed|");
}

/// As an unprivileged user (no-new-privs is what lets it install a filter) with a rootless
/// guest: the filter is on and TCP works.
#[test]
fn seccomp_as_an_unprivileged_user() {
    if !common::require_root("seccomp_as_an_unprivileged_user") {
        return;
    }
    ensure_test_user();
    let Some(out) = run(
        "seccomp_as_an_unprivileged_user",
        &format!(
            "{SECCOMP_STATUS}{}",
            r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
start_server dl opy tcp-download-server --addr 127.0.0.1 --port 8080 --file "$T/payload"
start_guest rootless
start_helper --as-user --enable-seccomp -c "$GUEST" tap0
result seccomp "$(seccomp_status "$HPID")"
result nnp "$(awk '/^NoNewPrivs:/ {print $2}' "/proc/$HPID/status")"
result down "$(gpy tcp-get 10.0.2.2 8080 2>&1)"
"#
        ),
    ) else {
        return;
    };
    expect_filter_on(&out);
    out.expect_eq("nnp", "1");
    let want = out.get("want").to_string();
    out.expect_eq("down", &want);
}

/// Run mode under the filter: the command's network works and its exit status comes back
/// (the command itself runs unfiltered: it was forked before the filter went on).
#[test]
fn seccomp_run_mode() {
    if is_peer() {
        eprintln!("seccomp_run_mode: skipped: slirp4netns has no run mode");
        return;
    }
    let Some(out) = run(
        "seccomp_run_mode",
        r#"
setup_outer
make_payload
start_server dl opy tcp-download-server --addr 127.0.0.1 --port 8080 --file "$T/payload"
rc=0
timeout 20 "$H" --enable-seccomp -- sh -c "grep '^Seccomp:' /proc/self/status; $PY $T/tool.py tcp-get 10.0.2.2 8080; exit 7" > "$T/run.out" 2> "$T/run.err" || rc=$?
result rc "$rc"
result child_seccomp "$(head -n1 "$T/run.out" | awk '{print $2}')"
result down "$(tail -n1 "$T/run.out")"
result want "$PAYLOAD_SHA 1048576"
result stderr "$(tr '\n' '|' < "$T/run.err")"
"#,
    ) else {
        return;
    };
    out.expect_eq("rc", "7");
    out.expect_eq("child_seccomp", "0");
    let want = out.get("want").to_string();
    out.expect_eq("down", &want);
    out.expect_eq("stderr", "");
}

/// IPv6 under the filter and the sandbox together: router advertisements and neighbour
/// discovery, TCP both ways to host `::1` and to the test host over IPv6, UDP, ping6 through
/// an ICMPv6 socket, DNS through fd00::3 and an IPv6 forward, then a clean SIGTERM exit.
#[test]
fn seccomp_and_sandbox_with_ipv6() {
    if is_peer() {
        eprintln!("seccomp_and_sandbox_with_ipv6: skipped: slirp4netns has no IPv6 forwards");
        return;
    }
    let Some(out) = run(
        "seccomp_and_sandbox_with_ipv6",
        &format!(
            "{SECCOMP_STATUS}{}",
            r#"
setup_outer
setup_outer_v6
make_payload
result want "$PAYLOAD_SHA 1048576"
start_server dl opy tcp-download-server --addr ::1 --port 8080 --file "$T/payload"
start_server ul opy tcp-upload-server --addr ::1 --port 8081
start_server rdl rpy tcp-download-server --addr fd99::2 --port 8080 --file "$T/payload"
start_server rue rpy udp-echo-server --addr fd99::2 --port 7777
start_server dns opy dns-server --addr 127.0.0.1 --port 53 --record test.example=198.18.0.9
start_guest root
API=$T/api.sock
start_helper --enable-seccomp --enable-sandbox -c -6 -a "$API" "$GUEST" tap0
result seccomp "$(seccomp_status "$HPID")"
wait_slaac fd00:
result down "$(gpy tcp-get fd00::2 8080 2>&1)"
result up "$(gpy tcp-put fd00::2 8081 --file "$T/payload" 2>&1)"
result rdown "$(gpy tcp-get fd99::2 8080 2>&1)"
result udp "$(gpy udp-echo fd99::2 7777 --message remote6 2>&1)"
result ping "$(in_guest timeout 10 busybox ping -6 -c 1 -W 2 fd00::2 2>&1 | grep -o '[0-9]* packets received') $(in_guest timeout 10 busybox ping -6 -c 1 -W 2 fd99::2 2>&1 | grep -o '[0-9]* packets received')"
result dns "$(gpy dns-query fd00::3 test.example 2>&1)"
start_server gul gpy tcp-upload-server --addr :: --port 80
result add "$(api "$(printf '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::1","host_port":8180,"guest_addr":"%s","guest_port":80}}' "$GUEST6")")"
result fw_up "$(opy tcp-put ::1 8180 --file "$T/payload" 2>&1)"
result seccomp_after "$(seccomp_status "$HPID")"
kill -TERM "$HPID"
wait_exit "$HPID" 5
result rc "$RC"
"#
        ),
    ) else {
        return;
    };
    expect_filter_on(&out);
    out.expect_eq("seccomp_after", out.get("seccomp"));
    let want = out.get("want").to_string();
    for key in ["down", "up", "rdown", "fw_up"] {
        out.expect_eq(key, &want);
    }
    out.expect_eq("udp", "echo:remote6");
    out.expect_eq("ping", "1 packets received 1 packets received");
    out.expect_eq("dns", "198.18.0.9");
    out.expect_eq("add", r#"{"return":{"id":1}}"#);
    out.expect_eq("rc", "0");
}
