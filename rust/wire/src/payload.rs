//! The large payloads of the runtime JSON encoding (docs/runtime.md).
//!
//! * [`pack`]/[`unpack`]: bytes as base64 of their zlib stream, the form of every binary
//!   value (`.npy` files of arrays, QPY of circuits).
//! * [`encode_ndarray`]/[`decode_ndarray`]: `.npy` framing (format versions 1.0 to 3.0)
//!   around an array's raw data; the header dict is parsed here, strictly.
//! * [`count_outcomes`]: the counts of a primitive `BitArray`'s packed bits, as qiskit's
//!   `BitArray.get_counts` gives them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::WireError;

thread_local! {
    // A deflate state is ~300 KiB of tables; setting one up costs more than compressing a
    // kilobyte, and the encoding packs many small arrays, so each thread keeps one.
    static DEFLATER: RefCell<Option<Compress>> = const { RefCell::new(None) };
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// base64 of the zlib stream of `parts` written one after the other.
pub fn pack(parts: &[&[u8]]) -> Result<String, WireError> {
    Ok(STANDARD.encode(deflate(parts)?))
}

/// The zlib stream (default level, as Python's `zlib.compress`) of `parts`.
fn deflate(parts: &[&[u8]]) -> Result<Vec<u8>, WireError> {
    DEFLATER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let deflater = slot.get_or_insert_with(|| Compress::new(Compression::default(), true));
        deflater.reset();
        let size: usize = parts.iter().map(|p| p.len()).sum();
        // Guess: arrays of measurement bits or floats shrink to about half.
        let mut out = Vec::with_capacity(size / 2 + 128);
        let parts: &[&[u8]] = if parts.is_empty() { &[&[]] } else { parts };
        for (i, part) in parts.iter().enumerate() {
            let flush = if i + 1 == parts.len() {
                FlushCompress::Finish
            } else {
                FlushCompress::None
            };
            let start = deflater.total_in();
            loop {
                if out.len() == out.capacity() {
                    out.reserve(out.capacity().max(128));
                }
                let used = (deflater.total_in() - start) as usize;
                let status = deflater
                    .compress_vec(&part[used..], &mut out, flush)
                    .map_err(|e| WireError::Zlib(e.to_string()))?;
                let used = (deflater.total_in() - start) as usize;
                let done = match flush {
                    FlushCompress::Finish => status == Status::StreamEnd,
                    _ => used == part.len(),
                };
                if done {
                    break;
                }
            }
        }
        Ok(out)
    })
}

/// The bytes of a [`pack`]ed string: strict base64 (standard alphabet, padded) of exactly
/// one complete zlib stream.
pub fn unpack(text: &str) -> Result<Vec<u8>, WireError> {
    let compressed = STANDARD
        .decode(text)
        .map_err(|e| WireError::Base64(e.to_string()))?;
    INFLATER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let inflater = slot.get_or_insert_with(|| Decompress::new(true));
        inflater.reset(true);
        inflate(inflater, &compressed)
    })
}

/// The data of one zlib stream that must span all of `input`.
fn inflate(inflater: &mut Decompress, input: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(input.len().saturating_mul(4).max(256));
    loop {
        let (read, written) = (inflater.total_in(), inflater.total_out());
        let rest = &input[read as usize..];
        let status = inflater
            .decompress_vec(rest, &mut out, FlushDecompress::None)
            .map_err(|e| WireError::Zlib(e.to_string()))?;
        if status == Status::StreamEnd {
            break;
        }
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
            continue;
        }
        let progressed = inflater.total_in() != read || inflater.total_out() != written;
        if inflater.total_in() as usize == input.len() || !progressed {
            return Err(WireError::Zlib(format!(
                "the stream is truncated after {} bytes",
                input.len()
            )));
        }
    }
    let used = inflater.total_in() as usize;
    if used != input.len() {
        return Err(WireError::Zlib(format!(
            "{} bytes follow the end of the stream",
            input.len() - used
        )));
    }
    Ok(out)
}

// --- .npy ---------------------------------------------------------------------------------

const NPY_MAGIC: &[u8] = b"\x93NUMPY";
/// numpy pads the header so the data starts at a multiple of this.
const NPY_ALIGN: usize = 64;

/// The header of a `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// The dtype: a type string such as `<f8`, `|u1`, `<c16`, `|b1`; for a structured
    /// dtype, the Python literal of its field list as the file spells it (starts with `[`).
    pub descr: String,
    /// Whether the data is in Fortran (column-major) order.
    pub fortran_order: bool,
    /// The array's shape; empty for a 0-d array.
    pub shape: Vec<u64>,
}

