//! IPv6 against a simulated guest (no root; host sockets on loopback only): router
//! advertisements, neighbour discovery, ICMPv6, TCP and UDP over IPv6, DNS through fd00::3 and
//! IPv6 port forwards.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use slirpnet::stack::forward::Proto;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::{icmp, tcp::State, udp};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Packet, Icmpv6Repr,
    IpAddress, IpEndpoint, IpProtocol, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags,
    NdiscPrefixInfoFlags, NdiscRepr, RawHardwareAddress,
};
use support::guest::{
    GUEST_IPV6, GUEST_LINK_LOCAL, GUEST_MAC, Harness, pattern, recv_all, stack_config,
    stack_config_v6,
};

/// 52:55 and the IPv4 gateway address: the helper's MAC for every address it answers for.
const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);

fn v6(text: &str) -> Ipv6Addr {
    text.parse().unwrap()
}

/// An ICMPv6 message from the guest as a whole Ethernet frame.
fn icmpv6_frame(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, repr: &Icmpv6Repr) -> Vec<u8> {
    let ip = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: repr.buffer_len(),
        hop_limit,
    };
    let mut frame = vec![0u8; 14 + 40 + repr.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: EthernetAddress([0x33, 0x33, 0, 0, 0, 2]),
        ethertype: EthernetProtocol::Ipv6,
    }
    .emit(&mut eth);
    let mut packet = Ipv6Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut packet);
    repr.emit(
        &src,
        &dst,
        &mut Icmpv6Packet::new_unchecked(packet.payload_mut()),
        &ChecksumCapabilities::default(),
    );
    frame
}

/// Feeds frames to the stack and returns what it sent back (timers not fired).
fn answers(h: &mut Harness, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let now = Instant::now();
    for frame in frames {
        h.stack.handle_frame(now, frame);
    }
    sent(h)
}

/// Flushes the stack and takes every frame it queued for the guest.
fn sent(h: &mut Harness) -> Vec<Vec<u8>> {
    h.stack.flush();
    h.take_output()
}

/// Parses an ICMPv6 message from the stack, checksum included.
fn parse_icmpv6<'a>(ip: &Ipv6Repr, message: &'a [u8]) -> Icmpv6Repr<'a> {
    let packet = Icmpv6Packet::new_checked(message).unwrap();
    Icmpv6Repr::parse(
        &ip.src_addr,
        &ip.dst_addr,
        &packet,
        &ChecksumCapabilities::default(),
    )
    .expect("a valid ICMPv6 message")
}

/// The IPv6 header and ICMPv6 bytes of a frame from the stack, if it is ICMPv6.
fn icmpv6_of(frame: &[u8]) -> Option<(EthernetAddress, Ipv6Repr, Vec<u8>)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv6 {
        return None;
    }
    let packet = Ipv6Packet::new_checked(eth.payload()).ok()?;
    let repr = Ipv6Repr::parse(&packet).ok()?;
    if repr.next_header != IpProtocol::Icmpv6 {
        return None;
    }
    let icmp = Icmpv6Packet::new_checked(packet.payload()).ok()?;
    assert!(
        icmp.verify_checksum(&repr.src_addr, &repr.dst_addr),
        "ICMPv6 checksum"
    );
    Some((eth.dst_addr(), repr, packet.payload().to_vec()))
}

fn router_solicit() -> Vec<u8> {
    icmpv6_frame(
        GUEST_LINK_LOCAL,
        v6("ff02::2"),
        255,
        &Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit {
            lladdr: Some(RawHardwareAddress::from(GUEST_MAC)),
        }),
    )
}

/// The options of a router advertisement, as (type, body) pairs.
fn ra_options(message: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut options = Vec::new();
    let mut rest = &message[16..];
    while rest.len() >= 8 {
        let len = usize::from(rest[1]) * 8;
        assert!(len > 0 && len <= rest.len(), "malformed option");
        options.push((rest[0], rest[2..len].to_vec()));
        rest = &rest[len..];
    }
    options
}

