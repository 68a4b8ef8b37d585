//! DNS front door over real sockets on loopback, with
//! `edge-config/three-edges.toml` (listen ports rewritten to 0 so tests
//! run in parallel and next to a running server). Queries are built and
//! responses decoded with hickory-proto, and `dig` checks us too.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fnroute::config::Topology;

use crate::topo::TopoEdit;
use fnroute::dns::{self, DnsState};
use fnroute::geo::GeoDb;
use fnroute::mesh::LiveView;
use fnroute::placement::EdgeState;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::rdata::svcb::{SvcParamKey, SvcParamValue};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

const FRA: &str = "127.0.0.11";
const NYC: &str = "127.0.0.12";
const SIN: &str = "127.0.0.13";

struct Server {
    addr: SocketAddr,
    /// DNS over QUIC, when the topology has `doq_listen`.
    doq: Option<SocketAddr>,
    topology: Arc<Topology>,
    view: Arc<LiveView>,
    state: Arc<DnsState>,
    token: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// `three-edges.toml` with its DNS on port 0 and two UDP sockets, edited
/// by `tweak`, validated as `fnroute serve` validates it.
fn topology(tweak: impl FnOnce(&mut TopoEdit)) -> Topology {
    let mut t = TopoEdit::open("edge-config/three-edges.toml");
    t.edges(|_, e| {
        let quic = e["quic_listen"].as_str().expect("quic_listen").to_string();
        let ip = quic.rsplit_once(':').expect("IP:PORT").0;
        e.insert("dns_listen".into(), format!("{ip}:0").into());
    })
    .set("dns.udp_sockets", 2);
    tweak(&mut t);
    t.load()
}

async fn start_with(edge: &str, tweak: impl FnOnce(&mut TopoEdit)) -> Server {
    serve(topology(tweak), edge).await
}

/// Serves DNS for `edge` of `t` (its `dns_listen`, port 0 in tests).
async fn serve(t: Topology, edge: &str) -> Server {
    let t = Arc::new(t);
    let geo = Arc::new(GeoDb::open(&t.geo_db, t.default_location).expect("geo db"));
    let view = Arc::new(LiveView::new(t.clone()));
    let state = DnsState::new(t.edge_id(edge).expect("edge"), t.clone(), geo, view.clone());
    let bound = dns::bind_state(Arc::new(state)).await.expect("bind");
    let addr = bound.local_addr();
    let doq = bound.doq_addr();
    let state = bound.state().clone();
    let token = CancellationToken::new();
    tokio::spawn(bound.serve(token.clone()));
    Server {
        addr,
        doq,
        topology: t,
        view,
        state,
        token,
    }
}

/// `fra` with `n` addresses 127.0.`net`.1..n (answers of many records).
async fn fra_with_addresses(n: u8, net: u8) -> Server {
    start_with("fra", |t| {
        t.edge("fra", |e| {
            let addresses: Vec<toml::Value> =
                (1..=n).map(|i| format!("127.0.{net}.{i}").into()).collect();
            e.insert("addresses".into(), addresses.into());
        });
    })
    .await
}

async fn start() -> Server {
    start_with("fra", |_| {}).await
}

fn query(name: &str, rtype: RecordType, ecs: Option<&str>) -> Message {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(net) = ecs {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        let subnet: ClientSubnet = net.parse().unwrap();
        edns.options_mut().insert(EdnsOption::Subnet(subnet));
        m.set_edns(edns);
    }
    m
}

async fn udp_raw(addr: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(bytes, addr).await.unwrap();
    let mut buf = vec![0; 65535];
    match tokio::time::timeout(Duration::from_millis(700), sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn udp(addr: SocketAddr, m: &Message) -> Message {
    let bytes = udp_raw(addr, &m.to_vec().unwrap())
        .await
        .expect("a UDP answer");
    Message::from_vec(&bytes).expect("the answer decodes")
}

async fn tcp_raw(addr: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    let read = async {
        s.read_exact(&mut len).await.ok()?;
        let mut buf = vec![0; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).await.ok()?;
        Some(buf)
    };
    tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .ok()
        .flatten()
}

async fn tcp(addr: SocketAddr, m: &Message) -> Message {
    let bytes = tcp_raw(addr, &m.to_vec().unwrap())
        .await
        .expect("a TCP answer");
    Message::from_vec(&bytes).expect("the answer decodes")
}

fn addresses(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn ecs_of(m: &Message) -> Option<ClientSubnet> {
    match m
        .edns
        .as_ref()?
        .option(hickory_proto::rr::rdata::opt::EdnsCode::Subnet)?
    {
        EdnsOption::Subnet(s) => Some(*s),
        _ => None,
    }
}

fn has_soa_authority(m: &Message) -> bool {
    m.authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA && r.name.to_ascii() == "fn.test.")
}

/// The address of `net` (an ECS "a.b.c.d/len") with `bit` flipped.
fn flip(net: &str, bit: u8) -> String {
    let (ip, len) = net.split_once('/').unwrap();
    match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => {
            let v = u32::from(a) ^ (1 << (31 - bit));
            format!("{}/{len}", std::net::Ipv4Addr::from(v))
        }
        IpAddr::V6(a) => {
            let v = u128::from(a) ^ (1 << (127 - bit));
            format!("{}/{len}", std::net::Ipv6Addr::from(v))
        }
    }
}

#[tokio::test]
async fn ecs_sample_prefixes_get_the_nearest_edge_and_a_true_scope() {
    let s = start().await;
    for (net, edge, db_prefix) in [
        ("198.51.100.0/24", FRA, 24), // Paris
        ("192.0.2.0/24", NYC, 24),    // Boston
        ("203.0.113.0/24", SIN, 24),  // Jakarta
        ("2001:db8::/32", SIN, 32),   // Tokyo
    ] {
        let r = udp(s.addr, &query("echo.fn.test.", RecordType::A, Some(net))).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{net}");
        assert!(r.metadata.authoritative, "{net}");
        assert!(!r.metadata.recursion_available, "{net}");
        assert_eq!(addresses(&r), vec![edge.to_string()], "{net}");
        assert_eq!(r.answers[0].ttl, 20);
        let ecs = ecs_of(&r).unwrap_or_else(|| panic!("{net}: ECS echoed"));
        let (ip, len) = net.split_once('/').unwrap();
        assert_eq!(ecs.addr(), ip.parse::<IpAddr>().unwrap(), "{net}");
        assert_eq!(ecs.source_prefix().to_string(), len, "{net}");
        let scope = ecs.scope_prefix();
        // At least the database network that decided...
        assert!(scope <= db_prefix, "{net}: scope /{scope}");
        // ... and true: every subnet inside the scope gets the same answer.
        for bit in scope..db_prefix.min(scope + 6) {
            let other = flip(net, bit);
            let r = udp(s.addr, &query("echo.fn.test.", RecordType::A, Some(&other))).await;
            assert_eq!(
                addresses(&r),
                vec![edge.to_string()],
                "{other} inside {net}/{scope}"
            );
        }
        // ... and not wider than it is true: flipping the bit just above the
        // scope changes the answer (when the scope is not /0).
        if scope > 0 {
            let other = flip(net, scope - 1);
            let r = udp(s.addr, &query("echo.fn.test.", RecordType::A, Some(&other))).await;
            assert_ne!(
                addresses(&r),
                vec![edge.to_string()],
                "{other} outside /{scope}"
            );
        }
    }
    // Boston, Jakarta, Tokyo sit next to unmapped space (default location:
    // Frankfurt), so their scope is exactly the database network.
    let r = udp(
        s.addr,
        &query("echo.fn.test.", RecordType::A, Some("192.0.2.0/24")),
    )
    .await;
    assert_eq!(ecs_of(&r).unwrap().scope_prefix(), 24);
    // Paris's neighbours are unmapped and default to Frankfurt as well, so
    // the answer holds for a wider prefix (gdnsd-style).
    let r = udp(
        s.addr,
        &query("echo.fn.test.", RecordType::A, Some("198.51.100.0/24")),
    )
    .await;
    assert!(ecs_of(&r).unwrap().scope_prefix() < 24);
}

#[tokio::test]
async fn ecs_wider_and_narrower_than_the_database() {
    let s = start().await;
    // A /32 inside Boston's /24: answered for the /24 (scope shorter than
    // the source).
    let r = udp(
        s.addr,
        &query("echo.fn.test.", RecordType::A, Some("192.0.2.7/32")),
    )
    .await;
    assert_eq!(addresses(&r), vec![NYC]);
    assert_eq!(ecs_of(&r).unwrap().scope_prefix(), 24);
    // A /16 around Boston: the lookup of 192.0.0.0 is unmapped (default,
    // fra), and the /24 inside differs: the scope must be longer than 16.
    let r = udp(
        s.addr,
        &query("echo.fn.test.", RecordType::A, Some("192.0.0.0/16")),
    )
    .await;
    assert_eq!(addresses(&r), vec![FRA]);
    assert!(ecs_of(&r).unwrap().scope_prefix() > 16);
    // Source /0: no tailoring asked, scope 0.
    let r = udp(
        s.addr,
        &query("echo.fn.test.", RecordType::A, Some("0.0.0.0/0")),
    )
    .await;
    assert_eq!(ecs_of(&r).unwrap().scope_prefix(), 0);
    assert_eq!(addresses(&r).len(), 1);
}

#[tokio::test]
async fn without_ecs_the_source_address_decides() {
    let s = start().await;
    // Loopback is not in the database: the default location (Frankfurt).
    let r = udp(s.addr, &query("echo.fn.test.", RecordType::A, None)).await;
    assert_eq!(addresses(&r), vec![FRA]);
    assert!(r.edns.is_none());
}

#[tokio::test]
async fn function_on_nyc_and_sin_sends_paris_to_nyc() {
    let s = start().await;
    let r = udp(
        s.addr,
        &query("resize.fn.test.", RecordType::A, Some("198.51.100.0/24")),
    )
    .await;
    assert_eq!(addresses(&r), vec![NYC]);
    let r = udp(
        s.addr,
        &query("hello.fn.test.", RecordType::A, Some("198.51.100.0/24")),
    )
    .await;
    assert_eq!(addresses(&r), vec![SIN]);
}

#[tokio::test]
async fn unhealthy_or_overloaded_edges_are_skipped() {
    let s = start().await;
    let paris = || query("echo.fn.test.", RecordType::A, Some("198.51.100.0/24"));
    assert_eq!(addresses(&udp(s.addr, &paris()).await), vec![FRA]);
    let fra = s.topology.edge_id("fra").unwrap();
    s.view.update(|v| {
        v.with_edge(
            fra,
            EdgeState {
                healthy: false,
                draining: false,
                load: 0.0,
            },
        )
    });
    assert_eq!(addresses(&udp(s.addr, &paris()).await), vec![NYC]);
    // Displaced, but sin (10 700 km) is not near-equal to nyc (5 840 km):
    // nothing to spread over.
    let text = txt(s.addr, "echo.fn.test.", "198.51.100.0/24").await;
    assert!(
        text.contains("no edge is near-equal to nyc") && !text.contains("drawn"),
        "{text}"
    );
    s.view.update(|v| {
        v.with_edge(
            fra,
            EdgeState {
                healthy: true,
                draining: false,
                load: 0.95,
            },
        )
    });
    assert_eq!(addresses(&udp(s.addr, &paris()).await), vec![NYC]);
    s.view.update(|v| v.with_edge(fra, EdgeState::default()));
    assert_eq!(addresses(&udp(s.addr, &paris()).await), vec![FRA]);
}

#[tokio::test]
async fn all_unhealthy_serves_the_nearest_and_counts_it() {
    let s = start().await;
    s.view.update(|v| {
        let mut v = v.clone();
        for e in &mut v.edges {
            e.healthy = false;
        }
        v
    });
    let before = s.state.stats.fallback();
    let r = udp(
        s.addr,
        &query("echo.fn.test.", RecordType::A, Some("192.0.2.0/24")),
    )
    .await;
    assert_eq!(addresses(&r), vec![NYC]);
    assert_eq!(s.state.stats.fallback(), before + 1);
}

#[tokio::test]
async fn names_are_case_insensitive_and_the_question_is_echoed() {
    let s = start().await;
    let r = udp(
        s.addr,
        &query("EcHo.Fn.TeSt.", RecordType::A, Some("203.0.113.0/24")),
    )
    .await;
    assert_eq!(addresses(&r), vec![SIN]);
    assert_eq!(r.queries[0].name.to_ascii(), "EcHo.Fn.TeSt.");
}

#[tokio::test]
async fn apex_soa_and_ns_with_glue() {
    let s = start().await;
    let r = udp(s.addr, &query("fn.test.", RecordType::SOA, None)).await;
    assert_eq!(r.answers.len(), 1);
    match &r.answers[0].data {
        RData::SOA(soa) => {
            assert_eq!(soa.mname.to_ascii(), "ns-fra.fn.test.");
            assert_eq!(soa.rname.to_ascii(), "hostmaster.fn.test.");
        }
        other => panic!("not a SOA: {other:?}"),
    }
    let r = udp(s.addr, &query("fn.test.", RecordType::NS, None)).await;
    let mut ns: Vec<String> = r
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::NS(n) => Some(n.0.to_ascii()),
            _ => None,
        })
        .collect();
    ns.sort();
    assert_eq!(
        ns,
        ["ns-fra.fn.test.", "ns-nyc.fn.test.", "ns-sin.fn.test."]
    );
    let glue: Vec<String> = r
        .additionals
        .iter()
        .map(|r| format!("{} {}", r.name.to_ascii(), r.data))
        .collect();
    assert!(
        glue.contains(&"ns-nyc.fn.test. 127.0.0.12".to_string()),
        "{glue:?}"
    );
    let r = udp(s.addr, &query("NS-SIN.fn.test.", RecordType::A, None)).await;
    assert_eq!(addresses(&r), vec![SIN]);
}

