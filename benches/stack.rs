//! Micro-benchmark without root: a bulk TCP transfer through the core, between a simulated
//! guest (smoltcp) and a real server on 127.0.0.1, at MTU 1500 and 65520. It reports frames
//! per second and throughput *inside the stack* (time spent in `Stack` calls only), so hot
//! spots show without namespaces, TAP devices or iperf3:
//!
//! ```sh
//! cargo bench --bench stack                 # both MTUs, 64 MiB each way
//! cargo bench --bench stack -- --mib 16     # shorter
//! valgrind --tool=callgrind target/release/deps/stack-* --bench --mib 4   # instruction profile
//! ```

#[path = "../tests/support/guest.rs"]
mod guest;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use guest::{Harness, stack_config};
use slirpnet::event_loop::dispatch_host_events;

struct Measured {
    frames: u64,
    bytes: u64,
    in_stack: Duration,
    wall: Duration,
}

/// One round like the event loop's, timing only the stack's own work.
fn step_timed(h: &mut Harness, in_stack: &mut Duration, frames: &mut u64) {
    let now = smoltcp::time::Instant::from_micros(h.start.elapsed().as_micros() as i64);
    h.iface.poll(now, &mut h.wire, &mut h.sockets);
    let t = Instant::now();
    while let Some(frame) = h.wire.from_guest.pop_front() {
        h.stack.handle_frame(t, &frame);
        *frames += 1;
    }
    h.stack.flush();
    *in_stack += t.elapsed();
    *frames += h.stack.tx.frames.len() as u64;
    h.collect();
    let t = Instant::now();
    dispatch_host_events(&mut h.stack, 0).unwrap();
    h.stack.poll_timers(Instant::now());
    h.stack.flush();
    *in_stack += t.elapsed();
    *frames += h.stack.tx.frames.len() as u64;
    h.collect();
    let now = smoltcp::time::Instant::from_micros(h.start.elapsed().as_micros() as i64);
    h.iface.poll(now, &mut h.wire, &mut h.sockets);
}

fn transfer(mtu: usize, bytes: usize, upload: bool) -> Measured {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        if upload {
            let mut got = 0;
            while got < bytes {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0);
                got += n;
            }
        } else {
            let mut sent = 0;
            while sent < bytes {
                let n = (bytes - sent).min(buf.len());
                conn.write_all(&buf[..n]).unwrap();
                sent += n;
            }
        }
    });
    let mut h = Harness::new(stack_config(mtu));
    let s = h.tcp_socket(4 << 20);
    h.connect(s, SocketAddr::from(([10, 0, 2, 2], port)), 50000);
    let mut in_stack = Duration::ZERO;
    let mut frames = 0;
    let start = Instant::now();
    let mut moved = 0;
    let chunk = vec![0x5au8; 1 << 20];
    while moved < bytes {
        step_timed(&mut h, &mut in_stack, &mut frames);
        let sock = h.tcp(s);
        if upload {
            if sock.can_send() {
                moved += sock
                    .send_slice(&chunk[..(bytes - moved).min(chunk.len())])
                    .unwrap();
            }
        } else {
            while sock.can_recv() {
                moved += sock.recv(|b| (b.len(), b.len())).unwrap();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "transfer stalled"
        );
    }
    while !server.is_finished() {
        step_timed(&mut h, &mut in_stack, &mut frames);
    }
    server.join().unwrap();
    Measured {
        frames,
        bytes: bytes as u64,
        in_stack,
        wall: start.elapsed(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --all-targets` runs benches without --bench: do nothing then.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let mib: usize = args
        .iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    println!("bulk TCP through the stack, {mib} MiB each way (simulated guest, host on 127.0.0.1)");
    println!(
        "{:<6} {:<12} {:>12} {:>14} {:>16} {:>12}",
        "MTU", "direction", "frames", "frames/s*", "Gbit/s in stack*", "wall Gbit/s"
    );
    for mtu in [1500, 65520] {
        for (upload, name) in [(false, "host→guest"), (true, "guest→host")] {
            let m = transfer(mtu, mib << 20, upload);
            let stack_secs = m.in_stack.as_secs_f64();
            println!(
                "{:<6} {:<12} {:>12} {:>14.0} {:>16.2} {:>12.2}",
                mtu,
                name,
                m.frames,
                m.frames as f64 / stack_secs,
                m.bytes as f64 * 8.0 / stack_secs / 1e9,
                m.bytes as f64 * 8.0 / m.wall.as_secs_f64() / 1e9,
            );
        }
    }
    println!("* time spent inside slirpnet's Stack calls only (including their host syscalls)");
}
