//! The DNS wire format of the hot path: a small, allocation-free query
//! parser and a response writer.
//!
//! Why not hickory-proto's `Message` decoder here: on the UDP fast path
//! every query would allocate (the question list, the additional records,
//! the OPT option list, which hickory 0.26 collects one byte at a time into
//! a `Vec`), and the decoded types lose what RFC 7871 asks a server to
//! check: hickory's `ClientSubnet` decoder accepts an option whose length
//! disagrees with its SOURCE PREFIX-LENGTH, a source prefix longer than the
//! family allows (up to 39 bits for IPv4), address bits set beyond the
//! prefix, and it silently drops the whole option list when one option is
//! cut short. This parser reads the one shape a query has (header, one
//! question, optional OPT), validates ECS on the raw bytes and allocates
//! nothing. hickory-proto remains the reference: the tests, the TCP path
//! (hickory-server) and the fuzz target decode every response we write with
//! it. `benches/dns.rs` measures both parsers side by side.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(crate) const HEADER_LEN: usize = 12;
/// Longest name on the wire (RFC 1035 §2.3.4).
pub(crate) const MAX_NAME: usize = 255;

pub(crate) const TYPE_A: u16 = 1;
pub(crate) const TYPE_NS: u16 = 2;
pub(crate) const TYPE_SOA: u16 = 6;
pub(crate) const TYPE_TXT: u16 = 16;
pub(crate) const TYPE_AAAA: u16 = 28;
pub(crate) const TYPE_OPT: u16 = 41;
pub(crate) const TYPE_HTTPS: u16 = 65;
pub(crate) const CLASS_IN: u16 = 1;
const OPTION_ECS: u16 = 8;

pub(crate) const RCODE_NOERROR: u16 = 0;
pub(crate) const RCODE_FORMERR: u16 = 1;
pub(crate) const RCODE_NXDOMAIN: u16 = 3;
pub(crate) const RCODE_NOTIMP: u16 = 4;
pub(crate) const RCODE_REFUSED: u16 = 5;
pub(crate) const RCODE_BADVERS: u16 = 16;

pub(crate) const FLAG_QR: u16 = 0x8000;
pub(crate) const FLAG_AA: u16 = 0x0400;
pub(crate) const FLAG_TC: u16 = 0x0200;
pub(crate) const FLAG_RD: u16 = 0x0100;
pub(crate) const FLAG_CD: u16 = 0x0010;

/// The EDNS UDP payload size this server advertises (DNS flag day 2020).
pub(crate) const OUR_PAYLOAD: u16 = 1232;

/// An EDNS Client Subnet option as received (RFC 7871 §6), validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ecs {
    /// The address with every bit beyond `source` zero.
    pub(crate) addr: IpAddr,
    pub(crate) source: u8,
}

/// The OPT record of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Edns {
    pub(crate) payload: u16,
    pub(crate) version: u8,
    pub(crate) dnssec_ok: bool,
    pub(crate) ecs: EcsState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EcsState {
    Absent,
    Valid(Ecs),
    /// Present but breaking RFC 7871 §6 (answered with FORMERR).
    Invalid,
}

/// The parts of a query the answer needs. Borrowed from the packet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Query<'a> {
    pub(crate) id: u16,
    pub(crate) flags: u16,
    /// The question (name, type, class) exactly as received.
    pub(crate) question: &'a [u8],
    pub(crate) qtype: u16,
    pub(crate) qclass: u16,
    pub(crate) edns: Option<Edns>,
}

impl Query<'_> {
    pub(crate) fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }
    /// The question name on the wire (uncompressed, as received).
    pub(crate) fn qname(&self) -> &[u8] {
        &self.question[..self.question.len() - 4]
    }
}

/// Why a packet could not be read as a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// Shorter than a header, or a response: not answered at all.
    Ignore,
    /// Answered with FORMERR; the header (and the question, if it could be
    /// read) are echoed.
    Malformed { question: Option<(usize, usize)> },
}

