//! The HTTP/2 server of the etcd API, and its fast path for the unary KV methods (Range, Put,
//! DeleteRange, Txn): the gRPC message is decoded, handed to the same [`PbKvService`] method
//! tonic would call, and the reply is written as one data frame plus `grpc-status: 0`
//! trailers, skipping tonic's per-request layers (router, codec streams, response body
//! machinery). Everything else (watch and keep-alive streams, the other services, compressed
//! requests) goes to tonic's [`Routes`] unchanged. Served straight on the `h2` crate, a put
//! cost 27–35 µs of server CPU against 42–43 µs through tonic (`examples/h2_put.rs`); this
//! path keeps hyper for the connection (flow control, pings, GOAWAY) and drops tonic's part:
//! 45–55 µs against 60–71 µs per put through tonic, in alternating rounds on a slow machine.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use etcd_client::proto::*;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message;
use tonic::service::Routes;
use tonic::Status;
use tower::ServiceExt;

use crate::EtcdApi;

/// Largest request message the fast path reads, as tonic's default decoding limit.
const MAX_MESSAGE: usize = 4 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Range,
    Put,
    DeleteRange,
    Txn,
}

/// The fast-path method for `req`, if it takes the fast path: a unary KV method with an
/// uncompressed message.
pub(crate) fn method<B>(req: &Request<B>) -> Option<Method> {
    let m = match req.uri().path() {
        "/etcdserverpb.KV/Range" => Method::Range,
        "/etcdserverpb.KV/Put" => Method::Put,
        "/etcdserverpb.KV/DeleteRange" => Method::DeleteRange,
        "/etcdserverpb.KV/Txn" => Method::Txn,
        _ => return None,
    };
    let identity = req
        .headers()
        .get("grpc-encoding")
        .is_none_or(|e| e.as_bytes() == b"identity");
    identity.then_some(m)
}

/// One gRPC reply: a data frame, then the trailers.
pub(crate) struct Unary {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// The body of a reply on this server: the fast path's, unboxed, or tonic's.
pub(crate) enum Body {
    Fast(Unary),
    Tonic(tonic::body::Body),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self.get_mut() {
            Body::Fast(u) => Pin::new(u).poll_frame(cx).map_err(|e| match e {}),
            Body::Tonic(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Fast(u) => u.is_end_stream(),
            Body::Tonic(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Body::Fast(u) => u.size_hint(),
            Body::Tonic(b) => b.size_hint(),
        }
    }
}

fn reply<M: Message>(r: tonic::Response<M>) -> Result<Response<Body>, Status> {
    let msg = r.into_inner();
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    msg.encode(&mut buf)
        .map_err(|_| Status::internal("cannot encode the response"))?;
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut resp = Response::new(Body::Fast(Unary {
        data: Some(buf.freeze()),
        trailers: Some(trailers),
    }));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    Ok(resp)
}

/// The message of a unary gRPC request body: one uncompressed length-prefixed message.
pub(crate) fn message(body: &Bytes) -> Result<Bytes, Status> {
    if body.len() < 5 {
        return Err(Status::internal("malformed gRPC request: no message"));
    }
    if body[0] != 0 {
        return Err(Status::unimplemented(
            "compressed messages need a grpc-encoding header",
        ));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(Status::out_of_range(format!(
            "message is {len} bytes, at most {MAX_MESSAGE} are allowed"
        )));
    }
    if body.len() != 5 + len {
        return Err(Status::internal(format!(
            "malformed gRPC request: a unary call carries one message of {len} bytes, got {} bytes",
            body.len() - 5
        )));
    }
    Ok(body.slice(5..))
}

fn decode<M: Message + Default>(b: Bytes) -> Result<tonic::Request<M>, Status> {
    M::decode(b)
        .map(tonic::Request::new)
        .map_err(|e| Status::internal(format!("cannot decode the request: {e}")))
}

async fn call(api: EtcdApi, m: Method, req: Request<Incoming>) -> Response<Body> {
    dispatch(&api, m, req)
        .await
        .unwrap_or_else(|s| s.into_http().map(Body::Tonic))
}

async fn dispatch(
    api: &EtcdApi,
    m: Method,
    req: Request<Incoming>,
) -> Result<Response<Body>, Status> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_MESSAGE + 5);
    let body = limited.collect().await.map_err(|e| {
        Status::out_of_range(format!(
            "cannot read the request (at most {MAX_MESSAGE} bytes): {e}"
        ))
    })?;
    let msg = message(&body.to_bytes())?;
    match m {
        Method::Range => reply(PbKvService::range(api, decode(msg)?).await?),
        Method::Put => reply(PbKvService::put(api, decode(msg)?).await?),
        Method::DeleteRange => reply(PbKvService::delete_range(api, decode(msg)?).await?),
        Method::Txn => reply(PbKvService::txn(api, decode(msg)?).await?),
    }
}

/// The per-connection service: the fast path, or tonic.
#[derive(Clone)]
pub(crate) struct Svc {
    pub api: EtcdApi,
    pub routes: Routes,
    /// The connection's executor, told which calls run in the connection's task.
    pub exec: crate::local::ConnExec,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Svc {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let m = method(&req);
        self.exec.next_is_local(m.is_some());
        match m {
            Some(m) => {
                let api = self.api.clone();
                Box::pin(async move { Ok(call(api, m, req).await) })
            }
            None => {
                let routes = self.routes.clone();
                Box::pin(async move {
                    let resp = routes.oneshot(req.map(tonic::body::Body::new)).await?;
                    Ok(resp.map(Body::Tonic))
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unary_messages_are_checked() {
        let frame = |flag: u8, len: u32, payload: &[u8]| {
            let mut b = vec![flag];
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(payload);
            Bytes::from(b)
        };
        assert_eq!(message(&frame(0, 3, b"abc")).unwrap(), Bytes::from("abc"));
        assert_eq!(message(&frame(0, 0, b"")).unwrap(), Bytes::new());
        let bad = [
            (Bytes::from_static(b"\0\0"), tonic::Code::Internal),
            (frame(1, 3, b"abc"), tonic::Code::Unimplemented),
            (frame(0, 4, b"abc"), tonic::Code::Internal),
            (frame(0, 2, b"abc"), tonic::Code::Internal),
            (
                frame(0, (MAX_MESSAGE + 1) as u32, b""),
                tonic::Code::OutOfRange,
            ),
        ];
        for (b, code) in bad {
            assert_eq!(message(&b).unwrap_err().code(), code, "{b:?}");
        }
    }

    #[test]
    fn only_uncompressed_unary_kv_calls_take_the_fast_path() {
        let req = |path: &str, enc: Option<&'static str>| {
            let mut r = Request::builder().uri(format!("http://x{path}"));
            if let Some(e) = enc {
                r = r.header("grpc-encoding", e);
            }
            r.body(()).unwrap()
        };
        assert_eq!(
            method(&req("/etcdserverpb.KV/Put", None)),
            Some(Method::Put)
        );
        assert_eq!(
            method(&req("/etcdserverpb.KV/Txn", Some("identity"))),
            Some(Method::Txn)
        );
        assert_eq!(method(&req("/etcdserverpb.KV/Range", Some("gzip"))), None);
        assert_eq!(method(&req("/etcdserverpb.KV/Compact", None)), None);
        assert_eq!(method(&req("/etcdserverpb.Watch/Watch", None)), None);
        assert_eq!(method(&req("/etcdserverpb.KV/RangeStream", None)), None);
    }
}
