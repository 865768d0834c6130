//! Planning how a worker rebuilds the circuits of a QasmQobj (JSON bytes) without building
//! a Python tree of it first.
//!
//! [`plan`] parses the Qobj and turns each experiment into an [`ExperimentPlan`]: its
//! registers, name, global phase, metadata (raw JSON) and a flat list of [`Op`]s on
//! standard gates, measures, resets, barriers and delays, which the bindings append
//! through Qiskit's C API. The rules are those of `qdispatch.server.runner.qobj_to_circuits`
//! (the Python path); an experiment holding anything those rules treat specially or reject
//! (conditionals, `bfunc`, `unitary`, unknown names, an index out of range, a field of an
//! unusual type, ...) gets no plan, and the Python path rebuilds it, raising the errors
//! users see. Nothing here fails on bad input: the worst case is "no plan".

use serde::de::{self, IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// The standard gates as Qobj names: (name, `QkGate` code, qubits, parameters). Codes are
/// the `QkGate` enum of Qiskit's C API (`qiskit/types.h`), which is append-only; names are
/// those of `qiskit.circuit.library.get_standard_gate_name_mapping()`.
pub const STANDARD_GATES: [(&str, u8, u32, u32); 52] = [
    ("global_phase", 0, 0, 1),
    ("h", 1, 1, 0),
    ("id", 2, 1, 0),
    ("x", 3, 1, 0),
    ("y", 4, 1, 0),
    ("z", 5, 1, 0),
    ("p", 6, 1, 1),
    ("r", 7, 1, 2),
    ("rx", 8, 1, 1),
    ("ry", 9, 1, 1),
    ("rz", 10, 1, 1),
    ("s", 11, 1, 0),
    ("sdg", 12, 1, 0),
    ("sx", 13, 1, 0),
    ("sxdg", 14, 1, 0),
    ("t", 15, 1, 0),
    ("tdg", 16, 1, 0),
    ("u", 17, 1, 3),
    ("u1", 18, 1, 1),
    ("u2", 19, 1, 2),
    ("u3", 20, 1, 3),
    ("ch", 21, 2, 0),
    ("cx", 22, 2, 0),
    ("cy", 23, 2, 0),
    ("cz", 24, 2, 0),
    ("dcx", 25, 2, 0),
    ("ecr", 26, 2, 0),
    ("swap", 27, 2, 0),
    ("iswap", 28, 2, 0),
    ("cp", 29, 2, 1),
    ("crx", 30, 2, 1),
    ("cry", 31, 2, 1),
    ("crz", 32, 2, 1),
    ("cs", 33, 2, 0),
    ("csdg", 34, 2, 0),
    ("csx", 35, 2, 0),
    ("cu", 36, 2, 4),
    ("cu1", 37, 2, 1),
    ("cu3", 38, 2, 3),
    ("rxx", 39, 2, 1),
    ("ryy", 40, 2, 1),
    ("rzz", 41, 2, 1),
    ("rzx", 42, 2, 1),
    ("xx_minus_yy", 43, 2, 2),
    ("xx_plus_yy", 44, 2, 2),
    ("ccx", 45, 3, 0),
    ("ccz", 46, 3, 0),
    ("cswap", 47, 3, 0),
    ("rccx", 48, 3, 0),
    ("mcx", 49, 4, 0),
    ("c3sx", 50, 4, 0),
    ("rcccx", 51, 4, 0),
];

/// `QkDelayUnit` codes of the units a delay may be given in (`dt` is [`Op::DelayDt`]).
const DELAY_UNITS: [(&str, u8); 5] = [("s", 0), ("ms", 1), ("us", 2), ("ns", 3), ("ps", 4)];

/// Above this, an integer JSON parameter is not exactly a double: the Python path keeps it
/// exact, so such an experiment is left to it.
const EXACT_INT: i64 = 1 << 53;

/// One operation to append, indices into the circuit's bits (in register order).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A standard gate: its `QkGate` code; qubits `qubits[start..start + n]` and
    /// parameters `params[start..start + n]` of the plan, n as [`STANDARD_GATES`] says.
    Gate {
        gate: u8,
        qubits: usize,
        params: usize,
    },
    Measure {
        qubit: u32,
        clbit: u32,
    },
    Reset {
        qubit: u32,
    },
    /// A barrier on `plan.qubits[start..start + len]` (never empty).
    Barrier {
        start: usize,
        len: u32,
    },
    /// A delay in `dt` (an integer number of samples).
    DelayDt {
        qubit: u32,
        duration: i64,
    },
    /// A delay in seconds, ms, µs, ns or ps: the `QkDelayUnit` code and the duration.
    Delay {
        qubit: u32,
        duration: f64,
        unit: u8,
    },
}