/// Reads a query. Never panics, never allocates.
pub(crate) fn parse(packet: &[u8]) -> Result<Query<'_>, ParseError> {
    if packet.len() < HEADER_LEN {
        return Err(ParseError::Ignore);
    }
    let flags = be16(packet, 2);
    if flags & FLAG_QR != 0 {
        return Err(ParseError::Ignore);
    }
    let qdcount = be16(packet, 4);
    let ancount = be16(packet, 6);
    let nscount = be16(packet, 8);
    let arcount = be16(packet, 10);
    let bad = ParseError::Malformed { question: None };
    if qdcount != 1 {
        return Err(bad);
    }
    let name_end = skip_question_name(packet, HEADER_LEN).ok_or(bad)?;
    let qend = name_end + 4;
    if qend > packet.len() {
        return Err(bad);
    }
    let bad = ParseError::Malformed {
        question: Some((HEADER_LEN, qend)),
    };
    let mut pos = qend;
    for _ in 0..(ancount as usize + nscount as usize) {
        pos = skip_rr(packet, pos).ok_or(bad)?.next;
    }
    let mut edns = None;
    for _ in 0..arcount {
        let rr = skip_rr(packet, pos).ok_or(bad)?;
        if rr.rtype == TYPE_OPT {
            // Exactly one OPT, owned by the root (RFC 6891 §6.1.1).
            if edns.is_some() || rr.name_len != 1 {
                return Err(bad);
            }
            edns = Some(read_opt(packet, &rr).ok_or(bad)?);
        }
        pos = rr.next;
    }
    if pos != packet.len() {
        // Trailing bytes after the last record.
        return Err(bad);
    }
    Ok(Query {
        id: be16(packet, 0),
        flags,
        question: &packet[HEADER_LEN..qend],
        qtype: be16(packet, name_end),
        qclass: be16(packet, name_end + 2),
        edns,
    })
}

/// Lower-cases a wire name into `out`; returns its length.
pub(crate) fn lower_name(name: &[u8], out: &mut [u8; MAX_NAME]) -> usize {
    let n = name.len().min(MAX_NAME);
    for (o, b) in out.iter_mut().zip(&name[..n]) {
        *o = b.to_ascii_lowercase();
    }
    n
}

/// Offsets of the labels of an uncompressed wire name (the root excluded).
/// Returns how many were written to `out`.
pub(crate) fn label_offsets(name: &[u8], out: &mut [usize; 128]) -> usize {
    let mut pos = 0;
    let mut n = 0;
    while pos < name.len() && name[pos] != 0 && n < out.len() {
        out[n] = pos;
        n += 1;
        pos += 1 + name[pos] as usize;
    }
    n
}

/// A name in the wire format from dotted text (`"ns-fra.fn.test."`).
pub(crate) fn name_from_text(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    for label in text
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        let l = &label.as_bytes()[..label.len().min(63)];
        out.push(l.len() as u8);
        out.extend(l.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

/// Appends DNS records to a response.
pub(crate) struct Writer<'a> {
    pub(crate) buf: &'a mut Vec<u8>,
}

impl Writer<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// A compression pointer to an earlier name at `offset`.
    pub(crate) fn pointer(&mut self, offset: usize) {
        self.u16(0xc000 | (offset as u16 & 0x3fff));
    }
    /// Owner, type, class IN, TTL; returns the position of RDLENGTH, to
    /// be patched by `end_rdata`.
    pub(crate) fn rr_start_ptr(&mut self, owner: usize, rtype: u16, ttl: u32) -> usize {
        self.pointer(owner);
        self.rr_fixed(rtype, ttl)
    }
    pub(crate) fn rr_fixed(&mut self, rtype: u16, ttl: u32) -> usize {
        self.u16(rtype);
        self.u16(CLASS_IN);
        self.u32(ttl);
        let at = self.buf.len();
        self.u16(0);
        at
    }
    pub(crate) fn end_rdata(&mut self, at: usize) {
        let len = (self.buf.len() - at - 2) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_be_bytes());
    }
    /// A character-string (RFC 1035 §3.3), cut at 255 bytes.
    pub(crate) fn char_string(&mut self, s: &[u8]) {
        let s = &s[..s.len().min(255)];
        self.u8(s.len() as u8);
        self.bytes(s);
    }
    /// The OPT record of a response: our payload size, the extended rcode,
    /// the DO bit echoed, ECS echoed with `scope`.
    pub(crate) fn opt(&mut self, rcode: u16, dnssec_ok: bool, ecs: Option<(Ecs, u8)>) {
        self.u8(0);
        self.u16(TYPE_OPT);
        self.u16(OUR_PAYLOAD);
        let ttl = (u32::from(rcode >> 4) << 24) | if dnssec_ok { 0x8000 } else { 0 };
        self.u32(ttl);
        let at = self.buf.len();
        self.u16(0);
        if let Some((ecs, scope)) = ecs {
            let n = usize::from(ecs.source).div_ceil(8);
            self.u16(OPTION_ECS);
            self.u16(4 + n as u16);
            self.u16(if ecs.addr.is_ipv4() { 1 } else { 2 });
            self.u8(ecs.source);
            self.u8(scope);
            match ecs.addr {
                IpAddr::V4(a) => self.bytes(&a.octets()[..n]),
                IpAddr::V6(a) => self.bytes(&a.octets()[..n]),
            }
        }
        self.end_rdata(at);
    }
}

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Sets the four header counts.
pub(crate) fn set_counts(buf: &mut [u8], qd: u16, an: u16, ns: u16, ar: u16) {
    buf[4..6].copy_from_slice(&qd.to_be_bytes());
    buf[6..8].copy_from_slice(&an.to_be_bytes());
    buf[8..10].copy_from_slice(&ns.to_be_bytes());
    buf[10..12].copy_from_slice(&ar.to_be_bytes());
}

