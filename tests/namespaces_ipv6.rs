//! End-to-end IPv6 (`-6`) in network namespaces (root only): SLAAC from our router
//! advertisements, ping6, TCP and UDP to host `::1` and to a test host over IPv6, DNS through
//! the IPv6 DNS address, IPv6 port forwards both ways, `--cidr6` and `--outbound-addr6`.
//!
//! Same harness as tests/namespaces.rs; `setup_outer_v6` adds fd99::1 (and fd99::10) in the
//! outer namespace and fd99::2 on the test host, with the IPv6 default route into it, so
//! nothing leaves the test's namespaces over IPv6 either.
//!
//! `SLIRPNET_TEST_BIN=/usr/bin/slirp4netns cargo test --test namespaces_ipv6` runs what
//! slirp4netns supports (SLAAC, ping6, TCP and UDP, DNS) against it.

mod common;

use common::{ensure_test_user, is_peer, peer_skips, run};

/// A guest with `-c -6` gets an address in fd00::/64 by SLAAC and a default route via fe80::2
/// within seconds; it pings the gateway and the test host (the echo really reaches the test
/// host); TCP carries 1 MiB intact to and from host `::1` through fd00::2 and from the test
/// host at fd99::2 (which sees the outer namespace's own address as the source); UDP echoes
/// both ways.
#[test]
fn slaac_ping_tcp_and_udp_over_ipv6() {
    let Some(out) = run(
        "slaac_ping_tcp_and_udp_over_ipv6",
        r#"
setup_outer
setup_outer_v6
make_payload
result want "$PAYLOAD_SHA 1048576"
start_server dl opy tcp-download-server --addr ::1 --port 8080 --file "$T/payload"
start_server up opy tcp-upload-server --addr ::1 --port 8081
start_server rdl rpy tcp-download-server --addr fd99::2 --port 8080 --file "$T/payload" --log "$T/rdl.peers"
start_server ue opy udp-echo-server --addr ::1 --port 7777
start_server rue rpy udp-echo-server --addr fd99::2 --port 7777
start_guest root
start_helper -c -6 --mtu=65520 "$GUEST" tap0
wait_slaac fd00:
result slaac_ms "$SLAAC_MS"
result route "$(in_guest ip -6 route show default)"
rc=0
in_guest timeout 10 busybox ping -6 -c 2 -W 2 fd00::2 > "$T/ping.out" 2>&1 || rc=$?
result ping_gw "$rc $(grep -o '[0-9]* packets received' "$T/ping.out")"
before=$(icmp6_in_echos)
rc=0
in_guest timeout 10 busybox ping -6 -c 2 -W 2 fd99::2 > "$T/ping.out" 2>&1 || rc=$?
result ping_remote "$rc $(grep -o '[0-9]* packets received' "$T/ping.out")"
result remote_echos "$(( $(icmp6_in_echos) - before ))"
result down "$(gpy tcp-get fd00::2 8080 2>&1)"
result up "$(gpy tcp-put fd00::2 8081 --file "$T/payload" 2>&1)"
result rdown "$(gpy tcp-get fd99::2 8080 2>&1)"
result rdl_peer "$(tail -n1 "$T/rdl.peers" | sed 's/\]:.*/]/')"
result udp "$(gpy udp-echo fd00::2 7777 --message local6 2>&1)"
result rudp "$(gpy udp-echo fd99::2 7777 --message remote6 2>&1)"
"#,
    ) else {
        return;
    };
    out.expect("slaac_ms", "an address within 5 s", |v| {
        v.parse::<u64>().is_ok_and(|ms| ms < 5000)
    });
    out.expect_contains("route", "default via fe80::2 dev tap0");
    out.expect_eq("ping_gw", "0 2 packets received");
    if !peer_skips("ICMPv6 echo beyond the gateway") {
        out.expect_eq("ping_remote", "0 2 packets received");
        out.expect("remote_echos", "at least 2", |v| {
            v.parse::<u64>().is_ok_and(|n| n >= 2)
        });
    }
    let want = out.get("want").to_string();
    out.expect_eq("down", &want);
    out.expect_eq("up", &want);
    out.expect_eq("rdown", &want);
    out.expect_eq("rdl_peer", "[fd99::1]");
    out.expect_eq("udp", "echo:local6");
    out.expect_eq("rudp", "echo:remote6");
}

