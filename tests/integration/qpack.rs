//! Header fields survive HTTP/3 in both directions with the vendored h3's
//! QPACK encoder (vendor/README.md: raw string literals, response heads
//! encoded from the borrowed header map): a bare h3 server on loopback
//! mirrors every request header into its response, and fnroute's client
//! checks each value byte for byte. Both encoders are the patched one (client
//! request, server response) and both decoders upstream's unchanged one, so
//! every name and value here, with every byte a header value may hold, is
//! written by the new encoder and read back by the old decoder.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use fnroute::mesh::transport::{Client, Request, Trust};

/// Values for header fields: every allowed byte alone, all of them in one
/// value, a long run of one byte above 0x7f and pseudo-random mixes of
/// lengths 0..160.
fn values() -> Vec<Vec<u8>> {
    let allowed: Vec<u8> = (0u8..=255)
        .filter(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        .collect();
    let mut out: Vec<Vec<u8>> = allowed.iter().map(|&b| vec![b, b'x', b]).collect();
    out.push(allowed.clone());
    out.push(vec![0xfe; 100]);
    out.push(b"cache;desc=hit, total;dur=0.012".to_vec());
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for n in 0..160usize {
        out.push(
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    allowed[(seed % allowed.len() as u64) as usize]
                })
                .collect(),
        );
    }
    // Leading and trailing blanks are not part of a field value (RFC 9110
    // §5.5): the http crate keeps them, but they are not ours to test.
    for v in &mut out {
        while v.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            v.remove(0);
        }
        while v.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
            v.pop();
        }
    }
    out
}

/// A bare h3 server that answers every request with its own header fields.
async fn mirror_server(dir: &std::path::Path) -> (SocketAddr, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let pem = dir.join("mirror.pem");
    std::fs::write(&pem, ck.cert.pem()).expect("write cert");
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .expect("server config");
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic config");
    let server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let ep =
        quinn::Endpoint::server(server, "127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let addr = ep.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let Ok(mut h3c) =
                    h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn)).await
                else {
                    return;
                };
                while let Ok(Some(resolver)) = h3c.accept().await {
                    tokio::spawn(async move {
                        let Ok((req, mut stream)) = resolver.resolve_request().await else {
                            return;
                        };
                        while let Ok(Some(mut c)) = stream.recv_data().await {
                            c.advance(c.remaining());
                        }
                        let mut resp = http::Response::new(());
                        for (name, value) in req.headers() {
                            if name.as_str().starts_with("x-") {
                                resp.headers_mut().append(name.clone(), value.clone());
                            }
                        }
                        if stream.send_response(resp).await.is_ok() {
                            let _ = stream.finish().await;
                        }
                    });
                }
            });
        }
    });
    (addr, pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_fields_round_trip_through_qpack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, pem) = mirror_server(dir.path()).await;
    let client =
        Client::new(&Trust::Ca(pem), "127.0.0.1:0".parse().expect("addr")).expect("client");
    let conn = client.connect(addr, "localhost").await.expect("connect");
    let values = values();
    // A few fields per request (the server's field section limit is far).
    for (i, chunk) in values.chunks(4).enumerate() {
        let mut req = Request::invoke("mirror", Bytes::new());
        let mut sent = Vec::new();
        for (j, v) in chunk.iter().enumerate() {
            // Header names too are literals, Huffman-coded or raw.
            let name = format!("x-{i}-{j}-{}", "qz".repeat(j * 5));
            // `Request` carries `String`s; the bytes >= 0x80 of a value
            // arrive as Latin-1 text re-encoded as UTF-8, i.e. still only
            // bytes a field value may hold.
            let text: String = v.iter().map(|&b| char::from(b)).collect();
            sent.push((name.clone(), text.clone().into_bytes()));
            req.headers.push((name, text));
        }
        let reply = conn.send(req).await.expect("request");
        assert_eq!(reply.status, 200, "{reply:?}");
        for (name, bytes) in &sent {
            let got = reply.headers.get(name.as_str()).map(|v| v.as_bytes());
            assert_eq!(got, Some(&bytes[..]), "field {name}");
        }
    }
}
