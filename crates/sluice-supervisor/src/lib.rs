//! `sluice supervise`: runs a child, captures its stdout/stderr into the chunk log, serves the
//! chunks over mutually-authenticated HTTPS and exposes `/metrics` and `/healthz` on a plain
//! loopback listener. Does not parse configuration files or print: the binary does that.

pub mod capture;
pub mod child;
pub mod metrics;
pub mod ops;
pub mod serve;
pub mod supervise;
