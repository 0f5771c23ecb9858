//! TCP translation: each guest connection is mapped onto one host socket, and the two kernels
//! do the TCP work (ARCHITECTURE.md, "The data path").
//!
//! Guest → host: payload goes straight into the host socket; we acknowledge to the guest only
//! what the host socket took. Bytes it refused wait in `pending` (never dropped); the window we
//! advertise is what `pending` can still hold. One exception: once `pending` is full and the
//! host socket still takes nothing, we acknowledge what `pending` holds with a zero window, so
//! the guest probes the window (for as long as it takes, as TCP allows) instead of
//! retransmitting into a full buffer until it gives the connection up.
//! Host → guest: bytes are peeked (`MSG_PEEK` with `SO_PEEK_OFF`) from the host socket straight
//! into frames, so unacknowledged data stays in the kernel's receive buffer, which is our
//! retransmission queue; acknowledged bytes are then discarded from it.
//!
//! Read before editing: RFC 9293 (sequence space, segment acceptability), RFC 7323 (window
//! scaling), RFC 6298 (retransmission timer). Deliberately not done: SACK, timestamps, urgent
//! data, simultaneous open.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smoltcp::wire::TcpControl;

use super::frame::{
    Link, TcpHeader, Tx, finish_tcp_frame, finish_tcp_gso_frame, tcp_payload_offset,
};

/// How many bytes of guest data a flow holds when the host socket is full, unless
/// `--limit flow-buffer` says otherwise. It is also the largest window we advertise.
pub const RECEIVE_BUFFER: usize = super::limits::DEFAULT_FLOW_BUFFER;
/// The smallest window scale we offer: 4 MiB windows need a shift of at least 7. Larger
/// buffers get the shift they need ([`window_shift_for`]).
pub const WINDOW_SHIFT: u8 = 7;
/// RFC 7323 2.3: no larger shift is allowed.
const MAX_WINDOW_SHIFT: u8 = 14;
/// Guest data is sent to the host socket at the end of each batch of frames, or as soon as
/// this much has collected.
const SEND_CHUNK: usize = 256 << 10;
/// Payload of one GSO frame to the guest: the largest IPv4 packet less its headers.
pub const GSO_PAYLOAD: usize = 65535 - 20 - 20;
/// Out-of-order segments kept per flow.
const MAX_OUT_OF_ORDER: usize = 64;
const INITIAL_RTO: Duration = Duration::from_millis(200);
const MAX_RTO: Duration = Duration::from_secs(30);
/// Retransmissions without progress before the flow is reset.
const MAX_RETRIES: u32 = 12;

/// Guest address and port, and the remote address and port the guest addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub guest: SocketAddr,
    pub remote: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// Guest SYN received; host connect in progress.
    Connecting,
    /// A forwarded host connection: our SYN went to the guest, waiting for its SYN-ACK.
    SynSent,
    /// Host connected; SYN-ACK sent, waiting for the guest's ACK.
    SynAckSent,
    Established,
}

/// A guest segment, parsed.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub seq: u32,
    pub ack: Option<u32>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub window: u16,
    pub max_seg_size: Option<u16>,
    pub window_scale: Option<u8>,
    pub payload: &'a [u8],
}

/// What the stack must do after the flow handled an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Both directions closed cleanly: drop the host socket.
    Close,
    /// Send a RST to the guest and abort the host socket.
    Reset,
    /// Abort the host socket without telling the guest (it reset us).
    Abort,
}

