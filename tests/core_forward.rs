//! Port forwards against a simulated guest (no root; host clients on loopback).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::thread;
use std::time::Duration;

use slirpnet::stack::forward::Proto;
use smoltcp::socket::tcp::State;
use smoltcp::socket::udp;
use support::guest::{Harness, pattern, recv_all, stack_config};

fn guest(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 2, 100], port))
}

fn any_loopback_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[test]
fn tcp_forward_carries_bytes_both_ways_and_shows_the_gateway_as_source() {
    let mut h = Harness::new(stack_config(1500));
    let info = h
        .stack
        .add_forward(Proto::Tcp, any_loopback_port(), guest(80))
        .unwrap();
    assert_eq!(info.id.0, 1);
    assert_ne!(info.host.port(), 0, "the bound port is reported");
    let s = h.tcp_socket(256 << 10);
    h.tcp(s).listen(80).unwrap();

    let upload = pattern(512 << 10, 5);
    let download = pattern(512 << 10, 9);
    let sent_up = upload.clone();
    let client = thread::spawn(move || {
        let mut conn = TcpStream::connect(info.host).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let writer = {
            let mut conn = conn.try_clone().unwrap();
            thread::spawn(move || {
                conn.write_all(&sent_up).unwrap();
                conn.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        got
    });

    let mut received = Vec::new();
    let mut sent = 0;
    let mut remote = None;
    h.run_until("forwarded transfer", Duration::from_secs(30), |h| {
        let sock = h.tcp(s);
        if remote.is_none() {
            remote = sock.remote_endpoint();
        }
        recv_all(sock, &mut received);
        if sent < download.len() && sock.can_send() {
            sent += sock.send_slice(&download[sent..]).unwrap();
        }
        if sent == download.len() && received.len() == upload.len() && !sock.may_recv() {
            sock.close();
            return true;
        }
        false
    });
    let remote = remote.expect("the guest saw a connection");
    assert_eq!(
        remote.addr.to_string(),
        "10.0.2.2",
        "loopback clients come from the gateway"
    );
    assert!(received == upload, "host to guest corrupted");
    h.run_until("client done", Duration::from_secs(10), |_| {
        client.is_finished()
    });
    assert!(
        client.join().unwrap() == download,
        "guest to host corrupted"
    );

    let stats = h.stack.forward_stats();
    assert_eq!(stats[0].1.connections_total, 1);
    assert_eq!(stats[0].1.bytes_to_guest, upload.len() as u64);
    h.run_until("cleanup", Duration::from_secs(5), |h| {
        h.stack.tcp_flow_count() == 0
    });
    let stats = h.stack.forward_stats();
    assert_eq!(stats[0].1.bytes_to_host, download.len() as u64);
    assert_eq!(stats[0].1.connections_active, 0);
}

#[test]
fn guest_refusing_resets_the_host_client() {
    let mut h = Harness::new(stack_config(1500));
    let info = h
        .stack
        .add_forward(Proto::Tcp, any_loopback_port(), guest(81))
        .unwrap();
    // Nothing listens on 81 in the guest: smoltcp answers the SYN with a RST.
    let client = thread::spawn(move || {
        let mut conn = TcpStream::connect(info.host).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 1];
        conn.read(&mut buf).map_err(|e| e.kind())
    });
    h.run_until("client sees the refusal", Duration::from_secs(10), |_| {
        client.is_finished()
    });
    let result = client.join().unwrap();
    assert!(
        matches!(result, Err(std::io::ErrorKind::ConnectionReset) | Ok(0)),
        "got {result:?}"
    );
    assert_eq!(h.stack.tcp_flow_count(), 0);
}

#[test]
fn many_concurrent_connections_through_one_forward() {
    let mut h = Harness::new(stack_config(1500));
    let info = h
        .stack
        .add_forward(Proto::Tcp, any_loopback_port(), guest(82))
        .unwrap();
    const CLIENTS: usize = 200;
    let listeners: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let s = h.tcp_socket(4096);
            h.tcp(s).listen(82).unwrap();
            s
        })
        .collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            thread::spawn(move || {
                let mut conn = TcpStream::connect(info.host).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let mut buf = [0u8; 3];
                conn.read_exact(&mut buf).unwrap();
                assert_eq!(&buf, b"hi!", "client {i}");
            })
        })
        .collect();
    let mut greeted = [false; CLIENTS];
    h.run_until("all clients greeted", Duration::from_secs(60), |h| {
        for (i, &s) in listeners.iter().enumerate() {
            let sock = h.tcp(s);
            if !greeted[i] && sock.state() == State::Established && sock.can_send() {
                sock.send_slice(b"hi!").unwrap();
                greeted[i] = true;
            }
        }
        greeted.iter().all(|&g| g)
    });
    h.run_until("clients done", Duration::from_secs(30), |_| {
        clients.iter().all(|c| c.is_finished())
    });
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(
        h.stack.forward_stats()[0].1.connections_total,
        CLIENTS as u64
    );
}

