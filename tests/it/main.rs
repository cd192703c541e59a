//! Integration tests: the real binaries over real loopback sockets, each test
//! with its own temporary home and port 0, so they run in parallel.
//! One test crate (with modules) keeps link time down.

mod support;

mod clients;
mod completions;
mod daemon;
mod doctor;
mod home_only;
mod preflight;
mod prompts;
mod proxy;
mod responses;
mod safety_doc;
mod systemd;
mod watchdog;
