//! The API socket's protocol (COMPAT.md section 2), with no sockets and no I/O: one
//! request's bytes in, a typed [`Request`] or [`ApiError`] out, and every reply formatted
//! byte for byte as slirp4netns 1.2 writes it (compact JSON, no trailing newline).
//!
//! slirp4netns parses with parson; where parson's behaviour is visible to a client we match
//! it: the input ends at the first NUL byte, a UTF-8 BOM is skipped, anything after the
//! first complete JSON object is ignored, and an object with a duplicate key is
//! `cannot parse JSON`. Ports and ids are JSON numbers (parson reads a string port as 0,
//! which slirp4netns rejects, so `"8080"` is `bad arguments.host_port` here too); an
//! integral value in any notation (`8080.0`, `8.08e3`) is accepted, a fraction is not
//! (slirp4netns truncates it). Known differences left in: nesting deeper than 128 levels
//! and a bare top-level scalar followed by junk (`5x`) are `cannot parse JSON` (parson
//! allows 2048 levels and would say `json_object() failed`).
//!
//! Beyond slirp4netns (docs/compatibility.md should list these once the socket is wired):
//! - a missing or unknown `proto`, or an `arguments` that is missing or not an object, is
//!   `bad arguments.proto` (slirp4netns crashes);
//! - ports must be integers in 1..=65535 (slirp4netns checks only for 0); `host_port: 0`
//!   asks for an ephemeral port and the reply names it;
//! - `guest_addr` must be a host address of the virtual network other than the gateway
//!   and DNS addresses;
//! - IPv6 `host_addr`/`guest_addr` are accepted only with IPv6 enabled;
//! - `get_stats` returns per-forward and global counters.
//!
//! The same [`ForwardSpec`] comes from the command line: [`parse_publish`] reads
//! `-p/--publish [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp]`.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::config::NetConfig;

/// The read limit: a request of this many bytes or more is [`ApiError::TooLarge`].
/// The caller reads until EOF or until it holds this many bytes, then calls
/// [`parse_request`] with what it has.
pub const MAX_REQUEST_LEN: usize = 4096;

pub use crate::stack::forward::{ForwardId, ForwardInfo as ForwardEntry, Proto};

/// One port forward as requested: host side to bind, guest side to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ForwardSpec {
    pub proto: Proto,
    /// `host_addr:host_port`. Port 0 asks for an ephemeral port (our extension).
    pub host: SocketAddr,
    /// `guest_addr:guest_port`, validated against the virtual network.
    pub guest: SocketAddr,
}

impl ForwardSpec {
    /// True when the host port is to be chosen by the kernel; the add reply must then
    /// carry the bound port ([`add_reply`]).
    pub fn is_ephemeral(&self) -> bool {
        self.host.port() == 0
    }
}

/// One parsed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `add_hostfwd`: bind, then reply [`add_reply`] or [`ApiError::AddFailed`].
    AddHostfwd(ForwardSpec),
    /// `list_hostfwd`: reply [`list_reply`].
    ListHostfwd,
    /// `remove_hostfwd`: reply [`remove_reply`], or [`ApiError::RemoveBadId`] when no
    /// forward has this id.
    RemoveHostfwd(ForwardId),
    /// `get_stats` (our extension): reply [`stats_reply`].
    GetStats,
}

/// Which `add_hostfwd` argument was bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddField {
    Proto,
    HostAddr,
    HostPort,
    GuestAddr,
    GuestPort,
}

/// Every error the API answers, each with slirp4netns's text ([`ApiError::desc`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiError {
    /// Not JSON (also: empty, truncated, duplicate keys, nested deeper than 128).
    CannotParseJson,
    /// Valid JSON, but not an object.
    NotAnObject,
    /// No `execute` key, or its value is not a string.
    NoExecute,
    UnknownExecute,
    /// [`MAX_REQUEST_LEN`] bytes or more.
    TooLarge,
    BadAddArgument(AddField),
    /// An IPv6 `host_addr` or `guest_addr` without `--enable-ipv6`: slirp4netns's "bad
    /// arguments" text with the reason appended.
    Ipv6Disabled(AddField),
    /// The caller's bind failed (port in use, address not local, privileged port).
    AddFailed,
    /// `arguments.id` missing, not a positive integer, or naming no forward (the last is
    /// the caller's to detect).
    RemoveBadId,
}

impl ApiError {
    /// The `desc` text of the error reply, exactly as slirp4netns words it.
    pub fn desc(&self) -> &'static str {
        match self {
            ApiError::CannotParseJson => "bad request: cannot parse JSON",
            ApiError::NotAnObject => "bad request: json_object() failed",
            ApiError::NoExecute => "bad request: no execute found",
            ApiError::UnknownExecute => "bad request: unknown execute",
            ApiError::TooLarge => "bad request: too large message",
            ApiError::BadAddArgument(AddField::Proto) => {
                "bad request: add_hostfwd: bad arguments.proto"
            }
            ApiError::BadAddArgument(AddField::HostAddr) => {
                "bad request: add_hostfwd: bad arguments.host_addr"
            }
            ApiError::BadAddArgument(AddField::HostPort) => {
                "bad request: add_hostfwd: bad arguments.host_port"
            }
            ApiError::BadAddArgument(AddField::GuestAddr) => {
                "bad request: add_hostfwd: bad arguments.guest_addr"
            }
            ApiError::BadAddArgument(AddField::GuestPort) => {
                "bad request: add_hostfwd: bad arguments.guest_port"
            }
            ApiError::Ipv6Disabled(AddField::GuestAddr) => {
                "bad request: add_hostfwd: bad arguments.guest_addr: IPv6 needs --enable-ipv6"
            }
            ApiError::Ipv6Disabled(_) => {
                "bad request: add_hostfwd: bad arguments.host_addr: IPv6 needs --enable-ipv6"
            }
            ApiError::AddFailed => "bad request: add_hostfwd: slirp_add_hostfwd failed",
            ApiError::RemoveBadId => "bad request: remove_hostfwd: bad arguments.id",
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.desc())
    }
}

