//! Command line: slirp4netns's grammar and messages, turned into a validated [`Config`].
//!
//! Engines treat slirpnet as slirp4netns, so the grammar is GNU `getopt_long`'s (options
//! anywhere, bundled shorts, `--opt=VAL` or `--opt VAL`, unambiguous long prefixes) and
//! every error says exactly what slirp4netns 1.2 says where it has a message. clap does
//! the tokenising; its own error texts, help and exit codes never reach the user.

use std::ffi::{OsStr, OsString};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use clap::error::{ContextKind, ContextValue, ErrorKind};

use crate::config::{Config, NetConfig, Target};
use crate::stack::Limits;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    Run(Box<Config>),
    /// `-h`/`--help`: print [`usage`] on stdout, exit 0.
    Help,
    /// `-v`/`--version`: print [`version_text`] on stdout, exit 0.
    Version,
}

/// A command-line error. The caller prints the message on stderr and, if `show_usage`,
/// [`usage`] on stdout (as slirp4netns does), then exits 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    message: String,
    /// slirp4netns prints the usage after option errors but not after address errors
    /// (CIDR, MAC, outbound address), which it detects in a later phase.
    pub show_usage: bool,
}

impl CliError {
    fn with_usage(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            show_usage: true,
        }
    }

    fn without_usage(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            show_usage: false,
        }
    }

    /// The one-line message, without a trailing newline.
    pub fn message(&self) -> &str {
        &self.message
    }
}

const PROGRAM: &str = "slirpnet";
const DEFAULT_TAP_NAME: &str = "tap0";
const DEFAULT_MTU: u32 = 1500;
/// slirp4netns's limit: 65521 is the largest MTU libslirp accepts.
const MAX_MTU: u32 = 65521;
/// Prefixes longer than /25 cannot hold the guest address at net+100.
const MAX_PREFIX_LEN: u8 = 25;
/// `sizeof(sockaddr_un.sun_path)`: the path plus its terminating NUL must fit.
const UNIX_PATH_MAX: usize = 108;
/// IFNAMSIZ (16) including the terminating NUL.
const MAX_TAP_NAME_LEN: usize = 15;
/// The libslirp config version whose features slirpnet provides; engines read it from
/// `--version` to decide whether `--outbound-addr` and `--disable-dns` may be used.
const SLIRP_CONFIG_VERSION_MAX: u32 = 4;
/// `--busy-poll`: beyond 10 ms polling is spinning, not waiting for an answer.
const BUSY_POLL_MAX: u64 = 10_000;
const BUSY_POLL_DEFAULT: u128 = crate::busy_poll::DEFAULT_WINDOW.as_micros();

/// Every long option clap knows, hidden ones included, in the order getopt would list
/// them for an ambiguous prefix. Keep in sync with [`RawArgs`].
const LONG_OPTIONS: &[(&str, Option<char>)] = &[
    ("configure", Some('c')),
    ("exit-fd", Some('e')),
    ("ready-fd", Some('r')),
    ("mtu", Some('m')),
    ("cidr", None),
    ("cidr6", None),
    ("disable-host-loopback", None),
    ("no-host-loopback", None),
    ("netns-type", None),
    ("userns-path", None),
    ("api-socket", Some('a')),
    ("enable-ipv6", Some('6')),
    ("help", Some('h')),
    ("version", Some('v')),
    ("outbound-addr", None),
    ("outbound-addr6", None),
    ("disable-dns", None),
    ("enable-forward-splice", None),
    ("busy-poll", None),
    ("macaddress", None),
    ("target-type", None),
    ("enable-sandbox", None),
    ("enable-seccomp", None),
    ("limit", None),
];

/// The tokenised command line, before any validation. Values stay strings so that
/// validation (and its slirp4netns error texts) happens in one place, in [`build_config`].
///
/// Values may start with `-` (`-e -1`) because getopt takes the next word as the value
/// unconditionally; repeating an option keeps the last value, as with getopt.
#[derive(Parser, Debug)]
#[command(
    name = PROGRAM,
    disable_help_flag = true,
    disable_version_flag = true,
    args_override_self = true,
    infer_long_args = true
)]
struct RawArgs {
    #[arg(short = 'c', long)]
    configure: bool,
    #[arg(short = 'e', long, allow_hyphen_values = true)]
    exit_fd: Option<String>,
    #[arg(short = 'r', long, allow_hyphen_values = true)]
    ready_fd: Option<String>,
    #[arg(short = 'm', long, allow_hyphen_values = true)]
    mtu: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    cidr: Option<String>,
    /// New in slirpnet: slirp4netns's IPv6 prefix is fixed.
    #[arg(long, allow_hyphen_values = true)]
    cidr6: Option<String>,
    /// `--no-host-loopback` is the name slirp4netns briefly used before 0.3.0.
    #[arg(long, alias = "no-host-loopback")]
    disable_host_loopback: bool,
    #[arg(long, allow_hyphen_values = true)]
    netns_type: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    userns_path: Option<OsString>,
    #[arg(short = 'a', long, allow_hyphen_values = true)]
    api_socket: Option<OsString>,
    /// Repeatable, unlike every other option.
    #[arg(short = 'p', long, allow_hyphen_values = true, action = clap::ArgAction::Append)]
    publish: Vec<String>,
    #[arg(short = '6', long)]
    enable_ipv6: bool,
    #[arg(short = 'h', long)]
    help: bool,
    #[arg(short = 'v', long)]
    version: bool,
    #[arg(long, allow_hyphen_values = true)]
    outbound_addr: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    outbound_addr6: Option<String>,
    #[arg(long)]
    disable_dns: bool,
    /// New in slirpnet (src/splice.rs).
    #[arg(long)]
    enable_forward_splice: bool,
    /// New in slirpnet (src/busy_poll.rs): microseconds.
    #[arg(long, allow_hyphen_values = true)]
    busy_poll: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    macaddress: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    target_type: Option<String>,
    #[arg(long)]
    enable_sandbox: bool,
    /// The system call allow-list (src/sys/seccomp.rs).
    #[arg(long)]
    enable_seccomp: bool,
    /// `NAME=N`, repeatable: a resource bound (src/stack/limits.rs).
    #[arg(long, allow_hyphen_values = true, action = clap::ArgAction::Append)]
    limit: Vec<String>,
    /// `PID|PATH [TAPNAME]`, plus any extra words slirp4netns would warn about.
    positionals: Vec<OsString>,
    /// Run mode: everything after `--`.
    #[arg(last = true)]
    command: Vec<OsString>,
}

/// Parses a command line (`args[0]` is the program name). Warnings (a surplus
/// positional) are printed on stderr; everything else is left to the caller.
pub fn parse<I, T>(args: I) -> Result<Invocation, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let (invocation, warnings) = parse_with_warnings(args)?;
    for warning in warnings {
        eprintln!("{warning}");
    }
    Ok(invocation)
}

