//! The QasmQobj wire format (docs/protocol.md) and its validation against a backend.
//!
//! The service validates every submitted Qobj here before it accepts the job, so that a
//! payload that cannot run is answered with a 4xx naming the problem instead of failing
//! later in a worker. Validation borrows from the input and allocates only for errors.

use serde::de::IgnoredAny;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use crate::WireError;

/// Directives every backend accepts, whatever its basis gates.
pub const DIRECTIVES: [&str; 5] = ["barrier", "measure", "reset", "delay", "bfunc"];

/// Shape of one operation a backend accepts. `None` means "any number".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateSpec {
    pub num_qubits: Option<u32>,
    pub num_params: Option<u32>,
}

/// What a backend accepts: the limits a Qobj is checked against.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    pub name: String,
    pub n_qubits: u32,
    pub max_shots: u64,
    pub max_experiments: usize,
    pub gates: HashMap<String, GateSpec>,
    /// Directed pairs two-qubit gates may act on; `None` for all-to-all.
    pub coupling: Option<HashSet<(u32, u32)>>,
}

/// What the service needs to know of a valid Qobj to queue and estimate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QobjSummary {
    pub qobj_id: Option<String>,
    pub n_experiments: usize,
    /// `config.shots`, if the Qobj sets it.
    pub shots: Option<u64>,
    pub n_instructions: usize,
    /// Width of the widest experiment: highest qubit index used, plus one.
    pub max_qubits: u32,
}

#[derive(Deserialize)]
struct QobjIn<'a> {
    #[serde(borrow, default)]
    qobj_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    config: Option<ConfigIn>,
    #[serde(borrow)]
    experiments: Vec<ExperimentIn<'a>>,
}

#[derive(Deserialize, Default)]
struct ConfigIn {
    #[serde(default)]
    shots: Option<serde_json::Value>,
    #[serde(default)]
    memory_slots: Option<u64>,
}

#[derive(Deserialize)]
struct ExperimentIn<'a> {
    #[serde(borrow, default)]
    header: Option<HeaderIn<'a>>,
    #[serde(default)]
    config: Option<ConfigIn>,
    #[serde(borrow)]
    instructions: Vec<InstructionIn<'a>>,
}

#[derive(Deserialize)]
struct HeaderIn<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    memory_slots: Option<u64>,
}

#[derive(Deserialize)]
struct InstructionIn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    qubits: Vec<i64>,
    #[serde(default)]
    params: Vec<IgnoredAny>,
    #[serde(default)]
    memory: Vec<i64>,
    #[serde(default)]
    register: Option<Register>,
    #[serde(borrow, default)]
    conditional: Option<Conditional<'a>>,
    #[serde(borrow, default)]
    mask: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    relation: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    val: Option<Cow<'a, str>>,
}

/// A conditional is a register slot set by an earlier `bfunc`, or (in the oldest Qobj
/// schema) an inline `{"mask", "val"}` over the memory slots.
#[derive(Deserialize)]
#[serde(untagged)]
enum Conditional<'a> {
    Slot(i64),
    Inline {
        #[serde(borrow)]
        mask: Cow<'a, str>,
        #[serde(borrow)]
        val: Cow<'a, str>,
    },
}

fn check_hex(what: &str, value: &str) -> Result<(), String> {
    match value.strip_prefix("0x") {
        Some(digits) if u128::from_str_radix(digits, 16).is_ok() => Ok(()),
        _ => Err(format!("{what} '{value}' is not a hex string like '0x1f'")),
    }
}

/// `register` is a list for `measure` but a single slot for `bfunc` in qiskit's
/// assembler; both forms are accepted everywhere.
#[derive(Deserialize)]
#[serde(untagged)]
enum Register {
    One(i64),
    Many(Vec<i64>),
}

impl Register {
    fn as_slice(&self) -> &[i64] {
        match self {
            Register::One(slot) => std::slice::from_ref(slot),
            Register::Many(slots) => slots,
        }
    }
}

