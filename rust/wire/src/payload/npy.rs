//! `.npy` framing (format versions 1.0 to 3.0) around an array's raw data; the header
//! dict is parsed here, strictly. An array travels as its [`pack`]ed `.npy` file.

use crate::payload::zlib::{over_limit, pack, with_stream};
use crate::WireError;

const NPY_MAGIC: &[u8] = b"\x93NUMPY";
/// numpy pads the header so the data starts at a multiple of this.
const NPY_ALIGN: usize = 64;
/// numpy's own limit on dimensions (`NPY_MAXDIMS` of numpy 2); a decoded header with more
/// could not become an array, and each dimension costs a Python int.
pub const NPY_MAX_DIMS: usize = 64;
/// How deeply tuples and lists may nest in a header: a structured dtype nests a level or
/// two; the parser recurses once per level, so this bounds its stack.
const MAX_NESTING: usize = 32;
/// How much of a bad header an error message quotes.
const MAX_QUOTED: usize = 200;

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

/// A [`pack`]ed `.npy` file of at most `max_bytes` bytes: its header, the unpacked file,
/// and where the data starts.
///
/// The header is inflated first; its shape times the dtype's item size is checked
/// (overflow-safe) against `max_bytes` before the buffer for the data is made, and the
/// data must then be exactly that long. A dtype this parser cannot size (numpy rejects it
/// later anyway) is only held to `max_bytes`.
pub fn decode_ndarray(
    text: &str,
    max_bytes: usize,
) -> Result<(NpyHeader, Vec<u8>, usize), WireError> {
    with_stream(text, max_bytes, |stream| {
        let limit = max_bytes.saturating_add(1);
        // Magic, version and the longest (4-byte) header length.
        let mut file = Vec::new();
        stream.fill(&mut file, 12.min(limit))?;
        let (start, header_len) = preamble(&file)?;
        let header_end = start.saturating_add(header_len);
        if header_end > max_bytes {
            return Err(WireError::PayloadTooLarge(format!(
                "the .npy header ends at byte {header_end}, past the limit of {max_bytes} \
                 bytes (max_bytes)"
            )));
        }
        stream.fill(&mut file, header_end)?;
        let (header, offset) = parse_npy(&file)?;
        if header.shape.len() > NPY_MAX_DIMS {
            return Err(WireError::Npy(format!(
                "the shape has {} dimensions; numpy allows at most {NPY_MAX_DIMS}",
                header.shape.len()
            )));
        }
        let Some(claimed) = data_len(&header) else {
            stream.fill(&mut file, limit)?;
            if file.len() > max_bytes {
                return Err(over_limit(max_bytes));
            }
            stream.finish()?;
            return Ok((header, file, offset));
        };
        let total = claimed
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| n.checked_add(offset))
            .filter(|&total| total <= max_bytes)
            .ok_or_else(|| {
                WireError::PayloadTooLarge(format!(
                    "the .npy header claims shape {:?} of descr {:?}: {} bytes of data, \
                     over the limit of {max_bytes} bytes (max_bytes)",
                    header.shape,
                    header.descr,
                    claimed.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string())
                ))
            })?;
        // One extra byte shows data longer than the shape without inflating the rest.
        file.reserve_exact((total + 1).saturating_sub(file.len()));
        stream.fill(&mut file, total + 1)?;
        let got = file.len() - offset;
        let needed = total - offset;
        if got > needed {
            return Err(WireError::Npy(format!(
                "more than {needed} data bytes for shape {:?} of descr {:?} ({needed} needed)",
                header.shape, header.descr
            )));
        }
        if got < needed {
            return Err(WireError::Npy(format!(
                "{got} data bytes for shape {:?} of descr {:?} ({needed} needed)",
                header.shape, header.descr
            )));
        }
        stream.finish()?;
        Ok((header, file, offset))
    })
}

/// The size in bytes of the data `header` describes: `Some(None)` when it overflows u64,
/// `None` when the dtype is not one this parser can size.
fn data_len(header: &NpyHeader) -> Option<Option<u64>> {
    let itemsize = descr_itemsize(&header.descr)?;
    Some(
        header
            .shape
            .iter()
            .try_fold(itemsize, |acc, &dim| acc.checked_mul(dim)),
    )
}

