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

/// The default of every decode's `max_bytes`: 256 MiB. A payload is one value of a
/// program's inputs or results, and the request body that carries it is 64 MiB at most
/// by default (`--max-request-mb`); zlib shrinks the measurement bits and floats the
/// runtime encoding carries by 2-10x, so 256 MiB takes every payload such a body can
/// honestly hold, while a bomb (zlib reaches ~1000:1) costs at most this much memory.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 << 20;

/// The most bytes the zlib stream of `len` bytes takes (zlib's `compressBound`: stored
/// blocks cost 5 bytes per 64 KiB, plus the 2-byte header and 4-byte checksum).
pub fn zlib_bound(len: usize) -> usize {
    len.saturating_add(len >> 12)
        .saturating_add(len >> 14)
        .saturating_add(len >> 25)
        .saturating_add(13 + 6)
}

/// The most base64 characters a payload of at most `max_bytes` bytes may take: padded
/// base64 of its largest zlib stream.
pub fn max_base64_len(max_bytes: usize) -> usize {
    zlib_bound(max_bytes).div_ceil(3).saturating_mul(4)
}

/// The bytes of a [`pack`]ed string: strict base64 (standard alphabet, padded) of exactly
/// one complete zlib stream of at most `max_bytes` bytes. Over the limit it fails with
/// [`WireError::PayloadTooLarge`] after inflating at most `max_bytes + 1` bytes.
pub fn unpack(text: &str, max_bytes: usize) -> Result<Vec<u8>, WireError> {
    with_stream(text, max_bytes, |stream| {
        let cap = max_bytes.saturating_add(1);
        // Guess 4x the compressed size, which most payloads fit without a regrowth.
        let guess = stream.input.len().saturating_mul(4).max(256).min(cap);
        let mut out = Vec::with_capacity(guess);
        stream.fill(&mut out, cap)?;
        if out.len() > max_bytes {
            return Err(over_limit(max_bytes));
        }
        stream.finish()?;
        Ok(out)
    })
}

pub(crate) fn over_limit(max_bytes: usize) -> WireError {
    WireError::PayloadTooLarge(format!(
        "it inflates past the limit of {max_bytes} bytes (max_bytes)"
    ))
}

/// Runs `read` over the inflating stream of the base64 `text`, whose length is checked
/// against `max_bytes` before anything is decoded.
pub(crate) fn with_stream<T>(
    text: &str,
    max_bytes: usize,
    read: impl FnOnce(&mut Stream<'_>) -> Result<T, WireError>,
) -> Result<T, WireError> {
    let most = max_base64_len(max_bytes);
    if text.len() > most {
        return Err(WireError::PayloadTooLarge(format!(
            "{} base64 characters, more than the {most} that a payload of at most \
             {max_bytes} bytes (max_bytes) takes once compressed",
            text.len()
        )));
    }
    let compressed = STANDARD
        .decode(text)
        .map_err(|e| WireError::Base64(e.to_string()))?;
    INFLATER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let inflater = slot.get_or_insert_with(|| Decompress::new(true));
        inflater.reset(true);
        read(&mut Stream {
            inflater,
            input: &compressed,
            ended: false,
        })
    })
}

/// One zlib stream that must span all of `input`, inflated on demand so that callers
/// decide how much output to allow before any of it exists.
pub(crate) struct Stream<'a> {
    inflater: &'a mut Decompress,
    input: &'a [u8],
    ended: bool,
}

