//! Counts of a qiskit Result dict, in the bitstring form `qiskit.result.Result.get_counts`
//! gives: hex keys (`"0x3"`) become binary, zero-padded to the header's `memory_slots` and
//! split into space-separated groups by `creg_sizes` (last register first), as
//! `qiskit.result.postprocess.format_counts` does.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::WireError;

#[derive(Deserialize)]
struct ResultDict<'a> {
    #[serde(default, borrow)]
    results: Vec<ExperimentResult<'a>>,
}

#[derive(Deserialize)]
struct ExperimentResult<'a> {
    #[serde(default, borrow)]
    data: Option<ExperimentData<'a>>,
    #[serde(default)]
    header: Option<CountsHeader>,
}

#[derive(Deserialize)]
struct ExperimentData<'a> {
    #[serde(default, borrow)]
    counts: Option<CountsMap<'a>>,
}

#[derive(Deserialize, Default)]
struct CountsHeader {
    #[serde(default)]
    memory_slots: Option<u64>,
    #[serde(default)]
    creg_sizes: Option<Vec<(IgnoredAny, u64)>>,
}

/// One experiment's counts: `(bitstring, count)` pairs in the order of the result.
pub type Counts = Vec<(String, u64)>;

/// The counts of every experiment of a Result, each distinct bitstring stored once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CountsTable {
    /// The distinct bitstrings.
    pub keys: Vec<String>,
    /// `(index into keys, count)` pairs of all experiments, in order.
    pub pairs: Vec<(u32, u64)>,
    /// Per experiment, its range of `pairs`, or `None` for an experiment without counts.
    pub experiments: Vec<Option<(usize, usize)>>,
}

impl CountsTable {
    /// Experiment `i`'s `(key index, count)` pairs, `None` when it has no counts.
    pub fn experiment(&self, i: usize) -> Option<&[(u32, u64)]> {
        self.experiments[i].map(|(a, b)| &self.pairs[a..b])
    }
}

/// For each experiment of `json` (a qiskit Result dict), its counts as `(bitstring, count)`
/// pairs in the order of the result, or `None` for an experiment without counts.
pub fn counts_from_result(json: &[u8]) -> Result<Vec<Option<Counts>>, WireError> {
    let table = counts_table(json)?;
    Ok((0..table.experiments.len())
        .map(|i| {
            table.experiment(i).map(|pairs| {
                pairs
                    .iter()
                    .map(|&(k, n)| (table.keys[k as usize].clone(), n))
                    .collect()
            })
        })
        .collect())
}

/// Hex keys below this are looked up in a per-layout table.
const DIRECT: u64 = 1024;

/// The bitstrings of one register layout (`memory_slots`, `creg_sizes`) made so far.
struct Layout {
    slots: Option<u64>,
    cregs: Vec<u64>,
    /// `direct[v]`: index + 1 of the bitstring of hex value `v`, 0 when not made yet.
    direct: Vec<u32>,
}

/// Like [`counts_from_result`], with each distinct bitstring formatted (and stored) once.
pub fn counts_table(json: &[u8]) -> Result<CountsTable, WireError> {
    let result: ResultDict<'_> = serde_json::from_slice(json)?;
    let mut table = CountsTable {
        keys: Vec::new(),
        pairs: Vec::new(),
        experiments: Vec::with_capacity(result.results.len()),
    };
    let total: usize = result
        .results
        .iter()
        .filter_map(|e| e.data.as_ref()?.counts.as_ref().map(|c| c.0.len()))
        .sum();
    table.pairs.reserve(total);
    let mut layouts: Vec<Layout> = Vec::new();
    let mut others: HashMap<(usize, String), u32> = HashMap::new();
    for exp in result.results {
        let Some(counts) = exp.data.and_then(|d| d.counts) else {
            table.experiments.push(None);
            continue;
        };
        let header = exp.header.unwrap_or_default();
        let slots = header.memory_slots.filter(|&n| n > 0);
        let cregs = header.creg_sizes.unwrap_or_default();
        let same = |l: &Layout| {
            l.slots == slots
                && l.cregs.len() == cregs.len()
                && l.cregs.iter().zip(&cregs).all(|(a, b)| *a == b.1)
        };
        let layout = match layouts.iter().rposition(same) {
            Some(i) => i,
            None => {
                layouts.push(Layout {
                    slots,
                    cregs: cregs.iter().map(|c| c.1).collect(),
                    direct: Vec::new(),
                });
                layouts.len() - 1
            }
        };
        let start = table.pairs.len();
        for (key, n) in counts.0 {
            let index = match small_hex(&key) {
                Some(v) => {
                    let l = &mut layouts[layout];
                    if l.direct.is_empty() {
                        l.direct = vec![0; DIRECT as usize];
                    }
                    match l.direct[v as usize] {
                        0 => {
                            let text = format_key(&key, l.slots, &l.cregs)?;
                            table.keys.push(text);
                            let index = (table.keys.len() - 1) as u32;
                            l.direct[v as usize] = index + 1;
                            index
                        }
                        i => i - 1,
                    }
                }
                None => {
                    let l = &layouts[layout];
                    let text = format_key(&key, l.slots, &l.cregs)?;
                    match others.get(&(layout, text)) {
                        Some(&i) => i,
                        None => {
                            let text = format_key(&key, l.slots, &l.cregs)?;
                            table.keys.push(text.clone());
                            let index = (table.keys.len() - 1) as u32;
                            others.insert((layout, text), index);
                            index
                        }
                    }
                }
            };
            table.pairs.push((index, n));
        }
        table.experiments.push(Some((start, table.pairs.len())));
    }
    Ok(table)
}

