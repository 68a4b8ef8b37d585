//! From query bytes to response bytes: the one function every transport,
//! the fuzz target and the benches call.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::placement::{self, Class};

use super::decide::{self, Decision, DecisionCache, Key};
use super::wire::{self, EcsState, Query, Writer};
use super::{DnsState, Transport};

/// TTL of the apex NS records and their glue: they change only with the
/// topology file.
const NS_TTL: u32 = 3600;
/// Largest answer over UDP, whatever the client's EDNS buffer: RFC 9715
/// recommends at most 1400 bytes so that responses are never fragmented;
/// larger answers are truncated and the client retries over TCP.
pub(crate) const MAX_UDP: usize = 1400;

/// Writes the response to `packet` into `out` (cleared first). Returns
/// false when nothing must be sent (runts, responses).
pub(crate) fn respond(
    state: &DnsState,
    cache: Option<&mut DecisionCache>,
    packet: &[u8],
    src: IpAddr,
    transport: Transport,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    let q = match wire::parse(packet) {
        Ok(q) => q,
        Err(wire::ParseError::Ignore) => return false,
        Err(wire::ParseError::Malformed { question }) => {
            formerr(packet, question, out);
            state.stats.count_query(0, wire::RCODE_FORMERR);
            return true;
        }
    };
    let max = match transport {
        Transport::Udp => q
            .edns
            .map_or(512, |e| usize::from(e.payload).clamp(512, MAX_UDP)),
        Transport::Tcp => usize::from(u16::MAX),
    };
    let mut r = Response::start(&q, out);
    build(state, cache, &q, src, &mut r);
    state.stats.count_query(q.qtype, r.rcode);
    r.finish(max);
    true
}

/// An empty truncated answer to `packet` (rate-limit "slip"): the client
/// retries over TCP. False when the packet is not a readable query.
pub(crate) fn truncated(packet: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let Ok(q) = wire::parse(packet) else {
        return false;
    };
    let mut r = Response::start(&q, out);
    r.flags |= wire::FLAG_TC;
    r.opt(None);
    r.finish(usize::MAX);
    true
}

fn build(
    state: &DnsState,
    cache: Option<&mut DecisionCache>,
    q: &Query<'_>,
    src: IpAddr,
    r: &mut Response<'_>,
) {
    if q.opcode() != 0 {
        r.rcode = wire::RCODE_NOTIMP;
        r.authoritative = false;
        return r.opt(None);
    }
    let Some(edns) = q.edns.as_ref() else {
        return in_zone(state, cache, q, src, None, r);
    };
    if edns.version != 0 {
        r.rcode = wire::RCODE_BADVERS;
        r.authoritative = false;
        return r.opt(None);
    }
    match edns.ecs {
        EcsState::Invalid => {
            r.rcode = wire::RCODE_FORMERR;
            r.authoritative = false;
            r.opt(None)
        }
        EcsState::Valid(ecs) => in_zone(state, cache, q, src, Some(ecs), r),
        EcsState::Absent => in_zone(state, cache, q, src, None, r),
    }
}

