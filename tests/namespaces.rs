//! End-to-end tests of the real binary in network namespaces (root only).
//!
//! Every test runs the helper inside an outer network namespace of its own, with a "remote
//! test host" namespace on 198.18.0.2 and a test resolver on 127.0.0.1:53: see
//! tests/common/mod.rs and tests/common/lib.sh. Nothing leaves those namespaces.
//!
//! `SLIRPNET_TEST_BIN=/usr/bin/slirp4netns cargo test --test namespaces` runs the same suite
//! against slirp4netns, the reference: slirpnet-only assertions are then skipped (and say so).

mod common;

use common::{ensure_test_user, is_peer, peer_skips, run};

fn has_flag(flags: &str, flag: &str) -> bool {
    // "flags=<BROADCAST,MULTICAST,UP,LOWER_UP> mtu=1500 mac=..."
    let inner = flags
        .split_whitespace()
        .find_map(|w| w.strip_prefix("flags=<"))
        .and_then(|w| w.strip_suffix('>'))
        .unwrap_or("");
    inner.split(',').any(|f| f == flag)
}

fn field<'a>(info: &'a str, key: &str) -> &'a str {
    info.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .unwrap_or("")
}

/// `-c` with defaults: lo up, tap0 up with MTU 1500, 10.0.2.100/24, default route via 10.0.2.2,
/// all in place by the time the ready byte arrives.
#[test]
fn configure_layout_defaults() {
    let Some(out) = run(
        "configure_layout_defaults",
        r#"
setup_outer
start_guest root
start_helper -c "$GUEST" tap0
result lo "$(link_info lo)"
result tap "$(link_info tap0)"
result addr "$(in_guest ip -o -4 addr show dev tap0 | awk '{print $4}' | tr '\n' ' ' | sed 's/ $//')"
result default "$(in_guest ip -4 route show default)"
result lo_addr "$(in_guest ip -o -4 addr show dev lo | awk '{print $4}')"
"#,
    ) else {
        return;
    };
    out.expect("lo", "lo UP", |v| has_flag(v, "UP"));
    out.expect_eq("lo_addr", "127.0.0.1/8");
    out.expect("tap", "tap0 UP", |v| has_flag(v, "UP"));
    out.expect("tap", "MTU 1500", |v| field(v, "mtu") == "1500");
    out.expect_eq("addr", "10.0.2.100/24");
    out.expect("default", "default via 10.0.2.2 dev tap0", |v| {
        v.starts_with("default via 10.0.2.2 dev tap0")
    });
}

/// `--mtu=65520` (what engines pass) and `--macaddress` are applied to the TAP.
#[test]
fn configure_layout_mtu_65520_and_mac() {
    let Some(out) = run(
        "configure_layout_mtu_65520_and_mac",
        r#"
setup_outer
start_guest root
start_helper -c --mtu=65520 --macaddress=02:00:5e:10:20:30 "$GUEST" tap0
result tap "$(link_info tap0)"
result addr "$(in_guest ip -o -4 addr show dev tap0 | awk '{print $4}')"
result default "$(in_guest ip -4 route show default)"
"#,
    ) else {
        return;
    };
    out.expect("tap", "tap0 UP", |v| has_flag(v, "UP"));
    out.expect("tap", "MTU 65520", |v| field(v, "mtu") == "65520");
    out.expect("tap", "MAC 02:00:5e:10:20:30", |v| {
        field(v, "mac") == "02:00:5e:10:20:30"
    });
    out.expect_eq("addr", "10.0.2.100/24");
    out.expect_contains("default", "default via 10.0.2.2 dev tap0");
}

/// getopt_long parsing as engines use it: bundled short options with attached values, options
/// after the positionals (`slirp4netns PID tap0 -cm9000`), and a non-default TAP name.
#[test]
fn configure_options_after_positionals() {
    let Some(out) = run(
        "configure_options_after_positionals",
        r#"
setup_outer
start_guest root
start_helper "$GUEST" tapx -cm9000
result tap "$(link_info tapx)"
result addr "$(in_guest ip -o -4 addr show dev tapx | awk '{print $4}')"
"#,
    ) else {
        return;
    };
    out.expect("tap", "tapx UP", |v| has_flag(v, "UP"));
    out.expect("tap", "MTU 9000", |v| field(v, "mtu") == "9000");
    out.expect_eq("addr", "10.0.2.100/24");
}

/// `-r FD` receives exactly "1" and is closed (the reader sees EOF) while the helper keeps
/// running.
#[test]
fn ready_fd_receives_1() {
    let Some(out) = run(
        "ready_fd_receives_1",
        r#"
setup_outer
start_guest root
start_helper -c "$GUEST" tap0
result ready "$READY"
result ready_closed "$READY_CLOSED"
sleep 0.2
result alive "$(helper_alive "$HPID")"
"#,
    ) else {
        return;
    };
    out.expect_eq("ready", "1");
    out.expect_eq("ready_closed", "yes");
    out.expect_eq("alive", "yes");
}

/// `-e FD`: closing the other end makes the helper exit 0 promptly, leaving no process behind.
#[test]
fn exit_fd_hangup_exits_0() {
    let Some(out) = run(
        "exit_fd_hangup_exits_0",
        r#"
setup_outer
start_guest root
mkfifo "$T/exitfifo"
sleep infinity > "$T/exitfifo" &
WRITER=$!
start_helper -c -e 4 "$GUEST" tap0 4<"$T/exitfifo"
sleep 0.3
result alive_before "$(helper_alive "$HPID")"
kill "$WRITER"
wait_exit "$HPID" 5
result rc "$RC"
result elapsed "$ELAPSED"
sleep 0.1
result left "$(helper_count)"
"#,
    ) else {
        return;
    };
    out.expect_eq("alive_before", "yes");
    out.expect_eq("rc", "0");
    out.expect("elapsed", "under 2 s", |_| out.millis("elapsed") < 2000);
    out.expect_eq("left", "0");
}

