//! Core UDP, ICMP, DNS, limits and robustness against a simulated guest (no root; only
//! loopback sockets).

mod support;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use smoltcp::socket::{icmp, tcp::State, udp};
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv4Packet, Icmpv4Repr, IpAddress, IpEndpoint, Ipv4Packet,
};
use support::guest::{Harness, stack_config};

fn udp_echo_server() -> (SocketAddr, thread::JoinHandle<()>) {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let addr = server.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        if let Ok((n, peer)) = server.recv_from(&mut buf) {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            server.send_to(&reply, peer).unwrap();
        }
    });
    (addr, handle)
}

fn udp_socket(h: &mut Harness, port: u16) -> smoltcp::iface::SocketHandle {
    let meta = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]);
    let mut socket = udp::Socket::new(meta(), meta());
    socket.bind(port).unwrap();
    h.sockets.add(socket)
}

fn udp_round_trip(h: &mut Harness, to: IpEndpoint) -> (Vec<u8>, IpEndpoint) {
    let s = udp_socket(h, 5353);
    h.sockets
        .get_mut::<udp::Socket>(s)
        .send_slice(b"ping", to)
        .unwrap();
    let mut got = None;
    h.run_until("udp reply", Duration::from_secs(5), |h| {
        let socket = h.sockets.get_mut::<udp::Socket>(s);
        if let Ok((data, meta)) = socket.recv() {
            got = Some((data.to_vec(), meta.endpoint));
        }
        got.is_some()
    });
    got.unwrap()
}

#[test]
fn udp_to_the_gateway_reaches_host_loopback_and_replies_come_back() {
    let (addr, server) = udp_echo_server();
    let mut h = Harness::new(stack_config(1500));
    let to = IpEndpoint::new(IpAddress::v4(10, 0, 2, 2), addr.port());
    let (reply, from) = udp_round_trip(&mut h, to);
    server.join().unwrap();
    assert_eq!(reply, b"echo:ping");
    assert_eq!(from, to, "reply must come from the address the guest used");
    assert_eq!(h.stack.udp_flow_count(), 1);
    // Idle flows expire (virtual clock: one minute later).
    h.stack
        .poll_timers(Instant::now() + Duration::from_secs(61));
    assert_eq!(h.stack.udp_flow_count(), 0);
}

#[test]
fn dns_to_net_plus_3_goes_to_the_host_resolver() {
    let (resolver, server) = udp_echo_server();
    let mut config = stack_config(1500);
    config.dns_upstream = Some(resolver);
    let mut h = Harness::new(config);
    let to = IpEndpoint::new(IpAddress::v4(10, 0, 2, 3), 53);
    let (reply, from) = udp_round_trip(&mut h, to);
    server.join().unwrap();
    assert_eq!(reply, b"echo:ping");
    assert_eq!(from, to);
}

#[test]
fn ping_to_the_gateway_is_answered() {
    let mut h = Harness::new(stack_config(1500));
    let meta = || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]);
    let mut socket = icmp::Socket::new(meta(), meta());
    socket.bind(icmp::Endpoint::Ident(0x1234)).unwrap();
    let s = h.sockets.add(socket);
    let request = Icmpv4Repr::EchoRequest {
        ident: 0x1234,
        seq_no: 1,
        data: b"hello",
    };
    let mut bytes = vec![0; request.buffer_len()];
    request.emit(
        &mut Icmpv4Packet::new_unchecked(&mut bytes),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    h.sockets
        .get_mut::<icmp::Socket>(s)
        .send_slice(&bytes, IpAddress::v4(10, 0, 2, 2))
        .unwrap();
    let mut reply = None;
    h.run_until("echo reply", Duration::from_secs(5), |h| {
        if let Ok((data, from)) = h.sockets.get_mut::<icmp::Socket>(s).recv() {
            reply = Some((data.to_vec(), from));
        }
        reply.is_some()
    });
    let (data, from) = reply.unwrap();
    assert_eq!(from, IpAddress::v4(10, 0, 2, 2));
    let packet = Icmpv4Packet::new_checked(&data).unwrap();
    let repr = Icmpv4Repr::parse(&packet, &smoltcp::phy::ChecksumCapabilities::default()).unwrap();
    assert_eq!(
        repr,
        Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 1,
            data: b"hello"
        }
    );
}

/// Lets the guest send, feeds its frames to the stack, and returns what the stack answered
/// (before the guest sees it).
fn stack_answers(h: &mut Harness) -> Vec<Vec<u8>> {
    let now = smoltcp::time::Instant::from_millis(h.start.elapsed().as_millis() as i64);
    h.iface.poll(now, &mut h.wire, &mut h.sockets);
    while let Some(frame) = h.wire.from_guest.pop_front() {
        h.stack.handle_frame(Instant::now(), &frame);
    }
    h.stack.flush();
    let frames = h.take_output();
    h.wire.to_guest.extend(frames.iter().cloned());
    frames
}

fn icmp_unreachable_code(frame: &[u8]) -> Option<u8> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
    (icmp.msg_type() == smoltcp::wire::Icmpv4Message::DstUnreachable).then(|| icmp.msg_code())
}

/// Steps until the stack answers the guest with ICMP destination unreachable; its code.
fn wait_for_unreachable(h: &mut Harness) -> u8 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no ICMP unreachable");
        if let Some(code) = stack_answers(h)
            .iter()
            .find_map(|f| icmp_unreachable_code(f))
        {
            return code;
        }
        h.step();
    }
}

