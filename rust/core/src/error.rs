use thiserror::Error;

/// Every error the core can return. Messages name the problem in the user's terms
/// (experiment, instruction, qubit), since the service sends them back verbatim.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CoreError {
    /// The bytes are not JSON, or not JSON of the expected shape.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// The JSON is well formed but the Qobj breaks a rule of the format or of the backend.
    #[error("{0}")]
    InvalidQobj(String),
    /// A payload of the runtime encoding is not base64.
    #[error("invalid base64: {0}")]
    Base64(String),
    /// A payload of the runtime encoding is not one complete zlib stream.
    #[error("invalid zlib data: {0}")]
    Zlib(String),
    /// A `.npy` file, or what was given to frame as one, breaks the format.
    #[error("invalid .npy data: {0}")]
    Npy(String),
    /// Bit-array bytes that do not fit the number of bits or positions given.
    #[error("invalid bit array: {0}")]
    BitArray(String),
}

impl From<serde_json::Error> for CoreError {
    fn from(err: serde_json::Error) -> Self {
        CoreError::Json(err.to_string())
    }
}

/// Every error of the service client ([`crate::client`], [`crate::stream`],
/// [`crate::results`]).
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
