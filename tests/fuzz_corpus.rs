//! Replays the fuzz corpora (fuzz/corpus/{frames,flows,datagrams,api,cli}) through the same entry points the
//! cargo-fuzz targets use (`slirpnet::fuzzing`), so every input the fuzzers kept, and every
//! crash they found and that was fixed, stays a regression test on stable Rust.
//!
//! The seed frames are written by `SLIRPNET_WRITE_SEEDS=1 cargo test --test fuzz_corpus`
//! (see docs/fuzzing.md).

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use slirpnet::fuzzing::datagrams::{
    DatagramsOutcome, Op as DOp, drive_datagrams, encode as encode_datagrams,
};
use slirpnet::fuzzing::flows::{Op, SEGMENT_FIN, Setup, drive_flows, encode as encode_flows};
use slirpnet::fuzzing::{drive_api, drive_cli, drive_frames, join_frames, split_frames};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
    EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet,
    Icmpv6Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, NdiscRepr,
    RawHardwareAddress, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    files
        .into_iter()
        .map(|path| {
            let data = fs::read(&path).unwrap();
            (path, data)
        })
        .collect()
}

#[test]
fn frames_corpus() {
    let mut frames_out = 0;
    for (path, data) in corpus("frames") {
        eprintln!("{}", path.display());
        // Panics on a broken invariant, including a flow left open over the NullHost.
        let outcome = drive_frames(&data);
        frames_out += outcome.frames_out;
    }
    // The seeds include an ARP request and a DHCP discover: the stack answered something.
    assert!(frames_out > 0);
}

#[test]
fn frames_seeds_are_answered() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frames");
    for (name, expect_refused) in [
        ("seed-arp-request", false),
        ("seed-dhcp-discover", false),
        ("seed-icmp-echo-gateway", false),
        ("seed-tcp-syn-gateway-80", true),
        ("seed-udp-dns", true),
        // Reassembled, then a UDP flow to a remote host (refused).
        ("seed-ipv4-fragments", true),
        ("seed-icmp-echo-remote", true),
        ("seed-ipv6-echo", false),
        ("seed-ipv6-router-solicit", false),
        ("seed-ipv6-neighbor-solicit", false),
        ("seed-ipv6-tcp-syn-remote", true),
        ("seed-ipv6-udp-dns", true),
    ] {
        let data = fs::read(dir.join(name)).unwrap();
        let outcome = drive_frames(&data);
        assert!(outcome.answers > 0 || expect_refused, "{name}: {outcome:?}");
        assert_eq!(outcome.refused > 0, expect_refused, "{name}: {outcome:?}");
    }
}

#[test]
fn api_corpus() {
    let mut parsed = 0;
    for (path, data) in corpus("api") {
        eprintln!("{}", path.display());
        parsed += drive_api(&data).iter().filter(|ok| **ok).count();
    }
    assert!(parsed > 0, "no valid request in the api corpus");
}

#[test]
fn cli_corpus() {
    let mut parsed = 0;
    for (path, data) in corpus("cli") {
        eprintln!("{}", path.display());
        parsed += usize::from(drive_cli(&data));
    }
    assert!(parsed > 0, "no valid command line in the cli corpus");
}

#[test]
fn split_frames_round_trips() {
    let frames: [&[u8]; 3] = [b"abc", b"", &[7; 300]];
    let joined = join_frames(frames);
    let split: Vec<&[u8]> = split_frames(&joined).iter().map(|r| r.frame).collect();
    assert_eq!(split, frames);
    // A truncated last record takes what is left; fewer than 3 bytes make none.
    assert_eq!(split_frames(&[5, 0, 9, 1, 2])[0].frame, &[1, 2]);
    assert!(split_frames(&[5, 0]).is_empty());
}

// ---- Seed frames ----

const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x64]);
const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
const REMOTE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const DNS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const GUEST_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x100);

fn ethernet(dst: EthernetAddress, ethertype: EthernetProtocol, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; 14 + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: dst,
        ethertype,
    }
    .emit(&mut frame);
    frame.payload_mut().copy_from_slice(payload);
    buf
}

