//! Time to first byte of a streamed response, as `benches/streaming.sh`
//! measures it: the function's first chunk is the time it was written
//! (ns since the epoch, e.g. `date +%s%N`); this client subtracts it from
//! the time that chunk arrived. Client and function share one host and
//! one clock.
//!
//! `stream_ttfb ADDR SERVER_NAME FUNCTION N`: N sequential invocations
//! over one HTTP/3 connection (trusting any certificate: loopback
//! benchmarks only), one line per invocation (µs), then a summary.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fnroute::mesh::transport::{Client, Request, Trust};

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, name, function, n] = args.as_slice() else {
        return Err("usage: stream_ttfb ADDR SERVER_NAME FUNCTION N".into());
    };
    let n: usize = n.parse()?;
    let client = Client::new(&Trust::Insecure, "127.0.0.1:0".parse()?)?;
    let conn = client.connect(addr.parse()?, name).await?;
    let mut us = Vec::with_capacity(n);
    for _ in 0..n {
        let mut r = conn
            .send_streaming(Request::invoke(function, Bytes::new()))
            .await?;
        if r.status != 200 {
            return Err(format!("status {}: {:?}", r.status, r.body).into());
        }
        let first = r.chunk().await.ok_or("no chunk")??;
        let arrived = now_ns();
        let written: u128 = String::from_utf8_lossy(&first).trim().parse()?;
        let ttfb = arrived.saturating_sub(written) as f64 / 1000.0;
        println!("{ttfb:.1}");
        us.push(ttfb);
        while let Some(c) = r.chunk().await {
            c?;
        }
    }
    us.sort_by(f64::total_cmp);
    let q = |p: f64| us[((us.len() - 1) as f64 * p).round() as usize];
    println!(
        "ttfb_us n={} p50={:.1} p90={:.1} p99={:.1} max={:.1}",
        us.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        us[us.len() - 1]
    );
    Ok(())
}