/// The bytes before the data of a `.npy` file with `header`: magic, version, length, and
/// the header dict padded with spaces to [`NPY_ALIGN`] and ended by a newline. Version 1.0
/// unless the header needs a 4-byte length (2.0).
pub fn npy_preamble(header: &NpyHeader) -> Result<Vec<u8>, WireError> {
    let descr = &header.descr;
    let literal = if descr.starts_with('[') {
        // A structured dtype's field list goes in as the literal it is, once it parses.
        let mut parser = HeaderParser::new(descr);
        match parser.value() {
            Ok((Literal::List(fields), _)) if !fields.is_empty() && parser.peek().is_none() => {
                descr.clone()
            }
            _ => {
                return Err(WireError::Npy(format!(
                    "descr {descr:?} is not a field list literal"
                )))
            }
        }
    } else if !descr.is_empty()
        && descr
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'\'' && b != b'\\')
    {
        format!("'{descr}'")
    } else {
        return Err(WireError::Npy(format!(
            "descr {descr:?} is not a numpy type string"
        )));
    };
    let mut dict = format!(
        "{{'descr': {literal}, 'fortran_order': {}, 'shape': (",
        if header.fortran_order {
            "True"
        } else {
            "False"
        }
    );
    for (i, dim) in header.shape.iter().enumerate() {
        if i > 0 {
            dict.push_str(", ");
        }
        dict.push_str(itoa::Buffer::new().format(*dim));
    }
    if header.shape.len() == 1 {
        dict.push(',');
    }
    dict.push_str("), }");
    // The length field (2 bytes in version 1.0, 4 in 2.0) follows the magic and version;
    // the newline-ended dict is padded so the data starts aligned.
    let layout = |length_size: usize| {
        let unpadded = NPY_MAGIC.len() + 2 + length_size + dict.len() + 1;
        let total = unpadded.div_ceil(NPY_ALIGN) * NPY_ALIGN;
        (total, total - NPY_MAGIC.len() - 2 - length_size)
    };
    let (version, length_size, (total, header_len)) = match layout(2) {
        (total, len) if len <= usize::from(u16::MAX) => (1u8, 2usize, (total, len)),
        _ => (2u8, 4usize, layout(4)),
    };
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[version, 0]);
    if length_size == 2 {
        let len = u16::try_from(header_len).map_err(|_| npy_error("header too long"))?;
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        let len = u32::try_from(header_len).map_err(|_| npy_error("header too long"))?;
        out.extend_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    Ok(out)
}

/// The [`pack`]ed `.npy` file of an array: `header` and its raw `data` (in the byte order
/// of the descr, in Fortran order when the header says so).
pub fn encode_ndarray(header: &NpyHeader, data: &[u8]) -> Result<String, WireError> {
    let preamble = npy_preamble(header)?;
    pack(&[&preamble, data])
}

/// A [`pack`]ed `.npy` file: its header, the unpacked file, and where the data starts.
pub fn decode_ndarray(text: &str) -> Result<(NpyHeader, Vec<u8>, usize), WireError> {
    let file = unpack(text)?;
    let (header, offset) = parse_npy(&file)?;
    Ok((header, file, offset))
}

fn npy_error(problem: &str) -> WireError {
    WireError::Npy(problem.to_owned())
}

/// The header of a `.npy` file and the offset of its data.
pub fn parse_npy(file: &[u8]) -> Result<(NpyHeader, usize), WireError> {
    if !file.starts_with(NPY_MAGIC) {
        return Err(npy_error(
            "the file does not start with the .npy magic string",
        ));
    }
    let version = file
        .get(6..8)
        .ok_or_else(|| npy_error("the file ends before its version"))?;
    let length_size = match (version[0], version[1]) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        (major, minor) => {
            return Err(WireError::Npy(format!(
                "format version {major}.{minor} is not supported"
            )))
        }
    };
    let length = file
        .get(8..8 + length_size)
        .ok_or_else(|| npy_error("the file ends before its header length"))?;
    let header_len = length
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    let start = 8 + length_size;
    let end = start
        .checked_add(header_len)
        .filter(|&end| end <= file.len())
        .ok_or_else(|| {
            WireError::Npy(format!(
                "the header is {header_len} bytes but the file has {} after the preamble",
                file.len() - start
            ))
        })?;
    // Versions 1.0 and 2.0 are latin-1 text; numpy writes ASCII, and 3.0 is UTF-8.
    let text = std::str::from_utf8(&file[start..end])
        .map_err(|_| npy_error("the header is not ASCII/UTF-8 text"))?;
    let dict = text
        .strip_suffix('\n')
        .ok_or_else(|| npy_error("the header does not end with a newline"))?;
    Ok((HeaderParser::new(dict).header()?, end))
}