/// An IPv4 packet around `l4`; `fragment` is (ident, offset in bytes, more fragments).
fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: IpProtocol,
    l4: &[u8],
    fragment: Option<(u16, u16, bool)>,
) -> Vec<u8> {
    let mut buf = vec![0; 20 + l4.len()];
    let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
    Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: protocol,
        payload_len: l4.len(),
        hop_limit: 64,
    }
    .emit(&mut packet, &ChecksumCapabilities::default());
    if let Some((ident, offset, more)) = fragment {
        packet.set_ident(ident);
        packet.set_dont_frag(false);
        packet.set_frag_offset(offset);
        packet.set_more_frags(more);
        packet.fill_checksum();
    }
    packet.payload_mut().copy_from_slice(l4);
    buf
}

fn ipv4_frame(dst: Ipv4Addr, protocol: IpProtocol, l4: &[u8]) -> Vec<u8> {
    ethernet(
        GATEWAY_MAC,
        EthernetProtocol::Ipv4,
        &ipv4(GUEST, dst, protocol, l4, None),
    )
}

fn udp(src: (IpAddr, u16), dst: (IpAddr, u16), payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; 8 + payload.len()];
    UdpRepr {
        src_port: src.1,
        dst_port: dst.1,
    }
    .emit(
        &mut UdpPacket::new_unchecked(&mut buf[..]),
        &IpAddress::from(src.0),
        &IpAddress::from(dst.0),
        payload.len(),
        |out| out.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    buf
}

fn tcp(
    src: IpAddr,
    dst: (IpAddr, u16),
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: 40000,
        dst_port: dst.1,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|ack| TcpSeqNumber(ack as i32)),
        window_len: 64240,
        window_scale: (control == TcpControl::Syn).then_some(7),
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: control == TcpControl::Syn,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let mut buf = vec![0; repr.buffer_len()];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut buf[..]),
        &IpAddress::from(src),
        &IpAddress::from(dst.0),
        &ChecksumCapabilities::default(),
    );
    buf
}

fn icmp_echo(ident: u16, data: &[u8]) -> Vec<u8> {
    let repr = Icmpv4Repr::EchoRequest {
        ident,
        seq_no: 1,
        data,
    };
    let mut buf = vec![0; repr.buffer_len()];
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut buf[..]),
        &ChecksumCapabilities::default(),
    );
    buf
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: GUEST,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut buf = vec![0; repr.buffer_len()];
    repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
    ethernet(EthernetAddress::BROADCAST, EthernetProtocol::Arp, &buf)
}

fn dhcp_discover() -> Vec<u8> {
    let repr = DhcpRepr {
        message_type: DhcpMessageType::Discover,
        transaction_id: 0x1234_5678,
        secs: 0,
        client_hardware_address: GUEST_MAC,
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: Some(GUEST_MAC),
        server_identifier: None,
        parameter_request_list: Some(&[1, 3, 6, 15, 51, 54]),
        dns_servers: None,
        max_size: Some(1500),
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut dhcp = vec![0; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut dhcp[..]))
        .unwrap();
    let any = Ipv4Addr::UNSPECIFIED;
    let l4 = udp((any.into(), 68), (Ipv4Addr::BROADCAST.into(), 67), &dhcp);
    ethernet(
        EthernetAddress::BROADCAST,
        EthernetProtocol::Ipv4,
        &ipv4(any, Ipv4Addr::BROADCAST, IpProtocol::Udp, &l4, None),
    )
}

/// A DNS query for example.com, type A.
fn dns_query() -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["example", "com"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// An IPv6 frame from the guest around `l4`.
fn ipv6_frame(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    dst_mac: EthernetAddress,
    next_header: IpProtocol,
    hop_limit: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut buf = vec![0; 40 + l4.len()];
    let mut packet = Ipv6Packet::new_unchecked(&mut buf[..]);
    Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header,
        payload_len: l4.len(),
        hop_limit,
    }
    .emit(&mut packet);
    packet.payload_mut().copy_from_slice(l4);
    ethernet(dst_mac, EthernetProtocol::Ipv6, &buf)
}

