//! Resource bounds: how much a guest, or a host peer, can make slirpnet hold (issue 8), what
//! `--limit NAME=N` may change, and how often each bound was hit.
//!
//! At a bound a new flow is refused and counted (TCP: RST; UDP and ping: the datagram is
//! dropped; a forwarded connection: accepted and closed); flows already there carry on. The
//! per-flow buffer bound is different: it is the window advertised to the guest, so reaching
//! it only makes the guest wait (a zero window) until the host socket takes more.

use std::fmt;

/// One configurable bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bound {
    /// TCP flows, guest-initiated and forwarded together.
    TcpFlows,
    /// Guest-initiated TCP flows whose host connect is still in progress.
    PendingConnects,
    /// UDP flows (guest-initiated and forward clients).
    UdpFlows,
    /// ICMP echo flows: one per guest address, destination and echo identifier.
    PingFlows,
    /// TCP connections accepted on port forwards and still open (they are TCP flows too).
    ForwardConnections,
    /// API socket clients served at once.
    ApiClients,
    /// Bytes of guest data held per TCP flow while the host socket is full; also the
    /// largest window advertised to the guest.
    FlowBuffer,
}

impl Bound {
    /// Every bound, in the order `--help`, the docs and `get_stats` list them.
    pub const ALL: [Bound; 7] = [
        Bound::TcpFlows,
        Bound::PendingConnects,
        Bound::UdpFlows,
        Bound::PingFlows,
        Bound::ForwardConnections,
        Bound::ApiClients,
        Bound::FlowBuffer,
    ];

    /// The name `--limit` takes.
    pub fn name(self) -> &'static str {
        match self {
            Bound::TcpFlows => "tcp-flows",
            Bound::PendingConnects => "pending-connects",
            Bound::UdpFlows => "udp-flows",
            Bound::PingFlows => "ping-flows",
            Bound::ForwardConnections => "forward-connections",
            Bound::ApiClients => "api-clients",
            Bound::FlowBuffer => "flow-buffer",
        }
    }

    /// The `get_stats` counter of how often the bound was hit.
    pub fn counter(self) -> &'static str {
        match self {
            Bound::TcpFlows => "limit_tcp_flows",
            Bound::PendingConnects => "limit_pending_connects",
            Bound::UdpFlows => "limit_udp_flows",
            Bound::PingFlows => "limit_ping_flows",
            Bound::ForwardConnections => "limit_forward_connections",
            Bound::ApiClients => "limit_api_clients",
            Bound::FlowBuffer => "limit_flow_buffer",
        }
    }

    /// The values `--limit` accepts.
    pub fn range(self) -> (usize, usize) {
        match self {
            // At least a page, so that a scaled window (a multiple of 128 bytes) never
            // rounds to zero; at most what a window scale of 14 can advertise (RFC 7323).
            Bound::FlowBuffer => (MIN_FLOW_BUFFER, MAX_FLOW_BUFFER),
            _ => (1, MAX_COUNT),
        }
    }

    fn index(self) -> usize {
        Bound::ALL
            .iter()
            .position(|&b| b == self)
            .expect("ALL lists every bound")
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The largest count `--limit` takes: far more flows than file descriptors anyone has.
pub const MAX_COUNT: usize = 1 << 20;
pub const MIN_FLOW_BUFFER: usize = 4 << 10;
/// 65535 << 14 rounded down to a power of two: 1 GiB.
pub const MAX_FLOW_BUFFER: usize = 1 << 30;
/// The default per-flow buffer: 4 MiB keeps a 10 Gbit/s flow with a few ms of host latency
/// going.
pub const DEFAULT_FLOW_BUFFER: usize = 4 << 20;

/// Bounds on what a guest or a host peer can make us hold (ARCHITECTURE.md: bound every
/// table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub tcp_flows: usize,
    pub pending_connects: usize,
    pub udp_flows: usize,
    pub ping_flows: usize,
    pub forward_connections: usize,
    pub api_clients: usize,
    /// Bytes.
    pub flow_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tcp_flows: 4096,
            pending_connects: 256,
            udp_flows: 1024,
            ping_flows: 256,
            // Half the TCP table: host peers of a published port cannot take all of it.
            forward_connections: 2048,
            api_clients: 64,
            flow_buffer: DEFAULT_FLOW_BUFFER,
        }
    }
}

impl Limits {
    pub fn get(&self, bound: Bound) -> usize {
        match bound {
            Bound::TcpFlows => self.tcp_flows,
            Bound::PendingConnects => self.pending_connects,
            Bound::UdpFlows => self.udp_flows,
            Bound::PingFlows => self.ping_flows,
            Bound::ForwardConnections => self.forward_connections,
            Bound::ApiClients => self.api_clients,
            Bound::FlowBuffer => self.flow_buffer,
        }
    }

    fn field(&mut self, bound: Bound) -> &mut usize {
        match bound {
            Bound::TcpFlows => &mut self.tcp_flows,
            Bound::PendingConnects => &mut self.pending_connects,
            Bound::UdpFlows => &mut self.udp_flows,
            Bound::PingFlows => &mut self.ping_flows,
            Bound::ForwardConnections => &mut self.forward_connections,
            Bound::ApiClients => &mut self.api_clients,
            Bound::FlowBuffer => &mut self.flow_buffer,
        }
    }

