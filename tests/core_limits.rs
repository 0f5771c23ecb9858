//! Resource bounds (`--limit`) against a simulated guest (no root; only loopback sockets): at
//! each bound the next flow is refused and counted by name, and the flows already there keep
//! working. tests/core_misc.rs has the TCP and UDP flow bounds.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use slirpnet::stack::forward::Proto;
use smoltcp::socket::tcp::State;
use socket2::{Domain, Socket, Type};
use support::guest::{Harness, pattern, stack_config, tcp_to_guest};

fn gateway(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 2, 2], port))
}

/// A loopback listener with an accept queue of one: once a connection waits in it, the
/// kernel drops further SYNs and their connects stay in progress.
fn listener_with_full_queue() -> (Socket, SocketAddr, TcpStream) {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let filler = TcpStream::connect(addr).unwrap();
    (listener, addr, filler)
}

#[test]
fn pending_connect_bound_refuses_the_next_syn_and_the_waiting_connect_completes_later() {
    let (listener, addr, filler) = listener_with_full_queue();
    let mut config = stack_config(1500);
    config.limits.pending_connects = 1;
    let mut h = Harness::new(config);
    let waiting = h.tcp_socket(4096);
    let refused = h.tcp_socket(4096);
    h.connect(waiting, gateway(addr.port()), 43001);
    h.run_until("a host connect in progress", Duration::from_secs(5), |h| {
        h.counter("tcp_connecting") == 1
    });
    h.connect(refused, gateway(addr.port()), 43002);
    h.run_until("the second connect refused", Duration::from_secs(5), |h| {
        h.tcp(refused).state() == State::Closed
    });
    assert_eq!(h.counter("limit_pending_connects"), 1);
    assert_eq!(h.counter("limit_tcp_flows"), 0);
    assert_eq!(h.counter("dropped_flow_limit"), 1);
    assert_eq!(h.stack.tcp_flow_count(), 1);

    // Room in the queue again: the host retransmits its SYN and the waiting flow completes.
    let (_filler_peer, _) = listener.accept().unwrap();
    drop(filler);
    h.run_until(
        "the waiting connect established",
        Duration::from_secs(10),
        |h| h.tcp(waiting).state() == State::Established,
    );
    let (conn, _) = listener.accept().unwrap();
    let mut conn: TcpStream = conn.into();
    conn.write_all(b"still here").unwrap();
    let mut got = Vec::new();
    h.run_until("data on the waiting flow", Duration::from_secs(5), |h| {
        let sock = h.tcp(waiting);
        if sock.can_recv() {
            sock.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        got == b"still here"
    });
    assert_eq!(h.counter("tcp_connecting"), 0);
}

#[test]
fn forward_connection_bound_closes_the_extra_client_and_keeps_the_first() {
    let mut config = stack_config(1500);
    config.limits.forward_connections = 1;
    let mut h = Harness::new(config);
    let info = h
        .stack
        .add_forward(
            Proto::Tcp,
            "127.0.0.1:0".parse().unwrap(),
            SocketAddr::from(([10, 0, 2, 100], 83)),
        )
        .unwrap();
    // Two guest listeners, so a second connection would be taken if it got through.
    let first = h.tcp_socket(4096);
    let second = h.tcp_socket(4096);
    h.tcp(first).listen(83).unwrap();
    h.tcp(second).listen(83).unwrap();

    let mut a = TcpStream::connect(info.host).unwrap();
    h.run_until("first forwarded connection", Duration::from_secs(5), |h| {
        h.tcp(first).state() == State::Established
    });
    let mut b = TcpStream::connect(info.host).unwrap();
    h.run_until("second one refused", Duration::from_secs(5), |h| {
        h.counter("limit_forward_connections") == 1
    });
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    match b.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the refused client got {other:?}"),
    }
    assert_eq!(h.tcp(second).state(), State::Listen);
    assert_eq!(h.counter("dropped_flow_limit"), 1);
    assert_eq!(h.stack.tcp_flow_count(), 1);
    assert_eq!(h.stack.forward_stats()[0].1.connections_total, 1);

    // The first connection carries bytes both ways.
    a.write_all(b"ping").unwrap();
    a.set_nonblocking(true).unwrap();
    let mut to_guest = Vec::new();
    let mut to_host = Vec::new();
    h.run_until("an exchange on the first", Duration::from_secs(5), |h| {
        let sock = h.tcp(first);
        if sock.can_recv() {
            sock.recv(|d| {
                to_guest.extend_from_slice(d);
                (d.len(), ())
            })
            .unwrap();
            if to_guest == b"ping" {
                sock.send_slice(b"pong").unwrap();
            }
        }
        let mut buf = [0u8; 16];
        if let Ok(n) = a.read(&mut buf) {
            to_host.extend_from_slice(&buf[..n]);
        }
        to_host == b"pong"
    });

    // Once the first closes, the bound has room again.
    drop(a);
    h.tcp(first).close();
    h.run_until("the first flow gone", Duration::from_secs(5), |h| {
        h.stack.tcp_flow_count() == 0
    });
    let _c = TcpStream::connect(info.host).unwrap();
    h.run_until("a new connection accepted", Duration::from_secs(5), |h| {
        h.tcp(second).state() == State::Established
    });
    assert_eq!(h.counter("limit_forward_connections"), 1);
}

