//! One CLI process and everything it may start: spawned in its own process
//! group with a parent-death signal, reaped by a thread of its own, and the
//! whole group killed when the request ends, whichever way it ends.
//!
//! - Spawning happens on one long-lived thread ([`spawner`]): the parent-death
//!   signal (`PR_SET_PDEATHSIG`) fires when the *thread* that forked exits, so
//!   forking from a thread that lives as long as the process makes it mean
//!   "the proxy died" (SIGKILL included), never "a worker thread retired".
//! - The process group is only ever signalled while its leader has not been
//!   reaped (the reaper holds the lock from "the leader exited" to "reaped"),
//!   so its id cannot have been reused: warden never signals a process it did
//!   not start.
//! - When the leader exits, the rest of its group is killed at once, then the
//!   leader is reaped and the working directory removed.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

/// The processes a provider has running, so shutdown can end them all.
#[derive(Default, Clone)]
pub struct Registry {
    live: Arc<Mutex<HashMap<u32, Arc<GroupState>>>>,
}

impl Registry {
    /// Kills every process group still running (after the shutdown drain).
    pub fn kill_all(&self) -> usize {
        let groups: Vec<Arc<GroupState>> = match self.live.lock() {
            Ok(live) => live.values().cloned().collect(),
            Err(_) => return 0,
        };
        groups.iter().filter(|g| g.kill()).count()
    }
}

/// Shared by the request (which may kill) and the reaper (which reaps).
pub struct GroupState {
    pid: u32,
    /// True once the leader was reaped: its id may be reused from then on.
    reaped: Mutex<bool>,
}

impl GroupState {
    /// SIGKILL to the whole group, unless the leader was already reaped.
    /// Returns whether a signal was sent.
    fn kill(&self) -> bool {
        let Ok(reaped) = self.reaped.lock() else {
            return false;
        };
        if *reaped {
            return false;
        }
        // The leader is alive or a zombie we have not reaped: the group id is ours.
        killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL).is_ok()
    }
}

/// A running process group. Dropping it kills the group (the request is over).
pub struct Group {
    state: Arc<GroupState>,
    /// The leader's exit status, once reaped.
    pub exited: Option<tokio::sync::oneshot::Receiver<ExitStatus>>,
}

impl Group {
    pub fn pid(&self) -> u32 {
        self.state.pid
    }
    /// Kills the whole group now.
    pub fn kill(&self) {
        self.state.kill();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.state.kill();
    }
}

/// A spawn request for the spawner thread.
type SpawnJob = (Command, tokio::sync::oneshot::Sender<io::Result<Child>>);

/// The one thread that forks CLI processes (see the module documentation).
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        let started = std::thread::Builder::new()
            .name("warden-cli-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    if let Err(Ok(mut orphan)) = reply.send(command.spawn()) {
                        // The request went away while its process started:
                        // nobody will read it, so it does not run.
                        if let Ok(pid) = i32::try_from(orphan.id()) {
                            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                        }
                        let _ = orphan.wait();
                    }
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the thread that runs agent CLIs");
        }
        Mutex::new(tx)
    })
}

/// Spawns `command` in a new process group that dies with the proxy, and
/// starts its reaper. `workdir` is removed once the group is gone.
pub async fn spawn(
    mut command: Command,
    workdir: tempfile::TempDir,
    registry: &Registry,
) -> io::Result<(Child, Group)> {
    let parent = std::process::id();
    command.process_group(0);
    // SAFETY: the closure runs in the child between fork and exec; it only
    // calls async-signal-safe functions (prctl, getppid) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The proxy died between fork and prctl: do not run orphaned.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner()
        .lock()
        .map_err(|_| io::Error::other("the CLI spawner is unusable"))?
        .send((command, tx))
        .map_err(|_| io::Error::other("the CLI spawner thread is gone"))?;
    // From here to the end nothing awaits: the child is registered and has a
    // reaper before this future could be dropped.
    let child = rx
        .await
        .map_err(|_| io::Error::other("the CLI spawner thread is gone"))??;
    let state = Arc::new(GroupState {
        pid: child.id(),
        reaped: Mutex::new(false),
    });
    if let Ok(mut live) = registry.live.lock() {
        live.insert(state.pid, state.clone());
    }
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    let reaper_state = state.clone();
    let registry = registry.clone();
    let workdir_path: PathBuf = workdir.path().to_path_buf();
    let reaper = std::thread::Builder::new()
        .name("warden-cli-reaper".into())
        .spawn(move || {
            let status = reap(&reaper_state);
            if let Ok(mut live) = registry.live.lock() {
                live.remove(&reaper_state.pid);
            }
            if let Err(e) = workdir.close() {
                tracing::warn!(dir = %workdir_path.display(), error = %e,
                    "cannot remove the CLI's working directory");
            }
            if let Some(status) = status {
                let _ = exit_tx.send(status);
            }
        });
    if let Err(e) = reaper {
        // Without a reaper the process must not run at all.
        state.kill();
        return Err(e);
    }
    Ok((
        child,
        Group {
            state,
            exited: Some(exit_rx),
        },
    ))
}

/// Waits for the leader to exit (without reaping it), kills what is left of
/// its group, then reaps it.
fn reap(state: &GroupState) -> Option<ExitStatus> {
    let pid = Pid::from_raw(state.pid as i32);
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(pid = state.pid, error = %e, "cannot wait for the CLI");
                return None;
            }
        }
    }
    let Ok(mut reaped) = state.reaped.lock() else {
        return None;
    };
    // The leader is a zombie: the group id is still ours.
    let _ = killpg(pid, Signal::SIGKILL);
    let mut raw = 0;
    // SAFETY: waitpid on our own child, with a valid pointer to an int.
    let done = unsafe { libc::waitpid(state.pid as i32, &mut raw, 0) };
    *reaped = true;
    drop(reaped);
    (done == state.pid as i32).then(|| {
        use std::os::unix::process::ExitStatusExt;
        ExitStatus::from_raw(raw)
    })
}
