//! Counts of a qiskit Result dict, in the bitstring form `qiskit.result.Result.get_counts`
//! gives: hex keys (`"0x3"`) become binary, zero-padded to the header's `memory_slots` and
//! split into space-separated groups by `creg_sizes` (last register first), as
//! `qiskit.result.postprocess.format_counts` does.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::de::IgnoredAny;
use serde::Deserialize;

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

/// One key, formatted as `format_counts_memory` formats it.
fn format_key(key: &str, slots: Option<u64>, cregs: &[u64]) -> Result<String, WireError> {
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
}
