//! A job-submission body is a JSON object whose `qobj` member may be megabytes while the
//! rest (backend, name, tags, …) is a few hundred bytes. The service wants the small part
//! as ordinary JSON and the Qobj as raw bytes for [`crate::qobj::validate`] and for
//! storage, without a full parse of the Qobj into a generic tree first.

use serde_json::value::RawValue;
use std::collections::BTreeMap;

use crate::CoreError;

/// The two halves of a submission body.
#[derive(Debug)]
pub struct Split {
    /// The body's object with its `qobj` member removed, re-serialized.
    pub envelope: Vec<u8>,
    /// The raw bytes of the `qobj` member, if there was one.
    pub qobj: Option<Vec<u8>>,
}

/// Splits a submission body into envelope and Qobj.
pub fn split_submission(body: &[u8]) -> Result<Split, CoreError> {
    let mut members: BTreeMap<&str, &RawValue> = serde_json::from_slice(body)
        .map_err(|e| CoreError::Json(format!("request body must be a JSON object: {e}")))?;
    let qobj = members
        .remove("qobj")
        .map(|raw| raw.get().as_bytes().to_vec());
    let envelope = serde_json::to_vec(&members)?;
    Ok(Split { envelope, qobj })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_qobj_from_envelope() {
        let body =
            br#"{"backend": "aer_simulator", "qobj": {"experiments": [1, 2]}, "tags": ["a"]}"#;
        let split = split_submission(body).expect("valid body");
        assert_eq!(
            split.qobj.as_deref(),
            Some(&br#"{"experiments": [1, 2]}"#[..])
        );
        let env: serde_json::Value = serde_json::from_slice(&split.envelope).expect("json");
        assert_eq!(
            env,
            serde_json::json!({"backend": "aer_simulator", "tags": ["a"]})
        );
    }

    #[test]
    fn body_without_qobj() {
        let split = split_submission(br#"{"program_id": "sampler"}"#).expect("valid body");
        assert!(split.qobj.is_none());
    }

    #[test]
    fn rejects_non_objects() {
        for body in [&b"[1, 2]"[..], b"not json", b"", b"{\"a\": }"] {
            let err = split_submission(body).expect_err("must fail");
            assert!(matches!(err, CoreError::Json(_)), "{err:?}");
        }
    }
}
