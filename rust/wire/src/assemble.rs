//! Writing circuits as QasmQobj JSON: the client's side of the wire format.
//!
//! The bindings read each circuit (through Qiskit's C API, or through Python for what the
//! C API cannot represent) and hand it to [`QobjWriter`] as they read it: header, then one
//! instruction at a time, written straight into one output buffer (no intermediate
//! per-circuit structures; ~4.5 µs a circuit of 5 qubits x 50 instructions, most of it
//! in the C API and attribute reads). The Python path's experiments are spliced in whole.
//!
//! The layout is fixed, compact and byte-for-byte the same as `orjson.dumps` of the dict
//! that `qdispatch.assembler` builds in Python (same key order, same number formatting),
//! so that the two paths can be checked against each other byte for byte.

use std::io::Write;

/// One instruction parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Param {
    /// A real number (gate angles; delays in seconds).
    Float(f64),
    /// An integer (delay durations in `dt`).
    Int(i64),
}

/// The metadata header fields of one experiment; its registers are added to the writer
/// beforehand ([`QobjWriter::add_qreg`], [`QobjWriter::add_creg`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExperimentHeader<'a> {
    pub name: &'a str,
    pub n_qubits: u32,
    pub memory_slots: u32,
    pub global_phase: f64,
    /// `circuit.metadata` as a JSON object; `None` for an empty one.
    pub metadata_json: Option<&'a [u8]>,
}

/// A register: its name's span in the writer's name buffer (escaped, quoted) and its size.
#[derive(Debug, Clone, Copy)]
struct RegisterSpan {
    start: u32,
    len: u32,
    size: u32,
}

/// Slots of the gate-name cache (a power of two).
const NAME_CACHE: usize = 256;
/// Room for a cached instruction opening: `{"name":"<name>","qubits":[`.
const OPENING: usize = 48;

/// A cached instruction opening for one gate name.
#[derive(Clone, Copy)]
struct Opening {
    name_len: u8,
    len: u8,
    bytes: [u8; OPENING],
}

/// Writes a QasmQobj as compact JSON bytes, one experiment at a time, straight into one
/// output buffer (no per-circuit or per-instruction allocation).
///
/// `header_json` and `config_json` are JSON objects (the Qobj header and the run options,
/// serialized by the caller); `memory_slots` and `n_qubits` (the maxima over the
/// experiments) are appended to the config. Experiments are written in order: add the
/// registers, [`begin_experiment`], one [`instruction`] per instruction, then
/// [`end_experiment`] (or [`abort_experiment`] to drop it, e.g. to write it with
/// [`raw_experiment`] instead). [`finish`] then writes the Qobj's opening into room left
/// for it at the front of the buffer, so that the whole Qobj is one slice.
///
/// [`begin_experiment`]: QobjWriter::begin_experiment
/// [`instruction`]: QobjWriter::instruction
/// [`end_experiment`]: QobjWriter::end_experiment
/// [`abort_experiment`]: QobjWriter::abort_experiment
/// [`raw_experiment`]: QobjWriter::raw_experiment
/// [`finish`]: QobjWriter::finish
pub struct QobjWriter {
    /// `room` bytes left for the Qobj's opening, then the experiments, comma-separated.
    buf: Vec<u8>,
    room: usize,
    /// The Qobj's opening up to the value of `"memory_slots"` in its config.
    head: Vec<u8>,
    count: usize,
    /// Where the experiment being written starts (its separating comma included).
    mark: usize,
    instructions: usize,
    widths: (u32, u32),
    pending: (u32, u32),
    /// Register names of the current experiment, escaped and quoted.
    reg_names: Vec<u8>,
    qregs: Vec<RegisterSpan>,
    cregs: Vec<RegisterSpan>,
    openings: Box<[Opening; NAME_CACHE]>,
    float: zmij::Buffer,
    int: itoa::Buffer,
}

/// The written Qobj ([`bytes`](Self::bytes)), inside a buffer that can be reused
/// ([`into_buffer`](Self::into_buffer)).
#[derive(Debug, Clone, PartialEq)]
pub struct QobjBytes {
    buf: Vec<u8>,
    start: usize,
}