pub struct TcpFlow<S> {
    pub key: FlowKey,
    pub socket: S,
    pub state: TcpState,
    mss: usize,
    /// Both SYNs carried a window scale option.
    scaling: bool,
    // Guest → host.
    /// Everything before this the host socket has taken.
    rcv_acked: u32,
    /// The ACK number we send: `rcv_acked`, or further (what `pending` held) once `pending`
    /// filled up while the host socket took nothing. Never behind `rcv_acked`.
    ack_point: u32,
    /// Bytes from `rcv_acked` on, received in order but not yet taken by the host socket.
    pending: Vec<u8>,
    /// The most `pending` may hold (`--limit flow-buffer`), and so the largest window.
    buffer: usize,
    /// The window scale we offer, large enough for `buffer`.
    window_shift: u8,
    out_of_order: Vec<(u32, Vec<u8>)>,
    /// Sequence number of the guest's FIN once every byte before it arrived.
    guest_fin_seq: Option<u32>,
    guest_fin_forwarded: bool,
    // Host → guest.
    iss: u32,
    snd_una: u32,
    snd_nxt: u32,
    /// Guest's window in bytes, already scaled.
    snd_wnd: u32,
    snd_shift: u8,
    host_eof: bool,
    /// The last peek found the host socket empty: nothing to send until it reports
    /// readable (edge-triggered, so any new byte or EOF does). Saves a peek that would fail
    /// on every ACK from the guest.
    host_drained: bool,
    /// An event said the host peer may have closed: a short peek no longer shows the socket
    /// drained, since the EOF behind the bytes can only be seen by peeking again (no new
    /// event will come for it).
    host_may_have_eof: bool,
    fin_sent: bool,
    fin_acked: bool,
    dup_acks: u8,
    rto: Duration,
    retries: u32,
    pub timer: Option<Instant>,
    /// An ACK (or window update) is owed to the guest; it may wait for the end of the batch.
    pub ack_due: bool,
    /// Guest data waits in `pending` for the end of the batch.
    pub flush_due: bool,
    /// The port forward this connection came through, if any.
    pub forward: Option<super::forward::ForwardId>,
    /// Bytes the host socket took from the guest.
    pub bytes_to_host: u64,
    /// Bytes the guest acknowledged.
    pub bytes_to_guest: u64,
    /// The TAP takes GSO frames: send up to [`GSO_PAYLOAD`] bytes per frame.
    pub gso: bool,
    /// The ACK number and window field of the last segment sent to the guest: a pure ACK
    /// repeating both is a duplicate ACK to the guest, and three make it retransmit.
    last_ack_sent: Cell<Option<(u32, u16)>>,
    /// The ACK must go now: a duplicate ACK for out-of-order data (RFC 5681 4.2) is what
    /// triggers the guest's fast retransmit, and coalescing it would hide the loss.
    pub ack_now: bool,
    /// `pending` filled to within a segment of `buffer`: the guest must wait for the host
    /// socket. The stack counts it (`limit_flow_buffer`) and clears the flag.
    pub buffer_filled: bool,
}

/// The window scale that lets a 16-bit window field advertise `buffer` bytes (within 1 << shift).
pub fn window_shift_for(buffer: usize) -> u8 {
    let mut shift = WINDOW_SHIFT;
    while buffer >> shift > 0xffff && shift < MAX_WINDOW_SHIFT {
        shift += 1;
    }
    shift
}

fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn seq_le(a: u32, b: u32) -> bool {
    !seq_lt(b, a)
}

impl<S> TcpFlow<S> {
    /// A flow for a guest SYN whose host connect has started.
    pub fn new(key: FlowKey, socket: S, syn: &Segment, iss: u32, link_mss: usize) -> Self {
        let scaling = syn.window_scale.is_some();
        let guest_mss = usize::from(syn.max_seg_size.unwrap_or(536));
        TcpFlow {
            key,
            socket,
            state: TcpState::Connecting,
            mss: guest_mss.min(link_mss).max(8),
            scaling,
            rcv_acked: syn.seq.wrapping_add(1),
            ack_point: syn.seq.wrapping_add(1),
            pending: Vec::new(),
            buffer: RECEIVE_BUFFER,
            window_shift: WINDOW_SHIFT,
            out_of_order: Vec::new(),
            guest_fin_seq: None,
            guest_fin_forwarded: false,
            iss,
            snd_una: iss,
            snd_nxt: iss,
            snd_wnd: u32::from(syn.window),
            snd_shift: syn.window_scale.unwrap_or(0).min(14),
            host_eof: false,
            host_drained: false,
            host_may_have_eof: false,
            fin_sent: false,
            fin_acked: false,
            dup_acks: 0,
            rto: INITIAL_RTO,
            retries: 0,
            timer: None,
            ack_due: false,
            ack_now: false,
            last_ack_sent: Cell::new(None),
            flush_due: false,
            forward: None,
            bytes_to_host: 0,
            bytes_to_guest: 0,
            gso: false,
            buffer_filled: false,
        }
    }

