//! Zero-downtime restart: handing the listening socket to a successor.
//!
//! nginx's binary upgrade is the model. The running proxy serves a small control
//! socket (`run/proxy-<PID>.sock`, mode 0600, same user only). `daemon restart`
//! asks it for the listening socket, which comes back over `SCM_RIGHTS`; the new
//! proxy is started with that socket as an inherited descriptor, so the kernel's
//! accept queue is shared and never closed. Only once the new process is serving
//! (it then takes over `run/proxy.pid`) is the old one told to drain. At no point
//! is the port unbound, so no connection is refused.
//!
//! The same inheritance path also accepts systemd socket activation
//! (`LISTEN_FDS=1`, `LISTEN_PID`).

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::home::Home;
use crate::lifecycle::pidfile::PidFileError;

/// The descriptor number of an inherited listener (set by `daemon restart`).
pub const LISTEN_FD_VAR: &str = "WARDEN_LISTEN_FD";
/// Set when the new process takes over from a running predecessor.
pub const HANDOFF_VAR: &str = "WARDEN_HANDOFF";
/// The descriptor a successor receives the listener on (systemd's first fd).
pub const INHERITED_FD: RawFd = 3;

const REQUEST: &[u8] = b"listener\n";
/// Asks a proxy to take `run/proxy.pid` back (its successor died after taking it).
const RECLAIM: &[u8] = b"reclaim\n";
/// Asks a proxy to reload its configuration (`daemon reload`).
const RELOAD: &[u8] = b"reload\n";
/// The longest answer to a reload that is read (a message naming file, key, line).
const MAX_RELOAD_ANSWER: u64 = 64 * 1024;
/// How long `daemon reload` waits for the proxy's answer.
const RELOAD_WAIT: Duration = Duration::from_secs(30);
/// The longest request line a control socket reads.
const MAX_REQUEST: usize = 32;

/// What a proxy does when asked to take its PID file back: `Ok(what happened)`
/// or `Err(why not)`.
pub type Reclaim = std::sync::Arc<dyn Fn() -> Result<String, ReclaimError> + Send + Sync>;

/// What a proxy does when asked to reload: `(exit code, message)` — 0 applied,
/// 1 applied but some settings need a restart, 2 refused (see
/// `gateway::reload`).
pub type Reload = std::sync::Arc<dyn Fn() -> (i32, String) + Send + Sync>;

/// What a proxy answers on its control socket besides handing over its socket.
#[derive(Clone)]
pub struct Requests {
    pub reclaim: Reclaim,
    pub reload: Reload,
}

/// Why a proxy refuses to take its PID file back (sent to the asker as text).
#[derive(Debug, thiserror::Error)]
pub enum ReclaimError {
    #[error("this proxy is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    PidFile(#[from] PidFileError),
}

/// Why talking to another proxy's control socket failed; each names the socket.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("cannot reach the control socket {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("control socket {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} sent no socket", path.display())]
    NoSocket { path: PathBuf },
    #[error("{} gave no answer (a proxy older than this toolkit?)", path.display())]
    NoAnswer { path: PathBuf },
    /// The proxy answered no, with its own reason.
    #[error("{why}")]
    Refused { path: PathBuf, why: String },
    /// The blocking task talking to the socket panicked or was cancelled.
    #[error("the request to the control socket {} did not finish: {source}", path.display())]
    Task {
        path: PathBuf,
        source: tokio::task::JoinError,
    },
}

/// The control socket of the proxy with this PID.
pub fn control_socket_path(home: &Home, pid: i32) -> PathBuf {
    home.run_dir().join(format!("proxy-{pid}.sock"))
}

/// Removes control sockets that nobody listens on any more (left behind by a
/// proxy that was killed). A socket that accepts a connection is live and kept;
/// only our own `proxy-<PID>.sock` names are considered.
pub fn remove_stale_control_sockets(home: &Home) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(home.run_dir()) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_ours = name
            .strip_prefix("proxy-")
            .and_then(|rest| rest.strip_suffix(".sock"))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if !is_ours {
            continue;
        }
        let path = entry.path();
        if let Err(e) = UnixStream::connect(&path) {
            if e.kind() == std::io::ErrorKind::ConnectionRefused
                && std::fs::remove_file(&path).is_ok()
            {
                removed.push(path);
            }
        }
    }
    removed
}

