//! The bare quinn anchor of `benches/streaming.sh`: a raw QUIC server
//! (ALPN `source`) that answers every bidirectional stream, once the
//! request has ended, with N bytes of zeros (`write_chunk` of shared 64 KiB
//! buffers, then `finish`). The same quinn as fnroute, its default
//! transport settings, a self-signed certificate; loopback only.
//! `h3load --raw --alpn source` drives it.
//!
//! `quic_source ADDR BYTES`

use std::sync::Arc;

use bytes::Bytes;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, bytes] = args.as_slice() else {
        return Err("usage: quic_source ADDR BYTES".into());
    };
    let total: usize = bytes.parse()?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key.into())?;
    tls.alpn_protocols = vec![b"source".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(config, addr.parse()?)?;
    let zeros = Bytes::from(vec![0u8; 64 * 1024]);
    while let Some(incoming) = endpoint.accept().await {
        let zeros = zeros.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let zeros = zeros.clone();
                tokio::spawn(async move {
                    while let Ok(Some(_)) = recv.read_chunk(usize::MAX, true).await {}
                    let mut left = total;
                    while left > 0 {
                        let n = left.min(zeros.len());
                        if send.write_chunk(zeros.slice(..n)).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                    let _ = send.finish();
                });
            }
        });
    }
    Ok(())
}