/// The TCP window fields the stack sent the guest, scaled by `shift` (except in SYNs), and
/// the window scale option of its SYN-ACK.
fn windows_to_guest(frames: &[Vec<u8>], shift: u8) -> (Vec<usize>, Option<u8>) {
    let mut windows = Vec::new();
    let mut offered = None;
    for tcp in tcp_to_guest(frames).into_iter().filter(|tcp| !tcp.rst) {
        let window = usize::from(tcp.window);
        if tcp.syn {
            offered = tcp.window_scale.or(offered);
            windows.push(window);
        } else {
            windows.push(window << shift);
        }
    }
    (windows, offered)
}

#[test]
fn a_small_flow_buffer_bounds_the_window_and_still_carries_an_upload() {
    const BUFFER: usize = 64 << 10;
    // A host server that reads nothing until told: the host socket fills, then our buffer.
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.set_recv_buffer_size(4096).unwrap();
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    listener.listen(1).unwrap();
    let port = listener.local_addr().unwrap().as_socket().unwrap().port();
    let go = Arc::new(AtomicBool::new(false));
    let server = {
        let go = Arc::clone(&go);
        thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut conn: TcpStream = conn.into();
            while !go.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(10));
            }
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            got
        })
    };

    let mut config = stack_config(1500);
    config.limits.flow_buffer = BUFFER;
    let mut h = Harness::new(config);
    h.to_guest_log = Some(Vec::new());
    let s = h.tcp_socket(256 << 10);
    h.connect_established(s, gateway(port), 44000);
    let upload = pattern(4 << 20, 42);
    let mut sent = 0;
    let started = Instant::now();
    h.run_until("upload sent", Duration::from_secs(60), |h| {
        if h.counter("limit_flow_buffer") > 0 || started.elapsed() > Duration::from_secs(5) {
            go.store(true, Ordering::Relaxed);
        }
        let sock = h.tcp(s);
        if sent < upload.len() && sock.can_send() {
            sent += sock.send_slice(&upload[sent..]).unwrap();
        }
        if sent == upload.len() && sock.send_queue() == 0 {
            sock.close();
            return true;
        }
        false
    });
    h.run_until("server done", Duration::from_secs(30), |_| {
        server.is_finished()
    });
    let got = server.join().unwrap();
    assert!(
        got == upload,
        "upload corrupted: {} of {} bytes",
        got.len(),
        upload.len()
    );
    assert!(
        h.counter("limit_flow_buffer") > 0,
        "the buffer never filled: the test did not exercise the bound"
    );
    // Filling the buffer refuses no flow.
    assert_eq!(h.counter("dropped_flow_limit"), 0);

    let (windows, offered) = windows_to_guest(h.to_guest_log.as_ref().unwrap(), 7);
    assert_eq!(offered, Some(7), "a 64 KiB buffer needs no larger shift");
    assert!(windows.len() > 10, "{windows:?}");
    assert!(
        windows.iter().all(|&w| w <= BUFFER),
        "a window above the buffer: {:?}",
        windows.iter().max()
    );
}
