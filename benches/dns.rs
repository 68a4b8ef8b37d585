//! Building DNS answers: the real `Responder::respond` path (parse, view,
//! decision cache, encode) for ECS queries, with the three-edge topology
//! and with 1,000 edges, cached and uncached (an uncached answer pays the
//! geo lookup, `placement::rank` and the ECS scope walk). hickory-proto's
//! `Message::from_vec` on the same queries is measured as a reference for
//! what decoding alone costs there.
//!
//! `cargo bench --bench dns`

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fnroute::dns::{self, DnsState, Responder, Transport};
use fnroute::geo::GeoDb;
use fnroute::mesh::LiveView;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RecordType};

fn state(t: fnroute::config::Topology) -> Arc<DnsState> {
    let t = Arc::new(t);
    let geo = Arc::new(GeoDb::open(&t.geo_db, t.default_location).expect("geo db"));
    let view = Arc::new(LiveView::new(t.clone()));
    Arc::new(DnsState::new(0, t, geo, view))
}

fn three_edges() -> fnroute::config::Topology {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("edge-config/three-edges.toml");
    fnroute::config::load(&path).expect("three-edges.toml")
}

/// `n` edges spread over the globe, function `echo` on all of them.
fn fleet(n: usize) -> fnroute::config::Topology {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut t = format!(
        "zone = \"fn.test.\"\ngeo_db = \"{}\"\ndefault_location = {{ lat = 50.11, lon = 8.68 }}\n",
        root.join("geo/sample.mmdb").display()
    );
    for i in 0..n {
        let lat = ((i * 37) % 140) as f64 - 70.0;
        let lon = ((i * 113) % 360) as f64 - 180.0;
        let ip = format!("127.{}.{}.1", 1 + i / 250, i % 250);
        t.push_str(&format!(
            "[[edge]]\nname = \"e{i}\"\nlocation = {{ lat = {lat}, lon = {lon} }}\naddresses = [\"{ip}\"]\n\
             dns_listen = \"{ip}:5300\"\nquic_listen = \"{ip}:4433\"\nadmin_listen = \"{ip}:9180\"\n"
        ));
    }
    t.push_str(
        "[[function]]\nname = \"echo\"\nexecutor = { kind = \"command\", command = [\"cat\"] }\n",
    );
    fnroute::config::parse(&root.join("bench-fleet.toml"), &t).expect("generated fleet validates")
}

/// The sample prefixes as ECS queries for echo.fn.test A.
fn queries() -> Vec<Vec<u8>> {
    [
        "198.51.100.0/24",
        "192.0.2.0/24",
        "203.0.113.0/24",
        "2001:db8::/32",
        "100.64.4.0/24",
        "100.64.13.0/24",
    ]
    .iter()
    .map(|net| {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("echo.fn.test.").expect("name"),
            RecordType::A,
        ));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        let subnet: ClientSubnet = net.parse().expect("subnet");
        edns.options_mut().insert(EdnsOption::Subnet(subnet));
        m.set_edns(edns);
        m.to_vec().expect("encodes")
    })
    .collect()
}

fn bench(c: &mut Criterion) {
    let qs = queries();
    let client: IpAddr = "127.0.0.1".parse().expect("ip");
    let mut g = c.benchmark_group("dns");
    g.throughput(Throughput::Elements(qs.len() as u64));
    for (label, topology) in [("three-edges", three_edges()), ("1000-edges", fleet(1000))] {
        let st = state(topology);
        let mut responder = Responder::new(st.clone());
        let mut out = Vec::with_capacity(1024);
        g.bench_function(format!("answer/cached/{label}"), |b| {
            b.iter(|| {
                for q in &qs {
                    black_box(responder.respond(black_box(q), client, Transport::Udp, &mut out));
                }
            })
        });
        g.bench_function(format!("answer/uncached/{label}"), |b| {
            b.iter(|| {
                for q in &qs {
                    black_box(dns::answer(&st, black_box(q), client, Transport::Udp));
                }
            })
        });
    }
    g.bench_function("hickory-proto-decode-only", |b| {
        b.iter(|| {
            for q in &qs {
                black_box(Message::from_vec(black_box(q)).ok());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