    /// Applies one `NAME=N` of `--limit`. `N` is a decimal count; for `flow-buffer` it may
    /// end in `K`, `M` or `G` (KiB, MiB, GiB). The error is one line naming what was wrong.
    pub fn apply(&mut self, spec: &str) -> Result<(), String> {
        let Some((name, value)) = spec.split_once('=') else {
            return Err(format!("--limit expects NAME=N, got \"{spec}\""));
        };
        let Some(bound) = Bound::ALL.into_iter().find(|b| b.name() == name) else {
            let names: Vec<&str> = Bound::ALL.iter().map(|b| b.name()).collect();
            return Err(format!(
                "--limit: unknown name \"{name}\" (one of {})",
                names.join(", ")
            ));
        };
        let (min, max) = bound.range();
        let parsed = match bound {
            Bound::FlowBuffer => parse_size(value),
            _ => parse_decimal(value),
        };
        match parsed {
            Some(n) if (min..=max).contains(&n) => {
                *self.field(bound) = n;
                Ok(())
            }
            _ => Err(match bound {
                Bound::FlowBuffer => format!(
                    "--limit {name} must be a byte count from {min} to {max} \
                     (a K, M or G suffix multiplies by 1024), got \"{value}\""
                ),
                _ => format!(
                    "--limit {name} must be an integer from {min} to {max}, got \"{value}\""
                ),
            }),
        }
    }
}

/// Digits only (no sign, no spaces), like the other numeric options.
fn parse_decimal(text: &str) -> Option<usize> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_size(text: &str) -> Option<usize> {
    let (digits, unit) = match text.char_indices().last()? {
        (i, 'k' | 'K') => (&text[..i], 1 << 10),
        (i, 'm' | 'M') => (&text[..i], 1 << 20),
        (i, 'g' | 'G') => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    parse_decimal(digits)?.checked_mul(unit)
}

/// How often each bound was hit, for `get_stats`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LimitHits([u64; Bound::ALL.len()]);

impl LimitHits {
    pub fn count(&mut self, bound: Bound) {
        self.0[bound.index()] += 1;
    }

    pub fn add(&mut self, bound: Bound, n: u64) {
        self.0[bound.index()] += n;
    }

    pub fn get(&self, bound: Bound) -> u64 {
        self.0[bound.index()]
    }

    /// Every counter by its `get_stats` name.
    pub fn list(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Bound::ALL.iter().map(|&b| (b.counter(), self.get(b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_defaults_are_in_range() {
        let defaults = Limits::default();
        for bound in Bound::ALL {
            let mut limits = Limits::default();
            let (min, max) = bound.range();
            assert!((min..=max).contains(&defaults.get(bound)), "{bound}");
            limits.apply(&format!("{}={min}", bound.name())).unwrap();
            assert_eq!(limits.get(bound), min);
            limits.apply(&format!("{}={max}", bound.name())).unwrap();
            assert_eq!(limits.get(bound), max);
            assert!(bound.counter().starts_with("limit_"));
        }
    }

    #[test]
    fn apply_sets_only_the_named_bound() {
        let mut limits = Limits::default();
        limits.apply("tcp-flows=8192").unwrap();
        assert_eq!(
            limits,
            Limits {
                tcp_flows: 8192,
                ..Limits::default()
            }
        );
    }

    #[test]
    fn flow_buffer_takes_binary_suffixes() {
        let mut limits = Limits::default();
        for (text, bytes) in [
            ("64K", 64 << 10),
            ("64k", 64 << 10),
            ("8M", 8 << 20),
            ("1G", 1 << 30),
            ("65536", 65536),
        ] {
            limits.apply(&format!("flow-buffer={text}")).unwrap();
            assert_eq!(limits.flow_buffer, bytes, "{text}");
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let mut limits = Limits::default();
        let err = |spec: &str| Limits::default().apply(spec).unwrap_err();
        assert_eq!(
            err("tcp-flows"),
            "--limit expects NAME=N, got \"tcp-flows\""
        );
        assert_eq!(
            err("tcp=5"),
            "--limit: unknown name \"tcp\" (one of tcp-flows, pending-connects, udp-flows, \
             ping-flows, forward-connections, api-clients, flow-buffer)"
        );
        for bad in [
            "0",
            "-1",
            "+5",
            " 5",
            "5x",
            "",
            "1048577",
            "99999999999999999999999",
        ] {
            assert_eq!(
                err(&format!("udp-flows={bad}")),
                format!("--limit udp-flows must be an integer from 1 to 1048576, got \"{bad}\"")
            );
        }
        for bad in ["4095", "2G", "K", "1.5M", "16E", "64KB"] {
            assert!(
                err(&format!("flow-buffer={bad}")).starts_with(
                    "--limit flow-buffer must be a byte count from 4096 to 1073741824"
                ),
                "{bad}"
            );
        }
        // A refused spec changes nothing.
        let _ = limits.apply("tcp-flows=0");
        assert_eq!(limits, Limits::default());
    }

    #[test]
    fn hits_are_listed_by_counter_name() {
        let mut hits = LimitHits::default();
        hits.count(Bound::UdpFlows);
        hits.add(Bound::ApiClients, 3);
        let list: Vec<_> = hits.list().collect();
        assert_eq!(list.len(), Bound::ALL.len());
        assert!(list.contains(&("limit_udp_flows", 1)));
        assert!(list.contains(&("limit_api_clients", 3)));
        assert!(list.contains(&("limit_tcp_flows", 0)));
    }
}
