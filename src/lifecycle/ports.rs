//! Who holds a TCP port (docs/contract.md §4: a foreign holder is named — PID and command — and
//! left alone).
//!
//! Listening sockets come from `/proc/net/tcp` and `/proc/net/tcp6` (this network
//! namespace, any local address); their owners are found by matching the socket inode
//! against `/proc/*/fd`. Another user's process cannot be inspected without
//! privileges: it is then reported as an unknown holder, with its UID.

use std::fmt;
use std::net::{SocketAddr, TcpListener};

use crate::lifecycle::process;

/// The owner of a listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortHolder {
    /// `None` when no visible process has the socket open (another user's process).
    pub pid: Option<i32>,
    /// Its command line, when readable.
    pub command: Option<String>,
    /// The socket's inode.
    pub inode: u64,
    /// The socket owner's UID, as `/proc/net/tcp*` reports it.
    pub uid: Option<u32>,
}

impl fmt::Display for PortHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.pid, &self.command) {
            (Some(pid), Some(cmd)) => write!(f, "PID {pid} ({cmd})"),
            (Some(pid), None) => write!(f, "PID {pid}"),
            (None, _) => match self.uid {
                Some(uid) => write!(
                    f,
                    "an unknown process of UID {uid} (not visible to this user)"
                ),
                None => write!(f, "an unknown process (not visible to this user)"),
            },
        }
    }
}

/// A socket in LISTEN state from `/proc/net/tcp*`.
#[derive(Debug, PartialEq, Eq)]
struct Listener {
    inode: u64,
    uid: u32,
}

const TCP_LISTEN: &str = "0A";

/// Parses a `/proc/net/tcp` or `/proc/net/tcp6` table: the LISTEN sockets on `port`.
fn parse_listeners(table: &str, port: u16) -> Vec<Listener> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != TCP_LISTEN {
                return None;
            }
            let (_, local_port) = f[1].rsplit_once(':')?;
            if u16::from_str_radix(local_port, 16).ok()? != port {
                return None;
            }
            Some(Listener {
                inode: f[9].parse().ok()?,
                uid: f[7].parse().ok()?,
            })
        })
        .filter(|l| l.inode != 0)
        .collect()
}

/// The first holder of a listening TCP socket on `port` (IPv4 or IPv6, any local
/// address), preferring one whose process is visible. `None` when nobody listens.
pub fn listener_on(port: u16) -> Option<PortHolder> {
    let mut holders = listeners_on(port);
    let visible = holders.iter().position(|h| h.pid.is_some()).unwrap_or(0);
    (!holders.is_empty()).then(|| holders.swap_remove(visible))
}

/// Every process holding a listening TCP socket on `port`, sorted by PID (unknown
/// holders last). Several processes share one socket while a restart hands it over,
/// and `SO_REUSEPORT` lets several sockets listen on one port.
/// Whether process `pid` holds a listening TCP socket (any port). A proxy that
/// does not is draining: it closed its listener and is finishing its last
/// requests (e.g. the old process during `daemon restart`).
pub fn holds_listener(pid: i32) -> bool {
    let mut listening = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(content) = std::fs::read_to_string(table) {
            for line in content.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() >= 10 && f[3] == TCP_LISTEN {
                    if let Ok(inode) = f[9].parse::<u64>() {
                        listening.insert(inode);
                    }
                }
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|target| {
                let t = target.to_string_lossy().into_owned();
                t.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|inode| listening.contains(&inode))
    })
}

pub fn listeners_on(port: u16) -> Vec<PortHolder> {
    let mut listeners = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(content) = std::fs::read_to_string(table) {
            listeners.extend(parse_listeners(&content, port));
        }
    }
    if listeners.is_empty() {
        return Vec::new();
    }
    listeners.sort_by_key(|l| l.inode);
    listeners.dedup_by_key(|l| l.inode);
    let owners = socket_owners(&listeners.iter().map(|l| l.inode).collect::<Vec<_>>());
    let mut holders = Vec::new();
    for l in &listeners {
        let pids: Vec<i32> = owners
            .iter()
            .filter(|(_, inode)| *inode == l.inode)
            .map(|(pid, _)| *pid)
            .collect();
        if pids.is_empty() {
            holders.push(PortHolder {
                pid: None,
                command: None,
                inode: l.inode,
                uid: Some(l.uid),
            });
        }
        for pid in pids {
            holders.push(PortHolder {
                pid: Some(pid),
                command: process::cmdline(pid),
                inode: l.inode,
                uid: Some(l.uid),
            });
        }
    }
    holders.sort_by_key(|h| (h.pid.is_none(), h.pid));
    holders.dedup();
    holders
}