/// [`parse`] without side effects: the warnings are returned instead of printed.
fn parse_with_warnings<I, T>(args: I) -> Result<(Invocation, Vec<String>), CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let raw = RawArgs::try_parse_from(&args).map_err(|err| clap_error(&err, &args))?;
    if raw.help {
        return Ok((Invocation::Help, Vec::new()));
    }
    if raw.version {
        return Ok((Invocation::Version, Vec::new()));
    }
    let mut warnings = Vec::new();
    let config = build_config(raw, &mut warnings)?;
    Ok((Invocation::Run(Box::new(config)), warnings))
}

/// Validates in slirp4netns's phases: option values, then positionals (both with usage),
/// then addresses (without usage), so that a line with several mistakes usually reports
/// the one slirp4netns would.
fn build_config(raw: RawArgs, warnings: &mut Vec<String>) -> Result<Config, CliError> {
    let exit_fd = raw
        .exit_fd
        .as_deref()
        .map(|text| parse_fd(text, "exit-fd"))
        .transpose()?;
    let ready_fd = raw
        .ready_fd
        .as_deref()
        .map(|text| parse_fd(text, "ready-fd"))
        .transpose()?;
    let mtu = raw.mtu.as_deref().map(parse_mtu).transpose()?;
    if let Some(path) = &raw.userns_path {
        if !exists(Path::new(path)).is_ok_and(|found| found) {
            return Err(CliError::with_usage(format!(
                "userns path doesn't exist: {}",
                path.to_string_lossy()
            )));
        }
    }

    let run_mode = !raw.command.is_empty();
    // Run mode always configures the namespace it creates: nobody else could.
    let configure = raw.configure || run_mode;
    if raw.macaddress.is_some() && !configure {
        return Err(CliError::with_usage(
            "--macaddr cannot be specified when --configure or -c is not specified",
        ));
    }
    match raw.target_type.as_deref() {
        None | Some("netns") => {}
        Some("bess") => {
            return Err(CliError::without_usage(
                "--target-type=bess is not supported",
            ));
        }
        Some(_) => {
            return Err(CliError::with_usage(
                "--target-type must be either \"netns\" or \"bess\"",
            ));
        }
    }
    let netns_is_path = match raw.netns_type.as_deref() {
        None | Some("pid") => false,
        Some("path") => true,
        // slirp4netns 1.2 silently treats any other word as `path`; a typo deserves
        // an error instead.
        Some(_) => {
            return Err(CliError::with_usage(
                "--netns-type must be either \"pid\" or \"path\"",
            ));
        }
    };

    let (target, tap_name) = if run_mode {
        if !raw.positionals.is_empty() {
            return Err(CliError::with_usage(
                "PID|PATH and TAPNAME cannot be given with -- COMMAND",
            ));
        }
        if raw.netns_type.is_some() || raw.userns_path.is_some() {
            return Err(CliError::with_usage(
                "--netns-type and --userns-path cannot be used with -- COMMAND",
            ));
        }
        (Target::Command(raw.command), DEFAULT_TAP_NAME.to_string())
    } else {
        let mut positionals = raw.positionals.into_iter();
        let Some(target_word) = positionals.next() else {
            // slirp4netns prints only the usage here; one line saying what is missing
            // is kinder.
            return Err(CliError::with_usage(
                "missing PID|PATH (or -- COMMAND to run a command in a new namespace)",
            ));
        };
        let tap_word = positionals.next();
        if positionals.next().is_some() {
            // Not an error in slirp4netns either, "for preventing potential
            // compatibility issue".
            warnings.push("WARNING: too many arguments".to_string());
        }
        let target = if netns_is_path {
            parse_netns_path(target_word)?
        } else {
            Target::Pid(parse_pid(&target_word)?)
        };
        let tap_name = match tap_word {
            Some(word) => parse_tap_name(&word)?,
            None => DEFAULT_TAP_NAME.to_string(),
        };
        (target, tap_name)
    };

    let mut net = match raw.cidr.as_deref() {
        Some(text) => parse_cidr(text)?,
        None => NetConfig::default(),
    };
    if let Some(text) = raw.cidr6.as_deref() {
        if !raw.enable_ipv6 {
            return Err(CliError::without_usage("--cidr6 needs --enable-ipv6 (-6)"));
        }
        net = net.with_prefix6(parse_cidr6(text)?);
    }
    let outbound_addr = raw
        .outbound_addr
        .as_deref()
        .map(resolve_outbound_addr)
        .transpose()?;
    let outbound_addr6 = raw
        .outbound_addr6
        .as_deref()
        .map(resolve_outbound_addr6)
        .transpose()?;
    let mac = raw.macaddress.as_deref().map(parse_mac).transpose()?;
    let api_socket = raw.api_socket.map(PathBuf::from);
    if let Some(path) = &api_socket {
        if path.as_os_str().len() >= UNIX_PATH_MAX {
            return Err(CliError::without_usage(format!(
                "the specified API socket path is too long (>= {UNIX_PATH_MAX})"
            )));
        }
    }

    let publish = raw
        .publish
        .iter()
        .map(|spec| crate::api::parse_publish(spec, &net, raw.enable_ipv6))
        .collect::<Result<Vec<_>, String>>()
        .map_err(CliError::without_usage)?;
    let busy_poll = match raw.busy_poll.as_deref() {
        Some(text) => parse_busy_poll(text)?,
        None => crate::busy_poll::DEFAULT_WINDOW,
    };
    let mut limits = Limits::default();
    for spec in &raw.limit {
        limits.apply(spec).map_err(CliError::without_usage)?;
    }

    Ok(Config {
        publish,
        target,
        tap_name,
        configure,
        exit_fd,
        ready_fd,
        mtu: mtu.unwrap_or(DEFAULT_MTU),
        net,
        disable_host_loopback: raw.disable_host_loopback,
        userns_path: raw.userns_path.map(PathBuf::from),
        outbound_addr,
        outbound_addr6,
        disable_dns: raw.disable_dns,
        enable_forward_splice: raw.enable_forward_splice,
        busy_poll,
        mac,
        api_socket,
        enable_ipv6: raw.enable_ipv6,
        enable_seccomp: raw.enable_seccomp,
        enable_sandbox: raw.enable_sandbox,
        limits,
    })
}

