//! Reading circuits through Qiskit's C API, exported to other extensions as the capsules
//! `qiskit._accelerate.capi.QK_FFI_CIRCUIT` and `QK_FFI_QI` (tables of function pointers).
//!
//! Only the handful of functions the Qobj writer needs are bound, by hand, from the slot
//! layout in `qiskit/capi/include/qiskit/funcs_py_generated.h` of qiskit 2.6. The table is
//! append-only within a major version, so any qiskit 2.x with x >= 6 is accepted; any other
//! version (or a qiskit without the capsule) makes [`api`] return `None`, and every circuit
//! then goes through the Python path.
//!
//! Everything here runs attached to the interpreter: the `QkCircuit` pointers are borrowed
//! from Python objects, which the GIL keeps alive and unmutated while we read them.

use std::ffi::{c_char, c_void, CStr};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyType};
use pyo3::{ffi, intern};
use qdispatch_wire::assemble::{ExperimentHeader, Param, QobjWriter};
use qdispatch_wire::rebuild::STANDARD_GATES;

/// Opaque `QkCircuit`.
#[repr(C)]
pub struct QkCircuit {
    _private: [u8; 0],
}
/// Opaque `QkQuantumRegister` / `QkClassicalRegister`.
#[repr(C)]
pub struct QkRegister {
    _private: [u8; 0],
}
/// Opaque `QkParam`; its size is only known at run time (`qk_param_stride`).
#[repr(C)]
pub struct QkParam {
    _private: [u8; 0],
}

/// `QkCircuitInstructionView`: pointers borrowed from the circuit; `name` is not
/// nul-terminated.
#[repr(C)]
struct InstructionView {
    name: *const u8,
    qubits: *const u32,
    clbits: *const u32,
    params: *const QkParam,
    name_len: usize,
    num_qubits: u32,
    num_clbits: u32,
    num_params: usize,
}

// `QkOperationKind`, `QkParamKind` and `QkDelayUnit` are `uint8_t` in the C ABI.
const KIND_GATE: u8 = 0;
const KIND_BARRIER: u8 = 1;
const KIND_DELAY: u8 = 2;
const KIND_MEASURE: u8 = 3;
const KIND_RESET: u8 = 4;
const PARAM_REAL: u8 = 1;
const PARAM_INT: u8 = 3;
const DELAY_UNITS: [&str; 6] = ["s", "ms", "us", "ns", "ps", "dt"];
const DELAY_DT: u8 = 5;

type VersionFn = unsafe extern "C" fn() -> u32;
type CountFn = unsafe extern "C" fn(*const QkCircuit) -> u32;
type SizeFn = unsafe extern "C" fn(*const QkCircuit) -> usize;
type KindFn = unsafe extern "C" fn(*const QkCircuit, usize) -> u8;
type ViewFn = unsafe extern "C" fn(*const QkCircuit, usize, *mut InstructionView);
type BorrowFn = unsafe extern "C" fn(*mut ffi::PyObject) -> *mut QkCircuit;
type GetRegisterFn = unsafe extern "C" fn(*const QkCircuit, usize) -> *const QkRegister;
type RegisterNameFn = unsafe extern "C" fn(*const QkRegister) -> *mut c_char;
type RegisterBitsFn = unsafe extern "C" fn(*const QkRegister) -> usize;
type StrFreeFn = unsafe extern "C" fn(*mut c_char);
type StrideFn = unsafe extern "C" fn() -> usize;
type ParamKindFn = unsafe extern "C" fn(*const QkParam) -> u8;
type ParamRealFn = unsafe extern "C" fn(*const QkParam) -> f64;
type ParamIntFn = unsafe extern "C" fn(*const QkParam, *mut i64) -> bool;
type GlobalPhaseFn = unsafe extern "C" fn(*const QkCircuit) -> *mut QkParam;
type ParamFreeFn = unsafe extern "C" fn(*mut QkParam);
type NewFn = unsafe extern "C" fn(u32, u32) -> *mut QkCircuit;
type RegisterNewFn = unsafe extern "C" fn(u32, *const c_char) -> *mut QkRegister;
type RegisterFreeFn = unsafe extern "C" fn(*mut QkRegister);
type AddRegisterFn = unsafe extern "C" fn(*mut QkCircuit, *const QkRegister);
type FreeFn = unsafe extern "C" fn(*mut QkCircuit);
type GateFn = unsafe extern "C" fn(*mut QkCircuit, u8, *const u32, *const f64) -> u32;
type GateCountFn = unsafe extern "C" fn(u8) -> u32;
type MeasureFn = unsafe extern "C" fn(*mut QkCircuit, u32, u32) -> u32;
type ResetFn = unsafe extern "C" fn(*mut QkCircuit, u32) -> u32;
type BarrierFn = unsafe extern "C" fn(*mut QkCircuit, *const u32, u32) -> u32;
type DelayFn = unsafe extern "C" fn(*mut QkCircuit, u32, f64, u8) -> u32;
type DelayDtFn = unsafe extern "C" fn(*mut QkCircuit, u32, i64) -> u32;
type ToPythonFn = unsafe extern "C" fn(*mut QkCircuit) -> *mut ffi::PyObject;
type SetGlobalPhaseFn = unsafe extern "C" fn(*mut QkCircuit, *const QkParam) -> u32;
type ParamFromDoubleFn = unsafe extern "C" fn(f64) -> *mut QkParam;