/// An ICMPv6 message (NDP ones with hop limit 255, as they must be).
fn icmpv6_frame(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    dst_mac: EthernetAddress,
    repr: Icmpv6Repr,
) -> Vec<u8> {
    let mut l4 = vec![0; repr.buffer_len()];
    repr.emit(
        &src,
        &dst,
        &mut Icmpv6Packet::new_unchecked(&mut l4[..]),
        &ChecksumCapabilities::default(),
    );
    let hop_limit = if matches!(repr, Icmpv6Repr::Ndisc(_)) {
        255
    } else {
        64
    };
    ipv6_frame(src, dst, dst_mac, IpProtocol::Icmpv6, hop_limit, &l4)
}

fn ipv6_echo() -> Vec<u8> {
    let echo = Icmpv6Repr::EchoRequest {
        ident: 7,
        seq_no: 1,
        data: b"ping6",
    };
    icmpv6_frame(GUEST6, GATEWAY6, GATEWAY_MAC, echo)
}

fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let guest = IpAddr::V4(GUEST);
    let syn = tcp(
        guest,
        (GATEWAY.into(), 80),
        TcpControl::Syn,
        1000,
        None,
        &[],
    );
    // A UDP datagram to a remote host in two fragments (the first carries the UDP header).
    let big = udp((guest, 40001), (REMOTE.into(), 9), &[0x5a; 100]);
    let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    let solicited_gateway = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2);
    let lladdr = Some(RawHardwareAddress::from(GUEST_MAC));
    let remote_tcp = |control, seq, ack, payload: &[u8]| {
        tcp(guest, (REMOTE.into(), 443), control, seq, ack, payload)
    };
    let (first, second) = big.split_at(64);
    let frag = |offset: u16, more: bool, data: &[u8]| {
        ethernet(
            GATEWAY_MAC,
            EthernetProtocol::Ipv4,
            &ipv4(
                GUEST,
                REMOTE,
                IpProtocol::Udp,
                data,
                Some((0x4242, offset, more)),
            ),
        )
    };
    vec![
        ("seed-arp-request", vec![arp_request(GATEWAY)]),
        ("seed-dhcp-discover", vec![dhcp_discover()]),
        (
            "seed-tcp-syn-gateway-80",
            vec![ipv4_frame(GATEWAY, IpProtocol::Tcp, &syn)],
        ),
        (
            "seed-udp-dns",
            vec![ipv4_frame(
                DNS,
                IpProtocol::Udp,
                &udp((guest, 40000), (DNS.into(), 53), &dns_query()),
            )],
        ),
        (
            "seed-icmp-echo-gateway",
            vec![ipv4_frame(
                GATEWAY,
                IpProtocol::Icmp,
                &icmp_echo(1, b"ping"),
            )],
        ),
        (
            "seed-icmp-echo-remote",
            vec![ipv4_frame(REMOTE, IpProtocol::Icmp, &icmp_echo(2, b"ping"))],
        ),
        (
            "seed-ipv4-fragments",
            vec![frag(0, true, first), frag(64, false, second)],
        ),
        ("seed-ipv6-echo", vec![ipv6_echo()]),
        (
            "seed-ipv6-router-solicit",
            vec![icmpv6_frame(
                GUEST_LINK_LOCAL,
                all_routers,
                EthernetAddress([0x33, 0x33, 0, 0, 0, 2]),
                Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit { lladdr }),
            )],
        ),
        (
            "seed-ipv6-neighbor-solicit",
            vec![icmpv6_frame(
                GUEST_LINK_LOCAL,
                solicited_gateway,
                EthernetAddress([0x33, 0x33, 0xff, 0, 0, 2]),
                Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
                    target_addr: GATEWAY6,
                    lladdr,
                }),
            )],
        ),
        (
            "seed-ipv6-tcp-syn-remote",
            vec![ipv6_frame(
                GUEST6,
                REMOTE6,
                GATEWAY_MAC,
                IpProtocol::Tcp,
                64,
                &tcp(
                    GUEST6.into(),
                    (REMOTE6.into(), 443),
                    TcpControl::Syn,
                    1000,
                    None,
                    &[],
                ),
            )],
        ),
        (
            "seed-ipv6-udp-dns",
            vec![ipv6_frame(
                GUEST6,
                DNS6,
                GATEWAY_MAC,
                IpProtocol::Udp,
                64,
                &udp((GUEST6.into(), 40000), (DNS6.into(), 53), &dns_query()),
            )],
        ),
        (
            // A whole conversation: ARP, SYN, data, FIN, RST to a remote host.
            "seed-tcp-conversation",
            vec![
                arp_request(GATEWAY),
                ipv4_frame(
                    REMOTE,
                    IpProtocol::Tcp,
                    &remote_tcp(TcpControl::Syn, 1000, None, &[]),
                ),
                ipv4_frame(
                    REMOTE,
                    IpProtocol::Tcp,
                    &remote_tcp(TcpControl::Psh, 1001, Some(5000), b"hello"),
                ),
                ipv4_frame(
                    REMOTE,
                    IpProtocol::Tcp,
                    &remote_tcp(TcpControl::Fin, 1006, Some(5000), &[]),
                ),
                ipv4_frame(
                    REMOTE,
                    IpProtocol::Tcp,
                    &remote_tcp(TcpControl::Rst, 1007, None, &[]),
                ),
            ],
        ),
    ]
}

