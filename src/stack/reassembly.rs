//! IPv4 and IPv6 fragment reassembly (RFC 791, RFC 8200 section 4.5; RFC 815's hole list
//! simplified to sorted ranges).
//!
//! A guest fragments what does not fit its MTU: large UDP datagrams, and at MTU 68 even TCP
//! segments, since Linux never sends an MSS below 48 bytes. Memory is bounded: at most
//! [`MAX_DATAGRAMS`] datagrams in progress of at most 64 KiB each; the oldest is dropped to
//! make room, and none is kept longer than [`TIMEOUT`].

use std::net::IpAddr;
use std::time::{Duration, Instant};

use smoltcp::wire::IpProtocol;

pub const MAX_DATAGRAMS: usize = 32;
pub const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_LEN: usize = 65535 - 20;

/// Fragments belong together when source, destination, protocol and id match (RFC 791; for
/// IPv6 the protocol is the fragment header's next header, the id 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: IpProtocol,
    pub id: u32,
}

struct Datagram {
    key: FragmentKey,
    data: Vec<u8>,
    /// Received byte ranges, sorted and merged.
    received: Vec<(usize, usize)>,
    /// Known once the last fragment (no "more fragments" flag) arrived.
    total: Option<usize>,
    started: Instant,
}

impl Datagram {
    fn complete(&self) -> bool {
        self.total
            .is_some_and(|total| self.received.first() == Some(&(0, total)))
    }

    fn insert(&mut self, start: usize, end: usize) {
        self.received.push((start, end));
        self.received.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.received.len());
        for &(s, e) in &self.received {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.received = merged;
    }
}

#[derive(Default)]
pub struct Reassembler {
    datagrams: Vec<Datagram>,
}

/// Why a fragment was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Past 64 KiB, or inconsistent with the datagram's known length.
    Malformed,
}

impl Reassembler {
    /// Adds a fragment; returns the whole payload once every byte arrived.
    pub fn add(
        &mut self,
        now: Instant,
        key: FragmentKey,
        offset: usize,
        payload: &[u8],
        more_fragments: bool,
    ) -> Result<Option<Vec<u8>>, Rejected> {
        self.datagrams
            .retain(|d| now.saturating_duration_since(d.started) < TIMEOUT);
        let end = offset + payload.len();
        if end > MAX_LEN {
            self.datagrams.retain(|d| d.key != key);
            return Err(Rejected::Malformed);
        }
        let index = match self.datagrams.iter().position(|d| d.key == key) {
            Some(index) => index,
            None => {
                if self.datagrams.len() >= MAX_DATAGRAMS {
                    // The oldest is the likeliest to be lost already.
                    self.datagrams.remove(0);
                }
                self.datagrams.push(Datagram {
                    key,
                    data: Vec::new(),
                    received: Vec::new(),
                    total: None,
                    started: now,
                });
                self.datagrams.len() - 1
            }
        };
        let datagram = &mut self.datagrams[index];
        let inconsistent = match datagram.total {
            Some(total) => end > total || (!more_fragments && end != total),
            None => !more_fragments && datagram.received.last().is_some_and(|r| r.1 > end),
        };
        if inconsistent {
            self.datagrams.remove(index);
            return Err(Rejected::Malformed);
        }
        if !more_fragments {
            datagram.total = Some(end);
        }
        if datagram.data.len() < end {
            datagram.data.resize(end, 0);
        }
        datagram.data[offset..end].copy_from_slice(payload);
        datagram.insert(offset, end);
        if datagram.complete() {
            let datagram = self.datagrams.remove(index);
            return Ok(Some(datagram.data));
        }
        Ok(None)
    }

    pub fn in_progress(&self) -> usize {
        self.datagrams.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32) -> FragmentKey {
        FragmentKey {
            src: std::net::Ipv4Addr::new(10, 0, 2, 100).into(),
            dst: std::net::Ipv4Addr::new(10, 0, 2, 2).into(),
            protocol: IpProtocol::Udp,
            id,
        }
    }

    #[test]
    fn fragments_in_any_order_make_the_datagram() {
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut r = Reassembler::default();
        let now = Instant::now();
        assert_eq!(r.add(now, key(1), 2048, &data[2048..], false), Ok(None));
        assert_eq!(r.add(now, key(1), 0, &data[..1024], true), Ok(None));
        assert_eq!(
            r.add(now, key(1), 1024, &data[1024..2048], true),
            Ok(Some(data))
        );
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn duplicates_and_overlaps_are_harmless() {
        let data = vec![7u8; 100];
        let mut r = Reassembler::default();
        let now = Instant::now();
        assert_eq!(r.add(now, key(2), 0, &data[..64], true), Ok(None));
        assert_eq!(r.add(now, key(2), 0, &data[..64], true), Ok(None));
        assert_eq!(
            r.add(now, key(2), 32, &data[32..100], false),
            Ok(Some(data))
        );
    }

    #[test]
    fn too_long_or_inconsistent_is_rejected() {
        let mut r = Reassembler::default();
        let now = Instant::now();
        assert_eq!(
            r.add(now, key(3), 65000, &[0; 1000], false),
            Err(Rejected::Malformed)
        );
        assert_eq!(
            r.add(now, key(4), 0, &[0; 16], false),
            Ok(Some(vec![0; 16]))
        );
        assert_eq!(r.add(now, key(5), 80, &[0; 8], false), Ok(None));
        assert_eq!(
            r.add(now, key(5), 96, &[0; 8], true),
            Err(Rejected::Malformed)
        );
    }

    #[test]
    fn memory_is_bounded_and_stale_datagrams_expire() {
        let mut r = Reassembler::default();
        let now = Instant::now();
        for id in 0..1000 {
            assert_eq!(r.add(now, key(id), 0, &[0; 8], true), Ok(None));
        }
        assert_eq!(r.in_progress(), MAX_DATAGRAMS);
        let _ = r.add(now + TIMEOUT, key(5000), 0, &[0; 8], true);
        assert_eq!(r.in_progress(), 1);
    }
}
