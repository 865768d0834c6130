//! The one multiplexed event WebSocket (`WS /stream`) of a [`ServiceClient`].
//!
//! The socket is opened on the first [`EventStream::watch`]. Per job the stream keeps the
//! highest `seq` seen, the latest status, whether it is final and its error message. After a
//! disconnect (or when nothing, not even a heartbeat, has come for three heartbeat periods)
//! it reconnects with backoff (0.1 s doubling to 5 s) and subscribes every watched job again
//! with `since` = its last seq, and drops events it has already seen, so nothing is lost or
//! delivered twice. While no socket can be opened (three failures in a row) it polls
//! `POST /jobs:status` for the watched, unfinished jobs every 0.5 s, and keeps trying the
//! socket. Polling updates statuses only: missed events come when the socket is back.
//!
//! `wss://` (for an `https://` service) uses the client's TLS configuration. A TLS failure
//! (a refused certificate) is no reason to poll instead: the stream stops, and every wait
//! on it fails with [`ClientError::Tls`].
//!
//! Every event goes into one unbounded queue that [`EventStream::next_events`] drains (the
//! Python side runs callbacks from it on its own thread, never inside the runtime).
//!
//! Small results ride the stream: the client subscribes with `inline_results` on, and a
//! `result` event's data of at most [`StreamConfig::inline_result_bytes`] is kept with its
//! job (all jobs' together within [`StreamConfig::inline_result_budget`]) until
//! [`EventStream::take_result`] hands it over, once; a larger one, or one over the budget,
//! is fetched over HTTP by the caller. The final status event says whether a result
//! event follows it (`has_result`), so a caller waits for one only when one is coming.
//! The queue of [`EventStream::next_events`] gets result events without their data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

use crate::client::{RequestOptions, RetryPolicy, ServiceClient};
use crate::{tls, ClientError};

/// The statuses a job never leaves.
pub const FINAL_STATUSES: [&str; 3] = ["DONE", "ERROR", "CANCELLED"];

/// Whether `status` is final.
pub fn is_final(status: &str) -> bool {
    FINAL_STATUSES.contains(&status)
}

/// One job event as the service sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub job_id: String,
    pub seq: u64,
    /// `status`, `interim`, `result` or `log`.
    pub kind: String,
    /// The raw JSON of `data`; `None` when it is `null` (a `result` without inline results).
    pub data: Option<Bytes>,
}

/// What the stream holds of a job's result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PushedResult {
    /// Nothing known: the job is not final, its final status came by polling, or the
    /// service did not say that a result follows it.
    #[default]
    Unknown,
    /// The final status said a `result` event follows.
    Expected,
    /// The result's JSON, as the `result` event carried it.
    Inline(Bytes),
    /// The result is to be fetched: its event came without data (over the service's or
    /// this client's limit, or the budget), or the inline one was handed over already.
    Fetch,
}

/// What is known of one job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobState {
    /// Highest `seq` received on the stream (0: none yet).
    pub last_seq: u64,
    /// Latest status, from the stream or from polling.
    pub status: Option<String>,
    /// Whether `status` is final.
    pub is_final: bool,
    /// The job's error message, if it ended `ERROR`, or why it cannot be watched.
    pub error: Option<String>,
    /// Whether the job is subscribed.
    pub watched: bool,
    /// Its result, when the stream brought it.
    pub result: PushedResult,
}

/// Timings of the stream; the defaults are the documented ones.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The service's heartbeat period; `None` reads `GET /info` (`heartbeat_seconds`,
    /// default 10 s) when the stream starts.
    pub heartbeat: Option<Duration>,
    /// First reconnect delay, doubled on each failure up to `reconnect_cap`.
    pub reconnect_base: Duration,
    pub reconnect_cap: Duration,
    /// Consecutive failures to open the socket before polling starts.
    pub fallback_after: u32,
    /// Period of `POST /jobs:status` while polling.
    pub poll_interval: Duration,
    /// Limit on opening the socket (TCP connect and handshake).
    pub connect_timeout: Duration,
    /// The largest result (bytes of JSON) kept from a `result` event; 0 subscribes
    /// without inline results (every result is fetched).
    pub inline_result_bytes: usize,
    /// The most bytes of inline results held at once, for all jobs (results not taken
    /// yet); a result that would pass it is fetched instead.
    pub inline_result_budget: usize,
}

/// Default [`StreamConfig::inline_result_bytes`]: 1 MiB (the service's default limit).
pub const INLINE_RESULT_BYTES: usize = 1 << 20;
/// Default [`StreamConfig::inline_result_budget`]: 64 MiB.
pub const INLINE_RESULT_BUDGET: usize = 64 << 20;

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            heartbeat: None,
            reconnect_base: Duration::from_millis(100),
            reconnect_cap: Duration::from_secs(5),
            fallback_after: 3,
            poll_interval: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            inline_result_bytes: INLINE_RESULT_BYTES,
            inline_result_budget: INLINE_RESULT_BUDGET,
        }
    }
}

