//! Which local process is at the other end of a loopback TCP connection,
//! from `/proc` (Linux): the peer's socket is the one whose local address
//! is our peer address; its inode names it among the processes' open
//! descriptors. Reads files: call it off the async runtime's threads.

use std::net::SocketAddr;
use std::path::Path;

/// The pid holding the other end of the TCP connection `local` ↔ `peer`,
/// if that process is on this machine and its `/proc` is readable.
pub fn tcp_peer_pid(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| socket_inode(Path::new(table), peer, local))?;
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                return Some(pid);
            }
        }
    }
    None
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
    fn finds_this_process_at_the_other_end_of_a_loopback_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        let found = tcp_peer_pid(s.local_addr().unwrap(), peer);
        assert_eq!(found, Some(std::process::id()));
    }

    #[test]
    fn addresses_as_proc_writes_them() {
        assert_eq!(hex_addr("127.0.0.1:5555".parse().unwrap()), "0100007F:15B3");
    }
}
