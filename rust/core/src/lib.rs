//! qdispatch-core: the parts of qdispatch that need neither Python nor a network.
//!
//! * [`qobj`]: the QasmQobj wire format, and its validation against a backend's limits,
//!   run by the job service on every submitted payload before a job is accepted.
//! * [`assemble`]: writing circuits (read by the bindings) as QasmQobj JSON bytes.
//! * [`envelope`]: splitting a job-submission body into its small envelope and its
//!   (large) Qobj without parsing the Qobj twice.

pub mod assemble;
pub mod envelope;
pub mod error;
pub mod qobj;

pub use error::CoreError;