/// SIGTERM ends the helper with status 0.
#[test]
fn sigterm_exits_0() {
    let Some(out) = run(
        "sigterm_exits_0",
        r#"
setup_outer
start_guest root
start_helper -c "$GUEST" tap0
kill -TERM "$HPID"
wait_exit "$HPID" 5
result rc "$RC"
result elapsed "$ELAPSED"
sleep 0.1
result left "$(helper_count)"
"#,
    ) else {
        return;
    };
    out.expect("elapsed", "under 2 s", |_| out.millis("elapsed") < 2000);
    out.expect_eq("left", "0");
    if peer_skips("exit status 0 on SIGTERM (slirp4netns dies by the signal: 143)") {
        out.expect_eq("rc", "143");
    } else {
        out.expect_eq("rc", "0");
    }
}

const TCP_BODY: &str = r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
start_server dl opy tcp-download-server --addr 127.0.0.1 --port 8080 --file "$T/payload"
start_server ul opy tcp-upload-server --addr 127.0.0.1 --port 8081
start_server rdl rpy tcp-download-server --addr 198.18.0.2 --port 8080 --file "$T/payload"
start_server rul rpy tcp-upload-server --addr 198.18.0.2 --port 8081
start_guest root
start_helper -c --mtu="$MTU" "$GUEST" tap0
"#;

/// 1 MiB down and up, intact, between the guest and servers at `server` (whose port 8080
/// serves the payload and 8081 takes it back), at `mtu`.
fn tcp_download_upload(name: &str, mtu: u32, server: &str) {
    let checks = format!(
        r#"
result down "$(gpy tcp-get {server} 8080 2>&1)"
result up "$(gpy tcp-put {server} 8081 --file "$T/payload" 2>&1)"
"#
    );
    let Some(out) = run(name, &format!("MTU={mtu}\n{TCP_BODY}\n{checks}")) else {
        return;
    };
    let want = out.get("want").to_string();
    out.expect_eq("down", &want);
    out.expect_eq("up", &want);
}

/// Through the gateway 10.0.2.2 to servers on the host's 127.0.0.1.
#[test]
fn tcp_host_loopback_download_upload() {
    tcp_download_upload("tcp_host_loopback_download_upload", 1500, "10.0.2.2");
}

/// To the remote test host 198.18.0.2, at the MTU engines use.
#[test]
fn tcp_remote_host_download_upload() {
    tcp_download_upload("tcp_remote_host_download_upload", 65520, "198.18.0.2");
}

/// A destination the host cannot reach (no one answers ARP for it on the test host's link)
/// gives the guest's connect EHOSTUNREACH, as on a real network: ICMP host unreachable.
#[test]
fn unreachable_host_fails_the_connect() {
    let Some(out) = run(
        "unreachable_host_fails_the_connect",
        r#"
setup_outer
start_guest root
start_helper -c "$GUEST" tap0
result tcp "$(gpy connect-probe 198.18.0.77 80 --timeout 15 2>&1 | awk '{print $1}')"
"#,
    ) else {
        return;
    };
    if !peer_skips("EHOSTUNREACH for an unreachable host") {
        out.expect_eq("tcp", "EHOSTUNREACH");
    }
}

/// `--outbound-addr` binds host sockets, TCP and UDP (slirp4netns ignores it for UDP), given
/// as an address or as an interface name.
#[test]
fn outbound_addr_binds_tcp_and_udp() {
    let Some(out) = run(
        "outbound_addr_binds_tcp_and_udp",
        r#"
setup_outer
ip addr add 198.18.0.3/24 dev veth-out
# A second link to the test host, to name by interface.
ip link add veth2-out type veth peer name veth2-rem netns "$REMOTE"
ip addr add 198.18.2.1/24 dev veth2-out
ip link set veth2-out up
in_remote ip addr add 198.18.2.2/24 dev veth2-rem
in_remote ip link set veth2-rem up
make_payload
result want "$PAYLOAD_SHA 1048576"
start_server up rpy tcp-upload-server --addr 198.18.0.2 --port 8081 --log "$T/tcp-peers.log"
start_server rue rpy udp-echo-server --addr 198.18.0.2 --port 7777 --log "$T/udp-peers.log"
start_guest root
start_helper -c --outbound-addr=198.18.0.3 "$GUEST" tap0
result up "$(gpy tcp-put 198.18.0.2 8081 --file "$T/payload" 2>&1)"
result udp "$(gpy udp-echo 198.18.0.2 7777 2>&1)"
result tcp_src "$(cut -d: -f1 "$T/tcp-peers.log" | sort -u | tr '
' ' ')"
result udp_src "$(cut -d: -f1 "$T/udp-peers.log" | sort -u | tr '
' ' ')"
kill "$HPID"; wait "$HPID" || true
start_guest root
start_helper -c --outbound-addr=veth2-out "$GUEST" tap0
: > "$T/tcp-peers.log"
result up2 "$(gpy tcp-put 198.18.0.2 8081 --file "$T/payload" 2>&1)"
result tcp_src2 "$(cut -d: -f1 "$T/tcp-peers.log" | sort -u | tr '
' ' ')"
"#,
    ) else {
        return;
    };
    let want = out.get("want").to_string();
    out.expect_eq("up", &want);
    out.expect_eq("tcp_src", "198.18.0.3 ");
    out.expect_eq("udp", "echo:hello");
    if !peer_skips("--outbound-addr for UDP (slirp4netns ignores it)") {
        out.expect_eq("udp_src", "198.18.0.3 ");
    }
    out.expect_eq("up2", &want);
    out.expect_eq("tcp_src2", "198.18.2.1 ");
}