/// The seed frames on disk are exactly what [`seeds`] builds. With
/// `SLIRPNET_WRITE_SEEDS=1` it writes them instead (after changing the seeds).
#[test]
fn seed_frames_are_current() {
    for (name, frames) in seeds() {
        check_seed(
            "frames",
            name,
            &join_frames(frames.iter().map(Vec::as_slice)),
        );
    }
}

/// Asserts that the checked-in seed `name` of `target` holds `expected`; with
/// `SLIRPNET_WRITE_SEEDS=1` it writes it first (after changing the seeds).
fn check_seed(target: &str, name: &str, expected: &[u8]) {
    let dir = corpus_dir(target);
    if std::env::var_os("SLIRPNET_WRITE_SEEDS").is_some_and(|v| v == "1") {
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), expected).unwrap();
    }
    let found = fs::read(dir.join(name)).unwrap_or_default();
    assert!(
        found == expected,
        "{name} is stale: SLIRPNET_WRITE_SEEDS=1 cargo test --test fuzz_corpus"
    );
}

// ---- flows: one guest connection to a simulated host peer ----

const BULK: Setup = Setup {
    gso: false,
    jumbo: false,
    sack: true,
    window_scale: true,
    send_buffer: 3,
    receive_buffer: 3,
    // Sequence numbers wrap within the first 4 KiB.
    guest_isn: 0xffff_f000,
    small_flow_buffer: false,
    announced_mss: 0,
    forwarded: false,
    ipv6: false,
    download: 200_000,
};

/// Two full batches of guest segments of `batch`'s sizes with the host's download between
/// them: data both ways at once.
fn bulk_both_ways(batch: &'static [u16]) -> [Op; 5] {
    [
        Op::Batch(batch),
        Op::Ack(0xffff),
        Op::Drain,
        Op::Batch(batch),
        Op::Wait(1),
    ]
}

