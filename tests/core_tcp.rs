//! Core TCP translation against a simulated guest and real loopback servers (no root).

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::thread;
use std::time::Duration;

use smoltcp::socket::tcp::State;
use support::guest::{Harness, Impairment, pattern, recv_all, stack_config};

fn gateway(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 2, 2], port))
}

#[test]
fn download_and_upload_one_mib_through_the_gateway() {
    transfer_both_ways(Impairment::default());
}

#[test]
fn transfer_survives_a_lossy_reordering_link() {
    transfer_both_ways(Impairment {
        drop_one_in: 20,
        reorder_one_in: 15,
        seed: 0x1234_5678_9abc_def1,
        ..Impairment::default()
    });
}

fn transfer_both_ways(impairment: Impairment) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let download = pattern(1 << 20, 7);
    let upload = pattern(1 << 20, 99);
    let served = download.clone();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(&served).unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        got
    });

    let mut h = Harness::new(stack_config(1500));
    h.impairment = impairment;
    let s = h.tcp_socket(256 << 10);
    h.connect_established(s, gateway(port), 40000);

    let received = h.exchange(s, &upload, download.len(), Duration::from_secs(60));
    assert_eq!(received, download, "download corrupted");
    h.run_until("upload done", Duration::from_secs(10), |_| {
        server.is_finished()
    });
    assert_eq!(server.join().unwrap(), upload, "upload corrupted");
    // Both sides closed: nothing may linger in the flow table.
    h.run_until("flow cleanup", Duration::from_secs(5), |h| {
        h.stack.tcp_flow_count() == 0
    });
}

#[test]
fn refused_connect_is_reset_at_once() {
    // Bind then drop to get a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut h = Harness::new(stack_config(1500));
    let s = h.tcp_socket(4096);
    h.connect(s, gateway(port), 40001);
    h.run_until("reset", Duration::from_secs(2), |h| {
        h.tcp(s).state() == State::Closed
    });
    assert_eq!(h.stack.counters.tcp_connects_refused, 1);
    assert_eq!(h.stack.tcp_flow_count(), 0);
}

#[test]
fn half_close_from_the_guest_then_reply_from_the_host() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        conn.read_to_end(&mut request).unwrap(); // ends only on the guest's FIN
        conn.write_all(b"reply to: ").unwrap();
        conn.write_all(&request).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
    });
    let mut h = Harness::new(stack_config(1500));
    let s = h.tcp_socket(4096);
    h.connect_established(s, gateway(port), 40002);
    h.tcp(s).send_slice(b"hello").unwrap();
    h.tcp(s).close();
    let mut reply = Vec::new();
    h.run_until("reply and FIN", Duration::from_secs(5), |h| {
        let sock = h.tcp(s);
        recv_all(sock, &mut reply);
        matches!(sock.state(), State::TimeWait | State::Closed)
    });
    server.join().unwrap();
    assert_eq!(reply, b"reply to: hello");
    h.run_until("flow cleanup", Duration::from_secs(5), |h| {
        h.stack.tcp_flow_count() == 0
    });
}

/// The host's last bytes and its FIN are both queued before the stack looks: the guest's
/// segment makes it peek the bytes (a short peek, the socket then drained), and the host's
/// event that follows must still bring the EOF behind them. (The other order, the event
/// first, is `half_close_from_the_guest_then_reply_from_the_host`.)
#[test]
fn bytes_and_fin_queued_together_both_reach_the_guest() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        wait.recv().unwrap();
        conn.write_all(b"bye").unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
    });
    let mut h = Harness::new(stack_config(1500));
    let s = h.tcp_socket(4096);
    h.connect_established(s, gateway(port), 40004);
    go.send(()).unwrap();
    // No steps meanwhile: bytes and FIN both wait in the host socket.
    thread::sleep(Duration::from_millis(200));
    let mut got = Vec::new();
    h.run_until("bytes and FIN", Duration::from_secs(5), |h| {
        let sock = h.tcp(s);
        recv_all(sock, &mut got);
        sock.state() == State::CloseWait
    });
    assert_eq!(got, b"bye");
    h.tcp(s).close();
    h.run_until("flow cleanup", Duration::from_secs(5), |h| {
        h.stack.tcp_flow_count() == 0
    });
    server.join().unwrap();
}