/// Deleting the TAP inside the namespace ends slirpnet with one line saying so.
#[test]
fn tap_removed_exits_with_a_message() {
    let Some(out) = run(
        "tap_removed_exits_with_a_message",
        r#"
setup_outer
start_guest root
start_helper -c "$GUEST" tap0
in_guest ip link del tap0
wait_exit "$HPID" 5
result rc "$RC"
result stderr "$(tr '\n' '|' < "$HERR")"
"#,
    ) else {
        return;
    };
    if !peer_skips("exit with a message when the TAP is removed") {
        out.expect_eq("rc", "1");
        out.expect_eq("stderr", "slirpnet: the TAP device was removed|");
    }
}

/// The guest setting its TAP down and up again (a network manager restarting the link) does
/// not end slirpnet: writes to a TAP that is down fail with EIO, and the frames meanwhile are
/// dropped and counted, as on a real link; traffic resumes once it is up.
#[test]
fn tap_down_and_up_again_keeps_serving() {
    let Some(out) = run(
        "tap_down_and_up_again_keeps_serving",
        r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
start_server dl opy tcp-download-server --addr 127.0.0.1 --port 8080 --file "$T/payload"
start_guest root
API=$T/api.sock
start_helper -c -a "$API" "$GUEST" tap0
result before "$(gpy tcp-get 10.0.2.2 8080 2>&1)"
in_guest ip link set tap0 down
# Frames for the guest while its link is down: a forwarded connection's SYN and ARP.
result add "$(api "$(add_req tcp 127.0.0.1 8180 80)")"
opy connect-probe 127.0.0.1 8180 --timeout 2 >/dev/null 2>&1 || true
sleep 0.3
result alive_down "$(helper_alive "$HPID")"
result drops "$(api "$STATS_REQ" --get return.counters.dropped_tap_down 2>&1)"
in_guest ip link set tap0 up
result after "$(gpy tcp-get 10.0.2.2 8080 2>&1)"
result alive "$(helper_alive "$HPID")"
result stderr "$(tr '\n' '|' < "$HERR")"
"#,
    ) else {
        return;
    };
    let want = out.get("want").to_string();
    out.expect_eq("before", &want);
    out.expect_eq("alive_down", "yes");
    out.expect_eq("after", &want);
    out.expect_eq("alive", "yes");
    if !peer_skips("dropped_tap_down, no log line for a TAP that is down") {
        out.expect("drops", "frames dropped while down", |v| {
            v.parse::<u64>().is_ok_and(|n| n >= 1)
        });
        out.expect_eq("stderr", "");
    }
}

/// The smallest MTU a TAP takes (68: a 28-byte MSS) still carries 1 MiB intact both ways.
#[test]
fn tcp_at_the_minimum_mtu() {
    let Some(out) = run(
        "tcp_at_the_minimum_mtu",
        &format!(
            "MTU=68\n{TCP_BODY}\n{}",
            r#"
result mtu "$(link_info tap0)"
result down "$(gpy tcp-get 10.0.2.2 8080 --timeout 30 2>&1)"
result up "$(gpy tcp-put 10.0.2.2 8081 --timeout 30 --file "$T/payload" 2>&1)"
"#
        ),
    ) else {
        return;
    };
    out.expect("mtu", "MTU 68", |v| field(v, "mtu") == "68");
    let want = out.get("want").to_string();
    out.expect_eq("down", &want);
    out.expect_eq("up", &want);
}

/// A 4000-byte datagram at MTU 1500 crosses in fragments both ways: the guest's fragments are
/// reassembled, and the host's larger reply is fragmented for the guest.
#[test]
fn udp_datagrams_larger_than_the_mtu() {
    let Some(out) = run(
        "udp_datagrams_larger_than_the_mtu",
        r#"
setup_outer
start_server ue opy udp-echo-server --addr 127.0.0.1 --port 7777 --log "$T/udp-local.log"
start_guest root
start_helper -c "$GUEST" tap0
msg=$(head -c 4000 /dev/zero | tr '\0' 'x')
reply=$(gpy udp-echo 10.0.2.2 7777 --message "$msg" 2>&1)
result reply_len "${#reply}"
result reply_head "${reply:0:8}"
result host_got "$(awk '{print $2}' "$T/udp-local.log" | sort -u | tr '\n' ' ')"
"#,
    ) else {
        return;
    };
    out.expect_eq("host_got", "4000 ");
    out.expect_eq("reply_len", "4005");
    out.expect_eq("reply_head", "echo:xxx");
}

