//! Bytes as base64 of their zlib stream: the form of every binary value of the runtime
//! encoding (`.npy` files of arrays, QPY of circuits).

use std::cell::RefCell;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