    /// Bounds the guest data this flow holds (and so its window) to `bytes`. Call before
    /// the first SYN or SYN-ACK goes out: the window scale offered there follows from it.
    pub fn set_buffer_limit(&mut self, bytes: usize) {
        self.buffer = bytes;
        self.window_shift = window_shift_for(bytes);
    }

    /// A flow for a host connection accepted on a port forward: we open the connection to the
    /// guest. The SYN goes out with [`TcpFlow::syn`] and is retried by the timer.
    pub fn new_outbound(key: FlowKey, socket: S, iss: u32, link_mss: usize, now: Instant) -> Self {
        let syn = Segment {
            seq: 0,
            ack: None,
            syn: true,
            fin: false,
            rst: false,
            window: 0,
            max_seg_size: Some(link_mss.min(0xffff) as u16),
            window_scale: Some(WINDOW_SHIFT),
            payload: &[],
        };
        let mut flow = TcpFlow::new(key, socket, &syn, iss, link_mss);
        flow.state = TcpState::SynSent;
        flow.snd_nxt = iss.wrapping_add(1);
        flow.timer = Some(now);
        flow
    }

    /// Our SYN to the guest (forwarded connections).
    pub fn syn(&self, link_mss: usize) -> TcpHeader {
        TcpHeader {
            ack: None,
            ..self.syn_ack(link_mss)
        }
    }

    /// The guest's SYN-ACK to our SYN: learn its sequence numbers and options.
    fn on_syn_ack(&mut self, seg: &Segment, link_mss: usize) {
        self.state = TcpState::Established;
        self.rcv_acked = seg.seq.wrapping_add(1);
        self.ack_point = self.rcv_acked;
        self.snd_una = self.iss.wrapping_add(1);
        self.snd_nxt = self.snd_una;
        self.scaling = seg.window_scale.is_some();
        self.snd_shift = if self.scaling {
            seg.window_scale.unwrap_or(0).min(14)
        } else {
            0
        };
        // RFC 7323: the window in a SYN is never scaled.
        self.snd_wnd = u32::from(seg.window);
        self.mss = usize::from(seg.max_seg_size.unwrap_or(536))
            .min(link_mss)
            .max(8);
        self.timer = None;
        self.retries = 0;
        self.rto = INITIAL_RTO;
        self.ack_now = true;
    }

    /// The window we advertise, scaled for the header. It counts from the ACK number, and
    /// everything in `pending` lies past it (we acknowledge only what the host socket took):
    /// a window of the whole buffer is exactly what `pending` can still take, and its right
    /// edge never moves left (RFC 9293 3.8.6.2.2). Subtracting `pending` again would count
    /// those bytes twice, and the guest would stop at half the buffer.
    fn window_field(&self) -> u16 {
        // The right edge stays at `rcv_acked + buffer`, from whatever point we acknowledge.
        let window = self
            .rcv_acked
            .wrapping_add(self.buffer as u32)
            .wrapping_sub(self.ack_point) as usize;
        if self.scaling {
            // Rounded up, so the right edge never appears to move left as the ACK advances.
            let unit = (1usize << self.window_shift) - 1;
            ((window + unit) >> self.window_shift).min(0xffff) as u16
        } else {
            window.min(0xffff) as u16
        }
    }

