//! The HTTP/2 server itself: the fast path and tonic's path answer on one connection, bad
//! requests get gRPC errors, and shutdown neither hangs on idle clients nor waits forever
//! for open streams.

use crate::common;

use std::time::{Duration, Instant};

use common::{client, start, start_with};

#[tokio::test]
async fn fast_and_tonic_paths_share_a_connection_and_shutdown_is_prompt() {
    paths_and_shutdown(2).await;
}

/// The same with connections served as tasks on the caller's runtime (`threads: 0`).
#[tokio::test]
async fn connections_on_the_callers_runtime_work_alike() {
    paths_and_shutdown(0).await;
}

async fn paths_and_shutdown(threads: usize) {
    let s = start_with(threads).await;
    let mut c = client(&s).await;
    // Fast path: put, range, txn, delete.
    c.put("a", "1", None).await.unwrap();
    let r = c.get("a", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"1");
    let rev = r.header().unwrap().revision();
    let t = etcd_client::Txn::new()
        .when([etcd_client::Compare::mod_revision(
            "a",
            etcd_client::CompareOp::Equal,
            rev,
        )])
        .and_then([etcd_client::TxnOp::put("a", "2", None)]);
    assert!(c.txn(t).await.unwrap().succeeded());
    // Errors from the fast path carry etcd's codes and messages.
    let err = c.get("", None).await.unwrap_err();
    assert!(err.to_string().contains("key is not provided"), "{err}");
    // A txn inside a txn runs (etcd >= 3.3), its answer nested in the outer one.
    let nested = etcd_client::Txn::new().and_then([etcd_client::TxnOp::txn(
        etcd_client::Txn::new().and_then([etcd_client::TxnOp::put("n", "1", None)]),
    )]);
    let r = c.txn(nested).await.unwrap();
    assert!(r.succeeded());
    match &r.op_responses()[..] {
        [etcd_client::TxnOpResponse::Txn(inner)] => {
            assert!(inner.succeeded());
            assert_eq!(inner.op_responses().len(), 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.get("n", None).await.unwrap().kvs()[0].value(), b"1");
    // Lease errors carry etcd's codes and messages (tonic's path).
    let err = c.lease_revoke(0x7eed).await.unwrap_err();
    assert!(
        matches!(&err, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::NotFound
            && s.message() == "etcdserver: requested lease not found"),
        "{err}"
    );
    let taken = || Some(etcd_client::LeaseGrantOptions::new().with_id(0x7eed));
    let lease = c.lease_grant(30, taken()).await.unwrap();
    assert_eq!(lease.id(), 0x7eed);
    assert_eq!(lease.ttl(), 30);
    let err = c.lease_grant(30, taken()).await.unwrap_err();
    assert!(err.to_string().contains("lease already exists"), "{err}");
    // Tonic's path on the same client: a watch stream.
    let mut stream = c.watch("a", None).await.unwrap();
    // The first message confirms the watch; only a write after it is sure to be seen
    // (etcd-client returns the stream before the server has read the create request, and
    // a put on another stream of the connection may be applied first, as with etcd).
    let created = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("watch created in time")
        .unwrap()
        .unwrap();
    assert!(created.created(), "{created:?}");
    c.put(
        "a",
        "3",
        Some(etcd_client::PutOptions::new().with_lease(lease.id())),
    )
    .await
    .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let m = stream.message().await.unwrap().unwrap();
            if !m.events().is_empty() {
                return m;
            }
        }
    })
    .await
    .expect("watch event in time");
    assert_eq!(ev.events()[0].kv().unwrap().value(), b"3");
    assert_eq!(c.delete("a", None).await.unwrap().deleted(), 1);
    // Shutdown with an open watch stream and an open keep-alive stream: both end with
    // UNAVAILABLE at once, so serve returns well within the 5 s grace it gives unary calls.
    let (mut keeper, mut acks) = c.lease_keep_alive(lease.id()).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert!(acks.message().await.unwrap().unwrap().ttl() > 0);
    let t0 = Instant::now();
    let _ = s.stop.send(());
    tokio::time::timeout(Duration::from_secs(10), s.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?} for open streams",
        t0.elapsed()
    );
    let ended = |r: Result<Option<i64>, etcd_client::Error>| match r {
        Err(e) => {
            assert!(e.to_string().contains("server stopped"), "{e}");
        }
        Ok(None) => {}
        Ok(Some(m)) => panic!("a message after shutdown: {m:?}"),
    };
    // The delete's event was sent before the shutdown; then the stream ends.
    let del = stream.message().await.unwrap().unwrap();
    assert_eq!(del.events()[0].event_type(), etcd_client::EventType::Delete);
    ended(
        stream
            .message()
            .await
            .map(|m| m.map(|m| m.events().len() as i64)),
    );
    ended(acks.message().await.map(|m| m.map(|m| m.ttl())));
}