/// UDP echo through the gateway to host 127.0.0.1, and to the remote test host.
#[test]
fn udp_echo_host_loopback_and_remote() {
    let Some(out) = run(
        "udp_echo_host_loopback_and_remote",
        r#"
setup_outer
start_server ue opy udp-echo-server --addr 127.0.0.1 --port 7777 --log "$T/udp-local.log"
start_server rue rpy udp-echo-server --addr 198.18.0.2 --port 7777 --log "$T/udp-remote.log"
start_guest root
start_helper -c "$GUEST" tap0
result local "$(gpy udp-echo 10.0.2.2 7777 --message local-hello 2>&1)"
result remote "$(gpy udp-echo 198.18.0.2 7777 --message remote-hello 2>&1)"
result local_src "$(cut -d: -f1 "$T/udp-local.log" | sort -u | tr '\n' ' ')"
"#,
    ) else {
        return;
    };
    out.expect_eq("local", "echo:local-hello");
    out.expect_eq("remote", "echo:remote-hello");
    out.expect_eq("local_src", "127.0.0.1 ");
}

/// Pings `target` twice from the guest, after `setup` (shell) in the outer namespace; reports
/// `rc`, `stats` and `remote_echos` (echo requests the remote test host counted).
fn ping_twice(name: &str, setup: &str, target: &str) -> Option<common::Outcome> {
    run(
        name,
        &format!(
            r#"
setup_outer
{setup}
start_guest root
start_helper -c "$GUEST" tap0
before=$(icmp_in_echos)
rc=0
in_guest timeout 10 busybox ping -c 2 -W 2 {target} > "$T/ping.out" 2>&1 || rc=$?
result rc "$rc"
result stats "$(grep 'packets transmitted' "$T/ping.out" || cat "$T/ping.out")"
result remote_echos "$(( $(icmp_in_echos) - before ))"
"#
        ),
    )
}

/// Ping to the gateway is answered by the helper itself.
#[test]
fn ping_gateway() {
    let Some(out) = ping_twice("ping_gateway", "", "10.0.2.2") else {
        return;
    };
    out.expect_eq("rc", "0");
    out.expect_contains("stats", "2 packets received");
}

/// Ping to the remote test host is answered, and the echo request really reached that host
/// (its ICMP counters moved): the helper relays it through an unprivileged ICMP socket.
#[test]
fn ping_remote_host() {
    let Some(out) = ping_twice("ping_remote_host", "", "198.18.0.2") else {
        return;
    };
    out.expect_eq("rc", "0");
    out.expect_contains("stats", "2 packets received");
    out.expect("remote_echos", "at least 2", |v| {
        v.parse::<u64>().is_ok_and(|n| n >= 2)
    });
}

/// Where unprivileged ping sockets are not allowed (`ping_group_range` "1 0", the kernel's
/// default), a helper running as root falls back to a raw socket and ping still works.
#[test]
fn ping_remote_host_through_a_raw_socket() {
    let setup = r#"sysctl -q -w net.ipv4.ping_group_range="1 0""#;
    let Some(out) = ping_twice("ping_remote_host_through_a_raw_socket", setup, "198.18.0.2") else {
        return;
    };
    out.expect_eq("rc", "0");
    out.expect_contains("stats", "2 packets received");
}

/// An echo request larger than the MTU (the guest sends it in fragments) is answered in
/// fragments too, by the gateway and through the relay, as the replying host would send it:
/// slirpnet used to hand the guest one frame larger than its MTU.
#[test]
fn ping_larger_than_the_mtu_is_answered_in_fragments() {
    let Some(out) = run(
        "ping_larger_than_the_mtu_is_answered_in_fragments",
        r#"
setup_outer
start_guest root
start_helper -c "$GUEST" tap0
reasm() { in_guest awk '/^Ip:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "ReasmOKs") c = i; h = 1 } else print $c }' /proc/net/snmp; }
before=$(reasm)
rc=0
in_guest timeout 10 busybox ping -c 2 -W 2 -s 3000 198.18.0.2 > "$T/ping.out" 2>&1 || rc=$?
in_guest timeout 10 busybox ping -c 2 -W 2 -s 3000 10.0.2.2 >> "$T/ping.out" 2>&1 || rc=$?
result rc "$rc"
result received "$(grep -c '2 packets received' "$T/ping.out")"
result reassembled "$(( $(reasm) - before ))"
"#,
    ) else {
        return;
    };
    out.expect_eq("rc", "0");
    out.expect_eq("received", "2");
    // Four replies, each put back together from fragments by the guest.
    out.expect("reassembled", "at least 4", |v| {
        v.parse::<u64>().is_ok_and(|n| n >= 4)
    });
}

/// DNS: 10.0.2.3:53 reaches the resolv.conf nameserver (here a test responder on the host's
/// 127.0.0.1), over UDP and TCP.
#[test]
fn dns_udp_and_tcp_via_resolv_conf() {
    let Some(out) = run(
        "dns_udp_and_tcp_via_resolv_conf",
        r#"
setup_outer
start_server dns opy dns-server --addr 127.0.0.1 --port 53 --record test.example=198.18.0.9
start_guest root
start_helper -c "$GUEST" tap0
result udp "$(gpy dns-query 10.0.2.3 test.example 2>&1)"
result tcp "$(gpy dns-query 10.0.2.3 test.example --tcp 2>&1)"
result nx "$(gpy dns-query 10.0.2.3 nothere.example 2>&1)"
result served "$(grep -c 'query from' "$T/dns.log" || true)"
"#,
    ) else {
        return;
    };
    out.expect_eq("udp", "198.18.0.9");
    out.expect_eq("tcp", "198.18.0.9");
    out.expect_eq("nx", "RCODE3");
    out.expect("served", "at least 3 queries at the test resolver", |v| {
        v.parse::<u64>().is_ok_and(|n| n >= 3)
    });
}

