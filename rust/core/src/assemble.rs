//! Writing circuits as QasmQobj JSON: the client's side of the wire format.
//!
//! The bindings read each circuit (through Qiskit's C API, or through Python for what the
//! C API cannot represent) into an [`Experiment`]; [`QobjWriter`] then writes the Qobj
//! bytes without touching Python, so that it can run with the GIL released.
//!
//! The layout is fixed, compact and byte-for-byte the same as `orjson.dumps` of the dict
//! that `qdispatch.assembler` builds in Python (same key order, same number formatting),
//! so that the two paths can be checked against each other byte for byte.

use std::io::Write;

/// A named register and its size, as `qreg_sizes` / `creg_sizes` list it.
#[derive(Debug, Clone, PartialEq)]
pub struct Register {
    pub name: String,
    pub size: u32,
}

/// One instruction parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Param {
    /// A real number (gate angles; delays in seconds).
    Float(f64),
    /// An integer (delay durations in `dt`).
    Int(i64),
}

/// One instruction of an [`InstructionList`]; its slices index the list's shared buffers.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Op {
    name: (u32, u32),
    qubits: (u32, u32),
    clbits: (u32, u32),
    params: (u32, u32),
    unit: Option<&'static str>,
}

/// The instructions of one circuit, flattened into a few shared buffers so that reading
/// a circuit costs a handful of allocations, not several per instruction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstructionList {
    ops: Vec<Op>,
    names: String,
    qubits: Vec<u32>,
    clbits: Vec<u32>,
    params: Vec<Param>,
}

fn span<T>(buf: &[T], start: usize) -> (u32, u32) {
    // Circuits hold far fewer than 2^32 instructions, bits or parameters.
    (start as u32, (buf.len() - start) as u32)
}

impl InstructionList {
    /// An empty list with room for `n` instructions.
    pub fn with_capacity(n: usize) -> Self {
        InstructionList {
            ops: Vec::with_capacity(n),
            names: String::with_capacity(n * 4),
            qubits: Vec::with_capacity(n * 2),
            clbits: Vec::new(),
            params: Vec::new(),
        }
    }

    /// Appends an instruction. `unit` is the unit of a delay's duration when it is not `dt`.
    pub fn push(
        &mut self,
        name: &str,
        qubits: &[u32],
        clbits: &[u32],
        params: impl IntoIterator<Item = Param>,
        unit: Option<&'static str>,
    ) {
        let n0 = self.names.len();
        self.names.push_str(name);
        let q0 = self.qubits.len();
        self.qubits.extend_from_slice(qubits);
        let c0 = self.clbits.len();
        self.clbits.extend_from_slice(clbits);
        let p0 = self.params.len();
        self.params.extend(params);
        self.ops.push(Op {
            name: (n0 as u32, (self.names.len() - n0) as u32),
            qubits: span(&self.qubits, q0),
            clbits: span(&self.clbits, c0),
            params: span(&self.params, p0),
            unit,
        });
    }

    /// Number of instructions.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the list holds no instruction.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The metadata header fields of one experiment, read once per circuit.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentHeader {
    pub name: String,
    pub n_qubits: u32,
    pub memory_slots: u32,
    pub qregs: Vec<Register>,
    pub cregs: Vec<Register>,
    pub global_phase: f64,
    /// `circuit.metadata` as a JSON object; `None` for an empty one.
    pub metadata_json: Option<Vec<u8>>,
}

/// One experiment, ready to be written.
#[derive(Debug, Clone, PartialEq)]
pub enum Experiment {
    /// Read natively: written here.
    Native {
        header: ExperimentHeader,
        instructions: InstructionList,
    },
    /// Built by the Python path (a circuit the native reader cannot represent): the
    /// experiment's JSON object, spliced in verbatim, and its width for the Qobj config.
    Raw {
        json: Vec<u8>,
        n_qubits: u32,
        memory_slots: u32,
    },
}

impl Experiment {
    fn widths(&self) -> (u32, u32) {
        match self {
            Experiment::Native { header, .. } => (header.n_qubits, header.memory_slots),
            Experiment::Raw {
                n_qubits,
                memory_slots,
                ..
            } => (*n_qubits, *memory_slots),
        }
    }
}

/// Writes a QasmQobj as compact JSON bytes.
///
/// `header_json` and `config_json` are JSON objects (the Qobj header and the run options,
/// serialized by the caller); `memory_slots` and `n_qubits` (the maxima over the
/// experiments) are appended to the config.
pub struct QobjWriter {
    buf: Vec<u8>,
    float: zmij::Buffer,
    int: itoa::Buffer,
}

impl Default for QobjWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl QobjWriter {
    /// A writer with an empty output buffer.
    pub fn new() -> Self {
        QobjWriter {
            buf: Vec::new(),
            float: zmij::Buffer::new(),
            int: itoa::Buffer::new(),
        }
    }