impl std::error::Error for ApiError {}

/// Parses one request: the bytes the client sent before half-closing, or the first
/// [`MAX_REQUEST_LEN`] bytes if it sent that many (then the answer is `too large message`).
pub fn parse_request(
    bytes: &[u8],
    net: &NetConfig,
    ipv6_enabled: bool,
) -> Result<Request, ApiError> {
    if bytes.len() >= MAX_REQUEST_LEN {
        return Err(ApiError::TooLarge);
    }
    // slirp4netns NUL-terminates the buffer and hands parson a C string.
    let bytes = match bytes.iter().position(|&b| b == 0) {
        Some(nul) => &bytes[..nul],
        None => bytes,
    };
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    // parson stops after the first value and ignores whatever follows it.
    let value = match serde_json::Deserializer::from_slice(bytes)
        .into_iter::<Strict>()
        .next()
    {
        Some(Ok(Strict(value))) => value,
        _ => return Err(ApiError::CannotParseJson),
    };
    let Value::Object(object) = value else {
        return Err(ApiError::NotAnObject);
    };
    let Some(execute) = object.get("execute").and_then(Value::as_str) else {
        return Err(ApiError::NoExecute);
    };
    let empty = Map::new();
    let arguments = object
        .get("arguments")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    match execute {
        "add_hostfwd" => parse_add(arguments, net, ipv6_enabled).map(Request::AddHostfwd),
        "list_hostfwd" => Ok(Request::ListHostfwd),
        "remove_hostfwd" => arguments
            .get("id")
            .and_then(json_uint)
            .filter(|&id| id >= 1)
            .map(|id| Request::RemoveHostfwd(ForwardId(id)))
            .ok_or(ApiError::RemoveBadId),
        "get_stats" => Ok(Request::GetStats),
        _ => Err(ApiError::UnknownExecute),
    }
}

/// `add_hostfwd`'s arguments, checked in slirp4netns's order so the first bad one is the
/// one it would name.
fn parse_add(
    args: &Map<String, Value>,
    net: &NetConfig,
    ipv6_enabled: bool,
) -> Result<ForwardSpec, ApiError> {
    let bad = ApiError::BadAddArgument;
    let proto = match args.get("proto").and_then(Value::as_str) {
        Some("tcp") => Proto::Tcp,
        Some("udp") => Proto::Udp,
        _ => return Err(bad(AddField::Proto)),
    };
    let host_addr = json_addr(args.get("host_addr"), Ipv4Addr::UNSPECIFIED.into())
        .ok_or(bad(AddField::HostAddr))?;
    if host_addr.is_ipv6() && !ipv6_enabled {
        return Err(ApiError::Ipv6Disabled(AddField::HostAddr));
    }
    let host_port = args
        .get("host_port")
        .and_then(json_uint)
        .and_then(|port| u16::try_from(port).ok())
        .ok_or(bad(AddField::HostPort))?;
    let guest_addr =
        json_addr(args.get("guest_addr"), net.guest.into()).ok_or(bad(AddField::GuestAddr))?;
    if guest_addr.is_ipv6() && !ipv6_enabled {
        return Err(ApiError::Ipv6Disabled(AddField::GuestAddr));
    }
    if !valid_guest_addr(guest_addr, net) {
        return Err(bad(AddField::GuestAddr));
    }
    let guest_port = args
        .get("guest_port")
        .and_then(json_uint)
        .and_then(|port| u16::try_from(port).ok())
        .filter(|&port| port != 0)
        .ok_or(bad(AddField::GuestPort))?;
    Ok(ForwardSpec {
        proto,
        host: SocketAddr::new(host_addr, host_port),
        guest: SocketAddr::new(guest_addr, guest_port),
    })
}

/// An address argument: missing, `null` or `""` gives `default`; another string must be a
/// plain IPv4 or IPv6 address; anything else is bad.
fn json_addr(value: Option<&Value>, default: IpAddr) -> Option<IpAddr> {
    match value {
        None | Some(Value::Null) => Some(default),
        Some(Value::String(text)) if text.is_empty() => Some(default),
        Some(Value::String(text)) => text.parse().ok(),
        Some(_) => None,
    }
}

/// A JSON number with an integral value (`8080`, `8080.0`, `8.08e3`), as parson, which
/// stores every number as a double, would see it. Fractions and negatives are `None`.
fn json_uint(value: &Value) -> Option<u64> {
    let number = value.as_number()?;
    if let Some(n) = number.as_u64() {
        return Some(n);
    }
    let float = number.as_f64()?;
    // 2^53: beyond it a double no longer holds every integer.
    (float >= 0.0 && float.fract() == 0.0 && float <= 9_007_199_254_740_992.0)
        .then_some(float as u64)
}

/// A forward may target any host address of the virtual network except the gateway and
/// DNS addresses (the helper's own) and the network and broadcast addresses.
fn valid_guest_addr(addr: IpAddr, net: &NetConfig) -> bool {
    match addr {
        IpAddr::V4(v4) => {
            net.contains(v4) && ![net.network, net.gateway, net.dns, net.broadcast()].contains(&v4)
        }
        // The virtual /64 but for its subnet-router anycast address and the helper's own.
        IpAddr::V6(v6) => net.contains6(v6) && v6 != net.prefix6 && !net.is_own6(v6),
    }
}