/// A connect to a closed port behind the gateway is refused, fast.
#[test]
fn refused_connect_fails_fast() {
    let Some(out) = run(
        "refused_connect_fails_fast",
        r#"
setup_outer
start_guest root
start_helper -c "$GUEST" tap0
read -r r secs < <(gpy connect-probe 10.0.2.2 9 --timeout 5)
result result "$r"
result secs "$secs"
read -r r secs < <(gpy connect-probe 198.18.0.2 9 --timeout 5)
result remote_result "$r"
result remote_secs "$secs"
"#,
    ) else {
        return;
    };
    out.expect_eq("result", "ECONNREFUSED");
    out.expect("secs", "under 2 s", |_| out.millis("secs") < 2000);
    out.expect_eq("remote_result", "ECONNREFUSED");
    out.expect("remote_secs", "under 2 s", |_| {
        out.millis("remote_secs") < 2000
    });
}

/// A host server that closes its side and then resets the connection: the guest, which sends
/// nothing, hears of the reset at once (its socket hangs up), as it would from a kernel between
/// them; slirpnet used to notice only when the guest next sent or closed.
#[test]
fn a_host_reset_after_its_fin_reaches_the_guest() {
    let Some(out) = run(
        "a_host_reset_after_its_fin_reaches_the_guest",
        r#"
setup_outer
start_server fr opy tcp-fin-then-reset-server --addr 127.0.0.1 --port 8090
start_guest root
start_helper -c "$GUEST" tap0
read -r r secs data < <(gpy tcp-wait-reset 10.0.2.2 8090 --timeout 5)
result result "$r"
result secs "$secs"
result data "$data"
"#,
    ) else {
        return;
    };
    out.expect_eq("data", "hello");
    if peer_skips("a host reset after its FIN reaches the guest (slirp4netns keeps it open)") {
        // What slirpnet did too before: the guest hears nothing while it sends nothing.
        out.expect_eq("result", "OPEN");
        return;
    }
    out.expect_eq("result", "RESET");
    // The server resets 0.3 s after its FIN.
    out.expect("secs", "under 2 s", |_| out.millis("secs") < 2000);
}

/// `--disable-host-loopback`: TCP and UDP to 10.0.2.2 no longer reach host 127.0.0.1 (TCP fails
/// fast with unreachable/refused), ping to the gateway still answers, other traffic still
/// flows.
#[test]
fn disable_host_loopback() {
    let Some(out) = run(
        "disable_host_loopback",
        r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
start_server dl opy tcp-download-server --addr 127.0.0.1 --port 8080 --file "$T/payload"
start_server ue opy udp-echo-server --addr 127.0.0.1 --port 7777 --log "$T/udp-local.log"
start_server rdl rpy tcp-download-server --addr 198.18.0.2 --port 8080 --file "$T/payload"
start_guest root
start_helper -c --disable-host-loopback "$GUEST" tap0
read -r r secs < <(gpy connect-probe 10.0.2.2 8080 --timeout 5)
result tcp "$r"
result tcp_secs "$secs"
result udp "$(gpy udp-echo 10.0.2.2 7777 --tries 3 --timeout 0.5 2>&1)"
rc=0
in_guest timeout 10 busybox ping -c 1 -W 2 10.0.2.2 > "$T/ping.out" 2>&1 || rc=$?
result ping_rc "$rc"
result remote "$(gpy tcp-get 198.18.0.2 8080 2>&1)"
sleep 0.2
result host_tcp_accepts "$(grep -c accepted "$T/dl.log" || true)"
result host_udp_datagrams "$(cat "$T/udp-local.log" 2>/dev/null | wc -l)"
"#,
    ) else {
        return;
    };
    out.expect_one_of("tcp", &["ENETUNREACH", "EHOSTUNREACH", "ECONNREFUSED"]);
    out.expect("tcp_secs", "under 2 s", |_| out.millis("tcp_secs") < 2000);
    out.expect_eq("host_tcp_accepts", "0");
    out.expect_eq("host_udp_datagrams", "0");
    out.expect_eq("ping_rc", "0");
    let want = out.get("want").to_string();
    out.expect_eq("remote", &want);
    if !peer_skips("UDP to the gateway reports unreachable (slirp4netns drops it silently)") {
        out.expect_one_of(
            "udp",
            &[
                "ERROR ENETUNREACH",
                "ERROR EHOSTUNREACH",
                "ERROR ECONNREFUSED",
            ],
        );
    }
}

/// `--netns-type=path` with a network namespace file bind-mounted to a path, and
/// `--userns-path` for its user namespace (how Podman calls it).
#[test]
fn netns_type_path_with_userns_path() {
    let Some(out) = run(
        "netns_type_path_with_userns_path",
        r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
start_server dl opy tcp-download-server --addr 127.0.0.1 --port 8080 --file "$T/payload"
start_guest userns
mkdir -p "$T/netns"
touch "$T/netns/guest" "$T/netns/guest-user"
mount --bind "/proc/$GUEST/ns/net" "$T/netns/guest"
mount --bind "/proc/$GUEST/ns/user" "$T/netns/guest-user"
start_helper -c --netns-type=path --userns-path="$T/netns/guest-user" "$T/netns/guest" tap0
result tap "$(link_info tap0)"
result addr "$(in_guest ip -o -4 addr show dev tap0 | awk '{print $4}')"
result down "$(gpy tcp-get 10.0.2.2 8080 2>&1)"
"#,
    ) else {
        return;
    };
    out.expect("tap", "tap0 UP", |v| has_flag(v, "UP"));
    out.expect_eq("addr", "10.0.2.100/24");
    let want = out.get("want").to_string();
    out.expect_eq("down", &want);
}