    /// Writes the whole Qobj and returns its bytes.
    pub fn write(
        mut self,
        qobj_id: &str,
        header_json: &[u8],
        config_json: &[u8],
        experiments: &[Experiment],
    ) -> Vec<u8> {
        let estimate: usize = experiments
            .iter()
            .map(|e| match e {
                // Measured: ~50 bytes an instruction, ~400 of header (5-qubit random circuits).
                Experiment::Native { instructions, .. } => 512 + 64 * instructions.len(),
                Experiment::Raw { json, .. } => json.len() + 1,
            })
            .sum();
        self.buf
            .reserve(estimate + header_json.len() + config_json.len() + 128);
        let (n_qubits, memory_slots) = experiments
            .iter()
            .map(Experiment::widths)
            .fold((0, 0), |(q, m), (eq, em)| (q.max(eq), m.max(em)));

        self.raw(b"{\"qobj_id\":");
        self.string(qobj_id);
        self.raw(b",\"type\":\"QASM\",\"schema_version\":\"1.3.0\",\"header\":");
        self.raw(header_json);
        self.raw(b",\"config\":");
        self.open_object(config_json);
        self.raw(b"\"memory_slots\":");
        self.uint(memory_slots);
        self.raw(b",\"n_qubits\":");
        self.uint(n_qubits);
        self.raw(b"},\"experiments\":[");
        for (i, experiment) in experiments.iter().enumerate() {
            if i > 0 {
                self.raw(b",");
            }
            match experiment {
                Experiment::Native {
                    header,
                    instructions,
                } => self.experiment(header, instructions),
                Experiment::Raw { json, .. } => self.raw(json),
            }
        }
        self.raw(b"]}");
        self.buf
    }

    /// Writes a JSON object without its closing brace, ready for more members.
    fn open_object(&mut self, object: &[u8]) {
        let inner = object
            .strip_prefix(b"{")
            .and_then(|o| o.strip_suffix(b"}"))
            .unwrap_or(b"");
        self.raw(b"{");
        if !inner.is_empty() {
            self.raw(inner);
            self.raw(b",");
        }
    }

    fn experiment(&mut self, header: &ExperimentHeader, list: &InstructionList) {
        self.raw(b"{\"header\":{\"name\":");
        self.string(&header.name);
        self.raw(b",\"n_qubits\":");
        self.uint(header.n_qubits);
        self.raw(b",\"memory_slots\":");
        self.uint(header.memory_slots);
        self.raw(b",\"qreg_sizes\":");
        self.sizes(&header.qregs);
        self.raw(b",\"creg_sizes\":");
        self.sizes(&header.cregs);
        self.raw(b",\"qubit_labels\":");
        self.labels(&header.qregs);
        self.raw(b",\"clbit_labels\":");
        self.labels(&header.cregs);
        self.raw(b",\"global_phase\":");
        self.float(header.global_phase);
        self.raw(b",\"metadata\":");
        match &header.metadata_json {
            Some(json) => self.raw(json),
            None => self.raw(b"{}"),
        }
        self.raw(b"},\"config\":{\"n_qubits\":");
        self.uint(header.n_qubits);
        self.raw(b",\"memory_slots\":");
        self.uint(header.memory_slots);
        self.raw(b"},\"instructions\":[");
        for (i, op) in list.ops.iter().enumerate() {
            if i > 0 {
                self.raw(b",");
            }
            self.raw(b"{\"name\":");
            let (start, len) = (op.name.0 as usize, op.name.1 as usize);
            self.string(&list.names[start..start + len]);
            self.raw(b",\"qubits\":");
            self.uints(slice(&list.qubits, op.qubits));
            let params = slice(&list.params, op.params);
            if !params.is_empty() {
                self.raw(b",\"params\":[");
                for (k, param) in params.iter().enumerate() {
                    if k > 0 {
                        self.raw(b",");
                    }
                    match *param {
                        Param::Float(value) => self.float(value),
                        Param::Int(value) => {
                            let text = self.int.format(value);
                            self.buf.extend_from_slice(text.as_bytes());
                        }
                    }
                }
                self.raw(b"]");
            }
            let clbits = slice(&list.clbits, op.clbits);
            if !clbits.is_empty() {
                self.raw(b",\"memory\":");
                self.uints(clbits);
            }
            if let Some(unit) = op.unit {
                self.raw(b",\"unit\":");
                self.string(unit);
            }
            self.raw(b"}");
        }
        self.raw(b"]}");
    }

    fn sizes(&mut self, registers: &[Register]) {
        self.raw(b"[");
        for (i, reg) in registers.iter().enumerate() {
            if i > 0 {
                self.raw(b",");
            }
            self.raw(b"[");
            self.string(&reg.name);
            self.raw(b",");
            self.uint(reg.size);
            self.raw(b"]");
        }
        self.raw(b"]");
    }

    /// `[name, j]` for every bit `j` of every register, in register order (as qiskit's
    /// assembler labelled them; bits in no register get no label).
    fn labels(&mut self, registers: &[Register]) {
        self.raw(b"[");
        let mut first = true;
        for reg in registers {
            for j in 0..reg.size {
                if !first {
                    self.raw(b",");
                }
                first = false;
                self.raw(b"[");
                self.string(&reg.name);
                self.raw(b",");
                self.uint(j);
                self.raw(b"]");
            }
        }
        self.raw(b"]");
    }