/// Checks a QasmQobj (raw JSON bytes) against `backend`.
pub fn validate(qobj: &[u8], backend: &BackendSpec) -> Result<QobjSummary, WireError> {
    let parsed: QobjIn<'_> =
        serde_json::from_slice(qobj).map_err(|e| WireError::Json(format!("Qobj: {e}")))?;
    let invalid = |msg: String| Err(WireError::InvalidQobj(msg));

    if let Some(kind) = parsed.kind.as_deref() {
        if kind != "QASM" {
            return invalid(format!(
                "Qobj type '{kind}' cannot run on backend '{}': only 'QASM' is supported \
                 (Pulse schedules are not)",
                backend.name
            ));
        }
    }
    let n_experiments = parsed.experiments.len();
    if n_experiments == 0 {
        return invalid("Qobj has no experiments".into());
    }
    if n_experiments > backend.max_experiments {
        return invalid(format!(
            "Qobj has {n_experiments} experiments; backend '{}' accepts at most {} per job \
             (max_experiments)",
            backend.name, backend.max_experiments
        ));
    }
    let config = parsed.config.unwrap_or_default();
    let shots = match &config.shots {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => Some(check_shots(value, backend)?),
    };

    let mut summary = QobjSummary {
        qobj_id: parsed.qobj_id.map(Cow::into_owned),
        n_experiments,
        shots,
        n_instructions: 0,
        max_qubits: 0,
    };
    for (index, experiment) in parsed.experiments.iter().enumerate() {
        let memory_slots = experiment
            .header
            .as_ref()
            .and_then(|h| h.memory_slots)
            .or(experiment.config.as_ref().and_then(|c| c.memory_slots))
            .or(config.memory_slots);
        if let Some(value) = experiment.config.as_ref().and_then(|c| c.shots.as_ref()) {
            check_shots(value, backend)?;
        }
        let width = check_experiment(experiment, memory_slots, backend).map_err(|msg| {
            let name = experiment.header.as_ref().and_then(|h| h.name.as_deref());
            WireError::InvalidQobj(match name {
                Some(name) => format!("experiment {index} ('{name}'): {msg}"),
                None => format!("experiment {index}: {msg}"),
            })
        })?;
        summary.max_qubits = summary.max_qubits.max(width);
        summary.n_instructions += experiment.instructions.len();
    }
    Ok(summary)
}

fn check_shots(value: &serde_json::Value, backend: &BackendSpec) -> Result<u64, WireError> {
    let shots = value.as_u64().filter(|&s| s >= 1).ok_or_else(|| {
        WireError::InvalidQobj(format!("shots must be a positive integer, got {value}"))
    })?;
    if shots > backend.max_shots {
        return Err(WireError::InvalidQobj(format!(
            "shots={shots} is more than backend '{}' allows (max_shots={})",
            backend.name, backend.max_shots
        )));
    }
    Ok(shots)
}

/// Checks one experiment's instructions; returns its width (highest qubit used + 1).
fn check_experiment(
    experiment: &ExperimentIn<'_>,
    memory_slots: Option<u64>,
    backend: &BackendSpec,
) -> Result<u32, String> {
    let mut width = 0u32;
    let mut registers_set: HashSet<i64> = HashSet::new();
    for (i, inst) in experiment.instructions.iter().enumerate() {
        let name = inst.name.as_ref();
        let at = |msg: String| format!("instruction {i} ({name}): {msg}");
        let is_directive = DIRECTIVES.contains(&name);
        let spec = backend.gates.get(name);
        if spec.is_none() && !is_directive {
            let mut names: Vec<&str> = backend.gates.keys().map(String::as_str).collect();
            names.sort_unstable();
            return Err(format!(
                "instruction {i}: gate '{name}' is not supported by backend '{}' \
                 (supported: {})",
                backend.name,
                names.join(", ")
            ));
        }
        for (k, &q) in inst.qubits.iter().enumerate() {
            if q < 0 || q >= i64::from(backend.n_qubits) {
                return Err(at(format!(
                    "uses qubit {q}, but backend '{}' has {} qubits",
                    backend.name, backend.n_qubits
                )));
            }
            if inst.qubits[..k].contains(&q) {
                return Err(at(format!("qubit {q} appears twice")));
            }
            // Bounded above by n_qubits (a u32), so the cast cannot truncate.
            width = width.max(q as u32 + 1);
        }
        if let Some(spec) = spec {
            if let Some(n) = spec.num_qubits {
                if inst.qubits.len() != n as usize {
                    return Err(at(format!(
                        "acts on {} qubits, but '{name}' takes {n}",
                        inst.qubits.len()
                    )));
                }
            }
            if let Some(n) = spec.num_params {
                if inst.params.len() != n as usize {
                    return Err(at(format!(
                        "has {} parameters, but '{name}' takes {n}",
                        inst.params.len()
                    )));
                }
            }
            if let (Some(coupling), [a, b]) = (&backend.coupling, inst.qubits.as_slice()) {
                if name != "barrier" && !coupling.contains(&(*a as u32, *b as u32)) {
                    return Err(at(format!(
                        "qubits ({a}, {b}) are not coupled on backend '{}' \
                         (transpile the circuit for this backend first)",
                        backend.name
                    )));
                }
            }
        }
        check_classical(inst, memory_slots, &mut registers_set).map_err(at)?;
    }
    Ok(width)
}

