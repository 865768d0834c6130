//! A job-submission body is a JSON object whose `qobj` member may be megabytes while the
//! rest (backend, name, tags, …) is a few hundred bytes. The service wants the small part
//! as ordinary JSON and the Qobj as raw bytes for [`crate::qobj::validate`] and for
//! storage, without a full parse of the Qobj into a generic tree first.

use serde_json::value::RawValue;
use std::collections::BTreeMap;

use crate::WireError;

/// The two halves of a submission body.
#[derive(Debug)]
pub struct Split {
    /// The body's object with its `qobj` member removed, re-serialized.
    pub envelope: Vec<u8>,
    /// The raw bytes of the `qobj` member, if there was one.
    pub qobj: Option<Vec<u8>>,
}

/// Splits a submission body into envelope and Qobj.
pub fn split_submission(body: &[u8]) -> Result<Split, WireError> {
    let (envelope, qobj) = split_member(body, "qobj", "request body")?;
    Ok(Split { envelope, qobj })
}

/// Splits the JSON object `body` into (the object without its member `key`, re-serialized;
/// the raw bytes of that member, if present). `what` names the object in errors. A
/// program job's `params` and a sampler's `circuits` Qobj are split off the same way, so
/// that the service never builds a Python tree of a Qobj it only validates and stores.
pub fn split_member(
    body: &[u8],
    key: &str,
    what: &str,
) -> Result<(Vec<u8>, Option<Vec<u8>>), WireError> {
    let mut members: BTreeMap<&str, &RawValue> = serde_json::from_slice(body)
        .map_err(|e| WireError::Json(format!("{what} must be a JSON object: {e}")))?;
    let member = members.remove(key).map(|raw| raw.get().as_bytes().to_vec());
    Ok((serde_json::to_vec(&members)?, member))
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
    fn splits_any_member() {
        let (rest, member) = split_member(
            br#"{"pubs": [[0, null, 5]], "circuits": {"a": 1}}"#,
            "circuits",
            "params",
        )
        .expect("valid object");
        assert_eq!(member.as_deref(), Some(&br#"{"a": 1}"#[..]));
        let rest: serde_json::Value = serde_json::from_slice(&rest).expect("json");
        assert_eq!(rest, serde_json::json!({"pubs": [[0, null, 5]]}));
        let err = split_member(b"[1]", "circuits", "params").expect_err("not an object");
        assert!(
            err.to_string().contains("params must be a JSON object"),
            "{err}"
        );
    }

    #[test]
    fn rejects_non_objects() {
        for body in [&b"[1, 2]"[..], b"not json", b"", b"{\"a\": }"] {
            let err = split_submission(body).expect_err("must fail");
            assert!(matches!(err, WireError::Json(_)), "{err:?}");
        }
    }
}
