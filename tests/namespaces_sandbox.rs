//! `--enable-sandbox` end to end (root only; see tests/common/lib.sh): the helper's root is
//! an empty tmpfs, it holds no capability (or only CAP_NET_BIND_SERVICE when run as root),
//! no-new-privs is set, every data path still works, and the API socket file is removed on
//! exit. As root, as an unprivileged user, and with `--netns-type=path` + `--userns-path`.
//!
//! `SLIRPNET_TEST_BIN=/usr/bin/slirp4netns cargo test --test namespaces_sandbox` runs them
//! against slirp4netns: its sandbox keeps `/etc` and `/run` binds in the new root and leaves
//! the API socket file behind, so those checks are slirpnet's only.

mod common;

use common::{ensure_test_user, is_peer, peer_skips, run};

/// How the guest and the helper are started.
enum Mode {
    Root,
    User,
    Path,
}

/// How the helper is stopped.
enum Stop {
    Sigterm,
    ExitFd,
}

fn sandbox_case(name: &str, mode: Mode, stop: Stop) {
    if !common::require_root(name) {
        return;
    }
    let start = match mode {
        Mode::Root => {
            "start_guest root\nstart_helper -c --enable-sandbox -a \"$API\" -e 4 \"$GUEST\" tap0 4<\"$T/exitfifo\"\n"
        }
        Mode::User => {
            ensure_test_user();
            "start_guest rootless\nstart_helper --as-user -c --enable-sandbox -a \"$API\" -e 4 \"$GUEST\" tap0 4<\"$T/exitfifo\"\n"
        }
        Mode::Path => {
            r#"start_guest userns
mkdir -p "$T/netns"
touch "$T/netns/guest" "$T/netns/guest-user"
mount --bind "/proc/$GUEST/ns/net" "$T/netns/guest"
mount --bind "/proc/$GUEST/ns/user" "$T/netns/guest-user"
start_helper -c --enable-sandbox -a "$API" -e 4 --netns-type=path --userns-path="$T/netns/guest-user" "$T/netns/guest" tap0 4<"$T/exitfifo"
"#
        }
    };
    let stop = match stop {
        Stop::Sigterm => "kill -TERM \"$HPID\"\n",
        Stop::ExitFd => "kill \"$WRITER\"\n",
    };
    let body = format!(
        r#"
setup_outer
make_payload
result want "$PAYLOAD_SHA 1048576"
start_server dl opy tcp-download-server --addr 127.0.0.1 --port 8080 --file "$T/payload"
start_server ul opy tcp-upload-server --addr 127.0.0.1 --port 8081
start_server ue opy udp-echo-server --addr 127.0.0.1 --port 7777 --log "$T/udp.log"
start_server dns opy dns-server --addr 127.0.0.1 --port 53 --record test.example=198.18.0.9
API=$T/run/api.sock
mkfifo "$T/exitfifo"
sleep infinity > "$T/exitfifo" &
WRITER=$!
{start}
result root_ls "$(ls -A "/proc/$HPID/root/" 2>&1 | tr '\n' ' ' | sed 's/ $//')"
result root_fs "$(awk '$5 == "/" {{ for (i = 6; i <= NF; i++) if ($i == "-") {{ print $(i + 1); exit }} }}' "/proc/$HPID/mountinfo")"
result capeff "$(awk '/^CapEff:/ {{print $2}}' "/proc/$HPID/status")"
result capprm "$(awk '/^CapPrm:/ {{print $2}}' "/proc/$HPID/status")"
result capbnd "$(awk '/^CapBnd:/ {{print $2}}' "/proc/$HPID/status")"
result nnp "$(awk '/^NoNewPrivs:/ {{print $2}}' "/proc/$HPID/status")"
result stderr "$(tr '\n' ' ' < "$HERR")"
result down "$(gpy tcp-get 10.0.2.2 8080 2>&1)"
result up "$(gpy tcp-put 10.0.2.2 8081 --file "$T/payload" 2>&1)"
result udp "$(gpy udp-echo 10.0.2.2 7777 --message sandboxed 2>&1)"
# Only the guest's netns: a rootless guest's tools run unmapped, without a raw socket.
prc=0
nsenter -t "$GUEST" -n timeout 10 busybox ping -c 1 -W 2 198.18.0.2 > "$T/ping.out" 2>&1 || prc=$?
result ping_rc "$prc"
result ping_out "$(tail -n 3 "$T/ping.out" | tr '\n' ' ')"
result dns "$(gpy dns-query 10.0.2.3 test.example 2>&1)"
start_server web gpy tcp-download-server --addr 0.0.0.0 --port 8088 --file "$T/payload"
result add "$(api "$(add_req tcp 127.0.0.1 9080 8088)")"
result fwd "$(opy tcp-get 127.0.0.1 9080 2>&1)"
result sock_before "$(test -S "$API" && echo yes || echo no)"
{stop}wait_exit "$HPID" 5
result rc "$RC"
result sock_after "$(test -e "$API" && echo yes || echo no)"
"#
    );
    let Some(out) = run(name, &body) else {
        return;
    };
    let want = out.get("want").to_string();
    out.expect_eq("down", &want);
    out.expect_eq("up", &want);
    out.expect_eq("udp", "echo:sandboxed");
    out.expect_eq("ping_rc", "0");
    out.expect("dns", "198.18.0.9", |v| v.contains("198.18.0.9"));
    out.expect("add", "an add_hostfwd reply with an id", |v| {
        v.contains("\"id\"")
    });
    out.expect_eq("fwd", &want);
    out.expect_eq("nnp", "1");
    out.expect_eq("sock_before", "yes");
    let as_root = !matches!(mode, Mode::User);
    let caps = if as_root {
        "0000000000000400"
    } else {
        "0000000000000000"
    };
    if !is_peer() {
        out.expect_eq("capeff", caps);
        out.expect_eq("capprm", caps);
        out.expect_eq("capbnd", caps);
        out.expect_eq("root_ls", "");
        out.expect_eq("root_fs", "tmpfs");
        out.expect_eq("stderr", "");
        out.expect_eq("rc", "0");
        out.expect_eq("sock_after", "no");
    } else {
        // slirp4netns keeps /etc and /run binds, leaves the API socket file behind once
        // sandboxed (it unlinks by path), exits 143 on SIGTERM, and as an unprivileged user
        // keeps CAP_NET_BIND_SERVICE of the guest's user namespace it joined.
        peer_skips("the empty root, exact capability sets, exit status, stderr and socket removal");
        out.expect("capeff", "no more than CAP_NET_BIND_SERVICE", |v| {
            u64::from_str_radix(v, 16).is_ok_and(|c| c & !0x400 == 0)
        });
    }
}

