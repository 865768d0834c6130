//! The large payloads of the runtime JSON encoding (docs/runtime.md), one concern per
//! module; the functions are re-exported here, where the bindings use them.
//!
//! * [`zlib`] ([`pack`]/[`unpack`]): bytes as base64 of their zlib stream, the form of
//!   every binary value (`.npy` files of arrays, QPY of circuits).
//! * [`npy`] ([`encode_ndarray`]/[`decode_ndarray`]): `.npy` framing (format versions 1.0
//!   to 3.0) around an array's raw data; the header dict is parsed here, strictly.
//! * [`bitarray`] ([`count_outcomes`]): the counts of a primitive `BitArray`'s packed bits,
//!   as qiskit's `BitArray.get_counts` gives them.

pub mod bitarray;
pub mod npy;
pub mod zlib;

pub use bitarray::{count_outcomes, OutcomeCounts};
pub use npy::{decode_ndarray, encode_ndarray, npy_preamble, parse_npy, NpyHeader};
pub use zlib::{max_base64_len, pack, unpack, zlib_bound, DEFAULT_MAX_PAYLOAD_BYTES};
