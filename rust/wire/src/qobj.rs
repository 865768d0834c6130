//! The QasmQobj wire format (docs/protocol.md) and its validation against a backend.
//!
//! The service validates every submitted Qobj here before it accepts the job, so that a
//! payload that cannot run is answered with a 4xx naming the problem instead of failing
//! later in a worker. Any user may submit, so validation is bounded too: every size a
//! worker would allocate by (memory slots, registers, instructions, names, headers) is
//! held to a limit of [`Limits`], and the validator's own memory does not grow with the
//! Qobj: experiments and their instructions are checked one at a time as they are parsed
//! (a first pass reads the top level, whose `config` every experiment needs), and lists
//! inside an instruction keep at most [`MAX_LIST`] items.

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;

use crate::WireError;

/// Directives every backend accepts, whatever its basis gates.
pub const DIRECTIVES: [&str; 5] = ["barrier", "measure", "reset", "delay", "bfunc"];

/// The most items of one list in an instruction (`qubits`, `memory`, `register`) the
/// validator keeps; a longer list is refused, since no backend has that many qubits or
/// memory slots. It bounds what one instruction costs to check (512 KiB).
pub const MAX_LIST: usize = 1 << 16;

/// How much of a user's string an error message quotes.
const MAX_QUOTED: usize = 64;

/// How deeply arrays and objects may nest anywhere in a Qobj. A Qobj needs 9 levels (a
/// unitary's matrix entries); metadata may use the rest. Parts the validator skips (the
/// metadata, parameters) are skipped without a depth limit, but the workers' parsers
/// recurse (Python's json, orjson's limit is 1024), so the service refuses what they
/// could not read.
pub const MAX_DEPTH: usize = 64;

/// Shape of one operation a backend accepts. `None` means "any number".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateSpec {
    pub num_qubits: Option<u32>,
    pub num_params: Option<u32>,
}

/// The size limits of a Qobj besides the backend's qubits, shots and experiments
/// (docs/service.md, "Limits"): each bounds something a worker allocates by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Classical memory slots of an experiment (`memory_slots` in any config or header,
    /// the sum of `creg_sizes`, `clbit_labels`, every `memory` index).
    pub max_memory_slots: u64,
    /// Instructions in one experiment.
    pub max_instructions: usize,
    /// Bytes of the raw JSON of each `header` and `config` object (top level and per
    /// experiment), metadata and labels included.
    pub max_header_bytes: usize,
    /// Bytes of a name: `qobj_id`, an experiment's `name`, a register's name.
    pub max_name_bytes: usize,
    /// Parameters of one instruction.
    pub max_params: usize,
    /// Register slots a `bfunc` may set and a `conditional` may read: `0 … n-1`.
    pub max_register_slots: u64,
    /// Characters of one experiment's `qpy` member (base64 of a QPY circuit: a circuit
    /// the instruction list cannot express, docs/protocol.md). The service never decodes
    /// it; the worker does, and checks what it declares.
    pub max_qpy_bytes: usize,
}

impl Limits {
    /// The defaults, which `qdispatch.server.backends.native_spec` also passes.
    pub const DEFAULT: Limits = Limits {
        max_memory_slots: 1024,
        max_instructions: 100_000,
        max_header_bytes: 64 << 10,
        max_name_bytes: 1024,
        max_params: 64,
        max_register_slots: 4096,
        max_qpy_bytes: 8 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
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
    pub limits: Limits,
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

/// The top level, first pass: everything but the experiments, which are only counted.
#[derive(Deserialize)]
struct QobjIn<'a> {
    #[serde(borrow, default)]
    qobj_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    config: Option<&'a RawValue>,
    #[serde(borrow, default)]
    header: Option<&'a RawValue>,
    experiments: Count,
}

#[derive(Deserialize, Default)]
struct ConfigIn {
    #[serde(default)]
    shots: Option<serde_json::Value>,
    #[serde(default)]
    memory_slots: Option<u64>,
    #[serde(default)]
    n_qubits: Option<u64>,
}

/// One experiment; its parts stay raw JSON (borrowed, not copied) until checked.
#[derive(Deserialize)]
struct ExperimentIn<'a> {
    #[serde(borrow, default)]
    header: Option<&'a RawValue>,
    #[serde(borrow, default)]
    config: Option<&'a RawValue>,
    #[serde(borrow)]
    instructions: &'a RawValue,
    /// A QPY experiment's circuit, base64 (checked for size and alphabet only).
    #[serde(borrow, default)]
    qpy: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct HeaderIn<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    memory_slots: Option<u64>,
    #[serde(default)]
    n_qubits: Option<u64>,
    #[serde(borrow, default)]
    qreg_sizes: Option<Vec<(Cow<'a, str>, i64)>>,
    #[serde(borrow, default)]
    creg_sizes: Option<Vec<(Cow<'a, str>, i64)>>,
    // Counted, not kept: a Vec of a zero-sized type allocates nothing.
    #[serde(default)]
    qubit_labels: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    clbit_labels: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize)]
struct InstructionIn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    qubits: Capped<i64>,
    #[serde(default)]
    params: Vec<IgnoredAny>,
    #[serde(default)]
    memory: Capped<i64>,
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

/// A JSON array of which at most [`MAX_LIST`] items are kept; `len` counts them all.
struct Capped<T> {
    items: Vec<T>,
    len: usize,
}

impl<T> Default for Capped<T> {
    fn default() -> Self {
        Capped {
            items: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Capped<T> {
    fn complete(&self) -> bool {
        self.items.len() == self.len
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Capped<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CappedVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for CappedVisitor<T> {
            type Value = Capped<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Capped<T>, A::Error> {
                let mut items = Vec::new();
                while items.len() < MAX_LIST {
                    match seq.next_element()? {
                        Some(item) => items.push(item),
                        None => {
                            let len = items.len();
                            return Ok(Capped { items, len });
                        }
                    }
                }
                let mut len = items.len();
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    len += 1;
                }
                Ok(Capped { items, len })
            }
        }
        d.deserialize_seq(CappedVisitor(PhantomData))
    }
}

/// How many items a JSON array has, read without keeping any.
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CountVisitor;
        impl<'de> Visitor<'de> for CountVisitor {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        d.deserialize_seq(CountVisitor)
    }
}

/// A conditional is a register slot set by an earlier `bfunc`, or (in the oldest Qobj
/// schema) an inline `{"mask", "val"}` over the memory slots. (Not `#[serde(untagged)]`,
/// which buffers the whole value before trying each form.)
enum Conditional<'a> {
    Slot(i64),
    Inline(InlineConditional<'a>),
}

#[derive(Deserialize)]
struct InlineConditional<'a> {
    #[serde(borrow)]
    mask: Cow<'a, str>,
    #[serde(borrow)]
    val: Cow<'a, str>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Conditional<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CondVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for CondVisitor<'a> {
            type Value = Conditional<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer register slot or a {\"mask\", \"val\"} object")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Conditional::Slot(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(Conditional::Slot)
                    .map_err(|_| E::custom(format!("register slot {v} out of range")))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                InlineConditional::deserialize(MapAccessDeserializer::new(map))
                    .map(Conditional::Inline)
            }
        }
        d.deserialize_any(CondVisitor(PhantomData))
    }
}

