//! The event store's HTTP side. For now the operations endpoints on the store's `listen`
//! address: `/metrics` (Prometheus text: storage and per-source pull figures) and `/healthz`.
//! Not here: storage (sluice-store), pulling (sluice-pull).

pub mod metrics;
pub mod ops;