    /// The next sequence number expected from the guest: past what the host took and what
    /// `pending` holds.
    fn rcv_next(&self) -> u32 {
        self.rcv_acked.wrapping_add(self.pending.len() as u32)
    }

    /// What `pending` can still take.
    fn room(&self) -> usize {
        self.buffer.saturating_sub(self.pending.len())
    }

    /// The host took `n` more bytes (or the FIN); `ack_point` never falls behind.
    fn advance_acked(&mut self, n: u32) {
        self.rcv_acked = self.rcv_acked.wrapping_add(n);
        if seq_lt(self.ack_point, self.rcv_acked) {
            self.ack_point = self.rcv_acked;
        }
    }

    fn header(&self, control: TcpControl, seq: u32) -> TcpHeader {
        let window = self.window_field();
        self.last_ack_sent.set(Some((self.ack_point, window)));
        TcpHeader {
            src_port: self.key.remote.port(),
            dst_port: self.key.guest.port(),
            control,
            seq,
            ack: Some(self.ack_point),
            window,
            max_seg_size: None,
            window_scale: None,
        }
    }

    /// The guest's initial sequence number, while the host connect is under way (an ICMP
    /// error must quote it, or the guest ignores it as out of window).
    pub fn guest_isn(&self) -> u32 {
        self.rcv_acked.wrapping_sub(1)
    }

    /// The SYN-ACK, once the host connect succeeded.
    pub fn syn_ack(&self, link_mss: usize) -> TcpHeader {
        TcpHeader {
            src_port: self.key.remote.port(),
            dst_port: self.key.guest.port(),
            control: TcpControl::Syn,
            seq: self.iss,
            ack: Some(self.rcv_acked),
            // RFC 7323: the window in a SYN is never scaled.
            window: self.buffer.min(0xffff) as u16,
            max_seg_size: Some(link_mss.min(0xffff) as u16),
            window_scale: self.scaling.then_some(self.window_shift),
        }
    }

    /// Host connect completed: the SYN-ACK goes out and its timer runs.
    pub fn on_connected(&mut self, now: Instant) {
        self.state = TcpState::SynAckSent;
        self.snd_nxt = self.iss.wrapping_add(1);
        self.timer = Some(now + self.rto);
    }

    /// Whether a pure ACK now would tell the guest something: a new ACK number or window.
    /// A batch in which the host socket took nothing leaves both as they were, and an ACK
    /// then would be a duplicate (RFC 5681 2: same ACK, same window, no data): three of them
    /// and the guest retransmits data that was never lost.
    pub fn ack_is_news(&self) -> bool {
        self.last_ack_sent.get() != Some((self.ack_point, self.window_field()))
    }

    /// A pure ACK carrying our current window.
    pub fn ack_header(&mut self) -> TcpHeader {
        self.ack_due = false;
        self.header(TcpControl::None, self.snd_nxt)
    }

    /// The RST that tells the guest the host side failed.
    pub fn rst_header(&self) -> TcpHeader {
        let mut header = self.header(TcpControl::Rst, self.snd_nxt);
        header.window = 0;
        header
    }

