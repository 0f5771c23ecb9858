//! When the event loop polls instead of sleeping.
//!
//! A request/response exchange through the helper wakes it twice per round trip (the guest's
//! request, the host's answer). Waking a sleeping process costs far more than the work it then
//! does: on the benchmark machine, a virtual one, an idle CPU halts and is woken by an
//! interrupt, and that alone made slirpnet as slow per round trip as slirp4netns. So after
//! small exchanges the loop keeps polling its epoll set for a short window before sleeping,
//! yielding the CPU between polls so that any other runnable task (the guest's or the host's
//! end of the exchange) still gets it. Bulk transfers move large amounts per wake-up and never
//! poll, nor do one-way streams of small frames (UDP): there the CPU is better left to the
//! processes at both ends. The window ends at the first poll that finds nothing, so an idle
//! helper polls once and then sleeps. Windows that keep ending empty (exchanges paced further
//! apart than the window) make the next one wait for a longer streak, so paced traffic does not
//! pay a wasted window per exchange.

use std::time::Duration;

/// An iteration of the loop that moved at most this many bytes across the TAP (both
/// directions) is part of a small exchange: a request, an answer, a handshake.
pub const SMALL_EXCHANGE: usize = 16 << 10;
/// Consecutive small iterations before polling starts: one stray small frame in a bulk
/// transfer (an ACK) does not make it latency-bound.
const STREAK: u32 = 2;
/// After this many empty windows in a row the streak needed stops doubling: 2 << 5 = 64 small
/// iterations, one window per 32 paced exchanges at most.
const MAX_BACKOFF: u32 = 5;
/// The default `--busy-poll` window: longer than a peer's turnaround on a loaded 2-core
/// machine (tens of microseconds), short enough to cost nothing noticeable once traffic stops.
pub const DEFAULT_WINDOW: Duration = Duration::from_micros(200);

#[derive(Debug, Clone)]
pub struct BusyPoll {
    /// Zero: never poll.
    window: Duration,
    small_streak: u32,
    /// Which ways the last iteration that moved anything moved it: (from, to) the guest.
    last_direction: (bool, bool),
    /// Windows in a row that ended with nothing to do (capped at [`MAX_BACKOFF`]).
    misses: u32,
}

impl BusyPoll {
    pub fn new(window: Duration) -> Self {
        BusyPoll {
            window,
            small_streak: 0,
            last_direction: (false, false),
            misses: 0,
        }
    }

    /// After an iteration of the loop that read `read` bytes from the TAP and wrote `written`.
    /// It is part of an exchange if it moved a little both ways, or a little the other way
    /// than the iteration before. One that moved nothing (a timer, the API, a host socket the
    /// guest has no window for) is not, and ends the streak.
    pub fn record(&mut self, read: usize, written: usize) {
        let direction = (read > 0, written > 0);
        let small = (1..=SMALL_EXCHANGE).contains(&(read + written));
        let turned = direction == (true, true) || direction != self.last_direction;
        self.small_streak = if small && turned {
            self.small_streak.saturating_add(1)
        } else {
            0
        };
        if read + written > 0 {
            self.last_direction = direction;
        }
    }

    /// How long to poll before sleeping, if at all; never past `until_timer`, the time left
    /// before the loop's next timer.
    pub fn budget(&self, until_timer: Option<Duration>) -> Option<Duration> {
        if self.window.is_zero() || self.small_streak < STREAK << self.misses {
            return None;
        }
        let budget = until_timer.map_or(self.window, |left| left.min(self.window));
        (!budget.is_zero()).then_some(budget)
    }

    /// A poll window passed with nothing to do: the exchange is over, sleep until traffic.
    pub fn went_quiet(&mut self) {
        self.small_streak = 0;
        self.misses = (self.misses + 1).min(MAX_BACKOFF);
    }

    /// A poll window found work: polling pays here.
    pub fn caught(&mut self) {
        self.misses = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_micros(200);

    /// A TCP request (read, and our ACK written) and its answer (written).
    fn round_trip(poll: &mut BusyPoll) {
        poll.record(60, 54);
        poll.record(0, 60);
    }

    #[test]
    fn polls_only_after_consecutive_small_exchanges() {
        let mut poll = BusyPoll::new(WINDOW);
        assert_eq!(poll.budget(None), None, "nothing seen yet");
        poll.record(60, 54);
        assert_eq!(
            poll.budget(None),
            None,
            "one small iteration is not a pattern"
        );
        poll.record(0, 60);
        assert_eq!(poll.budget(None), Some(WINDOW));
        poll.record(SMALL_EXCHANGE - 100, 100);
        assert_eq!(poll.budget(None), Some(WINDOW));
    }

    #[test]
    fn datagram_exchanges_count_one_way_streams_do_not() {
        let mut query_answer = BusyPoll::new(WINDOW);
        for _ in 0..3 {
            query_answer.record(80, 0);
            query_answer.record(0, 120);
        }
        assert_eq!(query_answer.budget(None), Some(WINDOW));

        let mut to_host = BusyPoll::new(WINDOW);
        let mut to_guest = BusyPoll::new(WINDOW);
        for _ in 0..10 {
            to_host.record(1442, 0);
            to_guest.record(0, 1442);
        }
        assert_eq!(to_host.budget(None), None);
        assert_eq!(to_guest.budget(None), None);
    }

    #[test]
    fn bulk_or_empty_iterations_end_the_streak() {
        let mut poll = BusyPoll::new(WINDOW);
        round_trip(&mut poll);
        poll.record(SMALL_EXCHANGE, 54);
        assert_eq!(poll.budget(None), None, "a bulk iteration");
        round_trip(&mut poll);
        poll.record(0, 0);
        assert_eq!(poll.budget(None), None, "an iteration that moved nothing");
    }

    #[test]
    fn a_quiet_window_stops_polling_until_traffic_returns() {
        let mut poll = BusyPoll::new(WINDOW);
        round_trip(&mut poll);
        poll.went_quiet();
        assert_eq!(poll.budget(None), None);
        // After an empty window the next needs twice the streak.
        round_trip(&mut poll);
        poll.record(60, 54);
        assert_eq!(poll.budget(None), None);
        poll.record(0, 60);
        assert_eq!(poll.budget(None), Some(WINDOW));
    }

    #[test]
    fn empty_windows_in_a_row_back_off_until_one_catches_something() {
        let mut poll = BusyPoll::new(WINDOW);
        let mut windows = 0;
        // Paced exchanges: every window ends empty.
        for _ in 0..200 {
            round_trip(&mut poll);
            if poll.budget(None).is_some() {
                windows += 1;
                poll.went_quiet();
            }
        }
        // 400 iterations: windows after 2, 4, 8, 16, 32, then every 64: 10, not 200.
        assert_eq!(windows, 10);

        // A window that catches the next exchange restores polling at once.
        while poll.budget(None).is_none() {
            round_trip(&mut poll);
        }
        poll.caught();
        round_trip(&mut poll);
        assert_eq!(poll.budget(None), Some(WINDOW));
    }

    #[test]
    fn never_polls_past_the_next_timer_or_when_disabled() {
        let mut poll = BusyPoll::new(WINDOW);
        round_trip(&mut poll);
        let soon = Duration::from_micros(30);
        assert_eq!(poll.budget(Some(soon)), Some(soon));
        assert_eq!(poll.budget(Some(Duration::ZERO)), None, "the timer is due");
        assert_eq!(poll.budget(Some(Duration::from_secs(1))), Some(WINDOW));

        let mut off = BusyPoll::new(Duration::ZERO);
        round_trip(&mut off);
        assert_eq!(off.budget(None), None);
    }
}