/// ICMPv6 echo larger than the MTU (the guest sends it in fragments) is answered in fragments,
/// by the gateway and through the relay; slirpnet used to send one frame larger than the MTU.
#[test]
fn ping6_larger_than_the_mtu_is_answered_in_fragments() {
    let Some(out) = run(
        "ping6_larger_than_the_mtu_is_answered_in_fragments",
        r#"
setup_outer
setup_outer_v6
start_guest root
start_helper -c -6 "$GUEST" tap0
wait_slaac fd00:
reasm() { in_guest awk '$1 == "Ip6ReasmOKs" { print $2 }' /proc/net/snmp6; }
before=$(reasm)
rc=0
in_guest timeout 10 busybox ping -6 -c 2 -W 2 -s 3000 fd00::2 > "$T/ping.out" 2>&1 || rc=$?
result gw "$rc $(grep -o '[0-9]* packets received' "$T/ping.out")"
gw_reasm=$(( $(reasm) - before ))
result gw_reassembled "$gw_reasm"
rc=0
in_guest timeout 10 busybox ping -6 -c 2 -W 2 -s 3000 fd99::2 > "$T/ping.out" 2>&1 || rc=$?
result remote "$rc $(grep -o '[0-9]* packets received' "$T/ping.out")"
result remote_reassembled "$(( $(reasm) - before - gw_reasm ))"
"#,
    ) else {
        return;
    };
    if peer_skips("fragmented ICMPv6 echo (slirp4netns answers none: it reassembles no IPv6)") {
        return;
    }
    out.expect_eq("gw", "0 2 packets received");
    out.expect("gw_reassembled", "2 replies from fragments", |v| {
        v.parse::<u64>().is_ok_and(|n| n >= 2)
    });
    out.expect_eq("remote", "0 2 packets received");
    out.expect("remote_reassembled", "2 replies from fragments", |v| {
        v.parse::<u64>().is_ok_and(|n| n >= 2)
    });
}

