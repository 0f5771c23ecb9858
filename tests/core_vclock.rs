//! Throughput over a long round trip, on a virtual clock: the simulated guest and the stack
//! exchange frames over a link with 10 ms of delay each way, the host side is simulated in
//! memory (`support::sim_host`), and time jumps from one event to the next. No socket, no real
//! time: the figures are what the windows allow, whatever the machine's load.
//!
//! slirp4netns advertises at most 64 KiB, so over a 20 ms round trip it moves at most
//! 64 KiB / 20 ms = 3.3 MB/s: 16 MiB take over 5 s.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use support::guest::{Clock, Harness, Impairment, pattern, recv_all, stack_config};
use support::sim_host::SimHost;

const ONE_WAY: Duration = Duration::from_millis(10);
const BYTES: usize = 16 << 20;
/// What a 64 KiB window allows for [`BYTES`] over a 20 ms round trip.
const CAPPED_SECS: f64 = BYTES as f64 / 65536.0 * 0.020;

/// A host peer that sends [`BYTES`] on the connection.
fn served() -> SimHost {
    SimHost::with_download(pattern(BYTES, 5))
}

fn gateway(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 2, 2], port))
}

/// A guest with a socket of `buffer` bytes each way, connected through the stack to a
/// simulated `host`, over the delayed link.
fn connected(
    host: SimHost,
    buffer: usize,
    impairment: Impairment,
) -> (Harness<SimHost>, SocketHandle) {
    let mut h = Harness::with_host(host, stack_config(1500), Clock::Virtual(Instant::now()));
    h.impairment = Impairment {
        one_way_delay: ONE_WAY,
        ..impairment
    };
    let s = h.tcp_socket(buffer);
    h.connect(s, gateway(8080), 40000);
    h.run_until("established", Duration::from_secs(5), |h| {
        h.tcp(s).state() == State::Established
    });
    assert_eq!(h.stack.host.connections.len(), 1);
    (h, s)
}

/// Guest → host: the guest writes `bytes` as fast as its socket takes them, the host peer
/// reads everything the moment it arrives. Returns the virtual seconds from established to
/// the peer having every byte, which must be the bytes sent.
fn upload(bytes: usize, impairment: Impairment) -> f64 {
    let (mut h, s) = connected(SimHost::default(), 8 << 20, impairment);
    let data = pattern(bytes, 3);
    let started = h.now();
    let mut sent = 0;
    h.run_until("upload", Duration::from_secs(60), |h| {
        let sock = h.tcp(s);
        if sent < data.len() && sock.can_send() {
            sent += sock.send_slice(&data[sent..]).unwrap();
        }
        let queued = sock.send_queue();
        h.stack.host.drain(0);
        let received = h.stack.host.connections[0].received.len();
        if std::env::var_os("TRACE_PROGRESS").is_some() {
            eprintln!(
                "{:?} sent {sent} queued {queued} received {received}",
                h.now() - started
            );
        }
        received >= bytes
    });
    let secs = (h.now() - started).as_secs_f64();
    assert!(
        h.stack.host.connections[0].received == data,
        "the host peer got other bytes than the guest sent"
    );
    report("upload", bytes, secs, "");
    secs
}

/// Host → guest: `host`'s peer sends its download and closes; the guest (socket buffers of
/// `buffer` bytes) reads everything the moment it arrives. Returns the virtual seconds from
/// established to the guest having every byte, which must be the bytes sent.
fn download(host: SimHost, buffer: usize, impairment: Impairment) -> f64 {
    let data = host.download.to_vec();
    let bytes = data.len();
    let (mut h, s) = connected(host, buffer, impairment);
    let started = h.now();
    let mut received = Vec::with_capacity(bytes);
    h.run_until("download", Duration::from_secs(60), |h| {
        let sock = h.tcp(s);
        recv_all(sock, &mut received);
        if std::env::var_os("TRACE_PROGRESS").is_some() {
            eprintln!("{:?} received {}", h.now() - started, received.len());
        }
        received.len() >= bytes
    });
    let secs = (h.now() - started).as_secs_f64();
    assert!(
        received == data,
        "the guest got other bytes than the host sent"
    );
    let host = &h.stack.host;
    let sent = format!(
        "; {:.2}x the bytes sent (go-back-N), {} rewinds, at most {} KiB in flight",
        host.peeked_bytes as f64 / bytes as f64,
        host.rewinds,
        host.max_in_flight >> 10,
    );
    report("download", bytes, secs, &sent);
    secs
}

fn report(what: &str, bytes: usize, secs: f64, details: &str) {
    println!(
        "{what}: {} MiB in {secs:.3} s virtual = {:.1} MB/s, {:.1}x what a 64 KiB window \
         allows ({CAPPED_SECS:.2} s){details}",
        bytes >> 20,
        bytes as f64 / secs / 1e6,
        CAPPED_SECS / secs,
    );
}

#[test]
fn upload_over_20ms_is_not_capped_by_a_64k_window() {
    let secs = upload(BYTES, Impairment::default());
    assert!(
        secs < 1.0,
        "upload took {secs:.3} s virtual; a 64 KiB window would take {CAPPED_SECS:.2} s"
    );
}

#[test]
fn download_over_20ms_is_not_capped_by_a_64k_window() {
    let secs = download(served(), 8 << 20, Impairment::default());
    assert!(
        secs < 1.0,
        "download took {secs:.3} s virtual; a 64 KiB window would take {CAPPED_SECS:.2} s"
    );
}

/// The control: the same download to a guest that can only open a 64 KiB window takes what
/// that window allows, so the measurement above does see the window.
#[test]
fn a_64k_guest_window_caps_the_download_as_slirp4netns_would() {
    let secs = download(served(), 64 << 10, Impairment::default());
    assert!(
        secs >= CAPPED_SECS * 0.95,
        "a 64 KiB window moved {} MiB in {secs:.3} s virtual, faster than it can",
        BYTES >> 20
    );
}

/// What the guest has not acknowledged stays in the host socket's receive buffer, our
/// retransmission queue: when that buffer is smaller than the guest's window, it bounds the
/// download instead (a real kernel autotunes it up to `net.core.rmem_max`).
#[test]
fn the_host_receive_buffer_bounds_the_download_window() {
    let mut host = served();
    host.receive_buffer = 1 << 20;
    let secs = download(host, 8 << 20, Impairment::default());
    let bound = BYTES as f64 / f64::from(1 << 20) * 0.020;
    assert!(
        secs >= bound * 0.95,
        "{} MiB through a 1 MiB buffer took {secs:.3} s virtual, under {bound:.2} s",
        BYTES >> 20
    );
}

#[test]
fn a_lossy_long_round_trip_still_delivers_every_byte() {
    let lossy = Impairment {
        drop_one_in: 200,
        seed: 0x5eed_1234_abcd_0001,
        ..Impairment::default()
    };
    upload(BYTES, lossy);
    download(served(), 8 << 20, lossy);
}
