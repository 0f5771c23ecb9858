# Shell helpers for the engine tests (tests/engines.rs): rootless Podman and RootlessKit driving
# the helper under test. Appended after lib.sh, so everything there (setup_outer, AS_USER,
# helper_count, ...) is available; like lib.sh, it runs inside the test's own namespaces, so
# the engines, their containers and the helper they start reach nothing but the outer
# namespace's loopback and the test host.
#
# The engines run as $TEST_USER (entries in /etc/subuid and /etc/subgid are made by the Rust
# side, `ensure_test_user_subids`), with a fresh HOME and XDG_RUNTIME_DIR under the test's
# private /tmp and a clean environment.

# engine_user: sets EUSER_HOME, EUSER_XDG (both owned by the test user, 0700) and AS_USER.
engine_user() {
    set_test_user
    local uid gid
    uid=$(id -u "$TEST_USER")
    gid=$(id -g "$TEST_USER")
    # Short paths: Podman puts the API socket at $XDG_RUNTIME_DIR/libpod/tmp/<64 hex>.net,
    # which must stay under 108 bytes.
    EUSER_HOME="$T/h"
    EUSER_XDG="$T/x"
    mkdir -p "$EUSER_HOME/.config/containers" "$EUSER_XDG"
    chown -R "$uid:$gid" "$EUSER_HOME" "$EUSER_XDG"
    chmod 0700 "$EUSER_HOME" "$EUSER_XDG"
    # The engines execute the helper as this user: it must be readable and executable.
    "${AS_USER[@]}" test -r "$H" -a -x "$H" || die "$H is not readable and executable by $TEST_USER"
}

# as_engine_user CMD...: CMD as the test user, clean environment, its own HOME and runtime dir.
as_engine_user() {
    "${AS_USER[@]}" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME="$EUSER_HOME" XDG_RUNTIME_DIR="$EUSER_XDG" USER="$TEST_USER" LOGNAME="$TEST_USER" \
        "$@"
}

# make_busybox_rootfs DIR: a minimal root filesystem for `podman run --rootfs`: busybox (from
# the Debian busybox or busybox-static package; the shared libraries of a dynamic one are
# copied along), applet links, /etc/passwd and /etc/group, and /www/index.html for httpd. Owned
# by the test user, who is root in the container.
make_busybox_rootfs() {
    local d=$1 bb lib a
    bb=$(readlink -f "$(command -v busybox)") || die "busybox missing"
    mkdir -p "$d"/bin "$d"/etc "$d"/proc "$d"/sys "$d"/dev "$d"/tmp "$d"/run "$d"/root "$d"/www
    cp "$bb" "$d/bin/busybox"
    # A dynamic busybox needs its loader and libraries (a static one lists none).
    for lib in $(ldd "$bb" 2>/dev/null | grep -o '/[^ )]*' || true); do
        mkdir -p "$d$(dirname "$lib")"
        cp -L "$lib" "$d$lib"
    done
    for a in sh ash wget httpd sleep cat echo ls ip nc id hostname ps; do
        ln -s busybox "$d/bin/$a"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$d/etc/passwd"
    echo 'root:x:0:' > "$d/etc/group"
    echo "hello from the container" > "$d/www/index.html"
    chown -R "$(id -u "$TEST_USER"):$(id -g "$TEST_USER")" "$d"
}

# --- Podman ------------------------------------------------------------------------------------

# podman_setup: engine_user, a busybox rootfs in $ROOTFS, and the user's containers.conf and
# storage.conf: the helper under test as network_cmd_path, runc, cgroupfs, file events, vfs
# storage under HOME, and default ulimits below this machine's hard limits.
podman_setup() {
    engine_user
    RUNC=$(command -v runc) || die "runc missing"
    ROOTFS="$T/rootfs"
    make_busybox_rootfs "$ROOTFS"
    local nofile nproc
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    [ "$nofile" = unlimited ] && nofile=1048576
    [ "$nproc" = unlimited ] && nproc=4194304
    [ "$nofile" -gt 1024 ] && nofile=1024
    [ "$nproc" -gt 1000 ] && nproc=1000
    cat > "$EUSER_HOME/.config/containers/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
network_cmd_path = "$H"
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"

[engine.runtimes]
runc = ["$RUNC"]
EOF
    cat > "$EUSER_HOME/.config/containers/storage.conf" <<EOF
[storage]
driver = "vfs"
runroot = "$EUSER_XDG/containers"
graphroot = "$EUSER_HOME/storage"
EOF
    chown -R "$(id -u "$TEST_USER"):$(id -g "$TEST_USER")" "$EUSER_HOME/.config"
}