/// Seeds for the `flows` target, each with the bytes the host peer must end with (the
/// liveness phase resends whatever the stack did not acknowledge).
fn flows_seeds() -> Vec<(&'static str, Vec<u8>, usize)> {
    const FULL: &[u16] = &[1460; 7];
    // IPv6's header is 20 bytes longer: 1440 bytes fill a 1500-byte MTU.
    const FULL6: &[u16] = &[1440; 7];
    vec![
        (
            "seed-bulk-both-ways",
            encode_flows(BULK, &bulk_both_ways(FULL)),
            14 * 1460,
        ),
        (
            "seed-lossy-download-sack",
            encode_flows(
                // The host delivers 64 KiB at a time: what follows the loss is sent after it.
                Setup {
                    receive_buffer: 1,
                    ..BULK
                },
                &[
                    Op::Ack(0xffff),
                    Op::Lose(3),
                    Op::Ack(0xffff),
                    Op::Ack(0xffff),
                    Op::Ack(0xffff),
                    Op::Ack(0xffff),
                    Op::Wait(15),
                    Op::Ack(0xffff),
                ],
            ),
            0,
        ),
        (
            "seed-lossy-download-no-sack",
            encode_flows(
                Setup {
                    sack: false,
                    receive_buffer: 1,
                    ..BULK
                },
                &[
                    Op::Ack(0xffff),
                    Op::Lose(2),
                    Op::Ack(0xffff),
                    Op::Ack(0xffff),
                    Op::Ack(0xffff),
                    Op::Ack(0xffff),
                    Op::Ack(0xffff),
                ],
            ),
            0,
        ),
        (
            "seed-zero-window",
            encode_flows(
                BULK,
                &[
                    Op::Ack(0),
                    Op::Wait(30),
                    Op::Wait(60),
                    Op::Ack(0),
                    Op::Wait(200),
                    Op::Ack(0xffff),
                ],
            ),
            0,
        ),
        (
            "seed-small-buffers",
            encode_flows(
                Setup {
                    send_buffer: 0,
                    receive_buffer: 0,
                    small_flow_buffer: true,
                    ..BULK
                },
                &[
                    Op::Batch(FULL),
                    Op::Batch(FULL),
                    Op::Ack(0xffff),
                    Op::Wait(10),
                    Op::Drain,
                ],
            ),
            14 * 1460,
        ),
        (
            "seed-gso-jumbo",
            encode_flows(
                Setup {
                    gso: true,
                    jumbo: true,
                    window_scale: false,
                    ..BULK
                },
                &[
                    Op::Send(60_000),
                    Op::Ack(0xffff),
                    Op::Lose(1),
                    Op::Ack(0xffff),
                    Op::Send(60_000),
                ],
            ),
            120_000,
        ),
        (
            "seed-small-mss",
            encode_flows(
                Setup {
                    announced_mss: 3,
                    gso: true,
                    ..BULK
                },
                &[
                    Op::Send(3000),
                    Op::Lose(2),
                    Op::Ack(0xffff),
                    Op::Ack(0xffff),
                    Op::Ack(0xffff),
                ],
            ),
            3000,
        ),
        (
            "seed-no-mss-option",
            encode_flows(
                Setup {
                    announced_mss: 1,
                    ..BULK
                },
                &[Op::Send(1000), Op::Ack(0xffff)],
            ),
            1000,
        ),
        (
            "seed-forward-bulk",
            encode_flows(
                Setup {
                    forwarded: true,
                    ..BULK
                },
                &bulk_both_ways(FULL),
            ),
            14 * 1460,
        ),
        (
            "seed-forward-lossy-no-scale",
            encode_flows(
                Setup {
                    forwarded: true,
                    window_scale: false,
                    receive_buffer: 1,
                    ..BULK
                },
                &[
                    Op::Ack(0xffff),
                    Op::Lose(4),
                    Op::Ack(0xffff),
                    Op::Ack(0xffff),
                    Op::Ack(0xffff),
                    Op::Ack(0xffff),
                ],
            ),
            0,
        ),
        (
            "seed-ipv6-bulk-both-ways",
            encode_flows(Setup { ipv6: true, ..BULK }, &bulk_both_ways(FULL6)),
            14 * 1440,
        ),
        (
            "seed-ipv6-forward-lossy",
            encode_flows(
                Setup {
                    ipv6: true,
                    forwarded: true,
                    receive_buffer: 1,
                    ..BULK
                },
                &[
                    Op::Ack(0xffff),
                    Op::Lose(3),
                    Op::Ack(0xffff),
                    Op::Ack(0xffff),
                    Op::Ack(0xffff),
                    Op::Ack(0xffff),
                    Op::Send(1440),
                ],
            ),
            1440,
        ),
        (
            "seed-out-of-order-upload",
            encode_flows(
                BULK,
                &[
                    // 3000 bytes past the next one: a hole the guest fills later.
                    Op::Segment {
                        flags: 0,
                        seq_back: 0x8000 | 3000,
                        len: 1000,
                        ack_choice: 2 << 30,
                        window: 0xffff,
                        blocks: [(0, 0); 3],
                    },
                    // The hole: from 4000 bytes back (twice `seq_back`).
                    Op::Segment {
                        flags: 0,
                        seq_back: 2000,
                        len: 3000,
                        ack_choice: 2 << 30,
                        window: 0xffff,
                        blocks: [(0, 0); 3],
                    },
                    Op::Send(1460),
                ],
            ),
            5460,
        ),
    ]
}

#[test]
fn flows_seeds_are_current() {
    for (name, expected, _) in flows_seeds() {
        check_seed("flows", name, &expected);
    }
}