/// Turns a clap error into getopt's wording, so that scripts and humans see what
/// slirp4netns would have printed.
fn clap_error(err: &clap::Error, args: &[OsString]) -> CliError {
    let invalid_arg = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(text)) => text.clone(),
        _ => String::new(),
    };
    // clap names an option as `--mtu <MTU>`; getopt names it `--mtu`.
    let option = invalid_arg
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let message = match err.kind() {
        ErrorKind::UnknownArgument => unknown_option_message(&option, args),
        ErrorKind::TooManyValues => {
            format!("{PROGRAM}: option '{option}' doesn't allow an argument")
        }
        // The only way to get an empty value past `allow_hyphen_values` is to end the
        // line (or the part before `--`) with an option that needs one.
        ErrorKind::InvalidValue | ErrorKind::NoEquals | ErrorKind::WrongNumberOfValues
            if option.starts_with("--") =>
        {
            missing_value_message(&option, args)
        }
        _ => {
            let rendered = err.render().to_string();
            let first_line = rendered.lines().next().unwrap_or_default();
            let text = first_line.strip_prefix("error: ").unwrap_or(first_line);
            format!("{PROGRAM}: {text}")
        }
    };
    CliError::with_usage(message)
}

/// getopt's texts for an unknown or ambiguous option.
fn unknown_option_message(option: &str, args: &[OsString]) -> String {
    if let Some(prefix) = option.strip_prefix("--") {
        let candidates: Vec<&str> = LONG_OPTIONS
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| name.starts_with(prefix))
            .collect();
        if candidates.len() > 1 {
            let possibilities: Vec<String> = candidates
                .iter()
                .map(|name| format!("'--{name}'"))
                .collect();
            return format!(
                "{PROGRAM}: option '{option}' is ambiguous; possibilities: {}",
                possibilities.join(" ")
            );
        }
        // getopt quotes the word as typed, `=VALUE` included.
        let typed = args
            .iter()
            .skip(1)
            .filter_map(|arg| arg.to_str())
            .find(|arg| {
                *arg == option
                    || arg
                        .strip_prefix(option)
                        .is_some_and(|rest| rest.starts_with('='))
            })
            .unwrap_or(option);
        format!("{PROGRAM}: unrecognized option '{typed}'")
    } else {
        let letter = option.strip_prefix('-').unwrap_or(option);
        format!("{PROGRAM}: invalid option -- '{letter}'")
    }
}

/// getopt's texts for an option given without its value: the long form names the
/// option in full, the short form names the letter, depending on what was typed.
fn missing_value_message(long_option: &str, args: &[OsString]) -> String {
    let before_separator = args
        .iter()
        .skip(1)
        .take_while(|arg| arg.as_os_str() != OsStr::new("--"));
    let typed_long = before_separator
        .last()
        .is_some_and(|arg| arg.as_bytes().starts_with(b"--"));
    let short = LONG_OPTIONS
        .iter()
        .find(|(name, _)| long_option.strip_prefix("--") == Some(*name))
        .and_then(|(_, short)| *short);
    match short {
        Some(letter) if !typed_long => {
            format!("{PROGRAM}: option requires an argument -- '{letter}'")
        }
        _ => format!("{PROGRAM}: option '{long_option}' requires an argument"),
    }
}

/// Like slirp4netns's `strtol` check: a whole decimal number, nothing after it.
fn parse_fd(text: &str, name: &str) -> Result<RawFd, CliError> {
    match text.parse::<RawFd>() {
        Ok(fd) if fd >= 0 => Ok(fd),
        _ => Err(CliError::with_usage(format!(
            "{name} must be a non-negative integer"
        ))),
    }
}

fn parse_mtu(text: &str) -> Result<u32, CliError> {
    match text.parse::<u32>() {
        Ok(mtu) if (1..=MAX_MTU).contains(&mtu) => Ok(mtu),
        _ => Err(CliError::with_usage(
            "MTU must be a positive integer (< 65522)",
        )),
    }
}

fn parse_pid(word: &OsStr) -> Result<i32, CliError> {
    match word.to_str().map(str::parse::<i32>) {
        Some(Ok(pid)) if pid > 0 => Ok(pid),
        _ => Err(CliError::with_usage("PID must be a positive integer")),
    }
}

/// slirp4netns checks the netns file exists at parse time and reports `perror`-style.
fn parse_netns_path(word: OsString) -> Result<Target, CliError> {
    let path = PathBuf::from(word);
    match exists(&path) {
        Ok(true) => Ok(Target::Path(path)),
        Ok(false) => Err(netns_path_error(nix::errno::Errno::ENOENT.desc())),
        Err(err) => {
            let reason = err
                .raw_os_error()
                .map(|code| nix::errno::Errno::from_raw(code).desc().to_string())
                .unwrap_or_else(|| err.to_string());
            Err(netns_path_error(&reason))
        }
    }
}

fn netns_path_error(reason: &str) -> CliError {
    CliError::with_usage(format!(
        "existing path expected when --netns-type=path: {reason}"
    ))
}

/// `access(path, F_OK)`: follows symlinks, like slirp4netns.
fn exists(path: &Path) -> std::io::Result<bool> {
    path.try_exists()
}

/// The kernel takes an interface name of at most 15 bytes; slirp4netns only finds out
/// when creating the TAP, we say so up front.
fn parse_tap_name(word: &OsStr) -> Result<String, CliError> {
    match word.to_str() {
        Some(name)
            if !name.is_empty()
                && name.len() <= MAX_TAP_NAME_LEN
                && !name.contains(['/', ':'])
                && !name.chars().any(char::is_whitespace) =>
        {
            Ok(name.to_string())
        }
        _ => Err(CliError::with_usage(format!(
            "TAPNAME must be a network interface name (1-{MAX_TAP_NAME_LEN} bytes, no '/', ':' or spaces): {}",
            word.to_string_lossy()
        ))),
    }
}

/// slirp4netns's rules: the text must match `^(([0-9]{1,3}\.){3}[0-9]{1,3})/([0-9]{1,2})$`,
/// the address must parse, the prefix must be 1..=25 and the address must have no host
/// bits.
fn parse_cidr(text: &str) -> Result<NetConfig, CliError> {
    let invalid = || CliError::without_usage(format!("invalid CIDR: {text}"));
    let (address_text, prefix_text) = text.split_once('/').ok_or_else(invalid)?;
    let is_digits = |part: &str, max_len: usize| {
        (1..=max_len).contains(&part.len()) && part.bytes().all(|byte| byte.is_ascii_digit())
    };
    let octets: Vec<&str> = address_text.split('.').collect();
    if octets.len() != 4
        || !octets.iter().all(|octet| is_digits(octet, 3))
        || !is_digits(prefix_text, 2)
    {
        return Err(invalid());
    }
    // Rust rejects what inet_pton rejects here: octets above 255 and leading zeros.
    let network: Ipv4Addr = address_text
        .parse()
        .map_err(|_| CliError::without_usage(format!("invalid network address: {address_text}")))?;
    let prefix_len: u8 = prefix_text.parse().map_err(|_| invalid())?;
    if !(1..=MAX_PREFIX_LEN).contains(&prefix_len) {
        return Err(CliError::without_usage(format!(
            "prefix length needs to be 1-{MAX_PREFIX_LEN}"
        )));
    }
    let net = NetConfig::new(network, prefix_len);
    if u32::from(network) & u32::from(net.netmask()) != u32::from(network) {
        return Err(CliError::without_usage(
            "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24",
        ));
    }
    Ok(net)
}