    /// Handles a guest segment for this flow. Data is written to the host socket here.
    pub fn on_segment<H: super::host::Host<Socket = S>>(
        &mut self,
        host: &mut H,
        now: Instant,
        seg: &Segment,
    ) -> Verdict {
        if seg.rst {
            return Verdict::Abort;
        }
        if self.state == TcpState::SynSent {
            if seg.syn && seg.ack == Some(self.iss.wrapping_add(1)) {
                self.on_syn_ack(seg, self.mss);
            }
            return Verdict::Keep;
        }
        if seg.syn {
            // A retransmitted SYN: the SYN-ACK is resent by the caller when we are past
            // connecting; otherwise the host connect is still under way.
            if self.state == TcpState::SynAckSent {
                self.timer = Some(now);
            }
            return Verdict::Keep;
        }
        let Some(ack) = seg.ack else {
            return Verdict::Keep;
        };
        if self.state == TcpState::Connecting {
            return Verdict::Keep;
        }
        if self.state == TcpState::SynAckSent {
            if ack != self.iss.wrapping_add(1) {
                return Verdict::Reset;
            }
            self.state = TcpState::Established;
            self.snd_una = ack;
            self.timer = None;
            self.retries = 0;
        }
        if let Err(verdict) = self.on_ack(host, now, ack, seg) {
            return verdict;
        }
        if !seg.payload.is_empty() || seg.fin {
            if let Err(verdict) = self.on_data(host, seg) {
                return verdict;
            }
        } else if seq_lt(seg.seq, self.rcv_next()) {
            // A keepalive probe (RFC 9293 3.8.4: no data, one below the next sequence
            // number): it must be answered, or the guest declares the connection dead.
            self.ack_now = true;
        }
        self.poll_close()
    }

    fn on_ack<H: super::host::Host<Socket = S>>(
        &mut self,
        host: &mut H,
        now: Instant,
        ack: u32,
        seg: &Segment,
    ) -> Result<(), Verdict> {
        let window = u32::from(seg.window) << self.snd_shift;
        if seq_lt(self.snd_una, ack) && seq_le(ack, self.snd_nxt) {
            let mut acked = ack.wrapping_sub(self.snd_una) as usize;
            if self.fin_sent && ack == self.snd_nxt {
                self.fin_acked = true;
                acked -= 1;
            }
            self.bytes_to_guest += acked as u64;
            if acked > 0 {
                host.discard(&self.socket, acked)
                    .map_err(|_| Verdict::Reset)?;
            }
            self.snd_una = ack;
            self.dup_acks = 0;
            self.retries = 0;
            self.rto = INITIAL_RTO;
            self.timer = (self.snd_una != self.snd_nxt).then(|| now + self.rto);
        } else if ack == self.snd_una
            && seg.payload.is_empty()
            && !seg.fin
            && self.snd_una != self.snd_nxt
            && window == self.snd_wnd
        {
            self.dup_acks = self.dup_acks.saturating_add(1);
            if self.dup_acks == 3 {
                self.rewind(host)?;
            }
        }
        self.snd_wnd = window;
        Ok(())
    }

    /// Go back to the first unacknowledged byte (RFC 6298 5.4, go-back-N).
    fn rewind<H: super::host::Host<Socket = S>>(&mut self, host: &mut H) -> Result<(), Verdict> {
        host.rewind_peek(&self.socket).map_err(|_| Verdict::Reset)?;
        self.host_drained = false;
        self.snd_nxt = self.snd_una;
        if !self.fin_acked {
            self.fin_sent = false;
        }
        Ok(())
    }

    fn on_data<H: super::host::Host<Socket = S>>(
        &mut self,
        host: &mut H,
        seg: &Segment,
    ) -> Result<(), Verdict> {
        let expected = self.rcv_next();
        let len = seg.payload.len() as u32;
        let end = seg.seq.wrapping_add(len);
        self.ack_due = true;
        if seq_le(seg.seq, expected) && seq_lt(expected, end) {
            let skip = expected.wrapping_sub(seg.seq) as usize;
            self.accept(host, &seg.payload[skip..])?;
            self.drain_out_of_order(host)?;
            if !self.out_of_order.is_empty() {
                // A hole was (partly) filled: tell the guest at once.
                self.ack_now = true;
            }
        } else if seq_lt(expected, seg.seq) && !seg.payload.is_empty() {
            self.queue_out_of_order(expected, seg.seq, seg.payload);
            self.ack_now = true;
        } else if !seg.payload.is_empty() {
            // Old duplicate: our ACK was probably lost.
            self.ack_now = true;
        }
        if self.ack_now {
            // The ACK about to go must cover everything in order, or the guest would count
            // it as a duplicate of an older one.
            self.send_pending(host)?;
        }
        if seg.fin {
            let expected = self.rcv_next();
            if end == expected {
                self.guest_fin_seq = Some(end);
            }
        }
        self.forward_fin(host)
    }