enum Command {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
}

struct Shared {
    client: ServiceClient,
    config: StreamConfig,
    jobs: Mutex<HashMap<String, JobState>>,
    /// Bumped whenever a job becomes final; waiters re-check their jobs.
    finals: watch::Sender<u64>,
    /// Bumped whenever a `result` event arrives; `take_result` re-checks.
    results: watch::Sender<u64>,
    /// Bytes of inline results held (within `config.inline_result_budget`).
    held: AtomicUsize,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>,
    connected: AtomicBool,
    polling: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Why the stream stopped for good (a TLS failure): every wait fails with it.
    fatal: Mutex<Option<ClientError>>,
}

impl Shared {
    fn jobs(&self) -> MutexGuard<'_, HashMap<String, JobState>> {
        // A panic elsewhere while holding the lock leaves the map consistent enough: every
        // update is a few field assignments.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_error(&self, msg: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
    }

    fn fatal(&self) -> Option<ClientError> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The event stream of one client. Dropping it (or [`EventStream::close`]) stops its tasks.
pub struct EventStream {
    shared: Arc<Shared>,
    handle: Handle,
    cmd_tx: mpsc::UnboundedSender<Command>,
    cmd_rx: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    shutdown: watch::Sender<bool>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

impl EventStream {
    /// A stream for `client`; its tasks run on `handle` once something is watched.
    pub fn new(client: ServiceClient, config: StreamConfig, handle: Handle) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client,
            config,
            jobs: Mutex::new(HashMap::new()),
            finals: watch::Sender::new(0),
            results: watch::Sender::new(0),
            held: AtomicUsize::new(0),
            events_tx,
            events_rx: tokio::sync::Mutex::new(events_rx),
            connected: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            last_error: Mutex::new(None),
            fatal: Mutex::new(None),
        });
        EventStream {
            shared,
            handle,
            cmd_tx,
            cmd_rx: Mutex::new(Some(cmd_rx)),
            shutdown: watch::Sender::new(false),
        }
    }

    fn ensure_started(&self) -> Result<(), ClientError> {
        if let Some(err) = self.shared.fatal() {
            return Err(err);
        }
        if *self.shutdown.borrow() {
            return Err(ClientError::Runtime("the client is closed".to_owned()));
        }
        let taken = self.cmd_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(cmd_rx) = taken {
            let shared = self.shared.clone();
            let shutdown = self.shutdown.subscribe();
            self.handle
                .spawn(poll_loop(shared.clone(), shutdown.clone()));
            self.handle.spawn(socket_loop(shared, cmd_rx, shutdown));
        }
        Ok(())
    }

    /// Subscribes `job_ids` (non-blocking); already watched ids are left alone.
    pub fn watch(&self, job_ids: &[String]) -> Result<(), ClientError> {
        let mut new = Vec::new();
        {
            let mut jobs = self.shared.jobs();
            for id in job_ids {
                let state = jobs.entry(id.clone()).or_default();
                if !state.watched {
                    state.watched = true;
                    new.push(id.clone());
                }
            }
        }
        self.ensure_started()?;
        if !new.is_empty() {
            // The socket task gone means the stream is closed; watch state is kept anyway.
            let _ = self.cmd_tx.send(Command::Subscribe(new));
        }
        Ok(())
    }

    /// Stops delivery for `job_ids`; what is known of them is kept.
    pub fn unwatch(&self, job_ids: &[String]) {
        let mut gone = Vec::new();
        {
            let mut jobs = self.shared.jobs();
            for id in job_ids {
                if let Some(state) = jobs.get_mut(id) {
                    if state.watched {
                        state.watched = false;
                        gone.push(id.clone());
                    }
                    if let PushedResult::Inline(data) = &state.result {
                        self.shared.held.fetch_sub(data.len(), Ordering::SeqCst);
                        state.result = PushedResult::Fetch;
                    }
                }
            }
        }
        if !gone.is_empty() {
            let _ = self.cmd_tx.send(Command::Unsubscribe(gone));
        }
    }

    /// What is known of `job_id`, if it was ever watched.
    pub fn state(&self, job_id: &str) -> Option<JobState> {
        self.shared.jobs().get(job_id).cloned()
    }

    /// The latest status seen for `job_id`.
    pub fn last_status(&self, job_id: &str) -> Option<String> {
        self.shared
            .jobs()
            .get(job_id)
            .and_then(|s| s.status.clone())
    }

    /// Waits until `job_id` is final (watching it if needed) and returns its final status,
    /// or `None` after `timeout`.
    pub async fn wait_final(
        &self,
        job_id: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<String>, ClientError> {
        let ids = [job_id.to_owned()];
        let done = self.wait_any_final(&ids, timeout).await?;
        Ok(done
            .first()
            .and_then(|_| self.last_status(job_id))
            .filter(|s| is_final(s)))
    }

    /// Waits until at least one of `job_ids` is final (watching them if needed), or
    /// `timeout`; returns every one of them that is final by then.
    pub async fn wait_any_final(
        &self,
        job_ids: &[String],
        timeout: Option<Duration>,
    ) -> Result<Vec<String>, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        // Subscribe to the counter before looking, so a change in between is not missed.
        let mut changes = self.shared.finals.subscribe();
        let unwatched: Vec<String> = {
            let jobs = self.shared.jobs();
            job_ids
                .iter()
                .filter(|id| !jobs.get(*id).is_some_and(|s| s.watched || s.is_final))
                .cloned()
                .collect()
        };
        if !unwatched.is_empty() {
            self.watch(&unwatched)?;
        }
        let mut closed = self.shutdown.subscribe();
        loop {
            let done: Vec<String> = {
                let jobs = self.shared.jobs();
                job_ids
                    .iter()
                    .filter(|id| jobs.get(*id).is_some_and(|s| s.is_final))
                    .cloned()
                    .collect()
            };
            if !done.is_empty() || job_ids.is_empty() {
                return Ok(done);
            }
            if let Some(err) = self.shared.fatal() {
                return Err(err);
            }
            if *closed.borrow() {
                return Err(ClientError::Runtime("the client is closed".to_owned()));
            }
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(Vec::new());
                    }
                }
                _ = closed.changed() => {}
                () = sleep => return Ok(Vec::new()),
            }
        }
    }

    /// The result the stream brought for `job_id` (its JSON), handed over once. When the
    /// job's final status said a result follows and it has not come yet, waits up to
    /// `timeout` for it (it comes right behind the status). `None`: fetch it over HTTP
    /// (too large to ride the stream, taken already, or nothing came in time).
    pub async fn take_result(&self, job_id: &str, timeout: Duration) -> Option<Bytes> {
        let deadline = Instant::now() + timeout;
        let mut changes = self.shared.results.subscribe();
        let mut closed = self.shutdown.subscribe();
        loop {
            {
                let mut jobs = self.shared.jobs();
                let state = jobs.get_mut(job_id)?;
                match &state.result {
                    PushedResult::Inline(data) => {
                        let data = data.clone();
                        self.shared.held.fetch_sub(data.len(), Ordering::SeqCst);
                        state.result = PushedResult::Fetch;
                        return Some(data);
                    }
                    PushedResult::Expected => {}
                    PushedResult::Unknown | PushedResult::Fetch => return None,
                }
            }
            if *closed.borrow() {
                return None;
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = closed.changed() => {}
                () = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    /// The queued events: waits up to `timeout` for the first, then takes what else is
    /// queued (at most `max`).
    pub async fn next_events(&self, timeout: Duration, max: usize) -> Vec<Event> {
        let mut rx = self.shared.events_rx.lock().await;
        let mut out = Vec::new();
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(event)) => out.push(event),
            Ok(None) | Err(_) => return out,
        }
        while out.len() < max {
            match rx.try_recv() {
                Ok(event) => out.push(event),
                Err(_) => break,
            }
        }
        out
    }

    /// Whether the socket is open now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Whether statuses are being polled (no socket could be opened lately).
    pub fn is_polling(&self) -> bool {
        self.shared.polling.load(Ordering::SeqCst)
    }

    /// Why the socket was last lost or could not be opened.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Closes the socket and stops the background tasks; waiters return.
    pub fn close(&self) {
        self.shutdown.send_replace(true);
        self.shared.connected.store(false, Ordering::SeqCst);
    }
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(default)]
    job_id: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    missing: Option<Vec<String>>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct StatusData {
    status: String,
    #[serde(default)]
    error: Option<serde_json::Value>,
    /// A `result` event follows this (final) status.
    #[serde(default)]
    has_result: bool,
}

