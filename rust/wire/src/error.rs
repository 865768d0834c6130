use thiserror::Error;

/// Every error of the wire format. Messages name the problem in the user's terms
/// (experiment, instruction, qubit), since the service sends them back verbatim.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
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
    /// A payload would decode to more than the caller's `max_bytes`; the message names
    /// the limit. Raised before the output is allocated.
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// A job-name filter that is not a valid pattern, or one over the size limits.
    #[error("{0}")]
    Pattern(String),
}

impl From<serde_json::Error> for WireError {
    fn from(err: serde_json::Error) -> Self {
        WireError::Json(err.to_string())
    }
}