/// How to rebuild one experiment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExperimentPlan {
    /// The circuit's name: the header's, else `circuit-<index>`.
    pub name: String,
    pub qregs: Vec<(String, u32)>,
    pub cregs: Vec<(String, u32)>,
    pub global_phase: f64,
    /// The header's `metadata` as raw JSON, when it is a non-empty object.
    pub metadata_json: Option<String>,
    pub ops: Vec<Op>,
    /// Qubit indices of gates and barriers, referred to by [`Op`].
    pub qubits: Vec<u32>,
    /// Gate parameters, referred to by [`Op::Gate`].
    pub params: Vec<f64>,
}

/// `Some(value)` for a member that is present, even when it is `null`: with
/// `#[serde(default)]`, a missing member stays `None`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// A JSON object holding a `T`. serde's derived structs also read arrays (by position),
/// where the Python path's `dict.get` fails: such input is left to it.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjVisitor<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        deserializer.deserialize_map(ObjVisitor(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct QobjIn<'a> {
    #[serde(default, rename = "type", deserialize_with = "present")]
    kind: Option<Option<Cow<'a, str>>>,
    #[serde(default)]
    config: Option<Obj<ConfigIn>>,
    #[serde(borrow)]
    experiments: Vec<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct ConfigIn {
    #[serde(default)]
    memory_slots: Option<i64>,
}

#[derive(Deserialize)]
struct ExperimentIn<'a> {
    #[serde(borrow, default)]
    header: Option<Obj<HeaderIn<'a>>>,
    #[serde(default)]
    config: Option<Obj<ConfigIn>>,
    #[serde(borrow, default)]
    instructions: Option<Vec<Obj<InstructionIn<'a>>>>,
    /// A QPY experiment (docs/protocol.md): the Python path decodes it.
    #[serde(default)]
    qpy: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct HeaderIn<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    n_qubits: Option<i64>,
    #[serde(default)]
    memory_slots: Option<i64>,
    #[serde(borrow, default)]
    qreg_sizes: Option<Vec<(Cow<'a, str>, i64)>>,
    #[serde(borrow, default)]
    creg_sizes: Option<Vec<(Cow<'a, str>, i64)>>,
    #[serde(default)]
    global_phase: Option<f64>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct InstructionIn<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    qubits: Option<Vec<i64>>,
    #[serde(default)]
    memory: Option<Vec<i64>>,
    #[serde(default)]
    params: Option<Vec<ParamIn>>,
    #[serde(borrow, default, deserialize_with = "present")]
    unit: Option<Option<Cow<'a, str>>>,
    #[serde(default)]
    conditional: Option<IgnoredAny>,
}

/// A parameter as JSON has it: only numbers are native; anything else (a matrix, a
/// string, ...) is `Other`, and the experiment goes to the Python path.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ParamIn {
    Int(i64),
    Float(f64),
    Other,
}