#[tokio::test]
async fn shutdown_does_not_wait_for_idle_clients() {
    let s = start().await;
    let mut c = client(&s).await;
    c.put("k", "v", None).await.unwrap();
    let t0 = Instant::now();
    let _ = s.stop.send(());
    s.task.await.unwrap().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?} for an idle connection",
        t0.elapsed()
    );
    drop(c);
}

/// The headers of a gRPC KV.Put call to `addr`, for a hand-made body.
fn grpc_put(addr: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/etcdserverpb.KV/Put"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// An h2 client connected to `s`, and the address it uses.
async fn h2_client(s: &common::Server) -> (String, h2::client::SendRequest<bytes::Bytes>) {
    let addr = s.url.trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    (addr, h2)
}

/// A unary call whose body is not one well-formed gRPC message gets a gRPC error, not a hang
/// or a dropped connection.
#[tokio::test]
async fn malformed_unary_messages_get_grpc_errors() {
    let s = start().await;
    let (addr, mut h2) = h2_client(&s).await;
    let cases: [(&[u8], &str); 3] = [
        (b"\0\0", "13"),            // no complete message header: INTERNAL
        (b"\x01\0\0\0\0", "12"),    // compressed flag without grpc-encoding: UNIMPLEMENTED
        (b"\0\0\0\0\x09abc", "13"), // length says 9, 3 bytes follow: INTERNAL
    ];
    for (body, code) in cases {
        h2 = h2.ready().await.unwrap();
        let (resp, mut send) = h2.send_request(grpc_put(&addr), false).unwrap();
        send.send_data(bytes::Bytes::copy_from_slice(body), true)
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(resp.status(), 200);
        let status = resp
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(status.as_deref(), Some(code), "{body:?}: {resp:?}");
    }
    let _ = s.stop.send(());
}

/// A Watch stream whose request cannot be read (a length prefix promising more than follows)
/// ends with a gRPC error, not with grpc-status 0.
#[tokio::test]
async fn a_watch_request_that_cannot_be_read_ends_with_an_error() {
    let s = start().await;
    let (addr, mut h2) = h2_client(&s).await;
    h2 = h2.ready().await.unwrap();
    let req = http::Request::post(format!("http://{addr}/etcdserverpb.Watch/Watch"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut send) = h2.send_request(req, false).unwrap();
    send.send_data(bytes::Bytes::from_static(b"\0\0\0\0\x09abc"), true)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("an answer in time")
        .unwrap();
    let status = match resp.headers().get("grpc-status") {
        Some(v) => v.to_str().unwrap().to_string(),
        None => {
            let mut body = resp.into_body();
            while body.data().await.is_some() {}
            let t = tokio::time::timeout(Duration::from_secs(5), body.trailers())
                .await
                .expect("trailers in time")
                .unwrap()
                .expect("trailers");
            t.get("grpc-status").unwrap().to_str().unwrap().to_string()
        }
    };
    assert_ne!(status, "0", "the stream must not end as a success");
    let _ = s.stop.send(());
}

/// A unary call whose gRPC length prefix is over the message limit is answered as soon as
/// the prefix arrives, while the client is still sending.
#[tokio::test]
async fn an_oversize_length_prefix_is_answered_at_once() {
    let s = start().await;
    let (addr, mut h2) = h2_client(&s).await;
    h2 = h2.ready().await.unwrap();
    let (resp, mut send) = h2.send_request(grpc_put(&addr), false).unwrap();
    let mut prefix = vec![0u8];
    prefix.extend((64u32 << 20).to_be_bytes());
    send.send_data(bytes::Bytes::from(prefix), false).unwrap();
    // The body never ends: the answer must not wait for it.
    let resp = tokio::time::timeout(Duration::from_secs(2), resp)
        .await
        .expect("an answer before the body ends")
        .unwrap();
    let status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(status.as_deref(), Some("11"), "{resp:?}");
    drop(send);
    let _ = s.stop.send(());
}

/// Unary calls still being received may hold at most 16 MiB of one connection: 8 calls each
/// sending 3 MiB of a 4 MiB message, never finishing, get RESOURCE_EXHAUSTED for those past
/// the limit, at once.
#[tokio::test]
async fn a_connection_cannot_pile_up_request_bodies() {
    let s = start().await;
    let (addr, mut h2) = h2_client(&s).await;
    let mut answers = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..8 {
        h2 = h2.ready().await.unwrap();
        let (resp, mut send) = h2.send_request(grpc_put(&addr), false).unwrap();
        let mut body = vec![0u8];
        body.extend((4u32 << 20).to_be_bytes());
        body.resize(3 << 20, b'x');
        send.send_data(bytes::Bytes::from(body), false).unwrap();
        answers.push(resp);
        senders.push(send);
    }
    // Waited for together: the calls that fit wait for the rest of their bodies.
    let waits = answers
        .into_iter()
        .map(|resp| tokio::time::timeout(Duration::from_secs(2), resp));
    let mut refused = 0;
    for r in futures::future::join_all(waits).await.into_iter().flatten() {
        let r = r.unwrap();
        let status = r
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(status.as_deref(), Some("8"), "{r:?}");
        refused += 1;
    }
    assert!(
        refused >= 3,
        "at most 5 calls of 3 MiB fit in 16 MiB: {refused} refused"
    );
    drop(senders);
    // The server still serves.
    let mut c = client(&s).await;
    c.put("after-pile", "1", None).await.unwrap();
    let _ = s.stop.send(());
}

/// The fast path reads the whole body: a message split over several DATA frames (here the
/// gRPC prefix alone, then the message in two parts, and an empty end-of-stream frame) is
/// put as one value.
#[tokio::test]
async fn a_message_split_over_data_frames_is_reassembled() {
    use prost::Message;
    let s = start().await;
    let (addr, mut h2) = h2_client(&s).await;
    let value: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let msg = etcd_client::proto::PbPutRequest {
        key: b"split".to_vec(),
        value: value.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut prefix = vec![0u8];
    prefix.extend((msg.len() as u32).to_be_bytes());
    h2 = h2.ready().await.unwrap();
    let (resp, mut send) = h2.send_request(grpc_put(&addr), false).unwrap();
    let mid = msg.len() / 3;
    for (part, end) in [
        (prefix, false),
        (msg[..mid].to_vec(), false),
        (msg[mid..].to_vec(), false),
        (Vec::new(), true),
    ] {
        send.send_data(bytes::Bytes::from(part), end).unwrap();
    }
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The gRPC headers and nothing else (no `date`, no `content-length`), as etcd sends.
    let names: Vec<&str> = resp.headers().keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["content-type"], "{:?}", resp.headers());
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let mut body = resp.into_body();
    while body.data().await.is_some() {}
    let trailers = body.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{trailers:?}");
    assert_eq!(trailers.len(), 1, "{trailers:?}");
    let mut c = client(&s).await;
    let r = c.get("split", None).await.unwrap();
    assert_eq!(r.kvs().len(), 1);
    assert_eq!(r.kvs()[0].value(), &value[..]);
    let _ = s.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_backlog_is_coalesced_without_losing_or_reordering_events() {
    // A watcher that does not read while 3000 puts land (more than the HTTP/2 window and the
    // server's queue hold), then reads everything: each event arrives once, in revision
    // order, and the backlog comes in fewer responses than events.
    const N: usize = 3000;
    let s = start().await;
    let mut c = client(&s).await;
    let mut stream = c
        .watch(
            "backlog/",
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let mut writers = Vec::new();
    for t in 0..8 {
        let mut c = c.clone();
        writers.push(tokio::spawn(async move {
            for i in (t..N).step_by(8) {
                c.put(format!("backlog/{i:05}"), vec![b'x'; 100], None)
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let (mut responses, mut last_rev) = (0, 0);
    while seen.len() < N {
        let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap_or_else(|_| panic!("stalled after {} of {N} events", seen.len()))
            .unwrap()
            .expect("stream open");
        if r.events().is_empty() {
            continue; // the created notice
        }
        responses += 1;
        for e in r.events() {
            let kv = e.kv().unwrap();
            assert!(kv.mod_revision() > last_rev, "events out of order");
            last_rev = kv.mod_revision();
            assert!(seen.insert(kv.key().to_vec()), "event delivered twice");
        }
        assert!(
            r.header().unwrap().revision() >= last_rev,
            "header revision behind its events"
        );
    }
    assert!(
        responses < N,
        "{responses} responses for {N} events: nothing was coalesced"
    );
    let _ = s.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unary_calls_on_one_connection_all_complete() {
    // The fast path runs a connection's unary calls in the connection's task: 32 clients
    // sharing one connection, 50 puts and gets each, must all be answered (a lost wake-up
    // shows as a timeout), each put at its own revision.
    let s = start().await;
    let c = client(&s).await;
    let mut tasks = Vec::new();
    for t in 0..32 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..50 {
                let key = format!("many/{t}/{i}");
                let r = c.put(key.clone(), format!("{t}.{i}"), None).await.unwrap();
                revs.push(r.header().unwrap().revision());
                let g = c.get(key, None).await.unwrap();
                assert_eq!(g.kvs()[0].value(), format!("{t}.{i}").as_bytes());
            }
            revs
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    })
    .await
    .expect("every call is answered");
    let distinct: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), 32 * 50, "each put has its own revision");
    let _ = s.stop.send(());
}

/// Sends one gRPC Range call over a hand-built HTTP/2 connection with `authority` as the
/// `:authority` value (HPACK literals, so any bytes go through), and returns the frame types
/// the server sent on the call's stream, plus the gRPC payload of its DATA frame if any.
async fn raw_range_with_authority(addr: &str, authority: &str) -> (Vec<u8>, Option<Vec<u8>>) {
    use common::{frame, literal};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/etcdserverpb.KV/Range"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        literal(&mut block, n, v);
    }
    // RangeRequest { key: "a" }, as one uncompressed gRPC message.
    let msg = [0x0a, 0x01, b'a'];
    let mut body = vec![0u8];
    body.extend((msg.len() as u32).to_be_bytes());
    body.extend(msg);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(frame(0x1, 0x4, 1, &block)); // HEADERS, END_HEADERS
    out.extend(frame(0x0, 0x1, 1, &body)); // DATA, END_STREAM
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(&out).await.unwrap();
    let mut kinds = Vec::new();
    let mut data = None;
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if sock.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            sock.read_exact(&mut payload).await.unwrap();
            if kind == 0x4 && flags & 0x1 == 0 {
                sock.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap(); // SETTINGS ACK
            }
            if kind == 0x7 {
                kinds.push(kind); // GOAWAY ends the connection
                return;
            }
            if stream != 1 {
                continue;
            }
            kinds.push(kind);
            if kind == 0x0 && payload.len() > 5 {
                data = Some(payload[5..].to_vec());
            }
            // RST_STREAM, or HEADERS with END_STREAM (the trailers): the call is over.
            if kind == 0x3 || (kind == 0x1 && flags & 0x1 != 0) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the call ends within 5 s");
    (kinds, data)
}

/// etcd's own clients send malformed `:authority` values that etcd (grpc-go) accepts:
/// etcdctl 3.4 sends the endpoint URL for maintenance calls, Go clientv3 3.5.0 sends
/// `#initially=[...]` (etcd-io/etcd#13192). They get answers, not `PROTOCOL_ERROR` (see
/// vendor/README.md for the h2 patch this needs).
#[tokio::test]
async fn calls_with_the_malformed_authorities_etcd_clients_send_are_answered() {
    let s = start().await;
    let mut c = client(&s).await;
    c.put("a", "1", None).await.unwrap();
    let addr = s.url.trim_start_matches("http://").to_string();
    let url = s.url.clone();
    let initially = format!("#initially=[{url}]");
    for authority in [addr.as_str(), url.as_str(), initially.as_str()] {
        let (kinds, data) = raw_range_with_authority(&addr, authority).await;
        assert!(
            !kinds.contains(&0x3) && !kinds.contains(&0x7),
            "{authority:?}: the server reset the call (frame types {kinds:?})"
        );
        let data = data.unwrap_or_else(|| panic!("{authority:?}: no response message ({kinds:?})"));
        // The RangeResponse carries the key and value written above.
        let r = <etcd_client::proto::PbRangeResponse as prost::Message>::decode(&data[..])
            .unwrap_or_else(|e| panic!("{authority:?}: not a RangeResponse: {e}"));
        assert_eq!(r.kvs.len(), 1, "{authority:?}: {r:?}");
        assert_eq!(
            (&r.kvs[0].key[..], &r.kvs[0].value[..]),
            (&b"a"[..], &b"1"[..])
        );
    }
    drop(c);
}

/// Several watchers on one watch stream: each gets its own events under its id, a canceled
/// one gets its cancellation and nothing after it, a cancel of an unknown id is ignored, and a
/// progress request answers for every watcher left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_sharing_a_stream_are_multiplexed_and_canceled_alone() {
    let s = start().await;
    let mut c = client(&s).await;
    let mut stream = c.watch("a", None).await.unwrap();
    let a = next(&mut stream).await.watch_id();
    stream.watch("b", None).await.unwrap();
    stream.watch("c", None).await.unwrap();
    let mut created = Vec::new();
    for _ in 0..2 {
        let r = next(&mut stream).await;
        assert!(r.created(), "{r:?}");
        created.push(r.watch_id());
    }
    let (b, w_c) = (created[0], created[1]);
    assert!(a != b && b != w_c && a != w_c, "{a} {b} {w_c}");
    for k in ["a", "b", "c"] {
        c.put(k, "1", None).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let r = next(&mut stream).await;
        for e in r.events() {
            got.push((r.watch_id(), e.kv().unwrap().key_str().unwrap().to_string()));
        }
    }
    got.sort();
    let mut want = vec![(a, "a".to_string()), (b, "b".into()), (w_c, "c".into())];
    want.sort();
    assert_eq!(got, want);
    stream.cancel(b).await.unwrap();
    let r = next(&mut stream).await;
    assert!(r.canceled() && r.watch_id() == b, "{r:?}");
    stream.cancel(99).await.unwrap();
    c.put("b", "2", None).await.unwrap();
    c.put("c", "2", None).await.unwrap();
    let r = next(&mut stream).await;
    assert_eq!(
        r.watch_id(),
        w_c,
        "only c's watcher is left for these keys: {r:?}"
    );
    assert_eq!(r.events()[0].kv().unwrap().value(), b"2");
    stream.request_progress().await.unwrap();
    let mut progressed = Vec::new();
    while progressed.len() < 2 {
        let r = next(&mut stream).await;
        assert!(r.events().is_empty() && !r.canceled(), "{r:?}");
        assert_eq!(r.header().unwrap().revision(), 6, "{r:?}");
        progressed.push(r.watch_id());
    }
    progressed.sort();
    let mut want = vec![a, w_c];
    want.sort();
    assert_eq!(progressed, want);
    let _ = s.stop.send(());
}

/// A watch stream the client drops ends on the server: the store's watchers behind it are
/// released, with no event ever written to them (so nothing but the client leaving ends them).
/// Fails if the server keeps serving a stream whose request side ended or was reset.
#[tokio::test]
async fn watch_streams_the_client_drops_are_released() {
    let s = start().await;
    let mut c = client(&s).await;
    let mut streams = Vec::new();
    for k in ["x", "y", "z"] {
        let mut stream = c.watch(k, None).await.unwrap();
        assert!(next(&mut stream).await.created());
        streams.push(stream);
    }
    assert_eq!(s.store.stats().watchers, 3);
    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.store.stats().watchers > 0 {
        assert!(
            Instant::now() < deadline,
            "{} watchers still registered 5 s after their streams were dropped",
            s.store.stats().watchers
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The connection is still good.
    c.put("x", "1", None).await.unwrap();
    let _ = s.stop.send(());
}

async fn next(stream: &mut etcd_client::WatchStream) -> etcd_client::WatchResponse {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a watch response in time")
        .unwrap()
        .expect("the stream goes on")
}

/// `Maintenance.Snapshot` streams the store's backup in etcd's framing (zeros to a multiple of
/// 512 bytes, then the SHA-256 of everything before it, as `etcdctl snapshot save` requires),
/// which restores to the same state; `Defragment` answers with the revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_streams_a_framed_backup_that_restores() {
    use sha2::Digest;
    use weft_store::{Store, StoreExt};
    let s = start().await;
    let mut c = client(&s).await;
    for i in 0..300 {
        c.put(format!("k/{i}"), vec![b'v'; 700], None)
            .await
            .unwrap();
    }
    let rev = s.store.status().await.unwrap().header.revision;
    let mut stream = c.maintenance_client().snapshot().await.unwrap();
    let mut bytes = Vec::new();
    let mut messages = 0;
    while let Some(m) = stream.message().await.unwrap() {
        assert_eq!(m.header().unwrap().revision(), rev);
        bytes.extend_from_slice(m.blob());
        messages += 1;
    }
    assert!(messages > 1, "200 KB come in more than one message");
    assert_eq!(bytes.len() % 512, 32, "etcdctl checks this");
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    assert_eq!(&sha2::Sha256::digest(body)[..], sum);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    std::fs::write(&file, &bytes).unwrap();
    weft_store::embedded::restore(&file, dir.path().join("data")).unwrap();
    let r = weft_store::embedded::Embedded::open(dir.path().join("data"), Default::default())
        .await
        .unwrap();
    assert_eq!(
        r.hash_kv(rev).await.unwrap().hash,
        s.store.hash_kv(rev).await.unwrap().hash
    );
    assert_eq!(r.get("k/299").await.unwrap().unwrap().value.len(), 700);
    let d = c.maintenance_client().defragment().await.unwrap();
    assert_eq!(d.header().unwrap().revision(), rev);
    // Hash: the state's hash, equal on equal states and changed by a write.
    let h1 = c.maintenance_client().hash().await.unwrap().hash();
    assert_eq!(h1, s.store.hash_kv(0).await.unwrap().hash);
    assert_eq!(
        h1,
        r.hash_kv(0).await.unwrap().hash,
        "the restored copy hashes alike"
    );
    c.put("k/new", "v", None).await.unwrap();
    assert_ne!(c.maintenance_client().hash().await.unwrap().hash(), h1);
    // The one member lists a peer URL.
    let m = c.member_list().await.unwrap();
    assert_eq!(m.members().len(), 1);
    assert_eq!(m.members()[0].peer_urls(), std::slice::from_ref(&s.url));
    let _ = s.stop.send(());
}

/// A client address holds at most `max_conns_per_client` connections: one more is closed at
/// once, and a slot comes back when one of its connections ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_client_are_limited() {
    use tokio::io::AsyncReadExt;
    for threads in [0, 2] {
        let s = common::start_limited(threads, 3).await;
        let mut c = client(&s).await; // one connection
        c.put("k", "v", None).await.unwrap();
        let addr = s.url.trim_start_matches("http://").to_string();
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
        }
        // The fourth is accepted by the kernel and closed by the server.
        let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
            .await
            .expect("the server closes the extra connection")
            .unwrap_or(0);
        assert_eq!(n, 0, "threads {threads}: the fourth connection is closed");
        // The first three still work; when one goes, another may come.
        c.put("k", "v2", None).await.unwrap();
        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut again = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let r = tokio::time::timeout(Duration::from_millis(300), again.read(&mut buf)).await;
            if r.is_err() {
                break; // still open: admitted
            }
            assert!(
                Instant::now() < deadline,
                "threads {threads}: no slot came back"
            );
        }
        let _ = s.stop.send(());
    }
}

/// A client over `max_requests_per_client` gets `RESOURCE_EXHAUSTED` on unary calls (fast
/// path and tonic's) and on the JSON gateway (429), then gets through again after a pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_client_are_limited() {
    let s = common::start_rate(2, 0, Default::default(), 2.0).await;
    let mut c = client(&s).await;
    let mut refused = 0;
    let mut last = None;
    for i in 0..20 {
        // Puts take the fast path, leases tonic's.
        let r = match i % 2 {
            0 => c.put("k", "v", None).await.map(|_| ()),
            _ => c.lease_grant(10, None).await.map(|_| ()),
        };
        if let Err(etcd_client::Error::GRpcStatus(st)) = r {
            assert_eq!(st.code(), tonic::Code::ResourceExhausted, "{st:?}");
            refused += 1;
            last = Some(st.message().to_owned());
        }
    }
    assert!(refused >= 10, "{refused} of 20 refused");
    assert!(last.unwrap().contains("too many requests"));
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v3/kv/range", s.url))
        .body(r#"{"key": "aw=="}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.put("k", "again", None).await.expect("a token came back");
    let _ = s.stop.send(());
}
