//! The built-in DHCPv4 server: a pure state machine, with no I/O and no clock.
//!
//! [`DhcpServer::handle`] takes the UDP payload of a datagram that the guest sent to port 67
//! (plus the frame's Ethernet source) and returns at most one reply, which the caller sends from
//! `gateway:67` to `dst_ip:68` in a frame addressed to `dst_mac`. It behaves like libslirp's
//! `bootp.c` (what slirp4netns uses), within the rules of RFC 2131 (the protocol) and RFC 2132
//! (the options):
//!
//! * Addresses come from the pool `dhcp_start..=dhcp_end` (net+15..=net+30 by default, COMPAT.md
//!   section 3) and are keyed by the client's hardware address (`chaddr`), so one MAC keeps one
//!   address across DISCOVER, REQUEST and later re-requests.
//! * DHCPDISCOVER → DHCPOFFER (RFC 2131 4.3.1): the client's current address, else the address it
//!   asks for (option 50) when that is free, else the lowest free one. The offer reserves the
//!   address. When the pool is full a new client gets no answer at all.
//! * DHCPREQUEST (RFC 2131 4.3.2) in any state: SELECTING, INIT-REBOOT (option 50) and
//!   RENEWING/REBINDING (`ciaddr`) → DHCPACK when the address is in the pool and free or already
//!   this client's (a client that moves gives its old address back), else DHCPNAK. A REQUEST
//!   whose server identifier names another server withdraws our offer and gets no answer.
//! * DHCPDECLINE (4.3.3) marks the address as in use elsewhere: it is handed out again only when
//!   no never-declined address is free. DHCPRELEASE (4.3.4) frees the address. Neither is
//!   answered.
//! * DHCPINFORM (4.3.5) → DHCPACK with the configuration options and no address or lease time.
//!
//! Every OFFER and ACK carries: server identifier = gateway, router = gateway, subnet mask (from
//! the prefix), DNS server = net+3 (see [`DhcpServer::with_dns`]), and, for OFFER and the ACK to a
//! REQUEST, lease time 86400 s (option 51). NAKs carry only the server identifier and a message
//! (option 56). A client identifier (option 61) is echoed back as RFC 6842 asks. Replies go
//! where RFC 2131 4.1 says: NAK to broadcast; to `ciaddr` when the client filled it in; to
//! broadcast (255.255.255.255, ff:ff:ff:ff:ff:ff) when the client set the BROADCAST flag or has
//! no address to receive on; otherwise unicast to `yiaddr` at the frame's source MAC. Replies
//! are padded to the 300-octet BOOTP minimum.
//!
//! Deliberately not done:
//! * No lease expiry. The table has exactly one slot per pool address (16), each owned by at most
//!   one MAC and each MAC owning at most one slot, so memory stays bounded without a clock; the
//!   86400 s lease time is advertised only so that clients renew, and a renewal is always granted.
//! * No relay agents: requests with a non-zero `giaddr` are dropped (the link is a point-to-point
//!   TAP device with the guest on the other end).
//! * No plain BOOTP (a request without option 53 is dropped), no hardware other than Ethernet, no
//!   options beyond those listed (no host name, domain, MTU, static routes, T1/T2: clients use
//!   the RFC 2131 defaults of 0.5 and 0.875 of the lease), no overloaded `sname`/`file` fields.
//! * INIT-REBOOT requests from clients it has no record of are granted when the address is free,
//!   instead of being ignored (RFC 2131 4.3.2 says "remain silent"): after a restart of the
//!   helper a guest that remembers its address keeps it, as with libslirp.

use std::net::Ipv4Addr;

use smoltcp::wire::{
    DhcpMessageType, DhcpOpCode, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress,
};

use crate::config::NetConfig;

/// Lease time advertised in OFFER and ACK (option 51), seconds.
pub const LEASE_SECS: u32 = 86_400;

/// BOOTP minimum message size (RFC 1542 section 2.1); shorter replies are padded with zeros.
const MIN_REPLY_LEN: usize = 300;

/// Option 61, client identifier (RFC 2132 9.14).
const OPT_CLIENT_ID: u8 = 61;
/// Option 56, message (RFC 2132 9.9).
const OPT_MESSAGE: u8 = 56;

const NAK_MESSAGE: &[u8] = b"requested address not available";

/// One reply to send back to the guest: from `gateway:67` to `dst_ip:68`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpReply {
    /// The DHCP message bytes (the UDP payload).
    pub payload: Vec<u8>,
    /// IPv4 destination: 255.255.255.255, `ciaddr` or `yiaddr`.
    pub dst_ip: Ipv4Addr,
    /// Ethernet destination: ff:ff:ff:ff:ff:ff or the request frame's source MAC.
    pub dst_mac: EthernetAddress,
}

/// State of one pool address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    /// Offered to this client, not yet requested.
    Offered(EthernetAddress),
    /// Acknowledged to this client.
    Bound(EthernetAddress),
    /// A client said the address is in use by someone else (DHCPDECLINE): last choice.
    Declined,
}