#[test]
fn host_reset_reaches_the_guest() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        wait.recv().unwrap();
        socket2::SockRef::from(&conn)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(conn);
    });
    let mut h = Harness::new(stack_config(1500));
    let s = h.tcp_socket(4096);
    h.connect_established(s, gateway(port), 40003);
    go.send(()).unwrap();
    server.join().unwrap();
    h.run_until("reset", Duration::from_secs(5), |h| {
        h.tcp(s).state() == State::Closed
    });
    assert_eq!(h.stack.tcp_flow_count(), 0);
}

#[test]
fn guest_reset_resets_the_host_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0; 16];
        conn.read(&mut buf).map_err(|e| e.kind())
    });
    let mut h = Harness::new(stack_config(1500));
    let s = h.tcp_socket(4096);
    h.connect_established(s, gateway(port), 40004);
    h.tcp(s).abort();
    h.run_until("host sees reset", Duration::from_secs(5), |_| {
        server.is_finished()
    });
    assert_eq!(
        server.join().unwrap(),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    assert_eq!(h.stack.tcp_flow_count(), 0);
}

#[test]
fn large_mtu_transfer_is_intact() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let data = pattern(4 << 20, 3);
    let served = data.clone();
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(&served).unwrap();
    });
    let mut h = Harness::new(stack_config(65520));
    let s = h.tcp_socket(1 << 20);
    h.connect(s, gateway(port), 40005);
    let mut received = Vec::new();
    h.run_until("download", Duration::from_secs(30), |h| {
        let sock = h.tcp(s);
        recv_all(sock, &mut received);
        received.len() == data.len()
    });
    assert!(received == data, "payload corrupted at MTU 65520");
}

#[test]
fn guest_syn_retries_during_a_slow_host_connect_do_no_harm() {
    // A listener whose accept queue is full drops new SYNs, so the host connect takes the
    // kernel's SYN retry (about a second) while the guest retransmits its own SYN.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let listener: TcpListener = socket.into();
    let port = listener.local_addr().unwrap().port();
    // Backlog 0 holds one connection: this one fills it.
    let filler = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut h = Harness::new(stack_config(1500));
    let s = h.tcp_socket(4096);
    h.connect(s, gateway(port), 40006);
    let started = std::time::Instant::now();
    h.run_until("guest SYN retransmission", Duration::from_secs(3), |_| {
        started.elapsed() > Duration::from_millis(1200)
    });
    assert_eq!(
        h.tcp(s).state(),
        State::SynSent,
        "no SYN-ACK before the host connect"
    );
    assert_eq!(
        h.stack.tcp_flow_count(),
        1,
        "retransmitted SYNs must not add flows"
    );
    // Free the queue: the host connect completes, and so does the guest's.
    let accepted: Vec<_> = (0..3)
        .map_while(|_| {
            listener.set_nonblocking(true).unwrap();
            listener.accept().ok()
        })
        .collect();
    assert!(!accepted.is_empty());
    drop(filler);
    let mut conns = accepted;
    h.run_until("established", Duration::from_secs(10), |h| {
        if let Ok(c) = listener.accept() {
            conns.push(c);
        }
        h.tcp(s).state() == State::Established
    });
    assert_eq!(h.stack.tcp_flow_count(), 1);
}

/// Moves `bytes` over one connection on a link with `one_way` latency; returns the seconds
/// the transfer took once established.
fn timed_transfer(one_way: Duration, bytes: usize, upload: bool) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut moved = 0;
        while moved < bytes {
            if upload {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "connection closed early");
                moved += n;
            } else {
                let n = (bytes - moved).min(buf.len());
                conn.write_all(&buf[..n]).unwrap();
                moved += n;
            }
        }
        if !upload {
            // Keep the connection open until the guest has everything.
            let _ = conn.read(&mut buf);
        }
    });
    let mut h = Harness::new(stack_config(1500));
    h.impairment.one_way_delay = one_way;
    let s = h.tcp_socket(16 << 20);
    h.connect_established(s, gateway(port), 40100);
    let started = std::time::Instant::now();
    let chunk = vec![7u8; 1 << 20];
    let mut moved = 0;
    h.run_until("transfer", Duration::from_secs(60), |h| {
        let sock = h.tcp(s);
        if upload {
            if sock.can_send() && moved < bytes {
                moved += sock
                    .send_slice(&chunk[..(bytes - moved).min(chunk.len())])
                    .unwrap();
            }
            moved == bytes && server.is_finished()
        } else {
            while sock.can_recv() {
                moved += sock.recv(|b| (b.len(), b.len())).unwrap();
            }
            moved == bytes
        }
    });
    let secs = started.elapsed().as_secs_f64();
    h.tcp(s).close();
    for _ in 0..10 {
        h.step();
    }
    secs
}