# pm ARGS...: podman as the test user (bounded: 90 s), with the flags this machine needs
# spelled out too.
pm() {
    as_engine_user timeout -k 5 90 podman --runtime "$RUNC" --cgroup-manager=cgroupfs \
        --events-backend=file "$@"
}

# helper_pids: PIDs of the running helper processes (executable $H), one per line.
helper_pids() {
    local p exe
    for p in /proc/[0-9]*; do
        exe=$(readlink "$p/exe" 2>/dev/null || true)
        # -ef as well: a helper started in an engine's own mount namespace (rootless Podman)
        # may show another path for the same file.
        [ "$exe" = "$H" ] || [ "$p/exe" -ef "$H" ] || continue
        case $(proc_state "${p#/proc/}") in
        Z | X | gone) ;;
        *) echo "${p#/proc/}" ;;
        esac
    done
}

# helper_cmdline: the argument list of the (first) running helper, space-separated, without
# the program name; empty when none runs.
helper_cmdline() {
    local pid
    pid=$(helper_pids | head -n1)
    [ -n "$pid" ] || return 0
    tr '\0' ' ' < "/proc/$pid/cmdline" | cut -d' ' -f2- | sed 's/ $//'
}

# helper_sandbox: "root=FSTYPE nnp=N capeff=HEX" of the (first) running helper: the
# filesystem type of its / and its no-new-privs and effective capabilities (--enable-sandbox).
helper_sandbox() {
    local pid root nnp cap
    pid=$(helper_pids | head -n1)
    [ -n "$pid" ] || return 0
    root=$(awk '$5 == "/" { for (i = 6; i <= NF; i++) if ($i == "-") { print $(i + 1); exit } }' "/proc/$pid/mountinfo")
    nnp=$(awk '/^NoNewPrivs:/ {print $2}' "/proc/$pid/status")
    cap=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
    echo "root=$root nnp=$nnp capeff=$cap"
}

# engine_helper_count: how many helper processes run (any mount namespace).
engine_helper_count() { helper_pids | wc -l; }

# wait_no_helper SECONDS: until no helper process runs (bounded); prints how many remain.
wait_no_helper() {
    local i
    for i in $(seq $(($1 * 20))); do
        [ "$(engine_helper_count)" = 0 ] && break
        sleep 0.05
    done
    engine_helper_count
}

# http_get URL [SECONDS]: busybox wget from this namespace, retried until SECONDS (default 10)
# pass; prints the body or "FAILED: <last error>".
http_get() {
    local url=$1 secs=${2:-10} i out
    for i in $(seq $((secs * 5))); do
        # (No -T: Debian 12's busybox wget crashes with it; timeout bounds it instead.)
        if out=$(timeout 5 busybox wget -q -O- "$url" 2>&1); then
            printf '%s\n' "$out"
            return 0
        fi
        sleep 0.2
    done
    printf 'FAILED: %s\n' "$out"
}

# --- RootlessKit -------------------------------------------------------------------------------

