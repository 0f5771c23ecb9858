//! TCP translation: each guest connection is mapped onto one host socket, and the two kernels
//! do the TCP work (ARCHITECTURE.md, "The data path").
//!
//! Guest → host: payload collects in `pending` during a batch of frames and goes to the host
//! socket at its end; bytes the socket refused stay there (never dropped), and the window we
//! advertise is what `pending` can still hold. We acknowledge what the host socket took, with
//! two exceptions where the bytes are safe in `pending`: a batch of bulk data is acknowledged
//! before its send, so the guest's sender goes on meanwhile; and once `pending` is full and
//! the host socket still takes nothing, what it holds is acknowledged with a zero window, so
//! the guest probes the window (for as long as it takes, as TCP allows) instead of
//! retransmitting into a full buffer until it gives the connection up.
//! Host → guest: bytes are peeked (`MSG_PEEK` with `SO_PEEK_OFF`) from the host socket straight
//! into frames, so unacknowledged data stays in the kernel's receive buffer, which is our
//! retransmission queue; acknowledged bytes are then discarded from it. A guest that reports
//! what it received with SACK blocks gets only the holes resent, peeked from their offset;
//! without SACK, and after a timeout, we go back to the first unacknowledged byte.
//!
//! Read before editing: RFC 9293 (sequence space, segment acceptability), RFC 7323 (window
//! scaling), RFC 6298 (retransmission timer), RFC 2018 and 6675 (SACK, loss recovery).
//! Guest → host, our duplicate ACKs carry SACK blocks for the out-of-order data we keep.
//! Deliberately not done: timestamps, urgent data, simultaneous open.

use std::cell::Cell;
use std::io::{self, IoSliceMut};
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
/// A batch that collected at least this much guest data is acknowledged before it goes to
/// the host socket ([`TcpFlow::acknowledge_batch`]); smaller ones, requests of an exchange,
/// after it as before, when the ACK costs their way to the host nothing.
const EARLY_ACK_MIN: usize = 16 << 10;
/// Frames one peek of the host socket fills at most (one `recvmsg` for all: 256 KiB with
/// offloads, fewer bytes without).
const PEEK_FRAMES: usize = 4;
/// Payload of one GSO frame to the guest: the largest IPv4 packet less its headers.
pub const GSO_PAYLOAD: usize = 65535 - 20 - 20;
/// Out-of-order segments kept per flow.
const MAX_OUT_OF_ORDER: usize = 64;
/// SACK blocks remembered per flow; past this, new disjoint blocks are ignored (their bytes
/// are resent as if lost), so a guest cannot make the scoreboard grow without bound.
const MAX_SACKED: usize = 64;
/// Resent ranges tracked per recovery, to notice a resend that was lost in turn (with GSO,
/// up to 64 KiB each); past this, a lost resend waits for the timer.
const MAX_RESENT: usize = 1024;
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
    /// SYN only.
    pub sack_permitted: bool,
    /// Blocks the guest received beyond its ACK (RFC 2018); not on SYNs.
    pub sack: [Option<(u32, u32)>; 3],
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
    /// Sequence number of the out-of-order segment that arrived last (the first SACK block).
    latest_out_of_order: Option<u32>,
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
    /// Both SYNs offered SACK: the guest's ACKs say which segments arrived past a hole.
    sack_ok: bool,
    /// What the guest's SACK blocks reported received past `snd_una`: sorted, disjoint.
    sacked: Vec<(u32, u32)>,
    /// In loss recovery: `snd_nxt` when it began. It ends once the guest acknowledges that.
    recovery_point: Option<u32>,
    /// In recovery, every hole below this was resent already.
    resent_up_to: u32,
    /// What this recovery resent, in the order sent (at most [`MAX_RESENT`]).
    resent: Vec<(u32, u32)>,
    /// Resent ranges found lost in turn, waiting to go again.
    lost_resends: Vec<(u32, u32)>,
    /// Holes below this sequence number wait to be resent by the next `poll_send`.
    resend_holes_to: Option<u32>,
    rto: Duration,
    retries: u32,
    pub timer: Option<Instant>,
    /// An ACK (or window update) is owed to the guest; it may wait for the end of the batch.
    pub ack_due: bool,
    /// Guest data waits in `pending` for the end of the batch.
    pub flush_due: bool,
    /// Guest ACKs arrived that may open the window: [`super::Stack::flush`] (or the event
    /// loop mid-batch) sends, once for all of them ([`TcpFlow::poll_send`]).
    pub send_due: bool,
    /// Acknowledged bytes not yet consumed from the host socket: consumed by the next
    /// [`TcpFlow::poll_send`] or seek, one `recv` for a batch of ACKs.
    discard_owed: usize,
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

