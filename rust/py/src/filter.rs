//! `NamePattern`: the job-name filter of `GET /jobs` (`qdispatch_wire::filter`), which
//! the store searches every visible job's name with.

use pyo3::prelude::*;
use qdispatch_wire::filter;

use crate::NativeError;

/// Names longer than this are searched with the GIL released; shorter ones (every job
/// name in practice) are searched in less time than releasing it takes.
const DETACH_ABOVE: usize = 64 << 10;

/// A compiled job-name filter: a regular expression in the syntax of Rust's `regex` crate
/// (no backreferences or lookaround), searched in linear time. `InvalidNamePatternError`
/// for an invalid pattern or one over the limits.
#[pyclass(module = "qdispatch._native", frozen)]
pub(crate) struct NamePattern(filter::NamePattern);

#[pymethods]
impl NamePattern {
    #[new]
    fn new(py: Python<'_>, pattern: &str) -> PyResult<Self> {
        let compiled = py
            .detach(|| filter::NamePattern::new(pattern))
            .map_err(NativeError)?;
        Ok(NamePattern(compiled))
    }

    /// Whether the pattern matches anywhere in `text`.
    fn search(&self, py: Python<'_>, text: &str) -> bool {
        if text.len() > DETACH_ABOVE {
            py.detach(|| self.0.search(text))
        } else {
            self.0.search(text)
        }
    }

    /// The pattern as given.
    #[getter]
    fn pattern(&self) -> &str {
        self.0.as_str()
    }

    fn __repr__(&self) -> String {
        format!("NamePattern({:?})", self.0.as_str())
    }
}