#[test]
fn a_long_round_trip_is_not_capped_by_a_64k_window() {
    // 20 ms round trip between guest and stack: a 64 KiB window (slirp4netns) allows at most
    // 3.3 MB/s, so 16 MiB would take over 5 s.
    let rtt = Duration::from_millis(20);
    let bytes = 16 << 20;
    let capped = bytes as f64 / 65536.0 * rtt.as_secs_f64();
    // Guest to host runs on the window we advertise (4 MiB, scaled): faster than a 64 KiB
    // window could ever be. On real time the figure depends on the machine's load (1.8–2.4 s
    // with the other tests of this file running on two busy cores, over the 1.7 s once
    // asserted here), so it is asserted on a virtual clock instead (core_vclock.rs: 0.11 s).
    let secs = timed_transfer(rtt / 2, bytes, true);
    assert!(
        secs < capped,
        "upload took {secs:.2} s; a 64 KiB window would take {capped:.2} s"
    );
    // Host to guest keeps unacknowledged bytes in the host socket's receive buffer, which the
    // kernel sizes for the host side's round trip (loopback here), not the guest's: it only
    // has to complete here (about 3 s on an idle machine; see docs/performance.md).
    timed_transfer(rtt / 2, bytes, false);
}

#[test]
fn a_slow_guest_reader_is_served_at_its_pace_without_stalls() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let total = 2 << 20;
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(&vec![1u8; total]).unwrap();
    });
    let mut h = Harness::new(stack_config(1500));
    // A small receive buffer: its window closes and reopens all the time.
    let s = h.tcp_socket(64 << 10);
    h.connect(s, gateway(port), 40101);
    let mut got = 0;
    let mut last_read = std::time::Instant::now();
    let mut next_read = last_read;
    let mut worst_gap = Duration::ZERO;
    h.run_until("slow download", Duration::from_secs(30), |h| {
        let now = std::time::Instant::now();
        if now >= next_read {
            // The reader takes 32 KiB every 10 ms: about 3 MB/s.
            let sock = h.tcp(s);
            let n = if sock.can_recv() {
                sock.recv(|b| {
                    let n = b.len().min(32 << 10);
                    (n, n)
                })
                .unwrap()
            } else {
                0
            };
            if n > 0 {
                worst_gap = worst_gap.max(now - last_read);
                last_read = now;
                got += n;
                next_read = now + Duration::from_millis(10);
            }
        }
        got == total
    });
    assert!(
        worst_gap < Duration::from_millis(500),
        "the transfer stalled for {worst_gap:?}"
    );
}

#[test]
fn a_slow_host_reader_is_fed_at_its_pace_without_stalls() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let total = 4 << 20;
    let server = thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        // A small receive buffer on the host side too.
        socket2::SockRef::from(&conn)
            .set_recv_buffer_size(64 << 10)
            .unwrap();
        let mut conn = conn;
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0;
        let mut last = std::time::Instant::now();
        let mut worst = Duration::ZERO;
        while got < total {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0);
            got += n;
            let now = std::time::Instant::now();
            worst = worst.max(now - last);
            last = now;
            thread::sleep(Duration::from_millis(5));
        }
        worst
    });
    let mut h = Harness::new(stack_config(1500));
    let s = h.tcp_socket(1 << 20);
    h.connect(s, gateway(port), 40102);
    let chunk = vec![3u8; 1 << 20];
    let mut sent = 0;
    h.run_until("slow upload", Duration::from_secs(60), |h| {
        let sock = h.tcp(s);
        if sock.can_send() && sent < total {
            sent += sock
                .send_slice(&chunk[..(total - sent).min(chunk.len())])
                .unwrap();
        }
        server.is_finished()
    });
    let worst = server.join().unwrap();
    assert!(
        worst < Duration::from_millis(500),
        "the host reader waited {worst:?}"
    );
}