/// The item size of a dtype descr: a numpy type string (`<f8`, `|u1`, `<U3`, `<M8[ns]`,
/// `|O`) or a structured dtype's field list literal.
pub fn descr_itemsize(descr: &str) -> Option<u64> {
    if descr.starts_with('[') {
        let mut parser = HeaderParser::new(descr);
        let (value, _) = parser.value().ok()?;
        return (parser.peek().is_none()).then(|| literal_itemsize(&value))?;
    }
    type_itemsize(descr)
}

fn type_itemsize(descr: &str) -> Option<u64> {
    let body = descr.strip_prefix(['<', '>', '|', '=']).unwrap_or(descr);
    let mut chars = body.chars();
    let kind = chars.next()?;
    let rest = chars.as_str();
    // Datetimes carry a unit: `M8[ns]`.
    let digits = match rest.find('[') {
        Some(at) if matches!(kind, 'M' | 'm') && rest.ends_with(']') => &rest[..at],
        Some(_) => return None,
        None => rest,
    };
    if kind == 'O' && digits.is_empty() {
        return Some(8);
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    match kind {
        'b' | 'i' | 'u' | 'f' | 'c' | 'm' | 'M' | 'S' | 'a' | 'V' | 'O' => Some(n),
        'U' => n.checked_mul(4),
        _ => None,
    }
}

/// The item size of a field list: `(name, descr)` or `(name, descr, shape)` per field.
fn literal_itemsize(value: &Literal<'_>) -> Option<u64> {
    match value {
        Literal::Str(descr) => type_itemsize(descr),
        Literal::List(fields) => fields.iter().try_fold(0u64, |total, field| {
            let Literal::Tuple(parts) = field else {
                return None;
            };
            let (descr, shape) = match parts.as_slice() {
                [_, descr] => (descr, None),
                [_, descr, shape] => (descr, Some(shape)),
                _ => return None,
            };
            let count = match shape {
                None => 1,
                Some(Literal::Int(n)) => *n,
                Some(Literal::Tuple(dims)) => dims.iter().try_fold(1u64, |acc, dim| match dim {
                    Literal::Int(n) => acc.checked_mul(*n),
                    _ => None,
                })?,
                Some(_) => return None,
            };
            total.checked_add(literal_itemsize(descr)?.checked_mul(count)?)
        }),
        _ => None,
    }
}

fn npy_error(problem: &str) -> WireError {
    WireError::Npy(problem.to_owned())
}

/// Where the header dict of a `.npy` file starts and how long it is, from the magic,
/// version and length fields.
fn preamble(file: &[u8]) -> Result<(usize, usize), WireError> {
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
    Ok((8 + length_size, header_len))
}

/// The header of a `.npy` file and the offset of its data.
pub fn parse_npy(file: &[u8]) -> Result<(NpyHeader, usize), WireError> {
    let (start, header_len) = preamble(file)?;
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
    depth: usize,
}

impl<'a> HeaderParser<'a> {
    fn new(text: &'a str) -> Self {
        HeaderParser {
            text,
            pos: 0,
            depth: 0,
        }
    }

    fn error(&self, problem: &str) -> WireError {
        // The header may be megabytes: the message (sent back verbatim) quotes its start.
        let text = self.text.trim_end();
        let mut cut = text.len().min(MAX_QUOTED);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let more = if cut < text.len() { "..." } else { "" };
        WireError::Npy(format!(
            "header {:?}{more}: {problem} at offset {}",
            &text[..cut],
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
                if self.depth == MAX_NESTING {
                    return Err(self.error(&format!(
                        "tuples and lists nest deeper than {MAX_NESTING} levels"
                    )));
                }
                let close = if first == b'(' { b')' } else { b']' };
                self.pos += 1;
                self.depth += 1;
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
                self.depth -= 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::zlib::{pack, DEFAULT_MAX_PAYLOAD_BYTES as MAX};

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
            let size = descr_itemsize(descr).expect("itemsize") * shape.iter().product::<u64>();
            let data: Vec<u8> = (0..size as u8).collect();
            let text = encode_ndarray(&h, &data).expect("encode");
            let (parsed, file, offset) = decode_ndarray(&text, MAX).expect("decode");
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

    #[test]
    fn itemsizes() {
        for (descr, size) in [
            ("<f8", 8),
            ("|u1", 1),
            ("<c16", 16),
            ("|b1", 1),
            ("<U3", 12),
            ("|S5", 5),
            ("<M8[ns]", 8),
            ("|O", 8),
            (">i4", 4),
            ("[('a', '<i4'), ('b', '<f8', (2,))]", 20),
            (
                "[(('t', 'a'), '<i2'), ('n', [('x', '<f4')], 3), ('', '|V2')]",
                16,
            ),
        ] {
            assert_eq!(descr_itemsize(descr), Some(size), "{descr}");
        }
        for unknown in ["zz", "<f", "<f8[s]", "[('a')]", "<f99999999999999999999"] {
            assert_eq!(descr_itemsize(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn a_header_claiming_a_huge_shape_is_refused_before_its_data_is_made() {
        // 100 bytes of .npy that claim 2^40 float64s, and 1 byte of data.
        let pre = npy_preamble(&header("<f8", false, &[1 << 20, 1 << 20])).expect("pre");
        let text = pack(&[&pre, b"x"]).expect("pack");
        let err = decode_ndarray(&text, MAX).expect_err("huge");
        assert!(matches!(err, WireError::PayloadTooLarge(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("8796093022208 bytes of data"), "{msg}");
        assert!(msg.contains(&format!("limit of {MAX} bytes")), "{msg}");
        // Overflowing u64 is the same error, not a wrap-around.
        let pre = npy_preamble(&header("<c16", false, &[u64::MAX, 2])).expect("pre");
        let err = decode_ndarray(&pack(&[&pre]).expect("pack"), MAX).expect_err("overflow");
        assert!(err.to_string().contains("more than 2^64"), "{err}");
    }

    #[test]
    fn data_must_match_the_shape_and_the_limit() {
        let pre = npy_preamble(&header("<f8", false, &[4])).expect("pre");
        let short = pack(&[&pre, &[0u8; 31]]).expect("pack");
        let err = decode_ndarray(&short, MAX).expect_err("short");
        assert!(
            err.to_string().contains("31 data bytes for shape [4]"),
            "{err}"
        );
        let long = pack(&[&pre, &[0u8; 33]]).expect("pack");
        let err = decode_ndarray(&long, MAX).expect_err("long");
        assert!(err.to_string().contains("more than 32 data bytes"), "{err}");
        let exact = pack(&[&pre, &[0u8; 32]]).expect("pack");
        assert!(decode_ndarray(&exact, pre.len() + 32).is_ok());
        let err = decode_ndarray(&exact, pre.len() + 31).expect_err("one over");
        assert!(matches!(err, WireError::PayloadTooLarge(_)), "{err}");
        // A header longer than the limit is refused before it is inflated.
        let wide = npy_preamble(&header("|u1", false, &[1; 5000])).expect("pre");
        let err = decode_ndarray(&pack(&[&wide]).expect("pack"), 1000).expect_err("header");
        assert!(
            err.to_string().contains("past the limit of 1000 bytes"),
            "{err}"
        );
        // An unsized dtype is held to the limit alone.
        let pre = npy_preamble(&header("zz", false, &[4])).expect("pre");
        let bomb = pack(&[&pre, &vec![0u8; 1 << 20]]).expect("pack");
        let err = decode_ndarray(&bomb, 4096).expect_err("bomb");
        assert!(matches!(err, WireError::PayloadTooLarge(_)), "{err}");
        assert!(decode_ndarray(&bomb, 2 << 20).is_ok());
    }

    #[test]
    fn deep_nesting_and_too_many_dims_are_refused() {
        let deep = format!(
            "{{'descr': {}'<f8'{}, 'fortran_order': False, 'shape': ()}}",
            "[".repeat(1000),
            "]".repeat(1000)
        );
        let err = parse_npy(&npy_file(&deep, b"")).expect_err("deep");
        assert!(err.to_string().contains("nest deeper than 32"), "{err}");
        assert!(err.to_string().len() < 400, "the message quotes all: {err}");
        let pre = npy_preamble(&header("|u1", false, &[1; 65])).expect("pre");
        let err = decode_ndarray(&pack(&[&pre, b"x"]).expect("pack"), MAX).expect_err("dims");
        assert!(err.to_string().contains("65 dimensions"), "{err}");
    }
}