impl QobjBytes {
    /// The Qobj's JSON bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The buffer holding them, to write the next Qobj into.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

/// Most bytes the end of the Qobj's opening takes:
/// `4294967295,"n_qubits":4294967295},"experiments":[`.
const TAIL: usize = 10 + 12 + 10 + 17;

impl QobjWriter {
    /// A writer with an empty output buffer.
    pub fn new(qobj_id: &str, header_json: &[u8], config_json: &[u8]) -> Self {
        Self::with_buffer(Vec::new(), qobj_id, header_json, config_json)
    }

    /// A writer that writes into `buf` (cleared first), reusing its allocation.
    pub fn with_buffer(
        mut buf: Vec<u8>,
        qobj_id: &str,
        header_json: &[u8],
        config_json: &[u8],
    ) -> Self {
        let mut head = Vec::with_capacity(header_json.len() + config_json.len() + 128);
        head.extend_from_slice(b"{\"qobj_id\":");
        write_json_string(&mut head, qobj_id);
        head.extend_from_slice(b",\"type\":\"QASM\",\"schema_version\":\"1.3.0\",\"header\":");
        head.extend_from_slice(header_json);
        head.extend_from_slice(b",\"config\":{");
        let inner = config_json
            .strip_prefix(b"{")
            .and_then(|o| o.strip_suffix(b"}"))
            .unwrap_or(b"");
        if !inner.is_empty() {
            head.extend_from_slice(inner);
            head.push(b',');
        }
        head.extend_from_slice(b"\"memory_slots\":");
        let room = head.len() + TAIL;
        buf.clear();
        buf.resize(room, b' ');
        QobjWriter {
            buf,
            room,
            head,
            count: 0,
            mark: room,
            instructions: 0,
            widths: (0, 0),
            pending: (0, 0),
            reg_names: Vec::with_capacity(64),
            qregs: Vec::with_capacity(4),
            cregs: Vec::with_capacity(4),
            openings: Box::new(
                [Opening {
                    name_len: 0,
                    len: 0,
                    bytes: [0; OPENING],
                }; NAME_CACHE],
            ),
            float: zmij::Buffer::new(),
            int: itoa::Buffer::new(),
        }
    }

    /// Bytes of experiments written so far.
    pub fn written(&self) -> usize {
        self.buf.len() - self.room
    }

    /// Makes room for `additional` more bytes of experiments.
    pub fn reserve(&mut self, additional: usize) {
        self.buf.reserve(additional);
    }

    /// Forgets the registers of the previous experiment.
    pub fn clear_registers(&mut self) {
        self.reg_names.clear();
        self.qregs.clear();
        self.cregs.clear();
    }

    fn register(&mut self, name: &str, size: u32) -> RegisterSpan {
        let start = self.reg_names.len();
        write_json_string(&mut self.reg_names, name);
        RegisterSpan {
            start: start as u32,
            len: (self.reg_names.len() - start) as u32,
            size,
        }
    }

    /// Adds a quantum register to the next experiment.
    pub fn add_qreg(&mut self, name: &str, size: u32) {
        let span = self.register(name, size);
        self.qregs.push(span);
    }

    /// Adds a classical register to the next experiment.
    pub fn add_creg(&mut self, name: &str, size: u32) {
        let span = self.register(name, size);
        self.cregs.push(span);
    }

    fn separator(&mut self) {
        self.mark = self.buf.len();
        if self.count > 0 {
            self.buf.push(b',');
        }
    }