/// `register` is a list for `measure` but a single slot for `bfunc` in qiskit's
/// assembler; both forms are accepted everywhere.
enum Register {
    One(i64),
    Many(Capped<i64>),
}

impl<'de> Deserialize<'de> for Register {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RegisterVisitor;
        impl<'de> Visitor<'de> for RegisterVisitor {
            type Value = Register;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or an array of integers")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Register, E> {
                Ok(Register::One(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Register, E> {
                i64::try_from(v)
                    .map(Register::One)
                    .map_err(|_| E::custom(format!("register slot {v} out of range")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Register, A::Error> {
                Capped::deserialize(SeqAccessDeserializer::new(seq)).map(Register::Many)
            }
        }
        d.deserialize_any(RegisterVisitor)
    }
}

impl Register {
    fn as_slice(&self) -> &[i64] {
        match self {
            Register::One(slot) => std::slice::from_ref(slot),
            Register::Many(slots) => &slots.items,
        }
    }

    fn len(&self) -> usize {
        match self {
            Register::One(_) => 1,
            Register::Many(slots) => slots.len,
        }
    }
}

/// The start of a user's string for an error message.
fn quote(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_QUOTED {
        return Cow::Borrowed(text);
    }
    let mut cut = MAX_QUOTED;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}... ({} bytes)", &text[..cut], text.len()))
}

fn check_hex(what: &str, value: &str, limits: &Limits) -> Result<(), String> {
    // A mask spans at most the memory slots: four per hex digit.
    let most = limits.max_memory_slots.div_ceil(4).max(1);
    match value.strip_prefix("0x") {
        Some(digits)
            if !digits.is_empty()
                && digits.len() as u64 <= most
                && digits.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Ok(())
        }
        Some(digits) if digits.len() as u64 > most => Err(format!(
            "{what} has {} hex digits; {most} cover the {} memory slots allowed \
             (max_memory_slots)",
            digits.len(),
            limits.max_memory_slots
        )),
        _ => Err(format!(
            "{what} '{}' is not a hex string like '0x1f'",
            quote(value)
        )),
    }
}

/// The checks in progress over one Qobj.
struct Check<'b> {
    backend: &'b BackendSpec,
    /// The top-level config's `memory_slots`, every experiment's fallback.
    memory_slots: Option<u64>,
    summary: QobjSummary,
    /// The error that stopped the parse, when it is a rule and not the JSON's shape.
    failure: Option<WireError>,
}

impl Check<'_> {
    fn stop<E: de::Error>(&mut self, err: WireError) -> E {
        self.failure = Some(err);
        E::custom("the Qobj breaks a rule")
    }
}

fn invalid<T>(msg: String) -> Result<T, WireError> {
    Err(WireError::InvalidQobj(msg))
}

fn json_error(err: serde_json::Error) -> WireError {
    WireError::Json(format!("Qobj: {err}"))
}

