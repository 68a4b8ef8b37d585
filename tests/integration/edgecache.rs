//! The response cache through the HTTP/3 front door: hits never reach an
//! executor (counted by the executor's own statistics), vary headers,
//! a function that forbids caching of its response, purge.

use bytes::Bytes;
use fnroute::mesh::transport::Request;

use crate::harness::{start, Opts};

fn runs(edge: &crate::harness::TestEdge, function: &str) -> u64 {
    let fleet = edge.fleet.as_ref().expect("running");
    fleet.edges[0]
        .exec
        .stats()
        .into_iter()
        .find(|f| f.function == function)
        .map_or(0, |f| f.invocations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_vary_no_store_and_purge_through_http3() {
    let mut edge = start(Opts::default()).await;
    let client = edge.client();
    let conn = edge.connect(&client).await;
    let call = |payload: &'static str, lang: Option<&'static str>| {
        let mut req = Request::invoke("cached", Bytes::from_static(payload.as_bytes()));
        if let Some(l) = lang {
            req = req.header("accept-language", l);
        }
        conn.send(req)
    };

    let r = call("alpha", None).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"alpha"[..]));
    assert_eq!(r.header("fnroute-cache"), Some("miss"));
    assert_eq!(r.header("age"), None);
    assert_eq!(r.header("fnroute-edge"), Some("fra"));

    let r = call("alpha", None).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"alpha"[..]));
    assert_eq!(r.header("fnroute-cache"), Some("hit"));
    assert_eq!(r.header("age"), Some("0"));
    assert!(r
        .header("server-timing")
        .unwrap()
        .contains("cache;desc=hit"));
    assert_eq!(runs(&edge, "cached"), 1, "a hit never reaches the executor");

    // Another payload, and another value of a vary header, are other keys.
    assert_eq!(
        call("beta", None).await.unwrap().header("fnroute-cache"),
        Some("miss")
    );
    assert_eq!(
        call("alpha", Some("de"))
            .await
            .unwrap()
            .header("fnroute-cache"),
        Some("miss")
    );
    assert_eq!(
        call("alpha", Some("de"))
            .await
            .unwrap()
            .header("fnroute-cache"),
        Some("hit")
    );
    assert_eq!(runs(&edge, "cached"), 3);

    // The function says no-store on stderr: never cached.
    for _ in 0..2 {
        let r = conn
            .invoke("nostore", Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!((r.status, r.header("fnroute-cache")), (200, Some("miss")));
    }
    assert_eq!(runs(&edge, "nostore"), 2);

    // Uncacheable functions carry no cache header.
    let r = conn
        .invoke("upper", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!((r.status, r.header("fnroute-cache")), (200, None));

    // Purge one function: the next request runs again.
    edge.fleet.as_ref().unwrap().edges[0]
        .cache
        .purge_function("cached")
        .unwrap();
    assert_eq!(
        call("alpha", None).await.unwrap().header("fnroute-cache"),
        Some("miss")
    );
    assert_eq!(runs(&edge, "cached"), 4);
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_misses_run_once() {
    let mut edge = start(Opts::default()).await;
    let client = edge.client();
    let conn = std::sync::Arc::new(edge.connect(&client).await);
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let conn = conn.clone();
            tokio::spawn(async move { conn.invoke("cached", Bytes::from_static(b"same")).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        let r = c.await.unwrap().unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"same"[..]));
        statuses.push(r.header("fnroute-cache").unwrap().to_string());
    }
    assert_eq!(runs(&edge, "cached"), 1, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| *s == "miss").count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses
        .iter()
        .all(|s| ["miss", "hit", "coalesced"].contains(&s.as_str())));
    edge.shutdown().await;
}