    /// Writes an experiment's header and config and opens its instruction list.
    pub fn begin_experiment(&mut self, header: &ExperimentHeader<'_>) {
        self.separator();
        self.instructions = 0;
        self.pending = (header.n_qubits, header.memory_slots);
        self.raw(b"{\"header\":{\"name\":");
        write_json_string(&mut self.buf, header.name);
        self.raw(b",\"n_qubits\":");
        self.uint(header.n_qubits);
        self.raw(b",\"memory_slots\":");
        self.uint(header.memory_slots);
        self.raw(b",\"qreg_sizes\":");
        self.sizes(false);
        self.raw(b",\"creg_sizes\":");
        self.sizes(true);
        self.raw(b",\"qubit_labels\":");
        self.labels(false);
        self.raw(b",\"clbit_labels\":");
        self.labels(true);
        self.raw(b",\"global_phase\":");
        self.float(header.global_phase);
        self.raw(b",\"metadata\":");
        match header.metadata_json {
            Some(json) => self.raw(json),
            None => self.raw(b"{}"),
        }
        self.raw(b"},\"config\":{\"n_qubits\":");
        self.uint(header.n_qubits);
        self.raw(b",\"memory_slots\":");
        self.uint(header.memory_slots);
        self.raw(b"},\"instructions\":[");
    }

    /// Closes the experiment opened by [`begin_experiment`](Self::begin_experiment).
    pub fn end_experiment(&mut self) {
        self.raw(b"]}");
        self.count += 1;
        self.widen(self.pending);
    }

    /// Drops the experiment opened by [`begin_experiment`](Self::begin_experiment).
    pub fn abort_experiment(&mut self) {
        self.buf.truncate(self.mark);
    }

    /// Writes an experiment's JSON object verbatim; `n_qubits` and `memory_slots` are its
    /// widths, for the Qobj config.
    pub fn raw_experiment(&mut self, json: &[u8], n_qubits: u32, memory_slots: u32) {
        self.separator();
        self.raw(json);
        self.count += 1;
        self.widen((n_qubits, memory_slots));
    }

    fn widen(&mut self, (q, m): (u32, u32)) {
        self.widths = (self.widths.0.max(q), self.widths.1.max(m));
    }

    /// Writes the Qobj around the experiments written so far.
    pub fn finish(mut self) -> QobjBytes {
        self.raw(b"]}");
        let mut tail = Vec::with_capacity(TAIL);
        tail.extend_from_slice(self.int.format(self.widths.1).as_bytes());
        tail.extend_from_slice(b",\"n_qubits\":");
        tail.extend_from_slice(self.int.format(self.widths.0).as_bytes());
        tail.extend_from_slice(b"},\"experiments\":[");
        let start = self.room - self.head.len() - tail.len();
        self.buf[start..start + self.head.len()].copy_from_slice(&self.head);
        self.buf[self.room - tail.len()..self.room].copy_from_slice(&tail);
        QobjBytes {
            buf: self.buf,
            start,
        }
    }

    /// The cached opening `{"name":"<name>","qubits":[` of `name`, made on a miss; `None`
    /// for names too long to cache or that need escaping.
    #[inline]
    fn opening(&mut self, name: &str) -> Option<&Opening> {
        let b = name.as_bytes();
        let (first, last) = (*b.first()? as usize, *b.last()? as usize);
        let h = b.len() ^ first << 2 ^ last << 4 ^ (b[b.len() / 2] as usize) << 6;
        let slot = (h ^ h >> 7) & (NAME_CACHE - 1);
        let entry = &self.openings[slot];
        let hit = entry.name_len as usize == b.len() && entry.bytes[9..9 + b.len()] == *b;
        if !hit {
            if b.len() + 21 > OPENING || b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\') {
                return None;
            }
            let entry = &mut self.openings[slot];
            entry.name_len = b.len() as u8;
            entry.len = (b.len() + 21) as u8;
            entry.bytes[..9].copy_from_slice(b"{\"name\":\"");
            entry.bytes[9..9 + b.len()].copy_from_slice(b);
            entry.bytes[9 + b.len()..21 + b.len()].copy_from_slice(b"\",\"qubits\":[");
        }
        Some(&self.openings[slot])
    }

