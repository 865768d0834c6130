//! `ResultOutline`: a qiskit Result dict read by `qdispatch_wire::results::outline` (with
//! the GIL released), from which `qdispatch.results` builds each experiment on access and
//! each experiment's `Counts` directly, as `Result.get_counts` would build them.

use pyo3::exceptions::PyIndexError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyType};
use qdispatch_wire::results::{self, Outline};

use crate::NativeError;

/// `qiskit.result.Counts`.
static COUNTS: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Keys of more hex digits than this become Python ints through `int(digits, 16)`.
const U64_DIGITS: usize = 16;

/// The outline of a qiskit Result dict (JSON bytes): where each experiment lies in the
/// bytes, its name, and its counts where they can be built without qiskit's constructor.
/// `MalformedPayloadError` for a document `Result.from_dict` might refuse or read otherwise;
/// build that one with qiskit.
#[pyclass(module = "qdispatch._native", frozen)]
pub(crate) struct ResultOutline {
    outline: Outline,
    /// Per distinct counts key: the key as written, and its value as an int.
    hex: Vec<(Py<PyString>, Py<PyAny>)>,
    /// Per distinct bitstring.
    bins: Vec<Py<PyString>>,
}

#[pymethods]
impl ResultOutline {
    #[new]
    fn new(py: Python<'_>, result_json: &[u8]) -> PyResult<Self> {
        let outline = py
            .detach(|| results::outline(result_json))
            .map_err(NativeError)?;
        let int = py
            .import(intern!(py, "builtins"))?
            .getattr(intern!(py, "int"))?;
        let hex = outline
            .hex_keys
            .iter()
            .map(|key| {
                let digits = &key[2..];
                let value = if digits.len() <= U64_DIGITS {
                    let v = u64::from_str_radix(digits, 16).map_err(|e| {
                        crate::MalformedPayloadError::new_err(format!("counts key {key:?}: {e}"))
                    })?;
                    v.into_pyobject(py)?.into_any()
                } else {
                    int.call1((digits, 16))?
                };
                Ok((PyString::new(py, key).unbind(), value.unbind()))
            })
            .collect::<PyResult<_>>()?;
        let bins = outline
            .bin_keys
            .iter()
            .map(|b| PyString::new(py, b).unbind())
            .collect();
        Ok(ResultOutline { outline, hex, bins })
    }

    /// The members other than ``results``, as a JSON object.
    #[getter]
    fn top<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.outline.top.as_bytes())
    }

    /// Whether every experiment's header is an object, null or absent.
    #[getter]
    fn names_ok(&self) -> bool {
        self.outline.names_ok
    }

    fn __len__(&self) -> usize {
        self.outline.experiments.len()
    }

    /// The ``(start, end)`` byte range of experiment ``index``'s JSON object.
    fn span(&self, index: usize) -> PyResult<(usize, usize)> {
        Ok(self.experiment(index)?.span)
    }

    /// Each experiment's name as qiskit's lookup by name matches it (``""`` for a header
    /// without one), ``None`` where none can match.
    fn names(&self) -> Vec<Option<&str>> {
        self.outline
            .experiments
            .iter()
            .map(|e| e.name.as_deref())
            .collect()
    }

    /// Experiment ``index``'s ``Counts``, equal to what ``Result.get_counts(index)`` builds
    /// (keys, counts, ``hex_raw``, ``int_raw``, ``creg_sizes``, ``memory_slots``,
    /// ``time_taken``); ``None`` when the experiment did not succeed or its counts are
    /// left to qiskit.
    fn counts<'py>(&self, py: Python<'py>, index: usize) -> PyResult<Option<Bound<'py, PyAny>>> {
        let exp = self.experiment(index)?;
        let (true, Some(fast)) = (exp.success, exp.counts.as_ref()) else {
            return Ok(None);
        };
        let cls = COUNTS
            .get_or_try_init(py, || -> PyResult<Py<PyType>> {
                Ok(py
                    .import("qiskit.result")?
                    .getattr("Counts")?
                    .cast_into::<PyType>()?
                    .unbind())
            })?
            .bind(py);
        let counts = cls.call_method1(intern!(py, "__new__"), (cls,))?;
        let bins = counts.cast::<PyDict>()?;
        let hex_raw = PyDict::new(py);
        let int_raw = PyDict::new(py);
        for &(h, b, n) in &self.outline.pairs[fast.pairs.0..fast.pairs.1] {
            let (key, value) = &self.hex[h as usize];
            let n = n.into_pyobject(py)?;
            hex_raw.set_item(key.bind(py), &n)?;
            int_raw.set_item(value.bind(py), &n)?;
            bins.set_item(self.bins[b as usize].bind(py), &n)?;
        }
        // In the order qiskit's constructor sets them.
        if fast.pairs.0 == fast.pairs.1 {
            counts.setattr(intern!(py, "int_raw"), int_raw)?;
            counts.setattr(intern!(py, "hex_raw"), hex_raw)?;
        } else {
            counts.setattr(intern!(py, "hex_raw"), hex_raw)?;
            counts.setattr(intern!(py, "int_raw"), int_raw)?;
        }
        let cregs = match &fast.creg_sizes {
            None => py.None().into_bound(py),
            Some(sizes) => {
                let list = PyList::empty(py);
                for (name, size) in sizes {
                    list.append(PyList::new(
                        py,
                        [
                            PyString::new(py, name).into_any(),
                            size.into_pyobject(py)?.into_any(),
                        ],
                    )?)?;
                }
                list.into_any()
            }
        };
        counts.setattr(intern!(py, "creg_sizes"), cregs)?;
        counts.setattr(intern!(py, "memory_slots"), fast.memory_slots)?;
        counts.setattr(intern!(py, "time_taken"), py.None())?;
        Ok(Some(counts))
    }

    /// Experiment ``index``'s keys and counts (those of ``counts(index)``) in a new
    /// ``cls.__new__(cls)``, ``cls`` a ``Counts`` subclass, and nothing else: none of the
    /// attributes ``counts`` sets (``hex_raw``, ``int_raw``, ``creg_sizes``,
    /// ``memory_slots``, ``time_taken``), which ``cls`` makes from ``counts(index)`` when
    /// one is first read. ``None`` where ``counts`` gives ``None``.
    fn bin_counts<'py>(
        &self,
        py: Python<'py>,
        index: usize,
        cls: &Bound<'py, PyType>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let exp = self.experiment(index)?;
        let (true, Some(fast)) = (exp.success, exp.counts.as_ref()) else {
            return Ok(None);
        };
        let counts = cls.call_method1(intern!(py, "__new__"), (cls,))?;
        let bins = counts.cast::<PyDict>()?;
        for &(_, b, n) in &self.outline.pairs[fast.pairs.0..fast.pairs.1] {
            bins.set_item(self.bins[b as usize].bind(py), n)?;
        }
        Ok(Some(counts))
    }
}

impl ResultOutline {
    fn experiment(&self, index: usize) -> PyResult<&results::ExperimentOutline> {
        self.outline
            .experiments
            .get(index)
            .ok_or_else(|| PyIndexError::new_err(format!("no experiment {index}")))
    }
}
