# Shell library for the namespace tests (tests/namespaces.rs, tests/namespaces_forward.rs).
#
# This text is prepended to each test's body and the whole runs as
#   timeout unshare --net --mount --pid --fork --kill-child --mount-proc --propagation private bash -c ...
# so it starts as PID 1 of fresh PID, mount and network namespaces: when it exits, the kernel
# kills everything it started and the namespaces vanish with them.
#
# Network safety: the outer namespace created here has only `lo` and one veth to a "remote
# test host" namespace (198.18.0.2). Its default route points at that test host, which has no
# further links, so any stray packet dies there. The helper under test runs in this outer
# namespace, never in the machine's own one.
#
# Variables the harness sets: HELPER (binary under test), TOOL_PY (tests/common/tool.py text),
# TEST_USER (unprivileged user name, may be empty).

set -euo pipefail

log() { echo "# $*" >&2; }
die() { echo "FATAL: $*" >&2; exit 99; }
# Output lines starting with "RESULT " are what the Rust side asserts on.
result() { echo "RESULT $*"; }

# On failure, show what the helpers said.
on_exit() {
    local rc=$1 f
    if [ "$rc" -ne 0 ]; then
        for f in "$T"/helper.*.err; do
            [ -s "$f" ] || continue
            echo "--- $f:" >&2
            head -c 4000 "$f" >&2
        done
    fi
}

# --- outer namespace -------------------------------------------------------------------------

