//! The UDP fast path: blocking sockets, one OS thread each, batched with
//! `recvmmsg`/`sendmmsg` (one system call per batch instead of two per
//! query). Workers notice shutdown within `POLL` (the socket read timeout).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use super::{answer, wire, Responder, Transport, Verdict};

/// Queries read (and responses sent) per system call. Small batches keep
/// latency low: a thread that empties its socket and blocks often is
/// scheduled promptly when the next query arrives (measured: 16 beats 32
/// and 4 on loopback with dnsperf).
const BATCH: usize = 16;
/// Longest datagram accepted; longer ones are dropped.
const MAX_QUERY: usize = 4096;
const POLL: Duration = Duration::from_millis(100);
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds `count` sockets to `addr` (`SO_REUSEPORT` when more than one, so
/// the kernel spreads clients over them).
pub(super) fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let count = count.max(1);
    if count > 1 {
        // `SO_REUSEPORT` lets a socket join any group of the same user on
        // that port: another fnroute (or, in the tests, another server in
        // the same process) would silently share our queries instead of
        // failing with "address in use". A plain bind first proves the port
        // free; the group is bound right after.
        let probe = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        probe.bind(&addr.into())?;
    }
    (0..count)
        .map(|_| {
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            if count > 1 {
                set_reuse_port(&s)?;
            }
            // Larger buffers absorb bursts; the kernel may clamp them.
            let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
            let _ = s.set_send_buffer_size(SOCKET_BUFFER);
            set_dont_fragment(&s, addr.is_ipv4());
            s.set_read_timeout(Some(POLL))?;
            s.bind(&addr.into())?;
            Ok(s.into())
        })
        .collect()
}

fn set_reuse_port(s: &Socket) -> io::Result<()> {
    set_int(s, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
}

/// Responses leave with "don't fragment" set and are never fragmented
/// locally (RFC 9715, DNS Flag Day 2020): `PROBE` sets DF and sizes by the
/// interface MTU, ignoring path-MTU notices (which can be spoofed to make
/// a server fragment). Answers are kept to `answer::MAX_UDP` bytes, and
/// one that still does not fit goes out truncated (see `worker`). A side
/// effect measured in docs/performance.md: the kernel gives DF datagrams
/// IP ID 0 instead of hashing a fresh ID per response. Best effort: a
/// kernel without the option sends as before.
fn set_dont_fragment(s: &Socket, v4: bool) {
    let r = if v4 {
        set_int(
            s,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    } else {
        set_int(
            s,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )
        .and_then(|()| set_int(s, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1))
    };
    if let Err(error) = r {
        tracing::debug!(%error, "dns udp: cannot set don't-fragment");
    }
}

fn set_int(
    s: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid socket descriptor and a c_int option value of the
    // size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Receives, answers and sends until `stop` is set.
pub(super) fn worker(sock: std::net::UdpSocket, mut responder: Responder, stop: &AtomicBool) {
    let fd = sock.as_raw_fd();
    let mut rx: Vec<[u8; MAX_QUERY]> = vec![[0; MAX_QUERY]; BATCH];
    let mut tx: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1024)).collect();
    // SAFETY (all zeroed() below): plain C structs for which all-zero is a
    // valid value.
    let mut names: Vec<libc::sockaddr_storage> = (0..BATCH).map(|_| unsafe { zeroed() }).collect();
    let mut rx_iov: Vec<libc::iovec> = rx
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: MAX_QUERY,
        })
        .collect();
    let mut rx_msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { zeroed() }).collect();
    for (i, m) in rx_msgs.iter_mut().enumerate() {
        m.msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        m.msg_hdr.msg_iov = &mut rx_iov[i];
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut tx_iov: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        })
        .collect();
    let mut tx_msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { zeroed() }).collect();
    // Which received datagram each response answers.
    let mut query_of = [0usize; BATCH];
    while !stop.load(Ordering::Relaxed) {
        for m in rx_msgs.iter_mut() {
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
        // SAFETY: every mmsghdr points at live buffers owned by this
        // function, with their true lengths.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                rx_msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => {}
                _ => {
                    tracing::warn!(error = %e, "dns udp receive failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            continue;
        }
        let mut k = 0;
        for i in 0..n as usize {
            let m = &rx_msgs[i];
            let len = m.msg_len as usize;
            if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                continue;
            }
            let Some(src) = ip_of(&names[i]) else {
                continue;
            };
            if src.port() == 0 {
                continue;
            }
            let query = &rx[i][..len.min(MAX_QUERY)];
            let out = &mut tx[k];
            responder.refresh();
            let ok = match responder.state().rate_limit(src.ip()) {
                Verdict::Send => responder.respond(query, src.ip(), Transport::Udp, out),
                Verdict::Drop => false,
                Verdict::Slip => answer::truncated(query, out),
            };
            if !ok {
                continue;
            }
            tx_iov[k] = libc::iovec {
                iov_base: out.as_mut_ptr().cast(),
                iov_len: out.len(),
            };
            let h = &mut tx_msgs[k].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = rx_msgs[i].msg_hdr.msg_namelen;
            h.msg_iov = &mut tx_iov[k];
            h.msg_iovlen = 1;
            query_of[k] = i;
            k += 1;
        }
        let mut sent = 0;
        while sent < k {
            // SAFETY: entries sent..k point at live buffers and addresses.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    tx_msgs.as_mut_ptr().add(sent),
                    (k - sent) as libc::c_uint,
                    0,
                )
            };
            if r <= 0 {
                let e = io::Error::last_os_error();
                // Already truncated and still too large: give up on it.
                let truncated = || match tx[sent].get(2..4) {
                    Some(&[a, b]) => u16::from_be_bytes([a, b]) & wire::FLAG_TC != 0,
                    _ => true,
                };
                if e.raw_os_error() == Some(libc::EMSGSIZE) && !truncated() {
                    // Larger than the interface allows without fragments:
                    // the same answer truncated (TC), so the client retries
                    // over TCP.
                    let i = query_of[sent];
                    let len = (rx_msgs[i].msg_len as usize).min(MAX_QUERY);
                    let out = &mut tx[sent];
                    if answer::truncated(&rx[i][..len], out) {
                        tx_iov[sent].iov_base = out.as_mut_ptr().cast();
                        tx_iov[sent].iov_len = out.len();
                        continue;
                    }
                }
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::debug!(error = %e, "dns udp send failed; response dropped");
                    sent += 1;
                }
                continue;
            }
            sent += r as usize;
        }
    }
}

fn ip_of(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be(a.sin6_port)))
        }
        _ => None,
    }
}