#[test]
fn flows_seeds_carry_every_byte_both_ways() {
    for (name, data, uploaded) in flows_seeds() {
        let outcome = drive_flows(&data);
        assert!(
            outcome.established && outcome.liveness_checked,
            "{name}: {outcome:?}"
        );
        assert_eq!(outcome.uploaded, uploaded, "{name}: {outcome:?}");
        assert_eq!(outcome.downloaded, BULK.download, "{name}: {outcome:?}");
        // The lossy seeds reach loss recovery: with SACK only the three lost segments are
        // resent; without, everything from the first loss on.
        if name.contains("lossy") {
            assert!(outcome.resent > 0, "{name}: {outcome:?}");
        }
        match name {
            "seed-lossy-download-sack" => assert_eq!(outcome.resent, 3 * 1460, "{outcome:?}"),
            "seed-lossy-download-no-sack" => assert!(outcome.resent > 2 * 1460, "{outcome:?}"),
            _ => {}
        }
    }
}

#[test]
fn flows_corpus() {
    let mut checked = 0;
    for (path, data) in corpus("flows") {
        eprintln!("{}", path.display());
        // Panics on a broken invariant: bytes out of place either way, data acknowledged
        // that the guest never sent, a stuck transfer, a misused host socket.
        if drive_flows(&data).liveness_checked {
            checked += 1;
        }
    }
    assert!(checked > 0);
}

#[test]
fn bytes_a_guest_sends_after_its_fin_never_reach_the_host() {
    let fin = Op::Segment {
        flags: SEGMENT_FIN,
        seq_back: 0,
        len: 0,
        ack_choice: 2 << 30,
        window: 0xffff,
        blocks: [(0, 0); 3],
    };
    // A 1 KiB host send buffer: the FIN waits behind bytes the host socket has not taken yet,
    // and the stack used to take the bytes after it too, pass them to the host peer, and
    // then send into a socket shut down for writing (the simulated host panics; a kernel
    // socket fails the send, and the flow was reset).
    let setup = Setup {
        send_buffer: 0,
        ..BULK
    };
    let data = encode_flows(
        setup,
        &[
            Op::Send(1400),
            Op::Send(1400),
            fin,
            Op::Send(500),
            // The host peer reads 1 KiB at a time.
            Op::Drain,
            Op::Drain,
            Op::Drain,
            Op::Drain,
        ],
    );
    let outcome = drive_flows(&data);
    assert!(outcome.established);
    assert_eq!(outcome.uploaded, 2800);
    assert_eq!(outcome.downloaded, BULK.download);
}

/// The fuzzer's shortest input for a mistake of the driver, kept as a test of the stack: a
/// GSO segment of 45 KiB is acknowledged at once (a bulk batch), and the stack then drains it
/// to a peer whose socket takes 1 KiB at a time, with no frame to the guest on the way.
#[test]
fn an_upload_acknowledged_early_still_drains_to_a_slow_peer() {
    let setup = Setup {
        gso: true,
        window_scale: false,
        send_buffer: 0,
        receive_buffer: 0,
        guest_isn: 0,
        download: 0,
        ..BULK
    };
    let outcome = drive_flows(&encode_flows(setup, &[Op::Send(46080)]));
    assert!(outcome.established);
    assert!(outcome.liveness_checked, "{outcome:?}");
    assert_eq!(outcome.uploaded, 46080);
}

#[test]
fn a_host_peer_s_reset_ends_the_flow_with_a_reset_to_the_guest() {
    // The host delivers 4 KiB at a time, so the stack still reads the socket when the
    // peer resets it; the driver also checks that no flow is left.
    let setup = Setup {
        receive_buffer: 0,
        ..BULK
    };
    let data = encode_flows(
        setup,
        &[
            Op::Send(1000),
            Op::Ack(0xffff),
            Op::HostReset,
            Op::Ack(0xffff),
        ],
    );
    let outcome = drive_flows(&data);
    assert!(outcome.established);
    assert!(outcome.reset_by_stack, "{outcome:?}");
    assert!(outcome.downloaded < BULK.download, "{outcome:?}");
}

#[test]
fn a_host_peer_s_reset_after_its_fin_ends_the_flow_too() {
    // The peer sends nothing and closes: the stack's FIN is out, and it reads the socket no
    // more. The driver checks no flow is left once the peer resets (it used to stay until the
    // guest sent or closed).
    let setup = Setup {
        download: 0,
        ..BULK
    };
    let outcome = drive_flows(&encode_flows(setup, &[Op::Ack(0xffff), Op::HostReset]));
    assert!(outcome.established);
    assert!(outcome.reset_by_stack, "{outcome:?}");
}

