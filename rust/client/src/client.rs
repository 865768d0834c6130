//! The HTTP client of the job service: one pooled keep-alive `reqwest::Client`, retries
//! with exponential backoff and full jitter on connect errors, timeouts, 5xx and 429
//! (honouring `Retry-After`, up to [`RetryPolicy::max_retry_after`]; the service's
//! `rate_limited`, `upload_limit` and `service_busy` answers among them), and an
//! `Idempotency-Key` on every POST that stays the same across the retries of one call,
//! so a retried submission never creates two jobs.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use reqwest::header::{HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::tls::{self, Verify};
use crate::ClientError;

pub use reqwest::Method;

/// The HTTP method named `name` (case-insensitive).
pub fn parse_method(name: &str) -> Result<Method, ClientError> {
    Method::from_bytes(name.to_ascii_uppercase().as_bytes())
        .map_err(|_| ClientError::Runtime(format!("bad HTTP method {name:?}")))
}

/// How failed requests are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled for each later one.
    pub base: Duration,
    /// Largest backoff.
    pub cap: Duration,
    /// Longest wait a `Retry-After` gets (a service asking for more is retried after
    /// this, and counts an attempt like any other).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: a uniform delay in `[0, min(cap, base * 2^(attempt-1))]` after failed
    /// attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let ceiling = exp.min(self.cap);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// Per-call options of [`ServiceClient::request`].
#[derive(Debug, Clone)]
pub struct RequestOptions {
    /// The `Idempotency-Key` of a POST; a fresh uuid4 when `None`.
    pub idempotency_key: Option<String>,
    /// Send the body gzip-compressed (`Content-Encoding: gzip`).
    pub gzip_body: bool,
    /// Timeout of one attempt.
    pub timeout: Duration,
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            idempotency_key: None,
            gzip_body: false,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A successful (2xx) answer; `body` is already decompressed.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// A client of one job service. Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct ServiceClient {
    base_url: Arc<Url>,
    token: Arc<str>,
    http: reqwest::Client,
    policy: RetryPolicy,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct DetailBody {
    detail: serde_json::Value,
}

/// The [`ClientError::Api`] of a non-2xx answer.
pub fn api_error(status: u16, body: &[u8]) -> ClientError {
    let text = String::from_utf8_lossy(body).into_owned();
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        return ClientError::Api {
            status,
            code: parsed.error.code,
            message: parsed.error.message,
            body: text,
        };
    }
    // Errors of the web framework itself: {"detail": "..."}.
    let message = match serde_json::from_slice::<DetailBody>(body) {
        Ok(DetailBody {
            detail: serde_json::Value::String(s),
        }) => s,
        Ok(DetailBody { detail }) => detail.to_string(),
        Err(_) if text.trim().is_empty() => format!("HTTP {status}"),
        Err(_) => text.clone(),
    };
    ClientError::Api {
        status,
        code: format!("http_{status}"),
        message,
        body: text,
    }
}

/// Gzip at level 1: the payloads are large and repetitive, so speed matters more than ratio.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), Compression::fast());
    enc.write_all(data)
        .and_then(|()| enc.finish())
        .map_err(|e| ClientError::Runtime(format!("gzip: {e}")))
}

