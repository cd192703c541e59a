//! The operator tools: [`preflight`] (gated checks before a start, for people,
//! cron and CI) and [`doctor`] (diagnose a home and fix what is safe to fix).

pub mod doctor;
pub mod preflight;
