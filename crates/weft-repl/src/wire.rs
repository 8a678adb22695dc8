//! The replication protocol's frames, after the HTTP upgrade of `GET /v1/repl/stream`.
//!
//! Every frame is `len: u32 | tag: u8 | fields`, little endian, `len` counting the tag and
//! the fields. Byte strings are `len: u32 | bytes`. The primary sends records, heartbeats,
//! replies to forwarded writes and hash requests; the replica sends acknowledgements,
//! forwarded writes and hashes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest frame accepted: a group of records from the primary's feed or log files is cut
/// well below it.
pub const MAX_FRAME: usize = 256 << 20;

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Framed log records; once durable on the replica, everything up to the primary's
    /// sequence number `upto_seq` is held there.
    Records {
        /// The sender's epoch (its term as primary).
        epoch: u64,
        /// The primary's sequence number the records reach.
        upto_seq: u64,
        /// The primary's durable revision when sent.
        primary_rev: i64,
        /// The records, as framed in the log.
        bytes: Bytes,
    },
    /// Sent when idle: the primary's durable point.
    Heartbeat {
        /// The sender's epoch.
        epoch: u64,
        /// Durable sequence number.
        seq: u64,
        /// Durable revision.
        rev: i64,
        /// The newest revision acknowledged to a client under a policy that waited for
        /// replicas (what `weft promote` must not fall behind).
        acked: i64,
    },
    /// The primary no longer holds the log the replica needs (a snapshot replaced it).
    NeedSnapshot {
        /// The replica's revision.
        rev: i64,
    },
    /// The replica holds, durably, everything up to the primary's `seq` (revision `rev`).
    Ack {
        /// The primary's sequence number.
        seq: u64,
        /// The revision.
        rev: i64,
    },
    /// A write sent to the replica, forwarded (JSON of `forward::Op`).
    Forward {
        /// Matches the reply.
        id: u64,
        /// The request.
        body: Bytes,
    },
    /// The primary's answer to a forwarded write (JSON).
    Reply {
        /// The forward's id.
        id: u64,
        /// The answer.
        body: Bytes,
    },
    /// The primary asks for the replica's `hash_kv` at `rev`.
    HashAsk {
        /// The revision.
        rev: i64,
    },
    /// The replica's answer: its hash at `rev`, or why it has none.
    Hash {
        /// The revision.
        rev: i64,
        /// The hash (when `error` is empty).
        hash: u32,
        /// Why there is no hash (compacted, ...), or empty.
        error: String,
    },
}