/// As root: the full set of checks, stopped with SIGTERM.
#[test]
fn sandbox_as_root_sigterm() {
    sandbox_case("sandbox_as_root_sigterm", Mode::Root, Stop::Sigterm);
}

/// As root, stopped by the exit fd hanging up.
#[test]
fn sandbox_as_root_exit_fd() {
    sandbox_case("sandbox_as_root_exit_fd", Mode::Root, Stop::ExitFd);
}

/// As an unprivileged user (a user namespace of its own gives it the mount namespace).
#[test]
fn sandbox_as_unprivileged_user() {
    sandbox_case("sandbox_as_unprivileged_user", Mode::User, Stop::ExitFd);
}

/// As an unprivileged user, stopped with SIGTERM.
#[test]
fn sandbox_as_unprivileged_user_sigterm() {
    sandbox_case(
        "sandbox_as_unprivileged_user_sigterm",
        Mode::User,
        Stop::Sigterm,
    );
}

/// `--netns-type=path` with `--userns-path` (how Podman calls it).
#[test]
fn sandbox_netns_type_path_with_userns_path() {
    sandbox_case(
        "sandbox_netns_type_path_with_userns_path",
        Mode::Path,
        Stop::Sigterm,
    );
}

/// The caller already gave it a private mount namespace (as Podman does): the sandbox still
/// pivots into an empty root.
#[test]
fn sandbox_in_a_private_mount_namespace() {
    let name = "sandbox_in_a_private_mount_namespace";
    if !common::require_root(name) {
        return;
    }
    let Some(out) = run(
        name,
        r#"
setup_outer
start_guest root
H0=$H
H="$T/bin/private-mnt"
printf '#!/bin/sh\nexec unshare --mount --propagation private "%s" "$@"\n' "$H0" > "$H"
chmod 0755 "$H"
start_helper -c --enable-sandbox "$GUEST" tap0
sleep 0.2
result root_fs "$(awk '$5 == "/" { for (i = 6; i <= NF; i++) if ($i == "-") { print $(i + 1); exit } }' "/proc/$HPID/mountinfo")"
result root_ls "$(ls -A "/proc/$HPID/root/" 2>&1 | tr '\n' ' ' | sed 's/ $//')"
result nnp "$(awk '/^NoNewPrivs:/ {print $2}' "/proc/$HPID/status")"
prc=0
in_guest timeout 10 busybox ping -c 1 -W 2 10.0.2.2 > "$T/ping.out" 2>&1 || prc=$?
result ping_rc "$prc"
"#,
    ) else {
        return;
    };
    out.expect_eq("nnp", "1");
    out.expect_eq("ping_rc", "0");
    if !is_peer() {
        out.expect_eq("root_fs", "tmpfs");
        out.expect_eq("root_ls", "");
    }
}