/// The C API functions that build circuits (`qdispatch._native.qobj_to_circuits`).
pub struct Builder {
    pub(crate) new: NewFn,
    pub(crate) quantum_register_new: RegisterNewFn,
    pub(crate) quantum_register_free: RegisterFreeFn,
    pub(crate) classical_register_new: RegisterNewFn,
    pub(crate) classical_register_free: RegisterFreeFn,
    pub(crate) add_quantum_register: AddRegisterFn,
    pub(crate) add_classical_register: AddRegisterFn,
    pub(crate) free: FreeFn,
    pub(crate) gate: GateFn,
    pub(crate) measure: MeasureFn,
    pub(crate) reset: ResetFn,
    pub(crate) barrier: BarrierFn,
    pub(crate) delay: DelayFn,
    pub(crate) delay_dt: DelayDtFn,
    pub(crate) to_python_full: ToPythonFn,
    pub(crate) set_global_phase: SetGlobalPhaseFn,
    pub(crate) param_from_double: ParamFromDoubleFn,
    pub(crate) param_free: ParamFreeFn,
}

/// The C API functions we use, read once from the capsules.
pub struct CApi {
    num_qubits: CountFn,
    num_clbits: CountFn,
    global_phase: GlobalPhaseFn,
    param_free: ParamFreeFn,
    instruction_kind: KindFn,
    num_instructions: SizeFn,
    borrow_from_python: BorrowFn,
    num_quantum_registers: SizeFn,
    get_quantum_register: GetRegisterFn,
    quantum_register_name: RegisterNameFn,
    quantum_register_num_bits: RegisterBitsFn,
    num_classical_registers: SizeFn,
    get_classical_register: GetRegisterFn,
    classical_register_name: RegisterNameFn,
    classical_register_num_bits: RegisterBitsFn,
    view_instruction: ViewFn,
    delay_unit: KindFn,
    param_as_real: ParamRealFn,
    param_stride: usize,
    param_as_int: ParamIntFn,
    param_kind: ParamKindFn,
    str_free: StrFreeFn,
    /// `None` when the table's standard gates do not have the shapes
    /// `rebuild::STANDARD_GATES` records (then every circuit is rebuilt in Python).
    pub(crate) builder: Option<Builder>,
}

/// Lowest qiskit (major, minor) whose table has every slot used here at these positions.
const MIN_VERSION: (u32, u32) = (2, 6);

static API: PyOnceLock<Option<CApi>> = PyOnceLock::new();

