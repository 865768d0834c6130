//! The counts of a primitive `BitArray`'s packed bits, as qiskit's `BitArray.get_counts`
//! gives them.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::WireError;

/// The distinct outcomes of a bit array and their counts, per group of shots.
///
/// Each distinct outcome is stored once (its masked bytes, big-endian as qiskit packs
/// them), shared by the groups that saw it; each group lists `(outcome index, count)` in
/// the order the outcomes first appear in it, as `BitArray.get_counts` orders its dict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeCounts {
    num_bits: usize,
    num_bytes: usize,
    keys: Vec<u8>,
    /// Per group, `(outcome index, count)` pairs.
    pub groups: Vec<Vec<(u32, u64)>>,
}

impl OutcomeCounts {
    /// How many distinct outcomes there are over all groups.
    pub fn num_outcomes(&self) -> usize {
        self.keys.len() / self.num_bytes
    }

    /// Outcome `i` as its packed bytes (bits above `num_bits` cleared).
    pub fn outcome_bytes(&self, i: usize) -> &[u8] {
        &self.keys[i * self.num_bytes..(i + 1) * self.num_bytes]
    }

    /// Outcome `i` as an integer, when it fits in 64 bits (`num_bits <= 64`).
    pub fn outcome_u64(&self, i: usize) -> Option<u64> {
        (self.num_bits <= 64).then(|| fold_u64(self.outcome_bytes(i)))
    }

    /// Outcome `i` as a bitstring of `num_bits` characters, most significant bit first.
    pub fn bitstring(&self, i: usize) -> String {
        let row = self.outcome_bytes(i);
        let mut text = String::with_capacity(self.num_bits);
        for bit in (0..self.num_bits).rev() {
            let byte = row[self.num_bytes - 1 - bit / 8];
            text.push(if byte >> (bit % 8) & 1 == 1 { '1' } else { '0' });
        }
        text
    }
}

fn fold_u64(row: &[u8]) -> u64 {
    row.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// A hasher for the u64 outcomes: one folded multiply mixes every input bit into the
/// bits the table uses.
#[derive(Default)]
struct OutcomeHasher(u64);

impl Hasher for OutcomeHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, value: u64) {
        let product = u128::from(self.0 ^ value) * 0x9E37_79B9_7F4A_7C15;
        self.0 = (product >> 64) as u64 ^ product as u64;
    }
}

type OutcomeMap<K> = HashMap<K, u32, BuildHasherDefault<OutcomeHasher>>;

/// Outcomes of at most this many bits are looked up in a table indexed by value.
const DIRECT_BITS: usize = 12;
/// What one position of the result costs its caller at least (an empty Python dict), to
/// hold `groups` to the output limit when there are no shots to bound it.
const GROUP_BYTES: usize = 64;

/// Counts the outcomes of a bit array's packed bytes.
///
/// `data` is the C-order `uint8` array of shape `(*shape, num_shots, num_bytes)` with
/// `num_bytes = ceil(num_bits / 8)`, bits packed big-endian (the last byte holds the
/// lowest bits); bits above `num_bits` in the first byte are ignored, as qiskit does.
/// The shots are split into `groups` equal runs (the positions of the shape, in C order);
/// `groups = 1` merges every position, as `get_counts()` without a location does.
///
/// The output is held to `max_bytes`: the distinct outcomes' bitstrings (`num_bits`
/// characters each) and the positions. Nothing is sized by `num_bits` or `groups` alone:
/// a row buffer exists only when there are rows, so `num_bits` is bounded by the data.
pub fn count_outcomes(
    data: &[u8],
    num_bits: usize,
    groups: usize,
    max_bytes: usize,
) -> Result<OutcomeCounts, WireError> {
    if num_bits == 0 {
        return Err(WireError::BitArray(
            "num_bits must be at least 1".to_owned(),
        ));
    }
    let num_bytes = num_bits.div_ceil(8);
    if data.len() % num_bytes != 0 {
        return Err(WireError::BitArray(format!(
            "{} bytes are not whole shots of {num_bytes} bytes ({num_bits} bits)",
            data.len()
        )));
    }
    let rows = data.len() / num_bytes;
    let per_group = match groups {
        0 if rows == 0 => 0,
        0 => {
            return Err(WireError::BitArray(format!(
                "{rows} shots cannot be split into 0 positions"
            )))
        }
        g if rows % g == 0 => rows / g,
        g => {
            return Err(WireError::BitArray(format!(
                "{rows} shots cannot be split evenly into {g} positions"
            )))
        }
    };
    // With shots, groups <= rows; without, only the limit bounds them.
    if groups
        .checked_mul(GROUP_BYTES)
        .is_none_or(|n| n > max_bytes)
    {
        return Err(WireError::PayloadTooLarge(format!(
            "{groups} positions exceed the limit of {max_bytes} bytes (max_bytes)"
        )));
    }
    let group_index = u32::try_from(groups)
        .map_err(|_| WireError::BitArray(format!("{groups} positions are more than 2^32")))?;
    let mut counter = Counter::new(num_bits, num_bytes, rows, max_bytes);
    let mut out = Vec::with_capacity(groups);
    for group in 0..group_index {
        let at = group as usize * per_group * num_bytes;
        out.push(counter.count_group(group, &data[at..at + per_group * num_bytes])?);
    }
    Ok(OutcomeCounts {
        num_bits,
        num_bytes,
        keys: counter.keys,
        groups: out,
    })
}