/// The question name: labels only, no compression (nothing precedes it
/// that a pointer could name). Returns the offset after the root label.
fn skip_question_name(p: &[u8], mut pos: usize) -> Option<usize> {
    let start = pos;
    loop {
        let len = *p.get(pos)? as usize;
        if len == 0 {
            pos += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        pos += 1 + len;
        if pos - start >= MAX_NAME {
            return None;
        }
    }
    (pos <= p.len()).then_some(pos)
}

/// Skips a possibly compressed name in a record; pointers end it. Returns
/// the offset after it and its length on the wire.
fn skip_name(p: &[u8], mut pos: usize) -> Option<usize> {
    let start = pos;
    loop {
        let len = *p.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            1..=63 => {
                pos += 1 + len as usize;
                if pos - start >= MAX_NAME {
                    return None;
                }
            }
            0xc0..=0xff => {
                let _ = p.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
    }
}

struct Rr {
    name_len: usize,
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata: (usize, usize),
    next: usize,
}

fn skip_rr(p: &[u8], pos: usize) -> Option<Rr> {
    let after_name = skip_name(p, pos)?;
    let fixed = p.get(after_name..after_name + 10)?;
    let rdlen = be16(fixed, 8) as usize;
    let rdata = after_name + 10;
    let next = rdata + rdlen;
    if next > p.len() {
        return None;
    }
    Some(Rr {
        name_len: after_name - pos,
        rtype: be16(fixed, 0),
        class: be16(fixed, 2),
        ttl: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        rdata: (rdata, next),
        next,
    })
}

fn read_opt(p: &[u8], rr: &Rr) -> Option<Edns> {
    let mut ecs = EcsState::Absent;
    let (mut pos, end) = rr.rdata;
    while pos < end {
        if pos + 4 > end {
            return None;
        }
        let code = be16(p, pos);
        let len = be16(p, pos + 2) as usize;
        let data = p.get(pos + 4..pos + 4 + len)?;
        if pos + 4 + len > end {
            return None;
        }
        if code == OPTION_ECS {
            ecs = match ecs {
                // More than one ECS option cannot be answered sensibly.
                EcsState::Absent => read_ecs(data).map_or(EcsState::Invalid, EcsState::Valid),
                _ => EcsState::Invalid,
            };
        }
        pos += 4 + len;
    }
    Some(Edns {
        payload: rr.class,
        version: (rr.ttl >> 16) as u8,
        dnssec_ok: rr.ttl & 0x8000 != 0,
        ecs,
    })
}

/// RFC 7871 §6: FAMILY 1 or 2, SOURCE PREFIX-LENGTH within the family,
/// SCOPE PREFIX-LENGTH 0 in queries, exactly ceil(SOURCE/8) address octets,
/// and no address bit set beyond SOURCE.
fn read_ecs(d: &[u8]) -> Option<Ecs> {
    if d.len() < 4 {
        return None;
    }
    let family = be16(d, 0);
    let source = d[2];
    let scope = d[3];
    let addr = &d[4..];
    let max = match family {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    if source > max || scope != 0 || addr.len() != usize::from(source).div_ceil(8) {
        return None;
    }
    if let Some(&last) = addr.last() {
        let used = source % 8;
        if used != 0 && last & (0xffu8 >> used) != 0 {
            return None;
        }
    }
    let addr = if family == 1 {
        let mut o = [0u8; 4];
        o[..addr.len()].copy_from_slice(addr);
        IpAddr::V4(Ipv4Addr::from(o))
    } else {
        let mut o = [0u8; 16];
        o[..addr.len()].copy_from_slice(addr);
        IpAddr::V6(Ipv6Addr::from(o))
    };
    Some(Ecs { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16, opt: Option<&[u8]>) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        p.extend(name_from_text(name));
        p.extend(qtype.to_be_bytes());
        p.extend(CLASS_IN.to_be_bytes());
        if let Some(options) = opt {
            p[11] = 1;
            p.extend([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
            p.extend((options.len() as u16).to_be_bytes());
            p.extend(options);
        }
        p
    }

    fn ecs_option(family: u16, source: u8, scope: u8, addr: &[u8]) -> Vec<u8> {
        let mut o = vec![0, 8];
        o.extend(((4 + addr.len()) as u16).to_be_bytes());
        o.extend(family.to_be_bytes());
        o.push(source);
        o.push(scope);
        o.extend(addr);
        o
    }

    #[test]
    fn reads_a_plain_query() {
        let p = query("Resize.FN.test.", TYPE_A, None);
        let q = parse(&p).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.qtype, TYPE_A);
        assert_eq!(q.qclass, CLASS_IN);
        assert_eq!(q.edns, None);
        assert_eq!(q.qname(), &name_from_text("Resize.FN.test")[..]);
        let mut low = [0; MAX_NAME];
        let n = lower_name(q.qname(), &mut low);
        assert_eq!(&low[..n], &name_from_text("resize.fn.test")[..]);
    }

    #[test]
    fn reads_ecs() {
        let p = query(
            "a.fn.test",
            TYPE_A,
            Some(&ecs_option(1, 24, 0, &[198, 51, 100])),
        );
        let e = parse(&p).unwrap().edns.unwrap();
        assert_eq!(e.payload, 1232);
        assert_eq!(
            e.ecs,
            EcsState::Valid(Ecs {
                addr: "198.51.100.0".parse().unwrap(),
                source: 24
            })
        );
    }

    #[test]
    fn rejects_bad_ecs() {
        for opt in [
            ecs_option(1, 33, 0, &[1, 2, 3, 4, 5]), // longer than IPv4
            ecs_option(1, 24, 0, &[1, 2, 3, 4]),    // too many octets
            ecs_option(1, 24, 0, &[1, 2]),          // too few octets
            ecs_option(1, 23, 0, &[1, 2, 3]),       // bit beyond the prefix
            ecs_option(3, 8, 0, &[1]),              // unknown family
            ecs_option(1, 8, 8, &[1]),              // scope set in a query
            ecs_option(2, 129, 0, &[0; 17]),        // longer than IPv6
        ] {
            let p = query("a.fn.test", TYPE_A, Some(&opt));
            let e = parse(&p).unwrap().edns.unwrap();
            assert_eq!(e.ecs, EcsState::Invalid, "{opt:?}");
        }
        let zero = ecs_option(1, 0, 0, &[]);
        let p = query("a.fn.test", TYPE_A, Some(&zero));
        assert!(matches!(
            parse(&p).unwrap().edns.unwrap().ecs,
            EcsState::Valid(Ecs { source: 0, .. })
        ));
    }

    #[test]
    fn malformed_packets() {
        assert_eq!(parse(&[0; 5]).unwrap_err(), ParseError::Ignore);
        let mut p = query("a.fn.test", TYPE_A, None);
        p.truncate(p.len() - 1);
        assert!(matches!(parse(&p), Err(ParseError::Malformed { .. })));
        let mut p = query("a.fn.test", TYPE_A, None);
        p.push(0);
        assert!(matches!(
            parse(&p),
            Err(ParseError::Malformed { question: Some(_) })
        ));
        let mut p = query("a.fn.test", TYPE_A, None);
        p[2] |= 0x80;
        assert_eq!(parse(&p).unwrap_err(), ParseError::Ignore);
    }
}