# Safety belt: we must be in a network namespace other than the machine's (PID 1 of the
# machine is not visible here, but the namespace we were started from had a "real" uplink;
# check we hold nothing but lo).
setup_outer() {
    mount --make-rprivate /
    local links
    links=$(ip -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')
    [ "$links" = "lo " ] || die "outer namespace is not empty (links: $links): refusing to run"

    # Hold the binary under test open: the private /tmp below may hide where it lives.
    local hfd
    exec {hfd}<"$HELPER"
    # Private scratch space, gone with the mount namespace.
    mount -t tmpfs -o mode=1777 slirpnet-test /tmp
    T=/tmp
    # The checkout may live under /tmp, now hidden: work from a directory that exists for
    # everything started from here (Podman chdirs to its caller's directory by path).
    cd "$T"
    trap 'on_exit $?' EXIT
    mkdir -p "$T/bin" "$T/run"
    chmod 0755 "$T/bin"
    chmod 0777 "$T/run"
    PY=/usr/bin/python3
    [ -x "$PY" ] || PY=$(command -v python3) || die "python3 missing"
    printf '%s' "$TOOL_PY" > "$T/tool.py"
    chmod 0644 "$T/tool.py"
    # Copy the helper so an unprivileged user can run it whatever the checkout's permissions.
    H="$T/bin/$(basename "$HELPER")"
    cat "/proc/self/fd/$hfd" > "$H"
    exec {hfd}<&-
    chmod 0755 "$H"

    ip link set lo up
    sysctl -q -w net.ipv4.ping_group_range="0 2147483647"

    # The remote test host: another network namespace behind a veth pair.
    unshare --net sleep infinity &
    REMOTE=$!
    wait_netns "$REMOTE"
    ip link add veth-out type veth peer name veth-rem netns "$REMOTE"
    ip addr add 198.18.0.1/24 dev veth-out
    ip link set veth-out up
    in_remote ip link set lo up
    in_remote ip addr add 198.18.0.2/24 dev veth-rem
    in_remote ip link set veth-rem up
    in_remote sysctl -q -w net.ipv4.ping_group_range="0 2147483647"
    # Everything not local goes to the test host, where it dies.
    ip route add default via 198.18.0.2 dev veth-out
    # Wait for the link (DAD does not apply to IPv4, but the veth carrier takes a moment).
    local i
    for i in $(seq 100); do
        if ip -o link show veth-out | grep -q 'state UP'; then break; fi
        sleep 0.05
    done

    # Test resolv.conf: the guest's 10.0.2.3 must lead to 127.0.0.1:53 in this namespace.
    printf 'nameserver 127.0.0.1\n' > "$T/resolv.conf"
    chmod 0644 "$T/resolv.conf"
    local target
    target=$(readlink -f /etc/resolv.conf || true)
    if [ -n "$target" ] && [ -e "$target" ]; then
        mount --bind "$T/resolv.conf" "$target"
    elif [ -n "$target" ]; then
        # Dangling symlink (e.g. to a resolver that is not running): give its directory a
        # private tmpfs holding our file.
        mkdir -p "$(dirname "$target")" 2>/dev/null || true
        mount -t tmpfs -o mode=0755 slirpnet-resolv "$(dirname "$target")"
        cp "$T/resolv.conf" "$target"
    else
        die "cannot resolve /etc/resolv.conf"
    fi
    [ "$(cat /etc/resolv.conf)" = "nameserver 127.0.0.1" ] || die "resolv.conf bind mount did not take"
}

in_remote() { nsenter -t "$REMOTE" -n "$@"; }

# setup_outer_v6 (after setup_outer): IPv6 on the veth to the test host, fd99::1 here,
# fd99::2 there, and the IPv6 default route into it, where stray packets die as IPv4 ones do.
setup_outer_v6() {
    ip -6 addr add fd99::1/64 dev veth-out nodad
    in_remote ip -6 addr add fd99::2/64 dev veth-rem nodad
    ip -6 route add default via fd99::2 dev veth-out
    ip -6 addr show dev lo | grep -q '::1/128' || die "no ::1 on lo"
}

# wait_slaac PREFIX: until the guest's tap0 holds a usable (not tentative) global address in
# PREFIX (e.g. "fd00:") and an IPv6 default route; sets GUEST6 and SLAAC_MS, or dies after 10 s.
wait_slaac() {
    local prefix=$1 t0 i
    t0=$(date +%s%N)
    GUEST6=
    for i in $(seq 400); do
        GUEST6=$(in_guest ip -o -6 addr show dev tap0 scope global -tentative |
            awk '{print $4}' | cut -d/ -f1 | grep "^$prefix" | head -n 1 || true)
        if [ -n "$GUEST6" ] && [ -n "$(in_guest ip -6 route show default)" ]; then
            SLAAC_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
            return 0
        fi
        sleep 0.025
    done
    in_guest ip -6 addr show dev tap0 >&2 || true
    die "no SLAAC address in $prefix on tap0"
}

# wait_netns PID: until PID has its own network namespace (the unshare has happened).
wait_netns() {
    local pid=$1 mine i
    mine=$(readlink /proc/self/ns/net)
    for i in $(seq 200); do
        if [ -e "/proc/$pid/ns/net" ] && [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" != "$mine" ]; then
            return 0
        fi
        sleep 0.025
    done
    die "process $pid did not get its own network namespace"
}

test_uid() {
    [ -n "${TEST_USER:-}" ] || die "TEST_USER not set"
    id -u "$TEST_USER"
}

# as_user CMD...: run as the unprivileged test user (no capabilities, no groups). An array,
# not a function, so that `"${AS_USER[@]}" cmd &` gives $! = the command's own PID.
set_test_user() {
    [ -n "${TEST_USER:-}" ] || die "TEST_USER not set"
    AS_USER=(setpriv --reuid="$(id -u "$TEST_USER")" --regid="$(id -g "$TEST_USER")" --clear-groups)
}

# --- guest namespace -------------------------------------------------------------------------

# start_guest [rootless]: a process in a new network namespace; sets GUEST and GUEST_USERNS.
#   (none)     root: unshare --net
#   userns     root-owned user namespace: unshare --user --map-root-user --net
#   rootless   as the test user: unshare --user --map-root-user --net
start_guest() {
    local mode=${1:-root}
    case "$mode" in
    root) unshare --net sleep infinity & ;;
    userns) unshare --user --map-root-user --net sleep infinity & ;;
    rootless)
        set_test_user
        "${AS_USER[@]}" unshare --user --map-root-user --net sleep infinity &
        ;;
    *) die "bad guest mode $mode" ;;
    esac
    GUEST=$!
    GUEST_MODE=$mode
    wait_netns "$GUEST"
}