    /// Keeps a segment that arrived ahead of a hole, within the window. Adjacent segments
    /// are merged into runs so a burst behind one loss costs a few entries, not hundreds.
    fn queue_out_of_order(&mut self, expected: u32, seq: u32, payload: &[u8]) {
        let ahead = seq.wrapping_sub(expected) as usize;
        let queued: usize = self.out_of_order.iter().map(|(_, d)| d.len()).sum();
        if ahead + payload.len() > self.room() || queued + payload.len() > self.buffer {
            return;
        }
        let end = seq.wrapping_add(payload.len() as u32);
        if let Some((_, run)) = self
            .out_of_order
            .iter_mut()
            .find(|(start, run)| start.wrapping_add(run.len() as u32) == seq)
        {
            run.extend_from_slice(payload);
            return;
        }
        if let Some((start, run)) = self
            .out_of_order
            .iter_mut()
            .find(|(start, _)| *start == end)
        {
            let mut joined = payload.to_vec();
            joined.extend_from_slice(run);
            *start = seq;
            *run = joined;
            return;
        }
        let duplicate = self.out_of_order.iter().any(|(start, run)| {
            seq_le(*start, seq) && seq_le(end, start.wrapping_add(run.len() as u32))
        });
        if !duplicate && self.out_of_order.len() < MAX_OUT_OF_ORDER {
            self.out_of_order.push((seq, payload.to_vec()));
        }
    }

    fn drain_out_of_order<H: super::host::Host<Socket = S>>(
        &mut self,
        host: &mut H,
    ) -> Result<(), Verdict> {
        loop {
            let expected = self.rcv_next();
            let Some(position) = self.out_of_order.iter().position(|(seq, data)| {
                seq_le(*seq, expected) && seq_lt(expected, seq.wrapping_add(data.len() as u32))
            }) else {
                break;
            };
            let (seq, data) = self.out_of_order.swap_remove(position);
            let skip = expected.wrapping_sub(seq) as usize;
            self.accept(host, &data[skip..])?;
        }
        // Whatever now lies wholly before the expected point is stale.
        let expected = self.rcv_next();
        self.out_of_order
            .retain(|(seq, data)| seq_lt(expected, seq.wrapping_add(data.len() as u32)));
        Ok(())
    }

    /// In-order bytes: collected, and sent to the host socket once per batch of frames (or
    /// every [`SEND_CHUNK`] bytes): one large send instead of one per segment.
    fn accept<H: super::host::Host<Socket = S>>(
        &mut self,
        host: &mut H,
        data: &[u8],
    ) -> Result<(), Verdict> {
        let room = self.room();
        // Past the window we advertised: not acknowledged, the guest sends it again.
        self.pending
            .extend_from_slice(&data[..data.len().min(room)]);
        // Within a segment of the bound: the guest cannot send another full one.
        if room >= self.mss && self.room() < self.mss {
            self.buffer_filled = true;
        }
        self.flush_due = true;
        if self.pending.len() >= SEND_CHUNK {
            self.send_pending(host)?;
        }
        Ok(())
    }

