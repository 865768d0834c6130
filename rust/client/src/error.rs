use thiserror::Error;

/// Every error of the service client ([`crate::client`], [`crate::stream`],
/// [`crate::submit`]).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The service answered with a non-2xx status. `code` and `message` come from its
    /// `{"error": {"code", "message"}}` body; for other bodies `code` is `http_<status>`
    /// and `message` the raw body.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        body: String,
    },
    /// The service could not be reached, after every retry; the message names the URL.
    #[error("{0}")]
    Connection(String),
    /// TLS failed: the service's certificate was refused, the handshake failed, or the
    /// trusted certificates could not be loaded; the message names the host (or file) and
    /// the reason. Never retried.
    #[error("{0}")]
    Tls(String),
    /// The request timed out on every attempt.
    #[error("request timed out: {0}")]
    Timeout(String),
    /// The event stream failed.
    #[error("event stream: {0}")]
    Stream(String),
    /// A body that should be JSON is not, or not of the expected shape.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// The client cannot run (no runtime, closed client, bad URL).
    #[error("{0}")]
    Runtime(String),
}

impl From<serde_json::Error> for ClientError {
    fn from(err: serde_json::Error) -> Self {
        ClientError::Json(err.to_string())
    }
}
