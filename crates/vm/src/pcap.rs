//! Reading the capture QEMU's `-object filter-dump` writes: classic pcap
//! (microsecond or nanosecond timestamps, either byte order), Ethernet link
//! type. The parser never panics: a bad header is an error, a truncated last
//! record (QEMU may be writing it right now) ends the capture, and a frame
//! that is not what we look for is skipped.

use std::net::Ipv4Addr;

use crate::qemu::MacAddr;

const LINKTYPE_ETHERNET: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PcapError {
    #[error("pcap: {len} bytes is too short for the 24-byte file header")]
    TooShort { len: usize },
    #[error(
        "pcap: bad magic number {magic:#010x} (not a classic pcap file; pcapng is not supported)"
    )]
    BadMagic { magic: u32 },
    #[error("pcap: link type {linktype} is not Ethernet (1)")]
    LinkType { linktype: u32 },
}

/// One DHCP (BOOTP) message seen on the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct DhcpPacket {
    /// Capture timestamp, seconds since the Unix epoch.
    pub time_s: f64,
    /// DHCP option 53: 1 DISCOVER, 2 OFFER, 3 REQUEST, 4 DECLINE, 5 ACK, 6 NAK, 7 RELEASE, 8 INFORM.
    pub message_type: u8,
    /// `chaddr`: the client the message is about.
    pub client_mac: MacAddr,
    /// `yiaddr`: the address offered or acknowledged (0.0.0.0 from clients).
    pub your_ip: Ipv4Addr,
    /// Sent by the server (UDP source port 67 / BOOTREPLY).
    pub from_server: bool,
}

impl DhcpPacket {
    /// "DISCOVER", "ACK", ... or "type N".
    pub fn type_name(&self) -> String {
        match self.message_type {
            1 => "DISCOVER".into(),
            2 => "OFFER".into(),
            3 => "REQUEST".into(),
            4 => "DECLINE".into(),
            5 => "ACK".into(),
            6 => "NAK".into(),
            7 => "RELEASE".into(),
            8 => "INFORM".into(),
            n => format!("type {n}"),
        }
    }
}

/// One captured frame.
#[derive(Clone, Debug)]
pub struct Frame<'a> {
    pub time_s: f64,
    pub data: &'a [u8],
}

struct Header {
    big_endian: bool,
    nanos: bool,
}

fn parse_header(pcap: &[u8]) -> Result<Header, PcapError> {
    if pcap.len() < 24 {
        return Err(PcapError::TooShort { len: pcap.len() });
    }
    let magic_le = u32::from_le_bytes([pcap[0], pcap[1], pcap[2], pcap[3]]);
    let (big_endian, nanos) = match magic_le {
        0xa1b2_c3d4 => (false, false),
        0xa1b2_3c4d => (false, true),
        0xd4c3_b2a1 => (true, false),
        0x4d3c_b2a1 => (true, true),
        magic => return Err(PcapError::BadMagic { magic }),
    };
    let h = Header { big_endian, nanos };
    let linktype = h.u32_at(pcap, 20).unwrap_or(0) & 0x0fff_ffff;
    if linktype != LINKTYPE_ETHERNET {
        return Err(PcapError::LinkType { linktype });
    }
    Ok(h)
}

impl Header {
    fn u32_at(&self, b: &[u8], off: usize) -> Option<u32> {
        let s: [u8; 4] = b.get(off..off.checked_add(4)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(s)
        } else {
            u32::from_le_bytes(s)
        })
    }
}

/// All frames of a capture, in order. A truncated final record is dropped.
pub fn frames(pcap: &[u8]) -> Result<Vec<Frame<'_>>, PcapError> {
    let h = parse_header(pcap)?;
    let mut out = Vec::new();
    let mut off = 24usize;
    while let (Some(sec), Some(frac), Some(incl)) = (
        h.u32_at(pcap, off),
        h.u32_at(pcap, off + 4),
        h.u32_at(pcap, off + 8),
    ) {
        let start = off + 16;
        let Some(end) = start.checked_add(incl as usize) else {
            break;
        };
        let Some(data) = pcap.get(start..end) else {
            break; // truncated record
        };
        let div = if h.nanos { 1e9 } else { 1e6 };
        out.push(Frame {
            time_s: f64::from(sec) + f64::from(frac) / div,
            data,
        });
        off = end;
    }
    Ok(out)
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn mac_at(b: &[u8], off: usize) -> Option<MacAddr> {
    Some(MacAddr(b.get(off..off + 6)?.try_into().ok()?))
}

