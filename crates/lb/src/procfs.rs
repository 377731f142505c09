//! Which of the LB's own worker processes is at the other end of a TCP
//! connection, from `/proc` (Linux): the peer's socket is the one whose
//! local address is our peer address in `/proc/net/tcp{,6}`; its inode
//! names it among a candidate process's open descriptors. Only the
//! candidates (the supervised workers) are looked at, never every process
//! on the machine. Reads files: call it off the async runtime's threads.

use std::net::SocketAddr;
use std::path::Path;

/// The pid among `candidates` holding the other end of the TCP connection
/// `local` ↔ `peer`, if there is one and its `/proc` is readable.
pub fn tcp_peer_pid(local: SocketAddr, peer: SocketAddr, candidates: &[u32]) -> Option<u32> {
    if candidates.is_empty() {
        return None;
    }
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| socket_inode(Path::new(table), peer, local))?;
    let target = format!("socket:[{inode}]");
    candidates.iter().copied().find(|pid| {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()))
    })
}

/// The inode of the socket with this local and remote address in a
/// `/proc/net/tcp{,6}` table.
fn socket_inode(table: &Path, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let text = std::fs::read_to_string(table).ok()?;
    let (want_local, want_remote) = (hex_addr(local), hex_addr(remote));
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (l, r, inode) = (f.get(1)?, f.get(2)?, f.get(9)?);
        (l.eq_ignore_ascii_case(&want_local) && r.eq_ignore_ascii_case(&want_remote))
            .then(|| inode.parse().ok())
            .flatten()
    })
}

/// An address as `/proc/net/tcp{,6}` writes it: the address's 32-bit
/// words in host (little-endian) order, then `:PORT` in hex.
fn hex_addr(a: SocketAddr) -> String {
    let ip = match a.ip() {
        std::net::IpAddr::V4(v4) => format!("{:08X}", u32::from_le_bytes(v4.octets())),
        std::net::IpAddr::V6(v6) => v6
            .octets()
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    };
    format!("{ip}:{:04X}", a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_candidate_at_the_other_end_of_a_loopback_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        let me = std::process::id();
        let local = s.local_addr().unwrap();
        assert_eq!(tcp_peer_pid(local, peer, &[1, me]), Some(me));
        // Not among the candidates: not looked for elsewhere.
        assert_eq!(tcp_peer_pid(local, peer, &[]), None);
        assert_eq!(tcp_peer_pid(local, peer, &[u32::MAX]), None);
    }

    #[test]
    fn addresses_as_proc_writes_them() {
        assert_eq!(hex_addr("127.0.0.1:5555".parse().unwrap()), "0100007F:15B3");
    }
}
