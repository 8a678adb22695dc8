//! Queue routes: topics and groups, publish (a JSON batch, or a stream of NDJSON lines with
//! acks streamed back), pull, ack/nack/extend, a server-sent event consume, readers, dead
//! letters, and the queue gauges of `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body as HttpBody;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use weft_queue::wire::{self, MAX_FRAME};
use weft_queue::{GroupConfig, OutMessage, Pull, Queue, QueueError, StartAt, TopicConfig};

use crate::coord::sse;
use crate::{ApiError, AppState, Body};

fn queue(st: &AppState) -> Result<&Arc<dyn Queue>, ApiError> {
    st.queue
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("this node runs no queue (see weft up --help)".into()))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|r| ApiError::BadRequest(r.body_text()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicBody {
    name: String,
    #[serde(default)]
    config: TopicConfig,
}

pub(crate) async fn topic_create(
    State(st): State<AppState>,
    Body(b): Body<TopicBody>,
) -> Result<Json<Value>, ApiError> {
    let info = queue(&st)?.create_topic(&b.name, b.config).await?;
    Ok(Json(serde_json::to_value(info).unwrap_or_default()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NameBody {
    name: String,
}

pub(crate) async fn topic_delete(
    State(st): State<AppState>,
    Body(b): Body<NameBody>,
) -> Result<Json<Value>, ApiError> {
    queue(&st)?.delete_topic(&b.name).await?;
    Ok(Json(json!({})))
}

pub(crate) async fn topics(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all = queue(&st)?.topics().await?;
    Ok(Json(json!({ "topics": all })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicQuery {
    name: String,
}

pub(crate) async fn topic_get(
    State(st): State<AppState>,
    q: Result<Query<TopicQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let info = queue(&st)?.describe(&q.name).await?;
    Ok(Json(serde_json::to_value(info).unwrap_or_default()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupBody {
    topic: String,
    group: String,
    #[serde(default)]
    config: Option<GroupConfig>,
}

pub(crate) async fn group_create(
    State(st): State<AppState>,
    Body(b): Body<GroupBody>,
) -> Result<Json<Value>, ApiError> {
    let cfg = b.config.unwrap_or_default();
    queue(&st)?.create_group(&b.topic, &b.group, cfg).await?;
    Ok(Json(json!({})))
}

pub(crate) async fn group_delete(
    State(st): State<AppState>,
    Body(b): Body<GroupBody>,
) -> Result<Json<Value>, ApiError> {
    queue(&st)?.delete_group(&b.topic, &b.group).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishBody {
    topic: String,
    messages: Vec<OutMessage>,
}

pub(crate) async fn publish(
    State(st): State<AppState>,
    Body(b): Body<PublishBody>,
) -> Result<Json<Value>, ApiError> {
    let n = b.messages.len();
    let out = queue(&st)?.publish(&b.topic, b.messages).await?;
    metrics::counter!("weft_queue_published_total", "topic" => b.topic).increment(n as u64);
    Ok(Json(json!({ "published": out })))
}

/// Most publish batches of one stream in flight at once.
const STREAM_IN_FLIGHT: usize = 4096;

/// `POST /v1/queue/publish/stream?name=T`: the body is NDJSON, one message per line, and
/// the response streams one line per message, in order, once it is durable:
/// `{"partition":..,"offset":..,"duplicate":..}` or `{"error":{...}}`. Many messages are in
/// flight at once, so one connection fills group commits; the lines that arrive together are
/// published as one batch (one log record).
pub(crate) async fn publish_stream(
    State(st): State<AppState>,
    q: Result<Query<TopicQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let topic: Arc<str> = Arc::from(query(q)?.name);
    let qu = queue(&st)?.clone();
    let binary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"));
    let stream = PublishStream {
        body: req.into_body().into_data_stream(),
        buf: Vec::new(),
        binary,
        queue: qu,
        topic,
        inflight: futures::stream::FuturesOrdered::new(),
        body_done: false,
        out: Vec::new(),
    };
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        HttpBody::from_stream(stream),
    )
        .into_response())
}

/// The publish stream as the response body: each poll reads what the request body has
/// (frames or lines), starts their publishes, and answers every publish that is done, in
/// order, in one chunk. Reading and answering share the connection's task: no task or
/// channel between them (a hop each way per message before).
struct PublishStream {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
    binary: bool,
    queue: Arc<dyn Queue>,
    topic: Arc<str>,
    inflight: futures::stream::FuturesOrdered<PublishBatch>,
    body_done: bool,
    /// Answers ready to send, one NDJSON line each.
    out: Vec<u8>,
}

impl PublishStream {
    /// Parses what the buffer holds (all of it once the body has ended) and starts its
    /// publishes.
    fn take_input(&mut self, end: bool) {
        let (lines, used) = if self.binary {
            parse_frames(&self.buf)
        } else {
            parse_lines(&self.buf)
        };
        self.buf.drain(..used);
        let mut lines = lines;
        if end && !self.buf.is_empty() {
            lines.push(if self.binary {
                Some(Err(ApiError::BadRequest(format!(
                    "the stream ends inside a frame ({} bytes left over)",
                    self.buf.len()
                ))))
            } else {
                parse_line(&self.buf)
            });
            self.buf.clear();
        }
        for fut in batches(&self.queue, &self.topic, lines) {
            self.inflight.push_back(fut);
        }
    }

    fn answer(&mut self, answers: Answers) {
        for r in answers {
            match r {
                Ok(p) => {
                    let _ = serde_json::to_writer(&mut self.out, &p);
                }
                Err(e) => self
                    .out
                    .extend_from_slice(e.to_json().to_string().as_bytes()),
            }
            self.out.push(b'\n');
        }
    }
}

impl futures::Stream for PublishStream {
    type Item = Result<bytes::Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        // Read while there is room for more publishes.
        while !this.body_done && this.inflight.len() < STREAM_IN_FLIGHT {
            match this.body.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.buf.extend_from_slice(&chunk);
                    this.take_input(false);
                }
                Poll::Ready(Some(Err(e))) => {
                    let err = ApiError::BadRequest(format!("reading the request body: {e}"));
                    this.inflight
                        .push_back(futures::future::ready(vec![Err(err)]).boxed());
                    this.body_done = true;
                }
                Poll::Ready(None) => {
                    this.body_done = true;
                    this.take_input(true);
                }
                Poll::Pending => break,
            }
        }
        // Every answer that is ready, in order.
        while let Poll::Ready(Some(answers)) = this.inflight.poll_next_unpin(cx) {
            this.answer(answers);
        }
        if !this.out.is_empty() {
            return Poll::Ready(Some(Ok(std::mem::take(&mut this.out).into())));
        }
        if this.body_done && this.inflight.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

type Answers = Vec<Result<weft_queue::Published, ApiError>>;
type PublishBatch = futures::future::BoxFuture<'static, Answers>;

type Parsed = Vec<Option<Result<OutMessage, ApiError>>>;

/// The complete NDJSON lines at the start of `buf`, and how many bytes they took.
fn parse_lines(buf: &[u8]) -> (Parsed, usize) {
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
        out.push(parse_line(&buf[start..start + nl]));
        start += nl + 1;
    }
    (out, start)
}

/// The complete publish frames (`weft_queue::wire::publish_frame`) at the start of `buf`,
/// and how many bytes they took. A frame that cannot be one (a length over 64 MiB, a key
/// longer than its frame) ends the stream's parsing with an error.
fn parse_frames(buf: &[u8]) -> (Parsed, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 4 {
        let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4")) as usize;
        if !(4..=MAX_FRAME).contains(&len) {
            let e = format!("frame length {len} at byte {at} is not within 4..={MAX_FRAME}");
            out.push(Some(Err(ApiError::BadRequest(e))));
            return (out, buf.len());
        }
        if buf.len() - at - 4 < len {
            break;
        }
        let f = &buf[at + 4..at + 4 + len];
        let klen = u32::from_le_bytes(f[..4].try_into().expect("4")) as usize;
        if klen > len - 4 {
            let e = format!("frame at byte {at}: key of {klen} bytes in a frame of {len}");
            out.push(Some(Err(ApiError::BadRequest(e))));
            return (out, buf.len());
        }
        let key = (klen > 0).then(|| bytes::Bytes::copy_from_slice(&f[4..4 + klen]));
        let mut m = OutMessage::new(bytes::Bytes::copy_from_slice(&f[4 + klen..]));
        m.key = key;
        out.push(Some(Ok(m)));
        at += 4 + len;
    }
    (out, at)
}

/// A line: a message, nothing (blank), or why it is not one.
fn parse_line(line: &[u8]) -> Option<Result<OutMessage, ApiError>> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(
        serde_json::from_slice(line)
            .map_err(|e| ApiError::BadRequest(format!("message line: {e}"))),
    )
}

/// Runs of good lines become one batch each; a bad line answers alone, in its place.
fn batches(
    q: &Arc<dyn Queue>,
    topic: &Arc<str>,
    lines: Vec<Option<Result<OutMessage, ApiError>>>,
) -> Vec<PublishBatch> {
    let mut out = Vec::new();
    let mut run = Vec::new();
    for l in lines.into_iter().flatten() {
        match l {
            Ok(m) => run.push(m),
            Err(e) => {
                if !run.is_empty() {
                    out.push(publish_batch(
                        q.clone(),
                        topic.clone(),
                        std::mem::take(&mut run),
                    ));
                }
                out.push(futures::future::ready(vec![Err(e)]).boxed());
            }
        }
    }
    if !run.is_empty() {
        out.push(publish_batch(q.clone(), topic.clone(), run));
    }
    out
}

/// Publishes a run of messages as one batch; if the batch is refused, each message alone, so
/// that one bad message does not fail its neighbours.
fn publish_batch(q: Arc<dyn Queue>, topic: Arc<str>, msgs: Vec<OutMessage>) -> PublishBatch {
    async move {
        let n = msgs.len();
        let answers = match q.publish(&topic, msgs.clone()).await {
            Ok(done) => done.into_iter().map(Ok).collect(),
            Err(_) if n > 1 => {
                let mut each = Vec::with_capacity(n);
                for m in msgs {
                    each.push(
                        q.publish(&topic, vec![m])
                            .await
                            .map(|mut p| p.remove(0))
                            .map_err(ApiError::from),
                    );
                }
                each
            }
            Err(e) => vec![Err(e.into())],
        };
        let ok = answers.iter().filter(|a| a.is_ok()).count() as u64;
        metrics::counter!("weft_queue_published_total", "topic" => topic.to_string()).increment(ok);
        answers
    }
    .boxed()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PullBody {
    topic: String,
    group: String,
    #[serde(flatten)]
    pull: Pull,
}

/// `POST /v1/queue/pull`: the deliveries as JSON (values in base64), or as binary frames
/// (`weft_queue::wire`) when the request accepts `application/octet-stream`.
pub(crate) async fn pull(
    State(st): State<AppState>,
    headers: header::HeaderMap,
    Body(b): Body<PullBody>,
) -> Result<Response, ApiError> {
    if b.pull.wait_ms > 60_000 {
        return Err(ApiError::BadRequest(format!(
            "wait_ms {} is over the limit of 60000",
            b.pull.wait_ms
        )));
    }
    let got = queue(&st)?.pull(&b.topic, &b.group, b.pull).await?;
    metrics::counter!("weft_queue_delivered_total", "topic" => b.topic, "group" => b.group)
        .increment(got.len() as u64);
    let binary = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.as_bytes().starts_with(wire::BINARY.as_bytes()));
    if !binary {
        return Ok(Json(json!({ "messages": got })).into_response());
    }
    let mut out = Vec::with_capacity(got.iter().map(|d| d.message.value.len() + 160).sum());
    for d in &got {
        wire::delivery_frame(d, &mut out);
    }
    Ok(([(header::CONTENT_TYPE, wire::BINARY)], out).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AckBody {
    topic: String,
    group: String,
    receipts: Vec<String>,
}

/// Acks every receipt; answers per receipt (`null` when acked, else the error).
pub(crate) async fn ack(
    State(st): State<AppState>,
    Body(b): Body<AckBody>,
) -> Result<Json<Value>, ApiError> {
    let results = queue(&st)?.ack_many(&b.topic, &b.group, &b.receipts).await;
    let mut acked = 0;
    let mut errors = Vec::new();
    for (r, res) in b.receipts.iter().zip(results) {
        match res {
            Ok(()) => acked += 1,
            Err(e @ (QueueError::UnknownTopic(_) | QueueError::UnknownGroup { .. })) => {
                return Err(e.into())
            }
            Err(e) => {
                errors.push(json!({"receipt": r, "error": ApiError::from(e).to_json()["error"]}))
            }
        }
    }
    metrics::counter!("weft_queue_acked_total", "topic" => b.topic, "group" => b.group)
        .increment(acked);
    Ok(Json(json!({ "acked": acked, "errors": errors })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NackBody {
    topic: String,
    group: String,
    receipt: String,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    dead: bool,
}

pub(crate) async fn nack(
    State(st): State<AppState>,
    Body(b): Body<NackBody>,
) -> Result<Json<Value>, ApiError> {
    let delay = Duration::from_millis(b.delay_ms);
    queue(&st)?
        .nack(&b.topic, &b.group, &b.receipt, delay, b.error, b.dead)
        .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtendBody {
    topic: String,
    group: String,
    receipt: String,
}

pub(crate) async fn extend(
    State(st): State<AppState>,
    Body(b): Body<ExtendBody>,
) -> Result<Json<Value>, ApiError> {
    let dl = queue(&st)?.extend(&b.topic, &b.group, &b.receipt).await?;
    Ok(Json(json!({ "ack_deadline_ms": dl })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadQuery {
    topic: String,
    #[serde(default)]
    partition: u32,
    #[serde(default)]
    from_offset: Option<u64>,
    #[serde(default)]
    from_time_ms: Option<u64>,
    #[serde(default)]
    max: Option<u32>,
}

pub(crate) async fn read(
    State(st): State<AppState>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let from = match (q.from_offset, q.from_time_ms) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give from_offset or from_time_ms, not both".into(),
            ))
        }
        (Some(o), None) => StartAt::Offset(o),
        (None, Some(t)) => StartAt::Time(t),
        (None, None) => StartAt::Earliest,
    };
    let max = q.max.unwrap_or(100);
    if !(1..=10_000).contains(&max) {
        return Err(ApiError::BadRequest(format!("max {max} must be 1..=10000")));
    }
    let msgs = queue(&st)?.read(&q.topic, q.partition, from, max).await?;
    Ok(Json(json!({ "messages": msgs })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumeQuery {
    topic: String,
    group: String,
    #[serde(default)]
    consumer: Option<String>,
    #[serde(default)]
    max: Option<u32>,
}

/// `GET /v1/queue/consume`: server-sent events, one `message` event per delivery (a
/// `Delivery` as JSON), for as long as the client listens; ack with `/v1/queue/ack`.
pub(crate) async fn consume(
    State(st): State<AppState>,
    q: Result<Query<ConsumeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let qu = queue(&st)?.clone();
    // Fail at once on an unknown topic or group.
    let info = qu.describe(&q.topic).await?;
    if !info.groups.iter().any(|g| g.name == q.group) {
        return Err(QueueError::UnknownGroup {
            topic: q.topic,
            group: q.group,
        }
        .into());
    }
    let pull = Pull {
        consumer: q.consumer.unwrap_or_else(|| "sse".into()),
        max: q.max.unwrap_or(16).clamp(1, 1000),
        wait_ms: 20_000,
    };
    let events =
        futures::stream::unfold((qu, q.topic, q.group, pull), |(qu, t, g, p)| async move {
            let res = qu.pull(&t, &g, p.clone()).await;
            let evs: Vec<(SseEvent, bool)> = match res {
                Ok(got) if got.is_empty() => vec![(SseEvent::default().comment("waiting"), false)],
                Ok(got) => got
                    .iter()
                    .map(|d| {
                        let data = serde_json::to_string(d).unwrap_or_default();
                        (SseEvent::default().event("message").data(data), false)
                    })
                    .collect(),
                Err(e) => vec![(crate::coord::sse_error(&e.into()), true)],
            };
            Some((futures::stream::iter(evs), (qu, t, g, p)))
        })
        .flatten();
    Ok(sse(&st, events))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadQuery {
    topic: String,
    #[serde(default)]
    max: Option<u32>,
}

pub(crate) async fn dead(
    State(st): State<AppState>,
    q: Result<Query<DeadQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let msgs = queue(&st)?
        .dead_letters(&q.topic, q.max.unwrap_or(100).clamp(1, 10_000))
        .await?;
    Ok(Json(json!({ "dead": msgs })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayBody {
    topic: String,
    #[serde(default)]
    offsets: Option<Vec<u64>>,
}

pub(crate) async fn dead_replay(
    State(st): State<AppState>,
    Body(b): Body<ReplayBody>,
) -> Result<Json<Value>, ApiError> {
    let n = queue(&st)?.replay_dead(&b.topic, b.offsets).await?;
    Ok(Json(json!({ "replayed": n })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PurgeBody {
    topic: String,
}

pub(crate) async fn dead_purge(
    State(st): State<AppState>,
    Body(b): Body<PurgeBody>,
) -> Result<Json<Value>, ApiError> {
    let n = queue(&st)?.purge_dead(&b.topic).await?;
    Ok(Json(json!({ "purged": n })))
}

/// Sets the queue gauges (depth per partition, lag, in flight, delayed, dead letters and
/// oldest unacked age per group) before `/metrics` renders.
pub(crate) async fn gauges(st: &AppState) {
    let Some(q) = &st.queue else { return };
    let Ok(topics) = q.topics().await else { return };
    for t in topics {
        for p in &t.partitions {
            metrics::gauge!("weft_queue_depth", "topic" => t.name.clone(), "partition" => p.partition.to_string())
                .set((p.end - p.start) as f64);
            metrics::gauge!("weft_queue_bytes", "topic" => t.name.clone(), "partition" => p.partition.to_string())
                .set(p.bytes as f64);
        }
        for g in &t.groups {
            let l = || [("topic", t.name.clone()), ("group", g.name.clone())];
            metrics::gauge!("weft_queue_lag", &l()).set(g.lag as f64);
            metrics::gauge!("weft_queue_in_flight", &l()).set(g.in_flight as f64);
            metrics::gauge!("weft_queue_delayed", &l()).set(g.delayed as f64);
            metrics::gauge!("weft_queue_redeliveries", &l()).set(g.redeliveries as f64);
            metrics::gauge!("weft_queue_dead_lettered", &l()).set(g.dead as f64);
            metrics::gauge!("weft_queue_oldest_unacked_seconds", &l())
                .set(g.oldest_unacked_ms as f64 / 1000.0);
        }
    }
}

/// The HTTP status of a queue error.
pub(crate) fn status(e: &QueueError) -> StatusCode {
    match e {
        QueueError::UnknownTopic(_) | QueueError::UnknownGroup { .. } => StatusCode::NOT_FOUND,
        QueueError::TopicExists(_) | QueueError::NotPending(_) => StatusCode::CONFLICT,
        QueueError::Invalid(_) | QueueError::OffsetOutOfRange { .. } => StatusCode::BAD_REQUEST,
        QueueError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        QueueError::Full { .. } => StatusCode::TOO_MANY_REQUESTS,
        QueueError::Locked(_) | QueueError::Backend(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
