//! `--enable-seccomp`: a seccomp-BPF allow-list of exactly the system calls the running data
//! path makes, installed once start-up is over (TAP open, forwards listening, API socket
//! bound) and right before the ready byte.
//!
//! Any other system call kills the whole process (`SECCOMP_RET_KILL_PROCESS`, the process
//! ends by `SIGSYS`). The kernel records every such kill as a seccomp audit event (type 1326)
//! naming the executable, the pid and the system call number, in the audit log when auditd
//! runs and in the kernel log (`dmesg`) otherwise:
//!
//! ```text
//! audit: type=1326 audit(...): auid=... uid=1000 gid=1000 ses=... pid=4242 comm="slirpnet"
//!     exe="/usr/bin/slirpnet" sig=31 arch=c000003e syscall=83 compat=0 ip=... code=0x80000000
//! ```
//!
//! (`syscall=83` is `mkdir` on x86_64: `ausyscall 83`.) A system call made for another
//! architecture (a 32-bit `int 0x80` call, x32) kills the process the same way.
//!
//! The list was built by running the real binary under `strace -f` and under a logging
//! variant of this filter through every scenario of the namespace test suites (TCP both ways,
//! UDP, ping through ping and raw sockets, DNS, forwards over the API and `-p`, API errors,
//! every exit path); docs/security.md explains each group. Where a call's first arguments
//! decide what it can reach, they are checked too: `socket` only for IPv4/IPv6, `ioctl` only
//! for `FIONBIO`,
//! `futex` only for private wait and wake.

use std::os::raw::c_long;

use nix::errno::Errno;

use super::{SysError, os};

/// `AUDIT_ARCH_*` (linux/audit.h): the ELF machine with the 64-bit and little-endian bits.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("--enable-seccomp: the system call allow-list knows x86_64 and aarch64 only");

/// x86_64: numbers with this bit are x32 system calls, which share the architecture value.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// One allowed system call.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    pub name: &'static str,
    pub nr: c_long,
    /// When set: allowed only if the low 32 bits of argument `.0` are one of `.1`. Only used
    /// for arguments the kernel itself reads as 32-bit (`int domain`, `unsigned int cmd`), so
    /// the high half cannot change what the call does.
    pub arg: Option<(usize, &'static [u32])>,
}

const fn any(name: &'static str, nr: c_long) -> Allowed {
    Allowed {
        name,
        nr,
        arg: None,
    }
}

/// `socket` for AF_INET and AF_INET6 only: no netlink, packet or Unix sockets.
const INET_SOCKETS: Allowed = Allowed {
    name: "socket",
    nr: libc::SYS_socket,
    arg: Some((0, &[libc::AF_INET as u32, libc::AF_INET6 as u32])),
};

