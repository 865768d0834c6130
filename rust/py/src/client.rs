//! `Client`: the service client of `qdispatch-client` (HTTP with retries, the event stream)
//! on the process's one tokio runtime, and `counts_from_result`.
//!
//! Fork safety: a tokio runtime does not survive `fork` (its worker threads exist only in
//! the parent). The runtime remembers the pid that built it; a call from another process
//! (a fork child) builds a fresh runtime and leaks the old one, whose threads are gone.
//! A `Client` made before the fork refuses to work in the child (its pooled connections and
//! socket belong to the parent) with a clear `RuntimeError`; the child makes a new `Client`.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use qdispatch_client::client::{
    parse_method, splice_qobj, RequestOptions, RetryPolicy, ServiceClient,
};
use qdispatch_client::stream::{is_final, EventStream, StreamConfig};
use qdispatch_client::submit::{submit_all, Chunk};
use qdispatch_client::tls::Verify;
use qdispatch_client::ClientError;
use qdispatch_wire::results;
use tokio::runtime::Runtime;

use crate::{MalformedPayloadError, NativeError};

create_exception!(
    qdispatch._native,
    ApiError,
    PyException,
    "The job service answered with an error, or could not be reached. Attributes: `status` \
     (HTTP status, 0 when no answer came), `code` (the service's error code), `message`."
);
create_exception!(
    qdispatch._native,
    ConnectionFailedError,
    ApiError,
    "The job service could not be reached after every retry (status 0, code \
     'connection_failed')."
);
create_exception!(
    qdispatch._native,
    StreamTimeoutError,
    PyTimeoutError,
    "Waiting on the event stream timed out."
);

/// The runtime and the pid of the process that built it.
static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);

/// The process's tokio runtime (two worker threads), built on first use and again in a
/// fork child.
fn runtime() -> PyResult<&'static Runtime> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((owner, rt)) = *slot {
        if owner == pid {
            return Ok(rt);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("qdispatch-rt")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the tokio runtime: {e}")))?;
    // Leaked on purpose: the runtime lives as long as the process, and the one a fork child
    // inherits must never be dropped (dropping it would wait for threads that do not exist).
    let rt: &'static Runtime = Box::leak(Box::new(rt));
    *slot = Some((pid, rt));
    Ok(rt)
}

fn set_attrs(py: Python<'_>, err: &PyErr, status: u16, code: &str, message: &str, body: &str) {
    let value = err.value(py);
    // Setting an attribute on a fresh exception instance cannot fail in practice; if it
    // did, the exception still carries its message.
    let _ = value.setattr("status", status);
    let _ = value.setattr("code", code);
    let _ = value.setattr("message", message);
    let _ = value.setattr("body", body);
}

/// The Python exception of a client error.
pub(crate) fn client_err(err: ClientError) -> PyErr {
    Python::attach(|py| match err {
        ClientError::Api {
            status,
            code,
            message,
            body,
        } => {
            let e = ApiError::new_err((message.clone(),));
            set_attrs(py, &e, status, &code, &message, &body);
            e
        }
        ClientError::Connection(msg) | ClientError::Timeout(msg) => {
            let e = ConnectionFailedError::new_err((msg.clone(),));
            set_attrs(py, &e, 0, "connection_failed", &msg, "");
            e
        }
        // A refused certificate is a failure to connect (same class, status 0) that callers
        // can tell apart by its code; it was not retried.
        ClientError::Tls(msg) => {
            let e = ConnectionFailedError::new_err((msg.clone(),));
            set_attrs(py, &e, 0, "tls_error", &msg, "");
            e
        }
        ClientError::Stream(msg) => StreamTimeoutError::new_err(msg),
        ClientError::Json(msg) => MalformedPayloadError::new_err(msg),
        ClientError::Runtime(msg) => PyRuntimeError::new_err(msg),
    })
}

fn duration(seconds: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        PyValueError::new_err(format!(
            "{what} must be a non-negative number of seconds, got {seconds}"
        ))
    })
}

/// An event as Python sees it: `(job_id, seq, type, data)`.
type PyEvent<'py> = (String, u64, String, Option<Bound<'py, PyBytes>>);

/// Waits are cut in slices this long so Ctrl-C (a pending signal) is seen between them.
const SLICE: Duration = Duration::from_millis(200);