/// `{"error":{"desc":"bad request: ..."}}`.
pub fn error_reply(error: &ApiError) -> String {
    format!(r#"{{"error":{{"desc":"{}"}}}}"#, error.desc())
}

/// `{"return":{"id":N}}`, or `{"return":{"id":N,"host_port":P}}` when the request asked
/// for an ephemeral port (`host_port: 0`) and the kernel gave port P.
pub fn add_reply(id: ForwardId, ephemeral_port: Option<u16>) -> String {
    match ephemeral_port {
        None => format!(r#"{{"return":{{"id":{id}}}}}"#),
        Some(port) => format!(r#"{{"return":{{"id":{id},"host_port":{port}}}}}"#),
    }
}

/// `{"entries":[{"id":1,"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,
/// "guest_addr":"10.0.2.100","guest_port":80}]}`, in the order given (the caller keeps
/// insertion order). No `return` wrapper, as slirp4netns.
pub fn list_reply(entries: &[ForwardEntry]) -> String {
    let mut out = String::from(r#"{"entries":["#);
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            r#"{{"id":{},"proto":"{}","host_addr":"{}","host_port":{},"guest_addr":"{}","guest_port":{}}}"#,
            entry.id,
            entry.proto,
            entry.host.ip(),
            entry.host.port(),
            entry.guest.ip(),
            entry.guest.port(),
        );
    }
    out.push_str("]}");
    out
}

/// `{"return":{}}`.
pub fn remove_reply() -> String {
    String::from(r#"{"return":{}}"#)
}

/// One forward's counters. For UDP a "connection" is a client flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardStats {
    pub id: ForwardId,
    pub connections_total: u64,
    pub connections_active: u64,
    pub bytes_to_guest: u64,
    pub bytes_to_host: u64,
}

/// What `get_stats` reports: per-forward counters (in list order) and global counters
/// (flows by protocol, drops by reason) as name/value pairs, printed in the order given.
/// Names should be unique; they are JSON-escaped but otherwise printed as they are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    pub forwards: Vec<ForwardStats>,
    pub counters: Vec<(&'static str, u64)>,
}

/// `{"return":{"forwards":[{"id":1,"connections_total":3,"connections_active":1,
/// "bytes_to_guest":100,"bytes_to_host":200}],"counters":{"flows_tcp":2,...}}}`.
pub fn stats_reply(stats: &Stats) -> String {
    let mut out = String::from(r#"{"return":{"forwards":["#);
    for (i, fwd) in stats.forwards.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"id":{},"connections_total":{},"connections_active":{},"bytes_to_guest":{},"bytes_to_host":{}}}"#,
            fwd.id,
            fwd.connections_total,
            fwd.connections_active,
            fwd.bytes_to_guest,
            fwd.bytes_to_host,
        );
    }
    out.push_str(r#"],"counters":{"#);
    for (i, (name, value)) in stats.counters.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, name);
        let _ = write!(out, ":{value}");
    }
    out.push_str("}}}");
    out
}

fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Parses `-p/--publish [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp]` (pasta's syntax): the
/// host address defaults to 0.0.0.0 (an IPv6 one goes in brackets, `[::1]:8080:80`), the
/// protocol to tcp, and the guest is net+100. The error is one line naming the value.
pub fn parse_publish(
    spec: &str,
    net: &NetConfig,
    ipv6_enabled: bool,
) -> Result<ForwardSpec, String> {
    parse_publish_inner(spec, net, ipv6_enabled)
        .map_err(|reason| format!("invalid --publish {spec}: {reason}"))
}

const PUBLISH_SYNTAX: &str = "expected [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp]";

fn parse_publish_inner(
    spec: &str,
    net: &NetConfig,
    ipv6_enabled: bool,
) -> Result<ForwardSpec, String> {
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((rest, "tcp")) => (rest, Proto::Tcp),
        Some((rest, "udp")) => (rest, Proto::Udp),
        Some((_, other)) => return Err(format!("unknown protocol {other:?} (tcp or udp)")),
        None => (spec, Proto::Tcp),
    };
    let (host_addr, ports) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (addr, after) = bracketed
            .split_once(']')
            .ok_or_else(|| "missing ] after the IPv6 host address".to_string())?;
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("bad IPv6 host address {addr:?}"))?;
        let ports = after
            .strip_prefix(':')
            .ok_or_else(|| PUBLISH_SYNTAX.to_string())?;
        (IpAddr::V6(addr), ports)
    } else {
        match rest.matches(':').count() {
            1 => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), rest),
            2 => {
                let (addr, ports) = rest.split_once(':').unwrap_or_default();
                let addr = if addr.is_empty() {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    addr.parse::<Ipv4Addr>()
                        .map_err(|_| format!("bad host address {addr:?}"))?
                        .into()
                };
                (addr, ports)
            }
            0 => return Err(PUBLISH_SYNTAX.to_string()),
            _ if rest.contains("::") || rest.matches(':').count() > 3 => {
                return Err("an IPv6 host address goes in brackets, e.g. [::1]:8080:80".to_string());
            }
            _ => return Err(PUBLISH_SYNTAX.to_string()),
        }
    };
    let (host_port, guest_port) = ports
        .split_once(':')
        .ok_or_else(|| PUBLISH_SYNTAX.to_string())?;
    let host_port = publish_port(host_port, "host")?;
    let guest_port = publish_port(guest_port, "guest")?;
    if host_addr.is_ipv6() && !ipv6_enabled {
        return Err("an IPv6 host address needs --enable-ipv6".to_string());
    }
    Ok(ForwardSpec {
        proto,
        host: SocketAddr::new(host_addr, host_port),
        guest: SocketAddr::new(IpAddr::V4(net.guest), guest_port),
    })
}

fn publish_port(text: &str, which: &str) -> Result<u16, String> {
    if text.contains('-')
        && text
            .split('-')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("port ranges are not supported".to_string());
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad {which} port {text:?} ({PUBLISH_SYNTAX})"));
    }
    match text.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err(format!("{which} port {text} is not in 1..65535")),
    }
}

