//! End-to-end tests of port forwards (issue 3) in network namespaces (root only): the API
//! socket (`-a`, COMPAT.md section 2) and `-p/--publish`, driven the way Podman and
//! RootlessKit drive them, with clients on the host's loopback and on the remote test host.
//!
//! Same harness as tests/namespaces.rs (tests/common/mod.rs and tests/common/lib.sh): the
//! helper runs inside an outer network namespace of the test's own, the remote test host is
//! 198.18.0.2 behind a veth (the outer namespace is 198.18.0.1), and nothing leaves those
//! namespaces.
//!
//! `SLIRPNET_TEST_BIN=/usr/bin/slirp4netns cargo test --test namespaces_forward` runs the same
//! suite against slirp4netns: slirpnet-only behaviour (`host_port: 0`, `get_stats`, `-p`, an
//! idle API client not stalling traffic, ...) is then skipped, and says so.

mod common;

use common::{is_peer, peer_skips, run};

/// The reply of an `add_hostfwd` that succeeded.
fn added(id: u32) -> String {
    format!(r#"{{"return":{{"id":{id}}}}}"#)
}

/// An error reply, as slirp4netns words it.
fn error(desc: &str) -> String {
    format!(r#"{{"error":{{"desc":"bad request: {desc}"}}}}"#)
}

/// One `list_hostfwd` entry.
fn entry(id: u32, proto: &str, host: &str, host_port: u16, guest: &str, guest_port: u16) -> String {
    format!(
        r#"{{"id":{id},"proto":"{proto}","host_addr":"{host}","host_port":{host_port},"guest_addr":"{guest}","guest_port":{guest_port}}}"#
    )
}

fn entries(list: &[String]) -> String {
    format!(r#"{{"entries":[{}]}}"#, list.join(","))
}

/// `{prefix}refused`: a host client of a forward to a guest port nobody listens on was closed
/// (it read nothing: sha256 of no bytes, length 0) or reset; `{prefix}refused_ms`: within 2 s.
fn expect_refused_promptly(out: &common::Outcome, prefix: &str) {
    out.expect_one_of(
        &format!("{prefix}refused"),
        &[
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0",
            "ConnectionResetError: [Errno 104] Connection reset by peer",
        ],
    );
    let ms = format!("{prefix}refused_ms");
    out.expect(&ms, "under 2 s", |_| out.millis(&ms) < 2000);
}

fn skip_for_peer(test: &str, why: &str) -> bool {
    if is_peer() {
        eprintln!("{test}: skipped: slirp4netns has no {why}");
        true
    } else {
        false
    }
}

/// Guest servers on 10.0.2.100: an upload sink (80, answers sha256 and length), a download
/// source (81) and an echo server (82), each logging its peers.
const GUEST_TCP_SERVERS: &str = r#"
start_server gul gpy tcp-upload-server --addr 0.0.0.0 --port 80 --log "$T/gul.peers"
start_server gdl gpy tcp-download-server --addr 0.0.0.0 --port 81 --file "$T/payload" --log "$T/gdl.peers"
start_server gecho gpy tcp-echo-server --addr 0.0.0.0 --port 82 --log "$T/gecho.peers"
"#;

/// A TCP forward added over the API carries 1 MiB intact host → guest, guest → host, and both
/// ways at once, for a client on the host's 127.0.0.1; a forward to a guest port nobody
/// listens on closes or resets the host client promptly instead of leaving it hanging.
#[test]
fn tcp_forward_via_api_carries_1mib_both_ways() {
    let Some(out) = run(
        "tcp_forward_via_api_carries_1mib_both_ways",
        &format!(
            "{}{GUEST_TCP_SERVERS}{}",
            r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
API=$T/api.sock
start_guest root
start_helper -c -a "$API" "$GUEST" tap0
"#,
            r#"
result add1 "$(api "$(add_req tcp 127.0.0.1 8080 80)")"
result add2 "$(api "$(add_req tcp 127.0.0.1 8081 81)")"
result add3 "$(api "$(add_req tcp 127.0.0.1 8082 82)")"
result up "$(opy tcp-put 127.0.0.1 8080 --file "$T/payload" 2>&1)"
result down "$(opy tcp-get 127.0.0.1 8081 2>&1)"
result echo "$(opy tcp-echo 127.0.0.1 8082 --file "$T/payload" 2>&1)"
# Nothing listens on guest port 83: the host client is closed or reset, promptly.
result add4 "$(api "$(add_req tcp 127.0.0.1 8083 83)")"
t0=$(date +%s%N)
result refused "$(opy tcp-get 127.0.0.1 8083 --timeout 5 2>&1 | tail -n1)"
result refused_ms "$(( ($(date +%s%N) - t0) / 1000000 ))ms"
"#
        ),
    ) else {
        return;
    };
    out.expect_eq("add1", &added(1));
    out.expect_eq("add2", &added(2));
    out.expect_eq("add3", &added(3));
    let want = out.get("want").to_string();
    out.expect_eq("up", &want);
    out.expect_eq("down", &want);
    out.expect_eq("echo", &want);
    out.expect_eq("add4", &added(4));
    expect_refused_promptly(&out, "");
}

/// `-p/--publish` (repeatable): the forwards listen by the time the ready byte comes, carry
/// 1 MiB intact both ways (TCP) and echo (UDP), and `list_hostfwd` shows them.
#[test]
fn publish_from_the_command_line() {
    if skip_for_peer("publish_from_the_command_line", "-p/--publish") {
        return;
    }
    let Some(out) = run(
        "publish_from_the_command_line",
        &format!(
            "{}{GUEST_TCP_SERVERS}{}",
            r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
API=$T/api.sock
start_guest root
"#,
            r#"
start_server gue gpy udp-echo-server --addr 0.0.0.0 --port 7000
start_helper -c -a "$API" -p 8080:80 -p 127.0.0.1:8081:81 --publish 7000:7000/udp "$GUEST" tap0
result listen_tcp "$(listening tcp 8080) $(listening tcp 8081)"
result listen_udp "$(listening udp 7000)"
result up "$(opy tcp-put 127.0.0.1 8080 --file "$T/payload" 2>&1)"
result down "$(opy tcp-get 127.0.0.1 8081 2>&1)"
result udp "$(opy udp-echo 127.0.0.1 7000 --message published 2>&1)"
result list "$(api "$LIST_REQ")"
"#
        ),
    ) else {
        return;
    };
    out.expect_eq("listen_tcp", "yes yes");
    out.expect_eq("listen_udp", "yes");
    let want = out.get("want").to_string();
    out.expect_eq("up", &want);
    out.expect_eq("down", &want);
    out.expect_eq("udp", "echo:published");
    out.expect_eq(
        "list",
        &entries(&[
            entry(1, "tcp", "0.0.0.0", 8080, "10.0.2.100", 80),
            entry(2, "tcp", "127.0.0.1", 8081, "10.0.2.100", 81),
            entry(3, "udp", "0.0.0.0", 7000, "10.0.2.100", 7000),
        ]),
    );
}

/// A UDP forward keeps clients apart: two host sockets send at once and each gets its own
/// reply; the guest sees two flows.
#[test]
fn udp_forward_replies_reach_each_client() {
    let Some(out) = run(
        "udp_forward_replies_reach_each_client",
        r#"
setup_outer
API=$T/api.sock
start_guest root
start_helper -c -a "$API" "$GUEST" tap0
start_server gue gpy udp-echo-server --addr 0.0.0.0 --port 7000 --log "$T/gue.peers"
result add "$(api "$(add_req udp 127.0.0.1 7000 7000)")"
result replies "$(opy udp-clients 127.0.0.1 7000 --count 2 2>&1)"
result replies3 "$(opy udp-clients 127.0.0.1 7000 --count 3 2>&1)"
result guest_flows "$(cut -d' ' -f1 "$T/gue.peers" | sort -u | wc -l)"
"#,
    ) else {
        return;
    };
    out.expect_eq("add", &added(1));
    out.expect_eq("replies", "echo:client-0 echo:client-1");
    out.expect_eq("replies3", "echo:client-0 echo:client-1 echo:client-2");
    // One flow per client socket.
    out.expect_eq("guest_flows", "5");
}

/// Source addresses as the guest sees them: a client on host loopback comes from the gateway
/// 10.0.2.2; a client on the remote test host (connecting to 198.18.0.1, the forward bound to
/// 0.0.0.0) keeps its real address and port, for TCP and UDP.
#[test]
fn forward_source_addresses_tcp_and_udp() {
    let Some(out) = run(
        "forward_source_addresses_tcp_and_udp",
        r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
API=$T/api.sock
start_guest root
start_helper -c -a "$API" "$GUEST" tap0
start_server gul gpy tcp-upload-server --addr 0.0.0.0 --port 80 --log "$T/gul.peers"
start_server gue gpy udp-echo-server --addr 0.0.0.0 --port 7000 --log "$T/gue.peers"
result add_tcp "$(api "$(add_req tcp 0.0.0.0 8080 80)")"
result add_udp "$(api "$(add_req udp 0.0.0.0 7000 7000)")"

result lo_tcp "$(opy tcp-put 127.0.0.1 8080 --sport 40001 --file "$T/payload" 2>&1)"
result lo_tcp_peer "$(tail -n1 "$T/gul.peers" | cut -d: -f1)"
result lo_udp "$(opy udp-echo 127.0.0.1 7000 --sport 40002 --message lo 2>&1)"
result lo_udp_peer "$(tail -n1 "$T/gue.peers" | cut -d: -f1)"

result rem_tcp "$(rpy tcp-put 198.18.0.1 8080 --sport 40003 --file "$T/payload" 2>&1)"
result rem_tcp_peer "$(tail -n1 "$T/gul.peers")"
result rem_udp "$(rpy udp-echo 198.18.0.1 7000 --sport 40004 --message remote 2>&1)"
result rem_udp_peer "$(tail -n1 "$T/gue.peers" | cut -d' ' -f1)"
"#,
    ) else {
        return;
    };
    out.expect_eq("add_tcp", &added(1));
    out.expect_eq("add_udp", &added(2));
    let want = out.get("want").to_string();
    out.expect_eq("lo_tcp", &want);
    out.expect_eq("lo_tcp_peer", "10.0.2.2");
    out.expect_eq("lo_udp", "echo:lo");
    out.expect_eq("lo_udp_peer", "10.0.2.2");
    out.expect_eq("rem_tcp", &want);
    out.expect_eq("rem_tcp_peer", "198.18.0.2:40003");
    out.expect_eq("rem_udp", "echo:remote");
    out.expect_eq("rem_udp_peer", "198.18.0.2:40004");
}

/// `list_hostfwd` lists ids 1, 2, 3 byte for byte in insertion order (empty `host_addr` and a
/// missing `guest_addr` shown with their defaults); `remove_hostfwd` closes the listener at
/// once (a new connect is refused) while an established connection keeps working; ids are
/// never reused; removing an unknown id is an error.
#[test]
fn list_and_remove_forwards() {
    let Some(out) = run(
        "list_and_remove_forwards",
        r##"
setup_outer
API=$T/api.sock
start_guest root
start_helper -c -a "$API" "$GUEST" tap0
start_server gecho gpy tcp-echo-server --addr 0.0.0.0 --port 82
start_server gue gpy udp-echo-server --addr 0.0.0.0 --port 7000
result empty "$(api "$LIST_REQ")"
result add1 "$(api "$(add_req tcp 127.0.0.1 8080 82)")"
result add2 "$(api '{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"0.0.0.0","host_port":7000,"guest_addr":"10.0.2.100","guest_port":7000}}')"
result add3 "$(api '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"","host_port":8081,"guest_addr":"","guest_port":82}}')"
result list "$(api "$LIST_REQ")"

opy tcp-session 127.0.0.1 8080 --mark "$T/run/session.mark" --go "$T/run/session.go" > "$T/session.out" 2>&1 &
SESSION=$!
for i in $(seq 200); do [ -e "$T/run/session.mark" ] && break; sleep 0.025; done
result remove1 "$(api "$(remove_req 1)")"
read -r r secs < <(opy connect-probe 127.0.0.1 8080 --timeout 3)
result after_remove "$r"
result listening_after "$(listening tcp 8080)"
touch "$T/run/session.go"
wait "$SESSION" || true
result session "$(cat "$T/session.out")"

result remove2 "$(api "$(remove_req 2)")"
result udp_listening_after "$(listening udp 7000)"
result remove_again "$(api "$(remove_req 1)")"
result list_after "$(api "$LIST_REQ")"
result add4 "$(api "$(add_req tcp 127.0.0.1 8080 82)")"
result list_final "$(api "$LIST_REQ")"
result reuse "$(opy tcp-session 127.0.0.1 8080 --mark "$T/run/s2.mark" --go "$T/run/session.go" 2>&1)"
"##,
    ) else {
        return;
    };
    out.expect_eq("empty", r#"{"entries":[]}"#);
    out.expect_eq("add1", &added(1));
    out.expect_eq("add2", &added(2));
    out.expect_eq("add3", &added(3));
    let e1 = entry(1, "tcp", "127.0.0.1", 8080, "10.0.2.100", 82);
    let e2 = entry(2, "udp", "0.0.0.0", 7000, "10.0.2.100", 7000);
    let e3 = entry(3, "tcp", "0.0.0.0", 8081, "10.0.2.100", 82);
    let e4 = entry(4, "tcp", "127.0.0.1", 8080, "10.0.2.100", 82);
    out.expect_eq("list", &entries(&[e1, e2, e3.clone()]));
    out.expect_eq("remove1", r#"{"return":{}}"#);
    out.expect_eq("after_remove", "ECONNREFUSED");
    out.expect_eq("listening_after", "no");
    out.expect_eq("session", "one two");
    out.expect_eq("remove2", r#"{"return":{}}"#);
    out.expect_eq("udp_listening_after", "no");
    out.expect_eq("remove_again", &error("remove_hostfwd: bad arguments.id"));
    out.expect_eq("list_after", &entries(std::slice::from_ref(&e3)));
    out.expect_eq("add4", &added(4));
    out.expect_eq("list_final", &entries(&[e3, e4]));
    out.expect_eq("reuse", "one two");
}

/// An API client that connects and sends nothing does not stall the data plane: while it sits
/// there, a 1 MiB download through the gateway and a second API request both complete, fast.
#[test]
fn idle_api_client_does_not_stall_traffic() {
    let Some(out) = run(
        "idle_api_client_does_not_stall_traffic",
        r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
API=$T/api.sock
start_server dl opy tcp-download-server --addr 127.0.0.1 --port 8080 --file "$T/payload"
start_guest root
start_helper -c -a "$API" "$GUEST" tap0
start_server hold opy api-hold "$API" --seconds 8
sleep 0.3
t0=$(date +%s%N)
result down "$(gpy tcp-get 10.0.2.2 8080 --timeout 4 2>&1 | tail -n1)"
result down_ms "$(( ($(date +%s%N) - t0) / 1000000 ))ms"
t0=$(date +%s%N)
result list "$(api "$LIST_REQ" --timeout 4)"
result list_ms "$(( ($(date +%s%N) - t0) / 1000000 ))ms"
result held "$(cat "$T/hold.log")"
"#,
    ) else {
        return;
    };
    if peer_skips("an idle API client does not stall traffic (slirp4netns blocks on it)") {
        return;
    }
    let want = out.get("want").to_string();
    out.expect_eq("down", &want);
    out.expect("down_ms", "under 3 s", |_| out.millis("down_ms") < 3000);
    out.expect_eq("list", r#"{"entries":[]}"#);
    out.expect("list_ms", "under 1 s", |_| out.millis("list_ms") < 1000);
    // The idle client was still connected all along (not dropped to make room).
    out.expect_eq("held", "");
}

/// 200 connections at once through one forward: every one gets its own line echoed back.
#[test]
fn parallel_200_connections_through_one_forward() {
    let Some(out) = run(
        "parallel_200_connections_through_one_forward",
        r#"
setup_outer
API=$T/api.sock
start_guest root
start_helper -c -a "$API" "$GUEST" tap0
start_server gecho gpy tcp-echo-server --addr 0.0.0.0 --port 82 --log "$T/gecho.peers"
result add "$(api "$(add_req tcp 127.0.0.1 8080 82)")"
t0=$(date +%s%N)
result parallel "$(opy tcp-parallel 127.0.0.1 8080 --count 200 --timeout 20 2>&1)"
result ms "$(( ($(date +%s%N) - t0) / 1000000 ))ms"
result guest_accepts "$(wc -l < "$T/gecho.peers")"
"#,
    ) else {
        return;
    };
    out.expect_eq("add", &added(1));
    eprintln!("200 parallel connections took {}", out.get("ms"));
    if is_peer() && out.get("parallel") != "200 -" {
        peer_skips("200 parallel connections all served");
        return;
    }
    out.expect_eq("parallel", "200 -");
    out.expect_eq("guest_accepts", "200");
    if !peer_skips("200 parallel connections served within 5 s (no listen backlog of 1)") {
        out.expect("ms", "under 5 s", |_| out.millis("ms") < 5000);
    }
}

/// A host port already in use (TCP and UDP), or a host address that is not local: the exact
/// `slirp_add_hostfwd failed` error, and the helper carries on (the next add gets id 1 and
/// works).
#[test]
fn port_in_use_is_an_error_and_the_helper_carries_on() {
    let Some(out) = run(
        "port_in_use_is_an_error_and_the_helper_carries_on",
        r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
API=$T/api.sock
start_server busy opy tcp-echo-server --addr 0.0.0.0 --port 8080
start_server ubusy opy udp-echo-server --addr 127.0.0.1 --port 7000
start_guest root
start_helper -c -a "$API" "$GUEST" tap0
start_server gul gpy tcp-upload-server --addr 0.0.0.0 --port 80
result tcp_any "$(api "$(add_req tcp 0.0.0.0 8080 80)")"
result tcp_lo "$(api "$(add_req tcp 127.0.0.1 8080 80)")"
result udp_lo "$(api "$(add_req udp 127.0.0.1 7000 7000)")"
result not_local "$(api "$(add_req tcp 198.18.0.99 8081 80)")"
result alive "$(helper_alive "$HPID")"
result list "$(api "$LIST_REQ")"
result add "$(api "$(add_req tcp 127.0.0.1 8081 80)")"
result up "$(opy tcp-put 127.0.0.1 8081 --file "$T/payload" 2>&1)"
"#,
    ) else {
        return;
    };
    let failed = error("add_hostfwd: slirp_add_hostfwd failed");
    out.expect_eq("tcp_any", &failed);
    out.expect_eq("tcp_lo", &failed);
    out.expect_eq("udp_lo", &failed);
    out.expect_eq("not_local", &failed);
    out.expect_eq("alive", "yes");
    out.expect_eq("list", r#"{"entries":[]}"#);
    out.expect_eq("add", &added(1));
    let want = out.get("want").to_string();
    out.expect_eq("up", &want);
}

/// `host_port: 0` (slirpnet's extension): the reply names the ephemeral port the kernel chose,
/// `list_hostfwd` shows it, and clients reach the guest through it (TCP and UDP).
#[test]
fn host_port_0_names_an_ephemeral_port() {
    if skip_for_peer("host_port_0_names_an_ephemeral_port", "host_port 0") {
        return;
    }
    let Some(out) = run(
        "host_port_0_names_an_ephemeral_port",
        r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
API=$T/api.sock
start_guest root
start_helper -c -a "$API" "$GUEST" tap0
start_server gul gpy tcp-upload-server --addr 0.0.0.0 --port 80
start_server gue gpy udp-echo-server --addr 0.0.0.0 --port 7000
reply=$(api "$(add_req tcp 127.0.0.1 0 80)")
result tcp_reply "$reply"
port=$(printf '%s' "$reply" | sed -n 's/^{"return":{"id":1,"host_port":\([0-9]*\)}}$/\1/p')
result tcp_port "${port:-none}"
result listening "$(listening tcp "${port:-0}")"
result up "$(opy tcp-put 127.0.0.1 "${port:-0}" --file "$T/payload" 2>&1)"
result list_port "$(api "$LIST_REQ" --get entries.0.host_port)"
ureply=$(api "$(add_req udp 127.0.0.1 0 7000)")
result udp_reply "$ureply"
uport=$(printf '%s' "$ureply" | sed -n 's/^{"return":{"id":2,"host_port":\([0-9]*\)}}$/\1/p')
result udp "$(opy udp-echo 127.0.0.1 "${uport:-0}" --message eph 2>&1)"
"#,
    ) else {
        return;
    };
    out.expect("tcp_port", "a port number from the reply", |v| {
        v.parse::<u16>().is_ok_and(|p| p != 0)
    });
    let port = out.get("tcp_port").to_string();
    out.expect_eq(
        "tcp_reply",
        &format!(r#"{{"return":{{"id":1,"host_port":{port}}}}}"#),
    );
    out.expect_eq("listening", "yes");
    let want = out.get("want").to_string();
    out.expect_eq("up", &want);
    out.expect_eq("list_port", &port);
    out.expect("udp_reply", "an id and a port", |v| {
        v.starts_with(r#"{"return":{"id":2,"host_port":"#) && !v.contains(r#""host_port":0}"#)
    });
    out.expect_eq("udp", "echo:eph");
}

/// `get_stats` (slirpnet's extension): per-forward counters start at zero and move with a
/// transfer (connections, bytes each way, active back to 0 after close); the global counters
/// move too.
#[test]
fn get_stats_counters_move() {
    if skip_for_peer("get_stats_counters_move", "get_stats") {
        return;
    }
    let Some(out) = run(
        "get_stats_counters_move",
        r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
API=$T/api.sock
start_guest root
start_helper -c -a "$API" "$GUEST" tap0
start_server gul gpy tcp-upload-server --addr 0.0.0.0 --port 80
start_server gue gpy udp-echo-server --addr 0.0.0.0 --port 7000
result add_tcp "$(api "$(add_req tcp 127.0.0.1 8080 80)")"
result add_udp "$(api "$(add_req udp 127.0.0.1 7000 7000)")"
before=$(api "$STATS_REQ")
result before "$(printf '%s' "$before" | sed 's/"counters".*//')"
result frames_before "$(api "$STATS_REQ" --get return.counters.frames_in)"
result up "$(opy tcp-put 127.0.0.1 8080 --file "$T/payload" 2>&1)"
result udp "$(opy udp-echo 127.0.0.1 7000 --message hello 2>&1)"
# The close handshake with the guest may take a moment after the client saw EOF.
for i in $(seq 100); do
    [ "$(api "$STATS_REQ" --get return.forwards.0.connections_active)" = 0 ] && break
    sleep 0.02
done
f() { api "$STATS_REQ" --get "return.forwards.$1"; }
result tcp_total "$(f 0.connections_total)"
result tcp_active "$(f 0.connections_active)"
result tcp_to_guest "$(f 0.bytes_to_guest)"
result tcp_to_host "$(f 0.bytes_to_host)"
result udp_total "$(f 1.connections_total)"
result udp_to_guest "$(f 1.bytes_to_guest)"
result udp_to_host "$(f 1.bytes_to_host)"
result frames_after "$(api "$STATS_REQ" --get return.counters.frames_in)"
"#,
    ) else {
        return;
    };
    out.expect_eq(
        "before",
        concat!(
            r#"{"return":{"forwards":["#,
            r#"{"id":1,"connections_total":0,"connections_active":0,"bytes_to_guest":0,"bytes_to_host":0},"#,
            r#"{"id":2,"connections_total":0,"connections_active":0,"bytes_to_guest":0,"bytes_to_host":0}],"#
        ),
    );
    let want = out.get("want").to_string();
    out.expect_eq("up", &want);
    out.expect_eq("udp", "echo:hello");
    out.expect_eq("tcp_total", "1");
    out.expect_eq("tcp_active", "0");
    out.expect_eq("tcp_to_guest", "1048576");
    // The sink's answer: "<64 hex digits> 1048576\n".
    out.expect_eq("tcp_to_host", "73");
    out.expect_eq("udp_total", "1");
    out.expect_eq("udp_to_guest", "5");
    out.expect_eq("udp_to_host", "10");
    let before: u64 = out.get("frames_before").parse().unwrap_or(u64::MAX);
    out.expect("frames_after", "more frames in than before", |v| {
        v.parse::<u64>().is_ok_and(|n| n > before)
    });
}

/// The socket file: a stale one at the path is replaced at start, the socket is there by the
/// time the ready byte comes, and it is removed when the helper exits on SIGTERM and when the
/// exit fd hangs up.
#[test]
fn api_socket_file_lifecycle() {
    let Some(out) = run(
        "api_socket_file_lifecycle",
        r#"
setup_outer
API=$T/api.sock
# A stale socket file, as a killed helper leaves it.
"$PY" -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$API"
result stale "$([ -S "$API" ] && echo socket)"
start_guest root
start_helper -c -a "$API" "$GUEST" tap0
result at_ready "$([ -S "$API" ] && echo socket || echo missing)"
result list "$(api "$LIST_REQ")"
kill -TERM "$HPID"
wait_exit "$HPID" 5
result sigterm_file "$([ -e "$API" ] && echo present || echo gone)"

mkfifo "$T/exitfifo"
sleep infinity > "$T/exitfifo" &
WRITER=$!
start_guest root
start_helper -c -e 4 -a "$API" "$GUEST" tap0 4<"$T/exitfifo"
result list2 "$(api "$LIST_REQ")"
kill "$WRITER"
wait_exit "$HPID" 5
result exit_fd_rc "$RC"
result exit_fd_file "$([ -e "$API" ] && echo present || echo gone)"
"#,
    ) else {
        return;
    };
    out.expect_eq("stale", "socket");
    out.expect_eq("at_ready", "socket");
    out.expect_eq("list", r#"{"entries":[]}"#);
    out.expect_eq("list2", r#"{"entries":[]}"#);
    out.expect_eq("exit_fd_rc", "0");
    out.expect_eq("exit_fd_file", "gone");
    if !peer_skips("the socket file is removed on SIGTERM (slirp4netns dies by the signal)") {
        out.expect_eq("sigterm_file", "gone");
    }
}

/// The API socket file deleted while the helper runs (`rm`): it cannot notice, and carries
/// on. Traffic and forwards keep working, a client connected before the deletion is still
/// answered, new clients get ENOENT, and the exit-fd hang-up still exits 0 without a word.
/// A file someone put at the path afterwards (here a plain file; in life, the socket of a
/// helper started for the same container) is left alone at exit. The first helper runs
/// under the seccomp filter, so its exit path (a file that is gone) is covered there too.
#[test]
fn api_socket_deleted_while_running() {
    let Some(out) = run(
        "api_socket_deleted_while_running",
        &format!(
            "{}{GUEST_TCP_SERVERS}{}",
            r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
start_server dl opy tcp-download-server --addr 127.0.0.1 --port 8080 --file "$T/payload"
API=$T/api.sock
start_guest root
"#,
            r#"
cat > "$T/early.py" <<'PY'
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.02)
s.sendall(b'{"execute":"list_hostfwd"}')
s.shutdown(socket.SHUT_WR)
print(s.recv(4096).decode())
PY
run_phase() {
    local extra=$1
    mkfifo "$T/exitfifo.$extra"
    sleep infinity > "$T/exitfifo.$extra" &
    WRITER=$!
    start_helper -c -a "$API" -e 4 $2 "$GUEST" tap0 4<"$T/exitfifo.$extra"
    result "add_$extra" "$(api "$(add_req tcp 127.0.0.1 8182 82)")"
    "$PY" "$T/early.py" "$API" "$T/run/connected.$extra" "$T/run/go.$extra" > "$T/early.$extra" 2>&1 &
    EARLY=$!
    for i in $(seq 200); do [ -e "$T/run/connected.$extra" ] && break; sleep 0.025; done
    rm "$API"
    touch "$T/run/go.$extra"
    wait "$EARLY" || true
    result "early_$extra" "$(cat "$T/early.$extra")"
    result "new_client_$extra" "$(api "$LIST_REQ" 2>&1)"
    result "down_$extra" "$(gpy tcp-get 10.0.2.2 8080 2>&1)"
    result "fwd_$extra" "$(opy tcp-echo 127.0.0.1 8182 --file "$T/payload" 2>&1)"
    result "alive_$extra" "$(helper_alive "$HPID")"
    [ "$extra" = replaced ] && echo "someone else's" > "$API"
    kill "$WRITER"
    wait_exit "$HPID" 5
    result "rc_$extra" "$RC"
    result "stderr_$extra" "$(tr '\n' '|' < "$HERR")"
}
run_phase gone --enable-seccomp
run_phase replaced ""
result file_after "$(cat "$API" 2>&1)"
"#
        ),
    ) else {
        return;
    };
    let want = out.get("want").to_string();
    for phase in ["gone", "replaced"] {
        out.expect_eq(&format!("add_{phase}"), &added(1));
        out.expect_eq(
            &format!("early_{phase}"),
            &entries(&[entry(1, "tcp", "127.0.0.1", 8182, "10.0.2.100", 82)]),
        );
        out.expect_eq(&format!("new_client_{phase}"), "ERROR ENOENT");
        out.expect_eq(&format!("down_{phase}"), &want);
        out.expect_eq(&format!("fwd_{phase}"), &want);
        out.expect_eq(&format!("alive_{phase}"), "yes");
        out.expect_eq(&format!("rc_{phase}"), "0");
    }
    // slirp4netns talks on stderr, and removes whatever the path leads to at exit.
    if !peer_skips("empty stderr; a file put at the API path is left alone at exit") {
        out.expect_eq("stderr_gone", "");
        out.expect_eq("stderr_replaced", "");
        out.expect_eq("file_after", "someone else's");
    }
}

/// Error replies byte for byte over the real socket, and the requests Podman and RootlessKit
/// send, read the way each reads (Podman: one read of at most 2048 bytes; RootlessKit: to
/// EOF). A 4095-byte request is served; 4096 and 5000 bytes are `too large message`, and that
/// reply reaches the client. The helper serves on after every error.
#[test]
fn api_error_replies_and_real_clients() {
    let peer = if is_peer() { "yes" } else { "no" };
    let Some(out) = run(
        "api_error_replies_and_real_clients",
        &format!(
            "PEER={peer}\n{}",
            r##"
setup_outer
API=$T/api.sock
start_guest root
start_helper -c -a "$API" "$GUEST" tap0
start_server gecho gpy tcp-echo-server --addr 0.0.0.0 --port 80
result garbage "$(api garbage)"
result garbage_once "$(api_once garbage)"
result array "$(api '[1]')"
result no_execute "$(api '{"arguments":{}}')"
result unknown "$(api '{"execute":"nope"}')"
result big_5000 "$(api "$LIST_REQ" --pad 5000)"
result big_5000_once "$(api_once "$LIST_REQ" --pad 5000)"
result big_4096 "$(api "$LIST_REQ" --pad 4096)"
result ok_4095 "$(api "$LIST_REQ" --pad 4095)"
result no_host_port "$(api '{"execute":"add_hostfwd","arguments":{"proto":"tcp","guest_port":80}}')"
result no_id "$(api '{"execute":"remove_hostfwd","arguments":{}}')"
if [ "$PEER" != yes ]; then
    # slirp4netns crashes on this one.
    result no_proto "$(api '{"execute":"add_hostfwd","arguments":{"host_port":8080,"guest_port":80}}')"
fi
result alive "$(helper_alive "$HPID")"

# Podman (pkg/rootlessport / slirp4netns port handler), byte for byte, one read.
result podman "$(api_once '{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "0.0.0.0", "host_port": 8080, "guest_addr": "", "guest_port": 80}}')"
result podman_list "$(api_once "$LIST_REQ")"
result podman_data "$(opy tcp-session 127.0.0.1 8080 --mark "$T/run/m1" --go "$T/run/m1" 2>&1)"
# RootlessKit's slirp4netns port driver (Go json.Marshal), read to EOF.
result rk_add "$(api '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":8081,"guest_addr":"10.0.2.100","guest_port":80}}')"
result rk_data "$(opy tcp-session 127.0.0.1 8081 --mark "$T/run/m2" --go "$T/run/m2" 2>&1)"
result rk_remove "$(api '{"execute":"remove_hostfwd","arguments":{"id":2}}')"
result rk_list "$(api "$LIST_REQ")"
"##
        ),
    ) else {
        return;
    };
    out.expect_eq("garbage", &error("cannot parse JSON"));
    out.expect_eq("garbage_once", &error("cannot parse JSON"));
    out.expect_eq("array", &error("json_object() failed"));
    out.expect_eq("no_execute", &error("no execute found"));
    out.expect_eq("unknown", &error("unknown execute"));
    out.expect_eq("big_5000", &error("too large message"));
    out.expect_eq("big_5000_once", &error("too large message"));
    out.expect_eq("big_4096", &error("too large message"));
    out.expect_eq("ok_4095", r#"{"entries":[]}"#);
    out.expect_eq(
        "no_host_port",
        &error("add_hostfwd: bad arguments.host_port"),
    );
    out.expect_eq("no_id", &error("remove_hostfwd: bad arguments.id"));
    if !peer_skips("a missing proto is an error (slirp4netns crashes)") {
        out.expect_eq("no_proto", &error("add_hostfwd: bad arguments.proto"));
    }
    out.expect_eq("alive", "yes");
    out.expect_eq("podman", &added(1));
    let podman_entry = entry(1, "tcp", "0.0.0.0", 8080, "10.0.2.100", 80);
    out.expect_eq("podman_list", &entries(std::slice::from_ref(&podman_entry)));
    out.expect_eq("podman_data", "one two");
    out.expect_eq("rk_add", &added(2));
    out.expect_eq("rk_data", "one two");
    out.expect_eq("rk_remove", r#"{"return":{}}"#);
    out.expect_eq("rk_list", &entries(&[podman_entry]));
}

/// With `--enable-forward-splice`, forwarded TCP connections from host loopback are spliced
/// to a socket inside the guest's namespace (src/splice.rs) instead of crossing the TAP; by
/// default they cross it. Either way 1 MiB arrives intact each way and echoed; the guest sees
/// its own address as the peer when spliced and the gateway otherwise; a client on the remote
/// host always crosses the TAP with its own address; a guest port nobody listens on resets
/// the client at once; `get_stats` counts spliced connections and bytes like the others; the
/// helper keeps no descriptor of a finished connection; and the
/// socket helper child (spliced only) ends with the helper. Spliced also works under
/// `--enable-sandbox --enable-seccomp`, with the socket helper under its own filter.
#[test]
fn loopback_forwards_spliced_when_enabled() {
    if skip_for_peer(
        "loopback_forwards_spliced_when_enabled",
        "--enable-forward-splice",
    ) {
        return;
    }
    let Some(out) = run(
        "loopback_forwards_spliced_when_enabled",
        &format!(
            "{}{GUEST_TCP_SERVERS}{}",
            r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
API=$T/api.sock
start_guest root
"#,
            r#"
for mode in spliced confined tap; do
    case $mode in
    spliced) start_helper -c -a "$API" --enable-forward-splice "$GUEST" tap0 ;;
    confined) start_helper -c -a "$API" --enable-forward-splice --enable-sandbox --enable-seccomp "$GUEST" tap0 ;;
    tap) start_helper -c -a "$API" "$GUEST" tap0 ;;
    esac
    api "$(add_req tcp 0.0.0.0 8080 80)" >/dev/null
    api "$(add_req tcp 127.0.0.1 8081 81)" >/dev/null
    api "$(add_req tcp 127.0.0.1 8082 82)" >/dev/null
    api "$(add_req tcp 127.0.0.1 8083 83)" >/dev/null
    fds_before=$(ls "/proc/$HPID/fd" | wc -l)
    result "${mode}_up" "$(opy tcp-put 127.0.0.1 8080 --file "$T/payload" 2>&1)"
    result "${mode}_up_peer" "$(tail -n1 "$T/gul.peers" | cut -d: -f1)"
    result "${mode}_down" "$(opy tcp-get 127.0.0.1 8081 2>&1)"
    result "${mode}_down_peer" "$(tail -n1 "$T/gdl.peers" | cut -d: -f1)"
    result "${mode}_echo" "$(opy tcp-echo 127.0.0.1 8082 --file "$T/payload" 2>&1)"
    result "${mode}_remote_peer" "$(rpy tcp-put 198.18.0.1 8080 --sport 40007 --file "$T/payload" >/dev/null 2>&1; tail -n1 "$T/gul.peers")"
    t0=$(date +%s%N)
    result "${mode}_refused" "$(opy tcp-get 127.0.0.1 8083 --timeout 5 2>&1 | tail -n1)"
    result "${mode}_refused_ms" "$(( ($(date +%s%N) - t0) / 1000000 ))ms"
    sleep 0.3
    # Forward 1 carried the loopback upload (spliced or not) and the remote one (TAP).
    result "${mode}_stats" "$(api '{"execute":"get_stats"}' | "$PY" -c 'import json, sys
f = json.load(sys.stdin)["return"]["forwards"][0]
print(f["id"], f["connections_total"], f["connections_active"], f["bytes_to_guest"] >= 2 << 20, f["bytes_to_host"] > 0)')"
    result "${mode}_fds_left" "$(( $(ls "/proc/$HPID/fd" | wc -l) - fds_before ))"
    kids=$(ps -o pid= --ppid "$HPID" || true)
    result "${mode}_children" "$(echo $kids | wc -w)"
    # The socket helper's seccomp mode (2: filtered), "none" without a child.
    seccomp=none
    for kid in $kids; do seccomp=$(awk '/^Seccomp:/ {print $2}' "/proc/$kid/status"); done
    result "${mode}_child_seccomp" "$seccomp"
    kill -TERM "$HPID"
    wait "$HPID" 2>/dev/null
    sleep 0.2
    left=0
    for kid in $kids; do kill -0 "$kid" 2>/dev/null && left=$((left + 1)); done
    result "${mode}_children_after" "$left"
done
"#
        ),
    ) else {
        return;
    };
    let want = out.get("want").to_string();
    for (mode, loopback_peer, children, child_seccomp) in [
        ("spliced", "10.0.2.100", "1", "0"),
        ("confined", "10.0.2.100", "1", "2"),
        ("tap", "10.0.2.2", "0", "none"),
    ] {
        let key = |what: &str| format!("{mode}_{what}");
        out.expect_eq(&key("up"), &want);
        out.expect_eq(&key("down"), &want);
        out.expect_eq(&key("echo"), &want);
        out.expect_eq(&key("up_peer"), loopback_peer);
        out.expect_eq(&key("down_peer"), loopback_peer);
        out.expect_eq(&key("remote_peer"), "198.18.0.2:40007");
        expect_refused_promptly(&out, &format!("{mode}_"));
        out.expect_eq(&key("stats"), "1 2 0 True True");
        out.expect_eq(&key("fds_left"), "0");
        out.expect_eq(&key("children"), children);
        out.expect_eq(&key("child_seccomp"), child_seccomp);
        out.expect_eq(&key("children_after"), "0");
    }
}