#[test]
fn udp_forward_answers_each_client() {
    let mut h = Harness::new(stack_config(1500));
    let info = h
        .stack
        .add_forward(Proto::Udp, any_loopback_port(), guest(53))
        .unwrap();
    let meta = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16384]);
    let mut socket = udp::Socket::new(meta(), meta());
    socket.bind(53).unwrap();
    let s = h.sockets.add(socket);

    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.send_to(b"from a", info.host).unwrap();
    b.send_to(b"from b", info.host).unwrap();
    let mut answered = 0;
    h.run_until("two datagrams in the guest", Duration::from_secs(5), |h| {
        let socket = h.sockets.get_mut::<udp::Socket>(s);
        while let Ok((data, meta)) = socket.recv() {
            assert_eq!(meta.endpoint.addr.to_string(), "10.0.2.2");
            let mut reply = b"re: ".to_vec();
            reply.extend_from_slice(data);
            let endpoint = meta.endpoint;
            socket.send_slice(&reply, endpoint).unwrap();
            answered += 1;
        }
        answered == 2
    });
    for _ in 0..20 {
        h.step();
    }
    a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    let n = a.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"re: from a");
    let n = b.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"re: from b");
    assert_eq!(h.stack.udp_flow_count(), 2);
    assert_eq!(h.stack.forward_stats()[0].1.connections_total, 2);
}

#[test]
fn removing_a_forward_closes_its_listener_and_keeps_connections() {
    let mut h = Harness::new(stack_config(1500));
    let info = h
        .stack
        .add_forward(Proto::Tcp, any_loopback_port(), guest(83))
        .unwrap();
    let s = h.tcp_socket(4096);
    h.tcp(s).listen(83).unwrap();
    let mut conn = TcpStream::connect(info.host).unwrap();
    h.run_until("established", Duration::from_secs(5), |h| {
        h.tcp(s).state() == State::Established
    });
    assert!(h.stack.remove_forward(info.id));
    assert!(!h.stack.remove_forward(info.id), "already gone");
    assert!(h.stack.forwards().is_empty());
    assert!(
        TcpStream::connect_timeout(&info.host, Duration::from_secs(1)).is_err(),
        "listener closed at once"
    );
    conn.write_all(b"still here").unwrap();
    let mut got = Vec::new();
    h.run_until("data after removal", Duration::from_secs(5), |h| {
        let sock = h.tcp(s);
        recv_all(sock, &mut got);
        got == b"still here"
    });
    // A new forward gets the next id, never a reused one.
    let next = h
        .stack
        .add_forward(Proto::Tcp, any_loopback_port(), guest(83))
        .unwrap();
    assert_eq!(next.id.0, 2);
}

#[test]
fn port_in_use_fails_and_uses_no_id() {
    let mut h = Harness::new(stack_config(1500));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    assert!(h.stack.add_forward(Proto::Tcp, addr, guest(80)).is_err());
    let info = h
        .stack
        .add_forward(Proto::Tcp, any_loopback_port(), guest(80))
        .unwrap();
    assert_eq!(info.id.0, 1);
}
