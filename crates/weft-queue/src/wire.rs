//! Binary frames of the node's HTTP API, for clients that move many messages: a publish
//! stream (`POST /v1/queue/publish/stream` with `content-type: application/octet-stream`)
//! and pulled deliveries (`POST /v1/queue/pull` with `accept: application/octet-stream`).
//! Values travel as raw bytes, not base64 inside JSON.
//!
//! - A publish frame: `len: u32 LE | key_len: u32 LE | key | value`, `len` counting what
//!   follows it ([`publish_frame`]).
//! - A delivery frame: `len: u32 LE | meta_len: u32 LE | meta | value`, where `meta` is the
//!   [`Delivery`] as JSON without its value ([`delivery_frame`], [`decode_deliveries`]).
//!
//! ```
//! use weft_queue::{wire, Delivery, Message};
//! let d = Delivery {
//!     message: Message {
//!         partition: 1, offset: 7, time_ms: 5, key: None, value: "hello".into(),
//!         headers: Default::default(), id: None,
//!     },
//!     delivery: 1, receipt: "1-7-1".into(), ack_deadline_ms: 9,
//! };
//! let mut buf = Vec::new();
//! wire::delivery_frame(&d, &mut buf);
//! assert_eq!(wire::decode_deliveries(&buf)?, vec![d]);
//! # Ok::<(), weft_queue::QueueError>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Delivery, Message, QueueError, Result};

/// The media type of both binary forms.
pub const BINARY: &str = "application/octet-stream";

/// Largest frame either way (64 MiB).
pub const MAX_FRAME: usize = 64 << 20;

/// Appends one publish frame.
pub fn publish_frame(key: Option<&[u8]>, value: &[u8], out: &mut Vec<u8>) {
    let key = key.unwrap_or_default();
    out.reserve(8 + key.len() + value.len());
    out.extend_from_slice(&((4 + key.len() + value.len()) as u32).to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

#[derive(Serialize, Deserialize)]
struct Meta<'a> {
    partition: u32,
    offset: u64,
    time_ms: u64,
    #[serde(with = "crate::types::opt_bytes", default)]
    key: Option<Bytes>,
    #[serde(borrow, default)]
    headers: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    delivery: u32,
    #[serde(borrow)]
    receipt: Cow<'a, str>,
    ack_deadline_ms: u64,
}

/// Appends one delivery frame.
pub fn delivery_frame(d: &Delivery, out: &mut Vec<u8>) {
    let m = &d.message;
    let meta = Meta {
        partition: m.partition,
        offset: m.offset,
        time_ms: m.time_ms,
        key: m.key.clone(),
        headers: m
            .headers
            .iter()
            .map(|(k, v)| (Cow::from(k.as_str()), Cow::from(v.as_str())))
            .collect(),
        id: m.id.as_deref().map(Cow::from),
        delivery: d.delivery,
        receipt: Cow::from(d.receipt.as_str()),
        ack_deadline_ms: d.ack_deadline_ms,
    };
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    serde_json::to_writer(&mut *out, &meta).expect("a Vec takes any JSON");
    let meta_len = out.len() - start - 8;
    out.extend_from_slice(&m.value);
    let len = out.len() - start - 4;
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&(meta_len as u32).to_le_bytes());
}

fn u32_at(buf: &[u8], at: usize) -> usize {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize
}

/// Decodes a body of delivery frames; a partial or malformed frame is an error that says
/// at which byte.
pub fn decode_deliveries(buf: &[u8]) -> Result<Vec<Delivery>> {
    let bad = |at: usize, what: String| {
        QueueError::Invalid(format!("delivery frame at byte {at}: {what}"))
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        if buf.len() - at < 8 {
            return Err(bad(
                at,
                format!("{} bytes, a frame needs 8 or more", buf.len() - at),
            ));
        }
        let len = u32_at(buf, at);
        let meta_len = u32_at(buf, at + 4);
        if !(4..=MAX_FRAME).contains(&len) || buf.len() - at - 4 < len {
            return Err(bad(
                at,
                format!("length {len} with {} bytes left", buf.len() - at - 4),
            ));
        }
        if meta_len > len - 4 {
            return Err(bad(
                at,
                format!("metadata of {meta_len} bytes in a frame of {len}"),
            ));
        }
        let meta: Meta<'_> = serde_json::from_slice(&buf[at + 8..at + 8 + meta_len])
            .map_err(|e| bad(at, format!("metadata: {e}")))?;
        let value = Bytes::copy_from_slice(&buf[at + 8 + meta_len..at + 4 + len]);
        out.push(Delivery {
            message: Message {
                partition: meta.partition,
                offset: meta.offset,
                time_ms: meta.time_ms,
                key: meta.key,
                value,
                headers: meta
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
                id: meta.id.map(Cow::into_owned),
            },
            delivery: meta.delivery,
            receipt: meta.receipt.into_owned(),
            ack_deadline_ms: meta.ack_deadline_ms,
        });
        at += 4 + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(value: &str, key: Option<&str>) -> Delivery {
        Delivery {
            message: Message {
                partition: 2,
                offset: 40,
                time_ms: 1_700_000_000_000,
                key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
                value: Bytes::copy_from_slice(value.as_bytes()),
                headers: [("a\"b".to_string(), "ü\n".to_string())].into(),
                id: Some("id-1".into()),
            },
            delivery: 3,
            receipt: "2-40-3".into(),
            ack_deadline_ms: 1_700_000_030_000,
        }
    }

    #[test]
    fn deliveries_round_trip() {
        let ds = vec![
            delivery("", None),
            delivery("x\0y", Some("k")),
            delivery("v", Some("")),
        ];
        let mut buf = Vec::new();
        for d in &ds {
            delivery_frame(d, &mut buf);
        }
        assert_eq!(decode_deliveries(&buf).unwrap(), ds);
    }

    #[test]
    fn damaged_bodies_are_refused_with_the_byte() {
        let mut buf = Vec::new();
        delivery_frame(&delivery("abc", None), &mut buf);
        let one = buf.len();
        delivery_frame(&delivery("abc", None), &mut buf);
        for cut in [one + 3, buf.len() - 1] {
            let e = decode_deliveries(&buf[..cut]).unwrap_err().to_string();
            assert!(e.contains(&format!("at byte {one}")), "{e}");
        }
        let mut bad = buf.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_deliveries(&bad)
            .unwrap_err()
            .to_string()
            .contains("metadata of"));
        let mut bad = buf.clone();
        bad[8] = b'[';
        assert!(decode_deliveries(&bad)
            .unwrap_err()
            .to_string()
            .contains("metadata:"));
    }

    #[test]
    fn publish_frames_carry_key_and_value() {
        let mut buf = Vec::new();
        publish_frame(Some(b"key"), b"value", &mut buf);
        assert_eq!(u32_at(&buf, 0), 4 + 3 + 5);
        assert_eq!(u32_at(&buf, 4), 3);
        assert_eq!(&buf[8..], b"keyvalue");
    }
}
