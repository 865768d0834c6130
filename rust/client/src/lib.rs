//! qdispatch-client: the network side of qdispatch, the client of the job service.
//!
//! It needs no Python (the bindings wrap it) and knows nothing of the Qobj or the runtime
//! encoding: requests and responses are opaque bytes here (the wire format is
//! `qdispatch-wire`, which this crate does not depend on). It links reqwest (plain HTTP,
//! no TLS), tokio and tokio-tungstenite.
//!
//! * [`client`]: the HTTP client of the job service (pooled connections, retries with
//!   backoff, idempotent POSTs).
//! * [`stream`]: the one multiplexed event WebSocket per client, with resume by sequence
//!   number and a polling fallback.
//! * [`submit`]: many jobs submitted concurrently (the job manager's chunks).

pub mod client;
pub mod error;
pub mod stream;
pub mod submit;

pub use error::ClientError;
