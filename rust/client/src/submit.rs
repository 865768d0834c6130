//! Submitting many jobs at once: the job manager's chunks, concurrently, with bounded
//! concurrency, each chunk's position kept.
//!
//! Every chunk keeps one idempotency key for all its attempts, so a retry never creates a
//! second job. A chunk the service refuses because the user's active-job limit is reached
//! waits (the caller says how: the binding waits on the event stream for one of the
//! batch's jobs to finish) and tries again; it is never failed for that. Transient errors
//! are retried inside [`ServiceClient::request`]; any other error is that chunk's result
//! and the other chunks go on.

use std::future::Future;
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};

use crate::client::{parse_method, splice_qobj, RequestOptions, ServiceClient};
use crate::ClientError;

/// The error code with which the service refuses a job over the user's active-job limit.
pub const ACTIVE_JOB_LIMIT: &str = "active_job_limit";

/// One job to submit: the envelope (a JSON object) and its Qobj, spliced on the way out,
/// and its idempotency key (a new one when `None`). A caller that may submit the chunk
/// again after this call (to a restarted service) gives the key, so that a job the first
/// call created without hearing back is answered, not created twice.
pub struct Chunk {
    pub envelope: Vec<u8>,
    pub qobj: Vec<u8>,
    pub key: Option<String>,
}

/// Submits every chunk (at most `concurrency` requests in flight) and returns each
/// chunk's outcome in the chunks' order: the service's job record, or the error.
///
/// `wait_for_slot(submitted)` is awaited when the active-job limit is reached, with the
/// ids of the jobs this batch has created so far.
pub async fn submit_all<W, F>(
    client: &ServiceClient,
    chunks: Vec<Chunk>,
    concurrency: usize,
    options: RequestOptions,
    wait_for_slot: W,
) -> Vec<Result<Bytes, ClientError>>
where
    W: Fn(Vec<String>) -> F,
    F: Future<Output = ()>,
{
    let submitted: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let submitted = &submitted;
    let wait_for_slot = &wait_for_slot;
    let mut outcomes: Vec<(usize, Result<Bytes, ClientError>)> =
        stream::iter(chunks.into_iter().enumerate())
            .map(|(index, chunk)| {
                let mut opts = options.clone();
                async move {
                    opts.idempotency_key = Some(
                        chunk
                            .key
                            .clone()
                            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                    );
                    let outcome = submit_one(client, &chunk, opts, submitted, wait_for_slot).await;
                    (index, outcome)
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    outcomes.sort_by_key(|(index, _)| *index);
    outcomes.into_iter().map(|(_, outcome)| outcome).collect()
}

async fn submit_one<W, F>(
    client: &ServiceClient,
    chunk: &Chunk,
    opts: RequestOptions,
    submitted: &Mutex<Vec<String>>,
    wait_for_slot: &W,
) -> Result<Bytes, ClientError>
where
    W: Fn(Vec<String>) -> F,
    F: Future<Output = ()>,
{
    let body = Bytes::from(splice_qobj(&chunk.envelope, &chunk.qobj)?);
    loop {
        let attempt = client
            .request(
                parse_method("POST")?,
                "/jobs",
                &[],
                Some(body.clone()),
                opts.clone(),
            )
            .await;
        match attempt {
            Ok(response) => {
                if let Some(id) = job_id(&response.body) {
                    if let Ok(mut ids) = submitted.lock() {
                        ids.push(id);
                    }
                }
                return Ok(response.body);
            }
            Err(ClientError::Api { ref code, .. }) if code == ACTIVE_JOB_LIMIT => {
                let ids = submitted.lock().map(|ids| ids.clone()).unwrap_or_default();
                wait_for_slot(ids).await;
            }
            Err(other) => return Err(other),
        }
    }
}

fn job_id(record: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Record {
        id: String,
    }
    serde_json::from_slice::<Record>(record).ok().map(|r| r.id)
}
