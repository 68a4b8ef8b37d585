//! Raw bytes → DNS response through the real answer path
//! (`Responder::respond`, with its decision cache). Checks, for every
//! input: no panic; a response echoes the id, has QR set, fits the
//! transport's limit, and decodes with hickory-proto (a parser we did not
//! write).
#![no_main]

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use fnroute::dns::{DnsState, Responder, Transport};
use fnroute::geo::GeoDb;
use fnroute::mesh::LiveView;
use libfuzzer_sys::fuzz_target;

fn responder() -> &'static Mutex<Responder> {
    static R: OnceLock<Mutex<Responder>> = OnceLock::new();
    R.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../edge-config/three-edges.toml");
        let t = Arc::new(fnroute::config::load(&path).expect("topology"));
        let geo = Arc::new(GeoDb::open(&t.geo_db, t.default_location).expect("geo"));
        let view = Arc::new(LiveView::new(t.clone()));
        Mutex::new(Responder::new(Arc::new(DnsState::new(0, t, geo, view))))
    })
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the client and the transport; the rest is the
    // packet.
    let Some((&sel, packet)) = data.split_first() else {
        return;
    };
    let client: IpAddr = match sel & 3 {
        0 => "198.51.100.7".parse().unwrap(),
        1 => "2001:db8::1".parse().unwrap(),
        2 => "::ffff:192.0.2.1".parse().unwrap(),
        _ => "127.0.0.1".parse().unwrap(),
    };
    let transport = if sel & 4 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let mut out = Vec::new();
    let mut r = responder().lock().unwrap();
    if !r.respond(packet, client, transport, &mut out) {
        return;
    }
    assert!(out.len() >= 12, "response shorter than a header");
    assert_eq!(out[..2], packet[..2], "id echoed");
    assert!(out[2] & 0x80 != 0, "QR set");
    assert!(out[3] & 0x80 == 0, "RA never set");
    if transport == Transport::Udp {
        assert!(out.len() <= 4096, "UDP response of {} bytes", out.len());
    }
    if let Err(e) = hickory_proto::op::Message::from_vec(&out) {
        panic!("response does not decode: {e}\nquery {packet:02x?}\nresponse {out:02x?}");
    }
});