impl Slot {
    fn owner(self) -> Option<EthernetAddress> {
        match self {
            Slot::Offered(mac) | Slot::Bound(mac) => Some(mac),
            Slot::Free | Slot::Declined => None,
        }
    }

    fn is_available(self) -> bool {
        matches!(self, Slot::Free | Slot::Declined)
    }
}

/// The DHCPv4 server: the network it serves and one slot per pool address.
#[derive(Debug, Clone)]
pub struct DhcpServer {
    net: NetConfig,
    dns: Option<Ipv4Addr>,
    /// `slots[i]` is `dhcp_start + i`; the length never changes after `new`.
    slots: Vec<Slot>,
}

impl DhcpServer {
    /// A server for `net` with every pool address free, advertising `net.dns` as DNS server.
    pub fn new(net: NetConfig) -> Self {
        let start = u32::from(net.dhcp_start);
        let end = u32::from(net.dhcp_end);
        let len = if end >= start { end - start + 1 } else { 0 };
        DhcpServer {
            net,
            dns: Some(net.dns),
            slots: vec![Slot::Free; len as usize],
        }
    }

    /// Replaces the advertised DNS server (option 6); `None` leaves the option out, e.g. for
    /// `--disable-dns`.
    pub fn with_dns(mut self, dns: Option<Ipv4Addr>) -> Self {
        self.dns = dns;
        self
    }

    /// The address currently offered or bound to `mac`, if any.
    pub fn lease(&self, mac: EthernetAddress) -> Option<Ipv4Addr> {
        self.slot_of(mac).map(|i| self.addr(i))
    }

    /// Handles the UDP payload of a datagram the guest sent to port 67 in a frame from
    /// `src_mac`. Returns the reply to send from gateway:67 to `dst_ip`:68, or `None` when there
    /// is nothing to send: malformed or not a client message, not for this server, RELEASE or
    /// DECLINE, or a new client while the pool is exhausted.
    pub fn handle(&mut self, src_mac: EthernetAddress, payload: &[u8]) -> Option<DhcpReply> {
        let packet = DhcpPacket::new_checked(payload).ok()?;
        if packet.opcode() != DhcpOpCode::Request {
            return None;
        }
        // Checks the hardware type and length, the magic cookie and option 53.
        let req = DhcpRepr::parse(&packet).ok()?;
        let mac = req.client_hardware_address;
        if !req.relay_agent_ip.is_unspecified() || !is_client_mac(mac) {
            return None;
        }
        let client_id = packet
            .options()
            .find(|opt| opt.kind == OPT_CLIENT_ID)
            .map(|opt| opt.data);
        let incoming = Incoming {
            req: &req,
            client_id,
            src_mac,
        };
        match req.message_type {
            DhcpMessageType::Discover => self.discover(&incoming),
            DhcpMessageType::Request => self.request(&incoming),
            DhcpMessageType::Decline => {
                self.decline(&req);
                None
            }
            DhcpMessageType::Release => {
                self.release(&req);
                None
            }
            DhcpMessageType::Inform => self.reply(&incoming, Kind::InformAck),
            _ => None,
        }
    }

    fn discover(&mut self, msg: &Incoming<'_>) -> Option<DhcpReply> {
        let mac = msg.req.client_hardware_address;
        let requested = msg
            .req
            .requested_ip
            .and_then(|ip| self.index(ip))
            .filter(|&i| self.slots[i] == Slot::Free);
        let Some(i) = self
            .slot_of(mac)
            .or(requested)
            .or_else(|| self.slots.iter().position(|s| *s == Slot::Free))
            .or_else(|| self.slots.iter().position(|s| *s == Slot::Declined))
        else {
            tracing::debug!(client = %mac, "DHCP pool exhausted, not answering DISCOVER");
            return None;
        };
        if self.slots[i] != Slot::Bound(mac) {
            self.slots[i] = Slot::Offered(mac);
        }
        self.reply(msg, Kind::Offer(self.addr(i)))
    }

    fn request(&mut self, msg: &Incoming<'_>) -> Option<DhcpReply> {
        let req = msg.req;
        let mac = req.client_hardware_address;
        if req
            .server_identifier
            .is_some_and(|id| id != self.net.gateway)
        {
            // SELECTING, and the client chose another server: withdraw our offer.
            if let Some(i) = self.slot_of(mac) {
                if self.slots[i] == Slot::Offered(mac) {
                    self.slots[i] = Slot::Free;
                }
            }
            return None;
        }
        let wanted = req
            .requested_ip
            .or_else(|| (!req.client_ip.is_unspecified()).then_some(req.client_ip))
            .or_else(|| self.lease(mac));
        let grant = wanted.and_then(|ip| self.index(ip)).filter(|&i| {
            let slot = self.slots[i];
            slot.is_available() || slot.owner() == Some(mac)
        });
        let Some(i) = grant else {
            tracing::debug!(client = %mac, requested = ?wanted, "DHCP NAK");
            return self.reply(msg, Kind::Nak);
        };
        // One address per client: a client that moves gives its old one back.
        for slot in &mut self.slots {
            if slot.owner() == Some(mac) {
                *slot = Slot::Free;
            }
        }
        self.slots[i] = Slot::Bound(mac);
        self.reply(msg, Kind::Ack(self.addr(i)))
    }