impl<'de> Deserialize<'de> for ParamIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ParamVisitor;
        impl<'de> Visitor<'de> for ParamVisitor {
            type Value = ParamIn;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ParamIn, E> {
                Ok(ParamIn::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ParamIn, E> {
                Ok(i64::try_from(v).map_or(ParamIn::Other, ParamIn::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ParamIn, E> {
                Ok(ParamIn::Float(v))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<ParamIn, E> {
                Ok(ParamIn::Other)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<ParamIn, E> {
                Ok(ParamIn::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<ParamIn, E> {
                Ok(ParamIn::Other)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<ParamIn, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ParamIn::Other)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<ParamIn, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(ParamIn::Other)
            }
        }
        deserializer.deserialize_any(ParamVisitor)
    }
}

impl ParamIn {
    /// The parameter as a double, when it is a number a double holds exactly.
    fn as_f64(self) -> Option<f64> {
        match self {
            ParamIn::Float(v) => Some(v),
            ParamIn::Int(v) if v.unsigned_abs() <= EXACT_INT as u64 => Some(v as f64),
            _ => None,
        }
    }
}

/// The plans of a Qobj's experiments, `None` for each one the Python path must rebuild.
/// `None` overall when the Qobj is not JSON, or not of the shape the Python path accepts
/// without comment (its type is not `QASM`, it has no experiments, ...): the Python path
/// then reads it and raises its usual error.
pub fn plan(qobj: &[u8]) -> Option<Vec<Option<ExperimentPlan>>> {
    let Obj(parsed): Obj<QobjIn<'_>> = serde_json::from_slice(qobj).ok()?;
    match &parsed.kind {
        None => {}
        Some(Some(kind)) if kind == "QASM" => {}
        Some(_) => return None,
    }
    if parsed.experiments.is_empty() {
        return None;
    }
    let config_slots = parsed.config.and_then(|Obj(c)| c.memory_slots);
    let plans = parsed
        .experiments
        .iter()
        .enumerate()
        .map(|(index, raw)| {
            let Obj(experiment): Obj<ExperimentIn<'_>> = serde_json::from_str(raw.get()).ok()?;
            plan_experiment(&experiment, index, config_slots)
        })
        .collect();
    Some(plans)
}

/// A count as the Python path reads it (`int(x or 0)`): a negative one is left to it.
fn count(value: Option<i64>) -> Option<u32> {
    u32::try_from(value.unwrap_or(0)).ok()
}

/// Python's `value or other` for a count: 0 and missing fall through.
fn or(value: Option<i64>, other: impl FnOnce() -> Option<i64>) -> Option<i64> {
    match value {
        Some(v) if v != 0 => Some(v),
        _ => other(),
    }
}

/// The registers `runner._registers` builds: the declared ones (plus a `<default>_extra`
/// register for bits the header declares beyond them), else one default register.
fn registers(
    sizes: Option<&[(Cow<'_, str>, i64)]>,
    default_name: &str,
    default_size: u32,
) -> Option<Vec<(String, u32)>> {
    let sizes = sizes.unwrap_or_default();
    if sizes.is_empty() {
        return Some(if default_size > 0 {
            vec![(default_name.to_owned(), default_size)]
        } else {
            Vec::new()
        });
    }
    let mut regs = Vec::with_capacity(sizes.len() + 1);
    let mut total = 0u64;
    for (name, size) in sizes {
        // A name C cannot carry, or a negative size: the Python path's business.
        if name.contains('\0') {
            return None;
        }
        let size = u32::try_from(*size).ok()?;
        total += u64::from(size);
        regs.push((name.to_string(), size));
    }
    if total < u64::from(default_size) {
        regs.push((format!("{default_name}_extra"), default_size - total as u32));
    }
    // QuantumCircuit refuses two registers of one name (the Python path raises).
    for (i, (name, _)) in regs.iter().enumerate() {
        if regs[..i].iter().any(|(other, _)| other == name) {
            return None;
        }
    }
    // The bits must be countable in a u32, as the C API counts them.
    u32::try_from(regs.iter().map(|(_, size)| u64::from(*size)).sum::<u64>()).ok()?;
    Some(regs)
}

/// One more than the highest qubit (or, `memory`, memory slot) index used; 0 for none.
fn max_index(instructions: &[Obj<InstructionIn<'_>>], memory: bool) -> u64 {
    instructions
        .iter()
        .flat_map(|Obj(inst)| {
            let list = if memory { &inst.memory } else { &inst.qubits };
            list.as_deref().unwrap_or_default()
        })
        .filter_map(|&i| u64::try_from(i).ok())
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// Checks indices are in `0..limit` and distinct; returns them as u32.
fn indices(values: &[i64], limit: u32, out: &mut Vec<u32>) -> Option<()> {
    let start = out.len();
    for &v in values {
        let v = u32::try_from(v).ok().filter(|&v| v < limit)?;
        if out[start..].contains(&v) {
            return None;
        }
        out.push(v);
    }
    Some(())
}

fn plan_experiment(
    experiment: &ExperimentIn<'_>,
    index: usize,
    config_slots: Option<i64>,
) -> Option<ExperimentPlan> {
    if experiment.qpy.is_some() {
        return None;
    }
    let empty = HeaderIn::default();
    let header = experiment.header.as_ref().map_or(&empty, |Obj(h)| h);
    let instructions = experiment.instructions.as_deref().unwrap_or_default();
    let qreg_sizes = header.qreg_sizes.as_deref().filter(|s| !s.is_empty());
    let creg_sizes = header.creg_sizes.as_deref().filter(|s| !s.is_empty());

    let mut n_qubits = u64::from(count(header.n_qubits)?);
    if qreg_sizes.is_none() {
        n_qubits = n_qubits.max(max_index(instructions, false));
    }
    let exp_slots = experiment.config.as_ref().and_then(|Obj(c)| c.memory_slots);
    let slots = or(header.memory_slots, || {
        or(exp_slots, || {
            if creg_sizes.is_some() {
                Some(0)
            } else {
                config_slots
            }
        })
    });
    let mut n_clbits = u64::from(count(slots)?);
    if creg_sizes.is_none() {
        n_clbits = n_clbits.max(max_index(instructions, true));
    }
    let qregs = registers(qreg_sizes, "q", u32::try_from(n_qubits).ok()?)?;
    let cregs = registers(creg_sizes, "c", u32::try_from(n_clbits).ok()?)?;
    let total_qubits: u32 = qregs.iter().map(|(_, s)| s).sum();
    let total_clbits: u32 = cregs.iter().map(|(_, s)| s).sum();

    let name = match header.name.as_deref() {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => format!("circuit-{index}"),
    };
    let metadata_json = header.metadata.and_then(|raw| {
        let text = raw.get();
        // Only a non-empty object is kept: anything else reads as `{}` in the Python path.
        let inner = text.strip_prefix('{')?.strip_suffix('}')?;
        (!inner.trim().is_empty()).then(|| text.to_owned())
    });
    let mut plan = ExperimentPlan {
        name,
        qregs,
        cregs,
        global_phase: header.global_phase.unwrap_or(0.0),
        metadata_json,
        ops: Vec::with_capacity(instructions.len()),
        qubits: Vec::with_capacity(instructions.len() * 2),
        params: Vec::new(),
    };
    for Obj(inst) in instructions {
        plan_instruction(inst, total_qubits, total_clbits, &mut plan)?;
    }
    Some(plan)
}

fn plan_instruction(
    inst: &InstructionIn<'_>,
    total_qubits: u32,
    total_clbits: u32,
    plan: &mut ExperimentPlan,
) -> Option<()> {
    if inst.conditional.is_some() {
        return None;
    }
    let name = inst.name.as_deref()?;
    let qubits = inst.qubits.as_deref().unwrap_or_default();
    let params = inst.params.as_deref().unwrap_or_default();
    let start = plan.qubits.len();
    indices(qubits, total_qubits, &mut plan.qubits)?;
    match name {
        "measure" => {
            let memory = inst.memory.as_deref().unwrap_or_default();
            if memory.len() != qubits.len() {
                return None;
            }
            let qubits = plan.qubits.split_off(start);
            for (&qubit, &clbit) in qubits.iter().zip(memory) {
                let clbit = u32::try_from(clbit).ok().filter(|&c| c < total_clbits)?;
                plan.ops.push(Op::Measure { qubit, clbit });
            }
        }
        "reset" => {
            for qubit in plan.qubits.split_off(start) {
                plan.ops.push(Op::Reset { qubit });
            }
        }
        "barrier" => {
            // A barrier on no qubits means "all of them" to the C API, not to Python.
            if qubits.is_empty() {
                return None;
            }
            plan.ops.push(Op::Barrier {
                start,
                len: qubits.len() as u32,
            });
        }
        "delay" => {
            let (&[qubit], &[duration]) = (&plan.qubits[start..], params) else {
                return None;
            };
            plan.qubits.truncate(start);
            let unit = match &inst.unit {
                None => "dt",
                Some(Some(unit)) => unit.as_ref(),
                Some(None) => return None,
            };
            let op = if unit == "dt" {
                let duration = match duration {
                    ParamIn::Int(v) => v,
                    // JSON writers may emit 100.0; the Python path takes it as 100.
                    ParamIn::Float(v) if v.fract() == 0.0 && v.abs() < EXACT_INT as f64 => v as i64,
                    _ => return None,
                };
                if duration < 0 {
                    return None;
                }
                Op::DelayDt { qubit, duration }
            } else {
                let (_, unit) = DELAY_UNITS.iter().find(|(n, _)| *n == unit)?;
                // An integer duration stays an int in Python's Delay; only floats are native.
                let ParamIn::Float(duration) = duration else {
                    return None;
                };
                if duration < 0.0 {
                    return None;
                }
                Op::Delay {
                    qubit,
                    duration,
                    unit: *unit,
                }
            };
            plan.ops.push(op);
        }
        _ => {
            let &(_, gate, n_qubits, n_params) =
                STANDARD_GATES.iter().find(|(n, ..)| *n == name)?;
            if qubits.len() != n_qubits as usize || params.len() != n_params as usize {
                return None;
            }
            let param_start = plan.params.len();
            for param in params {
                plan.params.push(param.as_f64()?);
            }
            plan.ops.push(Op::Gate {
                gate,
                qubits: start,
                params: param_start,
            });
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(qobj: &str) -> Option<ExperimentPlan> {
        let mut plans = plan(qobj.as_bytes()).expect("readable Qobj");
        assert_eq!(plans.len(), 1);
        plans.remove(0)
    }

    fn exp(header: &str, instructions: &str) -> String {
        format!(r#"{{"experiments": [{{"header": {header}, "instructions": [{instructions}]}}]}}"#)
    }

    #[test]
    fn plans_gates_measures_and_registers() {
        let qobj = exp(
            r#"{"name": "bell", "qreg_sizes": [["qr", 2]], "creg_sizes": [["cr", 2]],
                "memory_slots": 2, "global_phase": 0.5, "metadata": {"a": 1}}"#,
            r#"{"name": "h", "qubits": [0]}, {"name": "rz", "qubits": [1], "params": [2]},
               {"name": "cx", "qubits": [0, 1]},
               {"name": "measure", "qubits": [0, 1], "memory": [1, 0]}"#,
        );
        let plan = one(&qobj).expect("native");
        assert_eq!(plan.name, "bell");
        assert_eq!(plan.qregs, vec![("qr".to_owned(), 2)]);
        assert_eq!(plan.cregs, vec![("cr".to_owned(), 2)]);
        assert_eq!(plan.global_phase, 0.5);
        assert_eq!(plan.metadata_json.as_deref(), Some(r#"{"a": 1}"#));
        assert_eq!(plan.params, vec![2.0]);
        assert_eq!(
            plan.ops,
            vec![
                Op::Gate {
                    gate: 1,
                    qubits: 0,
                    params: 0
                },
                Op::Gate {
                    gate: 10,
                    qubits: 1,
                    params: 0
                },
                Op::Gate {
                    gate: 22,
                    qubits: 2,
                    params: 1
                },
                Op::Measure { qubit: 0, clbit: 1 },
                Op::Measure { qubit: 1, clbit: 0 },
            ]
        );
        assert_eq!(plan.qubits, vec![0, 1, 0, 1]);
    }

    #[test]
    fn default_registers_fit_the_indices_used() {
        let plan = one(&exp(
            "null",
            r#"{"name": "measure", "qubits": [3], "memory": [4]}"#,
        ))
        .expect("native");
        assert_eq!(plan.name, "circuit-0");
        assert_eq!(plan.qregs, vec![("q".to_owned(), 4)]);
        assert_eq!(plan.cregs, vec![("c".to_owned(), 5)]);
        // Declared sizes beyond the registers get an extra register.
        let plan = one(&exp(r#"{"n_qubits": 3, "qreg_sizes": [["a", 1]]}"#, "")).expect("native");
        assert_eq!(
            plan.qregs,
            vec![("a".to_owned(), 1), ("q_extra".to_owned(), 2)]
        );
    }

    #[test]
    fn leaves_what_it_does_not_handle_to_python() {
        for inst in [
            r#"{"name": "bfunc", "register": 0, "mask": "0x1", "relation": "==", "val": "0x1"}"#,
            r#"{"name": "h", "qubits": [0], "conditional": 0}"#,
            r#"{"name": "unitary", "qubits": [0], "params": [[[1, 0], [0, 1]]]}"#,
            r#"{"name": "foo", "qubits": [0]}"#,
            r#"{"name": "h", "qubits": [0, 1]}"#,
            r#"{"name": "rz", "qubits": [0], "params": ["theta"]}"#,
            r#"{"name": "rz", "qubits": [0]}"#,
            r#"{"name": "cx", "qubits": [1, 1]}"#,
            r#"{"name": "barrier", "qubits": []}"#,
            r#"{"name": "delay", "qubits": [0], "params": [100], "unit": "ns"}"#,
            r#"{"name": "delay", "qubits": [0], "params": [1.5]}"#,
            r#"{"name": "measure", "qubits": [0], "memory": []}"#,
            r#"{"qubits": [0]}"#,
        ] {
            let qobj = exp(
                r#"{"qreg_sizes": [["q", 2]], "creg_sizes": [["c", 1]]}"#,
                inst,
            );
            assert_eq!(one(&qobj), None, "{inst}");
        }
        // Out of the declared registers.
        let qobj = exp(
            r#"{"qreg_sizes": [["q", 1]]}"#,
            r#"{"name": "h", "qubits": [1]}"#,
        );
        assert_eq!(one(&qobj), None);
        // Two registers of one name.
        let qobj = exp(r#"{"qreg_sizes": [["q", 1], ["q", 1]]}"#, "");
        assert_eq!(one(&qobj), None);
    }

    #[test]
    fn delays() {
        let qobj = exp(
            "{}",
            r#"{"name": "delay", "qubits": [0], "params": [100.0]},
               {"name": "delay", "qubits": [0], "params": [2.5], "unit": "us"}"#,
        );
        let plan = one(&qobj).expect("native");
        assert_eq!(
            plan.ops,
            vec![
                Op::DelayDt {
                    qubit: 0,
                    duration: 100
                },
                Op::Delay {
                    qubit: 0,
                    duration: 2.5,
                    unit: 2
                },
            ]
        );
    }

    #[test]
    fn whole_qobj_to_python() {
        assert_eq!(plan(b"{not json"), None);
        assert_eq!(plan(br#"{"type": "PULSE", "experiments": [{}]}"#), None);
        assert_eq!(plan(br#"{"type": null, "experiments": [{}]}"#), None);
        assert_eq!(plan(br#"{"experiments": []}"#), None);
        // Arrays are not objects, even where serde would read a struct from one.
        assert_eq!(plan(br#"[null, null, [{}]]"#), None);
        let plans = plan(br#"{"experiments": [{"instructions": [["h", [0]]]}]}"#);
        assert_eq!(plans, Some(vec![None]));
        // One odd experiment does not stop the others.
        let plans = plan(br#"{"experiments": [{"instructions": 5}, {}]}"#).expect("readable");
        assert_eq!(plans.len(), 2);
        assert!(plans[0].is_none() && plans[1].is_some());
    }
}