/// A client of one job service: pooled HTTP with retries and idempotent POSTs, and one
/// multiplexed event WebSocket. Thread-safe; every blocking call releases the GIL.
#[pyclass(module = "qdispatch._native", frozen)]
pub(crate) struct Client {
    core: ServiceClient,
    stream: EventStream,
    timeout: Duration,
    pid: u32,
    rt: &'static Runtime,
}

impl Client {
    fn rt(&self) -> PyResult<&'static Runtime> {
        if std::process::id() != self.pid {
            return Err(PyRuntimeError::new_err(format!(
                "this Client was created in process {} and cannot be used after fork(); \
                 create a new Client in this process",
                self.pid
            )));
        }
        Ok(self.rt)
    }

    /// Runs `wait(slice)` repeatedly with the GIL released until it returns `Some`, the
    /// deadline passes, or a signal handler raises.
    fn sliced<T: Send>(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        wait: impl Fn(Duration) -> Result<Option<T>, ClientError> + Sync,
    ) -> PyResult<Option<T>> {
        self.rt()?;
        let deadline = match timeout {
            Some(t) => Some(std::time::Instant::now() + duration(t, "timeout")?),
            None => None,
        };
        loop {
            let slice = match deadline {
                Some(d) => d
                    .saturating_duration_since(std::time::Instant::now())
                    .min(SLICE),
                None => SLICE,
            };
            if let Some(found) = py.detach(|| wait(slice)).map_err(client_err)? {
                return Ok(Some(found));
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(None);
            }
            py.check_signals()?;
        }
    }
}

#[pymethods]
impl Client {
    #[new]
    /// `verify=False` checks no TLS certificate; `ca_bundle` (a PEM file) replaces the
    /// platform's CA certificates.
    #[pyo3(signature = (url, token, *, timeout = 30.0, max_attempts = 6, verify = true, ca_bundle = None))]
    fn new(
        py: Python<'_>,
        url: &str,
        token: &str,
        timeout: f64,
        max_attempts: u32,
        verify: bool,
        ca_bundle: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        let rt = runtime()?;
        let policy = RetryPolicy {
            max_attempts: max_attempts.max(1),
            ..RetryPolicy::default()
        };
        let verify = match (verify, ca_bundle) {
            (false, _) => Verify::Off,
            (true, Some(path)) => Verify::CaBundle(path),
            (true, None) => Verify::Platform,
        };
        // Reading the platform's certificates is file I/O: without the GIL.
        let core = py
            .detach(|| ServiceClient::with_tls(url, token, policy, &verify))
            .map_err(client_err)?;
        // reqwest's client registers with the runtime it is first used on; build the stream
        // (which spawns there) against the same runtime.
        let stream = EventStream::new(core.clone(), StreamConfig::default(), rt.handle().clone());
        Ok(Client {
            core,
            stream,
            timeout: duration(timeout, "timeout")?,
            pid: std::process::id(),
            rt,
        })
    }

    /// The service URL.
    #[getter]
    fn url(&self) -> &str {
        self.core.base_url()
    }

