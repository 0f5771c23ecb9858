//! What is measured and how results are stored (JSON) and summarised.

use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HelperKind {
    Slirpnet,
    Slirp4netns,
    Pasta,
    /// slirpnet with `--enable-forward-splice`: measured in the forward modes only, the one
    /// place the option changes anything.
    SlirpnetSplice,
    /// No user-mode helper: a veth pair between the namespace and the suite's namespace, the
    /// kernel's own path (the ceiling the helpers are measured against).
    Kernel,
}

impl HelperKind {
    pub const ALL: [HelperKind; 5] = [
        Self::Slirpnet,
        Self::Slirp4netns,
        Self::Pasta,
        Self::SlirpnetSplice,
        Self::Kernel,
    ];

    /// The name on the command line (`--helpers`) and in the JSON results.
    pub fn name(self) -> &'static str {
        match self {
            Self::Slirpnet => "slirpnet",
            Self::Slirp4netns => "slirp4netns",
            Self::Pasta => "pasta",
            Self::SlirpnetSplice => "slirpnet-splice",
            Self::Kernel => "kernel",
        }
    }

    /// The name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Kernel => "kernel (veth)",
            Self::SlirpnetSplice => "slirpnet (spliced)",
            other => other.name(),
        }
    }

    /// Whether there is a helper process (start-up time, CPU, RSS): not for the kernel.
    pub fn has_process(self) -> bool {
        self != Self::Kernel
    }

    /// Whether the helper is measured in `mode` (the others leave its cells empty).
    pub fn measures(self, mode: Mode) -> bool {
        self != Self::SlirpnetSplice || mode.forwards()
    }

    /// slirpnet's own binary, whatever its options.
    pub fn is_slirpnet(self) -> bool {
        matches!(self, Self::Slirpnet | Self::SlirpnetSplice)
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.name() == s)
    }

    pub fn colour(self) -> &'static str {
        match self {
            Self::Slirpnet => "#e66101",
            Self::Slirp4netns => "#5e3c99",
            Self::Pasta => "#1b9e77",
            Self::SlirpnetSplice => "#fdb863",
            Self::Kernel => "#808080",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// iperf3 client in the namespace, server on host loopback via the gateway.
    TcpNsHost,
    /// The same with `-R`: data flows host → namespace.
    TcpHostNs,
    /// iperf3 client in the namespace, server on host `::1` via the IPv6 gateway.
    Tcp6NsHost,
    /// The same with `-R`: data flows host → namespace over IPv6.
    Tcp6HostNs,
    /// Host client → 127.0.0.1:PORT forwarded to the iperf3 server in the namespace.
    TcpFwdIn,
    /// The same with `-R`: data flows namespace → host through the forward.
    TcpFwdOut,
    /// UDP namespace → host at a fixed offered rate.
    UdpNsHost,
    /// 1-byte request/response round trips on one connection.
    TcpRr,
    /// connect + 1-byte request/response + close.
    TcpCrr,
}

/// Offered rate of the UDP mode, and its datagram size.
pub const UDP_RATE: &str = "1G";
pub const UDP_LEN: u32 = 1400;

impl Mode {
    pub const ALL: [Mode; 9] = [
        Self::TcpNsHost,
        Self::TcpHostNs,
        Self::Tcp6NsHost,
        Self::Tcp6HostNs,
        Self::TcpFwdIn,
        Self::TcpFwdOut,
        Self::UdpNsHost,
        Self::TcpRr,
        Self::TcpCrr,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::TcpNsHost => "tcp-ns-host",
            Self::TcpHostNs => "tcp-host-ns",
            Self::Tcp6NsHost => "tcp6-ns-host",
            Self::Tcp6HostNs => "tcp6-host-ns",
            Self::TcpFwdIn => "tcp-fwd-in",
            Self::TcpFwdOut => "tcp-fwd-out",
            Self::UdpNsHost => "udp-ns-host",
            Self::TcpRr => "tcp-rr",
            Self::TcpCrr => "tcp-crr",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::TcpNsHost => "TCP ns→host",
            Self::TcpHostNs => "TCP host→ns",
            Self::Tcp6NsHost => "TCP ns→host (IPv6)",
            Self::Tcp6HostNs => "TCP host→ns (IPv6)",
            Self::TcpFwdIn => "TCP fwd host→ns",
            Self::TcpFwdOut => "TCP fwd ns→host",
            Self::UdpNsHost => "UDP ns→host (1 Gbit/s offered)",
            Self::TcpRr => "TCP request/response",
            Self::TcpCrr => "TCP connect/request/close",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Self::TcpRr => "trans/s",
            Self::TcpCrr => "conn/s",
            _ => "Gbit/s",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    pub fn forwards(self) -> bool {
        matches!(self, Self::TcpFwdIn | Self::TcpFwdOut)
    }

    /// Measured over IPv6: the helper is started with `-6` (slirp4netns, slirpnet) and the
    /// namespace must have an IPv6 address and default route first.
    pub fn ipv6(self) -> bool {
        matches!(self, Self::Tcp6NsHost | Self::Tcp6HostNs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// The helper did not start, or the measurement broke.
    Failed,
    /// The helper started but cannot do this mode (e.g. no API for forwards).
    Unsupported,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Unsupported => "unsupported",
        }
    }
    fn from_name(s: &str) -> Self {
        match s {
            "ok" => Self::Ok,
            "unsupported" => Self::Unsupported,
            _ => Self::Failed,
        }
    }
}

/// One run: one helper, one mode, one MTU, one repetition, in a fresh namespace.
#[derive(Debug, Clone)]
pub struct Run {
    pub helper: HelperKind,
    pub mode: Mode,
    pub mtu: u32,
    pub rep: u32,
    pub status: Status,
    pub error: Option<String>,
    /// In `mode.unit()`.
    pub value: Option<f64>,
    pub loss_pct: Option<f64>,
    pub retransmits: Option<u64>,
    /// Helper CPU (user + sys) per second of wall time during the measurement, in cores.
    pub cpu: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    pub idle_rss_kib: Option<u64>,
    pub ready_ms: Option<f64>,
    pub wall_s: f64,
}

impl Run {
    pub fn new(helper: HelperKind, mode: Mode, mtu: u32, rep: u32) -> Self {
        Run {
            helper,
            mode,
            mtu,
            rep,
            status: Status::Failed,
            error: None,
            value: None,
            loss_pct: None,
            retransmits: None,
            cpu: None,
            peak_rss_kib: None,
            idle_rss_kib: None,
            ready_ms: None,
            wall_s: 0.0,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "helper": self.helper.name(),
            "mode": self.mode.name(),
            "mtu": self.mtu,
            "rep": self.rep,
            "status": self.status.name(),
            "error": self.error,
            "value": self.value,
            "unit": self.mode.unit(),
            "loss_pct": self.loss_pct,
            "retransmits": self.retransmits,
            "cpu_cores": self.cpu,
            "peak_rss_kib": self.peak_rss_kib,
            "idle_rss_kib": self.idle_rss_kib,
            "ready_ms": self.ready_ms,
            "wall_s": self.wall_s,
        })
    }