fn error_message(error: Option<&serde_json::Value>) -> Option<String> {
    match error? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_owned)
            .or_else(|| Some(serde_json::Value::Object(o.clone()).to_string())),
        other => Some(other.to_string()),
    }
}

/// Applies a status to a job; returns whether the job just became final. A final job keeps
/// its status (a replayed or polled older one must not undo it).
fn apply_status(state: &mut JobState, status: &str, error: Option<String>) -> bool {
    if state.is_final {
        return false;
    }
    state.status = Some(status.to_owned());
    if is_final(status) {
        state.is_final = true;
        state.error = error;
        return true;
    }
    false
}

/// One text frame from the service.
fn handle_message(shared: &Shared, text: &[u8]) {
    let Ok(msg) = serde_json::from_slice::<Incoming>(text) else {
        return;
    };
    let (Some(job_id), Some(seq)) = (msg.job_id, msg.seq) else {
        match msg.kind.as_deref() {
            Some("subscribed") => {
                let mut jobs = shared.jobs();
                for id in msg.missing.unwrap_or_default() {
                    if let Some(state) = jobs.get_mut(&id) {
                        state.error = Some(format!("job '{id}' not found"));
                    }
                }
            }
            Some("error") => shared.set_error(msg.message.unwrap_or_default()),
            _ => {}
        }
        return;
    };
    let kind = msg.kind.unwrap_or_default();
    let mut data = msg.data.filter(|d| d.get() != "null");
    let mut became_final = false;
    let mut result_came = false;
    {
        let mut jobs = shared.jobs();
        let Some(state) = jobs.get_mut(&job_id) else {
            return;
        };
        if !state.watched || seq <= state.last_seq {
            return;
        }
        state.last_seq = seq;
        if kind == "status" {
            if let Some(status) = data
                .as_ref()
                .and_then(|d| serde_json::from_str::<StatusData>(d.get()).ok())
            {
                became_final =
                    apply_status(state, &status.status, error_message(status.error.as_ref()));
                if status.has_result && state.result == PushedResult::Unknown {
                    state.result = PushedResult::Expected;
                }
            }
        } else if kind == "result" {
            keep_result(shared, state, data.take());
            result_came = true;
        }
        // Queued under the lock: the queue then holds each job's events in seq order.
        let _ = shared.events_tx.send(Event {
            job_id,
            seq,
            kind,
            data: data.map(|d| Bytes::copy_from_slice(d.get().as_bytes())),
        });
    }
    if became_final {
        shared.finals.send_modify(|n| *n += 1);
    }
    if result_came {
        shared.results.send_modify(|n| *n += 1);
    }
}

