//! Joining the target's namespaces in a forked child and bringing back the TAP fd.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sched::{CloneFlags, setns};
use nix::sys::stat::{Mode, fstat, stat};

use super::child::run_in_child;
use super::link::{LinkConfig, configure};
use super::tap::{open_tap_device, validate_tap_name};
use super::{SysError, os};

/// The network namespace to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsRef {
    /// `/proc/PID/ns/net` (and, by default, `/proc/PID/ns/user`).
    Pid(i32),
    /// A netns file such as `/run/netns/NAME` (a bind mount of an nsfs inode).
    Path(PathBuf),
}

/// What [`open_tap`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapRequest {
    pub netns: NetnsRef,
    /// The user namespace to join first. `None` with [`NetnsRef::Pid`]: the PID's
    /// `/proc/PID/ns/user`; `None` with [`NetnsRef::Path`]: join no user namespace.
    /// Joining the namespace we are already in is skipped, not an error.
    pub userns: Option<PathBuf>,
    /// The TAP device's name (1 to 15 bytes). An existing TAP of that name that nobody has
    /// open is attached to (RootlessKit pre-creates a persistent `tap0`).
    pub tap_name: String,
    /// `--configure`: bring `lo` and the TAP up, set MTU, MAC, address, default route.
    pub configure: Option<LinkConfig>,
    /// Open the TAP with `IFF_VNET_HDR` (see [`super::enable_vnet_offloads`]).
    pub vnet_hdr: bool,
}

/// A namespace file opened in the parent, with the words for error messages.
pub(super) struct NsFile {
    pub(super) fd: OwnedFd,
    /// "the network namespace of pid 1234", "the user namespace at /run/user/1000/userns"
    pub(super) desc: String,
}

fn open_ns(path: &Path, desc: String, pid: Option<i32>) -> Result<NsFile, SysError> {
    match open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => Ok(NsFile { fd, desc }),
        // /proc/PID missing: say so rather than "No such file or directory".
        Err(Errno::ENOENT) if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) => {
            Err(os(format!("joining {desc}"))(Errno::ESRCH))
        }
        Err(errno) => Err(os(format!("joining {desc}"))(errno)),
    }
}

/// Opens the network namespace and the user namespace to join (none if it is ours already).
pub(super) fn open_namespaces(
    netns_ref: &NetnsRef,
    userns_path: Option<&Path>,
) -> Result<(NsFile, Option<NsFile>), SysError> {
    // The network namespace first, so a vanished PID is reported as such.
    let netns = match netns_ref {
        NetnsRef::Pid(pid) => open_ns(
            Path::new(&format!("/proc/{pid}/ns/net")),
            format!("the network namespace of pid {pid}"),
            Some(*pid),
        )?,
        NetnsRef::Path(path) => open_ns(
            path,
            format!("the network namespace at {}", path.display()),
            None,
        )?,
    };
    let userns = match (userns_path, netns_ref) {
        (Some(path), _) => Some(open_ns(
            path,
            format!("the user namespace at {}", path.display()),
            None,
        )?),
        (None, NetnsRef::Pid(pid)) => Some(open_ns(
            Path::new(&format!("/proc/{pid}/ns/user")),
            format!("the user namespace of pid {pid}"),
            Some(*pid),
        )?),
        (None, NetnsRef::Path(_)) => None,
    };
    let userns = match userns {
        Some(ns) if is_current_userns(&ns)? => None,
        other => other,
    };
    Ok((netns, userns))
}

/// In a forked child: joins the user namespace (if any), then the network namespace.
pub(super) fn join(netns: &NsFile, userns: Option<&NsFile>) -> Result<(), SysError> {
    if let Some(ns) = userns {
        setns(&ns.fd, CloneFlags::CLONE_NEWUSER).map_err(os(format!("joining {}", ns.desc)))?;
    }
    setns(&netns.fd, CloneFlags::CLONE_NEWNET).map_err(os(format!("joining {}", netns.desc)))
}

/// Whether `ns` is the user namespace we are in already (setns would fail with EINVAL).
fn is_current_userns(ns: &NsFile) -> Result<bool, SysError> {
    let target = fstat(&ns.fd).map_err(os(format!("joining {}: fstat", ns.desc)))?;
    let current = stat("/proc/self/ns/user")
        .map_err(os("inspecting our own user namespace (/proc/self/ns/user)"))?;
    Ok(target.st_dev == current.st_dev && target.st_ino == current.st_ino)
}

/// Opens the TAP device `req.tap_name` inside the requested namespaces and returns its fd.
///
/// Forks: the child joins the user namespace (unless it is ours already), then the network
/// namespace, opens `/dev/net/tun` (`IFF_TAP | IFF_NO_PI`, plus `IFF_VNET_HDR` if asked),
/// configures the link when asked, and sends the fd back over `SCM_RIGHTS`; or it sends one
/// error line, which becomes the `Err`. The child is reaped before this returns. A TAP the
/// child created disappears again on failure (it is not persistent, and its fd is closed).
///
/// The caller's process need not be single-threaded: the forked child is, which is all
/// `setns(CLONE_NEWUSER)` requires.
pub fn open_tap(req: &TapRequest) -> Result<OwnedFd, SysError> {
    validate_tap_name(&req.tap_name)?;
    if let Some(cfg) = &req.configure {
        cfg.validate(&req.tap_name)?;
    }

    // Open the namespace files here, before forking: errors are simpler, and the child has
    // less to do.
    let (netns, userns) = open_namespaces(&req.netns, req.userns.as_deref())?;

    let tap_name = req.tap_name.as_str();
    let configure_with = req.configure;
    let vnet_hdr = req.vnet_hdr;
    let mut keep = vec![netns.fd.as_raw_fd()];
    keep.extend(userns.as_ref().map(|ns| ns.fd.as_raw_fd()));
    run_in_child(&format!("opening TAP {tap_name}"), &keep, move || {
        join(&netns, userns.as_ref())?;
        let (tap, actual_name) = open_tap_device(tap_name, vnet_hdr)?;
        if let Some(cfg) = &configure_with {
            configure(&actual_name, cfg)?;
        }
        Ok(tap)
    })
}
