//! The job-name filter of `GET /jobs?name=` (docs/protocol.md 5.4): a regular expression
//! searched in each name, in the syntax of the `regex` crate.
//!
//! Any user may send one, and the store runs it over every visible job, so matching must
//! be linear in the name whatever the pattern: `regex` has no backtracking (and so no
//! backreferences or lookaround), and its compiled size and lazy-DFA cache are capped
//! here, as is the pattern's length, so that compiling cannot be made expensive either.

use regex::{Regex, RegexBuilder};

use crate::WireError;

/// The longest pattern accepted, in bytes. Job names are short; 1 KiB is far more than a
/// filter over them needs, and keeps compile time and error messages small.
pub const MAX_PATTERN_LEN: usize = 1024;
/// The compiled program's size limit (`RegexBuilder::size_limit`); counted repetitions
/// such as `(a{100}){100}` pass it quickly. 1 MiB holds any sane filter of 1 KiB.
pub const PATTERN_SIZE_LIMIT: usize = 1 << 20;
/// The lazy DFA's cache limit (`RegexBuilder::dfa_size_limit`): what one compiled pattern
/// may hold while searching; past it the search falls back to slower, still linear, engines.
pub const PATTERN_DFA_SIZE_LIMIT: usize = 1 << 20;

/// A compiled job-name filter; searching is linear in the text.
#[derive(Debug, Clone)]
pub struct NamePattern(Regex);

impl NamePattern {
    /// Compiles `pattern`, or names why it cannot be: too long, invalid syntax (the
    /// `regex` crate's message), or over the compiled-size limit.
    pub fn new(pattern: &str) -> Result<Self, WireError> {
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(WireError::Pattern(format!(
                "the name pattern is {} bytes; the limit is {MAX_PATTERN_LEN}",
                pattern.len()
            )));
        }
        RegexBuilder::new(pattern)
            .size_limit(PATTERN_SIZE_LIMIT)
            .dfa_size_limit(PATTERN_DFA_SIZE_LIMIT)
            .build()
            .map(NamePattern)
            .map_err(|err| WireError::Pattern(format!("bad name pattern {pattern:?}: {err}")))
    }

    /// Whether the pattern matches anywhere in `text` (a search, not a full match).
    pub fn search(&self, text: &str) -> bool {
        self.0.is_match(text)
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn searches_partially() {
        let p = NamePattern::new("bell").expect("valid");
        assert!(p.search("my-bell-2"));
        assert!(!p.search("ghz"));
        let exact = NamePattern::new("^bell$").expect("valid");
        assert!(exact.search("bell") && !exact.search("bells"));
    }

    #[test]
    fn catastrophic_patterns_run_in_linear_time() {
        let p = NamePattern::new("^(a|aa)+$").expect("valid");
        let text = format!("{}!", "a".repeat(100_000));
        let start = Instant::now();
        assert!(!p.search(&text));
        assert!(start.elapsed().as_secs_f64() < 1.0, "{:?}", start.elapsed());
        let p = NamePattern::new("(x+x+)+y").expect("valid");
        assert!(!p.search(&"x".repeat(100_000)));
    }

    #[test]
    fn refuses_long_invalid_and_oversized_patterns() {
        let err = NamePattern::new(&"a".repeat(MAX_PATTERN_LEN + 1)).expect_err("long");
        assert!(
            err.to_string().contains("1025 bytes; the limit is 1024"),
            "{err}"
        );
        assert!(NamePattern::new(&"a".repeat(MAX_PATTERN_LEN)).is_ok());
        for bad in ["(", "[a-", r"(a)\1", "(?=a)", "a{99999999}"] {
            let err = NamePattern::new(bad).expect_err(bad);
            assert!(err.to_string().starts_with("bad name pattern"), "{err}");
        }
        let err = NamePattern::new(r"(\w{100}){100}").expect_err("huge program");
        assert!(err.to_string().contains("size limit"), "{err}");
    }
}
