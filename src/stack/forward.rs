//! Port forwards: host sockets whose connections and datagrams are carried into the guest.
//!
//! The listener side lives here; each accepted TCP connection becomes an ordinary TCP flow
//! that we open towards the guest (state `SynSent`), and each UDP client becomes a UDP flow
//! answered through the forward's socket.

use std::net::{IpAddr, SocketAddr};

/// Transport of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Forward ids start at 1 and are never reused (COMPAT.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ForwardId(pub u64);

impl std::fmt::Display for ForwardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a forward is, as `list_hostfwd` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardInfo {
    pub id: ForwardId,
    pub proto: Proto,
    /// The address the listener is bound to (an ephemeral port resolved).
    pub host: SocketAddr,
    pub guest: SocketAddr,
}

/// Counters of one forward, for `get_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// TCP connections accepted, or UDP client flows started.
    pub connections_total: u64,
    pub connections_active: u64,
    pub bytes_to_guest: u64,
    pub bytes_to_host: u64,
}

pub(crate) struct Forward<S> {
    pub info: ForwardInfo,
    pub socket: S,
    pub stats: ForwardStats,
}

/// How a host client appears in the guest: a client on host loopback comes from the gateway
/// (as in slirp4netns), any other keeps its own address.
pub fn guest_visible_source(client: SocketAddr, gateway: IpAddr) -> SocketAddr {
    let loopback = match client.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    if loopback {
        SocketAddr::new(gateway, client.port())
    } else {
        match client {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None => client,
            },
            v4 => v4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_clients_come_from_the_gateway_others_keep_their_address() {
        let gateway: IpAddr = "10.0.2.2".parse().unwrap();
        let from = |s: &str| guest_visible_source(s.parse().unwrap(), gateway);
        assert_eq!(from("127.0.0.1:5000"), "10.0.2.2:5000".parse().unwrap());
        assert_eq!(from("127.1.2.3:5000"), "10.0.2.2:5000".parse().unwrap());
        assert_eq!(from("198.18.0.2:6000"), "198.18.0.2:6000".parse().unwrap());
        assert_eq!(from("[::ffff:127.0.0.1]:7"), "10.0.2.2:7".parse().unwrap());
        assert_eq!(
            from("[::ffff:198.18.0.2]:7"),
            "198.18.0.2:7".parse().unwrap()
        );
    }
}
