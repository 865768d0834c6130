//! The heavy parts of `qdispatch.encoding`: base64/zlib payloads, `.npy` framing and
//! `BitArray` counts, each run with the GIL released (`qdispatch_wire::payload`).

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyInt, PyString, PyTuple};
use qdispatch_wire::payload::{self, NpyHeader, OutcomeCounts};

use crate::NativeError;

/// The default `max_bytes` of every decode: what one payload may decode to.
pub(crate) const DEFAULT_MAX_PAYLOAD_BYTES: usize = payload::DEFAULT_MAX_PAYLOAD_BYTES;

/// base64 of the zlib stream of `data`.
#[pyfunction]
pub(crate) fn pack_payload(py: Python<'_>, data: &[u8]) -> PyResult<String> {
    Ok(py.detach(|| payload::pack(&[data])).map_err(NativeError)?)
}

/// The bytes of a `pack_payload` string; `PayloadError` on bad base64 or zlib, or when
/// they would be more than `max_bytes` (checked before they are made).
#[pyfunction]
#[pyo3(signature = (value, *, max_bytes = DEFAULT_MAX_PAYLOAD_BYTES))]
pub(crate) fn unpack_payload<'py>(
    py: Python<'py>,
    value: &str,
    max_bytes: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let data = py
        .detach(|| payload::unpack(value, max_bytes))
        .map_err(NativeError)?;
    Ok(PyBytes::new(py, &data))
}

/// base64 of the zlib-compressed `.npy` file of an array given as its dtype descr (a
/// numpy type string), shape, order and raw data (`tobytes` in that order).
#[pyfunction]
pub(crate) fn encode_ndarray(
    py: Python<'_>,
    descr: String,
    shape: Vec<u64>,
    fortran_order: bool,
    data: &[u8],
) -> PyResult<String> {
    let header = NpyHeader {
        descr,
        fortran_order,
        shape,
    };
    Ok(py
        .detach(|| payload::encode_ndarray(&header, data))
        .map_err(NativeError)?)
}

/// An `encode_ndarray` string as `(descr, shape, fortran_order, data)`; `data` is a fresh
/// (writable) bytearray. A structured dtype's descr is its field list's Python literal.
/// The `.npy` file may be at most `max_bytes`: its header's shape is checked against it
/// before the data is inflated, and the data must be exactly what the shape needs.
#[pyfunction]
#[pyo3(signature = (value, *, max_bytes = DEFAULT_MAX_PAYLOAD_BYTES))]
pub(crate) fn decode_ndarray<'py>(
    py: Python<'py>,
    value: &str,
    max_bytes: usize,
) -> PyResult<(String, Bound<'py, PyTuple>, bool, Bound<'py, PyByteArray>)> {
    let (header, file, offset) = py
        .detach(|| payload::decode_ndarray(value, max_bytes))
        .map_err(NativeError)?;
    let shape = PyTuple::new(py, header.shape)?;
    let data = PyByteArray::new(py, &file[offset..]);
    Ok((header.descr, shape, header.fortran_order, data))
}

fn count(
    py: Python<'_>,
    data: &[u8],
    num_bits: usize,
    groups: usize,
    max_bytes: usize,
) -> PyResult<OutcomeCounts> {
    Ok(py
        .detach(|| payload::count_outcomes(data, num_bits, groups, max_bytes))
        .map_err(NativeError)?)
}

/// Each distinct outcome as a bitstring, made once and shared by every dict holding it.
fn bitstrings<'py>(py: Python<'py>, table: &OutcomeCounts) -> Vec<Bound<'py, PyString>> {
    (0..table.num_outcomes())
        .map(|i| PyString::new(py, &table.bitstring(i)))
        .collect()
}

fn group_dict<'py>(
    py: Python<'py>,
    pairs: &[(u32, u64)],
    keys: &[Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for &(k, n) in pairs {
        dict.set_item(&keys[k as usize], n)?;
    }
    Ok(dict)
}

/// The counts of a `BitArray`'s packed bytes (C order, shape `(*shape, num_shots,
/// num_bytes)`) over all its positions, as `BitArray.get_counts()` gives them. The
/// distinct outcomes' bitstrings may take at most `max_bytes`.
#[pyfunction]
#[pyo3(signature = (data, num_bits, *, max_bytes = DEFAULT_MAX_PAYLOAD_BYTES))]
pub(crate) fn bitarray_counts<'py>(
    py: Python<'py>,
    data: &[u8],
    num_bits: usize,
    max_bytes: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let table = count(py, data, num_bits, 1, max_bytes)?;
    let keys: Vec<_> = bitstrings(py, &table)
        .into_iter()
        .map(|s| s.into_any())
        .collect();
    group_dict(py, &table.groups[0], &keys)
}

/// The counts of each of a `BitArray`'s `num_positions` positions (its shape's size, in
/// C order), as `BitArray.get_counts(loc)` gives them; bitstrings and positions are
/// held to `max_bytes`.
#[pyfunction]
#[pyo3(signature = (data, num_bits, num_positions, *, max_bytes = DEFAULT_MAX_PAYLOAD_BYTES))]
pub(crate) fn bitarray_counts_by_position<'py>(
    py: Python<'py>,
    data: &[u8],
    num_bits: usize,
    num_positions: usize,
    max_bytes: usize,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let table = count(py, data, num_bits, num_positions, max_bytes)?;
    let keys: Vec<_> = bitstrings(py, &table)
        .into_iter()
        .map(|s| s.into_any())
        .collect();
    table
        .groups
        .iter()
        .map(|pairs| group_dict(py, pairs, &keys))
        .collect()
}

/// The counts of a `BitArray`'s packed bytes over all its positions, keyed by integer
/// outcome, as `BitArray.get_int_counts()` gives them (outcomes held to `max_bytes`).
#[pyfunction]
#[pyo3(signature = (data, num_bits, *, max_bytes = DEFAULT_MAX_PAYLOAD_BYTES))]
pub(crate) fn bitarray_int_counts<'py>(
    py: Python<'py>,
    data: &[u8],
    num_bits: usize,
    max_bytes: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let table = count(py, data, num_bits, 1, max_bytes)?;
    let from_bytes = py.get_type::<PyInt>().getattr("from_bytes")?;
    let keys = (0..table.num_outcomes())
        .map(|i| match table.outcome_u64(i) {
            Some(value) => Ok(value.into_pyobject(py)?.into_any()),
            // Wider outcomes: Python's int reads the big-endian bytes.
            None => from_bytes.call1((PyBytes::new(py, table.outcome_bytes(i)), "big")),
        })
        .collect::<PyResult<Vec<_>>>()?;
    group_dict(py, &table.groups[0], &keys)
}
