//! Forwarding overhead: the same invocation of `resize` (hosted on nyc and
//! sin) sent to nyc, which runs it, and to fra, which forwards it to nyc
//! over the mesh (mTLS HTTP/3). Three edges of
//! `edge-config/three-edges.toml` in this process on fresh ports.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use fnroute::mesh::transport::{Client, Trust};
use fnroute::node::Fleet;

#[path = "../tests/integration/topo.rs"]
mod topo;
use topo::TopoEdit;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let state = tempfile::tempdir().expect("tempdir");
    let topo = TopoEdit::open("edge-config/three-edges.toml")
        .ports(0, 0, 0)
        .set(
            "state_dir",
            state.path().join("state").display().to_string(),
        )
        .load();
    let fleet = rt
        .block_on(Fleet::start(Arc::new(topo), &[0, 1, 2]))
        .expect("fleet");
    let (fra, nyc) = (fleet.quic_addrs[0], fleet.quic_addrs[1]);
    let (client, local, forwarded) = rt.block_on(async {
        let client =
            Client::new(&Trust::Insecure, "127.0.0.1:0".parse().expect("addr")).expect("client");
        let local = client.connect(nyc, "localhost").await.expect("nyc");
        let forwarded = client.connect(fra, "localhost").await.expect("fra");
        // Warm up: pools, the fra→nyc connection, the view.
        for _ in 0..50 {
            let r = forwarded
                .invoke("resize", Bytes::from_static(b"x"))
                .await
                .expect("invoke");
            assert_eq!(r.header("fnroute-edge"), Some("nyc"), "forwarded to nyc");
        }
        (client, local, forwarded)
    });

    let mut g = c.benchmark_group("forwarding");
    g.measurement_time(Duration::from_secs(5));
    for (name, conn) in [("local_nyc", &local), ("forwarded_fra_to_nyc", &forwarded)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let r = conn
                        .invoke("resize", Bytes::from_static(b"x"))
                        .await
                        .expect("invoke");
                    assert_eq!(r.status, 200);
                })
            })
        });
    }
    g.finish();
    rt.block_on(async {
        drop((local, forwarded));
        client.close().await;
        fleet.shutdown(Duration::from_secs(5)).await;
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