/// Checks a QasmQobj (raw JSON bytes) against `backend`.
pub fn validate(qobj: &[u8], backend: &BackendSpec) -> Result<QobjSummary, WireError> {
    let limits = &backend.limits;
    check_depth(qobj)?;
    let parsed: QobjIn<'_> = serde_json::from_slice(qobj).map_err(json_error)?;

    if let Some(kind) = parsed.kind.as_deref() {
        if kind != "QASM" {
            return invalid(format!(
                "Qobj type '{}' cannot run on backend '{}': only 'QASM' is supported \
                 (Pulse schedules are not)",
                quote(kind),
                backend.name
            ));
        }
    }
    let n_experiments = parsed.experiments.0;
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
    if let Some(id) = parsed.qobj_id.as_deref() {
        check_name("qobj_id", id, limits)?;
    }
    if let Some(header) = parsed.header {
        check_size("header", header, limits)?;
    }
    let config = parse_config("config", parsed.config, backend)?;
    let shots = match &config.shots {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => Some(check_shots(value, backend)?),
    };

    let mut check = Check {
        backend,
        memory_slots: config.memory_slots,
        summary: QobjSummary {
            qobj_id: parsed.qobj_id.map(Cow::into_owned),
            n_experiments,
            shots,
            n_instructions: 0,
            max_qubits: 0,
        },
        failure: None,
    };
    // Second pass: the experiments, one at a time.
    let mut de = serde_json::Deserializer::from_slice(qobj);
    let parsed = TopSeed(&mut check).deserialize(&mut de);
    if let Some(failure) = check.failure.take() {
        return Err(failure);
    }
    parsed.map_err(json_error)?;
    // Like an experiment's, after the instruction rules (the assembler writes the widest
    // experiment's width here, and which qubit does not fit says more).
    check_config("config", &config, backend)?;
    Ok(check.summary)
}

