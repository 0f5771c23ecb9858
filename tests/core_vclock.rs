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
use support::guest::{Clock, Harness, Impairment, pattern, recv_all, stack_config, tcp_to_guest};
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
    h.connect_established(s, gateway(8080), 40000);
    assert_eq!(h.stack.host.connections.len(), 1);
    (h, s)
}

/// Guest → host: the guest writes `bytes` as fast as its socket takes them, the host peer
/// reads everything the moment it arrives. Returns the virtual seconds from established to
/// the peer having every byte, which must be the bytes sent.
fn upload(bytes: usize, impairment: Impairment) -> f64 {
    let (mut h, s) = connected(SimHost::default(), 8 << 20, impairment);
    upload_on(&mut h, s, bytes)
}

fn upload_on(h: &mut Harness<SimHost>, s: SocketHandle, bytes: usize) -> f64 {
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

/// How a download went.
struct Download {
    /// Virtual seconds from established to the guest having every byte.
    secs: f64,
    /// Bytes peeked from the host socket (sent to the guest), retransmissions included, per
    /// byte of the download.
    sent_per_byte: f64,
}

/// Host → guest: `host`'s peer sends its download and closes; the guest (socket buffers of
/// `buffer` bytes) reads everything the moment it arrives, which must be the bytes sent.
fn download(host: SimHost, buffer: usize, impairment: Impairment) -> Download {
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
    let sent_per_byte = host.peeked_bytes as f64 / bytes as f64;
    let sent = format!(
        "; {sent_per_byte:.2}x the bytes sent, {} peeks from the first unacknowledged byte, \
         at most {} KiB in flight",
        host.rewinds,
        host.max_in_flight >> 10,
    );
    report("download", bytes, secs, &sent);
    Download {
        secs,
        sent_per_byte,
    }
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
    let secs = download(served(), 8 << 20, Impairment::default()).secs;
    assert!(
        secs < 1.0,
        "download took {secs:.3} s virtual; a 64 KiB window would take {CAPPED_SECS:.2} s"
    );
}

/// The control: the same download to a guest that can only open a 64 KiB window takes what
/// that window allows, so the measurement above does see the window.
#[test]
fn a_64k_guest_window_caps_the_download_as_slirp4netns_would() {
    let secs = download(served(), 64 << 10, Impairment::default()).secs;
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
    let secs = download(host, 8 << 20, Impairment::default()).secs;
    let bound = BYTES as f64 / f64::from(1 << 20) * 0.020;
    assert!(
        secs >= bound * 0.95,
        "{} MiB through a 1 MiB buffer took {secs:.3} s virtual, under {bound:.2} s",
        BYTES >> 20
    );
}

const LOSSY: Impairment = Impairment {
    drop_one_in: 200,
    reorder_one_in: 0,
    seed: 0x5eed_1234_abcd_0001,
    one_way_delay: ONE_WAY,
    strip_sack_permitted: false,
};

#[test]
fn a_lossy_long_round_trip_still_delivers_every_byte() {
    upload(BYTES, LOSSY);
    download(served(), 8 << 20, LOSSY);
}

/// Guest → host with loss: our duplicate ACKs name the data we hold past each hole (SACK
/// blocks), so a Linux guest resends only the holes. Every block lies past the ACK number it
/// rides on and within what the guest sent.
#[test]
fn acks_to_a_lossy_uploader_carry_sack_blocks_past_the_hole() {
    let (mut h, s) = connected(SimHost::default(), 8 << 20, LOSSY);
    h.to_guest_log = Some(Vec::new());
    upload_on(&mut h, s, 4 << 20);
    let seen = tcp_to_guest(h.to_guest_log.as_ref().expect("logged"));
    let with_sack: Vec<_> = seen.iter().filter(|t| t.sack[0].is_some()).collect();
    assert!(
        with_sack.len() >= 3,
        "{} of {} segments to the guest carried SACK blocks",
        with_sack.len(),
        seen.len()
    );
    // Everything the guest sends lies within 4 MiB of the first ACK logged.
    let first_ack = seen.iter().find_map(|t| t.ack).expect("an ACK");
    for t in with_sack {
        let ack = t.ack.expect("an ACK");
        for &(left, right) in t.sack.iter().flatten() {
            let (from_ack, to_ack) = (left.wrapping_sub(ack), right.wrapping_sub(ack));
            assert!(
                0 < from_ack && from_ack < to_ack,
                "{:?} at ACK {ack}",
                t.sack
            );
            assert!(
                right.wrapping_sub(first_ack) <= 4 << 20,
                "{:?}: past what the guest sent",
                t.sack
            );
        }
    }
}

/// The guest reports what arrived past each hole (SACK), so only the lost segments go again,
/// not everything in flight behind them: 8 MiB in flight and about 80 frames lost here.
#[test]
fn a_lossy_download_to_a_sack_guest_resends_only_what_was_lost() {
    let run = download(served(), 8 << 20, LOSSY);
    assert!(
        run.sent_per_byte < 1.1,
        "{:.2}x the bytes went to the guest for a 1-in-200 loss",
        run.sent_per_byte
    );
    assert!(run.secs < 1.0, "took {:.3} s virtual", run.secs);
}

/// Without SACK, three duplicate ACKs make us go back to the first byte the guest is missing
/// and send everything from there (the guest keeps what it has), and the download completes.
#[test]
fn a_lossy_download_to_a_guest_without_sack_goes_back_and_completes() {
    let run = download(
        served(),
        8 << 20,
        Impairment {
            strip_sack_permitted: true,
            ..LOSSY
        },
    );
    assert!(
        run.sent_per_byte > 2.0,
        "{:.2}x the bytes sent: was SACK used after all?",
        run.sent_per_byte
    );
    assert!(run.secs < 1.0, "took {:.3} s virtual", run.secs);
}

/// A host peer that stops reading for 20 minutes while the guest sends: once our buffer is
/// full and the host socket takes nothing, everything we hold is acknowledged with a closed
/// window, so the guest waits on a zero window (which TCP allows forever) instead of
/// retransmitting unacknowledged data until it gives up (a Linux guest aborts after about
/// 15 minutes of that). When the peer reads again, every byte arrives.
#[test]
fn a_stalled_host_reader_gets_a_zero_window_not_unacknowledged_data() {
    const SEND_BUFFER: usize = 256 << 10;
    const FLOW_BUFFER: usize = 4 << 20;
    let mut host = SimHost::default();
    host.send_buffer = SEND_BUFFER;
    let mut h = Harness::with_host(host, stack_config(1500), Clock::Virtual(Instant::now()));
    h.impairment.one_way_delay = ONE_WAY;
    // Logged from the handshake on: the SYN-ACK's ACK is the guest's ISN + 1.
    h.to_guest_log = Some(Vec::new());
    let s = h.tcp_socket(8 << 20);
    h.connect_established(s, gateway(8080), 40000);
    let data = pattern(16 << 20, 9);
    let mut sent = 0;
    let stall = Duration::from_secs(20 * 60);
    let started = h.now();
    h.run_until("the stall", stall + Duration::from_secs(60), |h| {
        let sock = h.tcp(s);
        if sent < data.len() && sock.can_send() {
            sent += sock.send_slice(&data[sent..]).unwrap();
        }
        h.now() - started >= stall
    });
    // The peer has read nothing: its socket holds what it took, at most its send buffer.
    let taken = h.stack.host.connections[0].received.len();
    assert!(taken <= SEND_BUFFER, "{taken}");
    let seen = tcp_to_guest(h.to_guest_log.as_ref().unwrap());
    let first = seen
        .first()
        .and_then(|tcp| tcp.ack)
        .expect("a SYN-ACK to the guest");
    let last = seen.last().unwrap();
    let acked = last.ack.unwrap().wrapping_sub(first) as usize;
    let mss = 1460;
    assert!(
        acked >= SEND_BUFFER + FLOW_BUFFER - mss,
        "only {acked} bytes acknowledged while the host socket holds {SEND_BUFFER} and our \
         buffer {FLOW_BUFFER}: the guest would be retransmitting the rest"
    );
    assert!(
        usize::from(last.window) << 7 < mss,
        "the window stays open during the stall: {}",
        last.window
    );
    assert!(!last.rst, "the flow was reset");
    // The peer reads again: the window reopens and the rest arrives intact.
    h.run_until("the rest", Duration::from_secs(120), |h| {
        let sock = h.tcp(s);
        if sent < data.len() && sock.can_send() {
            sent += sock.send_slice(&data[sent..]).unwrap();
        }
        h.stack.host.drain(0);
        h.stack.host.connections[0].received.len() >= data.len()
    });
    assert!(
        h.stack.host.connections[0].received == data,
        "the host peer got other bytes than the guest sent"
    );
}

/// A guest that fills our window to its edge while the host peer has stopped reading: once
/// our buffer is nearly full we acknowledge what it holds, and the window field left is
/// scaled (by 128 here) and rounded up, so its edge lies up to 127 bytes past our buffer.
/// Those bytes must be taken like the rest. Dropped, they made a hole where nothing was lost:
/// when the peer read again, the guest's next segments were SACKed past it (2,873 ACKs here)
/// and the guest resent them. smoltcp fills a window to its last byte; Linux sends only whole
/// segments into a window, so it met this only once our window was no multiple of 128.
#[test]
fn a_guest_filling_the_scaled_window_to_its_edge_loses_nothing() {
    let mut host = SimHost::default();
    host.send_buffer = 64 << 10;
    let (mut h, s) = connected(host, 8 << 20, Impairment::default());
    h.to_guest_log = Some(Vec::new());
    let data = pattern(16 << 20, 11);
    let mut sent = 0;
    let started = h.now();
    let stall = Duration::from_secs(2);
    h.run_until("the upload", Duration::from_secs(120), |h| {
        let sock = h.tcp(s);
        if sent < data.len() && sock.can_send() {
            sent += sock.send_slice(&data[sent..]).unwrap();
        }
        // The peer reads nothing at first, then everything as it comes.
        if h.now() - started >= stall {
            h.stack.host.drain(0);
        }
        h.stack.host.connections[0].received.len() >= data.len()
    });
    assert!(
        h.stack.host.connections[0].received == data,
        "the host peer got other bytes than the guest sent"
    );
    let seen = tcp_to_guest(h.to_guest_log.as_ref().expect("logged"));
    let full = seen.iter().filter(|t| t.window == 0).count();
    assert!(full > 0, "the window never closed: nothing tested");
    let with_sack = seen.iter().filter(|t| t.sack[0].is_some()).count();
    assert_eq!(
        with_sack, 0,
        "{with_sack} ACKs reported data past a hole on a lossless link"
    );
}

/// The frames the stack has made so far, as TCP headers (taken from its queue).
fn take_tcp_out(h: &mut Harness<SimHost>) -> Vec<support::guest::SeenTcp> {
    tcp_to_guest(&h.take_output())
}

/// A batch of bulk data from the guest is acknowledged before it goes to the host socket,
/// so the event loop can hand the guest its ACK first (the guest's sender goes on while we
/// send), and the send that follows adds no second ACK for the window it reopens.
#[test]
fn a_bulk_batch_is_acknowledged_before_its_host_send_and_once() {
    // No delay on the link, so the handshake is over on both sides.
    let mut h = Harness::with_host(
        SimHost::default(),
        stack_config(1500),
        Clock::Virtual(Instant::now()),
    );
    let s = h.tcp_socket(1 << 20);
    h.connect_established(s, gateway(8080), 40000);
    h.step();
    let data = pattern(64 << 10, 13);
    assert_eq!(h.tcp(s).send_slice(&data).unwrap(), data.len());
    let now = h.guest_now();
    h.iface.poll(now, &mut h.wire, &mut h.sockets);
    let frames: Vec<_> = h.wire.from_guest.drain(..).collect();
    assert!(frames.len() > 1, "one batch of {} segments", frames.len());
    assert!(
        take_tcp_out(&mut h).is_empty(),
        "output left from the handshake"
    );
    let first_seq = tcp_to_guest(&frames[..1])[0].seq;
    for frame in &frames {
        h.stack.handle_frame(h.now(), frame);
    }
    let received = h.stack.host.connections[0].received.len();
    let during = take_tcp_out(&mut h);
    assert!(during.is_empty(), "ACKed frame by frame: {during:?}");

    h.stack.acknowledge_batch();
    let early = take_tcp_out(&mut h);
    assert_eq!(early.len(), 1, "{early:?}");
    assert_eq!(
        h.stack.host.connections[0].received.len(),
        received,
        "the data went to the host before its ACK"
    );
    h.stack.flush();
    let batch = h.stack.host.connections[0].received.len() - received;
    assert!(
        batch > 32 << 10,
        "the guest sent {batch} bytes: not a bulk batch"
    );
    let acked = early[0].ack.expect("an ACK").wrapping_sub(first_seq);
    assert_eq!(
        acked as usize, batch,
        "the early ACK covers the whole batch"
    );
    let after = take_tcp_out(&mut h);
    assert!(
        after.is_empty(),
        "a second ACK for the same bytes: {after:?}"
    );
}