#[tokio::test]
async fn nxdomain_nodata_refused_notimp() {
    let s = start().await;
    for name in ["nope.fn.test.", "x.echo.fn.test."] {
        let r = udp(s.addr, &query(name, RecordType::A, None)).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(r.metadata.authoritative);
        assert!(has_soa_authority(&r), "{name}: SOA in authority");
    }
    // NODATA: no IPv6 address on the chosen edge, and other types.
    for rtype in [RecordType::AAAA, RecordType::MX, RecordType::SVCB] {
        let r = udp(s.addr, &query("echo.fn.test.", rtype, None)).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{rtype}");
        assert!(r.answers.is_empty(), "{rtype}");
        assert!(has_soa_authority(&r), "{rtype}");
    }
    let r = udp(s.addr, &query("fn.test.", RecordType::A, None)).await;
    assert!(r.answers.is_empty() && has_soa_authority(&r));
    // Outside the zone, and a name that only ends like it.
    for name in ["example.com.", "xfn.test.", "test."] {
        let r = udp(s.addr, &query(name, RecordType::A, None)).await;
        assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{name}");
        assert!(!r.metadata.authoritative);
        assert!(r.answers.is_empty() && r.authorities.is_empty());
    }
    // Recursion is never offered, even when desired.
    let mut m = query("example.com.", RecordType::A, None);
    m.metadata.recursion_desired = true;
    let r = udp(s.addr, &m).await;
    assert!(r.metadata.recursion_desired && !r.metadata.recursion_available);
    // Opcodes other than QUERY.
    let mut m = query("echo.fn.test.", RecordType::A, None);
    m.metadata.op_code = OpCode::Status;
    let r = udp(s.addr, &m).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
}

