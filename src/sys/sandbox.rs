//! `--enable-sandbox`: after start-up, confine the process.
//!
//! 1. A new mount namespace (`unshare(CLONE_NEWNS)`; when that is refused for lack of
//!    privilege, `unshare(CLONE_NEWUSER | CLONE_NEWNS)` mapping only the current uid and gid,
//!    which needs a single-threaded process).
//! 2. `/` made private recursively, an empty read-only tmpfs mounted, `pivot_root(".", ".")`
//!    into it and the old root detached (`umount2(MNT_DETACH)`), then `chdir("/")`. Nothing is
//!    bound into the new root: slirpnet reads `/etc/resolv.conf` only at start-up and opens no
//!    file afterwards (the API socket file is removed through a directory fd opened before).
//! 3. Every capability dropped (effective, permitted, inheritable, ambient, bounding set)
//!    except `CAP_NET_BIND_SERVICE` when it was held on entry.
//! 4. `PR_SET_NO_NEW_PRIVS`.
//!
//! Steps 1 and 2 may be refused by the host (no unprivileged user namespaces, a root that is
//! not a mount point, ...): they are then skipped and [`enter_sandbox`] returns a line saying
//! what could not be done. Steps 3 and 4 failing is an error.

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{Gid, Uid, chdir, getgid, getuid, pivot_root};

use super::{SysError, os, strerror};

const CAP_NET_BIND_SERVICE: u32 = 10;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Confines the calling process (see the module documentation). `Ok(Some(line))` when the
/// filesystem part could not be done: the caller prints the line on stderr.
pub fn enter_sandbox() -> Result<Option<String>, SysError> {
    let keep_bind = effective_caps()?[0].effective & (1 << CAP_NET_BIND_SERVICE) != 0;
    let skipped = match new_root() {
        Ok(()) => None,
        Err(error) => Some(format!(
            "--enable-sandbox: {error}; the root filesystem stays visible (capabilities are still dropped and no-new-privs set)"
        )),
    };
    drop_capabilities(keep_bind)?;
    nix::sys::prctl::set_no_new_privs().map_err(os("setting no-new-privs"))?;
    Ok(skipped)
}

fn effective_caps() -> Result<[CapData; 2], SysError> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget reads `header` and writes two `CapData` records (version 3) into
    // `data`, which is exactly that large; both outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(os("reading the capabilities")(Errno::last()));
    }
    Ok(data)
}

fn drop_capabilities(keep_bind: bool) -> Result<(), SysError> {
    // Bounding set first: dropping from it needs CAP_SETPCAP, which capset removes.
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(63);
    for cap in 0..=last_cap {
        if cap == CAP_NET_BIND_SERVICE && keep_bind {
            continue;
        }
        // SAFETY: prctl with integer arguments only; PR_CAPBSET_READ/DROP touch no memory.
        let held = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        if held == 1 {
            // SAFETY: as above. Failure (no CAP_SETPCAP) leaves the bounding set as it was,
            // which only matters for exec, and no-new-privs plus empty permitted sets cover it.
            let _ = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    // SAFETY: prctl with integer arguments only; clearing the ambient set touches no memory.
    // It fails only on kernels without ambient capabilities (before 4.3), where there is
    // nothing to clear.
    let _ = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let keep = if keep_bind {
        1 << CAP_NET_BIND_SERVICE
    } else {
        0
    };
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: keep,
            permitted: keep,
            inheritable: 0,
        },
        CapData::default(),
    ];
    // SAFETY: capset reads `header` and two `CapData` records (version 3) from `data`; both
    // are that large and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(os("dropping capabilities")(Errno::last()));
    }
    Ok(())
}

/// Steps 1 and 2; an error says which step was refused and why.
fn new_root() -> Result<(), String> {
    let fail = |what: &str, errno: Errno| format!("{what}: {}", strerror(&errno));
    let (uid, gid) = (getuid(), getgid());
    match unshare(CloneFlags::CLONE_NEWNS) {
        Ok(()) => {}
        Err(Errno::EPERM) => {
            // Unprivileged: a user namespace of our own grants the right to make a mount
            // namespace. unshare(CLONE_NEWUSER) requires a single-threaded process.
            let threads = std::fs::read_dir("/proc/self/task")
                .map(|d| d.count())
                .unwrap_or(0);
            if threads != 1 {
                return Err(format!(
                    "cannot create a mount namespace: not privileged, and the process has {threads} threads (a user namespace needs one)"
                ));
            }
            unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
                .map_err(|e| fail("cannot create a user and mount namespace", e))?;
            map_ids(uid, gid)?;
        }
        Err(e) => return Err(fail("cannot create a mount namespace", e)),
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("cannot make / private", e))?;
    // Any existing directory serves as the mount point: the mount is private to our
    // namespace and becomes the root.
    let mut last = Errno::ENOENT;
    let mut mounted = None;
    for dir in ["/tmp", "/mnt", "/run", "/var/tmp", "/dev"] {
        match mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
            Some("size=4k,nr_inodes=4,mode=0555"),
        ) {
            Ok(()) => {
                mounted = Some(dir);
                break;
            }
            Err(e) => last = e,
        }
    }
    let dir = mounted.ok_or_else(|| fail("cannot mount a tmpfs", last))?;
    let undo = |what: &str, e: Errno| {
        let _ = umount2(dir, MntFlags::MNT_DETACH);
        fail(what, e)
    };
    chdir(dir).map_err(|e| undo("cannot enter the new root", e))?;
    pivot_root(".", ".").map_err(|e| {
        let _ = chdir("/");
        undo("pivot_root refused", e)
    })?;
    // The old root is now stacked on top of the new one at "/": detach it.
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("cannot detach the old root", e))?;
    chdir("/").map_err(|e| fail("cannot enter the new root", e))?;
    Ok(())
}

fn map_ids(uid: Uid, gid: Gid) -> Result<(), String> {
    let write = |path: &str, text: String| -> Result<(), String> {
        std::fs::write(path, text).map_err(|e| format!("cannot write {path}: {e}"))
    };
    // setgroups must be denied before an unprivileged process may write gid_map.
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1\n"))?;
    Ok(())
}
