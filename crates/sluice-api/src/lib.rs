//! The event store's HTTP side (SPEC §3 Query and Access), on the store's `listen` address: the
//! query API (`POST /api/sql`, `GET /api/search`, `GET /api/tail`, `GET /api/sources`,
//! `POST /api/admin/flush`) behind `Bearer` tokens with roles, and the operations endpoints
//! `/metrics` and `/healthz`, and the web page at `/`, over HTTP/1.1, with TLS when the store
//! listens off loopback.
//!
//! Not here: the queries, masking and tail (sluice-sql), storage (sluice-store), pulling
//! (sluice-pull). The README's "HTTP API" section is the reference for clients.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod format;
pub mod metrics;
pub mod ops;
pub mod serve;
pub mod tokens;
pub mod web;

pub use api::{Api, ApiBody, ApiError, SQL_BODY_BYTES_MAX, TAILS_MAX, TAIL_KEEPALIVE_DEFAULT};
pub use format::Format;
pub use serve::{serve, tls_server_config, ApiTlsError};
pub use tokens::{Caller, Role, Roles, TokenError, TokenSet, Tokens};
// For the binary, which builds the engine the API runs on.
pub use sluice_sql::{Engine, EngineConfig};