    /// Sends what waits; acknowledges exactly what the host socket took.
    fn send_pending<H: super::host::Host<Socket = S>>(
        &mut self,
        host: &mut H,
    ) -> Result<(), Verdict> {
        let mut sent = 0;
        while sent < self.pending.len() {
            match host.send(&self.socket, &self.pending[sent..]) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(Verdict::Reset),
            }
        }
        if sent > 0 {
            self.bytes_to_host += sent as u64;
            self.pending.drain(..sent);
            self.advance_acked(sent as u32);
            self.ack_due = true;
        }
        Ok(())
    }

    /// End of a batch, or the host socket can take more: send what waits.
    pub fn on_writable<H: super::host::Host<Socket = S>>(&mut self, host: &mut H) -> Verdict {
        self.flush_due = false;
        if let Err(verdict) = self.send_pending(host) {
            return verdict;
        }
        if self.room() < self.mss {
            // Full, and the host socket took what it could: we answer for these bytes now
            // (they are safe in `pending`), and the window closes.
            self.ack_point = self.rcv_next();
        }
        if let Err(verdict) = self.forward_fin(host) {
            return verdict;
        }
        self.poll_close()
    }

    fn forward_fin<H: super::host::Host<Socket = S>>(
        &mut self,
        host: &mut H,
    ) -> Result<(), Verdict> {
        if self.guest_fin_forwarded || !self.pending.is_empty() {
            return Ok(());
        }
        if self.guest_fin_seq == Some(self.rcv_acked) {
            host.shutdown_write(&self.socket)
                .map_err(|_| Verdict::Reset)?;
            self.advance_acked(1);
            self.guest_fin_forwarded = true;
            self.ack_due = true;
        }
        Ok(())
    }

    fn poll_close(&self) -> Verdict {
        if self.guest_fin_forwarded && self.fin_acked {
            Verdict::Close
        } else {
            Verdict::Keep
        }
    }

    /// Sends what the host has for the guest, within the guest's window, peeking the host
    /// socket straight into frames.
    pub fn poll_send<H: super::host::Host<Socket = S>>(
        &mut self,
        host: &mut H,
        now: Instant,
        link: Link,
        tx: &mut Tx,
    ) -> Verdict {
        if self.state != TcpState::Established {
            return Verdict::Keep;
        }
        if self.host_drained {
            return self.poll_close();
        }
        let offset = tcp_payload_offset(self.key.guest.ip());
        while !self.fin_sent {
            let in_flight = self.snd_nxt.wrapping_sub(self.snd_una);
            let room = self.snd_wnd.saturating_sub(in_flight) as usize;
            if room == 0 {
                // Zero window: the retransmission timer doubles as the persist timer.
                self.timer.get_or_insert(now + self.rto);
                break;
            }
            let max = if self.gso { GSO_PAYLOAD } else { self.mss };
            let len = room.min(max);
            let mut frame = tx.buffer(offset + len);
            match host.peek(&self.socket, &mut frame[offset..offset + len]) {
                Ok(0) => {
                    tx.recycle(frame);
                    self.host_eof = true;
                    let header = self.header(TcpControl::Fin, self.snd_nxt);
                    tx.push_tcp(link, self.key.remote.ip(), self.key.guest.ip(), &header);
                    self.snd_nxt = self.snd_nxt.wrapping_add(1);
                    self.fin_sent = true;
                    self.ack_due = false;
                    self.timer.get_or_insert(now + self.rto);
                }
                Ok(n) => {
                    let header = self.header(TcpControl::None, self.snd_nxt);
                    let (src, dst) = (self.key.remote.ip(), self.key.guest.ip());
                    if n > self.mss {
                        let (frame_len, gso) =
                            finish_tcp_gso_frame(&mut frame, link, src, dst, &header, n, self.mss);
                        tx.push_gso(frame, frame_len, gso);
                    } else {
                        let frame_len = finish_tcp_frame(&mut frame, link, src, dst, &header, n);
                        tx.push(frame, frame_len);
                    }
                    self.snd_nxt = self.snd_nxt.wrapping_add(n as u32);
                    self.ack_due = false;
                    self.timer.get_or_insert(now + self.rto);
                    if n < len && !self.host_may_have_eof {
                        // Less than asked: the socket held no more (anything arriving after
                        // the peek raises a new edge), so another peek would only fail.
                        self.host_drained = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tx.recycle(frame);
                    self.host_drained = true;
                    break;
                }
                Err(_) => {
                    tx.recycle(frame);
                    return Verdict::Reset;
                }
            }
        }
        self.poll_close()
    }

    /// The host socket reported new data or EOF (`peer_closed`: or may have).
    pub fn on_readable(&mut self, peer_closed: bool) {
        self.host_drained = false;
        self.host_may_have_eof |= peer_closed;
    }

    /// The flow's timer fired: retransmit the SYN-ACK or unacknowledged data, or probe a
    /// zero window.
    pub fn on_timer<H: super::host::Host<Socket = S>>(
        &mut self,
        host: &mut H,
        now: Instant,
        link: Link,
        link_mss: usize,
        tx: &mut Tx,
    ) -> Verdict {
        self.timer = None;
        match self.state {
            TcpState::Connecting => Verdict::Keep,
            TcpState::SynSent => {
                if link.dst == smoltcp::wire::EthernetAddress::BROADCAST {
                    // The guest's MAC is not known yet: the caller asks for it with ARP;
                    // look again soon rather than after a whole RTO, for about 3 s.
                    self.retries += 1;
                    if self.retries > 150 {
                        return Verdict::Abort;
                    }
                    self.timer = Some(now + Duration::from_millis(20));
                    return Verdict::Keep;
                }
                if self.retries >= 150 + MAX_RETRIES / 2 {
                    // The guest never answered: the host client gets a reset.
                    return Verdict::Abort;
                }
                self.retries = self.retries.max(150) + 1;
                self.timer = Some(now + self.rto);
                self.rto = (self.rto * 2).min(MAX_RTO);
                let header = self.syn(link_mss);
                tx.push_tcp(link, self.key.remote.ip(), self.key.guest.ip(), &header);
                Verdict::Keep
            }
            TcpState::SynAckSent => {
                if self.retries >= MAX_RETRIES / 2 {
                    return Verdict::Reset;
                }
                self.retries += 1;
                self.rto = (self.rto * 2).min(MAX_RTO);
                self.timer = Some(now + self.rto);
                let header = self.syn_ack(link_mss);
                tx.push_tcp(link, self.key.remote.ip(), self.key.guest.ip(), &header);
                Verdict::Keep
            }
            TcpState::Established => {
                if self.retries >= MAX_RETRIES {
                    return Verdict::Reset;
                }
                if self.snd_una != self.snd_nxt {
                    self.retries += 1;
                    self.rto = (self.rto * 2).min(MAX_RTO);
                    if let Err(verdict) = self.rewind(host) {
                        return verdict;
                    }
                    self.poll_send(host, now, link, tx)
                } else if self.snd_wnd == 0 && !self.fin_sent {
                    // RFC 9293 3.8.6.1: probe the zero window. A segment just below the
                    // window makes the guest answer with its current window.
                    self.retries += 1;
                    self.rto = (self.rto * 2).min(MAX_RTO);
                    self.timer = Some(now + self.rto);
                    let header = self.header(TcpControl::None, self.snd_una.wrapping_sub(1));
                    tx.push_tcp(link, self.key.remote.ip(), self.key.guest.ip(), &header);
                    Verdict::Keep
                } else {
                    Verdict::Keep
                }
            }
        }
    }

    /// Bytes waiting for the host socket (for tests and counters).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_shift_lets_the_window_field_cover_the_buffer() {
        assert_eq!(window_shift_for(4 << 10), WINDOW_SHIFT);
        assert_eq!(window_shift_for(64 << 10), WINDOW_SHIFT);
        assert_eq!(window_shift_for(RECEIVE_BUFFER), WINDOW_SHIFT);
        // 8 MiB >> 7 is 65536, one more than the field holds.
        assert_eq!(window_shift_for(8 << 20), 8);
        assert_eq!(window_shift_for(1 << 30), MAX_WINDOW_SHIFT);
        for buffer in [4 << 10, 1 << 20, 8 << 20, 100 << 20] {
            let shift = window_shift_for(buffer);
            assert!(buffer >> shift <= 0xffff, "{buffer}");
        }
    }
}