#[test]
fn a_router_solicitation_gets_an_advertisement_with_prefix_mtu_router_and_dns() {
    let mut config = stack_config_v6(1500);
    config.dns_upstream = Some("127.0.0.1:53".parse().unwrap());
    let mut h = Harness::new(config);
    let out = answers(&mut h, &[router_solicit()]);
    assert_eq!(out.len(), 1, "one advertisement");
    let (dst_mac, ip, message) = icmpv6_of(&out[0]).expect("ICMPv6");
    assert_eq!(dst_mac, EthernetAddress([0x33, 0x33, 0, 0, 0, 1]));
    assert_eq!(
        ip.src_addr,
        v6("fe80::2"),
        "from the router's link-local address"
    );
    assert_eq!(ip.dst_addr, v6("ff02::1"));
    assert_eq!(ip.hop_limit, 255, "NDP is only believed with hop limit 255");
    let Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
        router_lifetime,
        lladdr,
        mtu,
        prefix_info,
        ..
    }) = parse_icmpv6(&ip, &message)
    else {
        panic!("not a router advertisement");
    };
    assert!(
        router_lifetime.secs() >= 600,
        "the guest takes us as default router"
    );
    assert_eq!(lladdr, Some(RawHardwareAddress::from(GATEWAY_MAC)));
    assert_eq!(mtu, Some(1500));
    let prefix = prefix_info.expect("prefix information");
    assert_eq!(prefix.prefix, v6("fd00::"));
    assert_eq!(prefix.prefix_len, 64);
    assert!(
        prefix
            .flags
            .contains(NdiscPrefixInfoFlags::ON_LINK | NdiscPrefixInfoFlags::ADDRCONF)
    );
    assert!(prefix.valid_lifetime >= prefix.preferred_lifetime);
    let rdnss: Vec<Vec<u8>> = ra_options(&message)
        .into_iter()
        .filter(|(kind, _)| *kind == 25)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(rdnss.len(), 1, "one RDNSS option");
    assert!(u32::from_be_bytes(rdnss[0][2..6].try_into().unwrap()) > 0);
    assert_eq!(&rdnss[0][6..22], &v6("fd00::3").octets(), "DNS is fd00::3");
}

#[test]
fn advertisements_follow_cidr6_and_come_unsolicited_too() {
    let mut config = stack_config_v6(9000);
    config.net = config.net.with_prefix6(v6("fd12:3456:789a:1::"));
    let mut h = Harness::new(config);
    // One at start, without being asked, for a guest whose solicitations came too early.
    let start = Instant::now();
    let first = h.stack.poll_at().expect("an advertisement is scheduled");
    h.stack.poll_timers(first);
    let out = sent(&mut h);
    assert_eq!(out.len(), 1);
    let (_, ip, message) = icmpv6_of(&out[0]).unwrap();
    let Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
        mtu, prefix_info, ..
    }) = parse_icmpv6(&ip, &message)
    else {
        panic!("not a router advertisement");
    };
    assert_eq!(prefix_info.unwrap().prefix, v6("fd12:3456:789a:1::"));
    assert_eq!(mtu, Some(9000));
    assert!(
        ra_options(&message).iter().all(|(kind, _)| *kind != 25),
        "no RDNSS without a DNS upstream"
    );
    // The next one follows within seconds, and later ones at most minutes apart.
    let next = h.stack.poll_at().unwrap();
    assert!(next > first && next <= start + Duration::from_secs(10));
}

#[test]
fn neighbour_solicitations_for_our_addresses_are_answered_and_others_are_not() {
    let mut h = Harness::new(stack_config_v6(1500));
    let solicit = |src: Ipv6Addr, target: Ipv6Addr| {
        icmpv6_frame(
            src,
            v6("ff02::1:ff00:2"),
            255,
            &Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
                target_addr: target,
                lladdr: (!src.is_unspecified()).then(|| RawHardwareAddress::from(GUEST_MAC)),
            }),
        )
    };
    for target in ["fd00::2", "fd00::3", "fe80::2"] {
        let out = answers(&mut h, &[solicit(GUEST_LINK_LOCAL, v6(target))]);
        assert_eq!(out.len(), 1, "advertisement for {target}");
        let (dst_mac, ip, message) = icmpv6_of(&out[0]).unwrap();
        assert_eq!(dst_mac, GUEST_MAC, "answered to the asker");
        assert_eq!(ip.src_addr, v6(target));
        assert_eq!(ip.dst_addr, GUEST_LINK_LOCAL);
        assert_eq!(ip.hop_limit, 255);
        assert_eq!(
            parse_icmpv6(&ip, &message),
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
                flags: NdiscNeighborFlags::ROUTER
                    | NdiscNeighborFlags::SOLICITED
                    | NdiscNeighborFlags::OVERRIDE,
                target_addr: v6(target),
                lladdr: Some(RawHardwareAddress::from(GATEWAY_MAC)),
            })
        );
    }
    // Duplicate address detection for the guest's own address, another guest address, and
    // a forged solicitation (routed: hop limit below 255) get nothing.
    let dad = solicit(Ipv6Addr::UNSPECIFIED, GUEST_IPV6);
    let other = solicit(GUEST_LINK_LOCAL, v6("fd00::55"));
    let mut forged = solicit(GUEST_LINK_LOCAL, v6("fd00::2"));
    // The hop limit is outside the ICMPv6 pseudo-header: the checksum stays right.
    forged[14 + 7] = 254;
    assert!(answers(&mut h, &[dad, other, forged]).is_empty());
}

