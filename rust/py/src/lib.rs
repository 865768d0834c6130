//! pyo3 bindings: `qdispatch._native`. Inputs are pulled into Rust values, the work runs
//! with the GIL released, and results are converted back; all logic lives in
//! `qdispatch-wire` and `qdispatch-client`. One tokio runtime serves the process (see `client` for fork safety).

use std::collections::{HashMap, HashSet};

mod capi;
mod client;
mod encoding;
mod filter;
mod rebuild;
mod results;

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use qdispatch_wire::assemble::QobjWriter;
use qdispatch_wire::{envelope, qobj, WireError};

create_exception!(
    qdispatch._native,
    MalformedPayloadError,
    PyValueError,
    "The payload is not JSON, or not JSON of the expected shape."
);
create_exception!(
    qdispatch._native,
    InvalidQobjError,
    PyValueError,
    "The Qobj is well-formed JSON but cannot run on the backend; the message says why."
);

create_exception!(
    qdispatch._native,
    PayloadError,
    PyValueError,
    "A payload of the runtime encoding does not decode (bad base64, zlib, .npy or bit-array \
     data); the message says which and why."
);

create_exception!(
    qdispatch._native,
    InvalidNamePatternError,
    PyValueError,
    "A job-name filter is not a valid pattern (Rust `regex` syntax), or is over the size \
     limits; the message says which."
);

struct NativeError(WireError);

impl From<WireError> for NativeError {
    fn from(err: WireError) -> Self {
        NativeError(err)
    }
}

impl From<NativeError> for PyErr {
    fn from(err: NativeError) -> PyErr {
        match err.0 {
            WireError::Json(msg) => MalformedPayloadError::new_err(msg),
            WireError::InvalidQobj(msg) => InvalidQobjError::new_err(msg),
            err @ (WireError::Base64(_)
            | WireError::Zlib(_)
            | WireError::Npy(_)
            | WireError::BitArray(_)
            | WireError::PayloadTooLarge(_)) => PayloadError::new_err(err.to_string()),
            WireError::Pattern(msg) => InvalidNamePatternError::new_err(msg),
        }
    }
}

/// What a backend accepts; built once per backend and reused for every submission.
#[pyclass(module = "qdispatch._native", frozen)]
struct BackendSpec(qobj::BackendSpec);

const LIMITS: qobj::Limits = qobj::Limits::DEFAULT;

#[pymethods]
impl BackendSpec {
    /// The keyword-only limits default to `qdispatch_wire::qobj::Limits::DEFAULT`
    /// (docs/service.md, "Limits").
    #[new]
    #[pyo3(signature = (
        name, n_qubits, max_shots, max_experiments, gates, coupling_map=None, *,
        max_memory_slots=LIMITS.max_memory_slots,
        max_instructions=LIMITS.max_instructions,
        max_header_bytes=LIMITS.max_header_bytes,
        max_name_bytes=LIMITS.max_name_bytes,
        max_params=LIMITS.max_params,
        max_register_slots=LIMITS.max_register_slots,
        max_qpy_bytes=LIMITS.max_qpy_bytes,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: String,
        n_qubits: u32,
        max_shots: u64,
        max_experiments: usize,
        gates: HashMap<String, (Option<u32>, Option<u32>)>,
        coupling_map: Option<Vec<(u32, u32)>>,
        max_memory_slots: u64,
        max_instructions: usize,
        max_header_bytes: usize,
        max_name_bytes: usize,
        max_params: usize,
        max_register_slots: u64,
        max_qpy_bytes: usize,
    ) -> Self {
        let gates = gates
            .into_iter()
            .map(|(name, (num_qubits, num_params))| {
                let spec = qobj::GateSpec {
                    num_qubits,
                    num_params,
                };
                (name, spec)
            })
            .collect();
        let coupling = coupling_map.map(|edges| edges.into_iter().collect::<HashSet<_>>());
        BackendSpec(qobj::BackendSpec {
            name,
            n_qubits,
            max_shots,
            max_experiments,
            gates,
            coupling,
            limits: qobj::Limits {
                max_memory_slots,
                max_instructions,
                max_header_bytes,
                max_name_bytes,
                max_params,
                max_register_slots,
                max_qpy_bytes,
            },
        })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.0.name
    }

    /// The size limits of a Qobj besides qubits, shots and experiments, by name.
    #[getter]
    fn limits(&self) -> HashMap<&'static str, u64> {
        let l = &self.0.limits;
        HashMap::from([
            ("max_memory_slots", l.max_memory_slots),
            ("max_instructions", l.max_instructions as u64),
            ("max_header_bytes", l.max_header_bytes as u64),
            ("max_name_bytes", l.max_name_bytes as u64),
            ("max_params", l.max_params as u64),
            ("max_register_slots", l.max_register_slots),
            ("max_qpy_bytes", l.max_qpy_bytes as u64),
        ])
    }

    fn __repr__(&self) -> String {
        format!(
            "BackendSpec(name={:?}, n_qubits={}, max_shots={}, max_experiments={}, {:?})",
            self.0.name, self.0.n_qubits, self.0.max_shots, self.0.max_experiments, self.0.limits
        )
    }
}

/// What the service needs to know of a valid Qobj.
#[pyclass(module = "qdispatch._native", frozen, get_all)]
struct QobjSummary {
    qobj_id: Option<String>,
    n_experiments: usize,
    shots: Option<u64>,
    n_instructions: usize,
    max_qubits: u32,
}