# in_guest CMD...: run CMD inside the guest's network namespace (and user namespace if any).
in_guest() {
    case "$GUEST_MODE" in
    root) nsenter -t "$GUEST" -n "$@" ;;
    *) nsenter -t "$GUEST" -U --preserve-credentials -n "$@" ;;
    esac
}

gpy() { in_guest "$PY" "$T/tool.py" "$@"; }
opy() { "$PY" "$T/tool.py" "$@"; }
rpy() { in_remote "$PY" "$T/tool.py" "$@"; }

# --- the helper under test -------------------------------------------------------------------

# start_helper [--as-user] ARGS...: start the helper in the background with `-r 3` added
# (ready fd on a FIFO) and wait (bounded) for its readiness byte. Sets HPID, READY (the byte
# that came) and READY_CLOSED ("yes" when the fd was closed right after it). Fails the test
# if no "1" arrives within 10 s.
HELPER_N=0
start_helper() {
    local as=()
    if [ "${1:-}" = --as-user ]; then
        set_test_user
        as=("${AS_USER[@]}")
        shift
    fi
    HELPER_N=$((HELPER_N + 1))
    local fifo="$T/ready.$HELPER_N"
    mkfifo "$fifo"
    chmod 0666 "$fifo"
    HERR="$T/helper.$HELPER_N.err"
    HOUT="$T/helper.$HELPER_N.out"
    "${as[@]}" "$H" -r 3 "$@" 3>"$fifo" >"$HOUT" 2>"$HERR" &
    HPID=$!
    # The child opens the FIFO's write end before it execs the helper; open our end too.
    local rfd extra rc
    exec {rfd}<"$fifo"
    READY=
    IFS= read -r -N 1 -t 10 -u "$rfd" READY || true
    if [ "$READY" != 1 ]; then
        exec {rfd}<&-
        echo "--- helper stderr:" >&2
        cat "$HERR" >&2 || true
        die "helper did not report ready (got '$READY')"
    fi
    # The helper must close the fd after the byte: then we see EOF at once.
    rc=0
    IFS= read -r -N 1 -t 2 -u "$rfd" extra || rc=$?
    if [ "$rc" -eq 1 ] && [ -z "$extra" ]; then
        READY_CLOSED=yes
    elif [ "$rc" -gt 128 ]; then
        READY_CLOSED="no (still open after 2 s)"
    else
        READY_CLOSED="no (more data: '$extra')"
    fi
    exec {rfd}<&-
}

# proc_state PID: the one-letter state, or "gone".
proc_state() {
    local s
    s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || true
    echo "${s:-gone}"
}

# wait_exit PID SECONDS: wait (bounded) for a child of this shell to exit; sets RC to its
# exit status, or to "timeout" (after killing it) if it is still running, and ELAPSED to the
# seconds waited. Not in $(...): only this shell can reap its children.
wait_exit() {
    local pid=$1 secs=$2 n t0
    t0=$(date +%s%N)
    n=$((secs * 50))
    while [ "$n" -gt 0 ]; do
        case $(proc_state "$pid") in
        Z | X | gone) break ;;
        esac
        sleep 0.02
        n=$((n - 1))
    done
    if [ "$n" -eq 0 ]; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        RC=timeout
    else
        RC=0
        wait "$pid" || RC=$?
    fi
    ELAPSED=$(( ($(date +%s%N) - t0) / 1000000 ))ms
}

# helper_alive PID: yes/no
helper_alive() {
    case $(proc_state "$1") in
    Z | X | gone) echo no ;;
    *) echo yes ;;
    esac
}

# helper_rss_kib: the helper's resident memory now, in KiB
helper_rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$HPID/status"; }

# start_iperf3_server [ARGS...]: an iperf3 server on host 127.0.0.1:5201 (ARGS: e.g. -1 for
# one test only); waits until it listens.
start_iperf3_server() {
    command -v iperf3 > /dev/null || die "iperf3 missing"
    iperf3 -s -B 127.0.0.1 -p 5201 "$@" > "$T/iperf-server.log" 2>&1 &
    wait_listen 5201
}