#[test]
fn ipv6_frames_are_dropped_and_counted_when_ipv6_is_off() {
    let mut h = Harness::new(stack_config(1500));
    let before = h.stack.counters.dropped_unsupported;
    assert!(answers(&mut h, &[router_solicit()]).is_empty());
    assert_eq!(h.stack.counters.dropped_unsupported, before + 1);
    assert_eq!(h.stack.poll_at(), None, "no advertisements scheduled");
}

fn ping6(h: &mut Harness, to: Ipv6Addr) -> Option<(Vec<u8>, IpAddress)> {
    let meta = || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]);
    let mut socket = icmp::Socket::new(meta(), meta());
    socket.bind(icmp::Endpoint::Ident(0x4242)).unwrap();
    let s = h.sockets.add(socket);
    let request = Icmpv6Repr::EchoRequest {
        ident: 0x4242,
        seq_no: 7,
        data: b"hello6",
    };
    let mut bytes = vec![0; request.buffer_len()];
    request.emit(
        &GUEST_IPV6,
        &to,
        &mut Icmpv6Packet::new_unchecked(&mut bytes),
        &ChecksumCapabilities::default(),
    );
    h.sockets
        .get_mut::<icmp::Socket>(s)
        .send_slice(&bytes, IpAddress::Ipv6(to))
        .unwrap();
    let mut reply = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while reply.is_none() && Instant::now() < deadline {
        h.step();
        if let Ok((data, from)) = h.sockets.get_mut::<icmp::Socket>(s).recv() {
            reply = Some((data.to_vec(), from));
        }
    }
    h.sockets.remove(s);
    reply
}

#[test]
fn ping6_to_the_gateway_and_dns_addresses_is_answered() {
    let mut h = Harness::new(stack_config_v6(1500));
    h.enable_ipv6();
    for to in ["fd00::2", "fd00::3"] {
        let (data, from) = ping6(&mut h, v6(to)).expect("echo reply");
        assert_eq!(from, IpAddress::Ipv6(v6(to)));
        let reply_ip = Ipv6Repr {
            src_addr: v6(to),
            dst_addr: GUEST_IPV6,
            next_header: IpProtocol::Icmpv6,
            payload_len: data.len(),
            hop_limit: 64,
        };
        assert_eq!(
            parse_icmpv6(&reply_ip, &data),
            Icmpv6Repr::EchoReply {
                ident: 0x4242,
                seq_no: 7,
                data: b"hello6"
            }
        );
    }
}

fn gateway6(port: u16) -> SocketAddr {
    SocketAddr::new(v6("fd00::2").into(), port)
}

/// A host server on `bind` that sends `download`, then reads until EOF and returns it.
fn serve_once(bind: &str, download: Vec<u8>) -> (u16, thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind(bind).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(&download).unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        got
    });
    (port, server)
}

/// Connects the guest to `to`, uploads `upload` while receiving `expected`, and closes.
fn guest_transfer(h: &mut Harness, to: SocketAddr, upload: &[u8], expected: &[u8]) {
    let s = h.tcp_socket(256 << 10);
    h.connect_established(s, to, 40000);
    let received = h.exchange(s, upload, expected.len(), Duration::from_secs(30));
    assert_eq!(received, expected, "download corrupted");
}

#[test]
fn tcp_over_ipv6_to_the_gateway_reaches_host_ipv6_loopback() {
    let download = pattern(1 << 20, 3);
    let upload = pattern(1 << 20, 77);
    let (port, server) = serve_once("[::1]:0", download.clone());
    let mut h = Harness::new(stack_config_v6(1500));
    h.enable_ipv6();
    guest_transfer(&mut h, gateway6(port), &upload, &download);
    h.run_until("upload done", Duration::from_secs(10), |_| {
        server.is_finished()
    });
    assert_eq!(server.join().unwrap(), upload, "upload corrupted");
    h.run_until("flow cleanup", Duration::from_secs(5), |h| {
        h.stack.tcp_flow_count() == 0
    });
}