/// The allow-list, in groups; docs/security.md has the same groups and reasons.
pub fn allow_list() -> Vec<Allowed> {
    let mut list = vec![
        // The event loop: one epoll set over the TAP, host sockets, API clients, the exit fd
        // and the signalfd (created, with its epoll registration, after the ready byte).
        any("epoll_pwait", libc::SYS_epoll_pwait),
        any("epoll_ctl", libc::SYS_epoll_ctl),
        any("signalfd4", libc::SYS_signalfd4),
        // Frames to and from the TAP (readv/writev with the virtio-net header), the API
        // clients' requests and replies, the ready byte, the run-mode release pipe, and log
        // lines on stderr.
        any("read", libc::SYS_read),
        any("readv", libc::SYS_readv),
        any("write", libc::SYS_write),
        any("writev", libc::SYS_writev),
        // Host sockets for the guest's flows and the forwards: TCP, UDP, ping (datagram or
        // raw ICMP sockets). AF_INET and AF_INET6 only: no netlink, packet or Unix sockets.
        INET_SOCKETS,
        any("connect", libc::SYS_connect),
        any("bind", libc::SYS_bind),
        any("listen", libc::SYS_listen),
        any("accept4", libc::SYS_accept4),
        any("shutdown", libc::SYS_shutdown),
        any("setsockopt", libc::SYS_setsockopt),
        any("getsockopt", libc::SYS_getsockopt),
        any("getsockname", libc::SYS_getsockname),
        any("getpeername", libc::SYS_getpeername),
        any("sendto", libc::SYS_sendto),
        // UDP datagrams of one flow go out together with a UDP_SEGMENT control message.
        any("sendmsg", libc::SYS_sendmsg),
        any("recvfrom", libc::SYS_recvfrom),
        // Spliced forwards: a pipe per direction, bytes moved socket to pipe to socket, and
        // the socket inside the guest's namespace received from the socket helper child.
        any("pipe2", libc::SYS_pipe2),
        any("splice", libc::SYS_splice),
        any("recvmsg", libc::SYS_recvmsg),
        any("close", libc::SYS_close),
        // O_NONBLOCK / FD_CLOEXEC on accepted sockets (fcntl), FIONBIO (socket2's
        // set_nonblocking). No other ioctl: not the TAP's, not a terminal's (TIOCSTI).
        any("fcntl", libc::SYS_fcntl),
        Allowed {
            name: "ioctl",
            nr: libc::SYS_ioctl,
            arg: Some((1, &[libc::FIONBIO as u32])),
        },
        // glibc's pthread_once wakes waiters unconditionally when a one-time initialisation
        // ends (first use of some libc paths, e.g. formatting the last error before exit).
        // Private wait and wake only: no requeue, no PI futexes (the historic futex bugs).
        Allowed {
            name: "futex",
            nr: libc::SYS_futex,
            arg: Some((
                1,
                &[
                    (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as u32,
                    (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as u32,
                    (libc::FUTEX_WAIT_BITSET | libc::FUTEX_PRIVATE_FLAG) as u32,
                    (libc::FUTEX_WAIT_BITSET
                        | libc::FUTEX_PRIVATE_FLAG
                        | libc::FUTEX_CLOCK_REALTIME) as u32,
                ],
            )),
        },
        // Run mode: reaping the command when SIGCHLD arrives.
        any("wait4", libc::SYS_wait4),
        // The allocator: buffers grow and shrink with the flows.
        any("brk", libc::SYS_brk),
        any("mmap", libc::SYS_mmap),
        any("munmap", libc::SYS_munmap),
        // realloc of a buffer above the mmap threshold (128 KiB and up) moves it with mremap.
        any("mremap", libc::SYS_mremap),
        // Timers: the vDSO answers clock_gettime without a system call, except on clock
        // sources it cannot read (some virtual machines), where libc falls back to the call.
        any("clock_gettime", libc::SYS_clock_gettime),
        // --busy-poll: the CPU is yielded between polls of the epoll set.
        any("sched_yield", libc::SYS_sched_yield),
        // Exit: the API socket file is removed (unlinkat through the directory opened at
        // bind, which also works inside the sandbox) if it is still the one we bound
        // (newfstatat: someone may have replaced it), Rust's runtime takes down the main
        // thread's alternate signal stack (sigaltstack, then munmap), the process ends.
        any("newfstatat", libc::SYS_newfstatat),
        any("unlinkat", libc::SYS_unlinkat),
        any("sigaltstack", libc::SYS_sigaltstack),
        any("exit_group", libc::SYS_exit_group),
        // Made by the kernel's signal machinery rather than by the program: returning from a
        // signal handler, resuming a call interrupted by a stop (SIGSTOP, SIGCONT).
        any("rt_sigreturn", libc::SYS_rt_sigreturn),
        any("restart_syscall", libc::SYS_restart_syscall),
    ];
    // glibc uses x86_64's older entry points where aarch64 has only the *at / p* forms.
    #[cfg(target_arch = "x86_64")]
    list.extend([
        any("epoll_wait", libc::SYS_epoll_wait),
        any("gettimeofday", libc::SYS_gettimeofday),
    ]);
    list
}

/// The socket helper child's allow-list (src/sys/factory.rs), narrower still: it reads one-byte
/// requests, makes TCP sockets (IPv4 or IPv6 only) and sends them back over its socketpair.
/// It holds every capability in the container's user namespace, so what it may call matters
/// more than what the event loop may.
pub fn socket_helper_allow_list() -> Vec<Allowed> {
    vec![
        // A request: one byte (recv is recvfrom in the kernel).
        any("recvfrom", libc::SYS_recvfrom),
        INET_SOCKETS,
        // The answer: the socket (SCM_RIGHTS) or an error, then our copy of the socket closes.
        any("sendmsg", libc::SYS_sendmsg),
        any("close", libc::SYS_close),
        // Rust's debug builds check that a new OwnedFd is open (fcntl F_GETFD).
        any("fcntl", libc::SYS_fcntl),
        // Building an answer allocates.
        any("brk", libc::SYS_brk),
        any("mmap", libc::SYS_mmap),
        any("munmap", libc::SYS_munmap),
        any("exit_group", libc::SYS_exit_group),
        any("rt_sigreturn", libc::SYS_rt_sigreturn),
        any("restart_syscall", libc::SYS_restart_syscall),
    ]
}

/// BPF instruction helpers (linux/filter.h).
fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// `seccomp_data.args[i]` starts at 16 + 8 i; its low half comes first on little-endian
/// machines (both supported architectures are).
const fn offset_arg_low(index: usize) -> u32 {
    16 + 8 * index as u32
}

/// The filter program: check the architecture, then the system call number (and, for some
/// calls, one argument) against `list`; everything else gets `default`.
pub fn program(list: &[Allowed], default: u32) -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, SECCOMP_RET_ALLOW};
    let kill = libc::SECCOMP_RET_KILL_PROCESS;
    let mut prog = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, OFFSET_ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET | BPF_K, kill),
        stmt(BPF_LD | BPF_W | BPF_ABS, OFFSET_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    prog.extend([
        jump(BPF_JMP | libc::BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET | BPF_K, kill),
    ]);
    for allowed in list {
        let nr = allowed.nr as u32;
        match allowed.arg {
            None => {
                prog.push(jump(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1));
                prog.push(stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
            }
            Some((index, values)) => {
                // [ld arg] [jeq v0 .. jeq vN-1] [ret default] [ret allow]; every path of
                // the body returns, so the number need not be loaded again after it.
                let n = values.len();
                let body = 1 + n + 2;
                prog.push(jump(
                    BPF_JMP | BPF_JEQ | BPF_K,
                    nr,
                    0,
                    u8::try_from(body).expect("a short argument list"),
                ));
                prog.push(stmt(BPF_LD | BPF_W | BPF_ABS, offset_arg_low(index)));
                for (j, value) in values.iter().enumerate() {
                    let to_allow = u8::try_from(n - j).expect("a short argument list");
                    prog.push(jump(BPF_JMP | BPF_JEQ | BPF_K, *value, to_allow, 0));
                }
                prog.push(stmt(BPF_RET | BPF_K, default));
                prog.push(stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
            }
        }
    }
    prog.push(stmt(BPF_RET | BPF_K, default));
    prog
}

/// Sets no-new-privs and installs `prog` for every thread of the process (there is one).
pub fn install_program(prog: &[libc::sock_filter]) -> Result<(), SysError> {
    nix::sys::prctl::set_no_new_privs()
        .map_err(os("setting no-new-privs (PR_SET_NO_NEW_PRIVS)"))?;
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len())
            .map_err(|_| os("installing the seccomp filter")(Errno::E2BIG))?,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies the program
    // and never writes through the pointer. seccomp(2) touches no other memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &raw const fprog,
        )
    };
    match rc {
        0 => Ok(()),
        rc if rc < 0 => Err(os("installing the seccomp filter")(Errno::last())),
        // TSYNC: another thread could not be synchronised (its id is returned).
        tid => Err(SysError::Child(format!(
            "installing the seccomp filter: thread {tid} cannot take it"
        ))),
    }
}