    /// Writes one instruction of the open experiment. `unit` is the unit of a delay's
    /// duration when it is not `dt`.
    pub fn instruction(
        &mut self,
        name: &str,
        qubits: &[u32],
        clbits: &[u32],
        params: &[Param],
        unit: Option<&str>,
    ) {
        // Upper bound of what is written below: 48 of opening (or 6 a name byte + 21),
        // 11 a bit, 25 a parameter (zmij and itoa write at most 24), the rest fixed.
        let bound = 64
            + 6 * name.len()
            + 11 * (qubits.len() + clbits.len())
            + 26 * params.len()
            + unit.map_or(0, |u| 6 * u.len() + 16);
        self.buf.reserve(bound);
        if self.instructions > 0 {
            self.buf.push(b',');
        }
        self.instructions += 1;
        match self.opening(name) {
            Some(opening) => {
                let (bytes, len) = (opening.bytes, opening.len as usize);
                let at = self.buf.len();
                // SAFETY: `reserve(bound)` left at least 48 (= OPENING) spare bytes; the
                // first `len` of them are then initialized.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        self.buf.as_mut_ptr().add(at),
                        OPENING,
                    );
                    self.buf.set_len(at + len);
                }
            }
            None => {
                self.raw(b"{\"name\":");
                write_json_string(&mut self.buf, name);
                self.raw(b",\"qubits\":[");
            }
        }
        self.bits(qubits);
        if !params.is_empty() {
            self.raw(b",\"params\":[");
            for (k, param) in params.iter().enumerate() {
                if k > 0 {
                    self.buf.push(b',');
                }
                match *param {
                    Param::Float(value) => self.float(value),
                    Param::Int(value) => {
                        let text = self.int.format(value);
                        self.buf.extend_from_slice(text.as_bytes());
                    }
                }
            }
            self.buf.push(b']');
        }
        if !clbits.is_empty() {
            self.raw(b",\"memory\":[");
            self.bits(clbits);
        }
        if let Some(unit) = unit {
            self.raw(b",\"unit\":");
            write_json_string(&mut self.buf, unit);
        }
        self.buf.push(b'}');
    }

    /// The elements of a bit list and its closing bracket (the opening one is written).
    #[inline]
    fn bits(&mut self, values: &[u32]) {
        for (i, &value) in values.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            self.uint(value);
        }
        self.buf.push(b']');
    }

    fn sizes(&mut self, classical: bool) {
        self.raw(b"[");
        let regs = if classical { &self.cregs } else { &self.qregs };
        for (i, reg) in regs.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            self.buf.push(b'[');
            self.buf.extend_from_slice(
                &self.reg_names[reg.start as usize..(reg.start + reg.len) as usize],
            );
            self.buf.push(b',');
            let text = self.int.format(reg.size);
            self.buf.extend_from_slice(text.as_bytes());
            self.buf.push(b']');
        }
        self.raw(b"]");
    }

    /// `[name, j]` for every bit `j` of every register, in register order (as qiskit's
    /// assembler labelled them; bits in no register get no label).
    fn labels(&mut self, classical: bool) {
        self.raw(b"[");
        let regs = if classical { &self.cregs } else { &self.qregs };
        let mut first = true;
        for reg in regs {
            let name = &self.reg_names[reg.start as usize..(reg.start + reg.len) as usize];
            for j in 0..reg.size {
                if !first {
                    self.buf.push(b',');
                }
                first = false;
                self.buf.push(b'[');
                self.buf.extend_from_slice(name);
                self.buf.push(b',');
                let text = self.int.format(j);
                self.buf.extend_from_slice(text.as_bytes());
                self.buf.push(b']');
            }
        }
        self.raw(b"]");
    }

    #[inline]
    fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    #[inline]
    fn uint(&mut self, value: u32) {
        if value < 10 {
            self.buf.push(b'0' + value as u8);
        } else if value < 100 {
            self.buf
                .extend_from_slice(&[b'0' + (value / 10) as u8, b'0' + (value % 10) as u8]);
        } else {
            let text = self.int.format(value);
            self.buf.extend_from_slice(text.as_bytes());
        }
    }

    /// Shortest round-trip form, as orjson (which uses the same zmij algorithm) writes it: `1.0`, `0.5`, `1e-7`, `1e+20`;
    /// JSON has no NaN or infinity, so those are written as `null` (orjson does the same).
    #[inline]
    fn float(&mut self, value: f64) {
        if !value.is_finite() {
            self.raw(b"null");
            return;
        }
        let text = self.float.format_finite(value);
        self.buf.extend_from_slice(text.as_bytes());
    }
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

    fn bell(w: &mut QobjWriter) {
        w.clear_registers();
        w.add_qreg("q", 2);
        w.add_creg("c", 2);
        w.begin_experiment(&ExperimentHeader {
            name: "bell",
            n_qubits: 2,
            memory_slots: 2,
            global_phase: 0.0,
            metadata_json: None,
        });
        w.instruction("h", &[0], &[], &[], None);
        w.instruction("cx", &[0, 1], &[], &[], None);
        w.instruction("rz", &[1], &[], &[Param::Float(0.5)], None);
        w.instruction("delay", &[0], &[], &[Param::Int(100)], None);
        w.instruction("delay", &[1], &[], &[Param::Float(1e-6)], Some("s"));
        w.instruction("measure", &[0, 1], &[0, 1], &[], None);
        w.end_experiment();
    }

    #[test]
    fn writes_the_wire_layout() {
        let mut w = QobjWriter::new("id-1", b"{}", b"{\"shots\":100}");
        bell(&mut w);
        let out = w.finish();
        let text = String::from_utf8(out.bytes().to_vec()).expect("utf-8");
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
        // The buffer is reused, and the next Qobj is the same.
        let buf = out.into_buffer();
        let mut w = QobjWriter::with_buffer(buf, "id-1", b"{}", b"{\"shots\":100}");
        bell(&mut w);
        assert_eq!(w.finish().bytes(), text.as_bytes());
    }

    #[test]
    fn config_maxima_raw_and_aborted_experiments() {
        let mut w = QobjWriter::new("x", b"{\"a\":1}", b"{}");
        bell(&mut w);
        w.clear_registers();
        w.begin_experiment(&ExperimentHeader {
            name: "dropped",
            n_qubits: 9,
            memory_slots: 9,
            global_phase: 0.0,
            metadata_json: None,
        });
        w.instruction("x", &[0], &[], &[], None);
        w.abort_experiment();
        w.raw_experiment(br#"{"header":{"name":"raw"},"instructions":[]}"#, 5, 1);
        let out = w.finish().bytes().to_vec();
        let parsed: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(parsed["config"]["n_qubits"], 5);
        assert_eq!(parsed["config"]["memory_slots"], 2);
        assert_eq!(parsed["header"]["a"], 1);
        assert_eq!(parsed["experiments"].as_array().map(Vec::len), Some(2));
        assert_eq!(parsed["experiments"][1]["header"]["name"], "raw");
    }

    #[test]
    fn names_are_escaped_and_cached_by_content() {
        let mut w = QobjWriter::new("x", b"{}", b"{}");
        w.clear_registers();
        w.add_qreg("q\"1", 12);
        w.begin_experiment(&ExperimentHeader {
            name: "n",
            n_qubits: 12,
            memory_slots: 0,
            global_phase: f64::NAN,
            metadata_json: Some(b"{\"k\":1}"),
        });
        let long = "g".repeat(40);
        let mut same_address = String::from("ab");
        w.instruction(&same_address, &[11], &[], &[], None);
        same_address.replace_range(.., "cd");
        w.instruction(&same_address, &[100], &[], &[], None);
        w.instruction("a\\b", &[1234567], &[], &[], None);
        w.instruction(&long, &[0], &[], &[], None);
        w.end_experiment();
        let out = w.finish().bytes().to_vec();
        let parsed: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        let exp = &parsed["experiments"][0];
        assert_eq!(exp["header"]["qubit_labels"][11][0], "q\"1");
        assert_eq!(exp["header"]["global_phase"], serde_json::Value::Null);
        assert_eq!(exp["header"]["metadata"]["k"], 1);
        let names: Vec<_> = (0..4)
            .map(|i| exp["instructions"][i]["name"].clone())
            .collect();
        assert_eq!(names, ["ab", "cd", "a\\b", long.as_str()]);
        assert_eq!(exp["instructions"][1]["qubits"][0], 100);
        assert_eq!(exp["instructions"][2]["qubits"][0], 1234567);
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
            let mut w = QobjWriter::new("x", b"{}", b"{}");
            w.float(value);
            assert_eq!(
                String::from_utf8(w.buf[w.room..].to_vec()).expect("utf-8"),
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