/// The C API, or `None` when qiskit does not export it or its version does not match.
pub fn api(py: Python<'_>) -> Option<&'static CApi> {
    API.get_or_init(py, || load(py)).as_ref()
}

fn import_table(py: Python<'_>, name: &CStr) -> Option<*const *const c_void> {
    // SAFETY: attached to the interpreter (we hold `py`); `name` is nul-terminated.
    let table = unsafe { ffi::PyCapsule_Import(name.as_ptr(), 0) };
    if table.is_null() {
        // No such capsule (an older qiskit): not an error, the Python path is used.
        let _ = PyErr::take(py);
        return None;
    }
    Some(table as *const *const c_void)
}

fn load(py: Python<'_>) -> Option<CApi> {
    // The capsules are created when `qiskit._accelerate` is imported.
    py.import("qiskit._accelerate").ok()?;
    let circuit = import_table(py, c"qiskit._accelerate.capi.QK_FFI_CIRCUIT")?;
    let qi = import_table(py, c"qiskit._accelerate.capi.QK_FFI_QI")?;
    // SAFETY: slot 0 of the circuit table is `qk_api_version` in every qiskit that exports
    // the capsule; the capsule lives as long as the (never unloaded) qiskit module.
    let version = unsafe {
        let slot = *circuit;
        if slot.is_null() {
            return None;
        }
        std::mem::transmute::<*const c_void, VersionFn>(slot)()
    };
    let (major, minor) = (version >> 24, (version >> 16) & 0xff);
    if major != MIN_VERSION.0 || minor < MIN_VERSION.1 {
        return None;
    }
    /// Reads slot `$index` of `$table` as a function pointer of type `$ty`.
    macro_rules! slot {
        ($table:expr, $index:expr, $ty:ty) => {{
            // SAFETY: the version check above guarantees the table has this slot, holding
            // a function with the signature of `funcs_py_generated.h` (qiskit 2.6), which
            // `$ty` transcribes.
            let ptr = unsafe { *$table.add($index) };
            if ptr.is_null() {
                return None;
            }
            unsafe { std::mem::transmute::<*const c_void, $ty>(ptr) }
        }};
    }
    let param_stride = slot!(circuit, 231, StrideFn);
    let num_qubits = slot!(circuit, 17, GateCountFn);
    let num_params = slot!(circuit, 18, GateCountFn);
    let builder = Builder {
        new: slot!(circuit, 5, NewFn),
        quantum_register_new: slot!(circuit, 6, RegisterNewFn),
        quantum_register_free: slot!(circuit, 7, RegisterFreeFn),
        classical_register_free: slot!(circuit, 8, RegisterFreeFn),
        classical_register_new: slot!(circuit, 9, RegisterNewFn),
        add_quantum_register: slot!(circuit, 10, AddRegisterFn),
        add_classical_register: slot!(circuit, 11, AddRegisterFn),
        free: slot!(circuit, 15, FreeFn),
        gate: slot!(circuit, 16, GateFn),
        measure: slot!(circuit, 19, MeasureFn),
        reset: slot!(circuit, 20, ResetFn),
        barrier: slot!(circuit, 21, BarrierFn),
        delay: slot!(circuit, 34, DelayFn),
        delay_dt: slot!(circuit, 95, DelayDtFn),
        to_python_full: slot!(circuit, 40, ToPythonFn),
        set_global_phase: slot!(circuit, 51, SetGlobalPhaseFn),
        param_from_double: slot!(circuit, 208, ParamFromDoubleFn),
        param_free: slot!(circuit, 207, ParamFreeFn),
    };
    // The gate table transcribes the C enum; check it against the library before trusting
    // it with pointers to arrays of those lengths.
    let gates_match = STANDARD_GATES.iter().all(|&(_, code, qubits, params)| {
        // SAFETY: the codes are below 52, all valid `QkGate`s of qiskit 2.6.
        unsafe { num_qubits(code) == qubits && num_params(code) == params }
    });
    Some(CApi {
        num_qubits: slot!(circuit, 13, CountFn),
        num_clbits: slot!(circuit, 14, CountFn),
        global_phase: slot!(circuit, 50, GlobalPhaseFn),
        param_free: slot!(circuit, 207, ParamFreeFn),
        instruction_kind: slot!(circuit, 28, KindFn),
        num_instructions: slot!(circuit, 30, SizeFn),
        borrow_from_python: slot!(circuit, 41, BorrowFn),
        quantum_register_name: slot!(circuit, 53, RegisterNameFn),
        quantum_register_num_bits: slot!(circuit, 54, RegisterBitsFn),
        classical_register_name: slot!(circuit, 56, RegisterNameFn),
        classical_register_num_bits: slot!(circuit, 57, RegisterBitsFn),
        num_quantum_registers: slot!(circuit, 59, SizeFn),
        get_quantum_register: slot!(circuit, 60, GetRegisterFn),
        num_classical_registers: slot!(circuit, 61, SizeFn),
        get_classical_register: slot!(circuit, 62, GetRegisterFn),
        view_instruction: slot!(circuit, 94, ViewFn),
        delay_unit: slot!(circuit, 96, KindFn),
        param_as_real: slot!(circuit, 230, ParamRealFn),
        // SAFETY: `qk_param_stride` takes no argument and has no precondition.
        param_stride: unsafe { param_stride() },
        param_as_int: slot!(circuit, 232, ParamIntFn),
        param_kind: slot!(circuit, 233, ParamKindFn),
        str_free: slot!(qi, 26, StrFreeFn),
        builder: gates_match.then_some(builder),
    })
}

/// Python helpers of `qdispatch.assembler` that both paths share.
struct Helpers {
    dumps: Py<PyAny>,
    experiment_json: Py<PyAny>,
}

static HELPERS: PyOnceLock<Helpers> = PyOnceLock::new();

fn helpers(py: Python<'_>) -> PyResult<&'static Helpers> {
    HELPERS.get_or_try_init(py, || {
        let module = py.import("qdispatch.assembler")?;
        Ok(Helpers {
            dumps: module.getattr("_dumps")?.unbind(),
            experiment_json: module.getattr("_experiment_json")?.unbind(),
        })
    })
}

/// `qdispatch.assembler._dumps(value)`: the JSON both paths write for config, header and
/// metadata values.
pub fn dumps(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let out = helpers(py)?.dumps.bind(py).call1((value,))?;
    Ok(out.extract::<&[u8]>()?.to_vec())
}

/// Attributes of `QuantumCircuit` read directly, skipping its Python properties.
struct CircuitType {
    ty: Py<PyType>,
}

static CIRCUIT_TYPE: PyOnceLock<Option<CircuitType>> = PyOnceLock::new();

fn circuit_type(py: Python<'_>) -> Option<&Bound<'_, PyType>> {
    CIRCUIT_TYPE
        .get_or_init(py, || {
            let ty = py
                .import("qiskit.circuit")
                .and_then(|m| m.getattr("QuantumCircuit"))
                .ok()?;
            Some(CircuitType {
                ty: ty.cast_into::<PyType>().ok()?.unbind(),
            })
        })
        .as_ref()
        .map(|c| c.ty.bind(py))
}

/// Appends one circuit to `writer`: natively when the C API can represent all of it,
/// otherwise through the Python path (which also raises the errors users see).
pub fn write_circuit(
    py: Python<'_>,
    api: Option<&CApi>,
    scratch: &mut Scratch,
    circuit: &Bound<'_, PyAny>,
    writer: &mut QobjWriter,
) -> PyResult<()> {
    if let Some(api) = api {
        if write_native(py, api, scratch, circuit, writer)? {
            return Ok(());
        }
    }
    let out = helpers(py)?.experiment_json.bind(py).call1((circuit,))?;
    let (json, n_qubits, memory_slots): (Vec<u8>, u32, u32) = out.extract()?;
    writer.raw_experiment(&json, n_qubits, memory_slots);
    Ok(())
}

/// Buffers reused from one circuit to the next.
#[derive(Default)]
pub struct Scratch {
    params: Vec<Param>,
}

/// `circuit._data`, and `circuit.global_phase` when it is not what `_data` holds (a
/// subclass, or a circuit open on a control-flow scope), `circuit.metadata`.
type Attributes<'py> = (
    Bound<'py, PyAny>,
    Option<Bound<'py, PyAny>>,
    Bound<'py, PyAny>,
);

fn attributes<'py>(py: Python<'py>, circuit: &Bound<'py, PyAny>) -> PyResult<Attributes<'py>> {
    let data = circuit.getattr(intern!(py, "_data"))?;
    if circuit_type(py).is_some_and(|ty| circuit.get_type().is(ty)) {
        // What the `global_phase` and `metadata` properties return, without running them.
        let scopes = circuit.getattr(intern!(py, "_control_flow_scopes"))?;
        if !scopes.is_truthy()? {
            let metadata = circuit.getattr(intern!(py, "_metadata"))?;
            return Ok((data, None, metadata));
        }
    }
    Ok((
        data,
        Some(circuit.getattr(intern!(py, "global_phase"))?),
        circuit.getattr(intern!(py, "metadata"))?,
    ))
}

/// The circuit's global phase as a number, `None` when it is a parameter expression.
fn global_phase(api: &CApi, qc: *const QkCircuit) -> Option<f64> {
    // SAFETY: `qc` is valid (caller's contract); the phase is a fresh QkParam we own and
    // free with `qk_param_free`, as the C API documents.
    unsafe {
        let param = (api.global_phase)(qc);
        if param.is_null() {
            return None;
        }
        let value = match (api.param_kind)(param) {
            PARAM_REAL => Some((api.param_as_real)(param)),
            PARAM_INT => {
                let mut value = 0i64;
                (api.param_as_int)(param, &mut value).then_some(value as f64)
            }
            _ => None,
        };
        (api.param_free)(param);
        value
    }
}

/// Writes a circuit through the C API; `Ok(false)` (nothing written) when it holds
/// something the C API path does not represent (control flow, unitary, custom or
/// parameterized instructions), or metadata or a name the Python path should judge.
fn write_native(
    py: Python<'_>,
    api: &CApi,
    scratch: &mut Scratch,
    circuit: &Bound<'_, PyAny>,
    writer: &mut QobjWriter,
) -> PyResult<bool> {
    let (data, phase, metadata) = attributes(py, circuit)?;
    // SAFETY: attached to the interpreter; `data` is a live object we hold a reference to.
    let qc = unsafe { (api.borrow_from_python)(data.as_ptr()) } as *const QkCircuit;
    if qc.is_null() {
        // Not a `CircuitData` (a QuantumCircuit subclass doing odd things): Python path.
        let _ = PyErr::take(py);
        return Ok(false);
    }
    // From here on `qc` is borrowed from `data`, which lives (and, the GIL held and no
    // Python code run on it, stays unmutated) until this function returns.
    let global_phase = match phase {
        None => global_phase(api, qc),
        Some(phase) => phase.extract::<f64>().ok(),
    };
    let Some(global_phase) = global_phase else {
        return Ok(false);
    };
    let name = circuit.getattr(intern!(py, "name"))?;
    let Ok(name) = name.cast::<PyString>() else {
        return Ok(false);
    };
    let name = name.to_str()?;
    let metadata_json = match metadata.cast::<PyDict>() {
        Ok(dict) if dict.is_empty() => None,
        _ => match dumps(py, &metadata) {
            Ok(json) => Some(json),
            Err(_) => return Ok(false),
        },
    };
    writer.clear_registers();
    // SAFETY (all calls below): `qc` is a valid circuit pointer, see above; register
    // indices are below the counts the C API returned.
    let (n_qubits, memory_slots) = unsafe { ((api.num_qubits)(qc), (api.num_clbits)(qc)) };
    unsafe {
        for i in 0..(api.num_quantum_registers)(qc) {
            let reg = (api.get_quantum_register)(qc, i);
            let size = (api.quantum_register_num_bits)(reg) as u32;
            register_name(api, api.quantum_register_name, reg, |n| {
                writer.add_qreg(n, size)
            });
        }
        for i in 0..(api.num_classical_registers)(qc) {
            let reg = (api.get_classical_register)(qc, i);
            let size = (api.classical_register_num_bits)(reg) as u32;
            register_name(api, api.classical_register_name, reg, |n| {
                writer.add_creg(n, size)
            });
        }
    }
    writer.begin_experiment(&ExperimentHeader {
        name,
        n_qubits,
        memory_slots,
        global_phase,
        metadata_json: metadata_json.as_deref(),
    });
    if write_instructions(api, qc, &mut scratch.params, writer) {
        writer.end_experiment();
        Ok(true)
    } else {
        writer.abort_experiment();
        Ok(false)
    }
}

/// Calls `with` on the name of register `reg`.
///
/// # Safety
/// `reg` must be a valid register pointer and `name_fn` the C API function for its kind.
unsafe fn register_name(
    api: &CApi,
    name_fn: RegisterNameFn,
    reg: *const QkRegister,
    with: impl FnOnce(&str),
) {
    // SAFETY: `reg` is valid (caller's contract). The name is a fresh nul-terminated C
    // string we own and free with `qk_str_free`, as the C API documents.
    unsafe {
        let raw = name_fn(reg);
        with(&CStr::from_ptr(raw).to_string_lossy());
        (api.str_free)(raw);
    }
}

/// Writes the circuit's instructions; `false` at the first one the native path does not
/// write (the caller then drops the experiment).
fn write_instructions(
    api: &CApi,
    qc: *const QkCircuit,
    params: &mut Vec<Param>,
    writer: &mut QobjWriter,
) -> bool {
    // SAFETY: `qc` is a valid circuit (caller's contract, see `write_native`).
    let n = unsafe { (api.num_instructions)(qc) };
    writer.reserve(n * 48);
    // Software-pipelined: instruction `index + 1` is viewed (and the arrays it points at
    // prefetched) before instruction `index` is written, so that the cache misses on the
    // circuit's memory overlap with the writing.
    let mut next = if n > 0 { fetch(api, qc, 0) } else { None };
    for index in 0..n {
        let Some((kind, view)) = next.take() else {
            return false;
        };
        if index + 1 < n {
            next = fetch(api, qc, index + 1);
            if let Some((_, v)) = &next {
                prefetch(v.qubits);
                prefetch(v.params);
                prefetch(v.clbits);
            }
        }
        // SAFETY: the view's arrays hold `name_len` / `num_*` elements (null when empty);
        // the name is UTF-8 (it is a Rust `str` inside qiskit; the C API documents it as
        // UTF-8), so it is not validated again, which cost ~3% of the whole call.
        let (name, qubits, clbits) = unsafe {
            (
                std::str::from_utf8_unchecked(raw_slice(view.name, view.name_len)),
                raw_slice(view.qubits, view.num_qubits as usize),
                raw_slice(view.clbits, view.num_clbits as usize),
            )
        };
        params.clear();
        let mut unit = None;
        for k in 0..view.num_params {
            // SAFETY: `params` points at `num_params` QkParams laid out `param_stride`
            // bytes apart, as `qk_param_stride` documents.
            let param = unsafe {
                view.params
                    .cast::<u8>()
                    .add(k * api.param_stride)
                    .cast::<QkParam>()
            };
            // SAFETY: `param` is a valid QkParam (above).
            let value = match unsafe { (api.param_kind)(param) } {
                PARAM_REAL => Param::Float(unsafe { (api.param_as_real)(param) }),
                PARAM_INT => {
                    let mut value = 0i64;
                    // SAFETY: `param` is valid; `value` is a valid i64 to write.
                    if !unsafe { (api.param_as_int)(param, &mut value) } {
                        return false;
                    }
                    if kind == KIND_DELAY {
                        Param::Int(value)
                    } else {
                        // Gate parameters are written as floats, whatever Python held.
                        Param::Float(value as f64)
                    }
                }
                // Unbound parameters (and anything else): the Python path names the problem.
                _ => return false,
            };
            params.push(value);
        }
        if kind == KIND_DELAY {
            // SAFETY: instruction `index` is a delay (its kind says so).
            let code = unsafe { (api.delay_unit)(qc, index) };
            match DELAY_UNITS.get(code as usize) {
                Some(_) if code == DELAY_DT => {}
                Some(name) => unit = Some(*name),
                None => return false,
            }
        }
        writer.instruction(name, qubits, clbits, params, unit);
    }
    true
}

/// The kind and view of instruction `index`, `None` when it is of a kind the native path
/// does not write. `qc` must be a valid circuit and `index` below its instruction count.
fn fetch(api: &CApi, qc: *const QkCircuit, index: usize) -> Option<(u8, InstructionView)> {
    // SAFETY: `qc` is valid and `index` in range (caller's contract).
    let kind = unsafe { (api.instruction_kind)(qc, index) };
    if !matches!(
        kind,
        KIND_GATE | KIND_BARRIER | KIND_DELAY | KIND_MEASURE | KIND_RESET
    ) {
        return None;
    }
    let mut view = InstructionView {
        name: std::ptr::null(),
        qubits: std::ptr::null(),
        clbits: std::ptr::null(),
        params: std::ptr::null(),
        name_len: 0,
        num_qubits: 0,
        num_clbits: 0,
        num_params: 0,
    };
    // SAFETY: as above; `view` is a valid, aligned `QkCircuitInstructionView` to write. Its
    // pointers borrow from the circuit, which the caller keeps alive and unmutated.
    unsafe { (api.view_instruction)(qc, index, &mut view) };
    Some((kind, view))
}

/// Hints the CPU to load the cache line at `ptr` (a no-op elsewhere than x86-64).
#[inline(always)]
fn prefetch<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address; SSE is baseline on x86-64.
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// # Safety
/// `ptr` must point at `len` initialized elements, or `len` must be 0.
unsafe fn raw_slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if len == 0 || ptr.is_null() {
        &[]
    } else {
        // SAFETY: caller's contract.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}