/// A listening socket passed in by `daemon restart` or by systemd, if any.
pub fn inherited_listener() -> std::io::Result<Option<std::net::TcpListener>> {
    let fd = if let Ok(value) = std::env::var(LISTEN_FD_VAR) {
        let fd = value.trim().parse::<RawFd>().ok().filter(|fd| *fd >= 0);
        Some(fd.ok_or_else(|| {
            std::io::Error::other(format!(
                "{LISTEN_FD_VAR}={value:?} is not a descriptor number (expected an integer >= 0)"
            ))
        })?)
    } else {
        let for_us = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            == Some(std::process::id());
        let count = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.trim().parse::<u32>().ok());
        (for_us && count >= Some(1)).then_some(INHERITED_FD)
    };
    let Some(fd) = fd else { return Ok(None) };
    // Refuse anything that is not a listening TCP socket rather than serving on it.
    // SAFETY: `fd` is not negative (checked above; `borrow_raw(-1)` would panic),
    // and the borrow lives only for this call, during which nothing closes it. A
    // number that is not an open descriptor makes getsockopt fail with EBADF.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let listening = nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::AcceptConn)
        .map_err(|e| {
            std::io::Error::other(format!("inherited descriptor {fd} is not a socket: {e}"))
        })?;
    if !listening {
        return Err(std::io::Error::other(format!(
            "inherited descriptor {fd} is not a listening socket"
        )));
    }
    // SAFETY: the descriptor was handed to this process for exactly this use and
    // was checked above to be a listening socket; nothing else owns it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(std::io::Error::other)?;
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

/// Serves the control socket until dropped; removes its file on drop.
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts answering requests on `run/proxy-<our PID>.sock`: the listening socket
/// for a successor, "take your PID file back" after a failed hand-off, and
/// "reload your configuration".
pub fn serve_control(
    home: &Home,
    listener_fd: RawFd,
    requests: Requests,
) -> std::io::Result<ControlSocket> {
    use std::os::unix::fs::PermissionsExt;
    let path = control_socket_path(home, std::process::id() as i32);
    // A file at our own PID-named path can only be a leftover of a dead process
    // that had our PID; it is ours to replace.
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let Ok(stream) = stream.into_std() else {
                continue;
            };
            let requests = requests.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = answer(stream, listener_fd, &requests) {
                    tracing::warn!(error = %e, "control socket request failed");
                }
            });
        }
    });
    Ok(ControlSocket { path, task })
}

/// Reads one request line (bounded by [`MAX_REQUEST`]). Empty when the asker
/// closed before sending anything: a probe, such as the sweep for stale control
/// sockets (`remove_stale_control_sockets`) connecting to see who listens.
fn read_request(stream: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while request.len() < MAX_REQUEST {
        if stream.read(&mut byte)? == 0 {
            if request.is_empty() {
                return Ok(request);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the asker closed the connection in the middle of a request",
            ));
        }
        request.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    Ok(request)
}

fn answer(mut stream: UnixStream, listener_fd: RawFd, requests: &Requests) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let request = read_request(&mut stream)?;
    if request.is_empty() {
        return Ok(()); // a probe: someone checked that this proxy listens
    }
    if request == RELOAD {
        let (code, message) = (requests.reload)();
        return stream.write_all(format!("{code} {message}").as_bytes());
    }
    if request == RECLAIM {
        let reply = match (requests.reclaim)() {
            Ok(what) => format!("ok {what}"),
            Err(why) => format!("no {why}"),
        };
        tracing::info!(reply = %reply, "asked to take run/proxy.pid back");
        return stream.write_all(reply.as_bytes());
    }
    if request != REQUEST {
        return Err(std::io::Error::other("unknown control request"));
    }
    let fds = [listener_fd];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(b"1")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(std::io::Error::other)?;
    tracing::info!("listening socket handed to a successor");
    Ok(())
}