/// A JSON value as parson would accept it: like [`Value`], but an object with a repeated
/// key is an error (parson's `json_object_add` refuses duplicates).
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if object.insert(key, value).is_some() {
                return Err(de::Error::custom("duplicate key"));
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> NetConfig {
        NetConfig::default()
    }

    fn parse(text: &str) -> Result<Request, ApiError> {
        parse_request(text.as_bytes(), &net(), false)
    }

    /// The reply the wired-up handler would send for a request that fails to parse.
    fn err_reply(text: &str) -> String {
        error_reply(&parse(text).expect_err(text))
    }

    fn add(text: &str) -> ForwardSpec {
        match parse(text) {
            Ok(Request::AddHostfwd(spec)) => spec,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn sa(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    const ADD_ERRORS: [(&str, &str); 5] = [
        (
            "proto",
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}"#,
        ),
        (
            "host_addr",
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_addr"}}"#,
        ),
        (
            "host_port",
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_port"}}"#,
        ),
        (
            "guest_addr",
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_addr"}}"#,
        ),
        (
            "guest_port",
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_port"}}"#,
        ),
    ];

    fn add_error(field: &str) -> &'static str {
        ADD_ERRORS
            .iter()
            .find(|(name, _)| *name == field)
            .unwrap()
            .1
    }

    #[test]
    fn every_error_text_is_byte_exact() {
        let cases: [(ApiError, &str); 13] = [
            (
                ApiError::CannotParseJson,
                r#"{"error":{"desc":"bad request: cannot parse JSON"}}"#,
            ),
            (
                ApiError::NotAnObject,
                r#"{"error":{"desc":"bad request: json_object() failed"}}"#,
            ),
            (
                ApiError::NoExecute,
                r#"{"error":{"desc":"bad request: no execute found"}}"#,
            ),
            (
                ApiError::UnknownExecute,
                r#"{"error":{"desc":"bad request: unknown execute"}}"#,
            ),
            (
                ApiError::TooLarge,
                r#"{"error":{"desc":"bad request: too large message"}}"#,
            ),
            (ApiError::BadAddArgument(AddField::Proto), ADD_ERRORS[0].1),
            (
                ApiError::BadAddArgument(AddField::HostAddr),
                ADD_ERRORS[1].1,
            ),
            (
                ApiError::BadAddArgument(AddField::HostPort),
                ADD_ERRORS[2].1,
            ),
            (
                ApiError::BadAddArgument(AddField::GuestAddr),
                ADD_ERRORS[3].1,
            ),
            (
                ApiError::BadAddArgument(AddField::GuestPort),
                ADD_ERRORS[4].1,
            ),
            (
                ApiError::AddFailed,
                r#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#,
            ),
            (
                ApiError::RemoveBadId,
                r#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#,
            ),
            (
                ApiError::TooLarge,
                r#"{"error":{"desc":"bad request: too large message"}}"#,
            ),
        ];
        for (error, reply) in cases {
            assert_eq!(error_reply(&error), reply);
            assert_eq!(format!(r#"{{"error":{{"desc":"{error}"}}}}"#), reply);
            // Every reply is itself valid JSON.
            serde_json::from_str::<Value>(reply).unwrap();
        }
    }

    #[test]
    fn envelope_errors() {
        let parse_error = r#"{"error":{"desc":"bad request: cannot parse JSON"}}"#;
        for text in [
            "",
            " ",
            "{",
            "{\"execute\":",
            "nope",
            "{'execute':'list_hostfwd'}",
            "[1,]",
            "\"abc",
        ] {
            assert_eq!(err_reply(text), parse_error, "{text:?}");
        }
        // parson refuses duplicate keys, at any depth.
        assert_eq!(
            err_reply(r#"{"execute":"list_hostfwd","execute":"list_hostfwd"}"#),
            parse_error
        );
        assert_eq!(
            err_reply(r#"{"execute":"list_hostfwd","arguments":{"a":1,"a":2}}"#),
            parse_error
        );
        let not_object = r#"{"error":{"desc":"bad request: json_object() failed"}}"#;
        for text in [
            "[]",
            "[1,2]",
            "1",
            "\"list_hostfwd\"",
            "null",
            "true",
            " [ ] ",
        ] {
            assert_eq!(err_reply(text), not_object, "{text:?}");
        }
        let no_execute = r#"{"error":{"desc":"bad request: no execute found"}}"#;
        for text in [
            "{}",
            r#"{"arguments":{}}"#,
            r#"{"execute":1}"#,
            r#"{"execute":null}"#,
            r#"{"Execute":"list_hostfwd"}"#,
        ] {
            assert_eq!(err_reply(text), no_execute, "{text:?}");
        }
        let unknown = r#"{"error":{"desc":"bad request: unknown execute"}}"#;
        for text in [
            r#"{"execute":""}"#,
            r#"{"execute":"LIST_HOSTFWD"}"#,
            r#"{"execute":"quit"}"#,
        ] {
            assert_eq!(err_reply(text), unknown, "{text:?}");
        }
    }

    #[test]
    fn too_large_at_4096_bytes() {
        let padded = |len: usize| {
            let mut text = String::from(r#"{"execute":"list_hostfwd"}"#);
            text.extend(std::iter::repeat_n(' ', len - text.len()));
            text
        };
        assert_eq!(parse(&padded(4095)), Ok(Request::ListHostfwd));
        assert_eq!(
            error_reply(&parse(&padded(4096)).unwrap_err()),
            r#"{"error":{"desc":"bad request: too large message"}}"#
        );
        assert_eq!(parse(&padded(10000)), Err(ApiError::TooLarge));
        assert_eq!(
            parse_request(&[0xff; 4096], &net(), false),
            Err(ApiError::TooLarge)
        );
    }

    #[test]
    fn parson_leniencies() {
        // Anything after the first value is ignored; so is everything after a NUL.
        assert_eq!(
            parse("{\"execute\":\"list_hostfwd\"}\n"),
            Ok(Request::ListHostfwd)
        );
        assert_eq!(
            parse("{\"execute\":\"list_hostfwd\"} trailing junk"),
            Ok(Request::ListHostfwd)
        );
        assert_eq!(
            parse("{\"execute\":\"list_hostfwd\"}{"),
            Ok(Request::ListHostfwd)
        );
        assert_eq!(
            parse("{\"execute\":\"list_hostfwd\"}\0garbage"),
            Ok(Request::ListHostfwd)
        );
        assert_eq!(
            parse("\0{\"execute\":\"list_hostfwd\"}"),
            Err(ApiError::CannotParseJson)
        );
        // Leading whitespace and a UTF-8 BOM.
        assert_eq!(
            parse(" \n\t{\"execute\":\"list_hostfwd\"}"),
            Ok(Request::ListHostfwd)
        );
        assert_eq!(
            parse("\u{feff}{\"execute\":\"list_hostfwd\"}"),
            Ok(Request::ListHostfwd)
        );
        // Unknown keys and arguments are ignored.
        assert_eq!(
            parse(r#"{"execute":"list_hostfwd","arguments":{"x":[1,{"y":null}]},"id":7}"#),
            Ok(Request::ListHostfwd)
        );
    }

    #[test]
    fn add_hostfwd_full_and_reply() {
        let spec = add(
            r#"{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "127.0.0.1", "host_port": 8080, "guest_addr": "10.0.2.100", "guest_port": 80}}"#,
        );
        assert_eq!(
            spec,
            ForwardSpec {
                proto: Proto::Tcp,
                host: sa("127.0.0.1:8080"),
                guest: sa("10.0.2.100:80"),
            }
        );
        assert!(!spec.is_ephemeral());
        assert_eq!(add_reply(ForwardId(1), None), r#"{"return":{"id":1}}"#);
        assert_eq!(add_reply(ForwardId(42), None), r#"{"return":{"id":42}}"#);
        let spec = add(
            r#"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"0.0.0.0","host_port":5353,"guest_addr":"10.0.2.15","guest_port":53}}"#,
        );
        assert_eq!(spec.proto, Proto::Udp);
        assert_eq!(spec.guest, sa("10.0.2.15:53"));
    }

    #[test]
    fn add_hostfwd_defaults() {
        // What Podman sends.
        let spec = add(
            r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"","guest_port":80}}"#,
        );
        assert_eq!(spec.host, sa("0.0.0.0:8080"));
        assert_eq!(spec.guest, sa("10.0.2.100:80"));
        // Missing, empty or null addresses take the defaults.
        for (host, guest) in [
            ("", ""),
            (r#""host_addr":"","#, ""),
            (r#""host_addr":null,"#, r#""guest_addr":null,"#),
        ] {
            let text = format!(
                r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp",{host}"host_port":1,{guest}"guest_port":2}}}}"#
            );
            let spec = add(&text);
            assert_eq!(spec.host, sa("0.0.0.0:1"), "{text}");
            assert_eq!(spec.guest, sa("10.0.2.100:2"), "{text}");
        }
        // The default guest follows --cidr.
        let shifted = NetConfig::new(Ipv4Addr::new(192, 168, 50, 0), 24);
        let text =
            r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1,"guest_port":2}}"#;
        assert_eq!(
            parse_request(text.as_bytes(), &shifted, false),
            Ok(Request::AddHostfwd(ForwardSpec {
                proto: Proto::Tcp,
                host: sa("0.0.0.0:1"),
                guest: sa("192.168.50.100:2"),
            }))
        );
    }

    #[test]
    fn add_hostfwd_number_forms() {
        // parson stores numbers as doubles: integral values in any notation are fine.
        for port in ["8080", "8080.0", "8.08e3", "808e1"] {
            let text = format!(
                r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_port":{port},"guest_port":80}}}}"#
            );
            assert_eq!(add(&text).host.port(), 8080, "{port}");
        }
    }

    fn add_with(args: &str) -> String {
        let text = format!(r#"{{"execute":"add_hostfwd","arguments":{{{args}}}}}"#);
        match parse(&text) {
            Ok(request) => panic!("{text}: {request:?}"),
            Err(error) => error_reply(&error),
        }
    }

    #[test]
    fn add_hostfwd_bad_proto() {
        let e = add_error("proto");
        // A missing proto crashes slirp4netns; here it is an error.
        assert_eq!(add_with(r#""host_port":1,"guest_port":2"#), e);
        for proto in [r#""""#, r#""TCP""#, r#""sctp""#, "6", "null", r#"["tcp"]"#] {
            assert_eq!(
                add_with(&format!(r#""proto":{proto},"host_port":1,"guest_port":2"#)),
                e,
                "{proto}"
            );
        }
        // arguments missing or not an object: the first missing field is proto.
        for text in [
            r#"{"execute":"add_hostfwd"}"#,
            r#"{"execute":"add_hostfwd","arguments":null}"#,
            r#"{"execute":"add_hostfwd","arguments":[]}"#,
            r#"{"execute":"add_hostfwd","arguments":"proto=tcp"}"#,
            r#"{"execute":"add_hostfwd","proto":"tcp","host_port":1,"guest_port":2}"#,
        ] {
            assert_eq!(err_reply(text), e, "{text}");
        }
    }

    #[test]
    fn add_hostfwd_bad_host_addr() {
        let e = add_error("host_addr");
        for addr in [
            r#""localhost""#,
            r#""1.2.3""#,
            r#""1.2.3.4.5""#,
            r#""256.0.0.1""#,
            r#""010.0.0.1""#,
            r#"" 127.0.0.1""#,
            r#""127.0.0.1:80""#,
            r#""[::1]""#,
            "1",
            "{}",
            "true",
        ] {
            assert_eq!(
                add_with(&format!(
                    r#""proto":"tcp","host_addr":{addr},"host_port":1,"guest_port":2"#
                )),
                e,
                "{addr}"
            );
        }
    }

    #[test]
    fn add_hostfwd_bad_host_port() {
        let e = add_error("host_port");
        assert_eq!(add_with(r#""proto":"tcp","guest_port":2"#), e);
        for port in [
            r#""8080""#,
            "-1",
            "65536",
            "1e10",
            "80.5",
            "null",
            "true",
            "[80]",
            "-0.5",
        ] {
            assert_eq!(
                add_with(&format!(
                    r#""proto":"tcp","host_port":{port},"guest_port":2"#
                )),
                e,
                "{port}"
            );
        }
        // Checked before guest_addr and guest_port, as slirp4netns does.
        assert_eq!(
            add_with(r#""proto":"tcp","guest_addr":"x","guest_port":0"#),
            e
        );
    }

    #[test]
    fn add_hostfwd_ephemeral_host_port() {
        let spec = add(
            r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":0,"guest_port":80}}"#,
        );
        assert!(spec.is_ephemeral());
        assert_eq!(spec.host, sa("127.0.0.1:0"));
        assert_eq!(
            add_reply(ForwardId(3), Some(40123)),
            r#"{"return":{"id":3,"host_port":40123}}"#
        );
    }

    #[test]
    fn add_hostfwd_bad_guest_addr() {
        let e = add_error("guest_addr");
        for addr in [
            "10.0.2.0",      // network
            "10.0.2.2",      // gateway
            "10.0.2.3",      // DNS
            "10.0.2.255",    // broadcast
            "10.0.3.100",    // outside
            "127.0.0.1",     // outside
            "0.0.0.0",       // outside
            "10.0.2",        // not an address
            "10.0.2.100/24", // not an address
        ] {
            assert_eq!(
                add_with(&format!(
                    r#""proto":"tcp","host_port":1,"guest_addr":"{addr}","guest_port":2"#
                )),
                e,
                "{addr}"
            );
        }
        assert_eq!(
            add_with(r#""proto":"tcp","host_port":1,"guest_addr":100,"guest_port":2"#),
            e
        );
        // IPv6 while it is off: the same field named, and why.
        for addr in ["::1", "fd00::100"] {
            assert_eq!(
                add_with(&format!(
                    r#""proto":"tcp","host_port":1,"guest_addr":"{addr}","guest_port":2"#
                )),
                r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_addr: IPv6 needs --enable-ipv6"}}"#,
                "{addr}"
            );
        }
        // Any other host address of the network is fine, DHCP range included.
        for addr in [
            "10.0.2.1",
            "10.0.2.4",
            "10.0.2.15",
            "10.0.2.100",
            "10.0.2.254",
        ] {
            let text = format!(
                r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_port":1,"guest_addr":"{addr}","guest_port":2}}}}"#
            );
            assert_eq!(add(&text).guest.ip().to_string(), addr);
        }
        // The checks follow --cidr.
        let wide = NetConfig::new(Ipv4Addr::new(10, 8, 0, 0), 16);
        let text = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1,"guest_addr":"10.8.7.9","guest_port":2}}"#;
        assert!(parse_request(text.as_bytes(), &wide, false).is_ok());
        let text = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":1,"guest_addr":"10.8.255.255","guest_port":2}}"#;
        assert_eq!(
            parse_request(text.as_bytes(), &wide, false),
            Err(ApiError::BadAddArgument(AddField::GuestAddr))
        );
    }

    #[test]
    fn add_hostfwd_bad_guest_port() {
        let e = add_error("guest_port");
        assert_eq!(add_with(r#""proto":"tcp","host_port":1"#), e);
        for port in ["0", r#""80""#, "-80", "65536", "80.1", "null"] {
            assert_eq!(
                add_with(&format!(
                    r#""proto":"tcp","host_port":1,"guest_port":{port}"#
                )),
                e,
                "{port}"
            );
        }
        assert_eq!(add(r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":65535,"guest_port":65535}}"#).guest.port(), 65535);
    }

    #[test]
    fn ipv6_only_when_enabled() {
        let text = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::1","host_port":8080,"guest_port":80}}"#;
        assert_eq!(
            error_reply(&parse_request(text.as_bytes(), &net(), false).unwrap_err()),
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_addr: IPv6 needs --enable-ipv6"}}"#
        );
        let guest6 = r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":8080,"guest_addr":"fd00::100","guest_port":80}}"#;
        assert_eq!(
            parse_request(guest6.as_bytes(), &net(), false),
            Err(ApiError::Ipv6Disabled(AddField::GuestAddr))
        );
        let Ok(Request::AddHostfwd(spec)) = parse_request(text.as_bytes(), &net(), true) else {
            panic!("IPv6 host_addr refused with IPv6 enabled");
        };
        assert_eq!(spec.host, sa("[::1]:8080"));
        assert_eq!(spec.guest, sa("10.0.2.100:80"));
        let text = r#"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"::","host_port":53,"guest_addr":"fd00::100","guest_port":53}}"#;
        let Ok(Request::AddHostfwd(spec)) = parse_request(text.as_bytes(), &net(), true) else {
            panic!("IPv6 guest_addr refused with IPv6 enabled");
        };
        assert_eq!(spec.guest, sa("[fd00::100]:53"));
        // Only guest addresses in the virtual /64 that are not the helper's own.
        for guest in [
            "::1",
            "fd01::100",
            "fd00::2",
            "fd00::3",
            "fd00::",
            "fe80::2",
        ] {
            let text = format!(
                r#"{{"execute":"add_hostfwd","arguments":{{"proto":"udp","host_port":53,"guest_addr":"{guest}","guest_port":53}}}}"#
            );
            assert_eq!(
                parse_request(text.as_bytes(), &net(), true),
                Err(ApiError::BadAddArgument(AddField::GuestAddr)),
                "{guest}"
            );
        }
    }

    #[test]
    fn list_replies() {
        assert_eq!(list_reply(&[]), r#"{"entries":[]}"#);
        let entries = [
            ForwardEntry {
                id: ForwardId(1),
                proto: Proto::Tcp,
                host: sa("127.0.0.1:8080"),
                guest: sa("10.0.2.100:80"),
            },
            ForwardEntry {
                id: ForwardId(3),
                proto: Proto::Udp,
                host: sa("0.0.0.0:5353"),
                guest: sa("10.0.2.15:53"),
            },
            ForwardEntry {
                id: ForwardId(2),
                proto: Proto::Tcp,
                host: sa("[::1]:8443"),
                guest: sa("[fd00::100]:443"),
            },
        ];
        assert_eq!(
            list_reply(&entries[..1]),
            r#"{"entries":[{"id":1,"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}]}"#
        );
        assert_eq!(
            list_reply(&entries),
            concat!(
                r#"{"entries":["#,
                r#"{"id":1,"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},"#,
                r#"{"id":3,"proto":"udp","host_addr":"0.0.0.0","host_port":5353,"guest_addr":"10.0.2.15","guest_port":53},"#,
                r#"{"id":2,"proto":"tcp","host_addr":"::1","host_port":8443,"guest_addr":"fd00::100","guest_port":443}"#,
                r#"]}"#
            )
        );
        serde_json::from_str::<Value>(&list_reply(&entries)).unwrap();
        assert_eq!(
            parse(r#"{"execute":"list_hostfwd"}"#),
            Ok(Request::ListHostfwd)
        );
    }

    #[test]
    fn remove_hostfwd() {
        assert_eq!(
            parse(r#"{"execute":"remove_hostfwd","arguments":{"id":42}}"#),
            Ok(Request::RemoveHostfwd(ForwardId(42)))
        );
        assert_eq!(
            parse(r#"{"execute":"remove_hostfwd","arguments":{"id":1.0}}"#),
            Ok(Request::RemoveHostfwd(ForwardId(1)))
        );
        assert_eq!(remove_reply(), r#"{"return":{}}"#);
        let e = r#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#;
        for text in [
            r#"{"execute":"remove_hostfwd"}"#,
            r#"{"execute":"remove_hostfwd","arguments":{}}"#,
            r#"{"execute":"remove_hostfwd","arguments":{"id":0}}"#,
            r#"{"execute":"remove_hostfwd","arguments":{"id":-1}}"#,
            r#"{"execute":"remove_hostfwd","arguments":{"id":1.5}}"#,
            r#"{"execute":"remove_hostfwd","arguments":{"id":"1"}}"#,
            r#"{"execute":"remove_hostfwd","arguments":[1]}"#,
            r#"{"execute":"remove_hostfwd","id":1}"#,
        ] {
            assert_eq!(err_reply(text), e, "{text}");
        }
        // An id that names no forward: the caller's error, same text.
        assert_eq!(error_reply(&ApiError::RemoveBadId), e);
    }

    #[test]
    fn add_failed_reply() {
        assert_eq!(
            error_reply(&ApiError::AddFailed),
            r#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#
        );
    }

    #[test]
    fn get_stats() {
        assert_eq!(parse(r#"{"execute":"get_stats"}"#), Ok(Request::GetStats));
        assert_eq!(
            parse(r#"{"execute":"get_stats","arguments":{}}"#),
            Ok(Request::GetStats)
        );
        assert_eq!(
            stats_reply(&Stats::default()),
            r#"{"return":{"forwards":[],"counters":{}}}"#
        );
        let stats = Stats {
            forwards: vec![
                ForwardStats {
                    id: ForwardId(1),
                    connections_total: 3,
                    connections_active: 1,
                    bytes_to_guest: 100,
                    bytes_to_host: 200,
                },
                ForwardStats {
                    id: ForwardId(4),
                    connections_total: 0,
                    connections_active: 0,
                    bytes_to_guest: 0,
                    bytes_to_host: u64::MAX,
                },
            ],
            counters: vec![
                ("flows_tcp", 2),
                ("flows_udp", 0),
                ("drops_no_route", 7),
                ("odd\"name", 1),
            ],
        };
        let reply = stats_reply(&stats);
        assert_eq!(
            reply,
            concat!(
                r#"{"return":{"forwards":["#,
                r#"{"id":1,"connections_total":3,"connections_active":1,"bytes_to_guest":100,"bytes_to_host":200},"#,
                r#"{"id":4,"connections_total":0,"connections_active":0,"bytes_to_guest":0,"bytes_to_host":18446744073709551615}"#,
                r#"],"counters":{"flows_tcp":2,"flows_udp":0,"drops_no_route":7,"odd\"name":1}}}"#
            )
        );
        serde_json::from_str::<Value>(&reply).unwrap();
    }

    /// xorshift64: a deterministic byte source with no dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Whatever comes out must format without panicking.
    fn reply_for(bytes: &[u8], ipv6: bool) -> String {
        match parse_request(bytes, &net(), ipv6) {
            Ok(Request::AddHostfwd(spec)) => {
                add_reply(ForwardId(1), spec.is_ephemeral().then_some(1))
            }
            Ok(Request::ListHostfwd) => list_reply(&[]),
            Ok(Request::RemoveHostfwd(_)) => remove_reply(),
            Ok(Request::GetStats) => stats_reply(&Stats::default()),
            Err(error) => error_reply(&error),
        }
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        let valid = [
            r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}}"#,
            r#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#,
            r#"{"execute":"list_hostfwd"}"#,
            r#"{"execute":"get_stats"}"#,
        ];
        // Every strict prefix of a request is cut off JSON.
        for text in valid {
            for cut in 0..text.len() {
                assert_eq!(
                    parse(&text[..cut]),
                    Err(ApiError::CannotParseJson),
                    "{}",
                    &text[..cut]
                );
            }
        }
        let alphabet = b"{}[]\":,0123456789.-eE \ttruefalsenull\\u\0\xff\xc3executearguments";
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..4000 {
            let mut bytes: Vec<u8> = match round % 3 {
                // Random bytes.
                0 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
                // Random JSON-ish tokens.
                1 => (0..rng.below(300))
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect(),
                // A valid request, mutated.
                _ => {
                    let mut bytes = valid[rng.below(valid.len())].as_bytes().to_vec();
                    for _ in 0..=rng.below(4) {
                        let at = rng.below(bytes.len());
                        match rng.below(3) {
                            0 => bytes[at] = rng.next() as u8,
                            1 => bytes.truncate(at),
                            _ => bytes.insert(at, alphabet[rng.below(alphabet.len())]),
                        }
                        if bytes.is_empty() {
                            break;
                        }
                    }
                    bytes
                }
            };
            let reply = reply_for(&bytes, round % 2 == 0);
            serde_json::from_str::<Value>(&reply).unwrap();
            bytes.resize(MAX_REQUEST_LEN, b' ');
            assert_eq!(reply_for(&bytes, false), error_reply(&ApiError::TooLarge));
        }
        // Deep nesting fails cleanly, no stack overflow.
        let deep = format!("{}{}", "[".repeat(4000), "]".repeat(4000));
        assert_eq!(parse(&deep[..4095]), Err(ApiError::CannotParseJson));
        let deep = format!(
            r#"{{"execute":"list_hostfwd","x":{}}}"#,
            "{\"a\":".repeat(600)
        );
        assert_eq!(parse(&deep), Err(ApiError::CannotParseJson));
    }

    fn publish(text: &str) -> Result<ForwardSpec, String> {
        parse_publish(text, &net(), false)
    }

    #[test]
    fn publish_syntax() {
        let spec = |proto, host: &str, guest: &str| ForwardSpec {
            proto,
            host: sa(host),
            guest: sa(guest),
        };
        assert_eq!(
            publish("8080:80"),
            Ok(spec(Proto::Tcp, "0.0.0.0:8080", "10.0.2.100:80"))
        );
        assert_eq!(
            publish("8080:80/tcp"),
            Ok(spec(Proto::Tcp, "0.0.0.0:8080", "10.0.2.100:80"))
        );
        assert_eq!(
            publish("5353:53/udp"),
            Ok(spec(Proto::Udp, "0.0.0.0:5353", "10.0.2.100:53"))
        );
        assert_eq!(
            publish("127.0.0.1:8080:80"),
            Ok(spec(Proto::Tcp, "127.0.0.1:8080", "10.0.2.100:80"))
        );
        assert_eq!(
            publish("127.0.0.1:5353:53/udp"),
            Ok(spec(Proto::Udp, "127.0.0.1:5353", "10.0.2.100:53"))
        );
        assert_eq!(
            publish(":8080:80"),
            Ok(spec(Proto::Tcp, "0.0.0.0:8080", "10.0.2.100:80"))
        );
        assert_eq!(
            publish("65535:65535"),
            Ok(spec(Proto::Tcp, "0.0.0.0:65535", "10.0.2.100:65535"))
        );
        assert_eq!(
            parse_publish("[::1]:8080:80", &net(), true),
            Ok(spec(Proto::Tcp, "[::1]:8080", "10.0.2.100:80"))
        );
        assert_eq!(
            parse_publish("[::]:53:53/udp", &net(), true),
            Ok(spec(Proto::Udp, "[::]:53", "10.0.2.100:53"))
        );
        let shifted = NetConfig::new(Ipv4Addr::new(192, 168, 7, 0), 24);
        assert_eq!(
            parse_publish("1:2", &shifted, false),
            Ok(spec(Proto::Tcp, "0.0.0.0:1", "192.168.7.100:2"))
        );
    }

    #[test]
    fn publish_errors() {
        let cases = [
            (
                "8080",
                "invalid --publish 8080: expected [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp]",
            ),
            (
                "",
                "invalid --publish : expected [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp]",
            ),
            (
                "8080:80/sctp",
                r#"invalid --publish 8080:80/sctp: unknown protocol "sctp" (tcp or udp)"#,
            ),
            (
                "8080:80/",
                r#"invalid --publish 8080:80/: unknown protocol "" (tcp or udp)"#,
            ),
            (
                "8080:80/TCP",
                r#"invalid --publish 8080:80/TCP: unknown protocol "TCP" (tcp or udp)"#,
            ),
            (
                "0:80",
                "invalid --publish 0:80: host port 0 is not in 1..65535",
            ),
            (
                "8080:0",
                "invalid --publish 8080:0: guest port 0 is not in 1..65535",
            ),
            (
                "65536:80",
                "invalid --publish 65536:80: host port 65536 is not in 1..65535",
            ),
            (
                "http:80",
                r#"invalid --publish http:80: bad host port "http" (expected [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp])"#,
            ),
            (
                "8080:",
                r#"invalid --publish 8080:: bad guest port "" (expected [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp])"#,
            ),
            (
                "+80:80",
                r#"invalid --publish +80:80: bad host port "+80" (expected [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp])"#,
            ),
            (
                "8080-8090:80-90",
                "invalid --publish 8080-8090:80-90: port ranges are not supported",
            ),
            (
                "localhost:8080:80",
                r#"invalid --publish localhost:8080:80: bad host address "localhost""#,
            ),
            (
                "1.2.3:8080:80",
                r#"invalid --publish 1.2.3:8080:80: bad host address "1.2.3""#,
            ),
            (
                "::1:8080:80",
                "invalid --publish ::1:8080:80: an IPv6 host address goes in brackets, e.g. [::1]:8080:80",
            ),
            (
                "[::1]:8080:80",
                "invalid --publish [::1]:8080:80: an IPv6 host address needs --enable-ipv6",
            ),
            (
                "[::1:8080:80",
                "invalid --publish [::1:8080:80: missing ] after the IPv6 host address",
            ),
            (
                "[1.2.3.4]:8080:80",
                r#"invalid --publish [1.2.3.4]:8080:80: bad IPv6 host address "1.2.3.4""#,
            ),
            (
                "[::1]8080:80",
                "invalid --publish [::1]8080:80: expected [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp]",
            ),
            (
                "[::1]:8080",
                "invalid --publish [::1]:8080: expected [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp]",
            ),
            (
                "a:b:c:d",
                "invalid --publish a:b:c:d: expected [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp]",
            ),
        ];
        for (text, message) in cases {
            let error = parse_publish(text, &net(), false).expect_err(text);
            assert_eq!(error, message, "{text}");
            assert!(!error.contains('\n'));
        }
        // With IPv6 enabled, a bracketed address passes but a port in it still must be good.
        assert_eq!(
            parse_publish("[::1]:0:80", &net(), true),
            Err("invalid --publish [::1]:0:80: host port 0 is not in 1..65535".to_string())
        );
    }
}