fn check_classical(
    inst: &InstructionIn<'_>,
    memory_slots: Option<u64>,
    registers_set: &mut HashSet<i64>,
) -> Result<(), String> {
    let in_memory = |slot: i64| slot >= 0 && memory_slots.is_none_or(|n| (slot as u64) < n);
    for &slot in &inst.memory {
        if !in_memory(slot) {
            return Err(match memory_slots {
                Some(n) => format!("memory slot {slot} is outside the {n} memory slots"),
                None => format!("memory slot {slot} is negative"),
            });
        }
    }
    match inst.name.as_ref() {
        "measure" if inst.memory.len() != inst.qubits.len() => {
            return Err(format!(
                "measures {} qubits into {} memory slots",
                inst.qubits.len(),
                inst.memory.len()
            ))
        }
        "bfunc" => {
            let &[register] = inst.register.as_ref().map_or(&[][..], Register::as_slice) else {
                return Err("bfunc needs exactly one register".into());
            };
            check_hex("bfunc mask", inst.mask.as_deref().unwrap_or_default())?;
            check_hex("bfunc val", inst.val.as_deref().unwrap_or_default())?;
            let relation = inst.relation.as_deref().unwrap_or_default();
            if relation != "==" && relation != "!=" {
                return Err(format!("bfunc relation '{relation}' is not '==' or '!='"));
            }
            registers_set.insert(register);
        }
        _ => {}
    }
    match &inst.conditional {
        Some(Conditional::Slot(register)) if !registers_set.contains(register) => {
            return Err(format!(
                "is conditional on register {register}, which no earlier bfunc sets"
            ));
        }
        Some(Conditional::Inline { mask, val }) => {
            check_hex("conditional mask", mask)?;
            check_hex("conditional val", val)?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> BackendSpec {
        let mut gates = HashMap::new();
        gates.insert(
            "h".into(),
            GateSpec {
                num_qubits: Some(1),
                num_params: Some(0),
            },
        );
        gates.insert(
            "rz".into(),
            GateSpec {
                num_qubits: Some(1),
                num_params: Some(1),
            },
        );
        gates.insert(
            "cx".into(),
            GateSpec {
                num_qubits: Some(2),
                num_params: Some(0),
            },
        );
        BackendSpec {
            name: "fake".into(),
            n_qubits: 3,
            max_shots: 1000,
            max_experiments: 2,
            gates,
            coupling: Some([(0, 1), (1, 0), (1, 2), (2, 1)].into_iter().collect()),
        }
    }

    fn bell(extra: &str) -> String {
        format!(
            r#"{{"qobj_id": "q1", "type": "QASM", "config": {{"shots": 100, "memory_slots": 2}},
               "experiments": [{{"header": {{"name": "bell"}}, "instructions": [
                 {{"name": "h", "qubits": [0]}}, {{"name": "cx", "qubits": [0, 1]}},
                 {{"name": "measure", "qubits": [0, 1], "memory": [0, 1]}}{extra}]}}]}}"#
        )
    }

    fn error(qobj: &str) -> String {
        validate(qobj.as_bytes(), &backend())
            .expect_err("must be invalid")
            .to_string()
    }

    #[test]
    fn accepts_bell() {
        let summary = validate(bell("").as_bytes(), &backend()).expect("valid");
        assert_eq!(
            summary,
            QobjSummary {
                qobj_id: Some("q1".into()),
                n_experiments: 1,
                shots: Some(100),
                n_instructions: 3,
                max_qubits: 2,
            }
        );
    }

    #[test]
    fn names_unknown_gate() {
        let msg = error(&bell(r#", {"name": "foo", "qubits": [0]}"#));
        assert!(msg.contains("experiment 0 ('bell')"), "{msg}");
        assert!(msg.contains("gate 'foo' is not supported"), "{msg}");
        assert!(msg.contains("supported: cx, h, rz"), "{msg}");
    }

    #[test]
    fn names_qubit_out_of_range() {
        let msg = error(&bell(r#", {"name": "h", "qubits": [5]}"#));
        assert!(
            msg.contains("uses qubit 5, but backend 'fake' has 3 qubits"),
            "{msg}"
        );
    }

    #[test]
    fn checks_arity_params_and_coupling() {
        let msg = error(&bell(r#", {"name": "cx", "qubits": [0]}"#));
        assert!(msg.contains("acts on 1 qubits, but 'cx' takes 2"), "{msg}");
        let msg = error(&bell(r#", {"name": "rz", "qubits": [0]}"#));
        assert!(msg.contains("has 0 parameters, but 'rz' takes 1"), "{msg}");
        let msg = error(&bell(r#", {"name": "cx", "qubits": [0, 2]}"#));
        assert!(msg.contains("qubits (0, 2) are not coupled"), "{msg}");
    }

    #[test]
    fn checks_memory_and_conditionals() {
        let msg = error(&bell(
            r#", {"name": "measure", "qubits": [0], "memory": [4]}"#,
        ));
        assert!(
            msg.contains("memory slot 4 is outside the 2 memory slots"),
            "{msg}"
        );
        let msg = error(&bell(r#", {"name": "h", "qubits": [0], "conditional": 3}"#));
        assert!(msg.contains("no earlier bfunc sets"), "{msg}");
        let ok = bell(
            r#", {"name": "bfunc", "register": [3], "mask": "0x1", "relation": "==", "val": "0x1"},
                {"name": "h", "qubits": [0], "conditional": 3}"#,
        );
        validate(ok.as_bytes(), &backend()).expect("valid conditional");
        // qiskit's assembler wrote a bfunc's register as a bare integer.
        let ok = ok.replace(r#""register": [3]"#, r#""register": 3"#);
        validate(ok.as_bytes(), &backend()).expect("valid conditional, integer register");
        let bad = ok.replace(r#""relation": "==""#, r#""relation": "<""#);
        let msg = error(&bad);
        assert!(
            msg.contains("bfunc relation '<' is not '==' or '!='"),
            "{msg}"
        );
        let msg = error(&ok.replace(r#""val": "0x1""#, r#""val": "one""#));
        assert!(msg.contains("bfunc val 'one' is not a hex string"), "{msg}");
        let inline =
            bell(r#", {"name": "h", "qubits": [1], "conditional": {"mask": "0x1", "val": "0x1"}}"#);
        validate(inline.as_bytes(), &backend()).expect("valid inline conditional");
    }

    #[test]
    fn checks_shots_and_experiment_count() {
        let msg = error(&bell("").replace("\"shots\": 100", "\"shots\": 5000"));
        assert!(
            msg.contains("shots=5000 is more than backend 'fake' allows"),
            "{msg}"
        );
        let msg = error(&bell("").replace("\"shots\": 100", "\"shots\": -1"));
        assert!(
            msg.contains("shots must be a positive integer, got -1"),
            "{msg}"
        );
        let three = r#"{"experiments": [{"instructions": []}, {"instructions": []},
                       {"instructions": []}]}"#;
        assert!(error(three).contains("3 experiments; backend 'fake' accepts at most 2"));
        assert!(error(r#"{"experiments": []}"#).contains("no experiments"));
    }

    #[test]
    fn rejects_pulse_and_malformed() {
        assert!(error(r#"{"type": "PULSE", "experiments": []}"#).contains("Pulse"));
        let msg = error(r#"{"experiments": [{"instructions": [{"qubits": [0]}]}]}"#);
        assert!(
            msg.starts_with("malformed JSON: Qobj: missing field `name`"),
            "{msg}"
        );
    }
}