/// Refuses JSON nesting deeper than [`MAX_DEPTH`], scanning the bytes once (brackets
/// inside strings do not count).
fn check_depth(json: &[u8]) -> Result<(), WireError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return invalid(format!(
                        "the Qobj nests arrays and objects deeper than {MAX_DEPTH} levels"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn check_name(what: &str, name: &str, limits: &Limits) -> Result<(), WireError> {
    if name.len() > limits.max_name_bytes {
        return invalid(format!(
            "{what} '{}' is {} bytes; at most {} are allowed (max_name_bytes)",
            quote(name),
            name.len(),
            limits.max_name_bytes
        ));
    }
    Ok(())
}

fn check_size(what: &str, raw: &RawValue, limits: &Limits) -> Result<(), WireError> {
    let size = raw.get().len();
    if size > limits.max_header_bytes {
        return invalid(format!(
            "{what} is {size} bytes of JSON; at most {} are allowed (max_header_bytes)",
            limits.max_header_bytes
        ));
    }
    Ok(())
}

fn check_memory_slots(what: &str, slots: u64, limits: &Limits) -> Result<(), WireError> {
    if slots > limits.max_memory_slots {
        return invalid(format!(
            "{what}={slots} is more than the {} memory slots allowed (max_memory_slots)",
            limits.max_memory_slots
        ));
    }
    Ok(())
}

fn check_width(what: &str, n: u64, backend: &BackendSpec) -> Result<(), WireError> {
    if n > u64::from(backend.n_qubits) {
        return invalid(format!(
            "{what}={n} is more than backend '{}' has qubits ({})",
            backend.name, backend.n_qubits
        ));
    }
    Ok(())
}

/// A `config` object, once its size is checked.
fn parse_config(
    what: &str,
    raw: Option<&RawValue>,
    backend: &BackendSpec,
) -> Result<ConfigIn, WireError> {
    let Some(raw) = raw else {
        return Ok(ConfigIn::default());
    };
    check_size(what, raw, &backend.limits)?;
    let config: Option<ConfigIn> = serde_json::from_str(raw.get()).map_err(json_error)?;
    Ok(config.unwrap_or_default())
}

/// A config's `memory_slots` and `n_qubits` against the limits.
fn check_config(what: &str, config: &ConfigIn, backend: &BackendSpec) -> Result<(), WireError> {
    if let Some(slots) = config.memory_slots {
        check_memory_slots(&format!("{what}.memory_slots"), slots, &backend.limits)?;
    }
    if let Some(n) = config.n_qubits {
        check_width(&format!("{what}.n_qubits"), n, backend)?;
    }
    Ok(())
}

fn check_shots(value: &serde_json::Value, backend: &BackendSpec) -> Result<u64, WireError> {
    let shots = value.as_u64().filter(|&s| s >= 1).ok_or_else(|| {
        let shown = value.to_string();
        WireError::InvalidQobj(format!(
            "shots must be a positive integer, got {}",
            quote(&shown)
        ))
    })?;
    if shots > backend.max_shots {
        return Err(WireError::InvalidQobj(format!(
            "shots={shots} is more than backend '{}' allows (max_shots={})",
            backend.name, backend.max_shots
        )));
    }
    Ok(shots)
}

/// The top-level object, second pass: only `experiments` is read.
struct TopSeed<'c, 'b>(&'c mut Check<'b>);

impl<'de> DeserializeSeed<'de> for TopSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Qobj object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "experiments" {
                map.next_value_seed(ExperimentsSeed(&mut *self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct ExperimentsSeed<'c, 'b>(&'c mut Check<'b>);

impl<'de> DeserializeSeed<'de> for ExperimentsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ExperimentsSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of experiments")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(experiment) = seq.next_element::<ExperimentIn<'de>>()? {
            if let Err(err) = check_experiment(self.0, index, &experiment) {
                return Err(self.0.stop(err));
            }
            index += 1;
        }
        Ok(())
    }
}

/// Checks one experiment: its header and config, then its instructions as they parse.
fn check_experiment(
    check: &mut Check<'_>,
    index: usize,
    experiment: &ExperimentIn<'_>,
) -> Result<(), WireError> {
    let backend = check.backend;
    let limits = &backend.limits;
    let at = |name: Option<&str>, msg: String| match name {
        Some(name) => format!("experiment {index} ('{}'): {msg}", quote(name)),
        None => format!("experiment {index}: {msg}"),
    };
    let prefix = |name: Option<&str>, err: WireError| match err {
        WireError::InvalidQobj(msg) => WireError::InvalidQobj(at(name, msg)),
        other => other,
    };
    let header = match experiment.header {
        Some(raw) => {
            check_size("header", raw, limits).map_err(|e| prefix(None, e))?;
            let header: Option<HeaderIn<'_>> =
                serde_json::from_str(raw.get()).map_err(json_error)?;
            header.unwrap_or_default()
        }
        None => HeaderIn::default(),
    };
    let name = header.name.as_deref();
    let config = parse_config("config", experiment.config, backend).map_err(|e| prefix(name, e))?;
    if let Some(value) = config.shots.as_ref() {
        check_shots(value, backend)?;
    }
    let memory_slots = header
        .memory_slots
        .or(config.memory_slots)
        .or(check.memory_slots);

    let mut state = ExperimentState {
        backend,
        memory_slots,
        width: 0,
        registers_set: HashSet::new(),
        count: 0,
        failure: None,
    };
    let mut de = serde_json::Deserializer::from_str(experiment.instructions.get());
    let parsed = InstructionsSeed(&mut state).deserialize(&mut de);
    if let Some(msg) = state.failure.take() {
        return invalid(at(name, msg));
    }
    parsed.map_err(json_error)?;
    // Sizes after the instructions, whose messages say more about a circuit that does
    // not fit (which qubit), and which the sizes do not guard: nothing is sized by them.
    check_header(&header, backend).map_err(|msg| WireError::InvalidQobj(at(name, msg)))?;
    check_config("config", &config, backend).map_err(|e| prefix(name, e))?;
    if let Some(qpy) = experiment.qpy.as_deref() {
        let width = check_qpy(qpy, &header, state.count, limits)
            .map_err(|msg| WireError::InvalidQobj(at(name, msg)))?;
        state.width = state.width.max(width);
    }
    check.summary.max_qubits = check.summary.max_qubits.max(state.width);
    check.summary.n_instructions += state.count;
    Ok(())
}

/// A QPY experiment (docs/protocol.md, "Circuits as QPY"): the service checks the
/// payload's size and alphabet only and never decodes it; the header must declare the
/// widths (already checked against the backend), which the worker holds the decoded
/// circuit to. Returns the experiment's width.
fn check_qpy(
    qpy: &str,
    header: &HeaderIn<'_>,
    n_instructions: usize,
    limits: &Limits,
) -> Result<u32, String> {
    if qpy.len() > limits.max_qpy_bytes {
        return Err(format!(
            "qpy is {} bytes; at most {} are allowed per experiment (max_qpy_bytes)",
            qpy.len(),
            limits.max_qpy_bytes
        ));
    }
    if qpy.is_empty() || qpy.len() % 4 != 0 {
        return Err("qpy is not base64 (its length is not a positive multiple of 4)".into());
    }
    let body = qpy.trim_end_matches('=');
    if qpy.len() - body.len() > 2
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        return Err("qpy is not base64 (a character outside A-Z a-z 0-9 + / =)".into());
    }
    if n_instructions > 0 {
        return Err(format!(
            "has both qpy and {n_instructions} instructions; a QPY experiment's \
             instructions list is empty"
        ));
    }
    let (Some(n_qubits), Some(_)) = (header.n_qubits, header.memory_slots) else {
        return Err("a QPY experiment's header must declare n_qubits and memory_slots".into());
    };
    // check_header bounded n_qubits by the backend's qubits, which fit a u32.
    Ok(u32::try_from(n_qubits).unwrap_or(u32::MAX))
}

/// The header's sizes, each bounded by what the backend or the limits allow.
fn check_header(header: &HeaderIn<'_>, backend: &BackendSpec) -> Result<(), String> {
    let limits = &backend.limits;
    let unwrap = |r: Result<(), WireError>| {
        r.map_err(|e| match e {
            WireError::InvalidQobj(msg) => msg,
            other => other.to_string(),
        })
    };
    if let Some(name) = header.name.as_deref() {
        unwrap(check_name("header.name", name, limits))?;
    }
    if let Some(slots) = header.memory_slots {
        unwrap(check_memory_slots("header.memory_slots", slots, limits))?;
    }
    if let Some(n) = header.n_qubits {
        unwrap(check_width("header.n_qubits", n, backend))?;
    }
    let n_qubits = u64::from(backend.n_qubits);
    for (what, registers, most, limit) in [
        (
            "qreg_sizes",
            &header.qreg_sizes,
            n_qubits,
            "the backend's qubits",
        ),
        (
            "creg_sizes",
            &header.creg_sizes,
            limits.max_memory_slots,
            "max_memory_slots",
        ),
    ] {
        let Some(registers) = registers else {
            continue;
        };
        // Registers of size 0 are legal, but never more of them than bits allowed.
        if registers.len() as u64 > most.max(1) {
            return Err(format!(
                "header.{what} lists {} registers; at most {} are allowed ({limit})",
                registers.len(),
                most.max(1)
            ));
        }
        let mut total = 0u64;
        for (name, size) in registers {
            unwrap(check_name(&format!("header.{what} register"), name, limits))?;
            let Ok(size) = u64::try_from(*size) else {
                return Err(format!(
                    "header.{what}: register '{}' has negative size {size}",
                    quote(name)
                ));
            };
            total = total.saturating_add(size);
        }
        if total > most {
            return Err(format!(
                "header.{what} hold {total} bits; at most {most} are allowed ({limit})"
            ));
        }
    }
    for (what, labels, most, limit) in [
        (
            "qubit_labels",
            &header.qubit_labels,
            n_qubits,
            "the backend's qubits",
        ),
        (
            "clbit_labels",
            &header.clbit_labels,
            limits.max_memory_slots,
            "max_memory_slots",
        ),
    ] {
        if let Some(labels) = labels {
            if labels.len() as u64 > most {
                return Err(format!(
                    "header.{what} has {} labels; at most {most} are allowed ({limit})",
                    labels.len()
                ));
            }
        }
    }
    Ok(())
}

/// One experiment's instruction checks in progress.
struct ExperimentState<'b> {
    backend: &'b BackendSpec,
    memory_slots: Option<u64>,
    /// Highest qubit used + 1.
    width: u32,
    registers_set: HashSet<i64>,
    count: usize,
    failure: Option<String>,
}