impl Stream<'_> {
    /// Inflates into `out` until it holds `want` bytes or the stream ends. `out` grows
    /// (doubling) but never past `want`, so its size is the caller's choice.
    pub(crate) fn fill(&mut self, out: &mut Vec<u8>, want: usize) -> Result<(), WireError> {
        while !self.ended && out.len() < want {
            if out.len() == out.capacity() {
                let grow = out.capacity().max(256).min(want - out.len());
                out.reserve_exact(grow);
            }
            let (read, written) = (self.inflater.total_in(), self.inflater.total_out());
            let rest = &self.input[read as usize..];
            let status = self
                .inflater
                .decompress_vec(rest, out, FlushDecompress::None)
                .map_err(|e| WireError::Zlib(e.to_string()))?;
            if status == Status::StreamEnd {
                self.ended = true;
                break;
            }
            if out.len() == out.capacity() {
                continue;
            }
            let progressed =
                self.inflater.total_in() != read || self.inflater.total_out() != written;
            if self.inflater.total_in() as usize == self.input.len() || !progressed {
                return Err(WireError::Zlib(format!(
                    "the stream is truncated after {} bytes",
                    self.input.len()
                )));
            }
        }
        Ok(())
    }

    /// Checks that the stream ended and that nothing follows it.
    pub(crate) fn finish(&self) -> Result<(), WireError> {
        if !self.ended {
            return Err(WireError::Zlib(format!(
                "the stream is truncated after {} bytes",
                self.input.len()
            )));
        }
        let used = self.inflater.total_in() as usize;
        if used != self.input.len() {
            return Err(WireError::Zlib(format!(
                "{} bytes follow the end of the stream",
                self.input.len() - used
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = DEFAULT_MAX_PAYLOAD_BYTES;

    #[test]
    fn pack_round_trips_and_is_base64_of_zlib() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let text = pack(&[&data[..100], &data[100..]]).expect("pack");
        assert!(
            text.starts_with("eJ"),
            "zlib streams start 0x78 0x9c: {text:.8}"
        );
        assert_eq!(unpack(&text, MAX).expect("unpack"), data);
        assert_eq!(unpack(&pack(&[]).expect("pack"), MAX).expect("unpack"), b"");
    }

    #[test]
    fn reused_states_give_the_same_streams() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 13) as u8).collect();
        let first = pack(&[&data]).expect("pack");
        assert!(unpack("eJwrSS0uAQAEXQHB!", MAX).is_err());
        assert_eq!(pack(&[&data[..5], &data[5..]]).expect("pack"), first);
        assert_eq!(unpack(&first, MAX).expect("unpack"), data);
    }

    #[test]
    fn unpack_names_bad_base64_and_bad_zlib() {
        assert!(matches!(
            unpack("not base64!", MAX),
            Err(WireError::Base64(_))
        ));
        assert!(matches!(unpack("eJy", MAX), Err(WireError::Base64(_))));
        let plain = STANDARD.encode(b"plain bytes, not zlib");
        assert!(matches!(unpack(&plain, MAX), Err(WireError::Zlib(_))));
    }

    #[test]
    fn unpack_refuses_truncated_and_trailing_streams() {
        let data = vec![7u8; 1000];
        let text = pack(&[&data]).expect("pack");
        let compressed = STANDARD.decode(&text).expect("base64");
        let truncated = STANDARD.encode(&compressed[..compressed.len() - 3]);
        let err = unpack(&truncated, MAX).expect_err("truncated");
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut longer = compressed.clone();
        longer.extend_from_slice(b"xyz");
        let err = unpack(&STANDARD.encode(&longer), MAX).expect_err("trailing");
        assert!(err.to_string().contains("3 bytes follow"), "{err}");
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        // 64 MiB of zeros compress to ~64 KiB: with a 1 MiB limit the inflate stops after
        // 1 MiB + 1 bytes, and the output buffer is never bigger than that.
        let zeros = vec![0u8; 64 << 20];
        let text = pack(&[&zeros]).expect("pack");
        let limit = 1 << 20;
        let err = unpack(&text, limit).expect_err("over the limit");
        assert!(matches!(err, WireError::PayloadTooLarge(_)), "{err}");
        assert!(err.to_string().contains("limit of 1048576 bytes"), "{err}");
        let grown = with_stream(&text, limit, |stream| {
            let mut out = Vec::new();
            stream.fill(&mut out, limit + 1)?;
            Ok(out.capacity())
        })
        .expect("fill");
        assert!(grown <= limit + 1, "grew to {grown}");
        // Exactly at the limit is fine.
        let exact = pack(&[&zeros[..limit]]).expect("pack");
        assert_eq!(unpack(&exact, limit).expect("at the limit").len(), limit);
        assert!(unpack(&exact, limit - 1).is_err());
    }

    #[test]
    fn base64_longer_than_the_limit_allows_is_refused_before_decoding() {
        let limit = 1000;
        let most = max_base64_len(limit);
        assert!(most >= pack(&[&vec![7u8; limit]]).expect("pack").len());
        let noise: Vec<u8> = (0..limit as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        assert!(unpack(&pack(&[&noise]).expect("pack"), limit).is_ok());
        let text = "A".repeat(most + 4);
        let err = unpack(&text, limit).expect_err("too long");
        assert!(matches!(err, WireError::PayloadTooLarge(_)), "{err}");
        assert!(err.to_string().contains("1000 bytes (max_bytes)"), "{err}");
        assert_eq!(max_base64_len(usize::MAX), usize::MAX);
    }
}
