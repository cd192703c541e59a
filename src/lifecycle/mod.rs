//! The proxy as a process: its locked PID file, how a process is identified and
//! signalled, starting/stopping/replacing it (the supervisor `daemon` and `watchdog`
//! share), the zero-downtime socket hand-off, who holds a port, systemd
//! notifications, and the watchdog loop.
//!
//! Everything that signals a process goes through [`process`], which verifies the
//! process's identity first: warden never signals a process it did not start.

pub mod handoff;
pub(crate) mod oplock;
pub mod pidfile;
pub mod ports;
pub mod process;
pub mod supervisor;
pub(crate) mod systemd;
pub mod watchdog;