/// Rootless: an unprivileged user owns the guest's user+network namespace and runs the helper
/// (no capabilities at all), and a TCP download works.
#[test]
fn rootless_unprivileged_user_tcp_download() {
    if !common::require_root("rootless_unprivileged_user_tcp_download") {
        return;
    }
    ensure_test_user();
    let Some(out) = run(
        "rootless_unprivileged_user_tcp_download",
        r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
result uid "$(id -u "$TEST_USER")"
start_server dl opy tcp-download-server --addr 127.0.0.1 --port 8080 --file "$T/payload"
start_guest rootless
start_helper --as-user -c "$GUEST" tap0
result helper_uids "$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$HPID/status")"
result helper_capeff "$(awk '/^CapEff:/ {print $2}' "/proc/$HPID/status")"
result addr "$(in_guest ip -o -4 addr show dev tap0 | awk '{print $4}')"
result down "$(gpy tcp-get 10.0.2.2 8080 2>&1)"
"#,
    ) else {
        return;
    };
    let uid = out.get("uid").to_string();
    out.expect_eq("helper_uids", &format!("{uid} {uid} {uid} {uid}"));
    out.expect_eq("helper_capeff", "0000000000000000");
    out.expect_eq("addr", "10.0.2.100/24");
    let want = out.get("want").to_string();
    out.expect_eq("down", &want);
}

/// A PID that does not exist: exit 1, the reason on stderr (one line for slirpnet), nothing
/// left running.
#[test]
fn bad_pid_exits_1() {
    let Some(out) = run(
        "bad_pid_exits_1",
        r#"
setup_outer
pid=99999
[ ! -e /proc/$pid ] || die "pid $pid exists"
rc=0
timeout 10 "$H" -c "$pid" tap0 > "$T/bad.out" 2> "$T/bad.err" || rc=$?
result rc "$rc"
result stderr_lines "$(wc -l < "$T/bad.err")"
result stderr "$(tr '\n' '|' < "$T/bad.err")"
sleep 0.1
result left "$(helper_count)"
"#,
    ) else {
        return;
    };
    out.expect_eq("rc", "1");
    out.expect_contains("stderr", "99999");
    out.expect_eq("left", "0");
    if peer_skips("exactly one stderr line (slirp4netns adds `child failed(1)`)") {
        out.expect_eq("stderr_lines", "2");
    } else {
        out.expect_eq("stderr_lines", "1");
    }
}

/// A second helper on a TAP another helper already holds: exit 1; the first keeps working.
#[test]
fn tap_busy_exits_1() {
    let Some(out) = run(
        "tap_busy_exits_1",
        r#"
setup_outer
start_guest root
start_helper -c "$GUEST" tap0
FIRST=$HPID
rc=0
timeout 10 "$H" -c "$GUEST" tap0 > "$T/busy.out" 2> "$T/busy.err" || rc=$?
result rc "$rc"
result stderr "$(tr '\n' '|' < "$T/busy.err")"
result first_alive "$(helper_alive "$FIRST")"
sleep 0.1
result count "$(helper_count)"
prc=0
in_guest timeout 10 busybox ping -c 1 -W 2 10.0.2.2 > /dev/null 2>&1 || prc=$?
result ping_rc "$prc"
"#,
    ) else {
        return;
    };
    out.expect_eq("rc", "1");
    out.expect("stderr", "a message", |v| !v.is_empty());
    out.expect_eq("first_alive", "yes");
    out.expect_eq("count", "1");
    out.expect_eq("ping_rc", "0");
}

/// Without `-c` the TAP is created and left alone; a DHCP client in the guest gets 10.0.2.15,
/// router 10.0.2.2, DNS 10.0.2.3.
#[test]
fn dhcp_lease_without_configure() {
    let Some(out) = run(
        "dhcp_lease_without_configure",
        r#"
setup_outer
start_guest root
start_helper "$GUEST" tap0
result tap_before "$(link_info tap0)"
result addr_before "$(in_guest ip -o -4 addr show dev tap0 | wc -l)"
in_guest ip link set lo up
in_guest ip link set tap0 up
cat > "$T/udhcpc.sh" <<'EOS'
#!/bin/sh
[ "$1" = bound ] && echo "LEASE ip=$ip mask=$mask router=$router dns=$dns lease=$lease"
exit 0
EOS
chmod 0755 "$T/udhcpc.sh"
lease=$(in_guest timeout 15 busybox udhcpc -i tap0 -f -q -n -t 5 -T 1 -s "$T/udhcpc.sh" 2> "$T/udhcpc.err" | grep '^LEASE' || true)
result lease "$lease"
"#,
    ) else {
        return;
    };
    out.expect("tap_before", "tap0 down", |v| !has_flag(v, "UP"));
    out.expect_eq("addr_before", "0");
    out.expect_contains("lease", "ip=10.0.2.15 ");
    out.expect_contains("lease", "mask=24 ");
    out.expect_contains("lease", "router=10.0.2.2 ");
    out.expect_contains("lease", "dns=10.0.2.3 ");
}

/// A short iperf3 run through the gateway (MTU 65520): the data path holds up under load.
#[test]
fn iperf3_smoke() {
    let Some(out) = run(
        "iperf3_smoke",
        r#"
setup_outer
start_iperf3_server -1
start_guest root
start_helper -c --mtu=65520 "$GUEST" tap0
in_guest timeout 20 iperf3 -c 10.0.2.2 -p 5201 -t 1 -J > "$T/iperf.json" 2> "$T/iperf.err" || true
result received "$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["end"]["sum_received"]["bytes"])' "$T/iperf.json" 2>&1 | tail -1)"
result mbps "$("$PY" -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e6))' "$T/iperf.json" 2>&1 | tail -1)"
"#,
    ) else {
        return;
    };
    eprintln!("iperf3_smoke: {} Mbit/s", out.get("mbps"));
    out.expect("received", "more than 1 MiB", |v| {
        v.parse::<u64>().is_ok_and(|n| n > 1 << 20)
    });
}