/// Where the new root is refused (here: the helper is chrooted into a directory that is not a
/// mount point, so neither `mount --make-rprivate /` nor pivot_root can work), the sandbox does what it can (capabilities, no-new-privs), says on one
/// stderr line what it could not do, and serves as usual.
#[test]
fn sandbox_falls_back_when_pivot_root_is_refused() {
    let name = "sandbox_falls_back_when_pivot_root_is_refused";
    if !common::require_root(name) {
        return;
    }
    if is_peer() {
        // slirp4netns exits before the ready byte when its sandbox cannot be set up.
        peer_skips("the sandbox fallback");
        return;
    }
    let Some(out) = run(
        name,
        r#"
setup_outer
start_guest root
mkdir -p "$T/cr"
for d in usr lib lib64 bin etc proc dev; do
    [ -e "/$d" ] || continue
    if [ -L "/$d" ]; then cp -P "/$d" "$T/cr/$d"; continue; fi
    mkdir -p "$T/cr/$d"
    mount --rbind "/$d" "$T/cr/$d"
done
mkdir -p "$T/cr/tmp"
cp "$H" "$T/cr/helper"
printf '#!/bin/sh\nexec chroot "%s" /helper "$@"\n' "$T/cr" > "$T/bin/chrooted"
chmod 0755 "$T/bin/chrooted"
H="$T/bin/chrooted"
start_helper -c --enable-sandbox "$GUEST" tap0
result stderr "$(cat "$HERR")"
result lines "$(wc -l < "$HERR")"
result capeff "$(awk '/^CapEff:/ {print $2}' "/proc/$HPID/status")"
result nnp "$(awk '/^NoNewPrivs:/ {print $2}' "/proc/$HPID/status")"
prc=0
in_guest timeout 10 busybox ping -c 1 -W 2 10.0.2.2 > "$T/ping.out" 2>&1 || prc=$?
result ping_rc "$prc"
"#,
    ) else {
        return;
    };
    out.expect_eq("ping_rc", "0");
    out.expect_eq("nnp", "1");
    out.expect("stderr", "one line saying the root stays visible", |v| {
        v.starts_with("slirpnet: --enable-sandbox: ")
            && v.contains("the root filesystem stays visible")
    });
    out.expect_eq("lines", "1");
    out.expect_eq("capeff", "0000000000000400");
}