/// `--cidr6`: an IPv6 network address with prefix length 64 (SLAAC needs a /64), unicast and
/// neither link-local nor loopback.
fn parse_cidr6(text: &str) -> Result<Ipv6Addr, CliError> {
    let (address_text, prefix_text) = text
        .split_once('/')
        .ok_or_else(|| CliError::without_usage(format!("invalid CIDR6: {text}")))?;
    let network: Ipv6Addr = address_text.parse().map_err(|_| {
        CliError::without_usage(format!("invalid IPv6 network address: {address_text}"))
    })?;
    if prefix_text != "64" {
        return Err(CliError::without_usage(format!(
            "IPv6 prefix length needs to be 64 (SLAAC), not {prefix_text}"
        )));
    }
    if u128::from(network) & u128::from(u64::MAX) != 0 {
        return Err(CliError::without_usage(
            "CIDR6 needs to be a network address like fd00::/64, not like fd00::100/64",
        ));
    }
    let first = network.segments()[0];
    if network.is_unspecified() || first >= 0xff00 || first & 0xffc0 == 0xfe80 {
        return Err(CliError::without_usage(format!(
            "CIDR6 needs to be a unicast prefix (a unique local fd00::/8 one is best), not {text}"
        )));
    }
    Ok(network)
}

/// An IPv4 address, or the name of an interface whose first IPv4 address to use. The
/// name is resolved now, as slirp4netns does, so a typo fails at start-up.
fn resolve_outbound_addr(text: &str) -> Result<Ipv4Addr, CliError> {
    if let Ok(address) = text.parse::<Ipv4Addr>() {
        return Ok(address);
    }
    interface_ipv4_address(text).ok_or_else(|| {
        CliError::without_usage("outbound-addr has to be valid ipv4 address or interface name.")
    })
}

/// `--outbound-addr6`: an IPv6 address, or an interface whose first global IPv6 address to use.
fn resolve_outbound_addr6(text: &str) -> Result<Ipv6Addr, CliError> {
    if let Ok(address) = text.parse::<Ipv6Addr>() {
        return Ok(address);
    }
    interface_ipv6_address(text).ok_or_else(|| {
        CliError::without_usage("outbound-addr6 has to be valid ipv6 address or interface name.")
    })
}

fn interface_ipv6_address(name: &str) -> Option<Ipv6Addr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|interface| interface.interface_name == name)
        .filter_map(|interface| {
            interface
                .address
                .as_ref()
                .and_then(|address| address.as_sockaddr_in6())
                .map(|address| address.ip())
        })
        // A link-local source cannot reach anything beyond the link.
        .find(|address| address.segments()[0] & 0xffc0 != 0xfe80)
}

fn interface_ipv4_address(name: &str) -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|interface| interface.interface_name == name)
        .find_map(|interface| {
            interface
                .address
                .as_ref()
                .and_then(|address| address.as_sockaddr_in())
                .map(|address| address.ip())
        })
}

/// `--busy-poll`: whole microseconds, at most [`BUSY_POLL_MAX`].
fn parse_busy_poll(text: &str) -> Result<Duration, CliError> {
    match text.parse::<u64>() {
        Ok(us) if us <= BUSY_POLL_MAX => Ok(Duration::from_micros(us)),
        _ => Err(CliError::without_usage(format!(
            "--busy-poll expects microseconds from 0 to {BUSY_POLL_MAX}, got \"{text}\""
        ))),
    }
}

