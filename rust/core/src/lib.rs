//! qdispatch-core: the parts of qdispatch that need neither Python nor a network.
//!
//! * [`qobj`]: the QasmQobj wire format, and its validation against a backend's limits,
//!   run by the job service on every submitted payload before a job is accepted.
//! * [`assemble`]: writing circuits (read by the bindings) as QasmQobj JSON bytes.
//! * [`envelope`]: splitting a job-submission body into its small envelope and its
//!   (large) Qobj without parsing the Qobj twice.
//! * [`client`]: the HTTP client of the job service (pooled connections, retries with
//!   backoff, idempotent POSTs).
//! * [`stream`]: the one multiplexed event WebSocket per client, with resume by sequence
//!   number and a polling fallback.
//! * [`payload`]: the large payloads of the runtime JSON encoding: base64 of zlib, `.npy`
//!   framing, and counts of a primitive `BitArray`'s packed bits.
//! * [`results`]: counts of a qiskit Result dict in qiskit's bitstring form.
//! * [`rebuild`]: planning a worker's rebuild of a Qobj's circuits through Qiskit's C API.
//! * [`submit`]: many jobs submitted concurrently (the job manager's chunks).

pub mod assemble;
pub mod client;
pub mod envelope;
pub mod error;
pub mod payload;
pub mod qobj;
pub mod rebuild;
pub mod results;
pub mod stream;
pub mod submit;

pub use error::{ClientError, CoreError};