/// A raw query for echo.fn.test A with one OPT carrying `options`, EDNS
/// version `version`.
fn raw_query(version: u8, options: &[u8]) -> Vec<u8> {
    let mut p = vec![0xab, 0xcd, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    p.extend(b"\x04echo\x02fn\x04test\x00\x00\x01\x00\x01");
    p.extend([0, 0, 41, 0x04, 0xd0, 0, version, 0, 0]);
    p.extend((options.len() as u16).to_be_bytes());
    p.extend(options);
    p
}

fn ecs_option(family: u16, source: u8, scope: u8, addr: &[u8]) -> Vec<u8> {
    let mut o = vec![0, 8];
    o.extend(((4 + addr.len()) as u16).to_be_bytes());
    o.extend(family.to_be_bytes());
    o.extend([source, scope]);
    o.extend(addr);
    o
}

#[tokio::test]
async fn invalid_ecs_is_formerr_and_edns_version_1_is_badvers() {
    let s = start().await;
    for (why, opt) in [
        (
            "prefix longer than IPv4",
            ecs_option(1, 33, 0, &[1, 2, 3, 4, 5]),
        ),
        (
            "too many address octets",
            ecs_option(1, 24, 0, &[198, 51, 100, 7]),
        ),
        (
            "bits beyond the prefix",
            ecs_option(1, 23, 0, &[198, 51, 101]),
        ),
        ("unknown family", ecs_option(7, 24, 0, &[198, 51, 100])),
        (
            "scope set in a query",
            ecs_option(1, 24, 24, &[198, 51, 100]),
        ),
    ] {
        let bytes = udp_raw(s.addr, &raw_query(0, &opt)).await.expect(why);
        assert_eq!(bytes[3] & 0xf, 1, "{why}: FORMERR");
        assert_eq!(&bytes[..2], &[0xab, 0xcd], "{why}");
    }
    let good = ecs_option(1, 24, 0, &[198, 51, 100]);
    let r = Message::from_vec(&udp_raw(s.addr, &raw_query(0, &good)).await.unwrap()).unwrap();
    assert_eq!(addresses(&r), vec![FRA]);
    let r = Message::from_vec(&udp_raw(s.addr, &raw_query(1, &good)).await.unwrap()).unwrap();
    // 16 is BADVERS in an OPT-carrying response (hickory names it BADSIG).
    assert_eq!(u16::from(r.metadata.response_code), 16);
    assert_eq!(r.edns.as_ref().unwrap().version(), 0);
    assert!(r.answers.is_empty());
}

#[tokio::test]
async fn malformed_packets_get_formerr_or_silence_and_the_server_lives_on() {
    let s = start().await;
    // Shorter than a header: silence.
    assert_eq!(udp_raw(s.addr, &[1, 2, 3]).await, None);
    // A response: silence (no reflection).
    let mut m = query("echo.fn.test.", RecordType::A, None)
        .to_vec()
        .unwrap();
    m[2] |= 0x80;
    assert_eq!(udp_raw(s.addr, &m).await, None);
    // Cut short, garbage after the question, a label too long, two
    // questions: FORMERR.
    let good = query("echo.fn.test.", RecordType::A, None)
        .to_vec()
        .unwrap();
    let mut cut = good.clone();
    cut.truncate(good.len() - 3);
    let mut trailing = good.clone();
    trailing.extend([1, 2, 3]);
    let mut long_label = good[..12].to_vec();
    long_label.push(64);
    long_label.extend([b'a'; 64]);
    long_label.extend([0, 0, 1, 0, 1]);
    let mut two = good.clone();
    two[5] = 2;
    for (why, p) in [
        ("cut", cut),
        ("trailing", trailing),
        ("label", long_label),
        ("two questions", two),
    ] {
        let r = udp_raw(s.addr, &p)
            .await
            .unwrap_or_else(|| panic!("{why}: answered"));
        assert_eq!(r[3] & 0xf, 1, "{why}: FORMERR");
        assert!(Message::from_vec(&r).is_ok(), "{why}: decodes");
    }
    let r = udp(s.addr, &query("echo.fn.test.", RecordType::A, None)).await;
    assert_eq!(addresses(&r), vec![FRA]);
}

#[tokio::test]
async fn truncation_when_the_answer_does_not_fit() {
    // fra with 40 addresses: 40 A records do not fit in 512 bytes.
    let s = fra_with_addresses(40, 1).await;
    let m = query("upper.fn.test.", RecordType::A, None);
    let r = udp(s.addr, &m).await;
    assert!(r.metadata.truncation, "TC without EDNS");
    assert!(r.answers.is_empty());
    // With an EDNS buffer of 1232 it fits.
    let r = udp(
        s.addr,
        &query("upper.fn.test.", RecordType::A, Some("198.51.100.0/24")),
    )
    .await;
    assert!(!r.metadata.truncation);
    assert_eq!(addresses(&r).len(), 40);
    // Over TCP it always fits.
    let r = tcp(s.addr, &m).await;
    assert!(!r.metadata.truncation);
    assert_eq!(addresses(&r).len(), 40);
}

#[tokio::test]
async fn udp_answers_never_exceed_1400_bytes() {
    // RFC 9715: whatever buffer the client offers, a UDP answer stays within
    // 1400 bytes (sent with don't-fragment); 100 A records (~1.6 KB) are
    // truncated even for a 4096-byte EDNS buffer, and TCP carries them.
    let s = fra_with_addresses(100, 2).await;
    let mut m = query("upper.fn.test.", RecordType::A, None);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    m.set_edns(edns);
    let bytes = udp_raw(s.addr, &m.to_vec().unwrap())
        .await
        .expect("a UDP answer");
    assert!(bytes.len() <= 1400, "{} bytes over UDP", bytes.len());
    let r = Message::from_vec(&bytes).unwrap();
    assert!(r.metadata.truncation, "TC for an answer over 1400 bytes");
    let r = tcp(s.addr, &m).await;
    assert!(!r.metadata.truncation);
    assert_eq!(addresses(&r).len(), 100);
    // 60 records (~1 KB) fit in one datagram.
    let s = fra_with_addresses(60, 2).await;
    let r = udp(s.addr, &m).await;
    assert!(!r.metadata.truncation);
    assert_eq!(addresses(&r).len(), 60);
}

/// A UDP port that another `SO_REUSEPORT` group of the same user holds is
/// refused, not joined: joined, the two servers would split the queries.
/// (Seen as a flaky test when a port-0 TCP bind handed out a port whose UDP
/// side another test's server already had.)
#[tokio::test]
async fn a_dns_udp_port_in_use_is_refused_not_shared() {
    use std::os::fd::AsRawFd;
    let other = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option of the right size.
    let r = unsafe {
        libc::setsockopt(
            other.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_REUSEPORT");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    other.bind(&any.into()).unwrap();
    let held = other.local_addr().unwrap().as_socket().unwrap();
    // Its TCP side is free, so only the UDP bind can notice.
    let t = Arc::new(topology(|t| {
        t.edge("fra", |e| {
            e.insert("dns_listen".into(), held.to_string().into());
        });
    }));
    let geo = Arc::new(GeoDb::open(&t.geo_db, t.default_location).expect("geo db"));
    let view = Arc::new(LiveView::new(t.clone()));
    let state = DnsState::new(t.edge_id("fra").expect("edge"), t.clone(), geo, view);
    let err = match dns::bind_state(Arc::new(state)).await {
        Ok(_) => panic!("bound {held} although its UDP port is in use"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains(&format!("binding DNS UDP on {held}")), "{err}");
    assert!(err.to_lowercase().contains("in use"), "{err}");
}

/// One query over DNS over QUIC (RFC 9250): a stream per query, a 2-byte
/// length prefix, message ID 0; the server's certificate is trusted from
/// `ca` (the development certificate) for the name `localhost`.
async fn doq(addr: SocketAddr, ca: &Path, m: &Message) -> Message {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"doq".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint
        .connect(addr, "localhost")
        .unwrap()
        .await
        .expect("DoQ handshake");
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut m = m.clone();
    m.metadata.id = 0;
    let bytes = m.to_vec().unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    send.write_all(&framed).await.unwrap();
    send.finish().unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(65537))
        .await
        .expect("a DoQ answer in time")
        .unwrap();
    let len = u16::from_be_bytes([reply[0], reply[1]]) as usize;
    assert_eq!(len, reply.len() - 2, "one length-prefixed message");
    let r = Message::from_vec(&reply[2..]).expect("the answer decodes");
    conn.close(0u32.into(), b"");
    r
}

#[tokio::test]
async fn dns_over_quic_answers_like_udp() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with("fra", |t| {
        t.set("state_dir", dir.path().display().to_string())
            .edge("fra", |e| {
                e.insert("doq_listen".into(), "127.0.0.1:0".into());
            });
    })
    .await;
    let addr = s.doq.expect("doq_listen bound");
    let ca = dir.path().join("dev-cert.pem");
    // ECS decides as over UDP: Paris gets fra, Jakarta sin.
    for (net, want) in [("198.51.100.0/24", FRA), ("203.0.113.0/24", SIN)] {
        let m = query("echo.fn.test.", RecordType::A, Some(net));
        let over_quic = doq(addr, &ca, &m).await;
        assert_eq!(over_quic.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&over_quic), vec![want], "{net} over DoQ");
        assert_eq!(
            addresses(&udp(s.addr, &m).await),
            vec![want],
            "{net} over UDP"
        );
    }
    // Errors too: a name outside the zone is refused.
    let r = doq(addr, &ca, &query("example.org.", RecordType::A, None)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn txt_explains_the_decision() {
    let s = start().await;
    let r = udp(
        s.addr,
        &query("resize.fn.test.", RecordType::TXT, Some("198.51.100.0/24")),
    )
    .await;
    let lines: Vec<String> = r
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    let text = lines.join("\n");
    assert!(text.contains("198.51.100.0/24 (ecs)"), "{text}");
    assert!(text.contains("FR database network /24"), "{text}");
    assert!(text.contains("nyc chosen"), "{text}");
    assert!(text.contains("sin lost (farther)"), "{text}");
    assert!(!text.contains("fra"), "fra does not host resize: {text}");
}

#[tokio::test]
async fn https_record_points_at_the_quic_port() {
    let s = start().await;
    let r = udp(
        s.addr,
        &query("echo.fn.test.", RecordType::HTTPS, Some("192.0.2.0/24")),
    )
    .await;
    assert_eq!(r.answers.len(), 1);
    let RData::HTTPS(h) = &r.answers[0].data else {
        panic!("not HTTPS: {:?}", r.answers[0]);
    };
    assert_eq!(h.0.svc_priority, 1);
    assert!(h.0.target_name.is_root());
    let params: Vec<String> =
        h.0.svc_params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
    let find = |key: SvcParamKey| {
        h.0.svc_params
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    };
    match find(SvcParamKey::Alpn) {
        // nyc serves HTTPS over TCP on its QUIC port too.
        Some(SvcParamValue::Alpn(a)) => assert_eq!(a.0, ["h3", "h2"]),
        other => panic!("alpn: {other:?} in {params:?}"),
    }
    match find(SvcParamKey::Port) {
        Some(SvcParamValue::Port(p)) => assert_eq!(p, 4433),
        other => panic!("port: {other:?} in {params:?}"),
    }
    match find(SvcParamKey::Ipv4Hint) {
        Some(SvcParamValue::Ipv4Hint(h)) => {
            assert_eq!(
                h.0.iter().map(|a| a.0.to_string()).collect::<Vec<_>>(),
                [NYC]
            )
        }
        other => panic!("ipv4hint: {other:?} in {params:?}"),
    }
    assert_eq!(ecs_of(&r).unwrap().scope_prefix(), 24);
    // Without tcp_listen, HTTP/3 only.
    let s = start_with("fra", |t| {
        t.edge("nyc", |e| {
            e.remove("tcp_listen");
        });
    })
    .await;
    let r = udp(
        s.addr,
        &query("echo.fn.test.", RecordType::HTTPS, Some("192.0.2.0/24")),
    )
    .await;
    let RData::HTTPS(h) = &r.answers[0].data else {
        panic!("not HTTPS: {:?}", r.answers[0]);
    };
    let alpn = h.0.svc_params.iter().find_map(|(_, v)| match v {
        SvcParamValue::Alpn(a) => Some(a.0.clone()),
        _ => None,
    });
    assert_eq!(alpn, Some(vec!["h3".to_string()]));
}

#[tokio::test]
async fn tcp_answers_like_udp() {
    let s = start().await;
    for net in ["198.51.100.0/24", "192.0.2.0/24", "2001:db8::/32"] {
        let m = query("echo.fn.test.", RecordType::A, Some(net));
        let (u, t) = (udp(s.addr, &m).await, tcp(s.addr, &m).await);
        assert_eq!(addresses(&u), addresses(&t), "{net}");
        assert_eq!(ecs_of(&u), ecs_of(&t), "{net}");
    }
    let r = tcp(s.addr, &query("nope.fn.test.", RecordType::A, None)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    let r = tcp(s.addr, &query("example.com.", RecordType::A, None)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn rate_limiting_per_prefix_with_slip() {
    let s = start_with("fra", |t| {
        t.set(
            "dns.rate_limit",
            toml::toml! {
                responses_per_second = 1.0
                burst = 3.0
                ipv4_prefix = 24
                ipv6_prefix = 56
                slip = 2
            },
        );
    })
    .await;
    let bytes = query("echo.fn.test.", RecordType::A, None)
        .to_vec()
        .unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..12 {
        sock.send_to(&bytes, s.addr).await.unwrap();
    }
    let (mut full, mut truncated) = (0, 0);
    let mut buf = vec![0; 4096];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await
    {
        let m = Message::from_vec(&buf[..n]).unwrap();
        if m.metadata.truncation {
            assert!(m.answers.is_empty());
            truncated += 1;
        } else {
            full += 1;
        }
    }
    // A burst of 3 (one more token may have come back meanwhile), then
    // every second dropped response slips out truncated.
    assert!((3..=4).contains(&full), "full {full}");
    assert!((4..=5).contains(&truncated), "truncated {truncated}");
    assert!(s.state.rate_limited() >= 8);
    // TCP is not limited.
    let r = tcp(s.addr, &query("echo.fn.test.", RecordType::A, None)).await;
    assert_eq!(addresses(&r), vec![FRA]);
}

#[tokio::test]
async fn binding_a_busy_address_names_it() {
    let s = start().await;
    let t = Arc::new(topology(|t| {
        t.edge("fra", |e| {
            e.insert("dns_listen".into(), s.addr.to_string().into());
        });
    }));
    let geo = Arc::new(GeoDb::open(&t.geo_db, t.default_location).unwrap());
    let state = DnsState::new(0, t.clone(), geo, Arc::new(LiveView::new(t.clone())));
    let err = dns::bind_state(Arc::new(state))
        .await
        .err()
        .expect("the address is taken");
    assert!(format!("{err:#}").contains(&s.addr.to_string()), "{err:#}");
}

fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args([
            "-p",
            &addr.port().to_string(),
            "+norec",
            "+time=2",
            "+tries=1",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run dig ({e}): install it with .ci/deps-dns.sh (Debian bind9-dnsutils)")
        });
    assert!(out.status.success(), "dig {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn dig_agrees() {
    let s = start().await;
    let addr = s.addr;
    tokio::task::spawn_blocking(move || {
        let out = dig(addr, &["+subnet=198.51.100.0/24", "resize.fn.test", "A"]);
        assert!(out.contains("status: NOERROR"), "{out}");
        assert!(
            out.contains("flags: qr aa;") || out.contains("flags: qr aa "),
            "{out}"
        );
        assert!(out.contains("CLIENT-SUBNET: 198.51.100.0/24/"), "{out}");
        assert!(out.contains("IN\tA\t127.0.0.12"), "{out}");
        let out = dig(
            addr,
            &["+tcp", "+subnet=203.0.113.0/24", "echo.fn.test", "A"],
        );
        assert!(out.contains("IN\tA\t127.0.0.13"), "{out}");
        assert!(out.contains("CLIENT-SUBNET: 203.0.113.0/24/24"), "{out}");
        let out = dig(addr, &["nope.fn.test", "A"]);
        assert!(out.contains("status: NXDOMAIN"), "{out}");
        let out = dig(addr, &["example.org", "A"]);
        assert!(out.contains("status: REFUSED"), "{out}");
        let out = dig(
            addr,
            &["+edns=1", "+noednsnegotiation", "echo.fn.test", "A"],
        );
        assert!(out.contains("status: BADVERS"), "{out}");
        let out = dig(addr, &["+subnet=192.0.2.0/24", "echo.fn.test", "HTTPS"]);
        assert!(
            out.contains("1 . alpn=\"h3,h2\" port=4433 ipv4hint=127.0.0.12"),
            "{out}"
        );
        let out = dig(addr, &["+short", "echo.fn.test", "TXT"]);
        assert!(out.contains("fra chosen"), "{out}");
        let out = dig(addr, &["fn.test", "NS"]);
        assert!(out.contains("ns-sin.fn.test."), "{out}");
    })
    .await
    .unwrap();
}

/// Two regions of near-equal edges with different capacities (addresses
/// 127.0.0.11-17, only fra's DNS listens): Europe (fra, ams 364 km from
/// Frankfurt, par 478 km) and the Great Lakes (ord, dtw 381 km from
/// Chicago, yyz 701 km), plus nyc. Unmapped addresses are placed in
/// Luxembourg: fra 190 km, par 287 km, ams 320 km.
fn spread_topology() -> Topology {
    let edge = |name: &str, ip: u8, lat: f64, lon: f64, capacity: u32| {
        format!(
            "[[edge]]\nname = \"{name}\"\nlocation = {{ lat = {lat}, lon = {lon} }}\n\
             addresses = [\"127.0.0.{ip}\"]\ndns_listen = \"127.0.0.{ip}:0\"\n\
             quic_listen = \"127.0.0.{ip}:0\"\nadmin_listen = \"127.0.0.{ip}:0\"\ncapacity = {capacity}\n"
        )
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = [
        format!(
            "zone = \"fn.test.\"\ngeo_db = \"{}\"\ndefault_location = {{ lat = 49.61, lon = 6.13 }}\n\
             [dns]\nttl = 20\nanswers = 1\nudp_sockets = 2\n",
            root.join("geo/sample.mmdb").display()
        ),
        edge("fra", 11, 50.11, 8.68, 256),
        edge("ams", 14, 52.37, 4.90, 100),
        edge("par", 15, 48.86, 2.35, 300),
        edge("nyc", 12, 40.71, -74.01, 256),
        edge("ord", 16, 41.88, -87.63, 256),
        edge("dtw", 17, 42.33, -83.05, 300),
        edge("yyz", 13, 43.65, -79.38, 100),
        "[[function]]\nname = \"echo\"\nexecutor = { kind = \"command\", command = [\"cat\"] }\n"
            .into(),
    ]
    .concat();
    fnroute::config::parse(&root.join("spread.toml"), &text).unwrap_or_else(|e| panic!("{e}"))
}

/// The TXT explanation of `name` for `net`, one line per string.
async fn txt(addr: SocketAddr, name: &str, net: &str) -> String {
    let r = udp(addr, &query(name, RecordType::TXT, Some(net))).await;
    r.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned() + "\n")
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}

/// The answer and the ECS scope for `net`.
async fn answer_and_scope(addr: SocketAddr, net: &str) -> (Vec<String>, u8) {
    let r = udp(addr, &query("echo.fn.test.", RecordType::A, Some(net))).await;
    let scope = ecs_of(&r)
        .unwrap_or_else(|| panic!("{net}: ECS echoed"))
        .scope_prefix();
    (addresses(&r), scope)
}

#[tokio::test]
async fn displaced_clients_are_spread_by_capacity_with_a_true_scope() {
    const AMS: &str = "127.0.0.14";
    const PAR: &str = "127.0.0.15";
    const DTW: &str = "127.0.0.17";
    const YYZ: &str = "127.0.0.13";
    let s = serve(spread_topology(), "fra").await;
    let down = EdgeState {
        healthy: false,
        draining: false,
        load: 0.0,
    };
    // Before: every Frankfurt /56 (fd00:1::/32) gets fra; Paris gets par,
    // scoped to its /24 (its unmapped neighbours get fra).
    for i in 0..20u32 {
        let net = format!("fd00:1:{:x}:{:x}00::/56", i * 97, i % 256);
        assert_eq!(answer_and_scope(s.addr, &net).await.0, vec![FRA], "{net}");
    }
    let paris = answer_and_scope(s.addr, "198.51.100.0/24").await;
    assert_eq!(paris, (vec![PAR.to_string()], 24));
    let new_york = answer_and_scope(s.addr, "fd00:2::/32").await;
    assert_eq!(new_york.0, vec![NYC]);

    for name in ["fra", "ord"] {
        let e = s.topology.edge_id(name).unwrap();
        s.view.update(|v| v.with_edge(e, down.clone()));
    }

    // Frankfurt: 400 client /56s split over ams : par = 100 : 300; never
    // nyc (not near-equal) nor fra (down). Each answer is scoped to its
    // /56: the database network is a /32, but the draw is per /56.
    let mut got = [0u32; 2];
    for i in 0..400u32 {
        let net = format!("fd00:1:{:x}:{:x}00::/56", i * 131, (i * 7) % 256);
        let (a, scope) = answer_and_scope(s.addr, &net).await;
        assert_eq!(scope, 56, "{net}");
        match a.first().map(String::as_str) {
            Some(AMS) => got[0] += 1,
            Some(PAR) => got[1] += 1,
            other => panic!("{net}: {other:?}"),
        }
        // True: a longer subnet inside gets the same answer, scoped /56.
        if i % 40 == 0 {
            let inner = net.replace("00::/56", "42:1::/64");
            assert_eq!(answer_and_scope(s.addr, &inner).await, (a, 56), "{inner}");
        }
    }
    let ams_share = f64::from(got[0]) / 400.0;
    assert!((0.15..=0.35).contains(&ams_share), "ams {got:?}");

    // Chicago (one /16 in the database): its 256 /24s split over dtw : yyz
    // = 300 : 100 (nyc, 1144 km, is not near-equal to dtw's 381 km). The
    // scope is the /24, narrower than the database network.
    let mut got = [0u32; 2];
    for i in 0..256u32 {
        let net = format!("198.18.{i}.0/24");
        let (a, scope) = answer_and_scope(s.addr, &net).await;
        assert_eq!(scope, 24, "{net}");
        match a.first().map(String::as_str) {
            Some(DTW) => got[0] += 1,
            Some(YYZ) => got[1] += 1,
            other => panic!("{net}: {other:?}"),
        }
    }
    let dtw_share = f64::from(got[0]) / 256.0;
    assert!((0.62..=0.88).contains(&dtw_share), "dtw {got:?}");
    // Other spellings of one client /24 get its answer: a /32 inside
    // (scope /24), the /16 around it (answered for 198.18.0.0/24, scope
    // /24: longer than the source, as RFC 7871 allows), IPv4-mapped.
    let (a5, _) = answer_and_scope(s.addr, "198.18.5.0/24").await;
    assert_eq!(
        answer_and_scope(s.addr, "198.18.5.77/32").await,
        (a5.clone(), 24)
    );
    let (a0, _) = answer_and_scope(s.addr, "198.18.0.0/24").await;
    assert_eq!(answer_and_scope(s.addr, "198.18.0.0/16").await, (a0, 24));
    assert_eq!(
        answer_and_scope(s.addr, "::ffff:198.18.5.0/120").await,
        (a5, 120)
    );

    // Not displaced: Paris and New York get exactly what they got before.
    // Paris's unmapped neighbours are displaced now, and their best viable
    // edge is par too, but they are spread per /24 over par and ams: the
    // scope must not widen over them (it would not be true).
    assert_eq!(answer_and_scope(s.addr, "198.51.100.0/24").await, paris);
    assert_eq!(answer_and_scope(s.addr, "fd00:2::/32").await, new_york);
    let mut neighbours = std::collections::BTreeSet::new();
    for third in (96..104).filter(|&t| t != 100) {
        let net = format!("198.51.{third}.0/24");
        neighbours.insert(answer_and_scope(s.addr, &net).await.0);
    }
    assert_eq!(
        neighbours,
        [vec![AMS.to_string()], vec![PAR.to_string()]].into(),
        "Paris's unmapped neighbours in 198.51.96.0/21 are split"
    );

    // The TXT explanation says so.
    let text = txt(s.addr, "echo.fn.test.", "198.18.5.0/24").await;
    assert!(
        text.contains("198.18.5.0/24 drawn by capacity among dtw, yyz"),
        "{text}"
    );
    assert!(text.contains("lost (spread"), "{text}");
    assert!(text.contains("ord lost (unhealthy)"), "{text}");

    // fra and ord back: everyone gets the nearest edge again.
    for name in ["fra", "ord"] {
        let e = s.topology.edge_id(name).unwrap();
        s.view.update(|v| v.with_edge(e, EdgeState::default()));
    }
    assert_eq!(
        answer_and_scope(s.addr, "fd00:1:42:1700::/56").await.0,
        vec![FRA]
    );
    assert_eq!(
        answer_and_scope(s.addr, "198.18.9.0/24").await.0,
        vec!["127.0.0.16"]
    );
}