/// `--enable-seccomp`: installs the allow-list; any other system call kills the process.
pub fn install() -> Result<(), SysError> {
    install_program(&program(&allow_list(), libc::SECCOMP_RET_KILL_PROCESS))
}

/// `--enable-seccomp`, in the socket helper child once it is in the container's namespaces.
pub fn install_for_socket_helper() -> Result<(), SysError> {
    install_program(&program(
        &socket_helper_allow_list(),
        libc::SECCOMP_RET_KILL_PROCESS,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lists_have_no_duplicates_and_the_programs_fit() {
        for list in [allow_list(), socket_helper_allow_list()] {
            let mut numbers: Vec<c_long> = list.iter().map(|a| a.nr).collect();
            numbers.sort_unstable();
            numbers.dedup();
            assert_eq!(numbers.len(), list.len());
            let prog = program(&list, libc::SECCOMP_RET_KILL_PROCESS);
            assert!(prog.len() < 255, "{} instructions", prog.len());
            assert!(!list.iter().any(|a| a.nr == libc::SYS_mkdirat
                || a.nr == libc::SYS_openat
                || a.nr == libc::SYS_execve
                || a.nr == libc::SYS_ptrace));
        }
        // The socket helper only makes sockets: it cannot bind, connect or listen with them.
        let helper = socket_helper_allow_list();
        assert!(!helper.iter().any(|a| {
            [
                libc::SYS_bind,
                libc::SYS_connect,
                libc::SYS_listen,
                libc::SYS_setsockopt,
                libc::SYS_ioctl,
                libc::SYS_write,
            ]
            .contains(&a.nr)
        }));
    }

    /// Forks a child that installs the filter, makes `call` and exits 0 if it came back;
    /// returns how the child ended.
    fn in_filtered_child(call: fn() -> i64) -> nix::sys::wait::WaitStatus {
        use nix::unistd::{ForkResult, fork};
        // Built before the fork: the child only makes system calls.
        let prog = program(&allow_list(), libc::SECCOMP_RET_KILL_PROCESS);
        // SAFETY: the child makes system calls only (no allocation, no locks) and ends with
        // _exit; the parent only waits for it.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let code = match install_program(&prog) {
                    Ok(()) => {
                        call();
                        0
                    }
                    Err(_) => 3,
                };
                super::super::exit_now(code)
            }
            ForkResult::Parent { child } => nix::sys::wait::waitpid(child, None).expect("waitpid"),
        }
    }

    #[test]
    fn a_call_outside_the_list_kills_the_process_by_sigsys() {
        use nix::sys::wait::WaitStatus;
        let status = in_filtered_child(|| {
            // SAFETY: mkdir with a valid NUL-terminated path; it never returns under the
            // filter.
            unsafe { libc::mkdir(c"/nonexistent-slirpnet-seccomp-test".as_ptr(), 0o700) as i64 }
        });
        assert!(
            matches!(
                status,
                WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
            ),
            "{status:?}"
        );
    }

    #[test]
    fn a_socket_of_another_family_kills_the_process() {
        use nix::sys::wait::WaitStatus;
        let status = in_filtered_child(|| {
            // SAFETY: socket(2) takes integers only.
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) as i64 }
        });
        assert!(
            matches!(
                status,
                WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
            ),
            "{status:?}"
        );
    }

    #[test]
    fn calls_on_the_list_still_work_under_the_filter() {
        use nix::sys::wait::WaitStatus;
        let status = in_filtered_child(|| {
            let mut buf = [0u8; 8];
            // SAFETY: read writes at most buf.len() bytes into buf (and fails on fd -1);
            // socket and close take integers only.
            unsafe {
                libc::read(-1, buf.as_mut_ptr().cast(), buf.len());
                let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                libc::close(fd);
            }
            0
        });
        assert_eq!(status, WaitStatus::Exited(status.pid().unwrap(), 0));
    }
}