/// Splices raw `qobj` JSON bytes into a JSON object `envelope` as its `"qobj"` member,
/// without parsing the Qobj.
pub fn splice_qobj(envelope: &[u8], qobj: &[u8]) -> Result<Vec<u8>, ClientError> {
    let env = std::str::from_utf8(envelope)
        .map_err(|e| ClientError::Json(format!("envelope: {e}")))?
        .trim();
    let inner = env
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| ClientError::Json("envelope must be a JSON object".to_owned()))?;
    let mut out = Vec::with_capacity(envelope.len() + qobj.len() + 16);
    out.extend_from_slice(b"{\"qobj\":");
    out.extend_from_slice(qobj);
    if !inner.trim().is_empty() {
        out.push(b',');
        out.extend_from_slice(inner.as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

enum Failure {
    /// Worth another attempt, after `Retry-After` if the service gave one.
    Retry(ClientError, Option<Duration>),
    Fatal(ClientError),
}

impl ServiceClient {
    /// A client of the service at `base_url` (e.g. `http://127.0.0.1:8000`), trusting the
    /// platform's CA certificates for `https://`.
    pub fn new(base_url: &str, token: &str, policy: RetryPolicy) -> Result<Self, ClientError> {
        Self::with_tls(base_url, token, policy, &Verify::Platform)
    }

    /// A client of the service at `base_url`; an `https://` service's certificate is
    /// checked as `verify` says (the event stream's `wss://` too).
    pub fn with_tls(
        base_url: &str,
        token: &str,
        policy: RetryPolicy,
        verify: &Verify,
    ) -> Result<Self, ClientError> {
        let mut url = Url::parse(base_url)
            .map_err(|e| ClientError::Runtime(format!("bad service URL {base_url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::Runtime(format!(
                "bad service URL {base_url:?}: scheme must be http or https"
            )));
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        let tls = if url.scheme() == "https" {
            tls::client_config(verify)?
        } else {
            tls::untrusting_config()?
        };
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .tls_backend_preconfigured(tls.clone())
            .build()
            .map_err(|e| ClientError::Runtime(format!("HTTP client: {e}")))?;
        Ok(ServiceClient {
            base_url: Arc::new(url),
            token: token.into(),
            http,
            policy: RetryPolicy {
                max_attempts: policy.max_attempts.max(1),
                ..policy
            },
            tls: Arc::new(tls),
        })
    }

    /// The service URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.base_url.as_str().trim_end_matches('/')
    }

    /// The bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The TLS configuration of `https://` (and of the stream's `wss://`).
    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// The `host:port` of the service, as TLS errors name it.
    pub fn authority(&self) -> String {
        let host = self.base_url.host_str().unwrap_or_default();
        match self.base_url.port_or_known_default() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// The retry policy.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// A client of the same service sharing this one's connection pool, with another
    /// retry policy.
    pub fn with_policy(&self, policy: RetryPolicy) -> ServiceClient {
        ServiceClient {
            policy: RetryPolicy {
                max_attempts: policy.max_attempts.max(1),
                ..policy
            },
            ..self.clone()
        }
    }

    /// The absolute URL of `path` (relative to the base URL) with `query` appended.
    pub fn url(&self, path: &str, query: &[(String, String)]) -> Result<Url, ClientError> {
        // Not `Url::join`: it would read `jobs:status` as a URL with scheme `jobs`.
        let joined = format!("{}{}", self.base_url, path.trim_start_matches('/'));
        let mut url = Url::parse(&joined)
            .map_err(|e| ClientError::Runtime(format!("bad path {path:?}: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// Sends one request, retrying as the policy says; a non-2xx answer that is not retried
    /// (or the last one) is [`ClientError::Api`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<Bytes>,
        opts: RequestOptions,
    ) -> Result<Response, ClientError> {
        let url = self.url(path, query)?;
        let key = (method == Method::POST).then(|| {
            opts.idempotency_key
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
        });
        let body = match body {
            Some(b) if opts.gzip_body => Some(Bytes::from(gzip(&b)?)),
            other => other,
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let failure = match self
                .attempt(&method, &url, key.as_deref(), body.clone(), &opts)
                .await
            {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            match failure {
                Failure::Fatal(err) => return Err(err),
                Failure::Retry(err, _) if attempt >= self.policy.max_attempts => {
                    let gave_up = format!("(gave up after {attempt} attempts)");
                    return Err(match err {
                        ClientError::Connection(msg) => {
                            ClientError::Connection(format!("{msg} {gave_up}"))
                        }
                        ClientError::Timeout(msg) => {
                            ClientError::Timeout(format!("{msg} {gave_up}"))
                        }
                        // The service's own answer (429 rate_limited, 503 service_busy, 5xx)
                        // keeps its status and code; the message says it was retried.
                        ClientError::Api {
                            status,
                            code,
                            message,
                            body,
                        } if attempt > 1 => ClientError::Api {
                            status,
                            code,
                            message: format!("{message} {gave_up}"),
                            body,
                        },
                        other => other,
                    });
                }
                Failure::Retry(_, retry_after) => {
                    let delay = retry_after
                        .map(|wait| wait.min(self.policy.max_retry_after))
                        .unwrap_or_else(|| self.policy.backoff(attempt));
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        key: Option<&str>,
        body: Option<Bytes>,
        opts: &RequestOptions,
    ) -> Result<Response, Failure> {
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(&*self.token)
            .timeout(opts.timeout)
            .header(ACCEPT_ENCODING, HeaderValue::from_static("deflate, gzip"));
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            req = req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if opts.gzip_body {
                req = req.header(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            req = req.body(body);
        }
        let transport = |e: reqwest::Error| -> Failure {
            if e.is_builder() || e.is_decode() || e.is_redirect() {
                Failure::Fatal(ClientError::Runtime(format!("{method} {url}: {e}")))
            } else if let Some(why) = tls::tls_failure(&e) {
                // A refused certificate does not get better by retrying.
                Failure::Fatal(ClientError::Tls(tls::describe(&self.authority(), why)))
            } else if e.is_timeout() {
                Failure::Retry(
                    ClientError::Timeout(format!("{method} {url} after {:?}", opts.timeout)),
                    None,
                )
            } else {
                Failure::Retry(
                    ClientError::Connection(format!(
                        "cannot reach the service at {url} ({method}): {}",
                        error_chain(&e)
                    )),
                    None,
                )
            }
        };
        let response = req.send().await.map_err(transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let bytes = response.bytes().await.map_err(transport)?;
        if status.is_success() {
            return Ok(Response {
                status: status.as_u16(),
                body: bytes,
            });
        }
        let err = api_error(status.as_u16(), &bytes);
        let retriable = status.is_server_error()
            || (status == StatusCode::TOO_MANY_REQUESTS
                && !matches!(&err, ClientError::Api { code, .. } if code == "active_job_limit"));
        if retriable {
            Err(Failure::Retry(err, retry_after))
        } else {
            Err(Failure::Fatal(err))
        }
    }
}

/// The error and its sources, so "connection refused" is not hidden behind "error sending
/// request".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// One request as the test server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        head: String,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<String> {
            self.head.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        }
    }

    /// A tiny HTTP/1.1 server answering the i-th request with `answers[i]` (the last one
    /// repeated), one request per connection.
    async fn serve(answers: Vec<String>) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let read = sock.read(&mut chunk).await.expect("read");
                    buf.extend_from_slice(&chunk[..read]);
                    if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..pos]).into_owned();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        while buf.len() < pos + 4 + len {
                            let read = sock.read(&mut chunk).await.expect("read");
                            buf.extend_from_slice(&chunk[..read]);
                        }
                        break (head, buf[pos + 4..pos + 4 + len].to_vec());
                    }
                };
                log.lock().expect("lock").push(Seen { head, body });
                let answer = answers[n.min(answers.len() - 1)].clone();
                n += 1;
                sock.write_all(answer.as_bytes()).await.expect("write");
                sock.shutdown().await.ok();
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn answer(status: &str, extra: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(5),
            cap: Duration::from_millis(20),
            max_retry_after: Duration::from_secs(5),
        }
    }

    const RATE_LIMITED: &str = r#"{"error": {"code": "rate_limited", "message": "slow down"}}"#;

    #[tokio::test]
    async fn rate_limited_post_is_retried_with_its_key_after_retry_after() {
        let (url, seen) = serve(vec![
            answer("429 Too Many Requests", "retry-after: 1\r\n", RATE_LIMITED),
            answer(
                "503 Service Unavailable",
                "retry-after: 1\r\n",
                r#"{"error": {"code": "service_busy", "message": "busy"}}"#,
            ),
            answer("201 Created", "", r#"{"id": "j1"}"#),
        ])
        .await;
        let client = ServiceClient::new(&url, "tok", fast()).expect("client");
        let start = std::time::Instant::now();
        let response = client
            .request(
                Method::POST,
                "/jobs",
                &[],
                Some(Bytes::from_static(b"{}")),
                RequestOptions::default(),
            )
            .await
            .expect("third attempt succeeds");
        assert_eq!(response.status, 201);
        assert!(
            start.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            start.elapsed()
        );
        let seen = seen.lock().expect("lock");
        let keys: Vec<_> = seen.iter().map(|s| s.header("idempotency-key")).collect();
        assert_eq!(keys.len(), 3);
        assert!(
            keys[0].is_some() && keys.iter().all(|k| *k == keys[0]),
            "{keys:?}"
        );
    }

    #[tokio::test]
    async fn retry_after_is_capped_and_exhaustion_says_so() {
        let (url, seen) = serve(vec![answer(
            "429 Too Many Requests",
            "retry-after: 86400\r\n",
            RATE_LIMITED,
        )])
        .await;
        let policy = RetryPolicy {
            max_attempts: 3,
            max_retry_after: Duration::from_millis(50),
            ..fast()
        };
        let client = ServiceClient::new(&url, "tok", policy).expect("client");
        let start = std::time::Instant::now();
        let err = client
            .request(Method::GET, "/x", &[], None, RequestOptions::default())
            .await
            .expect_err("always 429");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        match err {
            ClientError::Api {
                status: 429,
                ref code,
                ref message,
                ..
            } => {
                assert_eq!(code, "rate_limited");
                assert_eq!(message, "slow down (gave up after 3 attempts)");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(seen.lock().expect("lock").len(), 3);
    }

    #[tokio::test]
    async fn retries_5xx_with_one_idempotency_key() {
        let (url, seen) = serve(vec![
            answer("503 Service Unavailable", "", "{}"),
            answer("503 Service Unavailable", "", "oops"),
            answer("201 Created", "", r#"{"id": "j1"}"#),
        ])
        .await;
        let client = ServiceClient::new(&url, "tok", fast()).expect("client");
        let body = Bytes::from_static(br#"{"backend": "aer_simulator"}"#);
        let opts = RequestOptions {
            gzip_body: true,
            ..RequestOptions::default()
        };
        let response = client
            .request(Method::POST, "/jobs", &[], Some(body), opts)
            .await
            .expect("third attempt succeeds");
        assert_eq!(response.status, 201);
        assert_eq!(&response.body[..], br#"{"id": "j1"}"#);
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 3);
        let keys: Vec<_> = seen.iter().map(|s| s.header("idempotency-key")).collect();
        assert!(
            keys[0].as_deref().is_some_and(|k| k.len() == 36),
            "{keys:?}"
        );
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        for s in &seen {
            assert!(s.head.starts_with("POST /jobs HTTP/1.1"), "{}", s.head);
            assert_eq!(s.header("authorization").as_deref(), Some("Bearer tok"));
            assert_eq!(s.header("content-encoding").as_deref(), Some("gzip"));
            assert_eq!(
                s.header("accept-encoding").as_deref(),
                Some("deflate, gzip")
            );
            let mut plain = String::new();
            flate2::read::GzDecoder::new(&s.body[..])
                .read_to_string(&mut plain)
                .expect("gzip body");
            assert_eq!(plain, r#"{"backend": "aer_simulator"}"#);
        }
    }

    #[tokio::test]
    async fn given_idempotency_key_is_sent() {
        let (url, seen) = serve(vec![answer("200 OK", "", "{}")]).await;
        let client = ServiceClient::new(&url, "tok", fast()).expect("client");
        let opts = RequestOptions {
            idempotency_key: Some("k1".into()),
            ..RequestOptions::default()
        };
        client
            .request(Method::POST, "jobs", &[], None, opts)
            .await
            .expect("ok");
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen[0].header("idempotency-key").as_deref(), Some("k1"));
    }

    #[tokio::test]
    async fn get_has_no_key_and_query_is_encoded() {
        let (url, seen) = serve(vec![answer("200 OK", "", "[]")]).await;
        let client = ServiceClient::new(&url, "tok", fast()).expect("client");
        let query = vec![
            ("tags".to_owned(), "a b".to_owned()),
            ("tags".to_owned(), "c&d".to_owned()),
        ];
        client
            .request(
                Method::GET,
                "/jobs",
                &query,
                None,
                RequestOptions::default(),
            )
            .await
            .expect("ok");
        let seen = seen.lock().expect("lock").clone();
        assert!(seen[0]
            .head
            .starts_with("GET /jobs?tags=a+b&tags=c%26d HTTP/1.1"));
        assert!(seen[0].header("idempotency-key").is_none());
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        let (url, seen) = serve(vec![
            answer(
                "429 Too Many Requests",
                "retry-after: 1\r\n",
                r#"{"error": {"code": "rate_limited", "message": "slow down"}}"#,
            ),
            answer("200 OK", "", "{}"),
        ])
        .await;
        let client = ServiceClient::new(&url, "tok", fast()).expect("client");
        let start = std::time::Instant::now();
        client
            .request(Method::GET, "/x", &[], None, RequestOptions::default())
            .await
            .expect("second attempt succeeds");
        // The policy alone would wait at most 20 ms.
        assert!(
            start.elapsed() >= Duration::from_millis(950),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(seen.lock().expect("lock").len(), 2);
    }

    #[tokio::test]
    async fn active_job_limit_is_not_retried() {
        let body = r#"{"error": {"code": "active_job_limit", "message": "too many active jobs", "active_jobs": 5, "limit": 5}}"#;
        let (url, seen) = serve(vec![answer("429 Too Many Requests", "", body)]).await;
        let client = ServiceClient::new(&url, "tok", fast()).expect("client");
        let err = client
            .request(Method::POST, "/jobs", &[], None, RequestOptions::default())
            .await
            .expect_err("429 active_job_limit");
        assert_eq!(
            err,
            ClientError::Api {
                status: 429,
                code: "active_job_limit".into(),
                message: "too many active jobs".into(),
                body: body.into(),
            }
        );
        assert_eq!(seen.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn client_errors_are_not_retried_and_parsed() {
        let (url, seen) = serve(vec![answer(
            "404 Not Found",
            "",
            r#"{"detail": "Not Found"}"#,
        )])
        .await;
        let client = ServiceClient::new(&url, "tok", fast()).expect("client");
        let err = client
            .request(Method::GET, "/nope", &[], None, RequestOptions::default())
            .await
            .expect_err("404");
        assert!(
            matches!(&err, ClientError::Api { status: 404, code, message, .. } if code == "http_404" && message == "Not Found"),
            "{err:?}"
        );
        assert_eq!(seen.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn exhausted_5xx_returns_the_last_api_error() {
        let (url, seen) = serve(vec![answer(
            "500 Internal Server Error",
            "",
            r#"{"error": {"code": "boom", "message": "it broke"}}"#,
        )])
        .await;
        let policy = RetryPolicy {
            max_attempts: 3,
            ..fast()
        };
        let client = ServiceClient::new(&url, "tok", policy).expect("client");
        let err = client
            .request(Method::GET, "/x", &[], None, RequestOptions::default())
            .await
            .expect_err("500");
        assert!(
            matches!(err, ClientError::Api { status: 500, .. }),
            "{err:?}"
        );
        assert_eq!(seen.lock().expect("lock").len(), 3);
    }

    #[tokio::test]
    async fn connection_refused_names_the_url() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let policy = RetryPolicy {
            max_attempts: 2,
            ..fast()
        };
        let client = ServiceClient::new(&format!("http://{addr}"), "tok", policy).expect("client");
        let err = client
            .request(Method::GET, "/info", &[], None, RequestOptions::default())
            .await
            .expect_err("refused");
        match err {
            ClientError::Connection(msg) => {
                assert!(msg.contains(&format!("http://{addr}/info")), "{msg}");
                assert!(msg.contains("2 attempts"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn deflate_responses_are_decoded() {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(br#"{"results": []}"#).expect("write");
        let zlib = enc.finish().expect("finish");
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-encoding: deflate\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            zlib.len()
        );
        // A binary body, so not through `serve` (which answers with text).
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                sock.write_all(head.as_bytes()).await.ok();
                sock.write_all(&zlib).await.ok();
                sock.shutdown().await.ok();
            }
        });
        let client = ServiceClient::new(&format!("http://{addr}"), "tok", fast()).expect("client");
        let response = client
            .request(Method::GET, "/r", &[], None, RequestOptions::default())
            .await
            .expect("ok");
        assert_eq!(&response.body[..], br#"{"results": []}"#);
    }

    #[test]
    fn paths_with_colons_stay_paths() {
        let client = ServiceClient::new("http://h:1/api", "t", fast()).expect("client");
        let url = client.url("/jobs:status", &[]).expect("url");
        assert_eq!(url.as_str(), "http://h:1/api/jobs:status");
        assert_eq!(client.base_url(), "http://h:1/api");
    }

    #[test]
    fn splices_qobj_into_envelope() {
        let out = splice_qobj(
            br#" {"backend": "b", "tags": ["x"]} "#,
            br#"{"experiments": []}"#,
        )
        .expect("splice");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"backend": "b", "tags": ["x"], "qobj": {"experiments": []}})
        );
        let out = splice_qobj(b"{}", b"1").expect("splice");
        assert_eq!(out, b"{\"qobj\":1}");
        assert!(splice_qobj(b"[1]", b"1").is_err());
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let policy = RetryPolicy::default();
        for attempt in 1..40 {
            let d = policy.backoff(attempt);
            assert!(d <= Duration::from_secs(10));
        }
        assert!(policy.backoff(1) <= Duration::from_millis(200));
    }
}