fn udp_echo_server(bind: &str) -> (SocketAddr, thread::JoinHandle<SocketAddr>) {
    let server = UdpSocket::bind(bind).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let addr = server.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (n, peer) = server.recv_from(&mut buf).unwrap();
        let mut reply = b"echo:".to_vec();
        reply.extend_from_slice(&buf[..n]);
        server.send_to(&reply, peer).unwrap();
        peer
    });
    (addr, handle)
}

fn udp_round_trip(h: &mut Harness, to: IpEndpoint) -> (Vec<u8>, IpEndpoint) {
    let meta = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]);
    let mut socket = udp::Socket::new(meta(), meta());
    socket.bind(5353).unwrap();
    let s = h.sockets.add(socket);
    h.sockets
        .get_mut::<udp::Socket>(s)
        .send_slice(b"ping6", to)
        .unwrap();
    let mut got = None;
    h.run_until("udp reply", Duration::from_secs(5), |h| {
        if let Ok((data, meta)) = h.sockets.get_mut::<udp::Socket>(s).recv() {
            got = Some((data.to_vec(), meta.endpoint));
        }
        got.is_some()
    });
    got.unwrap()
}

#[test]
fn udp_over_ipv6_to_the_gateway_reaches_host_ipv6_loopback() {
    let (addr, server) = udp_echo_server("[::1]:0");
    let mut h = Harness::new(stack_config_v6(1500));
    h.enable_ipv6();
    let to = IpEndpoint::new(IpAddress::Ipv6(v6("fd00::2")), addr.port());
    let (reply, from) = udp_round_trip(&mut h, to);
    let peer = server.join().unwrap();
    assert_eq!(reply, b"echo:ping6");
    assert_eq!(from, to, "the reply comes from the address the guest used");
    assert!(peer.is_ipv6() && peer.ip().is_loopback());
}

#[test]
fn dns_to_fd00_3_reaches_an_ipv4_resolver() {
    let (resolver, server) = udp_echo_server("127.0.0.1:0");
    let mut config = stack_config_v6(1500);
    config.dns_upstream = Some(resolver);
    let mut h = Harness::new(config);
    h.enable_ipv6();
    let to = IpEndpoint::new(IpAddress::Ipv6(v6("fd00::3")), 53);
    let (reply, from) = udp_round_trip(&mut h, to);
    server.join().unwrap();
    assert_eq!(reply, b"echo:ping6");
    assert_eq!(from, to);
}

/// Sends one TCP SYN from the guest to `to` and returns the ICMPv6 unreachable code the
/// stack answers with.
fn unreachable_code_for_syn(h: &mut Harness, to: SocketAddr) -> u8 {
    let s = h.tcp_socket(4096);
    h.connect(s, to, 41000);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no unreachable for {to}");
        let now = smoltcp::time::Instant::from_micros(h.start.elapsed().as_micros() as i64);
        h.iface.poll(now, &mut h.wire, &mut h.sockets);
        let frames: Vec<Vec<u8>> = h.wire.from_guest.drain(..).collect();
        for frame in answers(h, &frames) {
            if let Some((_, ip, message)) = icmpv6_of(&frame) {
                if message[0] == 1 {
                    assert_eq!(ip.dst_addr, GUEST_IPV6);
                    // The quote starts with the guest's own IPv6 header.
                    let quoted = Ipv6Packet::new_checked(&message[8..]).unwrap();
                    assert_eq!(
                        quoted.dst_addr(),
                        match to.ip() {
                            std::net::IpAddr::V6(a) => a,
                            _ => unreachable!(),
                        }
                    );
                    h.sockets.remove(s);
                    return message[1];
                }
            }
            h.wire.to_guest.push_back(frame);
        }
    }
}

#[test]
fn unroutable_and_forbidden_ipv6_destinations_are_answered_with_unreachables() {
    let mut h = Harness::new(stack_config_v6(1500));
    h.enable_ipv6();
    // The loopback-only host refuses other destinations as a host without a route would.
    assert_eq!(
        unreachable_code_for_syn(&mut h, "[2001:db8::1]:80".parse().unwrap()),
        0,
        "no route"
    );
    // An IPv4-mapped address must not reach host loopback around the IPv4 rules.
    assert_eq!(
        unreachable_code_for_syn(&mut h, "[::ffff:127.0.0.1]:80".parse().unwrap()),
        3,
        "address unreachable"
    );
    let mut config = stack_config_v6(1500);
    config.disable_host_loopback = true;
    let mut h = Harness::new(config);
    h.enable_ipv6();
    assert_eq!(unreachable_code_for_syn(&mut h, gateway6(80)), 0);
}