    pub fn from_json(v: &Value) -> Option<Self> {
        let helper = HelperKind::from_name(v["helper"].as_str()?)?;
        let mode = Mode::from_name(v["mode"].as_str()?)?;
        Some(Run {
            helper,
            mode,
            mtu: v["mtu"].as_u64()? as u32,
            rep: v["rep"].as_u64().unwrap_or(0) as u32,
            status: Status::from_name(v["status"].as_str().unwrap_or("failed")),
            error: v["error"].as_str().map(str::to_string),
            value: v["value"].as_f64(),
            loss_pct: v["loss_pct"].as_f64(),
            retransmits: v["retransmits"].as_u64(),
            cpu: v["cpu_cores"].as_f64(),
            peak_rss_kib: v["peak_rss_kib"].as_u64(),
            idle_rss_kib: v["idle_rss_kib"].as_u64(),
            ready_ms: v["ready_ms"].as_f64(),
            wall_s: v["wall_s"].as_f64().unwrap_or(0.0),
        })
    }
}

/// Median, minimum and maximum of a non-empty sample.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// Everything the report needs about one (mode, MTU, helper) cell.
#[derive(Debug, Clone)]
pub struct Cell {
    pub value: Option<Spread>,
    pub loss: Option<Spread>,
    pub cpu: Option<Spread>,
    pub peak_rss: Option<Spread>,
    pub runs: usize,
    pub failed: usize,
    pub unsupported: usize,
    pub first_error: Option<String>,
}

pub fn cell(runs: &[Run], helper: HelperKind, mode: Mode, mtu: u32) -> Cell {
    let mine: Vec<&Run> = runs
        .iter()
        .filter(|r| r.helper == helper && r.mode == mode && r.mtu == mtu)
        .collect();
    let ok: Vec<&Run> = mine
        .iter()
        .copied()
        .filter(|r| r.status == Status::Ok)
        .collect();
    Cell {
        value: Spread::of(ok.iter().filter_map(|r| r.value)),
        loss: Spread::of(ok.iter().filter_map(|r| r.loss_pct)),
        cpu: Spread::of(ok.iter().filter_map(|r| r.cpu)),
        peak_rss: Spread::of(ok.iter().filter_map(|r| r.peak_rss_kib.map(|k| k as f64))),
        runs: mine.len(),
        failed: mine.iter().filter(|r| r.status == Status::Failed).count(),
        unsupported: mine
            .iter()
            .filter(|r| r.status == Status::Unsupported)
            .count(),
        first_error: mine.iter().find_map(|r| r.error.clone()),
    }
}

/// Start-up figures of one helper over all its runs that started.
pub struct Startup {
    pub ready_ms: Option<Spread>,
    pub idle_rss: Option<Spread>,
}

pub fn startup(runs: &[Run], helper: HelperKind) -> Startup {
    let mine = || runs.iter().filter(move |r| r.helper == helper);
    Startup {
        ready_ms: Spread::of(mine().filter_map(|r| r.ready_ms)),
        idle_rss: Spread::of(mine().filter_map(|r| r.idle_rss_kib.map(|k| k as f64))),
    }
}