/// The outcome index of each distinct value seen, and per outcome the group that last
/// saw it with its place in that group's list (so groups need no per-group table).
struct Counter {
    num_bits: usize,
    num_bytes: usize,
    /// Clears the bits above `num_bits` of the first byte (wide outcomes)...
    mask: u8,
    /// ... and of a value folded into a u64.
    value_mask: u64,
    keys: Vec<u8>,
    direct: Vec<u32>,
    small: OutcomeMap<u64>,
    wide: OutcomeMap<Box<[u8]>>,
    last_group: Vec<u32>,
    slot: Vec<u32>,
    row: Vec<u8>,
    max_bytes: usize,
}

impl Counter {
    fn new(num_bits: usize, num_bytes: usize, rows: usize, max_bytes: usize) -> Self {
        let direct = if num_bits <= DIRECT_BITS && rows > 0 {
            vec![0; 1 << num_bits]
        } else {
            Vec::new()
        };
        Counter {
            num_bits,
            num_bytes,
            mask: match num_bits % 8 {
                0 => 0xff,
                r => (1u8 << r) - 1,
            },
            value_mask: match num_bits {
                64.. => u64::MAX,
                n => (1u64 << n) - 1,
            },
            keys: Vec::new(),
            direct,
            small: OutcomeMap::default(),
            wide: OutcomeMap::default(),
            last_group: Vec::new(),
            slot: Vec::new(),
            // Only wide outcomes use it, and only with rows (so num_bytes <= data.len()).
            row: if num_bytes > 8 && rows > 0 {
                vec![0; num_bytes]
            } else {
                Vec::new()
            },
            max_bytes,
        }
    }

    /// A new outcome index for `key` (masked bytes); an error once the outcomes'
    /// bitstrings would pass the limit (distinct wide outcomes grow 8x as text).
    fn new_outcome(&mut self, key: &[u8]) -> Result<u32, WireError> {
        let count = self.last_group.len() + 1;
        if count.saturating_mul(self.num_bits) > self.max_bytes {
            return Err(WireError::PayloadTooLarge(format!(
                "{count} distinct outcomes of {} bits exceed the limit of {} bytes (max_bytes)",
                self.num_bits, self.max_bytes
            )));
        }
        let index = self.last_group.len() as u32;
        self.keys.extend_from_slice(key);
        self.last_group.push(u32::MAX);
        self.slot.push(0);
        Ok(index)
    }

    fn outcome(&mut self, raw: &[u8]) -> Result<u32, WireError> {
        if self.num_bytes > 8 {
            let mut row = std::mem::take(&mut self.row);
            row.copy_from_slice(raw);
            row[0] &= self.mask;
            let index = match self.wide.get(&row[..]) {
                Some(&index) => index,
                None => {
                    let index = self.new_outcome(&row);
                    if let Ok(index) = index {
                        self.wide.insert(row.clone().into_boxed_slice(), index);
                    }
                    self.row = row;
                    return index;
                }
            };
            self.row = row;
            return Ok(index);
        }
        let value = fold_u64(raw) & self.value_mask;
        let known = if self.num_bits <= DIRECT_BITS {
            self.direct[value as usize].checked_sub(1)
        } else {
            self.small.get(&value).copied()
        };
        if let Some(index) = known {
            return Ok(index);
        }
        let index = self.new_outcome(&value.to_be_bytes()[8 - self.num_bytes..])?;
        if self.num_bits <= DIRECT_BITS {
            self.direct[value as usize] = index + 1;
        } else {
            self.small.insert(value, index);
        }
        Ok(index)
    }

