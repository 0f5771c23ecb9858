//! Run mode: a child in a fresh user + network namespace that execs a command once the
//! parent has set up its TAP.

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, Pid, fork, getegid, geteuid, getpid, getppid, pipe2};

use super::child::{close_inherited_fds, decode_error, describe_status, encode_error, reap};
use super::{SysError, os, set_parent_death_signal};

/// What the child writes on the ready pipe once its namespaces exist.
const READY: u8 = b'R';
/// What the parent writes on the release pipe to let the child exec.
const GO: u8 = b'G';

/// A child waiting, in its own user and network namespace, for [`release`] to exec the
/// command. Its namespaces are reachable as `/proc/PID/ns/{user,net}` meanwhile.
///
/// Dropping it without `release` kills and reaps the child. After `release` the caller owns
/// the process: wait for it with `waitpid(pid)`.
///
/// [`release`]: NamespacedChild::release
#[derive(Debug)]
pub struct NamespacedChild {
    pid: Pid,
    release: Option<OwnedFd>,
}

impl NamespacedChild {
    /// The child's PID (in our PID namespace).
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Lets the child exec the command.
    pub fn release(mut self) -> Result<(), SysError> {
        let Some(fd) = self.release.take() else {
            return Ok(());
        };
        let op = || format!("releasing the namespaced child (pid {})", self.pid);
        loop {
            match nix::unistd::write(&fd, &[GO]) {
                Ok(1) => return Ok(()),
                Ok(_) => return Err(os(op())(Errno::EIO)),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(os(op())(e)),
            }
        }
    }
}

impl Drop for NamespacedChild {
    fn drop(&mut self) {
        if let Some(fd) = self.release.take() {
            drop(fd);
            let _ = kill(self.pid, Signal::SIGKILL);
            reap(self.pid);
        }
    }
}

/// Forks a child that `unshare`s `CLONE_NEWUSER | CLONE_NEWNET`, maps uid 0 and gid 0
/// inside to our effective uid and gid (after writing `deny` to `setgroups`), tells us it is
/// ready, and then waits for [`NamespacedChild::release`] to `execvp` `command` (on failure:
/// a message on stderr and exit status 127). The child gets `PR_SET_PDEATHSIG(SIGKILL)`:
/// it dies when the thread that called this function exits.
///
/// Works unprivileged (where unprivileged user namespaces are allowed) and as root.
pub fn spawn_in_new_namespace(command: &[OsString]) -> Result<NamespacedChild, SysError> {
    let argv = command
        .iter()
        .map(|arg| {
            CString::new(arg.as_bytes()).map_err(|_| {
                SysError::InvalidCommand(format!("argument {arg:?} contains a NUL byte"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some(program) = argv.first().cloned() else {
        return Err(SysError::InvalidCommand("no command given".to_owned()));
    };
    let uid_map = format!("0 {} 1\n", geteuid());
    let gid_map = format!("0 {} 1\n", getegid());
    let parent = getpid();
    let what = "starting a command in a new user and network namespace";
    let (ready_r, ready_w) =
        pipe2(OFlag::O_CLOEXEC).map_err(os(format!("{what}: creating a pipe")))?;
    let (release_r, release_w) =
        pipe2(OFlag::O_CLOEXEC).map_err(os(format!("{what}: creating a pipe")))?;

    // SAFETY: the child only makes system calls, formats messages (glibc's fork keeps
    // malloc usable in the child) and ends in execvp or _exit; it never returns into the
    // caller or touches locks other threads of the parent may hold.
    let fork_result = unsafe { fork() }.map_err(os(format!("{what}: forking")))?;
    let child = match fork_result {
        ForkResult::Child => {
            drop(ready_r);
            drop(release_w);
            // Close-on-exec fds of other threads (a TAP, say) would otherwise stay open in
            // this child until it execs; keep the inheritable ones for the command.
            close_inherited_fds(&[ready_w.as_raw_fd(), release_r.as_raw_fd()], true);
            child_main(
                parent, &uid_map, &gid_map, ready_w, release_r, &program, &argv,
            )
        }
        ForkResult::Parent { child } => child,
    };
    drop(ready_w);
    drop(release_r);

    let mut buf = vec![0u8; 4096];
    let n = loop {
        match nix::unistd::read(ready_r.as_fd(), &mut buf) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    match n {
        Ok(1) if buf[0] == READY => Ok(NamespacedChild {
            pid: child,
            release: Some(release_w),
        }),
        Ok(0) => {
            let status = reap(child);
            Err(SysError::ChildDied {
                what: what.to_owned(),
                how: describe_status(status),
            })
        }
        Ok(n) => {
            reap(child);
            Err(decode_error(&buf[..n]))
        }
        Err(errno) => {
            let _ = kill(child, Signal::SIGKILL);
            reap(child);
            Err(os(format!("{what}: waiting for the child"))(errno))
        }
    }
}

fn write_file(path: &str, contents: &str) -> Result<(), SysError> {
    let op = || format!("writing {:?} to {path}", contents.trim_end());
    let fd = open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(os(op()))?;
    let n = nix::unistd::write(&fd, contents.as_bytes()).map_err(os(op()))?;
    if n != contents.len() {
        return Err(os(op())(Errno::EIO));
    }
    Ok(())
}

/// The namespaces, in the child.
fn enter_new_namespaces(parent: Pid, uid_map: &str, gid_map: &str) -> Result<(), SysError> {
    set_parent_death_signal()?;
    if getppid() != parent {
        // The parent died before PR_SET_PDEATHSIG took effect.
        return Err(SysError::Child("the parent exited".to_owned()));
    }
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET)
        .map_err(os("creating a user and network namespace (unshare)"))?;
    match write_file("/proc/self/setgroups", "deny") {
        // Kernels before 3.19 have no setgroups file, and need none.
        Err(SysError::Os {
            errno: Errno::ENOENT,
            ..
        }) => {}
        other => other?,
    }
    write_file("/proc/self/uid_map", uid_map)?;
    write_file("/proc/self/gid_map", gid_map)?;
    Ok(())
}

fn child_main(
    parent: Pid,
    uid_map: &str,
    gid_map: &str,
    ready: OwnedFd,
    release: OwnedFd,
    program: &CString,
    argv: &[CString],
) -> ! {
    if let Err(err) = enter_new_namespaces(parent, uid_map, gid_map) {
        let _ = nix::unistd::write(&ready, &encode_error(&err));
        super::exit_now(1);
    }
    if nix::unistd::write(&ready, &[READY]) != Ok(1) {
        super::exit_now(1);
    }
    drop(ready);
    let mut go = [0u8; 1];
    let released = loop {
        match nix::unistd::read(release.as_fd(), &mut go) {
            Err(Errno::EINTR) => continue,
            Ok(1) => break go[0] == GO,
            _ => break false,
        }
    };
    if !released {
        super::exit_now(1);
    }
    drop(release);

    // Undo what the Rust runtime (and maybe the caller) changed for this process, as
    // std::process::Command does: SIGPIPE back to default, no blocked signals.
    // SAFETY: installing SIG_DFL involves no handler code; this process is single-threaded.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);

    let errno = match nix::unistd::execvp(program, argv) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let msg = format!(
        "slirpnet: executing {}: {}\n",
        program.to_string_lossy(),
        errno.desc()
    );
    let _ = nix::unistd::write(std::io::stderr().as_fd(), msg.as_bytes());
    super::exit_now(127)
}