/// Whether `pid` holds every listening socket on `port` (and there is one).
/// Reads the socket tables and `pid`'s own descriptors only, not every
/// process's: the cheap answer for "is it this home's proxy that holds the
/// port" ([`listeners_on`] names any holder, at the cost of a scan of `/proc`).
pub fn only_held_by(port: u16, pid: i32) -> bool {
    let mut listeners = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(content) = std::fs::read_to_string(table) {
            listeners.extend(parse_listeners(&content, port));
        }
    }
    if listeners.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let held: std::collections::HashSet<u64> = fds
        .flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .collect();
    listeners.iter().all(|l| held.contains(&l.inode))
}

/// (PID, inode) for every fd of every visible process that is one of `inodes`.
fn socket_owners(inodes: &[u64]) -> Vec<(i32, u64)> {
    let mut owners = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // Unreadable (another user's process) or gone: skip.
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(inode) = inode.filter(|i| inodes.contains(i)) {
                owners.push((pid, inode));
            }
        }
    }
    owners
}

/// Whether a listener could bind `addr` right now (the probe socket is closed at once).
pub fn is_free(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, TcpStream};

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 55501 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F40 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 55502 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn a_process_with_a_listener_holds_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(holds_listener(std::process::id() as i32));
        drop(listener);
    }

    #[test]
    fn only_the_process_holding_the_listener_holds_the_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(only_held_by(port, std::process::id() as i32));
        // PID 1 (init) does not hold a socket of this test.
        assert!(!only_held_by(port, 1));
        drop(listener);
        assert!(!only_held_by(port, std::process::id() as i32), "none left");
    }

    #[test]
    fn parses_only_listening_sockets_on_the_port() {
        assert_eq!(
            parse_listeners(TABLE, 8000),
            vec![Listener {
                inode: 55501,
                uid: 1000
            }]
        );
        assert_eq!(
            parse_listeners(TABLE, 80),
            vec![Listener { inode: 777, uid: 0 }]
        );
        assert!(parse_listeners(TABLE, 50000).is_empty());
        let v6 = "header\n 0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 99 1\n";
        assert_eq!(
            parse_listeners(v6, 8080),
            vec![Listener {
                inode: 99,
                uid: 1000
            }]
        );
    }

    #[test]
    fn finds_our_own_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let holder = listener_on(port).expect("our listener is found");
        assert_eq!(holder.pid, Some(std::process::id() as i32));
        assert!(holder.inode > 0);
        let exe = std::env::current_exe().unwrap();
        let exe_name = exe.file_name().unwrap().to_str().unwrap();
        let cmd = holder.command.clone().unwrap();
        assert!(cmd.contains(exe_name), "{cmd}");
        assert_eq!(
            holder.to_string(),
            format!("PID {} ({cmd})", std::process::id())
        );
        assert!(!is_free(listener.local_addr().unwrap()));

        // The client end of a connection on another port is not a listener.
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(listener_on(client.local_addr().unwrap().port()), None);
    }

    #[test]
    fn finds_an_ipv6_listener() {
        let Ok(listener) = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) else {
            eprintln!("no IPv6 loopback here; skipping");
            return;
        };
        let port = listener.local_addr().unwrap().port();
        let holder = listener_on(port).expect("our IPv6 listener is found");
        assert_eq!(holder.pid, Some(std::process::id() as i32));
    }

    #[test]
    fn a_port_nobody_listens_on() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // The probe listener is closed: nothing listens there any more.
        assert_eq!(listener_on(addr.port()), None);
        assert!(listeners_on(addr.port()).is_empty());
        assert!(is_free(addr));
    }

    #[test]
    fn unknown_holders_are_described_honestly() {
        let h = PortHolder {
            pid: None,
            command: None,
            inode: 1,
            uid: None,
        };
        assert_eq!(
            h.to_string(),
            "an unknown process (not visible to this user)"
        );
        let h = PortHolder { uid: Some(0), ..h };
        assert_eq!(
            h.to_string(),
            "an unknown process of UID 0 (not visible to this user)"
        );
    }
}