/// Exactly six `:`-separated bytes of one or two hex digits. slirp4netns is laxer
/// (**bug**: it accepts five bytes and `sscanf("%x")` leftovers like `2zz`); its error
/// texts are kept.
fn parse_mac(text: &str) -> Result<[u8; 6], CliError> {
    let invalid = || CliError::without_usage(format!("\"{text}\" is an invalid MAC address."));
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() > 6 {
        return Err(CliError::without_usage(format!(
            "\"{text}\" is an invalid MAC address.  Is it too long?"
        )));
    }
    if parts.len() < 6 {
        return Err(invalid());
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(&parts) {
        let is_hex = (1..=2).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex {
            return Err(invalid());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
    }
    Ok(mac)
}

/// The `--help` text. Laid out like slirp4netns's (engines grep it for whole option
/// names); options that do not work yet are left out so engines do not turn them on.
pub fn usage() -> String {
    format!(
        "\
Usage: {PROGRAM} [OPTION]... PID|PATH [TAPNAME]
       {PROGRAM} [OPTION]... -- COMMAND [ARG]...
User-mode networking for unprivileged network namespaces.

{PROGRAM} is a drop-in replacement for slirp4netns. It creates a TAP device (default
name {DEFAULT_TAP_NAME}) in the network namespace of process PID (or the netns file PATH) and
carries its traffic to the host network through its own user-space TCP/IP stack, as
the unprivileged user running it. In the second form it creates a new user and network
namespace, runs COMMAND there with the network configured (as with -c), and exits with
COMMAND's status.

-c, --configure          bring up the interface (lo, TAP, MTU, MAC, address, default route)
-e, --exit-fd=FD         specify the FD for terminating {PROGRAM} (exit when it hangs up)
-r, --ready-fd=FD        specify the FD to write to when the network is configured
-m, --mtu=MTU            specify MTU (default={DEFAULT_MTU}, max={MAX_MTU})
-6, --enable-ipv6        enable IPv6 (router advertisements for SLAAC: fd00::/64, gateway
                         fd00::2, DNS fd00::3; IPv6 forwards)
-a, --api-socket=PATH    specify API socket path (shorter than {UNIX_PATH_MAX} bytes)
-p, --publish=SPEC       publish a port: [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|udp]
                         (repeatable; HOSTADDR defaults to 0.0.0.0, IPv6 in brackets)
--cidr=CIDR              specify network address CIDR (default=10.0.2.0/24, prefix 1-{MAX_PREFIX_LEN})
--cidr6=PREFIX/64        specify the IPv6 prefix (default=fd00::/64; needs -6)
--disable-host-loopback  prohibit connecting to 127.0.0.1:* on the host namespace
--netns-type=TYPE        specify network namespace type ([path|pid], default=pid)
--userns-path=PATH       specify user namespace path (default: that of PID)
--outbound-addr=ADDR     bind outgoing connections to this IPv4 address or interface's address
--outbound-addr6=ADDR    bind outgoing connections to this IPv6 address or interface's address
--disable-dns            disables 10.0.2.3 (or configured internal ip) to host dns redirect
--enable-forward-splice  splice forwarded TCP connections from host loopback to a socket
                         inside the namespace, skipping the TAP: less CPU, but the guest sees
                         them from its own address instead of from the gateway
--busy-poll=USEC         after small exchanges, poll this long for the next before sleeping:
                         lower latency for a little CPU (default={BUSY_POLL_DEFAULT}, 0=never, max={BUSY_POLL_MAX})
--macaddress=MAC         specify the MAC address of the TAP (only valid with -c)
--target-type=TYPE       specify the target type ([netns], default=netns)
--enable-seccomp         enable seccomp to limit syscalls (an allow-list; see docs/security.md)
--enable-sandbox         after start-up, pivot into an empty root, drop capabilities
                         (all but CAP_NET_BIND_SERVICE) and set no-new-privs
--limit=NAME=N           change a resource bound, e.g. tcp-flows=8192 (repeatable; see docs/security.md)
-h, --help               show this help and exit
-v, --version            show version and exit
"
    )
}

/// The `--version` text, machine-readable like slirp4netns's (and runc's).
pub fn version_text() -> String {
    let commit = option_env!("SLIRPNET_COMMIT").unwrap_or("unknown");
    format!(
        "{PROGRAM} version {}\ncommit: {commit}\nlibslirp: none (slirpnet's own stack)\nSLIRP_CONFIG_VERSION_MAX: {SLIRP_CONFIG_VERSION_MAX}\n",
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, CliError> {
        let line = std::iter::once("slirpnet").chain(args.iter().copied());
        match parse_with_warnings(line)? {
            (Invocation::Run(config), _) => Ok(*config),
            (other, _) => panic!("expected a run, got {other:?}"),
        }
    }

    fn error(args: &[&str]) -> CliError {
        match run(args) {
            Err(err) => err,
            Ok(config) => panic!("expected an error for {args:?}, got {config:?}"),
        }
    }

    fn assert_error(args: &[&str], message: &str, show_usage: bool) {
        let err = error(args);
        assert_eq!(err.to_string(), message, "message for {args:?}");
        assert_eq!(err.show_usage, show_usage, "show_usage for {args:?}");
    }

    #[test]
    fn defaults() {
        let config = run(&["1234"]).unwrap();
        assert_eq!(config.target, Target::Pid(1234));
        assert_eq!(config.tap_name, "tap0");
        assert!(!config.configure);
        assert_eq!(config.exit_fd, None);
        assert_eq!(config.ready_fd, None);
        assert_eq!(config.mtu, 1500);
        assert_eq!(config.net.network, Ipv4Addr::new(10, 0, 2, 0));
        assert_eq!(config.net.prefix_len, 24);
        assert_eq!(config.net.gateway, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(config.net.dns, Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!(config.net.dhcp_start, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(config.net.dhcp_end, Ipv4Addr::new(10, 0, 2, 30));
        assert_eq!(config.net.guest, Ipv4Addr::new(10, 0, 2, 100));
        assert!(!config.disable_host_loopback);
        assert_eq!(config.userns_path, None);
        assert_eq!(config.outbound_addr, None);
        assert!(!config.disable_dns);
        assert_eq!(config.mac, None);
        assert_eq!(config.api_socket, None);
        assert!(!config.enable_ipv6);
        assert!(!config.enable_seccomp);
        assert_eq!(config.limits, Limits::default());
    }

    #[test]
    fn podman_command_line() {
        let config = run(&[
            "--disable-host-loopback",
            "--mtu=65520",
            "--enable-ipv6",
            "-c",
            "-e",
            "3",
            "-r",
            "4",
            "--api-socket",
            "/run/user/1000/netns/x.net",
            "--netns-type=path",
            "/proc/self/ns/net",
            "tap0",
        ])
        .unwrap();
        assert_eq!(config.target, Target::Path("/proc/self/ns/net".into()));
        assert_eq!(config.tap_name, "tap0");
        assert!(config.configure && config.disable_host_loopback && config.enable_ipv6);
        assert_eq!(config.mtu, 65520);
        assert_eq!(config.exit_fd, Some(3));
        assert_eq!(config.ready_fd, Some(4));
        assert_eq!(
            config.api_socket,
            Some(PathBuf::from("/run/user/1000/netns/x.net"))
        );
    }

    #[test]
    fn rootlesskit_command_line() {
        let config = run(&[
            "--mtu",
            "65520",
            "-r",
            "3",
            "--cidr",
            "10.0.3.0/24",
            "4321",
            "tap0",
        ])
        .unwrap();
        assert_eq!(config.target, Target::Pid(4321));
        assert!(!config.configure);
        assert_eq!(config.net.gateway, Ipv4Addr::new(10, 0, 3, 2));
    }

    #[test]
    fn options_after_positionals() {
        let config = run(&["-c", "1234", "--api-socket", "/tmp/s", "tap1"]).unwrap();
        assert_eq!(config.target, Target::Pid(1234));
        assert_eq!(config.tap_name, "tap1");
        assert!(config.configure);
        assert_eq!(config.api_socket, Some(PathBuf::from("/tmp/s")));
        let config = run(&["1234", "tap1", "--mtu", "9000", "-6"]).unwrap();
        assert_eq!(config.mtu, 9000);
        assert!(config.enable_ipv6);
    }

    #[test]
    fn equals_and_separate_values_agree() {
        for (joined, separate) in [
            (vec!["--mtu=9000", "1"], vec!["--mtu", "9000", "1"]),
            (
                vec!["--cidr=10.1.0.0/16", "1"],
                vec!["--cidr", "10.1.0.0/16", "1"],
            ),
            (vec!["--exit-fd=5", "1"], vec!["--exit-fd", "5", "1"]),
            (vec!["--ready-fd=6", "1"], vec!["--ready-fd", "6", "1"]),
            (
                vec!["--api-socket=/tmp/a", "1"],
                vec!["--api-socket", "/tmp/a", "1"],
            ),
            (
                vec!["-c", "--macaddress=02:00:00:00:00:01", "1"],
                vec!["-c", "--macaddress", "02:00:00:00:00:01", "1"],
            ),
            (
                vec!["--target-type=netns", "1"],
                vec!["--target-type", "netns", "1"],
            ),
            (
                vec!["--netns-type=pid", "1"],
                vec!["--netns-type", "pid", "1"],
            ),
        ] {
            assert_eq!(run(&joined).unwrap(), run(&separate).unwrap(), "{joined:?}");
        }
    }

    #[test]
    fn short_options_bundle_and_take_attached_values() {
        let config = run(&["-c6", "-m1500", "-e3", "-r", "4", "1"]).unwrap();
        assert!(config.configure && config.enable_ipv6);
        assert_eq!(config.mtu, 1500);
        assert_eq!(config.exit_fd, Some(3));
        assert_eq!(config.ready_fd, Some(4));
        let config = run(&["-c6m9000", "1"]).unwrap();
        assert!(config.configure && config.enable_ipv6);
        assert_eq!(config.mtu, 9000);
        assert_eq!(run(&["-m", "1400", "1"]).unwrap().mtu, 1400);
    }

    #[test]
    fn unambiguous_long_prefixes_are_accepted() {
        let config = run(&["--conf", "--disable-h", "1"]).unwrap();
        assert!(config.configure && config.disable_host_loopback);
    }

    #[test]
    fn repeated_option_keeps_the_last_value() {
        assert_eq!(run(&["-m", "1400", "--mtu=9000", "1"]).unwrap().mtu, 9000);
        assert!(run(&["-c", "-c", "1"]).unwrap().configure);
    }

    #[test]
    fn flags_set_their_fields() {
        let config = run(&["--disable-dns", "--disable-host-loopback", "1"]).unwrap();
        assert!(config.disable_dns && config.disable_host_loopback);
        assert!(
            run(&["--no-host-loopback", "1"])
                .unwrap()
                .disable_host_loopback
        );
    }

    #[test]
    fn help_and_version() {
        for flag in ["-h", "--help"] {
            let (invocation, _) = parse_with_warnings(["slirpnet", flag]).unwrap();
            assert_eq!(invocation, Invocation::Help);
        }
        for flag in ["-v", "--version"] {
            let (invocation, _) = parse_with_warnings(["slirpnet", flag]).unwrap();
            assert_eq!(invocation, Invocation::Version);
        }
        // Help wins over a missing or invalid positional.
        let (invocation, _) = parse_with_warnings(["slirpnet", "-c", "--help"]).unwrap();
        assert_eq!(invocation, Invocation::Help);
    }

    #[test]
    fn help_contains_every_probed_option() {
        let help = usage();
        let words: Vec<&str> = help
            .split(|c: char| c.is_whitespace() || c == '=' || c == ',')
            .collect();
        for probed in [
            "--netns-type",
            "--enable-ipv6",
            "--cidr",
            "--disable-host-loopback",
            "--api-socket",
            "--mtu",
            "--outbound-addr",
            "--disable-dns",
            "--userns-path",
            "--macaddress",
            "--configure",
            "--exit-fd",
            "--ready-fd",
            "--enable-seccomp",
            "--enable-sandbox",
            "--limit",
        ] {
            assert!(words.contains(&probed), "--help lacks {probed}");
        }
        assert!(help.starts_with("Usage: slirpnet [OPTION]... PID|PATH [TAPNAME]\n"));
        assert!(help.contains("-- COMMAND"));
    }

    #[test]
    fn help_does_not_advertise_unimplemented_features() {
        assert!(!usage().contains("bess"));
    }

    #[test]
    fn version_lines() {
        let text = version_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            format!("slirpnet version {}", env!("CARGO_PKG_VERSION"))
        );
        assert!(lines[1].starts_with("commit: "));
        assert_eq!(lines[2], "libslirp: none (slirpnet's own stack)");
        assert!(lines.contains(&"SLIRP_CONFIG_VERSION_MAX: 4"));
    }

    #[test]
    fn mtu_range() {
        assert_eq!(run(&["-m", "1", "1"]).unwrap().mtu, 1);
        assert_eq!(run(&["-m", "65521", "1"]).unwrap().mtu, 65521);
        for bad in ["65522", "0", "-5", "abc", "", "1500x", "99999999999"] {
            assert_error(
                &["-m", bad, "1"],
                "MTU must be a positive integer (< 65522)",
                true,
            );
        }
    }

    #[test]
    fn fd_errors() {
        for bad in ["abc", "-1", ""] {
            assert_error(
                &["-e", bad, "1"],
                "exit-fd must be a non-negative integer",
                true,
            );
            assert_error(
                &["-r", bad, "1"],
                "ready-fd must be a non-negative integer",
                true,
            );
        }
        assert_eq!(run(&["-e", "0", "1"]).unwrap().exit_fd, Some(0));
    }

    #[test]
    fn cidr_derivation() {
        let net = run(&["--cidr=192.168.5.0/24", "1"]).unwrap().net;
        assert_eq!(net.network, Ipv4Addr::new(192, 168, 5, 0));
        assert_eq!(net.prefix_len, 24);
        assert_eq!(net.gateway, Ipv4Addr::new(192, 168, 5, 2));
        assert_eq!(net.dns, Ipv4Addr::new(192, 168, 5, 3));
        assert_eq!(net.dhcp_start, Ipv4Addr::new(192, 168, 5, 15));
        assert_eq!(net.dhcp_end, Ipv4Addr::new(192, 168, 5, 30));
        assert_eq!(net.guest, Ipv4Addr::new(192, 168, 5, 100));
        let net = run(&["--cidr=10.0.2.128/25", "1"]).unwrap().net;
        assert_eq!(net.prefix_len, 25);
        assert_eq!(net.guest, Ipv4Addr::new(10, 0, 2, 228));
        assert_eq!(run(&["--cidr=10.0.0.0/8", "1"]).unwrap().net.prefix_len, 8);
        assert_eq!(run(&["--cidr=0.0.0.0/1", "1"]).unwrap().net.prefix_len, 1);
    }

    #[test]
    fn cidr_errors() {
        let not_network =
            "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24";
        assert_error(&["--cidr", "10.0.2.100/24", "1"], not_network, false);
        assert_error(&["--cidr", "10.0.2.1/24", "1"], not_network, false);
        let prefix = "prefix length needs to be 1-25";
        assert_error(&["--cidr", "10.0.2.0/26", "1"], prefix, false);
        assert_error(&["--cidr", "10.0.2.0/0", "1"], prefix, false);
        assert_error(&["--cidr", "10.0.2.0/33", "1"], prefix, false);
        for bad in [
            "bogus",
            "10.0.2.0",
            "10.0.2.0/024",
            "10.0.2/24",
            "10.0.2.0.0/24",
            "1000.0.2.0/24",
            "10.0.2.0/",
            "10.0.2.0/24/1",
            " 10.0.2.0/24",
            "",
        ] {
            assert_error(
                &["--cidr", bad, "1"],
                &format!("invalid CIDR: {bad}"),
                false,
            );
        }
        assert_error(
            &["--cidr", "300.0.2.0/24", "1"],
            "invalid network address: 300.0.2.0",
            false,
        );
        assert_error(
            &["--cidr", "10.0.2.00/24", "1"],
            "invalid network address: 10.0.2.00",
            false,
        );
    }

    #[test]
    fn pid_errors() {
        for bad in ["abc", "0", "12abc", "99999999999", "1.5"] {
            assert_error(&[bad, "tap0"], "PID must be a positive integer", true);
        }
        // getopt reads `-5` as an option, so slirp4netns says so too.
        assert_error(&["-5", "tap0"], "slirpnet: invalid option -- '5'", true);
    }

    #[test]
    fn missing_pid() {
        assert_error(
            &[],
            "missing PID|PATH (or -- COMMAND to run a command in a new namespace)",
            true,
        );
        assert_error(
            &["-c", "--mtu", "9000"],
            "missing PID|PATH (or -- COMMAND to run a command in a new namespace)",
            true,
        );
    }

    #[test]
    fn surplus_positional_is_a_warning() {
        let (invocation, warnings) =
            parse_with_warnings(["slirpnet", "1", "tap1", "extra"]).unwrap();
        let Invocation::Run(config) = invocation else {
            panic!("expected a run");
        };
        assert_eq!(config.tap_name, "tap1");
        assert_eq!(warnings, vec!["WARNING: too many arguments".to_string()]);
        let (_, warnings) = parse_with_warnings(["slirpnet", "1", "tap1"]).unwrap();
        assert!(warnings.is_empty());
    }

    #[test]
    fn tap_name_must_be_an_interface_name() {
        let message =
            "TAPNAME must be a network interface name (1-15 bytes, no '/', ':' or spaces): ";
        assert_eq!(
            run(&["1", "fifteen-bytes-x"]).unwrap().tap_name,
            "fifteen-bytes-x"
        );
        for bad in ["sixteen-bytes-xx", "", "a/b", "a:b", "a b"] {
            assert_error(&["1", bad], &format!("{message}{bad}"), true);
        }
    }

    #[test]
    fn netns_type() {
        assert_eq!(
            run(&["--netns-type=pid", "7"]).unwrap().target,
            Target::Pid(7)
        );
        assert_eq!(
            run(&["--netns-type=path", "/proc/self/ns/net", "tap3"])
                .unwrap()
                .target,
            Target::Path("/proc/self/ns/net".into())
        );
        assert_error(
            &["--netns-type=path", "/nonexistent/netns", "tap0"],
            "existing path expected when --netns-type=path: No such file or directory",
            true,
        );
        assert_error(
            &["--netns-type=tapfd", "3"],
            "--netns-type must be either \"pid\" or \"path\"",
            true,
        );
    }

    #[test]
    fn userns_path() {
        let config = run(&["--userns-path=/proc/self/ns/user", "1"]).unwrap();
        assert_eq!(
            config.userns_path,
            Some(PathBuf::from("/proc/self/ns/user"))
        );
        assert_error(
            &["--userns-path", "/nonexistent/userns", "1"],
            "userns path doesn't exist: /nonexistent/userns",
            true,
        );
    }

    #[test]
    fn api_socket_length() {
        let longest = format!("/{}", "a".repeat(106));
        assert_eq!(longest.len(), 107);
        let config = run(&["-a", &longest, "1"]).unwrap();
        assert_eq!(config.api_socket, Some(PathBuf::from(&longest)));
        let too_long = format!("/{}", "a".repeat(107));
        assert_error(
            &["-a", &too_long, "1"],
            "the specified API socket path is too long (>= 108)",
            false,
        );
    }

    #[test]
    fn outbound_addr() {
        let config = run(&["--outbound-addr=192.0.2.7", "1"]).unwrap();
        assert_eq!(config.outbound_addr, Some(Ipv4Addr::new(192, 0, 2, 7)));
        // Every Linux network namespace has a loopback interface.
        let config = run(&["--outbound-addr", "lo", "1"]).unwrap();
        assert_eq!(config.outbound_addr, Some(Ipv4Addr::LOCALHOST));
        assert_error(
            &["--outbound-addr", "no-such-if0", "1"],
            "outbound-addr has to be valid ipv4 address or interface name.",
            false,
        );
    }

    #[test]
    fn macaddress() {
        let config = run(&["-c", "--macaddress", "02:aB:0:ff:10:1", "1"]).unwrap();
        assert_eq!(config.mac, Some([0x02, 0xab, 0x00, 0xff, 0x10, 0x01]));
        assert_error(
            &["--macaddress", "02:00:00:00:00:01", "1"],
            "--macaddr cannot be specified when --configure or -c is not specified",
            true,
        );
        for bad in [
            "zz",
            "02:00:00:00:00",
            "2zz:00:00:00:00:01",
            "02:00:00:00:00:",
            "0x2:0:0:0:0:1",
            "100:0:0:0:0:1",
            "",
        ] {
            assert_error(
                &["-c", "--macaddress", bad, "1"],
                &format!("\"{bad}\" is an invalid MAC address."),
                false,
            );
        }
        assert_error(
            &["-c", "--macaddress", "02:00:00:00:00:01:02", "1"],
            "\"02:00:00:00:00:01:02\" is an invalid MAC address.  Is it too long?",
            false,
        );
    }

    #[test]
    fn target_type() {
        assert_eq!(
            run(&["--target-type=netns", "1"]).unwrap().target,
            Target::Pid(1)
        );
        assert_error(
            &["--target-type=bess", "/tmp/bess.sock"],
            "--target-type=bess is not supported",
            false,
        );
        assert_error(
            &["--target-type=foo", "1"],
            "--target-type must be either \"netns\" or \"bess\"",
            true,
        );
    }

    #[test]
    fn outbound_addr6() {
        let config = run(&["--outbound-addr6=2001:db8::7", "1"]).unwrap();
        assert_eq!(config.outbound_addr6, Some("2001:db8::7".parse().unwrap()));
        assert_eq!(
            run(&["--outbound-addr6=lo", "1"]).unwrap().outbound_addr6,
            Some(Ipv6Addr::LOCALHOST)
        );
        assert_error(
            &["--outbound-addr6=10.0.0.1", "1"],
            "outbound-addr6 has to be valid ipv6 address or interface name.",
            false,
        );
    }

    #[test]
    fn cidr6_sets_the_prefix_and_its_addresses() {
        let net = run(&["-6", "--cidr6=fd12:3456:789a:1::/64", "1"])
            .unwrap()
            .net;
        assert_eq!(
            net.prefix6,
            "fd12:3456:789a:1::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            net.gateway6(),
            "fd12:3456:789a:1::2".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            net.dns6(),
            "fd12:3456:789a:1::3".parse::<Ipv6Addr>().unwrap()
        );
        let default = run(&["-6", "1"]).unwrap().net;
        assert_eq!(default.gateway6(), "fd00::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(default.dns6(), "fd00::3".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn cidr6_errors() {
        assert_error(
            &["-6", "--cidr6=fd00::", "1"],
            "invalid CIDR6: fd00::",
            false,
        );
        assert_error(
            &["-6", "--cidr6=fd00::zz/64", "1"],
            "invalid IPv6 network address: fd00::zz",
            false,
        );
        assert_error(
            &["-6", "--cidr6=fd00::/48", "1"],
            "IPv6 prefix length needs to be 64 (SLAAC), not 48",
            false,
        );
        assert_error(
            &["-6", "--cidr6=fd00::100/64", "1"],
            "CIDR6 needs to be a network address like fd00::/64, not like fd00::100/64",
            false,
        );
        for bad in ["fe80::/64", "ff02::/64", "::/64"] {
            let text = format!("--cidr6={bad}");
            let expected = format!(
                "CIDR6 needs to be a unicast prefix (a unique local fd00::/8 one is best), not {bad}"
            );
            assert_error(&["-6", &text, "1"], &expected, false);
        }
        assert_error(
            &["--cidr6=fd00:1::/64", "1"],
            "--cidr6 needs --enable-ipv6 (-6)",
            false,
        );
    }

    #[test]
    fn enable_seccomp_is_accepted() {
        assert!(!run(&["1"]).unwrap().enable_seccomp);
        assert!(run(&["--enable-seccomp", "1"]).unwrap().enable_seccomp);
        // A unique prefix, as getopt_long takes it.
        assert!(run(&["--enable-sec", "1"]).unwrap().enable_seccomp);
        let both = run(&["--enable-seccomp", "--enable-sandbox", "1"]).unwrap();
        assert!(both.enable_seccomp && both.enable_sandbox);
        assert_error(
            &["--enable-seccomp=yes", "1"],
            "slirpnet: option '--enable-seccomp' doesn't allow an argument",
            true,
        );
    }

    #[test]
    fn busy_poll_takes_microseconds_up_to_ten_milliseconds() {
        assert_eq!(run(&["1"]).unwrap().busy_poll, Duration::from_micros(200));
        assert_eq!(
            run(&["--busy-poll=0", "1"]).unwrap().busy_poll,
            Duration::ZERO
        );
        assert_eq!(
            run(&["--busy-poll", "10000", "1"]).unwrap().busy_poll,
            Duration::from_millis(10)
        );
        for bad in ["10001", "-1", "50us", ""] {
            assert_error(
                &["--busy-poll", bad, "1"],
                &format!("--busy-poll expects microseconds from 0 to 10000, got \"{bad}\""),
                false,
            );
        }
    }

    #[test]
    fn limit_is_repeatable_and_changes_only_what_it_names() {
        let config = run(&[
            "--limit",
            "tcp-flows=8192",
            "--limit=api-clients=4",
            "1",
            "--lim",
            "flow-buffer=64K",
        ])
        .unwrap();
        assert_eq!(
            config.limits,
            Limits {
                tcp_flows: 8192,
                api_clients: 4,
                flow_buffer: 64 << 10,
                ..Limits::default()
            }
        );
        // The same bound twice: the last one counts, as with every other option.
        let config = run(&["--limit=udp-flows=5", "--limit=udp-flows=7", "1"]).unwrap();
        assert_eq!(config.limits.udp_flows, 7);
    }

    #[test]
    fn limit_errors_are_one_line() {
        assert_error(
            &["--limit", "tcp-flows", "1"],
            "--limit expects NAME=N, got \"tcp-flows\"",
            false,
        );
        assert_error(
            &["--limit=bogus=1", "1"],
            "--limit: unknown name \"bogus\" (one of tcp-flows, pending-connects, udp-flows, \
             ping-flows, forward-connections, api-clients, flow-buffer)",
            false,
        );
        assert_error(
            &["--limit=tcp-flows=0", "1"],
            "--limit tcp-flows must be an integer from 1 to 1048576, got \"0\"",
            false,
        );
        assert_error(
            &["--limit=ping-flows=-3", "1"],
            "--limit ping-flows must be an integer from 1 to 1048576, got \"-3\"",
            false,
        );
        assert_error(
            &["--limit=flow-buffer=1", "1"],
            "--limit flow-buffer must be a byte count from 4096 to 1073741824 \
             (a K, M or G suffix multiplies by 1024), got \"1\"",
            false,
        );
        assert_error(
            &["1", "--limit"],
            "slirpnet: option '--limit' requires an argument",
            true,
        );
        for args in [&["--limit=tcp-flows=0", "1"][..], &["--limit=x", "1"]] {
            assert_eq!(error(args).message().lines().count(), 1, "{args:?}");
        }
    }

    #[test]
    fn getopt_style_errors() {
        assert_error(
            &["--bogus", "1"],
            "slirpnet: unrecognized option '--bogus'",
            true,
        );
        assert_error(
            &["--bogus=3", "1"],
            "slirpnet: unrecognized option '--bogus=3'",
            true,
        );
        assert_error(&["-x", "1"], "slirpnet: invalid option -- 'x'", true);
        assert_error(&["-cx", "1"], "slirpnet: invalid option -- 'x'", true);
        assert_error(
            &["--mtu"],
            "slirpnet: option '--mtu' requires an argument",
            true,
        );
        assert_error(
            &["--mt"],
            "slirpnet: option '--mtu' requires an argument",
            true,
        );
        assert_error(
            &["-c", "-m"],
            "slirpnet: option requires an argument -- 'm'",
            true,
        );
        assert_error(
            &["1", "--cidr"],
            "slirpnet: option '--cidr' requires an argument",
            true,
        );
        assert_error(
            &["--configure=yes", "1"],
            "slirpnet: option '--configure' doesn't allow an argument",
            true,
        );
        assert_error(
            &["--disable", "1"],
            "slirpnet: option '--disable' is ambiguous; possibilities: '--disable-host-loopback' '--disable-dns'",
            true,
        );
    }

    #[test]
    fn run_mode() {
        let config = run(&["--mtu", "9000", "--", "sh", "-c", "ip addr"]).unwrap();
        assert_eq!(
            config.target,
            Target::Command(vec!["sh".into(), "-c".into(), "ip addr".into()])
        );
        assert_eq!(config.tap_name, "tap0");
        assert!(config.configure);
        assert_eq!(config.mtu, 9000);
        // Options of the command are the command's, not ours.
        let config = run(&["--", "ping", "-c", "1", "--bogus"]).unwrap();
        assert_eq!(
            config.target,
            Target::Command(vec![
                "ping".into(),
                "-c".into(),
                "1".into(),
                "--bogus".into()
            ])
        );
        // -c is implied, so a MAC is allowed.
        let config = run(&["--macaddress=02:00:00:00:00:09", "--", "true"]).unwrap();
        assert_eq!(config.mac, Some([2, 0, 0, 0, 0, 9]));
    }

    #[test]
    fn run_mode_rejects_a_target() {
        assert_error(
            &["1234", "--", "sh"],
            "PID|PATH and TAPNAME cannot be given with -- COMMAND",
            true,
        );
        assert_error(
            &["--netns-type=path", "--", "sh"],
            "--netns-type and --userns-path cannot be used with -- COMMAND",
            true,
        );
    }

    #[test]
    fn non_utf8_values_are_errors_not_panics() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff]);
        let err = parse_with_warnings([OsString::from("slirpnet"), "--mtu".into(), bad.clone()])
            .unwrap_err();
        assert!(err.show_usage);
        assert!(err.to_string().starts_with("slirpnet: "));
        let err = parse_with_warnings([OsString::from("slirpnet"), bad]).unwrap_err();
        assert_eq!(err.to_string(), "PID must be a positive integer");
    }
}