    /// Sends a request and returns the response body (decompressed); retries connect
    /// errors, timeouts, 5xx and 429 with backoff. Raises `ApiError` for a non-2xx answer
    /// and `ConnectionFailedError` when the service cannot be reached.
    #[pyo3(signature = (method, path, body = None, *, query = None, idempotency_key = None, gzip = false, timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn request<'py>(
        &self,
        py: Python<'py>,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        query: Option<Vec<(String, String)>>,
        idempotency_key: Option<String>,
        gzip: bool,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let rt = self.rt()?;
        let method = parse_method(method).map_err(client_err)?;
        let opts = RequestOptions {
            idempotency_key,
            gzip_body: gzip,
            timeout: match timeout {
                Some(t) => duration(t, "timeout")?,
                None => self.timeout,
            },
        };
        let query = query.unwrap_or_default();
        let core = &self.core;
        let response = py
            .detach(|| rt.block_on(core.request(method, path, &query, body.map(Bytes::from), opts)))
            .map_err(client_err)?;
        Ok(PyBytes::new(py, &response.body))
    }

    /// `POST /jobs` with the body `envelope` (a JSON object) plus `"qobj": <qobj>` spliced
    /// in without re-parsing, gzip-compressed; returns the response body (the job record).
    #[pyo3(signature = (envelope, qobj, *, idempotency_key = None))]
    fn submit<'py>(
        &self,
        py: Python<'py>,
        envelope: &[u8],
        qobj: &[u8],
        idempotency_key: Option<String>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let rt = self.rt()?;
        let opts = RequestOptions {
            idempotency_key,
            gzip_body: true,
            timeout: self.timeout,
        };
        let core = &self.core;
        let response = py
            .detach(|| {
                let body = splice_qobj(envelope, qobj)?;
                rt.block_on(core.request(
                    parse_method("POST")?,
                    "/jobs",
                    &[],
                    Some(Bytes::from(body)),
                    opts,
                ))
            })
            .map_err(client_err)?;
        Ok(PyBytes::new(py, &response.body))
    }

    /// Submits many jobs at once (the job manager's chunks): `envelopes[i]` with
    /// `qobjs[i]` spliced in, gzip-compressed, at most `concurrency` requests in flight,
    /// the GIL released throughout. Returns, per chunk and in order, the job record
    /// (bytes) or the error (an `ApiError` instance, not raised). A chunk over the user's
    /// active-job limit waits for one of the batch's jobs to finish and tries again.
    /// `idempotency_keys[i]`, when given, is chunk i's key for all its attempts.
    #[pyo3(signature = (envelopes, qobjs, *, concurrency = 8, idempotency_keys = None))]
    fn submit_many<'py>(
        &self,
        py: Python<'py>,
        envelopes: Vec<Vec<u8>>,
        qobjs: Vec<Vec<u8>>,
        concurrency: usize,
        idempotency_keys: Option<Vec<String>>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        if envelopes.len() != qobjs.len() {
            return Err(PyValueError::new_err(format!(
                "{} envelopes but {} qobjs",
                envelopes.len(),
                qobjs.len()
            )));
        }
        if let Some(keys) = &idempotency_keys {
            if keys.len() != envelopes.len() {
                return Err(PyValueError::new_err(format!(
                    "{} idempotency keys for {} envelopes",
                    keys.len(),
                    envelopes.len()
                )));
            }
        }
        let rt = self.rt()?;
        let mut keys = idempotency_keys.map(Vec::into_iter);
        let chunks: Vec<Chunk> = envelopes
            .into_iter()
            .zip(qobjs)
            .map(|(envelope, qobj)| Chunk {
                envelope,
                qobj,
                key: keys.as_mut().and_then(Iterator::next),
            })
            .collect();
        let opts = RequestOptions {
            idempotency_key: None,
            gzip_body: true,
            timeout: self.timeout,
        };
        let stream = &self.stream;
        let core = &self.core;
        let outcomes = py.detach(|| {
            rt.block_on(submit_all(
                core,
                chunks,
                concurrency,
                opts,
                |ids| async move {
                    let active: Vec<String> = ids
                        .into_iter()
                        .filter(|id| stream.last_status(id).is_none_or(|s| !is_final(&s)))
                        .collect();
                    if active.is_empty() {
                        // The limit is held by jobs of other batches: check back shortly.
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        return;
                    }
                    if stream.watch(&active).is_ok() {
                        let _ = stream
                            .wait_any_final(&active, Some(Duration::from_secs(5)))
                            .await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                },
            ))
        });
        outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Ok(body) => Ok(PyBytes::new(py, &body).into_any()),
                Err(err) => Ok(client_err(err).into_value(py).into_bound(py).into_any()),
            })
            .collect()
    }

    /// Subscribes `job_ids` on the event stream (opened on first use); does not block.
    fn watch(&self, job_ids: Vec<String>) -> PyResult<()> {
        self.rt()?;
        self.stream.watch(&job_ids).map_err(client_err)
    }

    /// Stops following `job_ids`.
    fn unwatch(&self, job_ids: Vec<String>) -> PyResult<()> {
        self.rt()?;
        self.stream.unwatch(&job_ids);
        Ok(())
    }

    /// The latest status seen for `job_id` on the stream or by polling; None if none yet.
    fn last_status(&self, job_id: &str) -> Option<String> {
        self.stream.last_status(job_id)
    }

    /// Blocks until `job_id` is final and returns its status ("DONE", "ERROR" or
    /// "CANCELLED"), or None after `timeout` seconds. Watches the job if needed.
    #[pyo3(signature = (job_id, timeout = None))]
    fn wait_final(
        &self,
        py: Python<'_>,
        job_id: &str,
        timeout: Option<f64>,
    ) -> PyResult<Option<String>> {
        let rt = self.rt()?;
        self.sliced(py, timeout, |slice| {
            rt.block_on(self.stream.wait_final(job_id, Some(slice)))
        })
    }

    /// Blocks until at least one of `job_ids` is final (or `timeout` seconds pass); returns
    /// every one of them that is final by then.
    #[pyo3(signature = (job_ids, timeout = None))]
    fn wait_any_final(
        &self,
        py: Python<'_>,
        job_ids: Vec<String>,
        timeout: Option<f64>,
    ) -> PyResult<Vec<String>> {
        let rt = self.rt()?;
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let found = self.sliced(py, timeout, |slice| {
            rt.block_on(self.stream.wait_any_final(&job_ids, Some(slice)))
                .map(|done| (!done.is_empty()).then_some(done))
        })?;
        Ok(found.unwrap_or_default())
    }

    /// The result the event stream brought for `job_id` (its JSON), handed over once;
    /// waits up to `timeout` seconds for one the job's final status announced. None: fetch
    /// it with `GET /jobs/{id}/results` (too large to ride the stream, or not come).
    #[pyo3(signature = (job_id, timeout = 1.0))]
    fn take_result<'py>(
        &self,
        py: Python<'py>,
        job_id: &str,
        timeout: f64,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let rt = self.rt()?;
        let wait = duration(timeout, "timeout")?;
        let data = py.detach(|| rt.block_on(self.stream.take_result(job_id, wait)));
        Ok(data.map(|d| PyBytes::new(py, &d)))
    }

    /// Events `(job_id, seq, type, data)` from the stream, in arrival order (each job's in
    /// seq order, none twice); waits up to `timeout` seconds for the first one.
    fn next_events<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Vec<PyEvent<'py>>> {
        let rt = self.rt()?;
        let events = self.sliced(py, Some(timeout), |slice| {
            let got = rt.block_on(self.stream.next_events(slice, 10_000));
            Ok((!got.is_empty()).then_some(got))
        })?;
        Ok(events
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let data = e.data.map(|d| PyBytes::new(py, &d));
                (e.job_id, e.seq, e.kind, data)
            })
            .collect())
    }

    /// Whether the event WebSocket is open now.
    fn stream_connected(&self) -> bool {
        self.stream.is_connected()
    }

    /// Whether statuses are being polled (no WebSocket could be opened lately).
    fn stream_polling(&self) -> bool {
        self.stream.is_polling()
    }

    /// Closes the socket and stops the background tasks; blocked waits return.
    fn close(&self) {
        self.stream.close();
    }

    fn __repr__(&self) -> String {
        format!("Client(url={:?})", self.core.base_url())
    }
}

