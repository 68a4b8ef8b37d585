//! Who is on the other end of a Runtime API connection.
//!
//! The Lambda Runtime API has no authentication (in Lambda only the
//! function can reach it), and ours listens on loopback, where every local
//! user can connect. A connection is served only when the peer socket
//! belongs to the user the workers run as (ours): another user cannot take
//! or answer a worker's invocations. Processes of the same user are not
//! kept out (they could read this process's memory anyway).
//!
//! Linux offers no peer credentials for TCP (`SO_PEERCRED` is for Unix
//! sockets), so the owner comes from the kernel's socket diagnostics
//! (`NETLINK_SOCK_DIAG`, what `ss` uses): one exact lookup of the peer's
//! socket returns its owner uid. Hand-written (a few dozen lines) because
//! the netlink crates that cover sock_diag bring a whole framework for one
//! request; `/proc/net/tcp` has the same column but reading it walks the
//! kernel's whole connection hash table (3.5 ms per read measured on the
//! development VM), too slow for a cold start.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What the kernel says about a connection to our listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// The peer's socket is owned by this user id.
    Uid(u32),
    /// No such socket (gone already, or not a local IPv4 socket).
    Unknown,
    /// Socket diagnostics are not available here: nothing can be checked.
    Unavailable,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_HEADER: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, sockid.
const REQUEST_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_sockid`: ports, two 16-byte addresses, ifindex, cookie.
const SOCKID_LEN: usize = 4 + 16 + 16 + 4 + 8;
/// Offset of `idiag_uid` in `struct inet_diag_msg`.
const UID_OFFSET: usize = 4 + SOCKID_LEN + 12;

/// The owner of the socket at `peer` connected to our `local` address.
pub(crate) fn owner(peer: SocketAddr, local: SocketAddr) -> Owner {
    let (Some(peer_ip), Some(local_ip)) = (v4(peer), v4(local)) else {
        return Owner::Unknown;
    };
    match lookup((peer_ip, peer.port()), (local_ip, local.port())) {
        Ok(Some(uid)) => Owner::Uid(uid),
        Ok(None) => Owner::Unknown,
        Err(_) => Owner::Unavailable,
    }
}

fn v4(a: SocketAddr) -> Option<Ipv4Addr> {
    match a {
        SocketAddr::V4(a) => Some(*a.ip()),
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped(),
    }
}

/// The request for the TCP socket whose local end is `me` and remote end
/// `them` (an exact lookup, not a dump).
fn request(me: (Ipv4Addr, u16), them: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut b = Vec::with_capacity(NLMSG_HEADER + REQUEST_LEN);
    b.extend_from_slice(&((NLMSG_HEADER + REQUEST_LEN) as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    b.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    b.push(libc::AF_INET as u8);
    b.push(libc::IPPROTO_TCP as u8);
    b.extend_from_slice(&[0, 0]); // no extensions, pad
    b.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    b.extend_from_slice(&me.1.to_be_bytes());
    b.extend_from_slice(&them.1.to_be_bytes());
    for ip in [me.0, them.0] {
        b.extend_from_slice(&ip.octets());
        b.extend_from_slice(&[0; 12]);
    }
    b.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    b.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    b
}

/// The uid in the kernel's answer; `None` for an error answer (no such
/// socket) or one too short to hold it.
fn parse(answer: &[u8]) -> Option<u32> {
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    if kind != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    let at = NLMSG_HEADER + UID_OFFSET;
    Some(u32::from_ne_bytes(answer.get(at..at + 4)?.try_into().ok()?))
}

fn lookup(me: (Ipv4Addr, u16), them: (Ipv4Addr, u16)) -> io::Result<Option<u32>> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // A kernel that never answers must not hang an accept.
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: a valid descriptor and a timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let req = request(me, them);
    // SAFETY: the buffer is live for the call, with its true length; the
    // destination is the kernel (the default for an unbound netlink send).
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    // SAFETY: as above, into a buffer of the size given.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(parse(&buf[..n as usize]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let lo = Ipv4Addr::LOCALHOST;
        let r = request((lo, 50000), (lo, 8080));
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        assert_eq!(&r[24..26], &50000u16.to_be_bytes());
        assert_eq!(&r[26..28], &8080u16.to_be_bytes());
        assert_eq!(&r[28..32], &[127, 0, 0, 1]);
        assert_eq!(&r[44..48], &[127, 0, 0, 1]);
        assert_eq!(&r[64..72], &[0xff; 8]);
    }

    #[test]
    fn answers_that_are_not_a_socket_give_nothing() {
        assert_eq!(parse(&[]), None);
        let mut error = vec![0u8; 36];
        error[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        assert_eq!(parse(&error), None);
        let mut short = vec![0u8; 40];
        short[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        assert_eq!(parse(&short), None);
    }

    #[test]
    fn a_real_connection_is_ours_and_a_closed_one_unknown() {
        use std::os::unix::fs::MetadataExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(local).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        let me = std::fs::metadata("/proc/self").unwrap().uid();
        match owner(peer, local) {
            Owner::Uid(uid) => assert_eq!(uid, me),
            Owner::Unavailable => eprintln!("no sock_diag here; check skipped"),
            Owner::Unknown => panic!("the connected socket was not found"),
        }
        let gone: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_ne!(owner(gone, local), Owner::Uid(me));
        drop(client);
    }
}