    fn decline(&mut self, req: &DhcpRepr<'_>) {
        if !self.for_us(req) {
            return;
        }
        let mac = req.client_hardware_address;
        if let Some(i) = req.requested_ip.and_then(|ip| self.index(ip)) {
            if self.slots[i].owner() == Some(mac) {
                self.slots[i] = Slot::Declined;
            }
        }
    }

    fn release(&mut self, req: &DhcpRepr<'_>) {
        if !self.for_us(req) {
            return;
        }
        let mac = req.client_hardware_address;
        if let Some(i) = self.index(req.client_ip) {
            if self.slots[i].owner() == Some(mac) {
                self.slots[i] = Slot::Free;
            }
        }
    }

    /// Whether a message that may carry a server identifier is addressed to this server.
    fn for_us(&self, req: &DhcpRepr<'_>) -> bool {
        req.server_identifier
            .is_none_or(|id| id == self.net.gateway)
    }

    fn slot_of(&self, mac: EthernetAddress) -> Option<usize> {
        self.slots.iter().position(|s| s.owner() == Some(mac))
    }

    fn index(&self, ip: Ipv4Addr) -> Option<usize> {
        let offset = u32::from(ip).checked_sub(u32::from(self.net.dhcp_start))?;
        let i = usize::try_from(offset).ok()?;
        (i < self.slots.len()).then_some(i)
    }

    fn addr(&self, i: usize) -> Ipv4Addr {
        // `i < slots.len()`, which came from a u32 range, so neither step can overflow.
        Ipv4Addr::from(u32::from(self.net.dhcp_start) + i as u32)
    }

    fn reply(&self, msg: &Incoming<'_>, kind: Kind) -> Option<DhcpReply> {
        let req = msg.req;
        let gateway = self.net.gateway;
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let (message_type, your_ip, configure, lease) = match kind {
            Kind::Offer(ip) => (DhcpMessageType::Offer, ip, true, true),
            Kind::Ack(ip) => (DhcpMessageType::Ack, ip, true, true),
            Kind::InformAck => (DhcpMessageType::Ack, unspecified, true, false),
            Kind::Nak => (DhcpMessageType::Nak, unspecified, false, false),
        };
        // RFC 2131 table 3: ACK carries the request's ciaddr, OFFER and NAK carry zero.
        let client_ip = if message_type == DhcpMessageType::Ack {
            req.client_ip
        } else {
            unspecified
        };

        let mut extra = Vec::with_capacity(2);
        if let Some(data) = msg.client_id {
            extra.push(DhcpOption {
                kind: OPT_CLIENT_ID,
                data,
            });
        }
        if kind == Kind::Nak {
            extra.push(DhcpOption {
                kind: OPT_MESSAGE,
                data: NAK_MESSAGE,
            });
        }

        let repr = DhcpRepr {
            message_type,
            transaction_id: req.transaction_id,
            secs: 0,
            client_hardware_address: req.client_hardware_address,
            client_ip,
            your_ip,
            server_ip: if configure { gateway } else { unspecified },
            router: configure.then_some(gateway),
            subnet_mask: configure.then(|| self.net.netmask()),
            relay_agent_ip: unspecified,
            broadcast: req.broadcast,
            requested_ip: None,
            // Echoed verbatim through `extra`, whatever its type.
            client_identifier: None,
            server_identifier: Some(gateway),
            parameter_request_list: None,
            dns_servers: self
                .dns
                .filter(|_| configure)
                .map(|dns| core::iter::once(dns).collect()),
            max_size: None,
            lease_duration: lease.then_some(LEASE_SECS),
            renew_duration: None,
            rebind_duration: None,
            additional_options: &extra,
        };
        let mut payload = vec![0u8; repr.buffer_len().max(MIN_REPLY_LEN)];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
            .ok()?;

        let (dst_ip, dst_mac) = if kind == Kind::Nak {
            (Ipv4Addr::BROADCAST, EthernetAddress::BROADCAST)
        } else if !req.client_ip.is_unspecified() {
            (req.client_ip, msg.src_mac)
        } else if req.broadcast || your_ip.is_unspecified() {
            (Ipv4Addr::BROADCAST, EthernetAddress::BROADCAST)
        } else {
            (your_ip, msg.src_mac)
        };
        Some(DhcpReply {
            payload,
            dst_ip,
            dst_mac,
        })
    }
}

/// A parsed client message and what came with it.
struct Incoming<'a> {
    req: &'a DhcpRepr<'a>,
    /// Raw option 61, echoed in replies.
    client_id: Option<&'a [u8]>,
    src_mac: EthernetAddress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Offer(Ipv4Addr),
    Ack(Ipv4Addr),
    InformAck,
    Nak,
}