/// DNS to the IPv6 DNS address reaches the host's IPv4 resolver (127.0.0.1 here), over UDP
/// and TCP, with a `--cidr6` prefix; IPv6 forwards added over the API and with `-p` carry
/// 1 MiB both ways across families: an IPv6 listener to the guest's IPv6 and IPv4 addresses,
/// an IPv4 listener to its IPv6 one, a client on the test host keeping its address, and UDP;
/// `list_hostfwd` shows them.
#[test]
fn dns_cidr6_and_ipv6_forwards() {
    if is_peer() {
        eprintln!(
            "dns_cidr6_and_ipv6_forwards: skipped: slirp4netns has no --cidr6 or IPv6 forwards"
        );
        return;
    }
    let Some(out) = run(
        "dns_cidr6_and_ipv6_forwards",
        r#"
setup_outer
setup_outer_v6
make_payload
result want "$PAYLOAD_SHA 1048576"
start_server dns opy dns-server --addr 127.0.0.1 --port 53 --record test.example=198.18.0.99
API=$T/api.sock
start_guest root
start_helper -c -6 --cidr6=fd12:3456:789a:1::/64 -a "$API" -p "[::1]:8090:81" "$GUEST" tap0
wait_slaac fd12:3456:789a:1:
result guest_in_prefix yes
result dns_udp "$(gpy dns-query fd12:3456:789a:1::3 test.example 2>&1)"
result dns_tcp "$(gpy dns-query fd12:3456:789a:1::3 test.example --tcp 2>&1)"
start_server gul6 gpy tcp-upload-server --addr :: --port 80 --log "$T/gul6.peers"
start_server gul4 gpy tcp-upload-server --addr 0.0.0.0 --port 81 --log "$T/gul4.peers"
start_server gue6 gpy udp-echo-server --addr :: --port 7000 --log "$T/gue6.peers"
add() {
    printf '{"execute":"add_hostfwd","arguments":{"proto":"%s","host_addr":"%s","host_port":%s,"guest_addr":"%s","guest_port":%s}}' "$@"
}
result add_6to6 "$(api "$(add tcp :: 8091 "$GUEST6" 80)")"
result add_6to4 "$(api "$(add tcp ::1 8092 "" 81)")"
result add_4to6 "$(api "$(add tcp 127.0.0.1 8093 "$GUEST6" 80)")"
result add_udp6 "$(api "$(add udp ::1 7000 "$GUEST6" 7000)")"
result p_up "$(opy tcp-put ::1 8090 --file "$T/payload" 2>&1)"
result p_peer "$(tail -n1 "$T/gul4.peers" | cut -d: -f1)"
result lo6_up "$(opy tcp-put ::1 8091 --file "$T/payload" 2>&1)"
result lo6_peer "$(tail -n1 "$T/gul6.peers" | sed 's/\]:.*/]/')"
result rem6_up "$(rpy tcp-put fd99::1 8091 --sport 40005 --file "$T/payload" 2>&1)"
result rem6_peer "$(tail -n1 "$T/gul6.peers")"
result v6to4_up "$(opy tcp-put ::1 8092 --file "$T/payload" 2>&1)"
result v6to4_peer "$(tail -n1 "$T/gul4.peers" | cut -d: -f1)"
result v4to6_up "$(opy tcp-put 127.0.0.1 8093 --file "$T/payload" 2>&1)"
result v4to6_peer "$(tail -n1 "$T/gul6.peers" | sed 's/\]:.*/]/')"
result udp6 "$(opy udp-echo ::1 7000 --message fwd6 2>&1)"
result udp6_peer "$(tail -n1 "$T/gue6.peers" | sed 's/\]:.*/]/')"
result list "$(api "$LIST_REQ")"
result guest6 "$GUEST6"
"#,
    ) else {
        return;
    };
    out.expect_eq("dns_udp", "198.18.0.99");
    out.expect_eq("dns_tcp", "198.18.0.99");
    let want = out.get("want").to_string();
    let gateway = "[fd12:3456:789a:1::2]";
    out.expect_eq("add_6to6", r#"{"return":{"id":2}}"#);
    out.expect_eq("add_6to4", r#"{"return":{"id":3}}"#);
    out.expect_eq("add_4to6", r#"{"return":{"id":4}}"#);
    out.expect_eq("add_udp6", r#"{"return":{"id":5}}"#);
    out.expect_eq("p_up", &want);
    out.expect_eq("p_peer", "10.0.2.2");
    out.expect_eq("lo6_up", &want);
    out.expect_eq("lo6_peer", gateway);
    out.expect_eq("rem6_up", &want);
    out.expect_eq("rem6_peer", "[fd99::2]:40005");
    out.expect_eq("v6to4_up", &want);
    out.expect_eq("v6to4_peer", "10.0.2.2");
    out.expect_eq("v4to6_up", &want);
    out.expect_eq("v4to6_peer", gateway);
    out.expect_eq("udp6", "echo:fwd6");
    out.expect_eq("udp6_peer", gateway);
    let guest6 = out.get("guest6").to_string();
    let entry = |id: u32, proto: &str, host: &str, port: u16, guest: &str, guest_port: u16| {
        format!(
            r#"{{"id":{id},"proto":"{proto}","host_addr":"{host}","host_port":{port},"guest_addr":"{guest}","guest_port":{guest_port}}}"#
        )
    };
    let list = [
        entry(1, "tcp", "::1", 8090, "10.0.2.100", 81),
        entry(2, "tcp", "::", 8091, &guest6, 80),
        entry(3, "tcp", "::1", 8092, "10.0.2.100", 81),
        entry(4, "tcp", "127.0.0.1", 8093, &guest6, 80),
        entry(5, "udp", "::1", 7000, &guest6, 7000),
    ];
    out.expect_eq("list", &format!(r#"{{"entries":[{}]}}"#, list.join(",")));
}

/// Without `-6` IPv6 stays off: no address appears, and an IPv6 forward is refused with an
/// error saying why while the helper carries on.
#[test]
fn ipv6_off_means_no_slaac_and_a_clear_forward_error() {
    if is_peer() {
        eprintln!(
            "ipv6_off_means_no_slaac_and_a_clear_forward_error: skipped: slirpnet's error text"
        );
        return;
    }
    let Some(out) = run(
        "ipv6_off_means_no_slaac_and_a_clear_forward_error",
        r#"
setup_outer
API=$T/api.sock
start_guest root
start_helper -c -a "$API" "$GUEST" tap0
sleep 3
result global6 "$(in_guest ip -o -6 addr show dev tap0 scope global | wc -l)"
result add6 "$(api "$(add_req tcp ::1 8080 80)")"
result add4 "$(api "$(add_req tcp 127.0.0.1 8080 80)")"
"#,
    ) else {
        return;
    };
    out.expect_eq("global6", "0");
    out.expect_eq(
        "add6",
        r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_addr: IPv6 needs --enable-ipv6"}}"#,
    );
    out.expect_eq("add4", r#"{"return":{"id":1}}"#);
}

/// Rootless, as Podman runs it: an unprivileged user's namespace and helper. SLAAC works,
/// `--outbound-addr6` picks the source the test host sees, ping6 goes through an unprivileged
/// ICMPv6 socket, an unreachable IPv6 host fails the connect with EHOSTUNREACH, and with
/// `--disable-host-loopback` the gateway no longer reaches host `::1`.
#[test]
fn rootless_ipv6_with_outbound_addr6_and_disabled_loopback() {
    ensure_test_user();
    let Some(out) = run(
        "rootless_ipv6_with_outbound_addr6_and_disabled_loopback",
        r#"
setup_outer
setup_outer_v6
# A second source address for --outbound-addr6.
ip -6 addr add fd99::10/64 dev veth-out nodad
make_payload
result want "$PAYLOAD_SHA 1048576"
start_server rdl rpy tcp-download-server --addr fd99::2 --port 8080 --file "$T/payload" --log "$T/rdl.peers"
start_server dl opy tcp-download-server --addr ::1 --port 8080 --file "$T/payload"
start_guest rootless
start_helper --as-user -c -6 --outbound-addr6=fd99::10 --disable-host-loopback "$GUEST" tap0
wait_slaac fd00:
result rdown "$(gpy tcp-get fd99::2 8080 2>&1)"
result rdl_peer "$(tail -n1 "$T/rdl.peers" | sed 's/\]:.*/]/')"
rc=0
# As the namespace's root (not in_guest's preserved credentials, which lose CAP_NET_RAW on
# exec): busybox ping needs a raw socket.
nsenter -t "$GUEST" -U -n timeout 10 busybox ping -6 -c 1 -W 2 fd99::2 > "$T/ping.out" 2>&1 || rc=$?
result ping_remote "$rc $(grep -o '[0-9]* packets received' "$T/ping.out")"
result unreachable "$(gpy connect-probe fd99::77 80 --timeout 15 2>&1 | awk '{print $1}')"
result loopback "$(gpy connect-probe fd00::2 8080 --timeout 5 2>&1 | awk '{print $1}')"
"#,
    ) else {
        return;
    };
    let want = out.get("want").to_string();
    out.expect_eq("rdown", &want);
    if !peer_skips("--outbound-addr6") {
        out.expect_eq("rdl_peer", "[fd99::10]");
    }
    if !peer_skips("ICMPv6 echo beyond the gateway") {
        out.expect_eq("ping_remote", "0 1 packets received");
    }
    if !peer_skips("EHOSTUNREACH for an unreachable IPv6 host") {
        out.expect_eq("unreachable", "EHOSTUNREACH");
    }
    out.expect_one_of("loopback", &["ENETUNREACH", "ECONNREFUSED"]);
}

/// At MTU 1280 (IPv6's minimum), UDP datagrams larger than the link cross in IPv6 fragments
/// both ways: a 1235-byte reply (its 1230-byte request fits) and a 3000-byte datagram with its
/// reply. We reassemble the guest's fragments; the guest's kernel reassembles ours.
#[test]
fn udp_datagrams_larger_than_the_mtu_over_ipv6() {
    if is_peer() {
        eprintln!("udp_datagrams_larger_than_the_mtu_over_ipv6: skipped: slirpnet's fragmentation");
        return;
    }
    let Some(out) = run(
        "udp_datagrams_larger_than_the_mtu_over_ipv6",
        r#"
setup_outer
start_server ue opy udp-echo-server --addr ::1 --port 7777 --log "$T/udp6.log"
start_guest root
start_helper -c -6 --mtu=1280 "$GUEST" tap0
wait_slaac fd00:
# 1230 bytes + 48 of headers fit in 1280; the 1235-byte reply does not.
msg=$(head -c 1230 /dev/zero | tr '\0' 'y')
reply=$(gpy udp-echo fd00::2 7777 --message "$msg" 2>&1)
result reply_len "${#reply}"
result reply_head "${reply:0:8}"
result reassembled "$(in_guest awk '$1 == "Ip6ReasmOKs" {print $2}' /proc/net/snmp6)"
big=$(head -c 3000 /dev/zero | tr '\0' 'z')
big_reply=$(gpy udp-echo fd00::2 7777 --message "$big" 2>&1)
result big_reply_len "${#big_reply}"
result host_got "$(awk '{print $2}' "$T/udp6.log" | sort -un | tr '\n' ' ')"
result fragmented "$(in_guest awk '$1 == "Ip6FragCreates" {print $2}' /proc/net/snmp6)"
"#,
    ) else {
        return;
    };
    out.expect_eq("reassembled", "1");
    out.expect_eq("host_got", "1230 3000 ");
    out.expect_eq("big_reply_len", "3005");
    out.expect("fragmented", "the guest sent fragments", |v| {
        v.parse::<u64>().is_ok_and(|n| n >= 3)
    });
    out.expect_eq("reply_len", "1235");
    out.expect_eq("reply_head", "echo:yyy");
}

/// `--enable-forward-splice` over IPv6: forwards from `[::1]` to the guest's IPv6 address and
/// from `127.0.0.1` to it carry 1 MiB intact, seen by the guest from its own IPv6 address (the
/// socket is made in the namespace); a forward from `[::1]` to the guest's IPv4 address is
/// spliced too (seen from 10.0.2.100).
#[test]
fn spliced_forwards_over_ipv6() {
    if is_peer() {
        eprintln!("spliced_forwards_over_ipv6: skipped: slirp4netns has no spliced forwards");
        return;
    }
    let Some(out) = run(
        "spliced_forwards_over_ipv6",
        r#"
setup_outer
setup_outer_v6
make_payload
result want "$PAYLOAD_SHA 1048576"
API=$T/api.sock
start_guest root
start_helper -c -6 -a "$API" --enable-forward-splice "$GUEST" tap0
wait_slaac fd00:
start_server gul6 gpy tcp-upload-server --addr :: --port 80 --log "$T/gul6.peers"
start_server gul4 gpy tcp-upload-server --addr 0.0.0.0 --port 81 --log "$T/gul4.peers"
add() {
    printf '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"%s","host_port":%s,"guest_addr":"%s","guest_port":%s}}' "$@"
}
api "$(add ::1 8091 "$GUEST6" 80)" >/dev/null
api "$(add 127.0.0.1 8093 "$GUEST6" 80)" >/dev/null
api "$(add ::1 8092 "" 81)" >/dev/null
result guest6 "[$GUEST6]"
result lo6_up "$(opy tcp-put ::1 8091 --file "$T/payload" 2>&1)"
result lo6_peer "$(tail -n1 "$T/gul6.peers" | sed 's/\]:.*/]/')"
result v4to6_up "$(opy tcp-put 127.0.0.1 8093 --file "$T/payload" 2>&1)"
result v4to6_peer "$(tail -n1 "$T/gul6.peers" | sed 's/\]:.*/]/')"
result v6to4_up "$(opy tcp-put ::1 8092 --file "$T/payload" 2>&1)"
result v6to4_peer "$(tail -n1 "$T/gul4.peers" | cut -d: -f1)"
"#,
    ) else {
        return;
    };
    let want = out.get("want").to_string();
    let guest6 = out.get("guest6").to_string();
    out.expect_eq("lo6_up", &want);
    out.expect_eq("lo6_peer", &guest6);
    out.expect_eq("v4to6_up", &want);
    out.expect_eq("v4to6_peer", &guest6);
    out.expect_eq("v6to4_up", &want);
    out.expect_eq("v6to4_peer", "10.0.2.100");
}