/// A Python literal in a `.npy` header: only what numpy writes there.
#[derive(Debug)]
enum Literal<'a> {
    Str(&'a str),
    Int(u64),
    Bool(bool),
    Tuple(Vec<Literal<'a>>),
    List(Vec<Literal<'a>>),
}

impl Literal<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Literal::Str(_) => "a string",
            Literal::Int(_) => "an integer",
            Literal::Bool(_) => "a boolean",
            Literal::Tuple(_) => "a tuple",
            Literal::List(_) => "a list",
        }
    }
}

struct HeaderParser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> HeaderParser<'a> {
    fn new(text: &'a str) -> Self {
        HeaderParser { text, pos: 0 }
    }

    fn error(&self, problem: &str) -> WireError {
        WireError::Npy(format!(
            "header {:?}: {problem} at offset {}",
            self.text.trim_end(),
            self.pos
        ))
    }

    fn skip_space(&mut self) {
        let rest = &self.text[self.pos..];
        self.pos += rest.len() - rest.trim_start_matches([' ', '\t']).len();
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), WireError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("expected '{}'", c as char)))
        }
    }

    /// The dict: exactly the keys `descr`, `fortran_order` and `shape`, in any order.
    fn header(mut self) -> Result<NpyHeader, WireError> {
        self.expect(b'{')?;
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        while !self.eat(b'}') {
            let key = match self.value()? {
                (Literal::Str(key), _) => key,
                (other, _) => return Err(self.error(&format!("key is {}", other.kind()))),
            };
            self.expect(b':')?;
            let (value, span) = self.value()?;
            let seen = match key {
                "descr" => descr.replace(self.descr(value, span)?).is_some(),
                "fortran_order" => match value {
                    Literal::Bool(b) => fortran_order.replace(b).is_some(),
                    other => return Err(self.error(&format!("fortran_order is {}", other.kind()))),
                },
                "shape" => shape.replace(self.shape(value)?).is_some(),
                other => return Err(self.error(&format!("unexpected key {other:?}"))),
            };
            if seen {
                return Err(self.error(&format!("key {key:?} is repeated")));
            }
            if !self.eat(b',') {
                self.expect(b'}')?;
                break;
            }
        }
        if self.peek().is_some() {
            return Err(self.error("text follows the dict"));
        }
        match (descr, fortran_order, shape) {
            (Some(descr), Some(fortran_order), Some(shape)) => Ok(NpyHeader {
                descr,
                fortran_order,
                shape,
            }),
            (descr, fortran_order, _) => {
                let missing = if descr.is_none() {
                    "descr"
                } else if fortran_order.is_none() {
                    "fortran_order"
                } else {
                    "shape"
                };
                Err(self.error(&format!("missing key {missing:?}")))
            }
        }
    }

    fn descr(&self, value: Literal<'a>, span: &'a str) -> Result<String, WireError> {
        match value {
            Literal::Str(s) if !s.is_empty() => Ok(s.to_owned()),
            Literal::List(fields) if !fields.is_empty() => Ok(span.to_owned()),
            other => Err(self.error(&format!(
                "descr is {}, not a type string or a field list",
                other.kind()
            ))),
        }
    }

    fn shape(&self, value: Literal<'a>) -> Result<Vec<u64>, WireError> {
        let Literal::Tuple(dims) = value else {
            return Err(self.error(&format!("shape is {}, not a tuple", value.kind())));
        };
        dims.into_iter()
            .map(|dim| match dim {
                Literal::Int(n) => Ok(n),
                other => Err(self.error(&format!("a dimension is {}", other.kind()))),
            })
            .collect()
    }

    /// One literal and the text it spans.
    fn value(&mut self) -> Result<(Literal<'a>, &'a str), WireError> {
        let first = self.peek().ok_or_else(|| self.error("expected a value"))?;
        let start = self.pos;
        let value = match first {
            b'\'' | b'"' => Literal::Str(self.string(first)?),
            b'0'..=b'9' => Literal::Int(self.int()?),
            b'(' | b'[' => {
                let close = if first == b'(' { b')' } else { b']' };
                self.pos += 1;
                let mut items = Vec::new();
                let mut trailing_comma = false;
                while !self.eat(close) {
                    items.push(self.value()?.0);
                    trailing_comma = self.eat(b',');
                    if !trailing_comma {
                        self.expect(close)?;
                        break;
                    }
                }
                if first == b'(' {
                    // `(3)` is the integer 3 in Python, not a tuple.
                    if items.len() == 1 && !trailing_comma {
                        return Err(self.error("a one-element tuple needs a trailing comma"));
                    }
                    Literal::Tuple(items)
                } else {
                    Literal::List(items)
                }
            }
            _ if self.text[self.pos..].starts_with("True") => {
                self.pos += 4;
                Literal::Bool(true)
            }
            _ if self.text[self.pos..].starts_with("False") => {
                self.pos += 5;
                Literal::Bool(false)
            }
            _ => return Err(self.error("expected a string, integer, boolean, tuple or list")),
        };
        Ok((value, &self.text[start..self.pos]))
    }

    fn string(&mut self, quote: u8) -> Result<&'a str, WireError> {
        let body_start = self.pos + 1;
        let len = self.text[body_start..]
            .find(quote as char)
            .ok_or_else(|| self.error("unterminated string"))?;
        let body = &self.text[body_start..body_start + len];
        if body.contains('\\') {
            return Err(self.error("escapes in strings are not supported"));
        }
        self.pos = body_start + len + 1;
        Ok(body)
    }

    fn int(&mut self) -> Result<u64, WireError> {
        let digits = self.text[self.pos..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        let text = &self.text[self.pos..self.pos + digits];
        let value = text
            .parse()
            .map_err(|_| self.error(&format!("integer {text} out of range")))?;
        self.pos += digits;
        if matches!(
            self.text.as_bytes().get(self.pos),
            Some(b'a'..=b'z' | b'A'..=b'Z')
        ) {
            return Err(self.error("malformed integer"));
        }
        Ok(value)
    }
}