/// The value of a hex key `0x...` when it is below [`DIRECT`].
fn small_hex(key: &str) -> Option<u64> {
    let hex = key.strip_prefix("0x")?.as_bytes();
    if hex.is_empty() || hex.len() > 8 {
        return None;
    }
    let mut v = 0u64;
    for &c in hex {
        v = v * 16 + (c as char).to_digit(16)? as u64;
    }
    (v < DIRECT).then_some(v)
}

/// A JSON string, borrowed from the document when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(Visit(std::marker::PhantomData))
    }
}

/// A JSON object read as its `(key, value)` pairs in document order.
struct CountsMap<'a>(Vec<(Cow<'a, str>, u64)>);

impl<'de: 'a, 'a> Deserialize<'de> for CountsMap<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Pairs<'a> {
            type Value = CountsMap<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a counts object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((k, v)) = map.next_entry::<Key<'a>, u64>()? {
                    out.push((k.0, v));
                }
                Ok(CountsMap(out))
            }
        }
        d.deserialize_map(Pairs(std::marker::PhantomData))
    }
}

/// The widest register layout (memory slots, registers, a register's size) whose keys are
/// formatted here. Every key is padded to the layout's width up front, so a header that
/// declares more (a hostile service's `memory_slots` of 2^64 − 1) would make a small
/// document allocate without bound; such experiments are left to qiskit, which formats
/// a key only when it is asked for.
pub const MAX_KEY_WIDTH: u64 = 1 << 12;

fn too_wide(slots: Option<u64>, cregs: &[u64]) -> bool {
    slots.is_some_and(|n| n > MAX_KEY_WIDTH)
        || cregs.len() as u64 > MAX_KEY_WIDTH
        || cregs.iter().any(|&size| size > MAX_KEY_WIDTH)
}

/// One key, formatted as `format_counts_memory` formats it.
fn format_key(key: &str, slots: Option<u64>, cregs: &[u64]) -> Result<String, WireError> {
    if too_wide(slots, cregs) {
        return Err(refused("a register layout wider than MAX_KEY_WIDTH"));
    }
    let bits = if let Some(hex) = key.strip_prefix("0x") {
        hex_to_bin(hex).ok_or_else(|| bad_key(key))?
    } else if slots.is_none() && cregs.is_empty() {
        // qiskit keeps bitstrings as they are when there is nothing to format them with.
        return Ok(key.to_owned());
    } else {
        let digits: String = key
            .strip_prefix("0b")
            .unwrap_or(key)
            .chars()
            .filter(|c| *c != ' ' && *c != '_')
            .collect();
        if digits.is_empty() || !digits.bytes().all(|b| b == b'0' || b == b'1') {
            return Err(bad_key(key));
        }
        let trimmed = digits.trim_start_matches('0');
        if trimmed.is_empty() {
            "0".to_owned()
        } else {
            trimmed.to_owned()
        }
    };
    let Some(slots) = slots else {
        return Ok(bits);
    };
    let width = usize::try_from(slots).map_err(|_| bad_key(key))?;
    let padded = if bits.len() < width {
        let mut s = "0".repeat(width - bits.len());
        s.push_str(&bits);
        s
    } else {
        bits
    };
    if cregs.is_empty() {
        return Ok(padded);
    }
    // `_separate_bitstring`: slices of the padded string, last register first, clamped to
    // its length like Python slicing.
    let mut out = String::with_capacity(padded.len() + cregs.len());
    let mut start = 0usize;
    for (i, &size) in cregs.iter().rev().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let lo = start.min(padded.len());
        let hi = start.saturating_add(size).min(padded.len());
        out.push_str(&padded[lo..hi]);
        start = start.saturating_add(size);
    }
    Ok(out)
}

