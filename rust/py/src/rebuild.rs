//! Rebuilding a Qobj's circuits through Qiskit's C API (`qk_circuit_new`,
//! `qk_circuit_gate`, ..., `qk_circuit_to_python_full`), from the plans of
//! `qdispatch_wire::rebuild` (made with the GIL released).

use std::ffi::CString;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use qdispatch_wire::rebuild::{self, ExperimentPlan, Op, STANDARD_GATES};

use crate::capi::{self, Builder, QkCircuit, QkRegister};

/// `orjson.loads`, for the headers' metadata (the Python path reads it with orjson too).
static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A circuit we own until it is handed to Python; freed if dropped before.
struct Owned<'a> {
    ptr: *mut QkCircuit,
    builder: &'a Builder,
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` came from `qk_circuit_new` and was not handed to Python (that
            // nulls it), so we own it and free it once.
            unsafe { (self.builder.free)(self.ptr) }
        }
    }
}

/// Rebuilds the circuits of a QasmQobj (JSON bytes): a `QuantumCircuit` per experiment
/// the native path handles (standard gates, measure, reset, barrier, delay), `None` for
/// each one the Python path must rebuild (conditionals, unitary, other instructions,
/// anything it would reject). `None` overall when the C API is not available, or the
/// Qobj is not JSON of the shape the Python path reads without comment: then the Python
/// path reads all of it (and raises its errors).
#[pyfunction]
pub fn qobj_to_circuits<'py>(
    py: Python<'py>,
    qobj: &[u8],
) -> PyResult<Option<Vec<Option<Bound<'py, PyAny>>>>> {
    let Some(builder) = capi::api(py).and_then(|api| api.builder.as_ref()) else {
        return Ok(None);
    };
    let Some(plans) = py.detach(|| rebuild::plan(qobj)) else {
        return Ok(None);
    };
    let mut circuits = Vec::with_capacity(plans.len());
    for plan in &plans {
        circuits.push(match plan {
            Some(plan) => build(py, builder, plan)?,
            None => None,
        });
    }
    Ok(Some(circuits))
}

/// Adds `plan`'s registers of one kind to `qc`; `false` if a name cannot go to C.
///
/// # Safety
/// `qc` must be a valid circuit we own; `new`, `add` and `free` the C API functions of
/// one register kind.
unsafe fn add_registers(
    qc: *mut QkCircuit,
    registers: &[(String, u32)],
    new: unsafe extern "C" fn(u32, *const std::ffi::c_char) -> *mut QkRegister,
    add: unsafe extern "C" fn(*mut QkCircuit, *const QkRegister),
    free: unsafe extern "C" fn(*mut QkRegister),
) -> bool {
    for (name, size) in registers {
        let Ok(name) = CString::new(name.as_str()) else {
            return false;
        };
        // SAFETY: `name` is a nul-terminated string the call copies; the register is ours
        // until freed, after `qk_circuit_add_*_register` copied it into `qc` (caller's
        // contract: valid and owned).
        unsafe {
            let reg = new(*size, name.as_ptr());
            if reg.is_null() {
                return false;
            }
            add(qc, reg);
            free(reg);
        }
    }
    true
}

/// The circuit of `plan`, or `None` when the C API refuses an operation (the Python path
/// then rebuilds it and names the problem).
fn build<'py>(
    py: Python<'py>,
    b: &Builder,
    plan: &ExperimentPlan,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    // SAFETY: `qk_circuit_new` has no precondition; an empty circuit we own.
    let mut qc = Owned {
        ptr: unsafe { (b.new)(0, 0) },
        builder: b,
    };
    if qc.ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: `qc.ptr` is a valid circuit we own; the functions are the quantum and the
    // classical register ones.
    let added = unsafe {
        add_registers(
            qc.ptr,
            &plan.qregs,
            b.quantum_register_new,
            b.add_quantum_register,
            b.quantum_register_free,
        ) && add_registers(
            qc.ptr,
            &plan.cregs,
            b.classical_register_new,
            b.add_classical_register,
            b.classical_register_free,
        )
    };
    if !added || !append_ops(b, qc.ptr, plan) {
        return Ok(None);
    }
    if plan.global_phase != 0.0 {
        // SAFETY: `qc.ptr` is valid; the phase is a QkParam we own, which the setter
        // copies, freed right after as the C API documents.
        let ok = unsafe {
            let phase = (b.param_from_double)(plan.global_phase);
            let ok = !phase.is_null() && (b.set_global_phase)(qc.ptr, phase) == 0;
            (b.param_free)(phase);
            ok
        };
        if !ok {
            return Ok(None);
        }
    }
    let ptr = std::mem::replace(&mut qc.ptr, std::ptr::null_mut());
    // SAFETY: attached to the interpreter; `ptr` is a valid circuit we own, whose ownership
    // passes to Python (we no longer touch or free it). The result is a new reference or
    // null with an exception set.
    let circuit = unsafe { Bound::from_owned_ptr_or_err(py, (b.to_python_full)(ptr)) }?;
    circuit.setattr(intern!(py, "name"), plan.name.as_str())?;
    if let Some(json) = &plan.metadata_json {
        let loads = LOADS.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(py.import("orjson")?.getattr("loads")?.unbind())
        })?;
        let Ok(metadata) = loads.bind(py).call1((json.as_str(),)) else {
            // Valid for serde, not for orjson: the Python path names the problem.
            return Ok(None);
        };
        circuit.setattr(intern!(py, "metadata"), metadata)?;
    }
    Ok(Some(circuit))
}

/// Appends `plan`'s operations to `qc`; `false` at the first the C API refuses.
fn append_ops(b: &Builder, qc: *mut QkCircuit, plan: &ExperimentPlan) -> bool {
    for op in &plan.ops {
        // SAFETY (each call): `qc` is a valid circuit we own. The plan checked every qubit
        // and clbit index against the registers added (so in bounds) and distinct within
        // an operation; `qubits`/`params` slices hold what `STANDARD_GATES` says the gate
        // takes, which `capi::load` checked against the library.
        let code = unsafe {
            match *op {
                Op::Gate {
                    gate,
                    qubits,
                    params,
                } => {
                    let Some(&(_, _, n_qubits, n_params)) = STANDARD_GATES.get(gate as usize)
                    else {
                        return false;
                    };
                    let (Some(q), Some(p)) = (
                        plan.qubits.get(qubits..qubits + n_qubits as usize),
                        plan.params.get(params..params + n_params as usize),
                    ) else {
                        return false;
                    };
                    (b.gate)(qc, gate, q.as_ptr(), p.as_ptr())
                }
                Op::Measure { qubit, clbit } => (b.measure)(qc, qubit, clbit),
                Op::Reset { qubit } => (b.reset)(qc, qubit),
                Op::Barrier { start, len } => {
                    // Never empty (the plan says so): a null pointer would mean all qubits.
                    let Some(q) = plan.qubits.get(start..start + len as usize) else {
                        return false;
                    };
                    (b.barrier)(qc, q.as_ptr(), len)
                }
                Op::DelayDt { qubit, duration } => (b.delay_dt)(qc, qubit, duration),
                Op::Delay {
                    qubit,
                    duration,
                    unit,
                } => (b.delay)(qc, qubit, duration, unit),
            }
        };
        if code != 0 {
            return false;
        }
    }
    true
}