// ---- datagrams: a guest's UDP flow to a simulated host peer ----

/// Seeds for the `datagrams` target, with what each must end with.
fn datagrams_seeds() -> Vec<(&'static str, Vec<u8>, DatagramsOutcome)> {
    vec![
        (
            "seed-both-ways-1500",
            encode_datagrams(
                1,
                false,
                &[
                    DOp::Guest { peer: 0, len: 100 },
                    DOp::Host { peer: 0, len: 100 },
                    // Six datagrams in one batch: one GSO send, split back by the kernel.
                    DOp::GuestBatch {
                        peer: 0,
                        count: 5,
                        len: 1000,
                        last: 300,
                    },
                    // Fragmented to the guest: 3 and 45 fragments.
                    DOp::Host { peer: 0, len: 3000 },
                    DOp::Host {
                        peer: 0,
                        len: 65507,
                    },
                    DOp::Host { peer: 0, len: 0 },
                    DOp::Guest { peer: 0, len: 0 },
                ],
            ),
            DatagramsOutcome {
                to_host: 8,
                to_guest: 4,
                fragments: 3 + 45,
                unreachables: 0,
                sockets: 1,
            },
        ),
        (
            "seed-refused-then-expired-576",
            encode_datagrams(
                0,
                false,
                &[
                    DOp::Guest { peer: 0, len: 500 },
                    DOp::Refuse,
                    DOp::Guest { peer: 0, len: 10 },
                    // The flow expires after 60 idle seconds; the next datagram opens another.
                    DOp::Wait(70),
                    DOp::Guest { peer: 0, len: 10 },
                    DOp::Host { peer: 0, len: 1000 },
                ],
            ),
            DatagramsOutcome {
                to_host: 3,
                to_guest: 1,
                fragments: 2,
                unreachables: 1,
                sockets: 2,
            },
        ),
        (
            "seed-forward-clients-1500",
            encode_datagrams(
                1,
                true,
                &[
                    DOp::Host { peer: 0, len: 100 },
                    DOp::Host { peer: 1, len: 3000 },
                    DOp::Guest { peer: 1, len: 1400 },
                    DOp::GuestBatch {
                        peer: 0,
                        count: 3,
                        len: 500,
                        last: 500,
                    },
                    // A client the guest writes to first: its own flow, not the forward's.
                    DOp::Guest { peer: 2, len: 20 },
                    DOp::Host { peer: 2, len: 20 },
                    // Forwarded flows expire too; the client's next datagram opens one again.
                    DOp::Wait(70),
                    DOp::Host { peer: 0, len: 100 },
                    DOp::Guest { peer: 0, len: 100 },
                ],
            ),
            DatagramsOutcome {
                to_host: 7,
                to_guest: 4,
                fragments: 3,
                unreachables: 0,
                sockets: 2,
            },
        ),
    ]
}

#[test]
fn datagrams_seeds_are_current_and_carry_every_datagram() {
    for (name, data, expected) in datagrams_seeds() {
        check_seed("datagrams", name, &data);
        assert_eq!(drive_datagrams(&data), expected, "{name}");
    }
}

#[test]
fn datagrams_corpus() {
    for (path, data) in corpus("datagrams") {
        eprintln!("{}", path.display());
        // Panics on a broken invariant: a datagram lost, cut, merged or out of order either
        // way, a bad fragment or checksum, an unreachable quoting another flow.
        drive_datagrams(&data);
    }
}

#[test]
fn an_empty_datagram_does_not_overtake_the_guest_s_batch() {
    // Two datagrams wait in a GSO batch when an empty one, which cannot join it, arrives in
    // the same batch of frames: it used to go to the host first.
    let data = encode_datagrams(
        1,
        false,
        &[DOp::GuestBatch {
            peer: 0,
            count: 2,
            len: 100,
            last: 0,
        }],
    );
    // The driver panics if the host peer's datagrams are not the guest's, in order.
    assert_eq!(drive_datagrams(&data).to_host, 3);
}