/// Keeps a `result` event's data with its job if it fits this client's limits, else
/// marks the result to be fetched.
fn keep_result(shared: &Shared, state: &mut JobState, data: Option<Box<RawValue>>) {
    if let PushedResult::Inline(old) = &state.result {
        shared.held.fetch_sub(old.len(), Ordering::SeqCst);
    }
    state.result = PushedResult::Fetch;
    let Some(data) = data else {
        return;
    };
    let size = data.get().len();
    if size > shared.config.inline_result_bytes {
        return;
    }
    let budget = shared.config.inline_result_budget;
    let fits = shared
        .held
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
            (held + size <= budget).then_some(held + size)
        })
        .is_ok();
    if fits {
        state.result = PushedResult::Inline(Bytes::copy_from_slice(data.get().as_bytes()));
    }
}

fn subscribe_messages(shared: &Shared, ids: Option<&[String]>) -> Vec<String> {
    let jobs = shared.jobs();
    let selected: Vec<(&String, u64)> = match ids {
        Some(ids) => ids
            .iter()
            .filter_map(|id| {
                jobs.get_key_value(id)
                    .filter(|(_, s)| s.watched)
                    .map(|(k, s)| (k, s.last_seq))
            })
            .collect(),
        None => jobs
            .iter()
            .filter(|(_, s)| s.watched)
            .map(|(k, s)| (k, s.last_seq))
            .collect(),
    };
    selected
        .chunks(1000)
        .map(|chunk| {
            let ids: Vec<&String> = chunk.iter().map(|(id, _)| *id).collect();
            let since: HashMap<&String, u64> = chunk.iter().copied().collect();
            serde_json::json!({
                "op": "subscribe",
                "job_ids": ids,
                "since": since,
                "inline_results": shared.config.inline_result_bytes > 0,
            })
            .to_string()
        })
        .collect()
}

async fn read_heartbeat(client: &ServiceClient) -> Duration {
    #[derive(Deserialize)]
    struct Info {
        heartbeat_seconds: Option<f64>,
    }
    let once = client.with_policy(RetryPolicy {
        max_attempts: 2,
        ..RetryPolicy::default()
    });
    let opts = RequestOptions {
        timeout: Duration::from_secs(5),
        ..RequestOptions::default()
    };
    let seconds = once
        .request(Method::GET, "/info", &[], None, opts)
        .await
        .ok()
        .and_then(|r| serde_json::from_slice::<Info>(&r.body).ok())
        .and_then(|i| i.heartbeat_seconds)
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(10.0);
    Duration::from_secs_f64(seconds)
}

fn stream_url(client: &ServiceClient) -> Result<String, ClientError> {
    let url = client.url("stream", &[])?;
    let rest = url
        .as_str()
        .strip_prefix("http")
        .ok_or_else(|| ClientError::Stream(format!("cannot make a WebSocket URL of {url}")))?;
    Ok(format!("ws{rest}"))
}