fn bad_key(key: &str) -> WireError {
    WireError::Json(format!("counts key {key:?} is not a hex or binary string"))
}

/// `bin(int(hex, 16))[2:]` for hex strings of any length.
fn hex_to_bin(hex: &str) -> Option<String> {
    if hex.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(hex.len() * 4);
    for c in hex.chars() {
        let v = c.to_digit(16)?;
        for shift in (0..4).rev() {
            let bit = (v >> shift) & 1;
            if bit == 1 || !out.is_empty() {
                out.push(if bit == 1 { '1' } else { '0' });
            }
        }
    }
    if out.is_empty() {
        out.push('0');
    }
    Some(out)
}

/// The outline of a qiskit Result dict, read without building the experiments: where each
/// experiment's JSON lies, what `Result.get_counts` needs of it, and the other members.
/// Each experiment is then built on access from its own bytes (by `ExperimentResult.from_dict`)
/// and its counts, where [`FastCounts`] allows, straight from the outline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outline {
    /// The members other than `results`, as a JSON object in document order.
    pub top: String,
    /// The experiments, in order.
    pub experiments: Vec<ExperimentOutline>,
    /// Whether every experiment's header is an object, null or absent: qiskit's lookup by
    /// name calls `header.get` on each experiment that has one.
    pub names_ok: bool,
    /// The distinct counts keys, as written (`0x…`).
    pub hex_keys: Vec<String>,
    /// The distinct bitstrings the keys format to (per register layout).
    pub bin_keys: Vec<String>,
    /// `(hex key, bitstring, count)` of every [`FastCounts`], experiment after experiment.
    pub pairs: Vec<(u32, u32, u64)>,
}

/// One experiment of an [`Outline`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExperimentOutline {
    /// The byte range of the experiment's JSON object in the document.
    pub span: (usize, usize),
    /// Whether `success` is JSON `true`.
    pub success: bool,
    /// The name qiskit matches by: the header's `name` string (`""` when the header has
    /// none); `None` when no name can match (no header, or a name that is not a string).
    pub name: Option<String>,
    /// Its counts, when `Counts(data["counts"], **header fields)` can be built from the
    /// outline with the result qiskit's constructor gives; `None` otherwise.
    pub counts: Option<FastCounts>,
}

/// Counts an outline holds: hex keys (`0x` and hex digits, no key twice) with integer
/// counts, and a header whose `memory_slots` is an integer, `creg_sizes` a list of
/// `[name, size]` and `time_taken` absent (each may be null or absent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FastCounts {
    /// The experiment's range of [`Outline::pairs`].
    pub pairs: (usize, usize),
    /// The header's `memory_slots`.
    pub memory_slots: Option<u64>,
    /// The header's `creg_sizes`.
    pub creg_sizes: Option<Vec<(String, u64)>>,
}