fn in_zone(
    state: &DnsState,
    cache: Option<&mut DecisionCache>,
    q: &Query<'_>,
    src: IpAddr,
    ecs: Option<wire::Ecs>,
    r: &mut Response<'_>,
) {
    // Until a location-dependent answer says otherwise, the answer is the
    // same for every client: scope 0.
    r.ecs = ecs.map(|e| (e, 0));
    let qname = q.qname();
    let mut lower = [0u8; wire::MAX_NAME];
    let n = wire::lower_name(qname, &mut lower);
    let name = &lower[..n];
    let zone = &state.zone_wire[..];
    let mut offsets = [0usize; 128];
    let labels = wire::label_offsets(name, &mut offsets);
    // The zone must be a whole-label suffix of the name.
    let at_label = |pos: usize| pos == 0 || offsets[..labels].contains(&pos);
    let in_zone = q.qclass == wire::CLASS_IN
        && name.len() >= zone.len()
        && name.ends_with(zone)
        && at_label(name.len() - zone.len());
    if !in_zone {
        r.rcode = wire::RCODE_REFUSED;
        r.authoritative = false;
        return r.opt(None);
    }
    r.zone_at = wire::HEADER_LEN + name.len() - zone.len();
    let relative = labels - state.zone_labels;
    match relative {
        0 => apex(state, q.qtype, r),
        1 => {
            let label = &name[1..usize::from(name[0]) + 1];
            if let Some(&f) = state.functions.get(label) {
                function(state, cache, q, src, ecs, f, r);
            } else if let Some(&edge) = state.ns_names.get(label) {
                match q.qtype {
                    wire::TYPE_A | wire::TYPE_AAAA => {
                        r.glue(state, edge, q.qtype, Section::Answer, wire::HEADER_LEN)
                    }
                    _ => {}
                }
                r.negative(state, false);
            } else {
                r.negative(state, true);
            }
        }
        _ => r.negative(state, true),
    }
    r.opt(None);
}

fn apex(state: &DnsState, qtype: u16, r: &mut Response<'_>) {
    match qtype {
        wire::TYPE_SOA => r.soa(state, Section::Answer),
        wire::TYPE_NS => {
            let zone = r.zone_at;
            let mut at = [0usize; 1024];
            for (edge, slot) in state.topology.edges.iter().enumerate().zip(at.iter_mut()) {
                if edge.1.retired {
                    continue;
                }
                let len = r.w().rr_start_ptr(zone, wire::TYPE_NS, NS_TTL);
                *slot = r.out.len();
                let label = &state.ns_labels[edge.0];
                r.w().u8(label.len() as u8);
                r.w().bytes(label);
                r.w().pointer(zone);
                r.w().end_rdata(len);
                r.an += 1;
            }
            for (edge, &owner) in at.iter().take(state.topology.edges.len()).enumerate() {
                if state.topology.edges.get(edge).is_none_or(|e| e.retired) {
                    continue;
                }
                r.glue(state, edge, wire::TYPE_A, Section::Additional, owner);
                r.glue(state, edge, wire::TYPE_AAAA, Section::Additional, owner);
            }
        }
        _ => {}
    }
    r.negative(state, false);
}

#[allow(clippy::too_many_arguments)]
fn function(
    state: &DnsState,
    cache: Option<&mut DecisionCache>,
    q: &Query<'_>,
    src: IpAddr,
    ecs: Option<wire::Ecs>,
    f: usize,
    r: &mut Response<'_>,
) {
    let qtype = q.qtype;
    if !matches!(
        qtype,
        wire::TYPE_A | wire::TYPE_AAAA | wire::TYPE_HTTPS | wire::TYPE_TXT
    ) {
        return r.negative(state, false);
    }
    // The client: the ECS subnet when given (a /0 subnet asks for no
    // tailoring: the resolver's own address is used and the scope is 0).
    let src = canonical(src);
    let (addr, prefix, with_ecs) = match ecs {
        Some(e) if e.source > 0 => (e.addr, e.source, true),
        Some(_) => (src, full_bits(src), false),
        None => (src, full_bits(src), false),
    };
    let view = state.view.load();
    let hosts = &state.topology.functions[f].edges;
    let n = state.topology.dns.answers;
    let (bits, a) = decide::to_bits(addr);
    let key = Key {
        function: f as u32,
        addr: a,
        v6: bits == 128,
        prefix,
        ecs: with_ecs,
        view_generation: view.generation,
        geo_generation: state.geo.generation(),
    };
    let make = || {
        let geo = state.geo.lookup(addr);
        let choice = decide::choose(&view, hosts, &geo, placement::client_draw(addr), n);
        let scope = if !with_ecs {
            0
        } else if ecs_is_mapped(addr) {
            // An IPv4-mapped subnet sent as IPv6: the database answers in
            // IPv4 terms; translate without widening (a drawn answer holds
            // for its client /24 at most).
            let v4 = if choice.drawn {
                geo.prefix_len.max(decide::spread_prefix(32))
            } else {
                geo.prefix_len
            };
            (96 + v4).min(128)
        } else {
            decide::scope(&state.geo, &view, hosts, n, addr, geo.prefix_len, &choice)
        };
        Decision { choice, scope }
    };
    let d = match cache {
        Some(c) => c.get_or_insert(key, make),
        None => make(),
    };
    if d.choice.fallback {
        state.stats.count_fallback();
    }
    if let Some(best) = d.choice.edges().next() {
        state.stats.count_answer(f, best);
    }
    if let Some((_, scope)) = r.ecs.as_mut() {
        *scope = d.scope;
    }
    let ttl = state.topology.dns.ttl;
    match qtype {
        wire::TYPE_A | wire::TYPE_AAAA => {
            for edge in d.choice.edges() {
                r.glue_ttl(state, edge, qtype, Section::Answer, wire::HEADER_LEN, ttl);
            }
        }
        wire::TYPE_HTTPS => {
            for (i, edge) in d.choice.edges().enumerate() {
                r.https(state, edge, i as u16 + 1, ttl);
            }
        }
        _ => {
            let text = explain(state, &view, hosts, addr, prefix, with_ecs, &d);
            r.txt(&text);
        }
    }
    r.negative(state, false);
}