/// Validates a QasmQobj (JSON bytes) against a backend; raises `InvalidQobjError` or
/// `MalformedPayloadError` with a message naming the problem.
#[pyfunction]
fn validate_qobj(py: Python<'_>, qobj: &[u8], backend: &BackendSpec) -> PyResult<QobjSummary> {
    let summary = py
        .detach(|| qobj::validate(qobj, &backend.0))
        .map_err(NativeError)?;
    Ok(QobjSummary {
        qobj_id: summary.qobj_id,
        n_experiments: summary.n_experiments,
        shots: summary.shots,
        n_instructions: summary.n_instructions,
        max_qubits: summary.max_qubits,
    })
}

/// Splits a job-submission body into (envelope JSON without `qobj`, raw `qobj` bytes or None).
#[pyfunction]
fn split_submission<'py>(
    py: Python<'py>,
    body: &[u8],
) -> PyResult<(Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>)> {
    let split = py
        .detach(|| envelope::split_submission(body))
        .map_err(NativeError)?;
    let qobj = split.qobj.map(|q| PyBytes::new(py, &q));
    Ok((PyBytes::new(py, &split.envelope), qobj))
}

/// Splits the JSON object `body` into (the object without member `key`, the raw bytes of
/// that member or None); `what` names the object in the error for a body that is not one.
#[pyfunction]
#[pyo3(signature = (body, key, what = "body"))]
fn split_member<'py>(
    py: Python<'py>,
    body: &[u8],
    key: &str,
    what: &str,
) -> PyResult<(Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>)> {
    let (rest, member) = py
        .detach(|| envelope::split_member(body, key, what))
        .map_err(NativeError)?;
    let member = member.map(|m| PyBytes::new(py, &m));
    Ok((PyBytes::new(py, &rest), member))
}

/// Whether circuits are read through Qiskit's C API: the installed qiskit exports it, at
/// a version whose function table this module knows. Otherwise every circuit goes through
/// the Python path of `qdispatch.assembler`.
#[pyfunction]
fn capi_available(py: Python<'_>) -> bool {
    capi::api(py).is_some()
}

/// The buffer of the last `circuits_to_qobj_json`, kept for the next one when at most
/// [`KEPT_BUFFER`] bytes: writing into pages already mapped saves a page fault (and the
/// kernel zeroing a page) every 4 KiB of output.
static BUFFER: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
const KEPT_BUFFER: usize = 64 << 20;

/// The QasmQobj JSON bytes of `circuits` (a list of `QuantumCircuit`).
///
/// `config` holds the run options (shots, memory, ...); `memory_slots` and `n_qubits` are
/// computed and appended. `header` is the Qobj header. Circuits are read through the C API
/// where it can represent them, else through `qdispatch.assembler` (per circuit), and
/// written as they are read, straight into one buffer.
#[pyfunction]
fn circuits_to_qobj_json<'py>(
    py: Python<'py>,
    circuits: Vec<Bound<'py, PyAny>>,
    config: &Bound<'py, PyDict>,
    qobj_id: &Bound<'py, PyString>,
    header: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyBytes>> {
    let api = capi::api(py);
    let config_json = capi::dumps(py, config.as_any())?;
    let header_json = capi::dumps(py, header.as_any())?;
    let mut buf = std::mem::take(&mut *BUFFER.lock().unwrap_or_else(|e| e.into_inner()));
    // Measured: ~50 bytes an instruction, ~400 of header (5-qubit random circuits); the
    // writer reserves more per circuit as it goes.
    buf.reserve(circuits.len() * 2560);
    let mut writer = QobjWriter::with_buffer(buf, qobj_id.to_str()?, &header_json, &config_json);
    let mut scratch = capi::Scratch::default();
    for circuit in &circuits {
        capi::write_circuit(py, api, &mut scratch, circuit, &mut writer)?;
    }
    let out = writer.finish();
    let bytes = PyBytes::new(py, out.bytes());
    let buf = out.into_buffer();
    if buf.capacity() <= KEPT_BUFFER {
        *BUFFER.lock().unwrap_or_else(|e| e.into_inner()) = buf;
    }
    Ok(bytes)
}

#[pymodule]
mod _native {
    #[pymodule_export]
    use super::{
        capi_available, circuits_to_qobj_json, split_member, split_submission, validate_qobj,
        BackendSpec, InvalidNamePatternError, InvalidQobjError, MalformedPayloadError,
        PayloadError, QobjSummary,
    };

    /// The default `max_bytes` of `unpack_payload`, `decode_ndarray` and the bit-array
    /// counts: 256 MiB (docs/service.md, "Limits").
    #[pymodule_export]
    const DEFAULT_MAX_PAYLOAD_BYTES: usize = super::encoding::DEFAULT_MAX_PAYLOAD_BYTES;

    /// The longest job-name pattern `NamePattern` compiles, in bytes.
    #[pymodule_export]
    const MAX_NAME_PATTERN_BYTES: usize = qdispatch_wire::filter::MAX_PATTERN_LEN;

    #[pymodule_export]
    use super::filter::NamePattern;

    #[pymodule_export]
    use super::rebuild::qobj_to_circuits;

    #[pymodule_export]
    use super::results::ResultOutline;

    #[pymodule_export]
    use super::encoding::{
        bitarray_counts, bitarray_counts_by_position, bitarray_int_counts, decode_ndarray,
        encode_ndarray, pack_payload, unpack_payload,
    };

    #[pymodule_export]
    use super::client::{
        counts_from_result, ApiError, Client, ConnectionFailedError, StreamTimeoutError,
    };

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        super::client::init_exceptions(m.py())
    }
}