/// Reads the outline of `json`, a qiskit Result dict. An error for any document that
/// `Result.from_dict(orjson.loads(json))` might refuse or read otherwise (not JSON, no
/// `results` list, an experiment without `shots`, `success` or a `data` object, a bad
/// `meas_return`, a member named `self`, a tracked field given twice…): the caller then
/// builds the Result eagerly, as qiskit does.
pub fn outline(json: &[u8]) -> Result<Outline, WireError> {
    let text = std::str::from_utf8(json).map_err(|e| WireError::Json(e.to_string()))?;
    // One validating pass over the whole document, which keeps what the outline needs of
    // each experiment as text; headers and counts are then walked as the valid JSON they are.
    let top: TopOutline<'_> = serde_json::from_str(text)?;
    let Some(raw_results) = top.results else {
        return Err(WireError::Json("the result has no 'results' list".into()));
    };
    let mut out = Outline {
        names_ok: true,
        ..Outline::default()
    };
    out.top.push('{');
    for (i, (key, value)) in top.members.iter().enumerate() {
        if i > 0 {
            out.top.push(',');
        }
        out.top.push_str(&serde_json::to_string(key.as_ref())?);
        out.top.push(':');
        out.top.push_str(value.get());
    }
    out.top.push('}');
    let base = text.as_ptr() as usize;
    let mut keys = KeyTable::default();
    out.experiments.reserve(raw_results.len());
    for (n, exp) in raw_results.into_iter().enumerate() {
        let mut item = ExperimentOutline {
            span: exp.span(text.as_bytes(), base)?,
            success: exp.success == "true",
            name: None,
            counts: None,
        };
        let header = match exp.header {
            None | Some("null") => None,
            Some(h) if h.starts_with('{') => Some(HeaderOutline::read(h)?),
            Some(_) => {
                // qiskit calls `header.get`/`header.items` on it: its errors, its way.
                out.names_ok = false;
                out.experiments.push(item);
                continue;
            }
        };
        if let Some(h) = &header {
            item.name = match h.name {
                None => Some(String::new()),
                Some(v) if v.starts_with('"') => Some(serde_json::from_str(v)?),
                Some(_) => None,
            };
        }
        if let Some(counts) = exp.counts {
            let layout = match &header {
                None => Some((None, None)),
                Some(h) => h.layout(),
            };
            if let Some((slots, cregs)) = layout {
                item.counts = keys.add(&mut out, n, counts, slots, cregs)?;
            }
        }
        out.experiments.push(item);
    }
    out.hex_keys = keys.hex;
    out.bin_keys = keys.bin;
    Ok(out)
}

/// The top level: `results` (once) and the other members in order.
struct TopOutline<'a> {
    results: Option<Vec<ExpOutline<'a>>>,
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'de: 'a, 'a> Deserialize<'de> for TopOutline<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = TopOutline<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a result object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut out = TopOutline {
                    results: None,
                    members: Vec::new(),
                };
                while let Some(key) = map.next_key::<Key<'a>>()? {
                    match key.0.as_ref() {
                        "results" if out.results.is_some() => {
                            return Err(serde::de::Error::duplicate_field("results"))
                        }
                        "results" => out.results = Some(map.next_value()?),
                        "self" => return Err(serde::de::Error::custom("a member named 'self'")),
                        _ => out.members.push((key.0, map.next_value()?)),
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// One experiment: what `ExperimentResult.from_dict` requires, and what `get_counts`
/// reads, each value as written; where its first and last member names lie.
struct ExpOutline<'a> {
    first: &'a str,
    last: &'a str,
    success: &'a str,
    counts: Option<&'a str>,
    header: Option<&'a str>,
}

