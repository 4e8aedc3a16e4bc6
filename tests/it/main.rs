//! Integration tests: the real `orchd` binary, real worker processes, real signals.
//! One test binary with modules (builds faster than one binary per file).

mod common;

mod control;
mod ctl;
mod docs;
mod harden_conns;
mod harden_loop;
mod misc;
mod packaging;
mod preflight;
mod protocols;
mod protocols_prep;

mod bulk_buffers;
mod check;
mod ctl_logs;
mod harden_config;
mod harden_logproc;
mod harden_reload;
mod health_config;
mod health_metrics;
mod readiness;
mod ready_probe;
mod reload;
mod routing;
mod smoke;
mod spawn;
mod status_ready;
mod supervisor;
mod window;
