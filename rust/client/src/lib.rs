//! qdispatch-client: the network side of qdispatch, the client of the job service.
//!
//! It needs no Python (the bindings wrap it) and knows nothing of the Qobj or the runtime
//! encoding: requests and responses are opaque bytes here (the wire format is
//! `qdispatch-wire`, which this crate does not depend on). It links reqwest, tokio,
//! tokio-tungstenite and rustls (with the `ring` provider).
//!
//! * [`client`]: the HTTP client of the job service (pooled connections, retries with
//!   backoff, idempotent POSTs).
//! * [`stream`]: the one multiplexed event WebSocket per client, with resume by sequence
//!   number and a polling fallback.
//! * [`submit`]: many jobs submitted concurrently (the job manager's chunks).
//! * [`tls`]: the one TLS configuration of `https://` and `wss://`, and TLS errors.

pub mod client;
pub mod error;
pub mod stream;
pub mod submit;
pub mod tls;

pub use error::ClientError;