enum SessionEnd {
    Closed,
    Lost(String),
    /// The service closed with 4401: the token is bad, revoked or expired. Reconnecting
    /// with the same token can only be refused again.
    Unauthorized(String),
}

/// The close code of a stream whose token the service refused (`docs/protocol.md` §10).
const CLOSE_UNAUTHORIZED: u16 = 4401;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the socket; [`ClientError::Tls`] when TLS failed, else [`ClientError::Stream`].
async fn open_socket(shared: &Shared) -> Result<Socket, ClientError> {
    let stream_err = |msg: String| ClientError::Stream(msg);
    let url = stream_url(&shared.client)?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| stream_err(format!("{url}: {e}")))?;
    // The token travels in this header only: never in the URL, which logs keep.
    let auth = HeaderValue::from_str(&format!("Bearer {}", shared.client.token()))
        .map_err(|e| stream_err(format!("bad token: {e}")))?;
    request.headers_mut().insert("Authorization", auth);
    // The same TLS configuration as the HTTP client's (used for `wss://` only).
    let connector = Connector::Rustls(shared.client.tls_config());
    match tokio::time::timeout(
        shared.config.connect_timeout,
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector)),
    )
    .await
    {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(e)) => Err(match tls::tls_failure(&e) {
            Some(why) => ClientError::Tls(tls::describe(&shared.client.authority(), why)),
            None => stream_err(format!("cannot open {url}: {e}")),
        }),
        Err(_) => Err(stream_err(format!("cannot open {url}: timed out"))),
    }
}

async fn socket_loop(
    shared: Arc<Shared>,
    mut cmd_rx: mpsc::UnboundedReceiver<Command>,
    mut shutdown: watch::Receiver<bool>,
) {
    let heartbeat = match shared.config.heartbeat {
        Some(h) => h,
        None => read_heartbeat(&shared.client).await,
    };
    let mut failures = 0u32;
    let mut delay = shared.config.reconnect_base;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let opened = tokio::select! {
            opened = open_socket(&shared) => opened,
            _ = shutdown.changed() => return,
        };
        match opened {
            Ok(socket) => {
                failures = 0;
                delay = shared.config.reconnect_base;
                shared.polling.store(false, Ordering::SeqCst);
                shared.connected.store(true, Ordering::SeqCst);
                let end = session(&shared, socket, &mut cmd_rx, &mut shutdown, heartbeat).await;
                shared.connected.store(false, Ordering::SeqCst);
                match end {
                    SessionEnd::Closed => return,
                    SessionEnd::Lost(why) => shared.set_error(why),
                    SessionEnd::Unauthorized(why) => {
                        // Waiters fail with the service's refusal instead of waiting on a
                        // stream that can never come back; polling would be refused too.
                        shared.set_error(why.clone());
                        *shared.fatal.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(ClientError::Api {
                                status: 401,
                                code: "unauthorized".to_owned(),
                                message: format!("event stream: {why}"),
                                body: String::new(),
                            });
                        shared.finals.send_modify(|n| *n += 1);
                        return;
                    }
                }
            }
            Err(ClientError::Tls(why)) => {
                // Polling would cross the same refused TLS: stop, and fail the waiters.
                shared.set_error(why.clone());
                *shared.fatal.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(ClientError::Tls(why));
                shared.finals.send_modify(|n| *n += 1);
                return;
            }
            Err(other) => {
                shared.set_error(match other {
                    ClientError::Stream(why) => why,
                    other => other.to_string(),
                });
                failures += 1;
                if failures >= shared.config.fallback_after {
                    shared.polling.store(true, Ordering::SeqCst);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        delay = (delay * 2).min(shared.config.reconnect_cap);
    }
}

async fn session(
    shared: &Shared,
    socket: Socket,
    cmd_rx: &mut mpsc::UnboundedReceiver<Command>,
    shutdown: &mut watch::Receiver<bool>,
    heartbeat: Duration,
) -> SessionEnd {
    let (mut sink, mut stream) = socket.split();
    // Commands queued while disconnected are already reflected in the watch state, which is
    // subscribed whole below.
    while cmd_rx.try_recv().is_ok() {}
    for text in subscribe_messages(shared, None) {
        if let Err(e) = sink.send(Message::text(text)).await {
            return SessionEnd::Lost(format!("send: {e}"));
        }
    }
    let silence = heartbeat.saturating_mul(3);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                let _ = sink.send(Message::Close(None)).await;
                return SessionEnd::Closed;
            }
            cmd = cmd_rx.recv() => {
                let texts = match cmd {
                    None => return SessionEnd::Closed,
                    Some(Command::Subscribe(ids)) => subscribe_messages(shared, Some(&ids)),
                    Some(Command::Unsubscribe(ids)) => vec![serde_json::json!({
                        "op": "unsubscribe", "job_ids": ids,
                    })
                    .to_string()],
                };
                for text in texts {
                    if let Err(e) = sink.send(Message::text(text)).await {
                        return SessionEnd::Lost(format!("send: {e}"));
                    }
                }
            }
            msg = tokio::time::timeout(silence, stream.next()) => match msg {
                Err(_) => return SessionEnd::Lost(format!("nothing received for {silence:?}")),
                Ok(None) => return SessionEnd::Lost("socket closed".to_owned()),
                Ok(Some(Err(e))) => return SessionEnd::Lost(format!("socket error: {e}")),
                Ok(Some(Ok(Message::Text(text)))) => handle_message(shared, text.as_bytes()),
                Ok(Some(Ok(Message::Binary(data)))) => handle_message(shared, &data),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return match frame {
                        Some(f) if u16::from(f.code) == CLOSE_UNAUTHORIZED => {
                            SessionEnd::Unauthorized(f.reason.to_string())
                        }
                        Some(f) => SessionEnd::Lost(format!(
                            "closed by the service ({}: {})",
                            u16::from(f.code),
                            f.reason
                        )),
                        None => SessionEnd::Lost("closed by the service".to_owned()),
                    };
                }
                Ok(Some(Ok(_))) => {}
            },
        }
    }
}