// --- BitArray counts ----------------------------------------------------------------------

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

/// Counts the outcomes of a bit array's packed bytes.
///
/// `data` is the C-order `uint8` array of shape `(*shape, num_shots, num_bytes)` with
/// `num_bytes = ceil(num_bits / 8)`, bits packed big-endian (the last byte holds the
/// lowest bits); bits above `num_bits` in the first byte are ignored, as qiskit does.
/// The shots are split into `groups` equal runs (the positions of the shape, in C order);
/// `groups = 1` merges every position, as `get_counts()` without a location does.
pub fn count_outcomes(
    data: &[u8],
    num_bits: usize,
    groups: usize,
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
    let mut counter = Counter::new(num_bits, num_bytes, rows);
    let mut out = Vec::with_capacity(groups);
    for group in 0..groups {
        let rows = &data[group * per_group * num_bytes..(group + 1) * per_group * num_bytes];
        out.push(counter.count_group(group as u32, rows));
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
}

impl Counter {
    fn new(num_bits: usize, num_bytes: usize, rows: usize) -> Self {
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
            row: vec![0; num_bytes],
        }
    }

    /// A new outcome index for `key` (masked bytes).
    fn new_outcome(&mut self, key: &[u8]) -> u32 {
        let index = self.last_group.len() as u32;
        self.keys.extend_from_slice(key);
        self.last_group.push(u32::MAX);
        self.slot.push(0);
        index
    }

    fn outcome(&mut self, raw: &[u8]) -> u32 {
        if self.num_bytes > 8 {
            let mut row = std::mem::take(&mut self.row);
            row.copy_from_slice(raw);
            row[0] &= self.mask;
            let index = match self.wide.get(&row[..]) {
                Some(&index) => index,
                None => {
                    let index = self.new_outcome(&row);
                    self.wide.insert(row.clone().into_boxed_slice(), index);
                    index
                }
            };
            self.row = row;
            return index;
        }
        let value = fold_u64(raw) & self.value_mask;
        let known = if self.num_bits <= DIRECT_BITS {
            self.direct[value as usize].checked_sub(1)
        } else {
            self.small.get(&value).copied()
        };
        if let Some(index) = known {
            return index;
        }
        let index = self.new_outcome(&value.to_be_bytes()[8 - self.num_bytes..]);
        if self.num_bits <= DIRECT_BITS {
            self.direct[value as usize] = index + 1;
        } else {
            self.small.insert(value, index);
        }
        index
    }

    fn count_group(&mut self, group: u32, rows: &[u8]) -> Vec<(u32, u64)> {
        let mut pairs: Vec<(u32, u64)> = Vec::new();
        for raw in rows.chunks_exact(self.num_bytes) {
            let index = self.outcome(raw) as usize;
            if self.last_group[index] == group {
                pairs[self.slot[index] as usize].1 += 1;
            } else {
                self.last_group[index] = group;
                self.slot[index] = pairs.len() as u32;
                pairs.push((index as u32, 1));
            }
        }
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(descr: &str, fortran_order: bool, shape: &[u64]) -> NpyHeader {
        NpyHeader {
            descr: descr.to_owned(),
            fortran_order,
            shape: shape.to_vec(),
        }
    }

    /// A `.npy` file with the given header dict text, padded as numpy pads it.
    fn npy_file(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut text = dict.to_owned();
        while (10 + text.len() + 1) % 64 != 0 {
            text.push(' ');
        }
        text.push('\n');
        let mut file = b"\x93NUMPY\x01\x00".to_vec();
        file.extend_from_slice(&(text.len() as u16).to_le_bytes());
        file.extend_from_slice(text.as_bytes());
        file.extend_from_slice(data);
        file
    }

    #[test]
    fn pack_round_trips_and_is_base64_of_zlib() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let text = pack(&[&data[..100], &data[100..]]).expect("pack");
        assert!(
            text.starts_with("eJ"),
            "zlib streams start 0x78 0x9c: {text:.8}"
        );
        assert_eq!(unpack(&text).expect("unpack"), data);
        assert_eq!(unpack(&pack(&[]).expect("pack")).expect("unpack"), b"");
    }

    #[test]
    fn reused_states_give_the_same_streams() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 13) as u8).collect();
        let first = pack(&[&data]).expect("pack");
        assert!(unpack("eJwrSS0uAQAEXQHB!").is_err());
        assert_eq!(pack(&[&data[..5], &data[5..]]).expect("pack"), first);
        assert_eq!(unpack(&first).expect("unpack"), data);
    }

    #[test]
    fn unpack_names_bad_base64_and_bad_zlib() {
        assert!(matches!(unpack("not base64!"), Err(WireError::Base64(_))));
        assert!(matches!(unpack("eJy"), Err(WireError::Base64(_))));
        let plain = STANDARD.encode(b"plain bytes, not zlib");
        assert!(matches!(unpack(&plain), Err(WireError::Zlib(_))));
    }

    #[test]
    fn unpack_refuses_truncated_and_trailing_streams() {
        let data = vec![7u8; 1000];
        let text = pack(&[&data]).expect("pack");
        let compressed = STANDARD.decode(&text).expect("base64");
        let truncated = STANDARD.encode(&compressed[..compressed.len() - 3]);
        let err = unpack(&truncated).expect_err("truncated");
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut longer = compressed.clone();
        longer.extend_from_slice(b"xyz");
        let err = unpack(&STANDARD.encode(&longer)).expect_err("trailing");
        assert!(err.to_string().contains("3 bytes follow"), "{err}");
    }

    #[test]
    fn preamble_matches_numpy_layout() {
        let pre = npy_preamble(&header("|u1", false, &[3])).expect("preamble");
        let expected = npy_file(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }",
            b"",
        );
        assert_eq!(pre, expected);
        assert_eq!(pre.len() % 64, 0);
        let pre = npy_preamble(&header("<f8", true, &[2, 3])).expect("preamble");
        assert!(String::from_utf8_lossy(&pre)
            .contains("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }"));
        let pre = npy_preamble(&header("<c16", false, &[])).expect("preamble");
        assert!(String::from_utf8_lossy(&pre).contains("'shape': (), }"));
    }

    #[test]
    fn preamble_refuses_descr_that_would_break_the_literal() {
        for bad in [
            "",
            "<f8'",
            "a b",
            "x\\y",
            "[",
            "[]",
            "[('a', '<i4')] x",
            "['a'",
        ] {
            let err = npy_preamble(&header(bad, false, &[1])).expect_err(bad);
            assert!(matches!(err, WireError::Npy(_)), "{err}");
        }
    }

    #[test]
    fn huge_headers_use_version_2() {
        let shape = vec![1u64; 30_000];
        let pre = npy_preamble(&header("<f8", false, &shape)).expect("preamble");
        assert_eq!(&pre[6..8], &[2, 0]);
        assert_eq!(pre.len() % 64, 0);
        let (parsed, offset) = parse_npy(&pre).expect("parse");
        assert_eq!(parsed.shape, shape);
        assert_eq!(offset, pre.len());
    }

    #[test]
    fn ndarray_round_trip() {
        for (descr, fortran, shape) in [
            ("|u1", false, vec![3u64]),
            ("<f8", true, vec![2, 3]),
            ("|b1", false, vec![]),
            ("<c16", false, vec![0, 4]),
            ("[('a', '<i4'), ('b', '<f8', (2,))]", false, vec![2]),
        ] {
            let h = header(descr, fortran, &shape);
            let data: Vec<u8> = (0..48).collect();
            let text = encode_ndarray(&h, &data).expect("encode");
            let (parsed, file, offset) = decode_ndarray(&text).expect("decode");
            assert_eq!(parsed, h);
            assert_eq!(&file[offset..], &data[..]);
        }
    }

    #[test]
    fn parses_what_other_writers_write() {
        let cases = [
            ("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", "<f8"),
            ("{\"shape\": (4,),\"descr\":\"|u1\",\"fortran_order\":True}", "|u1"),
            (
                "{'descr': [('a', '<i4'), ('b', '<f8', (2,))], 'fortran_order': False, 'shape': (1,), }",
                "[('a', '<i4'), ('b', '<f8', (2,))]",
            ),
        ];
        for (dict, descr) in cases {
            let file = npy_file(dict, b"");
            let (parsed, offset) = parse_npy(&file).expect(dict);
            assert_eq!(parsed.descr, descr);
            assert_eq!(offset, file.len());
        }
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let cases = [
            (
                "{'descr': '<f8', 'fortran_order': False}",
                "missing key \"shape\"",
            ),
            (
                "{'descr': '<f8', 'fortran_order': 0, 'shape': ()}",
                "fortran_order is an integer",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3)}",
                "trailing comma",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': [3]}",
                "shape is a list",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (-1,)}",
                "expected a string",
            ),
            (
                "{'descr': 5, 'fortran_order': False, 'shape': ()}",
                "descr is an integer",
            ),
            (
                "{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': ()}",
                "repeated",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (), 'x': 1}",
                "unexpected key",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': ()} junk",
                "text follows",
            ),
            (
                "{'descr': '<f8, 'fortran_order': False, 'shape': ()}",
                "expected '}'",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999,)}",
                "out of range",
            ),
        ];
        for (dict, needle) in cases {
            let err = parse_npy(&npy_file(dict, b"")).expect_err(dict);
            assert!(matches!(err, WireError::Npy(_)));
            assert!(err.to_string().contains(needle), "{dict}: {err}");
        }
    }

    #[test]
    fn parse_refuses_bad_preambles() {
        let good = npy_file("{'descr': '<f8', 'fortran_order': False, 'shape': ()}", b"");
        let cases: [(Vec<u8>, &str); 5] = [
            (b"NUMPY".to_vec(), "magic"),
            (b"\x93NUMPY".to_vec(), "before its version"),
            ([&good[..6], &[4, 0], &good[8..]].concat(), "version 4.0"),
            (good[..40].to_vec(), "the header is"),
            ([&good[..good.len() - 1], b" "].concat(), "newline"),
        ];
        for (file, needle) in cases {
            let err = parse_npy(&file).expect_err(needle);
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    fn counts(data: &[u8], num_bits: usize, groups: usize) -> Vec<Vec<(String, u64)>> {
        let table = count_outcomes(data, num_bits, groups).expect("count");
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
        let table = count_outcomes(&data, 2, 2).expect("count");
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
        let table = count_outcomes(&data, 9, 1).expect("count");
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
        let table = count_outcomes(&data, 65, 1).expect("count");
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
            count_outcomes(&[1], 0, 1),
            Err(WireError::BitArray(_))
        ));
        let err = count_outcomes(&[1, 2, 3], 9, 1).expect_err("ragged");
        assert!(err.to_string().contains("not whole shots"), "{err}");
        let err = count_outcomes(&[1, 2, 3], 2, 2).expect_err("uneven");
        assert!(err.to_string().contains("evenly into 2"), "{err}");
        assert_eq!(count_outcomes(&[], 3, 0).expect("empty").groups.len(), 0);
        assert_eq!(
            count_outcomes(&[], 3, 2).expect("empty").groups,
            vec![vec![], vec![]]
        );
    }
}