#[test]
fn disabled_host_loopback_answers_network_unreachable() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = stack_config(1500);
    config.disable_host_loopback = true;
    let mut h = Harness::new(config);
    let s = h.tcp_socket(4096);
    h.connect(s, SocketAddr::from(([10, 0, 2, 2], port)), 41000);
    let code = wait_for_unreachable(&mut h);
    assert_eq!(code, 0, "network unreachable");
    assert_eq!(h.stack.tcp_flow_count(), 0);
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "nothing may reach host loopback"
    );
}

#[test]
fn flow_limit_refuses_new_connections_and_keeps_old_ones() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = stack_config(1500);
    config.limits.tcp_flows = 2;
    let mut h = Harness::new(config);
    let to = SocketAddr::from(([10, 0, 2, 2], port));
    let a = h.tcp_socket(4096);
    let b = h.tcp_socket(4096);
    let c = h.tcp_socket(4096);
    h.connect(a, to, 42001);
    h.connect(b, to, 42002);
    h.run_until("two connections", Duration::from_secs(5), |h| {
        h.tcp(a).state() == State::Established && h.tcp(b).state() == State::Established
    });
    h.connect(c, to, 42003);
    h.run_until("third refused", Duration::from_secs(5), |h| {
        h.tcp(c).state() == State::Closed
    });
    assert_eq!(h.stack.counters.dropped_flow_limit, 1);
    assert_eq!(h.counter("limit_tcp_flows"), 1);
    assert_eq!(h.counter("limit_pending_connects"), 0);
    assert_eq!(h.tcp(a).state(), State::Established);
    assert_eq!(h.stack.tcp_flow_count(), 2);
}

/// xorshift64*: deterministic garbage without a dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[test]
fn random_frames_are_dropped_and_counted_and_the_stack_keeps_working() {
    let mut h = Harness::new(stack_config(1500));
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let now = Instant::now();
    for i in 0..10_000 {
        let len = (next(&mut state) % 1600) as usize;
        let mut frame: Vec<u8> = (0..len).map(|_| next(&mut state) as u8).collect();
        // Half of them look like IPv4 from the guest so deeper parsers get exercised.
        if i % 2 == 0 && frame.len() > 34 {
            frame[12] = 0x08;
            frame[13] = 0x00;
            frame[14] = 0x45;
            frame[26..30].copy_from_slice(&[10, 0, 2, 100]);
            frame[23] = [6u8, 17, 1][i % 3];
        }
        // Whatever they ask for, only the gateway (host loopback) may be their destination;
        // the harness's host refuses anything else besides.
        if frame.len() > 34 && frame[12..14] == [0x08, 0x00] {
            frame[30..34].copy_from_slice(&[10, 0, 2, 2]);
        }
        h.stack.handle_frame(now, &frame);
    }
    h.stack.flush();
    let _ = h.stack.take_frames();
    let c = &h.stack.counters;
    assert_eq!(c.frames_in, 10_000);
    assert!(c.dropped_malformed + c.dropped_unsupported > 1000, "{c:?}");

    // Still serves a real connection afterwards.
    let (addr, server) = udp_echo_server();
    let (reply, _) = udp_round_trip(
        &mut h,
        IpEndpoint::new(IpAddress::v4(10, 0, 2, 2), addr.port()),
    );
    server.join().unwrap();
    assert_eq!(reply, b"echo:ping");
}

#[test]
fn udp_flow_limit_drops_new_flows_and_counts_them() {
    let mut config = stack_config(1500);
    config.limits.udp_flows = 2;
    let mut h = Harness::new(config);
    let servers: Vec<_> = (0..3).map(|_| udp_echo_server()).collect();
    let s = udp_socket(&mut h, 6000);
    for (addr, _) in &servers {
        let to = IpEndpoint::new(IpAddress::v4(10, 0, 2, 2), addr.port());
        h.sockets
            .get_mut::<udp::Socket>(s)
            .send_slice(b"x", to)
            .unwrap();
    }
    let mut replies = 0;
    h.run_until("two replies", Duration::from_secs(5), |h| {
        while h.sockets.get_mut::<udp::Socket>(s).recv().is_ok() {
            replies += 1;
        }
        replies == 2
    });
    // A moment more: the third must not arrive.
    let until = Instant::now() + Duration::from_millis(200);
    h.run_until("quiet", Duration::from_secs(1), |_| Instant::now() > until);
    assert!(h.sockets.get_mut::<udp::Socket>(s).recv().is_err());
    assert_eq!(h.stack.udp_flow_count(), 2);
    assert_eq!(h.stack.counters.dropped_flow_limit, 1);
    assert_eq!(h.counter("limit_udp_flows"), 1);
}

#[test]
fn a_connect_the_host_cannot_route_answers_network_unreachable() {
    // The harness's host refuses every non-loopback destination with ENETUNREACH, as a host
    // without a route would: the guest must get ICMP network unreachable, not a hang.
    let mut h = Harness::new(stack_config(1500));
    let s = h.tcp_socket(4096);
    h.connect(s, SocketAddr::from(([198, 18, 0, 9], 80)), 41001);
    let code = wait_for_unreachable(&mut h);
    assert_eq!(code, 0, "network unreachable");
    assert_eq!(h.stack.tcp_flow_count(), 0);
}

#[test]
fn a_tiny_configured_mtu_is_raised_to_the_ipv4_minimum() {
    // Without -c nothing else checks `-m`; the stack must still build sane frames.
    let mut h = Harness::new(stack_config(1));
    let (addr, server) = udp_echo_server();
    let (reply, _) = udp_round_trip(
        &mut h,
        IpEndpoint::new(IpAddress::v4(10, 0, 2, 2), addr.port()),
    );
    server.join().unwrap();
    assert_eq!(reply, b"echo:ping");
}