    fn count_group(&mut self, group: u32, rows: &[u8]) -> Result<Vec<(u32, u64)>, WireError> {
        let mut pairs: Vec<(u32, u64)> = Vec::new();
        for raw in rows.chunks_exact(self.num_bytes) {
            let index = self.outcome(raw)? as usize;
            if self.last_group[index] == group {
                pairs[self.slot[index] as usize].1 += 1;
            } else {
                self.last_group[index] = group;
                self.slot[index] = pairs.len() as u32;
                pairs.push((index as u32, 1));
            }
        }
        Ok(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = crate::payload::DEFAULT_MAX_PAYLOAD_BYTES;

    fn counts(data: &[u8], num_bits: usize, groups: usize) -> Vec<Vec<(String, u64)>> {
        let table = count_outcomes(data, num_bits, groups, MAX).expect("count");
        table
            .groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|&(k, n)| (table.bitstring(k as usize), n))
                    .collect()
            })
            .collect()
    }

    fn owned(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
    }

    #[test]
    fn counts_in_first_seen_order_with_high_bits_masked() {
        // 3 bits: 0xff masks to 7, like qiskit's get_counts.
        let data = [5u8, 1, 3, 1, 0, 0xff, 7];
        assert_eq!(
            counts(&data, 3, 1),
            vec![owned(&[
                ("101", 1),
                ("001", 2),
                ("011", 1),
                ("000", 1),
                ("111", 2)
            ])]
        );
    }

    #[test]
    fn counts_per_position_share_outcomes() {
        let data = [1u8, 2, 1, 2, 2, 2];
        let table = count_outcomes(&data, 2, 2, MAX).expect("count");
        assert_eq!(table.num_outcomes(), 2);
        assert_eq!(table.groups, vec![vec![(0, 2), (1, 1)], vec![(1, 3)]]);
        assert_eq!(
            counts(&data, 2, 3),
            vec![
                owned(&[("01", 1), ("10", 1)]),
                owned(&[("01", 1), ("10", 1)]),
                owned(&[("10", 2)]),
            ]
        );
    }

    #[test]
    fn multi_byte_outcomes_are_big_endian() {
        // 9 bits: the first byte holds bit 8, the second bits 7..0.
        let data = [0x01u8, 0x80, 0xfe, 0x01, 0x01, 0x80];
        assert_eq!(
            counts(&data, 9, 1),
            vec![owned(&[("110000000", 2), ("000000001", 1)])]
        );
        let table = count_outcomes(&data, 9, 1, MAX).expect("count");
        assert_eq!(table.outcome_u64(0), Some(0x180));
        // 16 bits go through the hash map instead of the direct table.
        assert_eq!(
            counts(&[0xab, 0xcd, 0xab, 0xcd], 16, 1),
            vec![owned(&[("1010101111001101", 2)])]
        );
    }

    #[test]
    fn wide_outcomes_beyond_64_bits() {
        let mut row = vec![0u8; 9];
        row[0] = 0xff; // masked to the one bit 64
        row[8] = 1;
        let data = [row.clone(), vec![0; 9], row].concat();
        let table = count_outcomes(&data, 65, 1, MAX).expect("count");
        assert_eq!(table.groups, vec![vec![(0, 2), (1, 1)]]);
        assert_eq!(table.outcome_u64(0), None);
        assert_eq!(table.outcome_bytes(0)[0], 1);
        let text = table.bitstring(0);
        assert_eq!(text.len(), 65);
        assert!(text.starts_with("10") && text.ends_with("01"));
    }

    #[test]
    fn count_errors() {
        assert!(matches!(
            count_outcomes(&[1], 0, 1, MAX),
            Err(WireError::BitArray(_))
        ));
        let err = count_outcomes(&[1, 2, 3], 9, 1, MAX).expect_err("ragged");
        assert!(err.to_string().contains("not whole shots"), "{err}");
        let err = count_outcomes(&[1, 2, 3], 2, 2, MAX).expect_err("uneven");
        assert!(err.to_string().contains("evenly into 2"), "{err}");
        assert_eq!(
            count_outcomes(&[], 3, 0, MAX).expect("empty").groups.len(),
            0
        );
        assert_eq!(
            count_outcomes(&[], 3, 2, MAX).expect("empty").groups,
            vec![vec![], vec![]]
        );
    }

    #[test]
    fn nothing_is_sized_by_num_bits_or_positions_alone() {
        // No shots: a num_bits of 2^60 and 2^16 positions allocate nothing big.
        assert_eq!(
            count_outcomes(&[], 1 << 60, 1 << 16, MAX)
                .expect("empty")
                .groups
                .len(),
            1 << 16
        );
        let err = count_outcomes(&[], 3, usize::MAX, MAX).expect_err("positions");
        assert!(matches!(err, WireError::PayloadTooLarge(_)), "{err}");
        // With shots, num_bits is bounded by the data.
        let err = count_outcomes(&[1, 2], 1 << 60, 1, MAX).expect_err("wide");
        assert!(err.to_string().contains("not whole shots"), "{err}");
    }

    #[test]
    fn distinct_outcomes_are_held_to_the_limit() {
        let data: Vec<u8> = (0..=255).collect();
        assert_eq!(
            count_outcomes(&data, 8, 1, 256 * 8)
                .expect("fits")
                .num_outcomes(),
            256
        );
        let err = count_outcomes(&data, 8, 1, 100 * 8).expect_err("over");
        assert!(matches!(err, WireError::PayloadTooLarge(_)), "{err}");
        assert!(
            err.to_string().contains("101 distinct outcomes of 8 bits"),
            "{err}"
        );
        let wide: Vec<u8> = (0..=255u8).flat_map(|b| [b; 9]).collect();
        let err = count_outcomes(&wide, 72, 1, 72 * 10).expect_err("wide over");
        assert!(err.to_string().contains("11 distinct outcomes"), "{err}");
    }
}
