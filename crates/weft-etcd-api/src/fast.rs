//! The fast path for the unary KV methods (Range, Put, DeleteRange, Txn): the gRPC message is
//! decoded, handed to the same `EtcdApi::kv_*` method tonic's service delegates to, and the
//! reply is written as one data frame plus `grpc-status: 0` trailers, skipping tonic's
//! per-request layers (router, codec streams, response body machinery, `async_trait`'s boxed
//! future). Everything else (watch and keep-alive streams, the other services, compressed
//! requests) goes to tonic's `Routes` unchanged (`weft_h2`). Measured when it was added: 45–55
//! µs of server CPU per put against 60–71 µs through tonic, in alternating rounds on a slow
//! machine (docs/runs/etcd-api.md, "unary KV calls without tonic's per-request layers").

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tonic::Status;

use crate::EtcdApi;

/// Largest request message the fast path reads, as tonic's default decoding limit.
pub(crate) const MAX_MESSAGE: usize = 4 << 20;

/// The fast-path methods; their discriminants are the ids `weft_h2` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Range = 0,
    Put = 1,
    DeleteRange = 2,
    Txn = 3,
}

impl weft_h2::FastPath for EtcdApi {
    fn method(&self, path: &[u8], grpc_encoding: Option<&[u8]>) -> Option<u32> {
        // With auth enabled, calls need their `token` metadata: tonic's path reads it.
        if self.auth.enabled() {
            return None;
        }
        method_of(path, grpc_encoding).map(|m| m as u32)
    }
    fn max_message(&self) -> usize {
        MAX_MESSAGE
    }
}

/// A fast-path call for `weft_h2::serve`: the method id `weft_h2` got from
/// [`method_of`] (through `FastPath::method`), and the request's gRPC frame.
pub(crate) async fn call(api: EtcdApi, method: u32, frame: Bytes) -> Result<Bytes, Status> {
    let m = match method {
        0 => Method::Range,
        1 => Method::Put,
        2 => Method::DeleteRange,
        3 => Method::Txn,
        other => return Err(Status::internal(format!("no fast-path method {other}"))),
    };
    dispatch(&api, m, frame).await
}

/// The fast-path method for a request to `path` with `grpc-encoding` `encoding`, if it takes
/// the fast path: a unary KV method with an uncompressed message.
pub(crate) fn method_of(path: &[u8], encoding: Option<&[u8]>) -> Option<Method> {
    let m = match path {
        b"/etcdserverpb.KV/Range" => Method::Range,
        b"/etcdserverpb.KV/Put" => Method::Put,
        b"/etcdserverpb.KV/DeleteRange" => Method::DeleteRange,
        b"/etcdserverpb.KV/Txn" => Method::Txn,
        _ => return None,
    };
    encoding.is_none_or(|e| e == b"identity").then_some(m)
}

/// Encodes `msg` as the one length-prefixed message of a gRPC reply.
fn reply<M: Message>(msg: M) -> Result<Bytes, Status> {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    msg.encode(&mut buf)
        .map_err(|_| Status::internal("cannot encode the response"))?;
    Ok(buf.freeze())
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

fn decode<M: Message + Default>(b: Bytes) -> Result<M, Status> {
    M::decode(b).map_err(|e| Status::internal(format!("cannot decode the request: {e}")))
}

/// Serves one fast-path call on `body` (the request's gRPC message with its prefix): the
/// reply's message with its prefix, or the status to answer with.
pub(crate) async fn dispatch(api: &EtcdApi, m: Method, body: Bytes) -> Result<Bytes, Status> {
    api.admit()?;
    let msg = message(&body)?;
    // Auth enabled after this call was routed here: it has no token to show.
    let who = api.auth.identify(None).map_err(crate::auth_status)?;
    match m {
        Method::Range => reply(api.kv_range(&who, decode(msg)?).await?),
        Method::Put => reply(api.kv_put(&who, decode(msg)?).await?),
        Method::DeleteRange => reply(api.kv_delete(&who, decode(msg)?).await?),
        Method::Txn => reply(api.kv_txn(&who, decode(msg)?).await?),
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
        let m = |path: &str, enc: Option<&str>| method_of(path.as_bytes(), enc.map(str::as_bytes));
        assert_eq!(m("/etcdserverpb.KV/Put", None), Some(Method::Put));
        assert_eq!(
            m("/etcdserverpb.KV/Txn", Some("identity")),
            Some(Method::Txn)
        );
        assert_eq!(m("/etcdserverpb.KV/Range", Some("gzip")), None);
        assert_eq!(m("/etcdserverpb.KV/Compact", None), None);
        assert_eq!(m("/etcdserverpb.Watch/Watch", None), None);
        assert_eq!(m("/etcdserverpb.KV/RangeStream", None), None);
    }
}
