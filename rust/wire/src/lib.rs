//! qdispatch-wire: the wire format of qdispatch, as pure logic over bytes.
//!
//! It needs neither Python nor a network: it links no HTTP client, no WebSocket and no
//! async runtime (those are in `qdispatch-client`), so the job service's Qobj validator
//! carries none of them.
//!
//! * [`qobj`]: the QasmQobj wire format, and its validation against a backend's limits,
//!   run by the job service on every submitted payload before a job is accepted.
//! * [`assemble`]: writing circuits (read by the bindings) as QasmQobj JSON bytes.
//! * [`envelope`]: splitting a job-submission body into its small envelope and its
//!   (large) Qobj without parsing the Qobj twice.
//! * [`payload`]: the large payloads of the runtime JSON encoding: base64 of zlib, `.npy`
//!   framing, and counts of a primitive `BitArray`'s packed bits.
//! * [`filter`]: the job-name filter of `GET /jobs`, a linear-time regular expression.
//! * [`results`]: counts of a qiskit Result dict in qiskit's bitstring form.
//! * [`rebuild`]: planning a worker's rebuild of a Qobj's circuits through Qiskit's C API.

pub mod assemble;
pub mod envelope;
pub mod error;
pub mod filter;
pub mod payload;
pub mod qobj;
pub mod rebuild;
pub mod results;

pub use error::WireError;