    fn uints(&mut self, values: &[u32]) {
        self.raw(b"[");
        for (i, &value) in values.iter().enumerate() {
            if i > 0 {
                self.raw(b",");
            }
            self.uint(value);
        }
        self.raw(b"]");
    }

    #[inline]
    fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    #[inline]
    fn uint(&mut self, value: u32) {
        let text = self.int.format(value);
        self.buf.extend_from_slice(text.as_bytes());
    }

    /// Shortest round-trip form, as orjson (which uses the same zmij algorithm) writes it: `1.0`, `0.5`, `1e-7`, `1e+20`;
    /// JSON has no NaN or infinity, so those are written as `null` (orjson does the same).
    fn float(&mut self, value: f64) {
        if !value.is_finite() {
            self.raw(b"null");
            return;
        }
        let text = self.float.format_finite(value);
        self.buf.extend_from_slice(text.as_bytes());
    }

    fn string(&mut self, value: &str) {
        write_json_string(&mut self.buf, value);
    }
}

fn slice<T>(buf: &[T], (start, len): (u32, u32)) -> &[T] {
    &buf[start as usize..(start + len) as usize]
}

/// Writes `value` as a JSON string, escaping as orjson does (UTF-8 kept as is).
fn write_json_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            // Writing to a Vec cannot fail.
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bell() -> Experiment {
        let mut list = InstructionList::with_capacity(3);
        list.push("h", &[0], &[], [], None);
        list.push("cx", &[0, 1], &[], [], None);
        list.push("rz", &[1], &[], [Param::Float(0.5)], None);
        list.push("delay", &[0], &[], [Param::Int(100)], None);
        list.push("delay", &[1], &[], [Param::Float(1e-6)], Some("s"));
        list.push("measure", &[0, 1], &[0, 1], [], None);
        Experiment::Native {
            header: ExperimentHeader {
                name: "bell".into(),
                n_qubits: 2,
                memory_slots: 2,
                qregs: vec![Register {
                    name: "q".into(),
                    size: 2,
                }],
                cregs: vec![Register {
                    name: "c".into(),
                    size: 2,
                }],
                global_phase: 0.0,
                metadata_json: None,
            },
            instructions: list,
        }
    }

    #[test]
    fn writes_the_wire_layout() {
        let out = QobjWriter::new().write("id-1", b"{}", b"{\"shots\":100}", &[bell()]);
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            concat!(
                r#"{"qobj_id":"id-1","type":"QASM","schema_version":"1.3.0","header":{},"#,
                r#""config":{"shots":100,"memory_slots":2,"n_qubits":2},"experiments":[{"#,
                r#""header":{"name":"bell","n_qubits":2,"memory_slots":2,"#,
                r#""qreg_sizes":[["q",2]],"creg_sizes":[["c",2]],"#,
                r#""qubit_labels":[["q",0],["q",1]],"clbit_labels":[["c",0],["c",1]],"#,
                r#""global_phase":0.0,"metadata":{}},"config":{"n_qubits":2,"memory_slots":2},"#,
                r#""instructions":[{"name":"h","qubits":[0]},{"name":"cx","qubits":[0,1]},"#,
                r#"{"name":"rz","qubits":[1],"params":[0.5]},"#,
                r#"{"name":"delay","qubits":[0],"params":[100]},"#,
                r#"{"name":"delay","qubits":[1],"params":[1e-6],"unit":"s"},"#,
                r#"{"name":"measure","qubits":[0,1],"memory":[0,1]}]}]}"#
            )
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(parsed["config"]["shots"], 100);
    }

    #[test]
    fn config_maxima_and_raw_experiments() {
        let raw = Experiment::Raw {
            json: br#"{"header":{"name":"raw"},"instructions":[]}"#.to_vec(),
            n_qubits: 5,
            memory_slots: 1,
        };
        let out = QobjWriter::new().write("x", b"{\"a\":1}", b"{}", &[bell(), raw]);
        let parsed: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(parsed["config"]["n_qubits"], 5);
        assert_eq!(parsed["config"]["memory_slots"], 2);
        assert_eq!(parsed["header"]["a"], 1);
        assert_eq!(parsed["experiments"][1]["header"]["name"], "raw");
    }

    #[test]
    fn formats_numbers_like_orjson() {
        // Expected strings are what orjson 3.13 writes for the same values.
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e-6, "1e-6"),
            (1e-7, "1e-7"),
            (1e20, "1e+20"),
            (1e16, "1e+16"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (5e-324, "5e-324"),
            (1.5e300, "1.5e+300"),
            (f64::NAN, "null"),
        ];
        for (value, expected) in cases {
            let mut w = QobjWriter::new();
            w.float(value);
            assert_eq!(
                String::from_utf8(w.buf).expect("utf-8"),
                expected,
                "{value}"
            );
        }
    }

    #[test]
    fn escapes_strings() {
        let mut out = Vec::new();
        write_json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "\"a\\\"b\\\\c\\nd\\u0001é\""
        );
    }
}