/// A MAC that can own a lease: unicast and not all zeros.
fn is_client_mac(mac: EthernetAddress) -> bool {
    mac.is_unicast() && mac.as_bytes().iter().any(|&b| b != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_A: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    const MAC_B: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x57]);

    fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(a, b, c, d)
    }

    fn mac(n: u8) -> EthernetAddress {
        EthernetAddress([0x02, 0, 0, 0, 0, n])
    }

    /// A client message with everything unset except the type, xid and chaddr.
    fn client_repr(message_type: DhcpMessageType, mac: EthernetAddress) -> DhcpRepr<'static> {
        DhcpRepr {
            message_type,
            transaction_id: 0x1234_5678,
            secs: 3,
            client_hardware_address: mac,
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: None,
            client_identifier: None,
            server_identifier: None,
            parameter_request_list: Some(&[1, 3, 6, 51, 54]),
            dns_servers: None,
            max_size: Some(1500),
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        }
    }

    fn bytes(repr: &DhcpRepr<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        buf
    }

    fn discover(mac: EthernetAddress) -> Vec<u8> {
        bytes(&client_repr(DhcpMessageType::Discover, mac))
    }

    /// SELECTING-state REQUEST for `addr`, naming the default gateway as server.
    fn select(mac: EthernetAddress, addr: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
        let mut repr = client_repr(DhcpMessageType::Request, mac);
        repr.requested_ip = Some(addr);
        repr.server_identifier = Some(server);
        bytes(&repr)
    }

    /// RENEWING-state REQUEST: ciaddr set, no options 50/54.
    fn renew(mac: EthernetAddress, addr: Ipv4Addr) -> Vec<u8> {
        let mut repr = client_repr(DhcpMessageType::Request, mac);
        repr.client_ip = addr;
        bytes(&repr)
    }

    fn release(mac: EthernetAddress, addr: Ipv4Addr) -> Vec<u8> {
        let mut repr = client_repr(DhcpMessageType::Release, mac);
        repr.client_ip = addr;
        repr.server_identifier = Some(ip(10, 0, 2, 2));
        bytes(&repr)
    }

    /// Parses a reply and returns an owned summary (the repr borrows the buffer).
    struct Parsed {
        message_type: DhcpMessageType,
        op: DhcpOpCode,
        xid: u32,
        chaddr: EthernetAddress,
        ciaddr: Ipv4Addr,
        yiaddr: Ipv4Addr,
        siaddr: Ipv4Addr,
        broadcast: bool,
        server_identifier: Option<Ipv4Addr>,
        router: Option<Ipv4Addr>,
        subnet_mask: Option<Ipv4Addr>,
        dns_servers: Option<Vec<Ipv4Addr>>,
        lease_duration: Option<u32>,
        options: Vec<(u8, Vec<u8>)>,
    }

    fn parse(payload: &[u8]) -> Parsed {
        assert!(
            payload.len() >= MIN_REPLY_LEN,
            "reply shorter than 300 octets"
        );
        let packet = DhcpPacket::new_checked(payload).unwrap();
        let repr = DhcpRepr::parse(&packet).unwrap();
        Parsed {
            message_type: repr.message_type,
            op: packet.opcode(),
            xid: repr.transaction_id,
            chaddr: repr.client_hardware_address,
            ciaddr: repr.client_ip,
            yiaddr: repr.your_ip,
            siaddr: repr.server_ip,
            broadcast: repr.broadcast,
            server_identifier: repr.server_identifier,
            router: repr.router,
            subnet_mask: repr.subnet_mask,
            dns_servers: repr.dns_servers.map(|v| v.iter().copied().collect()),
            lease_duration: repr.lease_duration,
            options: packet
                .options()
                .map(|o| (o.kind, o.data.to_vec()))
                .collect(),
        }
    }

    fn offer_for(server: &mut DhcpServer, mac: EthernetAddress) -> Option<Ipv4Addr> {
        let reply = server.handle(mac, &discover(mac))?;
        let p = parse(&reply.payload);
        assert_eq!(p.message_type, DhcpMessageType::Offer);
        Some(p.yiaddr)
    }

    /// DISCOVER then REQUEST; returns the acknowledged address.
    fn lease_for(server: &mut DhcpServer, mac: EthernetAddress) -> Option<Ipv4Addr> {
        let offered = offer_for(server, mac)?;
        let reply = server.handle(mac, &select(mac, offered, server.net.gateway))?;
        let p = parse(&reply.payload);
        assert_eq!(p.message_type, DhcpMessageType::Ack);
        assert_eq!(p.yiaddr, offered);
        Some(p.yiaddr)
    }

    #[test]
    fn discover_gets_offer_with_all_options() {
        let mut server = DhcpServer::new(NetConfig::default());
        let reply = server.handle(MAC_A, &discover(MAC_A)).unwrap();
        let p = parse(&reply.payload);
        assert_eq!(p.op, DhcpOpCode::Reply);
        assert_eq!(p.message_type, DhcpMessageType::Offer);
        assert_eq!(p.xid, 0x1234_5678);
        assert_eq!(p.chaddr, MAC_A);
        assert_eq!(p.ciaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(p.yiaddr, ip(10, 0, 2, 15));
        assert_eq!(p.siaddr, ip(10, 0, 2, 2));
        assert!(!p.broadcast);
        assert_eq!(p.server_identifier, Some(ip(10, 0, 2, 2)));
        assert_eq!(p.router, Some(ip(10, 0, 2, 2)));
        assert_eq!(p.subnet_mask, Some(ip(255, 255, 255, 0)));
        assert_eq!(p.dns_servers, Some(vec![ip(10, 0, 2, 3)]));
        assert_eq!(p.lease_duration, Some(86_400));
        // The raw option bytes too, independent of smoltcp's parser.
        assert!(p.options.contains(&(53, vec![2])));
        assert!(p.options.contains(&(54, vec![10, 0, 2, 2])));
        assert!(p.options.contains(&(51, 86_400u32.to_be_bytes().to_vec())));
        assert!(p.options.contains(&(6, vec![10, 0, 2, 3])));
        // No client identifier was sent, so none comes back; nothing else is echoed.
        assert!(!p.options.iter().any(|(k, _)| [50, 55, 57, 61].contains(k)));
        assert_eq!(server.lease(MAC_A), Some(ip(10, 0, 2, 15)));
    }

    #[test]
    fn request_gets_ack() {
        let mut server = DhcpServer::new(NetConfig::default());
        let offered = offer_for(&mut server, MAC_A).unwrap();
        let reply = server
            .handle(MAC_A, &select(MAC_A, offered, ip(10, 0, 2, 2)))
            .unwrap();
        let p = parse(&reply.payload);
        assert_eq!(p.message_type, DhcpMessageType::Ack);
        assert_eq!(p.yiaddr, ip(10, 0, 2, 15));
        assert_eq!(p.server_identifier, Some(ip(10, 0, 2, 2)));
        assert_eq!(p.router, Some(ip(10, 0, 2, 2)));
        assert_eq!(p.subnet_mask, Some(ip(255, 255, 255, 0)));
        assert_eq!(p.dns_servers, Some(vec![ip(10, 0, 2, 3)]));
        assert_eq!(p.lease_duration, Some(86_400));
        assert_eq!(reply.dst_ip, ip(10, 0, 2, 15));
        assert_eq!(reply.dst_mac, MAC_A);

        // Renewal from the bound address: ACK unicast to ciaddr, ciaddr echoed.
        let reply = server.handle(MAC_A, &renew(MAC_A, offered)).unwrap();
        let p = parse(&reply.payload);
        assert_eq!(p.message_type, DhcpMessageType::Ack);
        assert_eq!(p.yiaddr, offered);
        assert_eq!(p.ciaddr, offered);
        assert_eq!((reply.dst_ip, reply.dst_mac), (offered, MAC_A));
    }

    #[test]
    fn second_client_gets_next_address() {
        let mut server = DhcpServer::new(NetConfig::default());
        assert_eq!(lease_for(&mut server, MAC_A), Some(ip(10, 0, 2, 15)));
        assert_eq!(lease_for(&mut server, MAC_B), Some(ip(10, 0, 2, 16)));
        // An outstanding offer reserves its address too.
        assert_eq!(offer_for(&mut server, mac(3)), Some(ip(10, 0, 2, 17)));
        assert_eq!(offer_for(&mut server, mac(4)), Some(ip(10, 0, 2, 18)));
    }

    #[test]
    fn same_mac_gets_same_address() {
        let mut server = DhcpServer::new(NetConfig::default());
        assert_eq!(offer_for(&mut server, MAC_A), Some(ip(10, 0, 2, 15)));
        assert_eq!(offer_for(&mut server, MAC_A), Some(ip(10, 0, 2, 15)));
        assert_eq!(lease_for(&mut server, MAC_B), Some(ip(10, 0, 2, 16)));
        assert_eq!(lease_for(&mut server, MAC_A), Some(ip(10, 0, 2, 15)));
        assert_eq!(lease_for(&mut server, MAC_A), Some(ip(10, 0, 2, 15)));
        assert_eq!(lease_for(&mut server, MAC_B), Some(ip(10, 0, 2, 16)));
        // A new DISCOVER while bound still offers the bound address.
        assert_eq!(offer_for(&mut server, MAC_B), Some(ip(10, 0, 2, 16)));
    }

    #[test]
    fn seventeenth_client_gets_nothing() {
        let mut server = DhcpServer::new(NetConfig::default());
        for n in 0..16u8 {
            assert_eq!(lease_for(&mut server, mac(n)), Some(ip(10, 0, 2, 15 + n)));
        }
        assert_eq!(server.handle(mac(16), &discover(mac(16))), None);
        // Its REQUEST for a taken address is refused, and the table does not grow.
        let reply = server
            .handle(mac(16), &select(mac(16), ip(10, 0, 2, 20), ip(10, 0, 2, 2)))
            .unwrap();
        assert_eq!(parse(&reply.payload).message_type, DhcpMessageType::Nak);
        for n in 17..=255u8 {
            assert_eq!(server.handle(mac(n), &discover(mac(n))), None);
        }
        assert_eq!(server.slots.len(), 16);
        // Existing clients are unaffected.
        assert_eq!(lease_for(&mut server, mac(7)), Some(ip(10, 0, 2, 22)));
    }

    #[test]
    fn request_for_someone_elses_address_is_naked() {
        let mut server = DhcpServer::new(NetConfig::default());
        let a = lease_for(&mut server, MAC_A).unwrap();
        let reply = server
            .handle(MAC_B, &select(MAC_B, a, ip(10, 0, 2, 2)))
            .unwrap();
        let p = parse(&reply.payload);
        assert_eq!(p.message_type, DhcpMessageType::Nak);
        assert_eq!(p.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(p.server_identifier, Some(ip(10, 0, 2, 2)));
        assert_eq!(p.lease_duration, None);
        assert_eq!(p.router, None);
        assert!(p.options.iter().any(|(k, _)| *k == 56));
        assert_eq!(reply.dst_ip, Ipv4Addr::BROADCAST);
        assert_eq!(reply.dst_mac, EthernetAddress::BROADCAST);
        // Renewing someone else's address, or one outside the pool, is refused too.
        let reply = server.handle(MAC_B, &renew(MAC_B, a)).unwrap();
        assert_eq!(parse(&reply.payload).message_type, DhcpMessageType::Nak);
        let reply = server
            .handle(MAC_B, &renew(MAC_B, ip(10, 0, 2, 100)))
            .unwrap();
        assert_eq!(parse(&reply.payload).message_type, DhcpMessageType::Nak);
        assert_eq!(server.lease(MAC_A), Some(a));
        assert_eq!(server.lease(MAC_B), None);
    }

    #[test]
    fn init_reboot_gets_remembered_address_when_free() {
        let mut server = DhcpServer::new(NetConfig::default());
        let mut repr = client_repr(DhcpMessageType::Request, MAC_A);
        repr.requested_ip = Some(ip(10, 0, 2, 20));
        let reply = server.handle(MAC_A, &bytes(&repr)).unwrap();
        let p = parse(&reply.payload);
        assert_eq!(p.message_type, DhcpMessageType::Ack);
        assert_eq!(p.yiaddr, ip(10, 0, 2, 20));
        // Moving to another free address gives the old one back.
        repr.requested_ip = Some(ip(10, 0, 2, 21));
        let reply = server.handle(MAC_A, &bytes(&repr)).unwrap();
        assert_eq!(parse(&reply.payload).yiaddr, ip(10, 0, 2, 21));
        assert_eq!(server.lease(MAC_A), Some(ip(10, 0, 2, 21)));
        assert!(server.slots.iter().filter(|s| s.owner().is_some()).count() == 1);
    }

    #[test]
    fn request_to_other_server_withdraws_offer() {
        let mut server = DhcpServer::new(NetConfig::default());
        let offered = offer_for(&mut server, MAC_A).unwrap();
        assert_eq!(
            server.handle(MAC_A, &select(MAC_A, offered, ip(192, 0, 2, 1))),
            None
        );
        assert_eq!(server.lease(MAC_A), None);
        assert_eq!(offer_for(&mut server, MAC_B), Some(offered));
    }

    #[test]
    fn release_then_reuse() {
        let mut server = DhcpServer::new(NetConfig::default());
        let a = lease_for(&mut server, MAC_A).unwrap();
        // A release from another MAC does nothing.
        assert_eq!(server.handle(MAC_B, &release(MAC_B, a)), None);
        assert_eq!(server.lease(MAC_A), Some(a));
        assert_eq!(server.handle(MAC_A, &release(MAC_A, a)), None);
        assert_eq!(server.lease(MAC_A), None);
        assert_eq!(lease_for(&mut server, MAC_B), Some(a));

        // With the pool full, a release makes room for a newcomer.
        let mut server = DhcpServer::new(NetConfig::default());
        for n in 0..16u8 {
            lease_for(&mut server, mac(n)).unwrap();
        }
        assert_eq!(offer_for(&mut server, mac(99)), None);
        server.handle(mac(5), &release(mac(5), ip(10, 0, 2, 20)));
        assert_eq!(lease_for(&mut server, mac(99)), Some(ip(10, 0, 2, 20)));
    }

    #[test]
    fn decline_moves_client_on() {
        let mut server = DhcpServer::new(NetConfig::default());
        let a = lease_for(&mut server, MAC_A).unwrap();
        let mut repr = client_repr(DhcpMessageType::Decline, MAC_A);
        repr.requested_ip = Some(a);
        repr.server_identifier = Some(ip(10, 0, 2, 2));
        assert_eq!(server.handle(MAC_A, &bytes(&repr)), None);
        assert_eq!(server.lease(MAC_A), None);
        assert_eq!(lease_for(&mut server, MAC_A), Some(ip(10, 0, 2, 16)));
        // The declined address is the last choice, but still usable once the rest is gone.
        for n in 0..14u8 {
            assert_eq!(lease_for(&mut server, mac(n)), Some(ip(10, 0, 2, 17 + n)));
        }
        assert_eq!(lease_for(&mut server, MAC_B), Some(a));
        assert_eq!(offer_for(&mut server, mac(200)), None);
    }

    #[test]
    fn inform_gets_ack_without_lease() {
        let mut server = DhcpServer::new(NetConfig::default());
        let mut repr = client_repr(DhcpMessageType::Inform, MAC_A);
        repr.client_ip = ip(10, 0, 2, 100);
        let reply = server.handle(MAC_A, &bytes(&repr)).unwrap();
        let p = parse(&reply.payload);
        assert_eq!(p.message_type, DhcpMessageType::Ack);
        assert_eq!(p.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(p.ciaddr, ip(10, 0, 2, 100));
        assert_eq!(p.lease_duration, None);
        assert_eq!(p.router, Some(ip(10, 0, 2, 2)));
        assert_eq!(p.subnet_mask, Some(ip(255, 255, 255, 0)));
        assert_eq!(p.dns_servers, Some(vec![ip(10, 0, 2, 3)]));
        assert_eq!(p.server_identifier, Some(ip(10, 0, 2, 2)));
        assert_eq!((reply.dst_ip, reply.dst_mac), (ip(10, 0, 2, 100), MAC_A));
        assert_eq!(server.lease(MAC_A), None);
    }

    #[test]
    fn custom_network() {
        let net = NetConfig::new(ip(192, 168, 7, 0), 24);
        let mut server = DhcpServer::new(net);
        let reply = server.handle(MAC_A, &discover(MAC_A)).unwrap();
        let p = parse(&reply.payload);
        assert_eq!(p.yiaddr, ip(192, 168, 7, 15));
        assert_eq!(p.router, Some(ip(192, 168, 7, 2)));
        assert_eq!(p.server_identifier, Some(ip(192, 168, 7, 2)));
        assert_eq!(p.dns_servers, Some(vec![ip(192, 168, 7, 3)]));
        assert_eq!(p.subnet_mask, Some(ip(255, 255, 255, 0)));
        assert_eq!(lease_for(&mut server, MAC_A), Some(ip(192, 168, 7, 15)));
        // A REQUEST naming the default network's gateway is for another server.
        assert_eq!(
            server.handle(MAC_B, &select(MAC_B, ip(192, 168, 7, 16), ip(10, 0, 2, 2))),
            None
        );

        let net = NetConfig::new(ip(172, 16, 0, 0), 12);
        let mut server = DhcpServer::new(net);
        let p = parse(&server.handle(MAC_A, &discover(MAC_A)).unwrap().payload);
        assert_eq!(p.yiaddr, ip(172, 16, 0, 15));
        assert_eq!(p.subnet_mask, Some(ip(255, 240, 0, 0)));
    }

    #[test]
    fn without_dns_leaves_option_out() {
        let mut server = DhcpServer::new(NetConfig::default()).with_dns(None);
        let p = parse(&server.handle(MAC_A, &discover(MAC_A)).unwrap().payload);
        assert_eq!(p.dns_servers, None);
        assert_eq!(p.router, Some(ip(10, 0, 2, 2)));
    }

    #[test]
    fn broadcast_vs_unicast_destination() {
        let mut server = DhcpServer::new(NetConfig::default());
        // No broadcast flag, no ciaddr: unicast to yiaddr at the frame's source MAC.
        let reply = server.handle(MAC_A, &discover(MAC_A)).unwrap();
        assert_eq!((reply.dst_ip, reply.dst_mac), (ip(10, 0, 2, 15), MAC_A));

        // Broadcast flag: broadcast, and the flag is echoed.
        let mut repr = client_repr(DhcpMessageType::Discover, MAC_B);
        repr.broadcast = true;
        let reply = server.handle(MAC_B, &bytes(&repr)).unwrap();
        assert_eq!(reply.dst_ip, Ipv4Addr::BROADCAST);
        assert_eq!(reply.dst_mac, EthernetAddress::BROADCAST);
        assert!(parse(&reply.payload).broadcast);
        let mut repr = client_repr(DhcpMessageType::Request, MAC_B);
        repr.broadcast = true;
        repr.requested_ip = Some(ip(10, 0, 2, 16));
        repr.server_identifier = Some(ip(10, 0, 2, 2));
        let reply = server.handle(MAC_B, &bytes(&repr)).unwrap();
        assert_eq!(parse(&reply.payload).message_type, DhcpMessageType::Ack);
        assert_eq!(reply.dst_ip, Ipv4Addr::BROADCAST);
        assert_eq!(reply.dst_mac, EthernetAddress::BROADCAST);

        // A client with an address: unicast to ciaddr.
        let reply = server
            .handle(MAC_B, &renew(MAC_B, ip(10, 0, 2, 16)))
            .unwrap();
        assert_eq!((reply.dst_ip, reply.dst_mac), (ip(10, 0, 2, 16), MAC_B));

        // INFORM without ciaddr has nowhere to unicast to.
        let reply = server
            .handle(MAC_A, &bytes(&client_repr(DhcpMessageType::Inform, MAC_A)))
            .unwrap();
        assert_eq!(reply.dst_ip, Ipv4Addr::BROADCAST);
        assert_eq!(reply.dst_mac, EthernetAddress::BROADCAST);
    }

    #[test]
    fn client_identifier_is_echoed() {
        let mut server = DhcpServer::new(NetConfig::default());
        // A DUID-style identifier (type 255), which smoltcp's Repr does not model.
        let id = [255u8, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        let opts = [DhcpOption {
            kind: OPT_CLIENT_ID,
            data: &id,
        }];
        let mut repr = client_repr(DhcpMessageType::Discover, MAC_A);
        repr.additional_options = &opts;
        let p = parse(&server.handle(MAC_A, &bytes(&repr)).unwrap().payload);
        assert!(p.options.contains(&(OPT_CLIENT_ID, id.to_vec())));
    }

    #[test]
    fn rejects_malformed_and_foreign() {
        let mut server = DhcpServer::new(NetConfig::default());
        let good = discover(MAC_A);

        let mut wrong_op = good.clone();
        wrong_op[0] = 2;
        assert_eq!(server.handle(MAC_A, &wrong_op), None);

        let mut wrong_cookie = good.clone();
        wrong_cookie[236] ^= 0xff;
        assert_eq!(server.handle(MAC_A, &wrong_cookie), None);

        let mut wrong_htype = good.clone();
        wrong_htype[1] = 6; // IEEE 802
        assert_eq!(server.handle(MAC_A, &wrong_htype), None);

        let mut wrong_hlen = good.clone();
        wrong_hlen[2] = 16;
        assert_eq!(server.handle(MAC_A, &wrong_hlen), None);

        let mut relayed = good.clone();
        relayed[24..28].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(server.handle(MAC_A, &relayed), None);

        // No option 53: plain BOOTP.
        let mut bootp = good.clone();
        bootp[240..].fill(0);
        bootp[240] = 255;
        assert_eq!(server.handle(MAC_A, &bootp), None);

        // Server-side message types from the client side.
        for t in [
            DhcpMessageType::Offer,
            DhcpMessageType::Ack,
            DhcpMessageType::Nak,
        ] {
            let mut msg = bytes(&client_repr(t, MAC_A));
            msg[0] = 1;
            assert_eq!(server.handle(MAC_A, &msg), None);
        }

        // Multicast, broadcast and zero chaddr.
        for bad in [
            EthernetAddress::BROADCAST,
            EthernetAddress([0x01, 0, 0x5e, 0, 0, 1]),
            EthernetAddress([0; 6]),
        ] {
            assert_eq!(server.handle(bad, &discover(bad)), None);
        }

        // Huge payload: the valid message followed by a lot of trailing garbage still parses
        // (options stop at END); a huge garbage blob does not.
        let mut huge = good.clone();
        huge.resize(65_507, 0xab);
        assert!(server.handle(MAC_A, &huge).is_some());
        assert_eq!(server.handle(MAC_A, &vec![0xab; 65_507]), None);

        assert_eq!(server.handle(MAC_A, &[]), None);
        assert_eq!(server.lease(MAC_A), Some(ip(10, 0, 2, 15)));
        assert_eq!(server.slots.iter().filter(|s| **s != Slot::Free).count(), 1);
    }

    #[test]
    fn fuzz_never_panics() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut server = DhcpServer::new(NetConfig::default());

        // Every truncation of valid messages of each type.
        let mut requested = client_repr(DhcpMessageType::Request, MAC_A);
        requested.requested_ip = Some(ip(10, 0, 2, 15));
        let valid = [
            discover(MAC_A),
            bytes(&requested),
            renew(MAC_A, ip(10, 0, 2, 15)),
            release(MAC_A, ip(10, 0, 2, 15)),
        ];
        for msg in &valid {
            for len in 0..=msg.len() {
                let _ = server.handle(MAC_A, &msg[..len]);
            }
        }

        // Pure noise of random lengths, and valid headers with random bytes from offset 236
        // (so the cookie is sometimes right and the options are garbage).
        for round in 0..4000 {
            let len = (next() % 700) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 1 && len > 240 {
                let template = &valid[round % valid.len()];
                buf[..236].copy_from_slice(&template[..236]);
                if round % 4 == 1 {
                    buf[236..240].copy_from_slice(&[0x63, 0x82, 0x53, 0x63]);
                }
            }
            let src = EthernetAddress([0x02, 0, 0, 0, 0, next() as u8]);
            if let Some(reply) = server.handle(src, &buf) {
                // Whatever was answered is itself a well-formed reply.
                let packet = DhcpPacket::new_checked(&reply.payload[..]).unwrap();
                assert_eq!(packet.opcode(), DhcpOpCode::Reply);
                DhcpRepr::parse(&packet).unwrap();
            }
            assert_eq!(server.slots.len(), 16);
        }

        // Mutations of a valid message: flip a few random bytes.
        for _ in 0..2000 {
            let mut msg = valid[(next() % 4) as usize].clone();
            for _ in 0..(next() % 8 + 1) {
                let at = (next() as usize) % msg.len();
                msg[at] = next() as u8;
            }
            let _ = server.handle(MAC_B, &msg);
        }
        assert_eq!(server.slots.len(), 16);
    }
}
