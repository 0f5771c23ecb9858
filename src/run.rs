//! Start-up in the order engines rely on: namespace and TAP first, then readiness, then the
//! event loop until the exit fd, a signal, or (run mode) the command ends.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use crate::api_server::ApiServer;
use crate::busy_poll::BusyPoll;
use crate::config::{Config, Target};
use crate::event_loop::{self, EventLoop, Exit, SystemHost};
use crate::stack::{Stack, StackConfig};
use crate::sys;

/// Runs slirpnet; returns the process exit status.
pub fn run(config: &Config) -> anyhow::Result<i32> {
    // Before any fork: a child's exit or a SIGTERM during start-up must not be lost.
    let signals = event_loop::block_signals().context("blocking signals")?;

    let (netns, userns, child) = match &config.target {
        Target::Pid(pid) => (sys::NetnsRef::Pid(*pid), config.userns_path.clone(), None),
        Target::Path(path) => (
            sys::NetnsRef::Path(path.clone()),
            config.userns_path.clone(),
            None,
        ),
        Target::Command(command) => {
            let child = sys::spawn_in_new_namespace(command)?;
            (sys::NetnsRef::Pid(child.pid()), None, Some(child))
        }
    };
    let configure = config.configure.then_some(sys::LinkConfig {
        mtu: config.mtu,
        mac: config.mac,
        address: config.net.guest,
        prefix_len: config.net.prefix_len,
        gateway: config.net.gateway,
    });
    let namespaces = (netns.clone(), userns.clone());
    let tap = sys::open_tap(&sys::TapRequest {
        netns,
        userns,
        tap_name: config.tap_name.clone(),
        configure,
        vnet_hdr: offload_wanted(),
    })?;
    sys::set_nonblocking(tap.as_fd())?;
    // Forked after the TAP (whose errors are the ones to report) and before any sandbox or
    // seccomp filter, which forbid forking.
    let forwards_possible = config.api_socket.is_some() || !config.publish.is_empty();
    let factory = (forwards_possible && config.enable_forward_splice).then(|| {
        sys::SocketFactory::spawn(
            &namespaces.0,
            namespaces.1.as_deref(),
            config.enable_seccomp,
        )
    });
    // Checksum and TSO offloads let 64 KiB TCP segments cross the TAP whatever the MTU.
    let gso = offload_wanted()
        && match sys::enable_vnet_offloads(tap.as_fd(), VNET_HDR_LEN) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "TAP offloads unavailable; carrying MTU-sized frames");
                false
            }
        };

    let dns_upstream = if config.disable_dns {
        None
    } else {
        first_nameserver(Path::new("/etc/resolv.conf")).map(|ip| std::net::SocketAddr::new(ip, 53))
    };
    let mut host =
        SystemHost::new(config.outbound_addr, config.outbound_addr6).context("creating epoll")?;
    match factory {
        Some(Ok(factory)) => host.enable_splice(factory),
        Some(Err(error)) => {
            tracing::warn!(%error, "forwards from host loopback will cross the TAP");
        }
        None => {}
    }
    let stack = Stack::new(
        host,
        StackConfig {
            net: config.net,
            mtu: config.mtu as usize,
            disable_host_loopback: config.disable_host_loopback,
            dns_upstream,
            limits: config.limits,
            gso,
            ipv6: config.enable_ipv6,
        },
        Instant::now(),
    );
    let mut stack = stack;
    for spec in &config.publish {
        stack
            .add_forward(spec.proto, spec.host, spec.guest)
            .with_context(|| format!("publishing {} port {}", spec.proto, spec.host))?;
    }
    let api = config
        .api_socket
        .as_deref()
        .map(|path| {
            ApiServer::bind(
                path,
                config.net,
                config.enable_ipv6,
                config.limits.api_clients,
            )
            .with_context(|| format!("binding the API socket {}", path.display()))
        })
        .transpose()?;
    if config.enable_sandbox {
        // Everything needing the filesystem or privileges is done: confine the process.
        if let Some(skipped) = sys::enter_sandbox().context("entering the sandbox")? {
            eprintln!("slirpnet: {skipped}");
        }
    }
    // Start-up is over: from here on only the data path's system calls are allowed.
    // The signalfd the event loop makes next, the ready byte, the run-mode release and every
    // exit path are on the list (src/sys/seccomp.rs).
    if config.enable_seccomp {
        sys::seccomp::install().context("--enable-seccomp")?;
    }
    if let Some(fd) = config.ready_fd {
        sys::write_ready_byte(fd)?;
    }
    let child_pid = child.as_ref().map(|c| nix::unistd::Pid::from_raw(c.pid()));
    if let Some(child) = child {
        child.release()?;
    }
    let event_loop = EventLoop {
        vnet_hdr: offload_wanted(),
        stack,
        api,
        tap,
        exit_fd: config.exit_fd,
        signals,
        child: child_pid,
        faults: event_loop::FaultLogs::default(),
        busy_poll: BusyPoll::new(config.busy_poll),
    };
    match event_loop.run()? {
        Exit::Requested => Ok(0),
        Exit::Child(status) => Ok(status),
    }
}

const VNET_HDR_LEN: i32 = 10;

/// TAP offloads are on unless `SLIRPNET_OFFLOAD=0` (for measuring what they bring).
fn offload_wanted() -> bool {
    std::env::var_os("SLIRPNET_OFFLOAD").is_none_or(|v| v != "0")
}

/// The first `nameserver` of a resolv.conf, whatever its address family.
pub fn first_nameserver(path: &Path) -> Option<IpAddr> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_first_nameserver(&text)
}

fn parse_first_nameserver(text: &str) -> Option<IpAddr> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != "nameserver" {
            return None;
        }
        // A scoped IPv6 address (fe80::1%eth0) keeps only the address.
        words.next()?.split('%').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_nameserver_skips_comments_and_takes_the_first() {
        let text = "# generated\nsearch example\nnameserver 127.0.0.53\nnameserver 10.1.1.1\n";
        assert_eq!(
            parse_first_nameserver(text),
            Some("127.0.0.53".parse().unwrap())
        );
    }

    #[test]
    fn first_nameserver_reads_ipv6_and_drops_the_scope() {
        assert_eq!(
            parse_first_nameserver("nameserver fe80::1%eth0\n"),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(parse_first_nameserver("options ndots:1\n"), None);
        assert_eq!(parse_first_nameserver("nameserver bogus\n"), None);
    }
}