impl ExpOutline<'_> {
    /// The byte range of the experiment's object in `text` (whose start is at `base`):
    /// from the `{` before its first member to the `}` after its last.
    fn span(&self, text: &[u8], base: usize) -> Result<(usize, usize), WireError> {
        let first = self.first.as_ptr() as usize - base - 1;
        let mut start = first;
        while start > 0 && matches!(text[start - 1], b' ' | b'\t' | b'\n' | b'\r') {
            start -= 1;
        }
        let last = self.last.as_ptr() as usize - base - 1;
        let colon = skip_ws(text, skip_value(text, last));
        let end = skip_ws(text, skip_value(text, skip_ws(text, colon + 1)));
        if start == 0 || text[start - 1] != b'{' || text.get(end) != Some(&b'}') {
            return Err(refused(
                "an experiment whose bounds the outline cannot find",
            ));
        }
        Ok((start - 1, end + 1))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ExpOutline<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = ExpOutline<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an experiment result object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                use serde::de::Error;
                let twice = |name: &str| M::Error::custom(format!("'{name}' given twice"));
                let (mut first, mut last) = (None, None);
                let mut shots = false;
                let mut success: Option<&'a RawValue> = None;
                let mut data: Option<DataOutline<'a>> = None;
                let mut header: Option<&'a RawValue> = None;
                let mut meas_return = false;
                while let Some(key) = map.next_key::<Key<'a>>()? {
                    // The span is found from where the first and last names lie.
                    let Cow::Borrowed(key) = key.0 else {
                        return Err(M::Error::custom("an escaped member name"));
                    };
                    first.get_or_insert(key);
                    last = Some(key);
                    match key {
                        "shots" if shots => return Err(twice("shots")),
                        "success" if success.is_some() => return Err(twice("success")),
                        "data" if data.is_some() => return Err(twice("data")),
                        "header" if header.is_some() => return Err(twice("header")),
                        "meas_return" if meas_return => return Err(twice("meas_return")),
                        "shots" => {
                            map.next_value::<&'a RawValue>()?;
                            shots = true;
                        }
                        "success" => success = Some(map.next_value()?),
                        "data" => data = Some(map.next_value()?),
                        "header" => header = Some(map.next_value()?),
                        "meas_return" => {
                            // `ExperimentResult` refuses any other value.
                            match map.next_value::<Option<Cow<'a, str>>>() {
                                Ok(None) => {}
                                Ok(Some(v)) if v == "avg" || v == "single" => {}
                                _ => return Err(M::Error::custom("a meas_return qiskit refuses")),
                            }
                            meas_return = true;
                        }
                        "self" => return Err(M::Error::custom("a member named 'self'")),
                        _ => {
                            map.next_value::<&'a RawValue>()?;
                        }
                    }
                }
                if !shots {
                    return Err(M::Error::missing_field("shots"));
                }
                Ok(ExpOutline {
                    first: first.unwrap_or_default(),
                    last: last.unwrap_or_default(),
                    success: success
                        .ok_or_else(|| M::Error::missing_field("success"))?
                        .get(),
                    counts: data
                        .ok_or_else(|| M::Error::missing_field("data"))?
                        .counts
                        .map(|c| c.get())
                        .filter(|c| *c != "null"),
                    header: header.map(|h| h.get()),
                })
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// An experiment's `data` object: its `counts`, if any, as written.
struct DataOutline<'a> {
    counts: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for DataOutline<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = DataOutline<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an experiment data object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                use serde::de::Error;
                let mut counts: Option<&'a RawValue> = None;
                while let Some(key) = map.next_key::<Key<'a>>()? {
                    match key.0.as_ref() {
                        "counts" if counts.is_some() => {
                            return Err(M::Error::custom("'counts' given twice"))
                        }
                        "counts" => counts = Some(map.next_value()?),
                        // `ExperimentResultData(**data)` refuses these (a second `self`,
                        // `setattr` of a dunder).
                        k if k == "self" || k.starts_with("__") => {
                            return Err(M::Error::custom(format!("a data member named {k:?}")))
                        }
                        _ => {
                            map.next_value::<&'a RawValue>()?;
                        }
                    }
                }
                Ok(DataOutline { counts })
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// The header fields `get_counts` and the lookup by name read, each as written.
#[derive(Default)]
struct HeaderOutline<'a> {
    name: Option<&'a str>,
    memory_slots: Option<&'a str>,
    creg_sizes: Option<&'a str>,
    time_taken: Option<&'a str>,
}

type CountsLayout = (Option<u64>, Option<Vec<(String, u64)>>);

impl<'a> HeaderOutline<'a> {
    fn read(text: &'a str) -> Result<Self, WireError> {
        let mut h = HeaderOutline::default();
        for (key, value) in Members::of(text)? {
            match key?.as_ref() {
                "name" => set(&mut h.name, value, "name")?,
                "memory_slots" => set(&mut h.memory_slots, value, "memory_slots")?,
                "creg_sizes" => set(&mut h.creg_sizes, value, "creg_sizes")?,
                "time_taken" => set(&mut h.time_taken, value, "time_taken")?,
                _ => {}
            }
        }
        Ok(h)
    }

    /// `memory_slots` and `creg_sizes` when the outline can format counts with them.
    fn layout(&self) -> Option<CountsLayout> {
        if self.time_taken.is_some_and(|t| t != "null") {
            return None;
        }
        let slots = match self.memory_slots {
            None | Some("null") => None,
            Some(v) => Some(v.parse::<u64>().ok()?),
        };
        let cregs = match self.creg_sizes {
            None | Some("null") => None,
            Some(v) => Some(serde_json::from_str::<Vec<(String, u64)>>(v).ok()?),
        };
        let sizes: Vec<u64> = cregs.iter().flatten().map(|c| c.1).collect();
        if too_wide(slots, &sizes) {
            return None;
        }
        Some((slots, cregs))
    }
}

fn refused(what: &str) -> WireError {
    WireError::Json(format!("{what}: left to qiskit"))
}

fn set<'a>(slot: &mut Option<&'a str>, value: &'a str, name: &str) -> Result<(), WireError> {
    if slot.replace(value).is_some() {
        return Err(refused(&format!("'{name}' given twice")));
    }
    Ok(())
}

/// The members of a JSON object already validated (a `RawValue`'s text): each key (its
/// text decoded) and its value's text. Values are skipped by bracket and quote matching,
/// not parsed.
struct Members<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
}