struct InstructionsSeed<'c, 'b>(&'c mut ExperimentState<'b>);

impl<'de> DeserializeSeed<'de> for InstructionsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for InstructionsSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of instructions")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let state = self.0;
        let most = state.backend.limits.max_instructions;
        while let Some(inst) = seq.next_element::<InstructionIn<'de>>()? {
            if state.count == most {
                state.failure = Some(format!(
                    "more than {most} instructions; backend '{}' accepts at most {most} per \
                     experiment (max_instructions)",
                    state.backend.name
                ));
                return Err(de::Error::custom("too many instructions"));
            }
            if let Err(msg) = state.instruction(state.count, &inst) {
                state.failure = Some(msg);
                return Err(de::Error::custom("invalid instruction"));
            }
            state.count += 1;
        }
        Ok(())
    }
}

impl ExperimentState<'_> {
    fn instruction(&mut self, i: usize, inst: &InstructionIn<'_>) -> Result<(), String> {
        let backend = self.backend;
        let limits = &backend.limits;
        let name = inst.name.as_ref();
        let at = |msg: String| format!("instruction {i} ({}): {msg}", quote(name));
        let is_directive = DIRECTIVES.contains(&name);
        let spec = backend.gates.get(name);
        if spec.is_none() && !is_directive {
            let mut names: Vec<&str> = backend.gates.keys().map(String::as_str).collect();
            names.sort_unstable();
            return Err(format!(
                "instruction {i}: gate '{}' is not supported by backend '{}' \
                 (supported: {})",
                quote(name),
                backend.name,
                names.join(", ")
            ));
        }
        // Distinct indices below n_qubits: the loop below fails by index n_qubits at the
        // latest (pigeonhole), which bounds its quadratic duplicate check by n_qubits^2.
        if !inst.qubits.complete() {
            return Err(at(format!(
                "lists {} qubits, but backend '{}' has {} qubits",
                inst.qubits.len, backend.name, backend.n_qubits
            )));
        }
        for (k, &q) in inst.qubits.items.iter().enumerate() {
            if q < 0 || q >= i64::from(backend.n_qubits) {
                return Err(at(format!(
                    "uses qubit {q}, but backend '{}' has {} qubits",
                    backend.name, backend.n_qubits
                )));
            }
            if inst.qubits.items[..k].contains(&q) {
                return Err(at(format!("qubit {q} appears twice")));
            }
            // Bounded above by n_qubits (a u32), so the cast cannot truncate.
            self.width = self.width.max(q as u32 + 1);
        }
        if inst.params.len() > limits.max_params {
            return Err(at(format!(
                "has {} parameters; at most {} are allowed (max_params)",
                inst.params.len(),
                limits.max_params
            )));
        }
        if let Some(spec) = spec {
            if let Some(n) = spec.num_qubits {
                if inst.qubits.len != n as usize {
                    return Err(at(format!(
                        "acts on {} qubits, but '{name}' takes {n}",
                        inst.qubits.len
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
            if let (Some(coupling), [a, b]) = (&backend.coupling, inst.qubits.items.as_slice()) {
                if name != "barrier" && !coupling.contains(&(*a as u32, *b as u32)) {
                    return Err(at(format!(
                        "qubits ({a}, {b}) are not coupled on backend '{}' \
                         (transpile the circuit for this backend first)",
                        backend.name
                    )));
                }
            }
        }
        self.classical(inst).map_err(at)
    }

    fn classical(&mut self, inst: &InstructionIn<'_>) -> Result<(), String> {
        let limits = &self.backend.limits;
        let memory_slots = self.memory_slots;
        if !inst.memory.complete() || inst.memory.len as u64 > limits.max_memory_slots {
            return Err(format!(
                "lists {} memory slots; at most {} are allowed (max_memory_slots)",
                inst.memory.len, limits.max_memory_slots
            ));
        }
        for &slot in &inst.memory.items {
            let in_memory = slot >= 0
                && (slot as u64) < limits.max_memory_slots
                && memory_slots.is_none_or(|n| (slot as u64) < n);
            if !in_memory {
                return Err(match memory_slots {
                    _ if slot < 0 => format!("memory slot {slot} is negative"),
                    Some(n) if (slot as u64) >= n => {
                        format!("memory slot {slot} is outside the {n} memory slots")
                    }
                    _ => format!(
                        "memory slot {slot} is outside the {} memory slots allowed \
                         (max_memory_slots)",
                        limits.max_memory_slots
                    ),
                });
            }
        }
        let register_ok = |r: i64| r >= 0 && (r as u64) < limits.max_register_slots;
        let register_range = |what: &str, r: i64| {
            format!(
                "{what} {r} is outside the register slots 0..{} (max_register_slots)",
                limits.max_register_slots
            )
        };
        if let Some(register) = &inst.register {
            if register.len() > register.as_slice().len() {
                return Err(format!("lists {} registers", register.len()));
            }
            if let Some(&r) = register.as_slice().iter().find(|&&r| !register_ok(r)) {
                return Err(register_range("register", r));
            }
        }
        match inst.name.as_ref() {
            "measure" if inst.memory.len != inst.qubits.len => {
                return Err(format!(
                    "measures {} qubits into {} memory slots",
                    inst.qubits.len, inst.memory.len
                ))
            }
            "bfunc" => {
                let &[register] = inst.register.as_ref().map_or(&[][..], Register::as_slice) else {
                    return Err("bfunc needs exactly one register".into());
                };
                check_hex(
                    "bfunc mask",
                    inst.mask.as_deref().unwrap_or_default(),
                    limits,
                )?;
                check_hex("bfunc val", inst.val.as_deref().unwrap_or_default(), limits)?;
                let relation = inst.relation.as_deref().unwrap_or_default();
                if relation != "==" && relation != "!=" {
                    return Err(format!(
                        "bfunc relation '{}' is not '==' or '!='",
                        quote(relation)
                    ));
                }
                self.registers_set.insert(register);
            }
            _ => {}
        }
        match &inst.conditional {
            Some(Conditional::Slot(register)) if !register_ok(*register) => {
                return Err(register_range("conditional register", *register));
            }
            Some(Conditional::Slot(register)) if !self.registers_set.contains(register) => {
                return Err(format!(
                    "is conditional on register {register}, which no earlier bfunc sets"
                ));
            }
            Some(Conditional::Inline(inline)) => {
                check_hex("conditional mask", &inline.mask, limits)?;
                check_hex("conditional val", &inline.val, limits)?;
            }
            _ => {}
        }
        Ok(())
    }
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
            limits: Limits::DEFAULT,
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

    fn one(header: &str, instructions: &str) -> String {
        format!(
            r#"{{"config": {{"shots": 10}}, "experiments": [{{"header": {header},
                "instructions": [{instructions}]}}]}}"#
        )
    }

    #[test]
    fn memory_slots_are_bounded_everywhere() {
        // The 100-byte Qobj that asked for 2^31 memory slots.
        let tiny = r#"{"experiments":[{"header":{"memory_slots":2147483648},"instructions":[]}]}"#;
        let msg = error(tiny);
        assert!(
            msg.contains("header.memory_slots=2147483648 is more than the 1024 memory slots"),
            "{msg}"
        );
        assert!(msg.contains("(max_memory_slots)"), "{msg}");
        let msg =
            error(r#"{"config": {"memory_slots": 5000}, "experiments": [{"instructions": []}]}"#);
        assert!(msg.contains("config.memory_slots=5000"), "{msg}");
        let msg =
            error(r#"{"experiments": [{"config": {"memory_slots": 1025}, "instructions": []}]}"#);
        assert!(
            msg.contains("experiment 0: config.memory_slots=1025"),
            "{msg}"
        );
        // Without memory_slots, a measure into slot 2^31 would size the register.
        let msg = error(&one(
            "{}",
            r#"{"name": "measure", "qubits": [0], "memory": [2147483647]}"#,
        ));
        assert!(
            msg.contains("outside the 1024 memory slots allowed"),
            "{msg}"
        );
        let msg = error(&one(r#"{"creg_sizes": [["c", 2147483648]]}"#, ""));
        assert!(
            msg.contains("header.creg_sizes hold 2147483648 bits; at most 1024"),
            "{msg}"
        );
        let msg = error(&one(r#"{"creg_sizes": [["a", 1000], ["b", 1000]]}"#, ""));
        assert!(msg.contains("hold 2000 bits"), "{msg}");
        let msg = error(&one(r#"{"creg_sizes": [["c", -1]]}"#, ""));
        assert!(msg.contains("negative size -1"), "{msg}");
        let labels = vec![r#"["c", 0]"#; 1025].join(",");
        let msg = error(&one(&format!(r#"{{"clbit_labels": [{labels}]}}"#), ""));
        assert!(msg.contains("clbit_labels has 1025 labels"), "{msg}");
        let zeros = vec![r#"["c", 0]"#; 1025].join(",");
        let msg = error(&one(&format!(r#"{{"creg_sizes": [{zeros}]}}"#), ""));
        assert!(msg.contains("lists 1025 registers"), "{msg}");
    }

    #[test]
    fn widths_are_bounded_by_the_backend() {
        let msg = error(&one(r#"{"name": "w", "n_qubits": 2147483648}"#, ""));
        assert!(
            msg.contains("experiment 0 ('w'): header.n_qubits=2147483648 is more than backend 'fake' has qubits (3)"),
            "{msg}"
        );
        let msg = error(&one(r#"{"qreg_sizes": [["q", 2], ["r", 2]]}"#, ""));
        assert!(msg.contains("qreg_sizes hold 4 bits; at most 3"), "{msg}");
        let msg = error(&one(
            r#"{"qubit_labels": [["q", 0], ["q", 1], ["q", 2], ["q", 3]]}"#,
            "",
        ));
        assert!(msg.contains("qubit_labels has 4 labels"), "{msg}");
        let msg = error(r#"{"config": {"n_qubits": 99}, "experiments": [{"instructions": []}]}"#);
        assert!(msg.contains("config.n_qubits=99"), "{msg}");
        let msg = error(&one("{}", r#"{"name": "barrier", "qubits": [0, 1, 2, 0]}"#));
        assert!(msg.contains("qubit 0 appears twice"), "{msg}");
        // A long list fails at its first repeat, not after a quadratic scan of it all.
        let repeats = vec!["0"; MAX_LIST].join(",");
        let started = std::time::Instant::now();
        let msg = error(&one(
            "{}",
            &format!(r#"{{"name": "barrier", "qubits": [{repeats}]}}"#),
        ));
        assert!(msg.contains("qubit 0 appears twice"), "{msg}");
        assert!(started.elapsed().as_secs_f64() < 1.0);
        let many = vec!["0"; MAX_LIST + 5].join(",");
        let msg = error(&one(
            "{}",
            &format!(r#"{{"name": "barrier", "qubits": [{many}]}}"#),
        ));
        assert!(
            msg.contains(&format!("lists {} qubits", MAX_LIST + 5)),
            "{msg}"
        );
        // Typed now: a width that is not an integer is the wrong shape.
        let msg = error(&one(r#"{"n_qubits": "2147483648"}"#, ""));
        assert!(msg.starts_with("malformed JSON"), "{msg}");
    }

    #[test]
    fn instructions_per_experiment_are_bounded_without_keeping_them() {
        let mut spec = backend();
        spec.limits.max_instructions = 1000;
        let insts = vec![r#"{"name": "h", "qubits": [0]}"#; 1001].join(",");
        let msg = validate(one("{}", &insts).as_bytes(), &spec)
            .expect_err("too many")
            .to_string();
        assert!(
            msg.contains("experiment 0: more than 1000 instructions; backend 'fake' accepts at most 1000 per experiment (max_instructions)"),
            "{msg}"
        );
        let insts = vec![r#"{"name": "h", "qubits": [0]}"#; 1000].join(",");
        let summary = validate(one("{}", &insts).as_bytes(), &spec).expect("at the limit");
        assert_eq!(summary.n_instructions, 1000);
    }

    #[test]
    fn names_headers_and_params_are_bounded() {
        let long = "n".repeat(1025);
        let msg = error(&one(&format!(r#"{{"name": "{long}"}}"#), ""));
        assert!(msg.contains("header.name 'nnnn"), "{msg}");
        assert!(
            msg.contains("is 1025 bytes; at most 1024 are allowed (max_name_bytes)"),
            "{msg}"
        );
        assert!(
            msg.len() < 400,
            "the message quotes the whole name: {}",
            msg.len()
        );
        let msg = error(&format!(
            r#"{{"qobj_id": "{long}", "experiments": [{{"instructions": []}}]}}"#
        ));
        assert!(msg.contains("qobj_id 'nnn"), "{msg}");
        let msg = error(&one(&format!(r#"{{"creg_sizes": [["{long}", 1]]}}"#), ""));
        assert!(msg.contains("header.creg_sizes register"), "{msg}");
        let blob = "x".repeat(70_000);
        let msg = error(&one(
            &format!(r#"{{"metadata": {{"blob": "{blob}"}}}}"#),
            "",
        ));
        assert!(
            msg.contains("header is 70026 bytes of JSON; at most 65536"),
            "{msg}"
        );
        let msg = error(&format!(
            r#"{{"header": {{"x": "{blob}"}}, "experiments": [{{"instructions": []}}]}}"#
        ));
        assert!(msg.contains("(max_header_bytes)"), "{msg}");
        let msg = error(&format!(
            r#"{{"config": {{"x": "{blob}"}}, "experiments": [{{"instructions": []}}]}}"#
        ));
        assert!(msg.starts_with("config is 70"), "{msg}");
        let params = vec!["0"; 65].join(",");
        let msg = error(&one(
            "{}",
            &format!(r#"{{"name": "barrier", "params": [{params}]}}"#),
        ));
        assert!(
            msg.contains("has 65 parameters; at most 64 are allowed (max_params)"),
            "{msg}"
        );
        let msg = error(&one(
            "{}",
            &format!(r#"{{"name": "{long}", "qubits": [0]}}"#),
        ));
        assert!(
            msg.contains("gate 'nnnn") && msg.contains("(1025 bytes)"),
            "{msg}"
        );
        assert!(msg.len() < 400, "{msg}");
    }

    #[test]
    fn register_slots_and_masks_are_bounded() {
        let bfunc = |register: &str, mask: &str| {
            one(
                "{}",
                &format!(
                    r#"{{"name": "bfunc", "register": {register}, "mask": "{mask}", "relation": "==", "val": "0x1"}}"#
                ),
            )
        };
        let msg = error(&bfunc("4096", "0x1"));
        assert!(
            msg.contains(
                "register 4096 is outside the register slots 0..4096 (max_register_slots)"
            ),
            "{msg}"
        );
        let msg = error(&bfunc("-1", "0x1"));
        assert!(msg.contains("register -1 is outside"), "{msg}");
        let msg = error(&one(
            "{}",
            r#"{"name": "h", "qubits": [0], "conditional": 9999999}"#,
        ));
        assert!(
            msg.contains("conditional register 9999999 is outside"),
            "{msg}"
        );
        validate(
            bfunc("4095", &format!("0x{}", "f".repeat(256))).as_bytes(),
            &backend(),
        )
        .expect("a 1024-bit mask");
        let msg = error(&bfunc("1", &format!("0x{}", "f".repeat(257))));
        assert!(
            msg.contains("bfunc mask has 257 hex digits; 256 cover the 1024"),
            "{msg}"
        );
        let slots = vec!["1"; MAX_LIST + 1].join(",");
        let msg = error(&bfunc(&format!("[{slots}]"), "0x1"));
        assert!(
            msg.contains(&format!("lists {} registers", MAX_LIST + 1)),
            "{msg}"
        );
    }

    #[test]
    fn experiments_are_counted_before_any_is_checked() {
        let mut spec = backend();
        spec.max_experiments = 2;
        // The third experiment is not even well-formed: the count comes first.
        let msg = validate(
            br#"{"experiments": [{"instructions": []}, {"instructions": []}, 7]}"#,
            &spec,
        )
        .expect_err("three")
        .to_string();
        assert!(msg.contains("3 experiments"), "{msg}");
        let msg = error(r#"{"experiments": [{"instructions": []}, {"instructions": "x"}]}"#);
        assert!(msg.starts_with("malformed JSON: Qobj:"), "{msg}");
    }

    #[test]
    fn nesting_is_bounded_anywhere() {
        let deep = |n: usize| {
            format!(
                r#"{{"experiments": [{{"header": {{"metadata": {{"d": {}{}, "s": "[[[{{"}}}},
                    "instructions": [{{"name": "barrier", "params": [{}{}]}}]}}]}}"#,
                "[".repeat(n),
                "]".repeat(n),
                "[".repeat(3),
                "]".repeat(3),
            )
        };
        validate(deep(59).as_bytes(), &backend()).expect("64 levels in all");
        let msg = error(&deep(60));
        assert!(msg.contains("deeper than 64 levels"), "{msg}");
        let msg = error(&deep(100_000));
        assert!(msg.contains("deeper than 64 levels"), "{msg}");
        // Brackets in strings, escaped quotes included, do not count.
        let strings = format!(
            r#"{{"qobj_id": "{}\"{}", "experiments": [{{"instructions": []}}]}}"#,
            "[".repeat(100),
            "{".repeat(100)
        );
        validate(strings.as_bytes(), &backend()).expect("brackets in strings");
    }
    #[test]
    fn qpy_experiments_are_checked_for_size_and_alphabet_only() {
        let qpy = |header: &str, instructions: &str, payload: &str| {
            format!(
                r#"{{"experiments": [{{"header": {header}, "instructions": [{instructions}],
                   "qpy": "{payload}"}}]}}"#
            )
        };
        let widths = r#"{"name": "dyn", "n_qubits": 2, "memory_slots": 2}"#;
        let summary = validate(qpy(widths, "", "UUlTS0lU").as_bytes(), &backend()).expect("ok");
        assert_eq!(summary.max_qubits, 2);
        let msg = error(&qpy(widths, "", "not base64!"));
        assert!(
            msg.contains("experiment 0 ('dyn'): qpy is not base64"),
            "{msg}"
        );
        let msg = error(&qpy(widths, "", "QUJD="));
        assert!(msg.contains("not a positive multiple of 4"), "{msg}");
        let msg = error(&qpy(widths, r#"{"name": "h", "qubits": [0]}"#, "UUlTS0lU"));
        assert!(msg.contains("has both qpy and 1 instructions"), "{msg}");
        let msg = error(&qpy(r#"{"name": "dyn"}"#, "", "UUlTS0lU"));
        assert!(
            msg.contains("must declare n_qubits and memory_slots"),
            "{msg}"
        );
        let msg = error(&qpy(
            r#"{"n_qubits": 9, "memory_slots": 1}"#,
            "",
            "UUlTS0lU",
        ));
        assert!(msg.contains("header.n_qubits"), "{msg}");
        let mut small = backend();
        small.limits.max_qpy_bytes = 8;
        let big = qpy(widths, "", "UUlTS0lUUUlT");
        let err = validate(big.as_bytes(), &small)
            .expect_err("over max_qpy_bytes")
            .to_string();
        assert!(err.contains("qpy is 12 bytes; at most 8"), "{err}");
        assert!(err.contains("(max_qpy_bytes)"), "{err}");
    }
}