/// A bulk upload from the guest at MTU 1500 over a lossless path: the guest's TCP never enters
/// loss recovery (no fast retransmit, counted in its namespace with `nstat`), with the
/// kernel's default congestion control and with CUBIC, which (unlike BBR, this machine's
/// default) halves its window at every fast retransmit. (Before slirpnet stopped repeating
/// identical pure ACKs, a batch in which the host socket took nothing produced one; three made
/// the guest fast-retransmit data that was never lost, 40 to 100 times in 4 s.) Tail loss
/// probes are not counted: with SACK the guest sends one when an ACK is a few milliseconds
/// late, as on a loaded machine, and that says nothing about our ACKs.
#[test]
fn iperf3_upload_without_retransmissions() {
    if is_peer() {
        eprintln!("iperf3_upload_without_retransmissions: skipped: counts slirpnet's ACKs");
        return;
    }
    let Some(out) = run(
        "iperf3_upload_without_retransmissions",
        r#"
setup_outer
start_iperf3_server
start_guest root
start_helper -c "$GUEST" tap0
upload() {
    in_guest timeout 20 iperf3 -c 10.0.2.2 -p 5201 -t 4 -J "$@" > "$T/iperf.json" 2> "$T/iperf.err" || true
    "$PY" -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(d["end"]["sum_sent"]["bytes"] > 1 << 30, d["end"].get("sender_tcp_congestion"))' "$T/iperf.json" 2>&1 | tail -1
}
recoveries() {
    in_guest nstat -asz TcpExtTCPFastRetrans TcpExtTCPSackRecovery TcpExtTCPRenoRecovery |
        awk '!/^#/ { n += $2 } END { print n + 0 }'
}
result default "$(upload) $(recoveries)"
result cubic "$(upload -C cubic) $(recoveries)"
"#,
    ) else {
        return;
    };
    let default = out.get("default");
    assert!(
        default.starts_with("True ") && default.ends_with(" 0"),
        "default: {default}"
    );
    out.expect_eq("cubic", "True cubic 0");
}