/// For each experiment of a qiskit Result dict (JSON bytes), its counts in the form
/// `qiskit.result.Result.get_counts` gives, or None for an experiment without counts.
#[pyfunction]
pub(crate) fn counts_from_result<'py>(
    py: Python<'py>,
    result_json: &[u8],
) -> PyResult<Vec<Option<Bound<'py, PyDict>>>> {
    let table = py
        .detach(|| results::counts_table(result_json))
        .map_err(NativeError)?;
    // Each distinct bitstring becomes one Python string, shared by every dict holding it
    // (its hash is then computed once, too).
    let keys: Vec<Bound<'py, PyString>> = table.keys.iter().map(|k| PyString::new(py, k)).collect();
    (0..table.experiments.len())
        .map(|i| {
            table
                .experiment(i)
                .map(|pairs| {
                    let dict = PyDict::new(py);
                    for &(k, n) in pairs {
                        dict.set_item(&keys[k as usize], n)?;
                    }
                    Ok(dict)
                })
                .transpose()
        })
        .collect()
}

/// Gives the exception classes class-level defaults of their attributes, so they exist
/// (and the stubs match) even on an instance raised without them.
pub(crate) fn init_exceptions(py: Python<'_>) -> PyResult<()> {
    let api = py.get_type::<ApiError>();
    api.setattr("status", 0)?;
    api.setattr("code", "")?;
    api.setattr("message", "")?;
    api.setattr("body", "")?;
    Ok(())
}