# rootlesskit_case NAME LOOPBACK_PORT FORWARD_PORT ROOTLESSKIT_FLAGS...: runs
#   rootlesskit --net=slirp4netns --slirp4netns-binary=$H --port-driver=slirp4netns
#     -p 127.0.0.1:FORWARD_PORT:FORWARD_PORT/tcp --copy-up=/etc FLAGS... sh CHILD
# as the test user. The child records tap0's address, the default route and what a connect
# to the host's loopback (10.0.2.2:LOOPBACK_PORT) gives, then serves $T/payload on
# FORWARD_PORT; a host client downloads it through the published port; then the child exits.
# Reports (result lines, prefixed NAME_): addr, route, probe, down (child → host loopback),
# fwd (host → child), peer (the child's view of the host client), cmdline (the helper's
# arguments), rc (rootlesskit's exit status), left (helpers still running afterwards).
rootlesskit_case() {
    local name=$1 lport=$2 fport=$3
    shift 3
    local dir="$T/rk-$name"
    mkdir -p "$dir"
    chmod 0777 "$dir"
    cat > "$dir/child.sh" <<EOF
#!/bin/sh
exec > "$dir/child.log" 2>&1
ip -o -4 addr show dev tap0 | awk '{print \$4}' > "$dir/addr"
ip -4 route show default > "$dir/route"
$PY $T/tool.py connect-probe 10.0.2.2 $lport --timeout 5 | awk '{print \$1}' > "$dir/probe"
$PY $T/tool.py tcp-get 10.0.2.2 $lport --timeout 10 > "$dir/down" 2>&1 || true
$PY $T/tool.py tcp-download-server --addr 0.0.0.0 --port $fport --file $T/payload --log "$dir/peers" --ready "$dir/listening" &
i=0
while [ ! -e "$dir/done" ] && [ \$i -lt 400 ]; do sleep 0.05; i=\$((i + 1)); done
kill \$! 2>/dev/null
exit 0
EOF
    chmod 0755 "$dir/child.sh"
    as_engine_user rootlesskit --state-dir="$dir/state" --net=slirp4netns \
        --slirp4netns-binary="$H" --port-driver=slirp4netns \
        -p "127.0.0.1:$fport:$fport/tcp" --copy-up=/etc "$@" \
        sh "$dir/child.sh" > "$dir/rootlesskit.log" 2>&1 &
    local rk=$! i
    for i in $(seq 400); do
        [ -e "$dir/listening" ] && break
        [ "$(helper_alive "$rk")" = no ] && break
        sleep 0.05
    done
    if [ ! -e "$dir/listening" ]; then
        echo "--- rootlesskit ($name):" >&2
        cat "$dir/rootlesskit.log" >&2 || true
        cat "$dir/child.log" >&2 || true
    fi
    result "${name}_cmdline" "$(helper_cmdline)"
    result "${name}_sandbox" "$(helper_sandbox)"
    # The published port: RootlessKit adds it over the helper's API once the child runs.
    for i in $(seq 200); do
        [ -n "$(ss -Hltn "sport = :$fport")" ] && break
        sleep 0.05
    done
    result "${name}_fwd" "$(opy tcp-get 127.0.0.1 "$fport" --timeout 10 2>&1 | tail -n1)"
    # At run time through RootlessKit's API (rootlessctl): the port driver sends add_hostfwd
    # and remove_hostfwd to the helper and reads each reply to EOF.
    local ctl=(as_engine_user rootlessctl --socket "$dir/state/api.sock") id
    id=$("${ctl[@]}" add-ports "127.0.0.1:$((fport + 1)):$fport/tcp" 2>"$dir/ctl.err" | tail -n1) || true
    result "${name}_ctl_add" "$id $(tr '\n' ' ' < "$dir/ctl.err")"
    result "${name}_ctl_fwd" "$(opy tcp-get 127.0.0.1 "$((fport + 1))" --timeout 10 2>&1 | tail -n1)"
    result "${name}_ctl_list" "$("${ctl[@]}" list-ports 2>&1 | tail -n +2 | awk '{print $1, $2, $3, $4, $5}' | tr '\n' ';')"
    result "${name}_ctl_remove" "$("${ctl[@]}" remove-ports "$id" 2>&1 | tr '\n' ' ')"
    result "${name}_ctl_after" "$(listening tcp "$((fport + 1))")"
    touch "$dir/done"
    wait_exit "$rk" 20
    result "${name}_rc" "$RC"
    result "${name}_addr" "$(cat "$dir/addr" 2>/dev/null)"
    result "${name}_route" "$(cat "$dir/route" 2>/dev/null)"
    result "${name}_probe" "$(cat "$dir/probe" 2>/dev/null)"
    result "${name}_down" "$(tail -n1 "$dir/down" 2>/dev/null)"
    result "${name}_peer" "$(cut -d: -f1 "$dir/peers" 2>/dev/null | sort -u | tr '\n' ' ')"
    result "${name}_left" "$(wait_no_helper 5)"
    if [ "$RC" != 0 ]; then
        echo "--- rootlesskit ($name) log:" >&2
        cat "$dir/rootlesskit.log" >&2 || true
        echo "--- child log:" >&2
        cat "$dir/child.log" >&2 || true
    fi
}
