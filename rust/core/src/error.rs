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
}

impl From<serde_json::Error> for CoreError {
    fn from(err: serde_json::Error) -> Self {
        CoreError::Json(err.to_string())
    }
}