/// A host client of a forward: sends `upload`, reads everything back.
fn forward_client(host: SocketAddr, upload: Vec<u8>) -> thread::JoinHandle<(SocketAddr, Vec<u8>)> {
    thread::spawn(move || {
        let mut conn = TcpStream::connect(host).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let local = conn.local_addr().unwrap();
        conn.write_all(&upload).unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        (local, got)
    })
}

/// Runs a guest echo server on `port` for one forwarded connection; returns the source
/// address the guest saw.
fn guest_echo_one(
    h: &mut Harness,
    port: u16,
    client: &thread::JoinHandle<(SocketAddr, Vec<u8>)>,
) -> IpEndpoint {
    let s = h.tcp_socket(256 << 10);
    h.tcp(s).listen(port).unwrap();
    let mut pending = Vec::new();
    let mut remote = None;
    h.run_until("forwarded echo", Duration::from_secs(30), |h| {
        let sock = h.tcp(s);
        if remote.is_none() {
            remote = sock.remote_endpoint();
        }
        recv_all(sock, &mut pending);
        if !pending.is_empty() && sock.can_send() {
            let n = sock.send_slice(&pending).unwrap();
            pending.drain(..n);
        }
        if pending.is_empty() && sock.state() == State::CloseWait {
            sock.close();
        }
        client.is_finished()
    });
    h.sockets.remove(s);
    remote.expect("connection seen")
}

#[test]
fn ipv6_forwards_reach_the_guest_over_either_family() {
    let mut h = Harness::new(stack_config_v6(1500));
    h.enable_ipv6();
    let guest6 = SocketAddr::new(GUEST_IPV6.into(), 8080);
    let cases = [
        // IPv6 listener to the guest's IPv6 address: a loopback client appears as fd00::2.
        ("[::1]:0", guest6, IpAddress::Ipv6(v6("fd00::2"))),
        // IPv4 listener to IPv6: the source must be of the guest's family, the gateway.
        ("127.0.0.1:0", guest6, IpAddress::Ipv6(v6("fd00::2"))),
        // IPv6 listener to the guest's IPv4 address.
        (
            "[::1]:0",
            "10.0.2.100:8080".parse().unwrap(),
            IpAddress::v4(10, 0, 2, 2),
        ),
    ];
    for (i, (listen, guest, seen_from)) in cases.into_iter().enumerate() {
        let info = h
            .stack
            .add_forward(Proto::Tcp, listen.parse().unwrap(), guest)
            .unwrap();
        assert_eq!(info.guest, guest);
        let upload = pattern(200 << 10, i as u8);
        let client = forward_client(info.host, upload.clone());
        let remote = guest_echo_one(&mut h, 8080, &client);
        let (_, echoed) = client.join().unwrap();
        assert_eq!(echoed, upload, "echo through {listen} -> {guest}");
        assert_eq!(
            remote.addr, seen_from,
            "source seen for {listen} -> {guest}"
        );
        assert!(h.stack.remove_forward(info.id));
    }
}

#[test]
fn the_neighbour_table_is_bounded_and_unknown_guests_are_still_answered() {
    let mut h = Harness::new(stack_config_v6(1500));
    // Echo requests to the gateway from 2000 different addresses of the /64.
    let frames: Vec<Vec<u8>> = (0..2000u16)
        .map(|i| {
            let src = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, i);
            let echo = Icmpv6Repr::EchoRequest {
                ident: i,
                seq_no: 1,
                data: b"x",
            };
            icmpv6_frame(src, v6("fd00::2"), 64, &echo)
        })
        .collect();
    let out = answers(&mut h, &frames);
    assert_eq!(out.len(), 2000, "every request answered");
    let full = h
        .stack
        .counter_list()
        .into_iter()
        .find(|(name, _)| *name == "neighbours_full")
        .map(|(_, value)| value);
    assert_eq!(full, Some(2000 - 1024), "addresses past the bound not kept");
    // The last one, not remembered, is answered to the broadcast address.
    let (dst_mac, ip, _) = icmpv6_of(out.last().unwrap()).unwrap();
    assert_eq!(ip.dst_addr, Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, 1999));
    assert_eq!(dst_mac, EthernetAddress::BROADCAST);
}