/// Source MAC of an Ethernet frame.
fn source_mac(frame: &[u8]) -> Option<MacAddr> {
    mac_at(frame, 6)
}

fn parse_dhcp(time_s: f64, frame: &[u8]) -> Option<DhcpPacket> {
    // Ethernet II, optionally one 802.1Q tag.
    let mut l3 = 14usize;
    let mut ethertype = be16(frame, 12)?;
    if ethertype == 0x8100 {
        ethertype = be16(frame, 16)?;
        l3 = 18;
    }
    if ethertype != 0x0800 {
        return None;
    }
    let ip = frame.get(l3..)?;
    let first = *ip.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 || *ip.get(9)? != 17 {
        return None; // not UDP
    }
    // Skip non-first fragments.
    if be16(ip, 6)? & 0x1fff != 0 {
        return None;
    }
    let udp = ip.get(ihl..)?;
    let sport = be16(udp, 0)?;
    let dport = be16(udp, 2)?;
    let ports_ok = matches!((sport, dport), (68, 67) | (67, 68) | (67, 67));
    if !ports_ok {
        return None;
    }
    let bootp = udp.get(8..)?;
    let op = *bootp.first()?;
    let yi: [u8; 4] = bootp.get(16..20)?.try_into().ok()?;
    let chaddr = mac_at(bootp, 28)?;
    if bootp.get(236..240)? != [0x63, 0x82, 0x53, 0x63] {
        return None; // plain BOOTP, no DHCP options
    }
    let mut i = 240usize;
    let mut message_type = None;
    while let Some(&code) = bootp.get(i) {
        match code {
            0 => i += 1,
            255 => break,
            _ => {
                let len = usize::from(*bootp.get(i + 1)?);
                let val = bootp.get(i + 2..i + 2 + len)?;
                if code == 53 && len >= 1 {
                    message_type = Some(val[0]);
                    break;
                }
                i += 2 + len;
            }
        }
    }
    Some(DhcpPacket {
        time_s,
        message_type: message_type?,
        client_mac: chaddr,
        your_ip: Ipv4Addr::from(yi),
        from_server: sport == 67 || op == 2,
    })
}

/// Every DHCP message in the capture, in order.
pub fn dhcp_packets(pcap: &[u8]) -> Result<Vec<DhcpPacket>, PcapError> {
    Ok(frames(pcap)?
        .iter()
        .filter_map(|f| parse_dhcp(f.time_s, f.data))
        .collect())
}