/// A frame the guest's TAP queue drops is lost for real: the guest's TCP learns of it only from
/// our ACKs. With the queue cut to 4 frames, an upload still moves hundreds of MiB a second:
/// our duplicate ACKs carry SACK blocks, so the guest resends only the holes. Before they
/// did, it fell to tens of Mbit/s, waiting out timeouts (slirp4netns carries almost nothing
/// here; docs/performance.md, "Levers kept").
#[test]
fn upload_through_an_overflowing_tap_queue_keeps_going() {
    if is_peer() {
        eprintln!("upload_through_an_overflowing_tap_queue_keeps_going: skipped: slirpnet's SACK");
        return;
    }
    let Some(out) = run(
        "upload_through_an_overflowing_tap_queue_keeps_going",
        r#"
setup_outer
start_iperf3_server
start_guest root
start_helper -c "$GUEST" tap0
in_guest ip link set tap0 txqueuelen 4
in_guest timeout 20 iperf3 -c 10.0.2.2 -p 5201 -t 3 -J > "$T/iperf.json" 2> "$T/iperf.err" || true
result upload "$("$PY" -c 'import json, sys
s = json.load(open(sys.argv[1]))["end"]["sum_sent"]
print(s["bytes"] >> 20, s["retransmits"])' "$T/iperf.json" 2>&1 | tail -1)"
"#,
    ) else {
        return;
    };
    let upload = out.get("upload");
    let (mib, retransmits) = upload
        .split_once(' ')
        .and_then(|(m, r)| Some((m.parse::<u64>().ok()?, r.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("iperf3: {upload}"));
    assert!(retransmits > 0, "the queue never overflowed: {upload}");
    assert!(mib >= 300, "{mib} MiB in 3 s through the small queue");
}

/// A guest connection left idle with TCP keepalive on (probes after 1 s, every 1 s, 3 unanswered
/// = dead) is still alive after 6 s and echoes: slirpnet answers keepalive probes (no data,
/// one below the next sequence number) with an ACK, as a TCP peer must.
#[test]
fn idle_connection_with_keepalive_survives() {
    let Some(out) = run(
        "idle_connection_with_keepalive_survives",
        r#"
setup_outer
start_server hecho opy tcp-echo-server --addr 127.0.0.1 --port 7777
start_guest root
start_helper -c "$GUEST" tap0
result echo "$(in_guest timeout 20 "$PY" -c '
import socket, time
s = socket.create_connection(("10.0.2.2", 7777), timeout=10)
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
time.sleep(6)
try:
    s.sendall(b"still here")
    print(s.recv(100).decode())
except OSError as e:
    print("error:", e)
' 2>&1 | tail -n1)"
"#,
    ) else {
        return;
    };
    out.expect_eq("echo", "still here");
}

/// 3000 one-byte round trips from the guest to a host echo server (TCP_NODELAY, each waiting
/// for its answer): every byte comes back, in order, with the default busy polling (under
/// `--enable-seccomp`, whose allow-list must cover it) and with `--busy-poll=0`; once the
/// exchanges stop the helper stops polling and uses no CPU.
#[test]
fn request_response_round_trips_then_idle() {
    let script = r#"
setup_outer
start_server hecho opy tcp-echo-server --addr 127.0.0.1 --port 7777
cat > "$T/rr.py" <<'PY'
import socket
s = socket.create_connection(("10.0.2.2", 7777), timeout=10)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
ok = 0
for i in range(3000):
    b = bytes([i % 251])
    s.sendall(b)
    ok += s.recv(1) == b
s.close()
print(ok)
PY
phase() {
    local name=$1
    shift
    start_guest root
    start_helper -c "$@" "$GUEST" tap0
    result "echoed_$name" "$(in_guest timeout 60 "$PY" "$T/rr.py" 2>&1 | tail -n1)"
    sleep 0.5
    local cpu0
    cpu0=$(awk '{print $14 + $15}' "/proc/$HPID/stat")
    sleep 2
    result "idle_ticks_$name" "$(( $(awk '{print $14 + $15}' "/proc/$HPID/stat") - cpu0 ))"
    result "alive_$name" "$(helper_alive "$HPID")"
    kill "$HPID"
    wait_exit "$HPID" 5
}
phase default --enable-seccomp
"#;
    let mut phases = vec!["default"];
    let mut script = script.to_string();
    if !peer_skips("--busy-poll=0") {
        phases.push("no_poll");
        script.push_str("phase no_poll --busy-poll=0\n");
    }
    let Some(out) = run("request_response_round_trips_then_idle", &script) else {
        return;
    };
    for phase in phases {
        out.expect_eq(&format!("echoed_{phase}"), "3000");
        out.expect_eq(&format!("alive_{phase}"), "yes");
        out.expect(
            &format!("idle_ticks_{phase}"),
            "no CPU once the exchanges stop (under 5 ticks in 2 s)",
            |v| v.parse::<u64>().is_ok_and(|t| t < 5),
        );
    }
}

/// Small socket buffers on both iperf3 ends (`-w 16K`, which the server takes too), both
/// directions at MTU 1500: the transfer goes at the buffers' pace, with bytes in every
/// half-second interval of iperf3's report (no stall, no collapse).
#[test]
fn iperf3_small_socket_buffers_never_stall() {
    let Some(out) = run(
        "iperf3_small_socket_buffers_never_stall",
        r#"
setup_outer
start_iperf3_server
start_guest root
start_helper -c "$GUEST" tap0
intervals() {
    "$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(" ".join(str(i["sum"]["bytes"]) for i in d["intervals"]))' "$1" 2>&1 | tail -1
}
for dir in up down; do
    flag=""; [ "$dir" = down ] && flag="-R"
    in_guest timeout 30 iperf3 -c 10.0.2.2 -p 5201 -t 4 -i 0.5 -w 16K $flag -J > "$T/$dir.json" 2> "$T/$dir.err" || true
    result "$dir" "$(intervals "$T/$dir.json")"
done
"#,
    ) else {
        return;
    };
    for dir in ["up", "down"] {
        eprintln!("iperf3 -w 16K {dir}, bytes per 0.5 s: {}", out.get(dir));
        out.expect(dir, "8 half-second intervals, each with bytes", |v| {
            let bytes: Vec<u64> = v
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            bytes.len() == 8 && bytes.iter().all(|&b| b > 0)
        });
    }
}

/// Run mode (slirpnet only): `slirpnet -- CMD` runs CMD in a fresh namespace with the network
/// configured, and exits with CMD's status.
#[test]
fn run_mode_exit_status_and_network() {
    if is_peer() {
        eprintln!("run_mode_exit_status_and_network: skipped: slirp4netns has no run mode");
        return;
    }
    let Some(out) = run(
        "run_mode_exit_status_and_network",
        r#"
setup_outer
rc=0
timeout 20 "$H" -- sh -c 'ip addr show tap0; exit 7' > "$T/run.out" 2> "$T/run.err" || rc=$?
result rc "$rc"
result addr "$(grep -o 'inet [0-9./]*' "$T/run.out" | tr '\n' ' ')"
result stderr "$(tr '\n' '|' < "$T/run.err")"
"#,
    ) else {
        return;
    };
    out.expect_eq("rc", "7");
    out.expect_contains("addr", "inet 10.0.2.100/24");
}

/// The README's first command: run mode as an unprivileged user reaches a service on the
/// host's loopback through 10.0.2.2.
#[test]
fn run_mode_unprivileged_reaches_host_loopback() {
    if is_peer() {
        eprintln!(
            "run_mode_unprivileged_reaches_host_loopback: skipped: slirp4netns has no run mode"
        );
        return;
    }
    ensure_test_user();
    let Some(out) = run(
        "run_mode_unprivileged_reaches_host_loopback",
        r#"
setup_outer
make_payload
start_server dl opy tcp-download-server --addr 127.0.0.1 --port 8080 --file "$T/payload"
set_test_user
rc=0
timeout 20 "${AS_USER[@]}" "$H" -- sh -c "id -u; $PY $T/tool.py tcp-get 10.0.2.2 8080" > "$T/run.out" 2> "$T/run.err" || rc=$?
result rc "$rc"
result uid "$(head -n1 "$T/run.out")"
result down "$(tail -n1 "$T/run.out")"
result want "$PAYLOAD_SHA 1048576"
"#,
    ) else {
        return;
    };
    out.expect_eq("rc", "0");
    out.expect_eq("uid", "0");
    let want = out.get("want").to_string();
    out.expect_eq("down", &want);
}