fn seq_min(a: u32, b: u32) -> u32 {
    if seq_lt(b, a) { b } else { a }
}

fn seq_max(a: u32, b: u32) -> u32 {
    if seq_lt(a, b) { b } else { a }
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
            latest_out_of_order: None,
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
            sack_ok: syn.sack_permitted,
            sacked: Vec::new(),
            recovery_point: None,
            resent_up_to: iss,
            resent: Vec::new(),
            lost_resends: Vec::new(),
            resend_holes_to: None,
            rto: INITIAL_RTO,
            retries: 0,
            timer: None,
            ack_due: false,
            ack_now: false,
            last_ack_sent: Cell::new(None),
            flush_due: false,
            send_due: false,
            discard_owed: 0,
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
            sack_permitted: true,
            sack: [None; 3],
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
        self.sack_ok = seg.sack_permitted;
        self.mss = usize::from(seg.max_seg_size.unwrap_or(536))
            .min(link_mss)
            .max(8);
        self.timer = None;
        self.retries = 0;
        self.rto = INITIAL_RTO;
        self.ack_now = true;
    }

    /// The window we advertise, scaled for the header. It counts from the ACK number, and
    /// `pending` lies past it unless acknowledged early (then the window is smaller by that):
    /// a window of the whole buffer is exactly what `pending` can still take, and its right
    /// edge never moves left (RFC 9293 3.8.6.2.2). Subtracting `pending` again would count
    /// those bytes twice, and the guest would stop at half the buffer.
    fn window_field(&self) -> u16 {
        // The right edge stays at `rcv_acked + buffer`, from whatever point we acknowledge;
        // `pending` may reach past it by less than a scaling unit (see `room`).
        let acknowledged_ahead = self.ack_point.wrapping_sub(self.rcv_acked) as usize;
        let window = self.buffer.saturating_sub(acknowledged_ahead);
        if self.scaling {
            // Rounded up, so the right edge never appears to move left as the ACK advances.
            ((window + self.scaling_slack()) >> self.window_shift).min(0xffff) as u16
        } else {
            window.min(0xffff) as u16
        }
    }

    /// How far past the buffer a rounded-up scaled window can reach.
    fn scaling_slack(&self) -> usize {
        if self.scaling {
            (1usize << self.window_shift) - 1
        } else {
            0
        }
    }

    /// The next sequence number expected from the guest: past what the host took and what
    /// `pending` holds.
    fn rcv_next(&self) -> u32 {
        self.rcv_acked.wrapping_add(self.pending.len() as u32)
    }

    /// What `pending` can still take: up to the furthest edge we may have advertised. Bytes
    /// the guest sent within its window and we dropped would look like a hole to it, and the
    /// segments behind them (acknowledged with SACK blocks) like a loss to repair.
    fn room(&self) -> usize {
        (self.buffer + self.scaling_slack()).saturating_sub(self.pending.len())
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
            sack_permitted: false,
            sack: [None; 3],
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
            sack_permitted: self.sack_ok,
            sack: [None; 3],
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
    ///
    /// A window that only grew is news while the guest may be short of window: with the
    /// last one below half our buffer (or two segments). Above that it has plenty to send
    /// with, and the next ACK carries the new window anyway; this keeps the send of an
    /// acknowledged batch ([`Self::acknowledge_batch`]) from costing a second ACK.
    pub fn ack_is_news(&self) -> bool {
        let window = self.window_field();
        match self.last_ack_sent.get() {
            Some((ack, last_window)) if ack == self.ack_point => {
                let shift = if self.scaling { self.window_shift } else { 0 };
                let last_bytes = usize::from(last_window) << shift;
                window != last_window && last_bytes < (self.buffer / 2).max(2 * self.mss)
            }
            _ => true,
        }
    }

    /// End of a batch that collected bulk data from the guest: acknowledge it now, before the
    /// host send (the window counts it: it is safe in `pending`). The caller writes the ACK to
    /// the TAP first, so the guest's sender goes on while we send. Returns whether an ACK is
    /// due for it.
    pub fn acknowledge_batch(&mut self) -> bool {
        if !self.flush_due || self.pending.len() < EARLY_ACK_MIN {
            return false;
        }
        self.ack_point = self.rcv_next();
        self.ack_is_news()
    }

    /// A pure ACK carrying our current window, and SACK blocks for what we hold past a hole.
    pub fn ack_header(&mut self) -> TcpHeader {
        self.ack_due = false;
        let mut header = self.header(TcpControl::None, self.snd_nxt);
        // Only while every in-order byte is acknowledged: bytes still in `pending` lie
        // between the ACK number and the first block, and a block cannot start at the ACK
        // number (Linux ignores such a block), so the guest would count them lost.
        if self.sack_ok && self.ack_point == self.rcv_next() {
            header.sack = self.sack_blocks();
        }
        header
    }

    /// Up to three runs of out-of-order data: the one holding the latest segment first
    /// (RFC 2018 4), then the highest others, the likeliest to be the most recent.
    fn sack_blocks(&self) -> [Option<(u32, u32)>; 3] {
        let mut runs: Vec<(u32, u32)> = self
            .out_of_order
            .iter()
            .map(|(seq, data)| (*seq, seq.wrapping_add(data.len() as u32)))
            .collect();
        // All lie ahead of the next expected byte, within the window: their distance from it
        // orders them across sequence number wrap.
        let expected = self.rcv_next();
        runs.sort_by_key(|&(start, _)| std::cmp::Reverse(start.wrapping_sub(expected)));
        if let Some(latest) = self.latest_out_of_order {
            if let Some(at) = runs
                .iter()
                .position(|&(start, end)| seq_le(start, latest) && seq_lt(latest, end))
            {
                let run = runs.remove(at);
                runs.insert(0, run);
            }
        }
        let mut blocks = [None; 3];
        for (block, run) in blocks.iter_mut().zip(runs) {
            *block = Some(run);
        }
        blocks
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
        let sack_news = self.sack_ok && self.note_sack(ack, &seg.sack);
        if seq_lt(self.snd_una, ack) && seq_le(ack, self.snd_nxt) {
            let mut acked = ack.wrapping_sub(self.snd_una) as usize;
            if self.fin_sent && ack == self.snd_nxt {
                self.fin_acked = true;
                acked -= 1;
            }
            self.bytes_to_guest += acked as u64;
            self.discard_owed += acked;
            self.snd_una = ack;
            self.dup_acks = 0;
            self.retries = 0;
            self.rto = INITIAL_RTO;
            self.timer = (self.snd_una != self.snd_nxt).then(|| now + self.rto);
            self.sacked.retain_mut(|(start, end)| {
                if seq_lt(*start, ack) {
                    *start = ack;
                }
                seq_lt(ack, *end)
            });
            if let Some(point) = self.recovery_point {
                if seq_le(point, ack) {
                    self.end_recovery();
                } else {
                    // A partial ACK: it answers a resent hole, and the link keeps order, so
                    // whatever below the recovery point is neither acknowledged nor SACKed now
                    // was lost too (RFC 6582's NewReno rule, with SACK's knowledge).
                    self.resend_holes_to = Some(point);
                }
            }
        } else if ack == self.snd_una
            && seg.payload.is_empty()
            && !seg.fin
            && self.snd_una != self.snd_nxt
            && if self.sack_ok {
                // RFC 6675 2: with SACK, only an ACK that reports newly received data counts
                // (one with only a D-SACK block is the guest telling us it got a copy twice).
                sack_news
            } else {
                window == self.snd_wnd
            }
        {
            self.dup_acks = self.dup_acks.saturating_add(1);
            if self.dup_acks == 3 && !self.sack_ok {
                self.rewind(host)?;
            }
        }
        if sack_news && self.snd_una != self.snd_nxt {
            self.on_sack_news();
        }
        if self.recovery_point.is_some() {
            self.find_lost_resends();
        }
        self.snd_wnd = window;
        Ok(())
    }

    /// Merges the guest's SACK blocks (those within what is in flight) into `sacked`;
    /// returns whether they told anything new.
    fn note_sack(&mut self, ack: u32, blocks: &[Option<(u32, u32)>; 3]) -> bool {
        let floor = if seq_lt(self.snd_una, ack) && seq_le(ack, self.snd_nxt) {
            ack
        } else {
            self.snd_una
        };
        let mut news = false;
        for &(start, end) in blocks.iter().flatten() {
            // Blocks at or below the ACK (D-SACK, RFC 2883) or past what we sent are no news
            // we can use; a guest cannot have received bytes we never sent.
            if !(seq_lt(floor, start) && seq_lt(start, end) && seq_le(end, self.snd_nxt)) {
                continue;
            }
            let covered = self
                .sacked
                .iter()
                .any(|&(s, e)| seq_le(s, start) && seq_le(end, e));
            if covered {
                continue;
            }
            let touches_one = self
                .sacked
                .iter()
                .any(|&(s, e)| seq_le(s, end) && seq_le(start, e));
            if !touches_one && self.sacked.len() >= MAX_SACKED {
                continue;
            }
            news = true;
            let (mut start, mut end) = (start, end);
            // Absorb every block this one touches, then insert it in order.
            self.sacked.retain(|&(s, e)| {
                let touches = seq_le(s, end) && seq_le(start, e);
                if touches {
                    start = seq_min(start, s);
                    end = seq_max(end, e);
                }
                !touches
            });
            let at = self
                .sacked
                .iter()
                .position(|&(s, _)| seq_lt(start, s))
                .unwrap_or(self.sacked.len());
            self.sacked.insert(at, (start, end));
        }
        news
    }

    /// New SACK blocks arrived while data is in flight: enter recovery once three segments'
    /// worth arrived past a hole (RFC 6675's DupThresh), and resend the holes below the
    /// highest block. Above it, segments may still be on their way.
    fn on_sack_news(&mut self) {
        let Some(&(_, highest)) = self.sacked.last() else {
            return;
        };
        if self.recovery_point.is_none() {
            let sacked: usize = self
                .sacked
                .iter()
                .map(|&(s, e)| e.wrapping_sub(s) as usize)
                .sum();
            if sacked < 3 * self.mss && self.dup_acks < 3 {
                return;
            }
            self.recovery_point = Some(self.snd_nxt);
            self.resent_up_to = self.snd_una;
        }
        let to = match self.resend_holes_to {
            Some(to) if seq_lt(highest, to) => to,
            _ => highest,
        };
        self.resend_holes_to = Some(to);
    }

    /// Go back to the first unacknowledged byte (RFC 6298 5.4, go-back-N). What the guest
    /// SACKed is forgotten: after a timeout it may have dropped it (RFC 2018 8).
    fn rewind<H: super::host::Host<Socket = S>>(&mut self, host: &mut H) -> Result<(), Verdict> {
        self.seek_peek(host, 0)?;
        self.host_drained = false;
        self.snd_nxt = self.snd_una;
        if !self.fin_acked {
            self.fin_sent = false;
        }
        self.sacked.clear();
        self.end_recovery();
        Ok(())
    }

    /// Consumes from the host socket what the guest acknowledged since the last call.
    fn settle_discards<H: super::host::Host<Socket = S>>(
        &mut self,
        host: &mut H,
    ) -> Result<(), Verdict> {
        if self.discard_owed > 0 {
            host.discard(&self.socket, self.discard_owed)
                .map_err(|_| Verdict::Reset)?;
            self.discard_owed = 0;
        }
        Ok(())
    }

    /// Moves the peek offset to `offset` bytes past `snd_una`: the kernel counts it from the
    /// first unconsumed byte, so what is owed is consumed first.
    fn seek_peek<H: super::host::Host<Socket = S>>(
        &mut self,
        host: &mut H,
        offset: usize,
    ) -> Result<(), Verdict> {
        self.settle_discards(host)?;
        host.seek_peek(&self.socket, offset)
            .map_err(|_| Verdict::Reset)
    }

    fn end_recovery(&mut self) {
        self.recovery_point = None;
        self.resend_holes_to = None;
        self.resent.clear();
        self.lost_resends.clear();
    }

    /// The link keeps order, so once the guest has a range we resent, it has every range
    /// resent before it too, or that one was lost again: those go once more, or only the
    /// timer (and go-back-N) would repair them.
    fn find_lost_resends(&mut self) {
        let una = self.snd_una;
        let sacked = &self.sacked;
        let arrived = |&(start, end): &(u32, u32)| {
            // `sacked` is sorted: the one block that could hold the range starts at or
            // before it.
            let after = sacked.partition_point(|&(s, _)| seq_le(s, start));
            seq_le(end, una) || (after > 0 && seq_le(end, sacked[after - 1].1))
        };
        let Some(last_arrived) = self.resent.iter().rposition(arrived) else {
            return;
        };
        let lost: Vec<_> = self
            .resent
            .drain(..last_arrived)
            .filter(|range| !arrived(range))
            .collect();
        self.resent.retain(|range| !arrived(range));
        if !lost.is_empty() {
            self.lost_resends.extend(lost);
            self.resend_holes_to.get_or_insert(una);
        }
    }

    /// Resends resends found lost, then what lies below `resend_holes_to` and is neither
    /// acknowledged, SACKed nor resent already in this recovery, peeking each hole at its
    /// offset; the peek offset then returns to where new data continues.
    fn resend_holes<H: super::host::Host<Socket = S>>(
        &mut self,
        host: &mut H,
        link: Link,
        tx: &mut Tx,
    ) -> Result<(), Verdict> {
        let Some(to) = self.resend_holes_to.take() else {
            return Ok(());
        };
        // The FIN is not data to peek: if it was lost, the timer resends it.
        let data_end = self.snd_nxt.wrapping_sub(u32::from(self.fin_sent));
        let to = seq_min(to, data_end);
        let mut resent = false;
        for (start, end) in std::mem::take(&mut self.lost_resends) {
            // Part of it may have been acknowledged since.
            let start = seq_max(start, self.snd_una);
            if seq_lt(start, end) && seq_le(end, data_end) {
                self.resend_range(host, link, tx, start, end)?;
                resent = true;
            }
        }
        let mut cursor = seq_max(self.snd_una, self.resent_up_to);
        let blocks = self.sacked.clone();
        for (start, end) in blocks.into_iter().chain([(to, to)]) {
            if !seq_lt(cursor, to) {
                break;
            }
            let hole_end = seq_min(start, to);
            if seq_lt(cursor, hole_end) {
                self.resend_range(host, link, tx, cursor, hole_end)?;
                resent = true;
                cursor = hole_end;
            }
            if seq_lt(start, to) && seq_lt(cursor, end) {
                cursor = end;
            }
        }
        self.resent_up_to = seq_max(self.resent_up_to, cursor);
        if resent {
            let offset = data_end.wrapping_sub(self.snd_una) as usize;
            self.seek_peek(host, offset)?;
        }
        Ok(())
    }

    /// The most payload one frame to the guest carries.
    fn segment_max(&self) -> usize {
        if self.gso { GSO_PAYLOAD } else { self.mss }
    }

    /// Sends `start..end` again, in segments, peeked at their offset.
    fn resend_range<H: super::host::Host<Socket = S>>(
        &mut self,
        host: &mut H,
        link: Link,
        tx: &mut Tx,
        mut start: u32,
        end: u32,
    ) -> Result<(), Verdict> {
        let max = self.segment_max();
        while seq_lt(start, end) {
            let offset = start.wrapping_sub(self.snd_una) as usize;
            self.seek_peek(host, offset)?;
            let len = (end.wrapping_sub(start) as usize).min(max);
            let n = match self.peek_segments(host, link, tx, start, len) {
                Ok(n) if n > 0 => n,
                // These bytes were peeked before, so they are there: a failed peek means
                // the socket broke.
                _ => return Err(Verdict::Reset),
            };
            if self.resent.len() < MAX_RESENT {
                self.resent.push((start, start.wrapping_add(n as u32)));
            }
            start = start.wrapping_add(n as u32);
        }
        Ok(())
    }

    /// Peeks up to `len` bytes at the host socket's peek offset into frames carrying them
    /// from sequence number `seq`, one segment each, and queues them: one call scatters the
    /// bytes over the frames' payloads. `Ok(0)`: the host peer closed and everything was
    /// peeked; no frame is queued then, nor on an error.
    fn peek_segments<H: super::host::Host<Socket = S>>(
        &self,
        host: &mut H,
        link: Link,
        tx: &mut Tx,
        seq: u32,
        len: usize,
    ) -> io::Result<usize> {
        let offset = tcp_payload_offset(self.key.guest.ip());
        let segment_max = self.segment_max();
        let count = len.div_ceil(segment_max).clamp(1, PEEK_FRAMES);
        let mut frames: [Vec<u8>; PEEK_FRAMES] = Default::default();
        let mut lens = [0; PEEK_FRAMES];
        let mut unasked = len.min(count * segment_max);
        for (frame, frame_len) in frames.iter_mut().zip(&mut lens).take(count) {
            *frame_len = unasked.min(segment_max);
            unasked -= *frame_len;
            *frame = tx.buffer(offset + *frame_len);
        }
        let peeked = {
            let mut iov: [IoSliceMut<'_>; PEEK_FRAMES] =
                std::array::from_fn(|_| IoSliceMut::new(&mut []));
            let slots = iov.iter_mut().zip(&mut frames).zip(lens).take(count);
            for ((slot, frame), frame_len) in slots {
                *slot = IoSliceMut::new(&mut frame[offset..offset + frame_len]);
            }
            host.peek_vectored(&self.socket, &mut iov[..count])
        };
        let mut left = match peeked {
            Ok(n) if n > 0 => n,
            other => {
                for frame in frames.into_iter().take(count) {
                    tx.recycle(frame);
                }
                return other;
            }
        };
        let total = left;
        let (src, dst) = (self.key.remote.ip(), self.key.guest.ip());
        let mut seq = seq;
        for (mut frame, frame_len) in frames.into_iter().zip(lens).take(count) {
            let n = left.min(frame_len);
            if n == 0 {
                tx.recycle(frame);
                continue;
            }
            left -= n;
            let header = self.header(TcpControl::None, seq);
            seq = seq.wrapping_add(n as u32);
            // With offloads even a single segment leaves its checksum to the guest kernel: no
            // pass over the payload here, and none there either (a partial checksum is
            // trusted on local delivery). At MTU 65520 nearly every data frame is a single
            // segment.
            if self.gso {
                let (frame_len, gso) =
                    finish_tcp_gso_frame(&mut frame, link, src, dst, &header, n, self.mss);
                tx.push_gso(frame, frame_len, gso);
            } else {
                let frame_len = finish_tcp_frame(&mut frame, link, src, dst, &header, n);
                tx.push(frame, frame_len);
            }
        }
        Ok(total)
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
        if self.guest_fin_seq.is_some() {
            // The guest's stream ended at its FIN: a segment now is a retransmission, or
            // bytes past the end from a broken guest, which must not reach a host socket
            // already shut down for writing. Either way, only our ACK answers it.
            self.ack_now = true;
            return self.forward_fin(host);
        }
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
            self.latest_out_of_order = Some(seg.seq);
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
                // Nothing the guest sent past its end is part of the stream.
                self.out_of_order.clear();
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

    /// Sends what waits; acknowledges what the host socket took (if not acknowledged yet).
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
        self.send_due = false;
        if let Err(verdict) = self.settle_discards(host) {
            return verdict;
        }
        if let Err(verdict) = self.resend_holes(host, link, tx) {
            return verdict;
        }
        if self.host_drained {
            return self.poll_close();
        }
        while !self.fin_sent {
            let in_flight = self.snd_nxt.wrapping_sub(self.snd_una);
            let room = self.snd_wnd.saturating_sub(in_flight) as usize;
            if room == 0 {
                // Zero window: the retransmission timer doubles as the persist timer.
                self.timer.get_or_insert(now + self.rto);
                break;
            }
            let len = room.min(PEEK_FRAMES * self.segment_max());
            match self.peek_segments(host, link, tx, self.snd_nxt, len) {
                Ok(0) => {
                    self.host_eof = true;
                    // Nothing more can come; only an error can wake the socket now.
                    self.host_drained = true;
                    let header = self.header(TcpControl::Fin, self.snd_nxt);
                    tx.push_tcp(link, self.key.remote.ip(), self.key.guest.ip(), &header);
                    self.snd_nxt = self.snd_nxt.wrapping_add(1);
                    self.fin_sent = true;
                    self.ack_due = false;
                    self.timer.get_or_insert(now + self.rto);
                }
                Ok(n) => {
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
                    self.host_drained = true;
                    break;
                }
                Err(_) => return Verdict::Reset,
            }
        }
        if self.fin_sent && !self.host_drained {
            // The host peer closed and all it sent was read, yet its socket reported an
            // event: a reset after its FIN, most likely. The guest must hear of it, as it
            // would from a kernel, instead of holding a half-open connection to nobody. Reads
            // return only EOF now; the socket's error says which.
            self.host_drained = true;
            if !matches!(host.take_error(&self.socket), Ok(None)) {
                return Verdict::Reset;
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

    const ISS: u32 = 0xffff_f000;

    /// An established flow with `in_flight` bytes sent to the guest from [`ISS`] + 1, which
    /// wraps the sequence space on the way.
    fn flow_with_in_flight(in_flight: u32) -> TcpFlow<()> {
        let syn = Segment {
            seq: 1000,
            ack: None,
            syn: true,
            fin: false,
            rst: false,
            window: 0xffff,
            max_seg_size: Some(1000),
            window_scale: Some(7),
            sack_permitted: true,
            sack: [None; 3],
            payload: &[],
        };
        let key = FlowKey {
            guest: "10.0.2.100:40000".parse().unwrap(),
            remote: "192.0.2.1:80".parse().unwrap(),
        };
        let mut flow = TcpFlow::new(key, (), &syn, ISS, 1000);
        flow.state = TcpState::Established;
        flow.snd_una = ISS.wrapping_add(1);
        flow.snd_nxt = flow.snd_una.wrapping_add(in_flight);
        flow
    }

    fn at(offset: u32) -> u32 {
        ISS.wrapping_add(1).wrapping_add(offset)
    }

    #[test]
    fn sack_blocks_outside_what_is_in_flight_are_ignored() {
        let mut flow = flow_with_in_flight(10_000);
        let una = flow.snd_una;
        let blocks = [
            // At or below the ACK (a D-SACK), past what we sent, and backwards.
            Some((at(0), at(1000))),
            Some((at(9000), at(11_000))),
            Some((at(5000), at(4000))),
        ];
        assert!(!flow.note_sack(una, &blocks));
        assert!(flow.sacked.is_empty());
    }

    #[test]
    fn sack_blocks_merge_in_order_across_acks() {
        let mut flow = flow_with_in_flight(10_000);
        let una = flow.snd_una;
        assert!(flow.note_sack(una, &[Some((at(6000), at(7000))), None, None]));
        assert!(flow.note_sack(una, &[Some((at(2000), at(3000))), None, None]));
        // Touching the first from below and overlapping it: one block.
        assert!(flow.note_sack(una, &[Some((at(5000), at(6500))), None, None]));
        // Nothing new.
        assert!(!flow.note_sack(una, &[Some((at(2000), at(2500))), None, None]));
        assert_eq!(
            flow.sacked,
            [(at(2000), at(3000)), (at(5000), at(7000))],
            "sorted and disjoint"
        );
    }

    #[test]
    fn a_guest_cannot_grow_the_sack_scoreboard_without_bound() {
        let mut flow = flow_with_in_flight(1 << 20);
        let una = flow.snd_una;
        for i in 0..10_000u32 {
            // Disjoint one-byte blocks, every other byte.
            let start = at(2 + 2 * i);
            flow.note_sack(una, &[Some((start, start.wrapping_add(1))), None, None]);
        }
        assert_eq!(flow.sacked.len(), MAX_SACKED);
        // A block touching known ones still counts: it fills the gap between the first two.
        let (start, end) = flow.sacked[0];
        assert!(flow.note_sack(una, &[Some((end, end.wrapping_add(1))), None, None]));
        assert_eq!(flow.sacked[0], (start, end.wrapping_add(2)));
        assert_eq!(flow.sacked.len(), MAX_SACKED - 1);
    }

    /// A flow whose guest sent 1000 bytes in order from sequence number 1001, all taken.
    fn flow_receiving() -> TcpFlow<()> {
        let mut flow = flow_with_in_flight(0);
        flow.rcv_acked = 2001;
        flow.ack_point = 2001;
        flow
    }

    #[test]
    fn acks_carry_sack_blocks_latest_run_first() {
        let mut flow = flow_receiving();
        // Runs past a hole at 2001, the one at 4001 received last.
        flow.out_of_order = vec![
            (3001, vec![0; 500]),
            (5001, vec![0; 100]),
            (4001, vec![0; 200]),
            (6001, vec![0; 50]),
        ];
        flow.latest_out_of_order = Some(4001);
        let header = flow.ack_header();
        assert_eq!(header.ack, Some(2001));
        assert_eq!(
            header.sack,
            [Some((4001, 4201)), Some((6001, 6051)), Some((5001, 5101))]
        );
    }

    #[test]
    fn no_sack_blocks_while_in_order_bytes_wait_unacknowledged() {
        let mut flow = flow_receiving();
        flow.out_of_order = vec![(3001, vec![0; 500])];
        flow.latest_out_of_order = Some(3001);
        // 100 bytes in order that the host socket has not taken: the ACK stays at 2001, and
        // a block at 3001 would make the guest count 2001..2101 lost.
        flow.pending = vec![0; 100];
        assert_eq!(flow.ack_header().sack, [None; 3]);
        flow.pending.clear();
        assert_eq!(flow.ack_header().sack, [Some((3001, 3501)), None, None]);
        // Nor to a guest that did not offer SACK.
        flow.sack_ok = false;
        assert_eq!(flow.ack_header().sack, [None; 3]);
    }

    #[test]
    fn a_resend_sent_before_one_that_arrived_was_lost() {
        let mut flow = flow_with_in_flight(10_000);
        flow.recovery_point = Some(flow.snd_nxt);
        flow.resent = vec![
            (at(0), at(1000)),
            (at(3000), at(4000)),
            (at(6000), at(7000)),
        ];
        // The guest reports the second resend, not the first: the first was lost again.
        flow.sacked = vec![(at(3000), at(5000))];
        flow.find_lost_resends();
        assert_eq!(flow.lost_resends, [(at(0), at(1000))]);
        // The third may still be on its way.
        assert_eq!(flow.resent, [(at(6000), at(7000))]);
        assert!(
            flow.resend_holes_to.is_some(),
            "the lost one waits to go again"
        );
    }
}