/// The TXT explanation: one string per line.
fn explain(
    state: &DnsState,
    view: &placement::View,
    hosts: &[usize],
    addr: IpAddr,
    prefix: u8,
    ecs: bool,
    d: &Decision,
) -> Vec<String> {
    let geo = state.geo.lookup(addr);
    let ranking = placement::rank_client(view, hosts, geo.location, placement::client_draw(addr));
    let mut lines = Vec::new();
    let mut s = format!(
        "client {addr}/{prefix} ({}) at {:.2},{:.2}",
        if ecs { "ecs" } else { "source address" },
        geo.location.lat,
        geo.location.lon
    );
    if geo.known {
        let _ = write!(
            s,
            " {} database network /{}",
            geo.country_str().unwrap_or("??"),
            geo.prefix_len
        );
    } else {
        let _ = write!(s, " not in database: default location");
    }
    if ecs {
        let _ = write!(s, "; ecs scope /{}", d.scope);
    }
    lines.push(s);
    let chosen: Vec<usize> = d.choice.edges().collect();
    let worst_chosen = ranking
        .candidates
        .iter()
        .filter(|c| chosen.contains(&c.edge))
        .map(|c| c.class)
        .max()
        .unwrap_or(Class::Preferred);
    let name_of = |edge: usize| {
        state
            .topology
            .edges
            .get(edge)
            .map_or("?", |e| e.name.as_str())
    };
    let window = &ranking.candidates[..ranking.spread.min(ranking.candidates.len())];
    for c in &ranking.candidates {
        let name = name_of(c.edge);
        let verdict = if chosen.contains(&c.edge) {
            "chosen".to_string()
        } else if window.iter().any(|w| w.edge == c.edge) {
            "lost (spread: drawn for other client networks)".to_string()
        } else if c.class > worst_chosen {
            format!("lost ({})", c.class.as_str())
        } else {
            "lost (farther)".to_string()
        };
        lines.push(format!(
            "{name} {verdict}: {:.0} km, load {:.2}, {}",
            c.distance_km,
            c.load,
            c.class.as_str()
        ));
    }
    if d.choice.fallback {
        lines.push("fallback: no healthy candidate, serving the nearest anyway".into());
    }
    if ranking.drawn() {
        let (net, len) = placement::client_network(addr);
        let names: Vec<&str> = window.iter().map(|c| name_of(c.edge)).collect();
        lines.push(format!(
            "spread: the nearest edge is not viable; client network {net}/{len} drawn by capacity among {}",
            names.join(", ")
        ));
    } else if let (1, Some(first)) = (ranking.spread, ranking.candidates.first()) {
        lines.push(format!(
            "spread: the nearest edge is not viable; no edge is near-equal to {}",
            name_of(first.edge)
        ));
    }
    lines
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn ecs_is_mapped(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

fn full_bits(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// FORMERR for a packet that could not be read: the header's id and
/// opcode, and the question when it was readable.
fn formerr(packet: &[u8], question: Option<(usize, usize)>, out: &mut Vec<u8>) {
    let flags = wire::be16(packet, 2);
    out.extend_from_slice(&packet[..2]);
    let f = wire::FLAG_QR | (flags & (0x7800 | wire::FLAG_RD | wire::FLAG_CD)) | 1;
    out.extend_from_slice(&f.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    let qd = match question {
        Some((a, b)) => {
            out.extend_from_slice(&packet[a..b]);
            1
        }
        None => 0,
    };
    wire::set_counts(out, qd, 0, 0, 0);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Answer,
    Authority,
    Additional,
}

/// A response being written: header, question, then records in section
/// order (callers write the answer, then authority, then additional).
struct Response<'a> {
    out: &'a mut Vec<u8>,
    flags: u16,
    rcode: u16,
    authoritative: bool,
    edns: Option<wire::Edns>,
    /// ECS to echo, with its scope.
    ecs: Option<(wire::Ecs, u8)>,
    /// Offset of the zone's name inside the question (for pointers).
    zone_at: usize,
    question_end: usize,
    an: u16,
    ns: u16,
    ar: u16,
    opt_written: bool,
}

impl<'a> Response<'a> {
    fn start(q: &Query<'_>, out: &'a mut Vec<u8>) -> Self {
        out.extend_from_slice(&q.id.to_be_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(q.question);
        let flags = wire::FLAG_QR | (q.flags & (0x7800 | wire::FLAG_RD | wire::FLAG_CD));
        let question_end = out.len();
        Self {
            out,
            flags,
            rcode: wire::RCODE_NOERROR,
            authoritative: true,
            edns: q.edns,
            ecs: None,
            zone_at: wire::HEADER_LEN,
            question_end,
            an: 0,
            ns: 0,
            ar: 0,
            opt_written: false,
        }
    }

    fn w(&mut self) -> Writer<'_> {
        Writer { buf: self.out }
    }

    fn count(&mut self, s: Section) {
        match s {
            Section::Answer => self.an += 1,
            Section::Authority => self.ns += 1,
            Section::Additional => self.ar += 1,
        }
    }

    /// NXDOMAIN (`nxdomain`) or, when the answer section is empty, NODATA:
    /// the SOA in the authority section.
    fn negative(&mut self, state: &DnsState, nxdomain: bool) {
        if nxdomain {
            self.rcode = wire::RCODE_NXDOMAIN;
        }
        if nxdomain || self.an == 0 {
            self.soa(state, Section::Authority);
        }
    }

    fn soa(&mut self, state: &DnsState, section: Section) {
        let zone = self.zone_at;
        let ttl = state.topology.dns.ttl;
        let mut w = self.w();
        let len = w.rr_start_ptr(zone, wire::TYPE_SOA, ttl);
        let own = &state.ns_labels[state.edge];
        w.u8(own.len() as u8);
        w.bytes(own);
        w.pointer(zone);
        w.char_string(b"hostmaster");
        w.pointer(zone);
        w.u32(state.topology.dns.serial);
        w.u32(3600); // refresh
        w.u32(600); // retry
        w.u32(1_209_600); // expire
        w.u32(ttl); // negative caching TTL
        w.end_rdata(len);
        self.count(section);
    }

    fn glue(&mut self, state: &DnsState, edge: usize, qtype: u16, s: Section, owner: usize) {
        self.glue_ttl(state, edge, qtype, s, owner, NS_TTL);
    }

    /// The edge's addresses of the family of `qtype`, owned by the name at
    /// `owner`.
    fn glue_ttl(
        &mut self,
        state: &DnsState,
        edge: usize,
        qtype: u16,
        s: Section,
        owner: usize,
        ttl: u32,
    ) {
        let (v4, v6) = (&state.v4[edge], &state.v6[edge]);
        if qtype == wire::TYPE_A {
            for a in v4 {
                let len = self.w().rr_start_ptr(owner, wire::TYPE_A, ttl);
                self.w().bytes(&a.octets());
                self.w().end_rdata(len);
                self.count(s);
            }
        } else {
            for a in v6 {
                let len = self.w().rr_start_ptr(owner, wire::TYPE_AAAA, ttl);
                self.w().bytes(&a.octets());
                self.w().end_rdata(len);
                self.count(s);
            }
        }
    }

    /// RFC 9460 HTTPS: `priority` 1.., target "." (the owner itself),
    /// alpn=h3 (`h3,h2` when the edge also serves HTTPS over TCP on the
    /// same port: one port key covers both), the edge's QUIC port and its
    /// addresses as hints.
    fn https(&mut self, state: &DnsState, edge: usize, priority: u16, ttl: u32) {
        let e = &state.topology.edges[edge];
        let port = e.quic_listen.port();
        let h2 = e.tcp_listen.is_some_and(|t| t.port() == port);
        let (v4, v6) = (&state.v4[edge], &state.v6[edge]);
        let mut w = self.w();
        let len = w.rr_start_ptr(wire::HEADER_LEN, wire::TYPE_HTTPS, ttl);
        w.u16(priority);
        w.u8(0);
        // SvcParams in increasing key order (RFC 9460 §2.2).
        w.u16(1); // alpn
        if h2 {
            w.u16(6);
            w.char_string(b"h3");
            w.char_string(b"h2");
        } else {
            w.u16(3);
            w.char_string(b"h3");
        }
        w.u16(3); // port
        w.u16(2);
        w.u16(port);
        if !v4.is_empty() {
            w.u16(4); // ipv4hint
            w.u16(4 * v4.len() as u16);
            for a in v4 {
                w.bytes(&a.octets());
            }
        }
        if !v6.is_empty() {
            w.u16(6); // ipv6hint
            w.u16(16 * v6.len() as u16);
            for a in v6 {
                w.bytes(&a.octets());
            }
        }
        w.end_rdata(len);
        self.an += 1;
    }

    fn txt(&mut self, lines: &[String]) {
        let mut w = self.w();
        let len = w.rr_start_ptr(wire::HEADER_LEN, wire::TYPE_TXT, 0);
        for l in lines {
            w.char_string(l.as_bytes());
        }
        w.end_rdata(len);
        self.an += 1;
    }

    /// The OPT record, when the query had one; `ecs` overrides the echo.
    fn opt(&mut self, ecs: Option<(wire::Ecs, u8)>) {
        let Some(edns) = self.edns else { return };
        if self.opt_written {
            return;
        }
        let ecs = ecs.or(self.ecs);
        // BADVERS and FORMERR answers carry no ECS echo.
        let ecs = if self.rcode == wire::RCODE_BADVERS || self.rcode == wire::RCODE_FORMERR {
            None
        } else {
            ecs
        };
        let rcode = self.rcode;
        self.w().opt(rcode, edns.dnssec_ok, ecs);
        self.ar += 1;
        self.opt_written = true;
    }

    /// Header flags and counts; truncates to an empty TC answer when the
    /// response is larger than `max`.
    fn finish(mut self, max: usize) {
        if self.out.len() > max {
            self.out.truncate(self.question_end);
            self.flags |= wire::FLAG_TC;
            self.an = 0;
            self.ns = 0;
            self.ar = 0;
            self.opt_written = false;
            self.opt(None);
        }
        let mut flags = self.flags | (self.rcode & 0xf);
        if self.authoritative {
            flags |= wire::FLAG_AA;
        }
        self.out[2..4].copy_from_slice(&flags.to_be_bytes());
        let (an, ns, ar) = (self.an, self.ns, self.ar);
        wire::set_counts(self.out, 1, an, ns, ar);
    }
}