# count of processes running the helper binary
helper_count() {
    local n=0 p exe
    for p in /proc/[0-9]*; do
        exe=$(readlink "$p/exe" 2>/dev/null || true)
        [ "$exe" = "$H" ] || continue
        case $(proc_state "${p#/proc/}") in
        Z | X | gone) ;;
        *) n=$((n + 1)) ;;
        esac
    done
    echo "$n"
}

# start_server NAME CMD...: start a server that writes "$T/NAME.ready" once listening; wait for it.
start_server() {
    local name=$1
    shift
    "$@" --ready "$T/run/$name.ready" >"$T/$name.log" 2>&1 &
    local i
    for i in $(seq 200); do
        [ -e "$T/run/$name.ready" ] && return 0
        sleep 0.025
    done
    cat "$T/$name.log" >&2 || true
    die "server $name did not start"
}

# A 1 MiB payload and its sha256.
make_payload() {
    head -c 1048576 /dev/urandom > "$T/payload"
    chmod 0644 "$T/payload"
    PAYLOAD_SHA=$(sha256sum "$T/payload" | cut -d' ' -f1)
}

# link_info DEV: "flags=<...> mtu=N mac=MAC" of a link in the guest.
link_info() {
    in_guest ip -o link show "$1" | awk '{
        for (i = 1; i <= NF; i++) {
            if ($i == "mtu") m = $(i + 1)
            if ($i ~ /^link\//) a = $(i + 1)
        }
        print "flags=" $3 " mtu=" m " mac=" a
    }'
}

# icmp_in_echos: ICMP echo requests received so far by the remote test host.
icmp_in_echos() {
    in_remote awk '/^Icmp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "InEchos") c = i; h = 1 } else print $c }' /proc/net/snmp
}

# wait_listen PORT: until something listens on TCP PORT in this namespace (bounded).
wait_listen() {
    local i
    for i in $(seq 200); do
        [ -n "$(ss -Hltn "sport = :$1")" ] && return 0
        sleep 0.025
    done
    die "nothing listens on port $1"
}

# wait_udp PORT: until a UDP socket is bound to PORT in this namespace (bounded).
wait_udp() {
    local i
    for i in $(seq 200); do
        [ -n "$(ss -Hlun "sport = :$1")" ] && return 0
        sleep 0.025
    done
    die "nothing bound to UDP port $1"
}

# listening PROTO PORT: "yes" when a TCP listener (PROTO tcp) or a bound UDP socket (udp) has
# PORT in this namespace, else "no".
listening() {
    local flag=-Hltn
    [ "$1" = udp ] && flag=-Hlun
    if [ -n "$(ss "$flag" "sport = :$2")" ]; then echo yes; else echo no; fi
}

# --- the API socket (tests/namespaces_forward.rs) ----------------------------------------------

# api REQUEST [tool.py api options]: one request on the socket $API, read to EOF (as
# RootlessKit reads); prints the reply (newlines shown as \n).
api() { opy api "$API" "$@"; }
# api_once REQUEST [options]: the same, reading once, at most 2048 bytes (as Podman reads).
api_once() { opy api "$API" "$@" --once; }
# add_req PROTO HOSTADDR HOSTPORT GUESTPORT: an add_hostfwd request (guest_addr left out).
add_req() {
    printf '{"execute":"add_hostfwd","arguments":{"proto":"%s","host_addr":"%s","host_port":%s,"guest_port":%s}}' "$@"
}
# remove_req ID: a remove_hostfwd request.
remove_req() { printf '{"execute":"remove_hostfwd","arguments":{"id":%s}}' "$1"; }
LIST_REQ='{"execute":"list_hostfwd"}'
STATS_REQ='{"execute":"get_stats"}'

# icmp6_in_echos: ICMPv6 echo requests received so far by the remote test host.
icmp6_in_echos() {
    in_remote awk '$1 == "Icmp6InEchos" { print $2 }' /proc/net/snmp6
}