/// How many frames had `mac` as their Ethernet source address.
pub fn frames_from(pcap: &[u8], mac: &MacAddr) -> Result<usize, PcapError> {
    Ok(frames(pcap)?
        .iter()
        .filter(|f| source_mac(f.data).as_ref() == Some(mac))
        .count())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const GUEST: MacAddr = MacAddr([0xfa, 0x16, 0x3e, 0x12, 0xab, 0xcd]);
    const SLIRP: MacAddr = MacAddr([0x52, 0x55, 0x0a, 0x00, 0x02, 0x02]);

    fn checksum(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for c in data.chunks(2) {
            let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            sum += u32::from(w);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// An Ethernet/IPv4/UDP/DHCP frame as a real client or slirp sends it.
    pub(crate) fn dhcp_frame(msg_type: u8, from_server: bool, yiaddr: [u8; 4]) -> Vec<u8> {
        let mut bootp = vec![0u8; 240];
        bootp[0] = if from_server { 2 } else { 1 };
        bootp[1] = 1;
        bootp[2] = 6;
        bootp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        bootp[16..20].copy_from_slice(&yiaddr);
        bootp[28..34].copy_from_slice(&GUEST.0);
        bootp[236..240].copy_from_slice(&[0x63, 0x82, 0x53, 0x63]);
        bootp.extend_from_slice(&[53, 1, msg_type]);
        if from_server {
            bootp.extend_from_slice(&[54, 4, 10, 0, 2, 2, 51, 4, 0, 1, 0x51, 0x80]);
        } else {
            bootp.extend_from_slice(&[12, 6]);
            bootp.extend_from_slice(b"ibkit1");
        }
        bootp.push(255);
        let (sport, dport) = if from_server {
            (67u16, 68u16)
        } else {
            (68, 67)
        };
        let mut udp = Vec::new();
        udp.extend_from_slice(&sport.to_be_bytes());
        udp.extend_from_slice(&dport.to_be_bytes());
        udp.extend_from_slice(&((8 + bootp.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&bootp);
        let (src, dst) = if from_server {
            ([10, 0, 2, 2], [255, 255, 255, 255])
        } else {
            ([0, 0, 0, 0], [255, 255, 255, 255])
        };
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        ip[2..4].copy_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut eth = Vec::new();
        if from_server {
            eth.extend_from_slice(&[0xff; 6]);
            eth.extend_from_slice(&SLIRP.0);
        } else {
            eth.extend_from_slice(&[0xff; 6]);
            eth.extend_from_slice(&GUEST.0);
        }
        eth.extend_from_slice(&[0x08, 0x00]);
        eth.extend_from_slice(&ip);
        eth.extend_from_slice(&udp);
        eth
    }

    pub(crate) fn pcap_file(frames: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(&0i32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&65535u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        for (sec, usec, data) in frames {
            out.extend_from_slice(&sec.to_le_bytes());
            out.extend_from_slice(&usec.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    fn capture() -> Vec<u8> {
        // An ARP frame from the guest in between, which must be skipped.
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&GUEST.0);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0u8; 28]);
        pcap_file(&[
            (1_700_000_000, 100_000, dhcp_frame(1, false, [0; 4])),
            (1_700_000_000, 200_000, dhcp_frame(2, true, [10, 0, 2, 15])),
            (1_700_000_000, 300_000, arp),
            (1_700_000_001, 0, dhcp_frame(3, false, [0; 4])),
            (1_700_000_001, 500_000, dhcp_frame(5, true, [10, 0, 2, 15])),
        ])
    }

    #[test]
    fn dora_is_parsed() {
        let pcap = capture();
        let p = dhcp_packets(&pcap).expect("valid pcap");
        let types: Vec<u8> = p.iter().map(|d| d.message_type).collect();
        assert_eq!(types, [1, 2, 3, 5]);
        assert!(p.iter().all(|d| d.client_mac == GUEST));
        assert_eq!(
            p.iter().map(|d| d.from_server).collect::<Vec<_>>(),
            [false, true, false, true]
        );
        assert_eq!(p[3].your_ip, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(p[3].type_name(), "ACK");
        assert!((p[3].time_s - 1_700_000_001.5).abs() < 1e-6);
        assert_eq!(frames_from(&pcap, &GUEST), Ok(3));
        assert_eq!(frames_from(&pcap, &SLIRP), Ok(2));
    }

    #[test]
    fn nanosecond_and_big_endian_headers() {
        let mut be = Vec::new();
        be.extend_from_slice(&0xa1b2_3c4du32.to_be_bytes());
        be.extend_from_slice(&[0, 2, 0, 4]);
        be.extend_from_slice(&[0; 8]);
        be.extend_from_slice(&65535u32.to_be_bytes());
        be.extend_from_slice(&1u32.to_be_bytes());
        let f = dhcp_frame(5, true, [10, 0, 2, 15]);
        be.extend_from_slice(&10u32.to_be_bytes());
        be.extend_from_slice(&500_000_000u32.to_be_bytes());
        be.extend_from_slice(&(f.len() as u32).to_be_bytes());
        be.extend_from_slice(&(f.len() as u32).to_be_bytes());
        be.extend_from_slice(&f);
        let p = dhcp_packets(&be).expect("big-endian ns pcap");
        assert_eq!(p.len(), 1);
        assert!((p[0].time_s - 10.5).abs() < 1e-9);
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        assert!(matches!(dhcp_packets(b""), Err(PcapError::TooShort { .. })));
        assert!(matches!(
            dhcp_packets(&[0x55; 100]),
            Err(PcapError::BadMagic { .. })
        ));
        let mut wrong_link = capture();
        wrong_link[20] = 113;
        assert!(matches!(
            dhcp_packets(&wrong_link),
            Err(PcapError::LinkType { linktype: 113 })
        ));
        let full = capture();
        // Every prefix parses without panic; complete records survive.
        for len in 0..full.len() {
            let _ = dhcp_packets(&full[..len]);
            let _ = frames_from(&full[..len], &GUEST);
        }
        // Mutate every byte of the records (keeping the header) in turn.
        let mut rng_state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            let mut m = full.clone();
            for _ in 0..8 {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                let i = 24 + (rng_state as usize) % (m.len() - 24);
                m[i] = (rng_state >> 32) as u8;
            }
            let _ = dhcp_packets(&m);
        }
        // A huge incl_len must not allocate or panic.
        let mut huge = full[..24].to_vec();
        huge.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0]);
        assert_eq!(dhcp_packets(&huge), Ok(vec![]));
        // Truncated last record: earlier ones are kept.
        let cut = &full[..full.len() - 10];
        assert_eq!(dhcp_packets(cut).expect("truncated").len(), 3);
    }
}