impl<'a> Members<'a> {
    fn of(text: &'a str) -> Result<Self, WireError> {
        let bytes = text.as_bytes();
        let at = skip_ws(bytes, 0);
        if bytes.get(at) != Some(&b'{') {
            return Err(refused("not an object"));
        }
        Ok(Members {
            bytes,
            text,
            at: at + 1,
        })
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = (Result<Cow<'a, str>, WireError>, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.bytes;
        let mut at = skip_ws(b, self.at);
        if b.get(at) == Some(&b',') {
            at = skip_ws(b, at + 1);
        }
        if b.get(at) != Some(&b'"') {
            return None; // `}`
        }
        let key_end = skip_value(b, at);
        let raw_key = &self.text[at..key_end];
        let key = if raw_key.contains('\\') {
            serde_json::from_str::<String>(raw_key)
                .map(Cow::Owned)
                .map_err(WireError::from)
        } else {
            Ok(Cow::Borrowed(&raw_key[1..raw_key.len() - 1]))
        };
        let colon = skip_ws(b, key_end);
        let start = skip_ws(b, colon + 1);
        let end = skip_value(b, start);
        self.at = end;
        Some((key, &self.text[start..end]))
    }
}

fn skip_ws(b: &[u8], mut at: usize) -> usize {
    while at < b.len() && matches!(b[at], b' ' | b'\t' | b'\n' | b'\r') {
        at += 1;
    }
    at
}

/// The end of the (valid) JSON value starting at `at`.
fn skip_value(b: &[u8], mut at: usize) -> usize {
    let mut depth = 0usize;
    while at < b.len() {
        match b[at] {
            b'"' => {
                at += 1;
                while at < b.len() && b[at] != b'"' {
                    at += if b[at] == b'\\' { 2 } else { 1 };
                }
                at += 1;
                if depth == 0 {
                    return at;
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => match depth {
                0 => return at,
                1 => return at + 1,
                _ => depth -= 1,
            },
            b',' | b' ' | b'\t' | b'\n' | b'\r' if depth == 0 => return at,
            _ => {}
        }
        at += 1;
    }
    at
}

/// The distinct keys and bitstrings of an outline.
#[derive(Default)]
struct KeyTable {
    hex: Vec<String>,
    bin: Vec<String>,
    index: HashMap<String, u32>,
    /// Per register layout (`memory_slots` when non-zero, register sizes), the bitstring
    /// of each hex key (index + 1; 0 when not made yet).
    layouts: Vec<(Option<u64>, Vec<u64>, Vec<u32>)>,
    /// `seen[hex key]`: the experiment number + 1 that last held the key.
    seen: Vec<u32>,
}

impl KeyTable {
    /// Adds an experiment's counts (`raw`, as written) when the outline can hold them.
    fn add(
        &mut self,
        out: &mut Outline,
        experiment: usize,
        raw: &str,
        memory_slots: Option<u64>,
        creg_sizes: Option<Vec<(String, u64)>>,
    ) -> Result<Option<FastCounts>, WireError> {
        if !raw.starts_with('{') {
            return Ok(None);
        }
        let pairs = Members::of(raw)?
            .map(|(k, v)| k.map(|k| (k, v)))
            .collect::<Result<Vec<_>, _>>()?;
        // `Counts` formats with `memory_slots` and `creg_sizes` only when they are truthy.
        let slots = memory_slots.filter(|&n| n > 0);
        let cregs: Vec<u64> = creg_sizes
            .as_ref()
            .map(|c| c.iter().map(|r| r.1).collect())
            .unwrap_or_default();
        let layout = match self
            .layouts
            .iter()
            .rposition(|l| l.0 == slots && l.1 == cregs)
        {
            Some(i) => i,
            None => {
                self.layouts.push((slots, cregs, Vec::new()));
                self.layouts.len() - 1
            }
        };
        let start = out.pairs.len();
        let stamp = u32::try_from(experiment + 1).unwrap_or(u32::MAX);
        for (key, value) in pairs {
            let key = key.as_ref();
            let (Some(digits), Ok(n)) = (key.strip_prefix("0x"), value.parse::<u64>()) else {
                out.pairs.truncate(start);
                return Ok(None);
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.pairs.truncate(start);
                return Ok(None);
            }
            let hex = match self.index.get(key) {
                Some(&i) => i,
                None => {
                    self.hex.push(key.to_owned());
                    self.seen.push(0);
                    let i = (self.hex.len() - 1) as u32;
                    self.index.insert(key.to_owned(), i);
                    i
                }
            };
            // A key given twice: qiskit's dicts keep one of them; build those with qiskit.
            if self.seen[hex as usize] == stamp {
                out.pairs.truncate(start);
                return Ok(None);
            }
            self.seen[hex as usize] = stamp;
            let (slots, cregs, made) = &mut self.layouts[layout];
            if made.len() <= hex as usize {
                made.resize(self.hex.len(), 0);
            }
            let bin = match made[hex as usize] {
                0 => {
                    self.bin.push(format_key(key, *slots, cregs)?);
                    let i = (self.bin.len() - 1) as u32;
                    made[hex as usize] = i + 1;
                    i
                }
                i => i - 1,
            };
            out.pairs.push((hex, bin, n));
        }
        Ok(Some(FastCounts {
            pairs: (start, out.pairs.len()),
            memory_slots,
            creg_sizes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(json: &str) -> Vec<Option<Vec<(String, u64)>>> {
        counts_from_result(json.as_bytes()).expect("valid result")
    }

    fn pairs(v: &[(&str, u64)]) -> Option<Vec<(String, u64)>> {
        Some(v.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect())
    }

    #[test]
    fn pads_to_memory_slots_and_splits_registers() {
        let json = r#"{"results": [
            {"data": {"counts": {"0x0": 3, "0x5": 4, "0x1f": 1}},
             "header": {"memory_slots": 5, "creg_sizes": [["a", 2], ["b", 3]]}},
            {"data": {"counts": {"0x3": 8}}, "header": {"memory_slots": 4}},
            {"data": {}, "header": {"memory_slots": 2}},
            {"data": {"counts": {"0x6": 2, "0x0": 1}}}
        ]}"#;
        assert_eq!(
            counts(json),
            vec![
                pairs(&[("000 00", 3), ("001 01", 4), ("111 11", 1)]),
                pairs(&[("0011", 8)]),
                None,
                pairs(&[("110", 2), ("0", 1)]),
            ]
        );
    }

    #[test]
    fn wide_registers_beyond_64_bits() {
        let json = r#"{"results": [{"data": {"counts": {"0x10000000000000000000": 1}},
            "header": {"memory_slots": 81, "creg_sizes": [["c", 80], ["d", 1]]}}]}"#;
        let got = counts(json);
        let key = &got[0].as_ref().expect("counts")[0].0;
        assert_eq!(key.len(), 82);
        assert!(key.starts_with("0 0001"), "{key}");
    }

    #[test]
    fn creg_sizes_without_memory_slots_do_not_split() {
        let json = r#"{"results": [{"data": {"counts": {"0x2": 1}},
            "header": {"creg_sizes": [["c", 2], ["d", 2]]}}]}"#;
        assert_eq!(counts(json), vec![pairs(&[("10", 1)])]);
    }

    #[test]
    fn bad_keys_are_errors() {
        let json = r#"{"results": [{"data": {"counts": {"0xzz": 1}}}]}"#;
        assert!(counts_from_result(json.as_bytes()).is_err());
        assert!(counts_from_result(b"[1]").is_err());
    }

    #[test]
    fn outline_spans_names_and_counts() {
        let json = r#"{"backend_name": "b", "results": [
            {"shots": 4, "success": true, "data": {"counts": {"0x0": 3, "0x5": 1}},
             "header": {"name": "a", "memory_slots": 3, "creg_sizes": [["c", 1], ["d", 2]]}},
            {"shots": 1, "success": false, "data": {}, "header": {"memory_slots": 2}},
            {"shots": 1, "success": true, "data": {"counts": {"0x1": 1, "0x1": 2}}},
            {"shots": 1, "success": true, "data": {"counts": {"0b1": 1}}, "header": null},
            {"shots": 1, "success": 1, "data": {"counts": {"0x1": 1}},
             "header": {"name": 7, "memory_slots": "2"}}
        ], "job_id": "j\"1"}"#;
        let out = outline(json.as_bytes()).expect("an outline");
        assert_eq!(out.top, r#"{"backend_name":"b","job_id":"j\"1"}"#);
        assert!(out.names_ok);
        assert_eq!(out.experiments.len(), 5);
        let first = &out.experiments[0];
        assert!(json[first.span.0..first.span.1].starts_with(r#"{"shots": 4"#));
        assert!(json[first.span.0..first.span.1].ends_with("]]}}"));
        assert!(first.success);
        assert_eq!(first.name.as_deref(), Some("a"));
        let counts = first.counts.as_ref().expect("fast counts");
        assert_eq!(counts.memory_slots, Some(3));
        assert_eq!(
            counts.creg_sizes,
            Some(vec![("c".into(), 1), ("d".into(), 2)])
        );
        let pairs = &out.pairs[counts.pairs.0..counts.pairs.1];
        let text: Vec<(&str, &str, u64)> = pairs
            .iter()
            .map(|&(h, b, n)| {
                (
                    out.hex_keys[h as usize].as_str(),
                    out.bin_keys[b as usize].as_str(),
                    n,
                )
            })
            .collect();
        assert_eq!(text, vec![("0x0", "00 0", 3), ("0x5", "10 1", 1)]);
        assert_eq!(out.experiments[1].name.as_deref(), Some(""));
        assert!(!out.experiments[1].success && out.experiments[1].counts.is_none());
        // A key twice, a binary key, a header qiskit would not format with: left to qiskit.
        assert!(out.experiments[2].counts.is_none() && out.experiments[2].name.is_none());
        assert!(out.experiments[3].counts.is_none());
        assert!(!out.experiments[4].success && out.experiments[4].counts.is_none());
        assert!(out.experiments[4].name.is_none());
    }

    #[test]
    fn outline_leaves_a_layout_too_wide_to_pad_to_qiskit() {
        // A header declaring 2^64 - 1 memory slots (or a huge register) would pad every
        // key to that width up front: the experiment's counts are left to qiskit.
        for header in [
            r#"{"memory_slots": 18446744073709551615}"#,
            r#"{"memory_slots": 2, "creg_sizes": [["c", 100000000000]]}"#,
        ] {
            let json = format!(
                r#"{{"results": [{{"shots": 1, "success": true,
                    "data": {{"counts": {{"0x1": 1}}}}, "header": {header}}}]}}"#
            );
            let out = outline(json.as_bytes()).expect("an outline");
            assert!(out.experiments[0].counts.is_none(), "{header}");
        }
        assert!(format_key("0x1", Some(MAX_KEY_WIDTH + 1), &[]).is_err());
        assert_eq!(format_key("0x1", Some(4), &[]).expect("a key"), "0001");
    }

    #[test]
    fn outline_refuses_what_from_dict_refuses() {
        for json in [
            r#"[]"#,
            r#"{"backend_name": "b"}"#,
            r#"{"results": [], "results": []}"#,
            r#"{"results": [{"success": true, "data": {}}]}"#,
            r#"{"results": [{"shots": 1, "success": true, "data": null}]}"#,
            r#"{"results": [{"shots": 1, "success": true, "data": {}, "meas_return": "x"}]}"#,
            r#"{"results": [{"shots": 1, "success": true, "data": {"__class__": 1}}]}"#,
            r#"{"results": [{"shots": 1, "success": true, "data": {}, "self": 1}]}"#,
            r#"{"self": 1, "results": []}"#,
            r#"{"results": [{"shots": 1, "success": true, "data": {}}], "x": tru}"#,
        ] {
            assert!(outline(json.as_bytes()).is_err(), "{json}");
        }
        let odd = r#"{"results": [{"shots": 1, "success": true, "data": {"counts": {"0x1": 1}},
            "header": [1]}]}"#;
        let out = outline(odd.as_bytes()).expect("an outline");
        assert!(!out.names_ok);
        assert!(out.experiments[0].counts.is_none() && out.experiments[0].name.is_none());
    }

    #[test]
    fn members_skip_nested_values_and_strings() {
        let text = "{ \"a\" : 1 ,\"b\":[1,{\"c\":\"x}]\\\"\"}],\n\"d\\u0065\": \"q\\\\\",\"e\":true,\"f\":{}}";
        let got: Vec<(String, &str)> = Members::of(text)
            .expect("an object")
            .map(|(k, v)| (k.expect("a key").into_owned(), v))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".to_owned(), "1"),
                ("b".to_owned(), "[1,{\"c\":\"x}]\\\"\"}]"),
                ("de".to_owned(), "\"q\\\\\""),
                ("e".to_owned(), "true"),
                ("f".to_owned(), "{}"),
            ]
        );
        assert_eq!(Members::of("{}").expect("an object").count(), 0);
        assert!(Members::of("[1]").is_err());
    }
}