impl Frame {
    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32_le(0);
        match self {
            Frame::Records {
                epoch,
                upto_seq,
                primary_rev,
                bytes,
            } => {
                out.put_u8(1);
                out.put_u64_le(*epoch);
                out.put_u64_le(*upto_seq);
                out.put_i64_le(*primary_rev);
                put_bytes(out, bytes);
            }
            Frame::Heartbeat {
                epoch,
                seq,
                rev,
                acked,
            } => {
                out.put_u8(2);
                out.put_u64_le(*epoch);
                out.put_u64_le(*seq);
                out.put_i64_le(*rev);
                out.put_i64_le(*acked);
            }
            Frame::NeedSnapshot { rev } => {
                out.put_u8(3);
                out.put_i64_le(*rev);
            }
            Frame::Ack { seq, rev } => {
                out.put_u8(4);
                out.put_u64_le(*seq);
                out.put_i64_le(*rev);
            }
            Frame::Forward { id, body } => {
                out.put_u8(5);
                out.put_u64_le(*id);
                put_bytes(out, body);
            }
            Frame::Reply { id, body } => {
                out.put_u8(6);
                out.put_u64_le(*id);
                put_bytes(out, body);
            }
            Frame::HashAsk { rev } => {
                out.put_u8(7);
                out.put_i64_le(*rev);
            }
            Frame::Hash { rev, hash, error } => {
                out.put_u8(8);
                out.put_i64_le(*rev);
                out.put_u32_le(*hash);
                put_bytes(out, error.as_bytes());
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Decodes a frame's tag and fields (what follows the length).
    pub fn decode(mut b: Bytes) -> Result<Frame, String> {
        let tag = take_u8(&mut b)?;
        let f = match tag {
            1 => Frame::Records {
                epoch: take_u64(&mut b)?,
                upto_seq: take_u64(&mut b)?,
                primary_rev: take_u64(&mut b)? as i64,
                bytes: take_bytes(&mut b)?,
            },
            2 => Frame::Heartbeat {
                epoch: take_u64(&mut b)?,
                seq: take_u64(&mut b)?,
                rev: take_u64(&mut b)? as i64,
                acked: take_u64(&mut b)? as i64,
            },
            3 => Frame::NeedSnapshot {
                rev: take_u64(&mut b)? as i64,
            },
            4 => Frame::Ack {
                seq: take_u64(&mut b)?,
                rev: take_u64(&mut b)? as i64,
            },
            5 => Frame::Forward {
                id: take_u64(&mut b)?,
                body: take_bytes(&mut b)?,
            },
            6 => Frame::Reply {
                id: take_u64(&mut b)?,
                body: take_bytes(&mut b)?,
            },
            7 => Frame::HashAsk {
                rev: take_u64(&mut b)? as i64,
            },
            8 => Frame::Hash {
                rev: take_u64(&mut b)? as i64,
                hash: take_u32(&mut b)?,
                error: String::from_utf8(take_bytes(&mut b)?.to_vec())
                    .map_err(|_| "hash error is not UTF-8".to_string())?,
            },
            t => return Err(format!("unknown frame tag {t}")),
        };
        if b.has_remaining() {
            return Err(format!(
                "{} bytes after a frame of tag {tag}",
                b.remaining()
            ));
        }
        Ok(f)
    }
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

fn need(b: &Bytes, n: usize) -> Result<(), String> {
    match b.remaining() >= n {
        true => Ok(()),
        false => Err(format!(
            "frame ends early: {n} bytes needed, {} left",
            b.remaining()
        )),
    }
}

fn take_u8(b: &mut Bytes) -> Result<u8, String> {
    need(b, 1)?;
    Ok(b.get_u8())
}

fn take_u32(b: &mut Bytes) -> Result<u32, String> {
    need(b, 4)?;
    Ok(b.get_u32_le())
}

fn take_u64(b: &mut Bytes) -> Result<u64, String> {
    need(b, 8)?;
    Ok(b.get_u64_le())
}

fn take_bytes(b: &mut Bytes) -> Result<Bytes, String> {
    let n = take_u32(b)? as usize;
    need(b, n)?;
    Ok(b.split_to(n))
}

/// Reads one frame; `Ok(None)` at a clean end of the stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(bad(format!(
            "frame length {len} (allowed: 1..={MAX_FRAME})"
        )));
    }
    let mut buf = BytesMut::zeroed(len);
    r.read_exact(&mut buf).await?;
    Frame::decode(buf.freeze()).map(Some).map_err(bad)
}

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Frame> {
        vec![
            Frame::Records {
                epoch: 3,
                upto_seq: 7,
                primary_rev: 9,
                bytes: Bytes::from_static(b"recs"),
            },
            Frame::Heartbeat {
                epoch: 3,
                seq: 1,
                rev: 2,
                acked: 2,
            },
            Frame::NeedSnapshot { rev: 3 },
            Frame::Ack { seq: 4, rev: 5 },
            Frame::Forward {
                id: 6,
                body: Bytes::from_static(b"{}"),
            },
            Frame::Reply {
                id: 6,
                body: Bytes::from_static(b"[]"),
            },
            Frame::HashAsk { rev: 8 },
            Frame::Hash {
                rev: 8,
                hash: 0xdead,
                error: "compacted".into(),
            },
        ]
    }

    #[tokio::test]
    async fn frames_round_trip_through_a_stream() {
        let mut out = BytesMut::new();
        for f in all() {
            f.encode(&mut out);
        }
        let mut r = &out[..];
        for f in all() {
            assert_eq!(read_frame(&mut r).await.unwrap(), Some(f));
        }
        assert_eq!(read_frame(&mut r).await.unwrap(), None);
    }

    #[test]
    fn every_truncation_and_unknown_tag_is_an_error() {
        for f in all() {
            let mut out = BytesMut::new();
            f.encode(&mut out);
            let body = out.split_off(4).freeze();
            for cut in 0..body.len() {
                assert!(
                    Frame::decode(body.slice(..cut)).is_err(),
                    "{f:?} cut at {cut}"
                );
            }
            let mut long = body.to_vec();
            long.push(0);
            assert!(Frame::decode(long.into()).is_err());
        }
        assert!(Frame::decode(Bytes::from_static(&[99]))
            .unwrap_err()
            .contains("unknown"));
    }

    #[tokio::test]
    async fn oversize_and_empty_frames_are_refused() {
        let mut r = &((MAX_FRAME as u32 + 1).to_le_bytes())[..];
        assert!(read_frame(&mut r).await.is_err());
        let mut r = &0u32.to_le_bytes()[..];
        assert!(read_frame(&mut r).await.is_err());
    }
}