#[derive(Deserialize)]
struct BulkStatus {
    #[serde(default)]
    statuses: HashMap<String, PolledStatus>,
}

#[derive(Deserialize)]
struct PolledStatus {
    status: String,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

async fn poll_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let client = shared.client.with_policy(RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    });
    loop {
        tokio::select! {
            () = tokio::time::sleep(shared.config.poll_interval) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow()
            || !shared.polling.load(Ordering::SeqCst)
            || shared.connected.load(Ordering::SeqCst)
        {
            continue;
        }
        let ids: Vec<String> = shared
            .jobs()
            .iter()
            .filter(|(_, s)| s.watched && !s.is_final)
            .map(|(id, _)| id.clone())
            .collect();
        for chunk in ids.chunks(1000) {
            let body = serde_json::json!({ "ids": chunk }).to_string();
            let opts = RequestOptions {
                timeout: Duration::from_secs(5),
                ..RequestOptions::default()
            };
            let Ok(response) = client
                .request(Method::POST, "/jobs:status", &[], Some(body.into()), opts)
                .await
            else {
                break;
            };
            let Ok(bulk) = serde_json::from_slice::<BulkStatus>(&response.body) else {
                continue;
            };
            let mut became_final = false;
            {
                let mut jobs = shared.jobs();
                for (id, polled) in bulk.statuses {
                    if let Some(state) = jobs.get_mut(&id) {
                        became_final |= apply_status(
                            state,
                            &polled.status,
                            error_message(polled.error.as_ref()),
                        );
                    }
                }
            }
            if became_final {
                shared.finals.send_modify(|n| *n += 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn config() -> StreamConfig {
        StreamConfig {
            heartbeat: Some(Duration::from_secs(5)),
            reconnect_base: Duration::from_millis(20),
            reconnect_cap: Duration::from_millis(100),
            fallback_after: 3,
            poll_interval: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(2),
            inline_result_bytes: 0,
            inline_result_budget: INLINE_RESULT_BUDGET,
        }
    }

    fn event(job: &str, seq: u64, status: &str) -> String {
        serde_json::json!({"job_id": job, "seq": seq, "type": "status",
                           "data": {"status": status, "time": "t"}})
        .to_string()
    }

    async fn next_text(
        ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    ) -> serde_json::Value {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str()).expect("json");
                }
                Some(Ok(_)) => {}
                other => panic!("socket ended: {other:?}"),
            }
        }
    }

    fn client_for(addr: std::net::SocketAddr) -> ServiceClient {
        ServiceClient::new(&format!("http://{addr}"), "tok", RetryPolicy::default())
            .expect("client")
    }

    #[tokio::test]
    async fn resumes_after_disconnect_without_loss_or_duplicates() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            // First connection: two events, then the connection drops.
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("ws");
            let sub = next_text(&mut ws).await;
            assert_eq!(sub["op"], "subscribe");
            assert_eq!(sub["job_ids"], serde_json::json!(["j1"]));
            assert_eq!(sub["since"], serde_json::json!({"j1": 0}));
            assert_eq!(sub["inline_results"], false);
            for (seq, status) in [(1, "QUEUED"), (2, "RUNNING")] {
                ws.send(Message::text(event("j1", seq, status)))
                    .await
                    .expect("send");
            }
            ws.send(Message::text(event("other", 1, "DONE")))
                .await
                .expect("send");
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(ws);
            // Second connection: resumes from seq 2; a replayed duplicate is dropped.
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("ws");
            let sub = next_text(&mut ws).await;
            assert_eq!(sub["since"], serde_json::json!({"j1": 2}));
            for (seq, status) in [(2, "RUNNING"), (3, "DONE")] {
                ws.send(Message::text(event("j1", seq, status)))
                    .await
                    .expect("send");
            }
            ws.send(Message::text(
                r#"{"job_id": "j1", "seq": 4, "type": "result", "data": null}"#,
            ))
            .await
            .expect("send");
            // Keep the socket open until the client closes it.
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
            }
        });
        let stream = EventStream::new(client_for(addr), config(), Handle::current());
        let status = stream
            .wait_final("j1", Some(Duration::from_secs(10)))
            .await
            .expect("wait");
        assert_eq!(status.as_deref(), Some("DONE"));
        let mut events = Vec::new();
        while events.len() < 4 {
            let got = stream.next_events(Duration::from_secs(5), 100).await;
            assert!(!got.is_empty(), "events so far: {events:?}");
            events.extend(got);
        }
        let seqs: Vec<(u64, &str)> = events.iter().map(|e| (e.seq, e.kind.as_str())).collect();
        assert_eq!(
            seqs,
            [(1, "status"), (2, "status"), (3, "status"), (4, "result")]
        );
        assert!(events.iter().all(|e| e.job_id == "j1"));
        assert_eq!(events[3].data, None);
        assert_eq!(
            events[2].data.as_deref(),
            Some(&br#"{"status":"DONE","time":"t"}"#[..])
        );
        let state = stream.state("j1").expect("state");
        assert_eq!(state.last_seq, 4);
        assert!(state.is_final);
        assert!(stream.is_connected());
        stream.close();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server ends")
            .expect("server ok");
    }

    #[tokio::test]
    async fn small_results_ride_the_stream_within_limits() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("ws");
            let sub = next_text(&mut ws).await;
            assert_eq!(sub["inline_results"], true);
            let done = |job: &str| {
                serde_json::json!({"job_id": job, "seq": 1, "type": "status",
                                   "data": {"status": "DONE", "time": "t", "has_result": true}})
                .to_string()
            };
            let result = |job: &str, data: &str| {
                format!(r#"{{"job_id": "{job}", "seq": 2, "type": "result", "data": {data}}}"#)
            };
            // small: kept; big: over the client's limit; none: the service said too large;
            // late: its result comes after the client started waiting; err: no result.
            for (job, data) in [
                ("small", r#"{"a": 1}"#),
                (
                    "big",
                    r#"{"a": "0123456789012345678901234567890123456789"}"#,
                ),
                ("none", "null"),
            ] {
                ws.send(Message::text(done(job))).await.expect("send");
                ws.send(Message::text(result(job, data)))
                    .await
                    .expect("send");
            }
            ws.send(Message::text(done("late"))).await.expect("send");
            ws.send(Message::text(event("err", 1, "ERROR")))
                .await
                .expect("send");
            tokio::time::sleep(Duration::from_millis(300)).await;
            ws.send(Message::text(result("late", r#"{"b": 2}"#)))
                .await
                .expect("send");
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
            }
        });
        let cfg = StreamConfig {
            inline_result_bytes: 32,
            inline_result_budget: 64,
            ..config()
        };
        let stream = EventStream::new(client_for(addr), cfg, Handle::current());
        let ids: Vec<String> = ["small", "big", "none", "late", "err"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        stream.watch(&ids).expect("watch");
        for id in ["small", "big", "none", "err"] {
            let status = stream.wait_final(id, Some(Duration::from_secs(10))).await;
            assert!(status.expect("wait").is_some(), "{id} final");
        }
        let wait = Duration::from_secs(5);
        let small = stream.take_result("small", wait).await;
        assert_eq!(small.as_deref(), Some(&br#"{"a": 1}"#[..]));
        assert_eq!(
            stream.take_result("small", wait).await,
            None,
            "handed over once"
        );
        assert_eq!(stream.take_result("big", wait).await, None);
        assert_eq!(stream.take_result("none", wait).await, None);
        let start = Instant::now();
        assert_eq!(stream.take_result("err", wait).await, None);
        assert!(start.elapsed() < wait, "no result announced: no wait");
        let late = stream.take_result("late", wait).await;
        assert_eq!(late.as_deref(), Some(&br#"{"b": 2}"#[..]));
        assert_eq!(stream.shared.held.load(Ordering::SeqCst), 0);
        // The queue of events gets result events without their data.
        let mut events = Vec::new();
        while events.len() < 9 {
            let got = stream.next_events(Duration::from_secs(5), 100).await;
            assert!(!got.is_empty(), "events so far: {events:?}");
            events.extend(got);
        }
        assert!(events
            .iter()
            .filter(|e| e.kind == "result")
            .all(|e| e.data.is_none()));
        stream.close();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server ends")
            .expect("server ok");
    }

    #[tokio::test]
    async fn silent_socket_is_reconnected() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                    // Never answers and never closes: only the heartbeat timeout notices.
                    held.push(ws);
                }
            }
        });
        let cfg = StreamConfig {
            heartbeat: Some(Duration::from_millis(50)),
            ..config()
        };
        let stream = EventStream::new(client_for(addr), cfg, Handle::current());
        stream.watch(&["j1".to_owned()]).expect("watch");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(accepted.load(Ordering::SeqCst) >= 2, "no reconnect");
        assert!(stream
            .last_error()
            .is_some_and(|e| e.contains("nothing received")));
        stream.close();
    }

    #[tokio::test]
    async fn refused_token_fails_waiters_and_stops_reconnecting() {
        use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                    let frame = CloseFrame {
                        code: CloseCode::from(4401),
                        reason: "token revoked".into(),
                    };
                    let _ = ws.close(Some(frame)).await;
                }
            }
        });
        let stream = EventStream::new(client_for(addr), config(), Handle::current());
        let waited = tokio::time::timeout(
            Duration::from_secs(5),
            stream.wait_final("j1", Some(Duration::from_secs(30))),
        )
        .await
        .expect("the waiter is failed, not left waiting");
        match waited {
            Err(ClientError::Api {
                status,
                code,
                message,
                ..
            }) => {
                assert_eq!((status, code.as_str()), (401, "unauthorized"));
                assert!(message.contains("token revoked"), "{message}");
            }
            other => panic!("expected the refusal, got {other:?}"),
        }
        // Reconnecting (every 20-100 ms in this config) would only be refused again.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "reconnected with a refused token"
        );
        stream.close();
    }

    #[tokio::test]
    async fn falls_back_to_polling_when_no_socket_opens() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let polls = Arc::new(AtomicUsize::new(0));
        let count = polls.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = vec![0u8; 8192];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let answer = if head.starts_with("POST /jobs:status") {
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let status = if n < 2 { "RUNNING" } else { "DONE" };
                    let body = format!(
                        r#"{{"statuses": {{"j1": {{"status": "{status}", "error": null, "last_seq": 3, "queue_info": null}}}}, "missing": []}}"#
                    );
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    // No WebSocket here.
                    "HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
                        .to_owned()
                };
                sock.write_all(answer.as_bytes()).await.ok();
                sock.shutdown().await.ok();
            }
        });
        let stream = EventStream::new(client_for(addr), config(), Handle::current());
        let status = stream
            .wait_final("j1", Some(Duration::from_secs(10)))
            .await
            .expect("wait");
        assert_eq!(status.as_deref(), Some("DONE"));
        assert!(stream.is_polling());
        assert!(!stream.is_connected());
        assert!(polls.load(Ordering::SeqCst) >= 3);
        // The last status seen survives; the events queue holds only stream events.
        assert_eq!(stream.last_status("j1").as_deref(), Some("DONE"));
        assert!(stream
            .next_events(Duration::from_millis(10), 10)
            .await
            .is_empty());
        stream.close();
    }

    #[tokio::test]
    async fn wait_times_out_and_any_returns_final_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("ws");
            let _sub = next_text(&mut ws).await;
            ws.send(Message::text(event("b", 1, "CANCELLED")))
                .await
                .expect("send");
            let err = serde_json::json!({"job_id": "c", "seq": 1, "type": "status",
                "data": {"status": "ERROR", "time": "t",
                         "error": {"code": "execution_failed", "message": "boom"}}});
            ws.send(Message::text(err.to_string())).await.expect("send");
            while let Some(Ok(_)) = ws.next().await {}
        });
        let stream = EventStream::new(client_for(addr), config(), Handle::current());
        let ids = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        stream.watch(&ids).expect("watch");
        let start = Instant::now();
        let none = stream
            .wait_final("a", Some(Duration::from_millis(200)))
            .await
            .expect("wait");
        assert_eq!(none, None);
        assert!(start.elapsed() >= Duration::from_millis(200));
        let mut done = stream
            .wait_any_final(&ids, Some(Duration::from_secs(5)))
            .await
            .expect("wait");
        // "c" may still be on its way; wait for it too.
        if done.len() < 2 {
            stream
                .wait_final("c", Some(Duration::from_secs(5)))
                .await
                .expect("wait");
            done = stream
                .wait_any_final(&ids, Some(Duration::from_secs(5)))
                .await
                .expect("wait");
        }
        assert_eq!(done, ["b", "c"]);
        let c = stream.state("c").expect("state");
        assert_eq!(c.status.as_deref(), Some("ERROR"));
        assert_eq!(c.error.as_deref(), Some("boom"));
        stream.close();
        let closed = stream.wait_final("a", None).await;
        assert!(closed.is_err());
    }
}