/// Connects to the control socket at `path` and sends `request`.
fn ask(path: &Path, request: &[u8]) -> Result<UnixStream, HandoffError> {
    let mut stream = UnixStream::connect(path).map_err(|source| HandoffError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| stream.write_all(request))
        .map_err(|source| HandoffError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(stream)
}

/// Asks the proxy behind `path` to take `run/proxy.pid` back; `Ok` with what it
/// did, `Err` with why it did not (or could not be asked).
pub fn request_reclaim(path: &Path) -> Result<String, HandoffError> {
    let mut stream = ask(path, RECLAIM)?;
    let mut reply = String::new();
    (&mut stream)
        .take(1024)
        .read_to_string(&mut reply)
        .map_err(|source| HandoffError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    match reply.split_once(' ') {
        Some(("ok", what)) => Ok(what.to_string()),
        Some(("no", why)) => Err(HandoffError::Refused {
            path: path.to_path_buf(),
            why: why.to_string(),
        }),
        _ => Err(HandoffError::NoAnswer {
            path: path.to_path_buf(),
        }),
    }
}

/// Asks the proxy behind `path` to reload its configuration; `Ok((code,
/// message))` with its answer (see [`Reload`]).
pub fn request_reload(path: &Path) -> Result<(i32, String), HandoffError> {
    let mut stream = ask(path, RELOAD)?;
    let io = |source| HandoffError::Io {
        path: path.to_path_buf(),
        source,
    };
    stream.set_read_timeout(Some(RELOAD_WAIT)).map_err(io)?;
    let mut reply = String::new();
    (&mut stream)
        .take(MAX_RELOAD_ANSWER)
        .read_to_string(&mut reply)
        .map_err(io)?;
    reply
        .split_once(' ')
        .and_then(|(code, message)| Some((code.parse().ok()?, message.to_string())))
        .ok_or_else(|| HandoffError::NoAnswer {
            path: path.to_path_buf(),
        })
}

/// Asks the proxy behind `path` for its listening socket.
pub fn fetch_listener(path: &Path) -> Result<OwnedFd, HandoffError> {
    let stream = ask(path, REQUEST)?;
    let io_error = |e: nix::Error| HandoffError::Io {
        path: path.to_path_buf(),
        source: io::Error::from(e),
    };
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io_error)?;
    for cmsg in msg.cmsgs().map_err(io_error)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(HandoffError::NoSocket {
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_control_sockets_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        std::fs::create_dir_all(home.run_dir()).unwrap();
        let live_path = home.run_dir().join("proxy-111.sock");
        let _live = std::os::unix::net::UnixListener::bind(&live_path).unwrap();
        let dead_path = home.run_dir().join("proxy-222.sock");
        drop(std::os::unix::net::UnixListener::bind(&dead_path).unwrap());
        let other = home.run_dir().join("other.sock");
        drop(std::os::unix::net::UnixListener::bind(&other).unwrap());
        assert_eq!(remove_stale_control_sockets(&home), vec![dead_path.clone()]);
        assert!(live_path.exists() && !dead_path.exists() && other.exists());
    }

    fn refusing_requests() -> Requests {
        Requests {
            reclaim: std::sync::Arc::new(|| Err(ReclaimError::ShuttingDown)),
            reload: std::sync::Arc::new(|| (2, "refused".to_string())),
        }
    }

    /// The sweep for stale sockets connects and closes: no request, no failure
    /// (which the proxy would log as a warning an operator has no reason for).
    #[test]
    fn a_connection_closed_without_a_request_is_a_probe_not_a_failure() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        answer(ours, -1, &refusing_requests()).expect("a probe is answered with nothing");
    }

    #[test]
    fn a_request_cut_short_is_a_failure_and_a_whole_one_is_answered() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(&RECLAIM[..3]).unwrap();
        drop(theirs);
        let err = answer(ours, -1, &refusing_requests()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");

        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(RECLAIM).unwrap();
        answer(ours, -1, &refusing_requests()).unwrap();
        let mut reply = String::new();
        theirs.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "no this proxy is shutting down");
    }
}
