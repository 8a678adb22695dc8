//! The commit log's records. Every record is framed by `weft_log` (`len | crc32 | payload`);
//! its payload starts with a tag byte. Integers are little-endian; strings and byte strings
//! are `len: u32 | bytes`; an optional one is a flag byte then the value.
//!
//! A publish is one `MESSAGES` record: `topic: u32, n: u32`, then `n` messages, each framed
//! again (`len | crc32 | message`), so that a batch is written whole or not at all, and one
//! message can be read alone by its position and checked. A message is `partition: u32,
//! offset: u64, time_ms: u64, deliver_at_ms: u64, key: opt bytes, id: opt str, headers: n:
//! u32 (str, str)*, value: bytes`.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::types::Message;

pub(crate) const TOPIC: u8 = 1;
pub(crate) const DELETE_TOPIC: u8 = 2;
pub(crate) const MESSAGES: u8 = 3;
pub(crate) const GROUP: u8 = 4;
pub(crate) const DELETE_GROUP: u8 = 5;
pub(crate) const ACK: u8 = 6;
pub(crate) const DELIVER: u8 = 7;
pub(crate) const NACK: u8 = 8;
pub(crate) const DEAD: u8 = 9;
pub(crate) const TRIM: u8 = 10;
pub(crate) const DEAD_DONE: u8 = 11;
pub(crate) const REQUEUE: u8 = 12;

/// An encoder writing at the end of a buffer.
pub(crate) struct Enc<'a>(pub &'a mut Vec<u8>);

impl Enc<'_> {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    pub fn opt_bytes(&mut self, b: Option<&[u8]>) -> &mut Self {
        match b {
            Some(b) => self.u8(1).bytes(b),
            None => self.u8(0),
        }
    }
    pub fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        self.opt_bytes(s.map(str::as_bytes))
    }
}

/// A decoder over a record payload.
pub(crate) struct Dec<'a> {
    b: &'a [u8],
    at: usize,
}

pub(crate) type DResult<T> = std::result::Result<T, String>;

impl<'a> Dec<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Dec { b, at: 0 }
    }
    fn take(&mut self, n: usize) -> DResult<&'a [u8]> {
        if self.b.len() - self.at < n {
            return Err(format!(
                "record ends at byte {} of {}, {n} more expected",
                self.at,
                self.b.len()
            ));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    pub fn take_bytes(&mut self, n: usize) -> DResult<&'a [u8]> {
        self.take(n)
    }
    pub fn u8(&mut self) -> DResult<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> DResult<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub fn u64(&mut self) -> DResult<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    pub fn bytes(&mut self) -> DResult<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn str(&mut self) -> DResult<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }
    pub fn opt_bytes(&mut self) -> DResult<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            f => Err(format!("bad option flag {f}")),
        }
    }
    pub fn opt_str(&mut self) -> DResult<Option<String>> {
        self.opt_bytes()?
            .map(|b| String::from_utf8(b.to_vec()).map_err(|_| "a string is not UTF-8".into()))
            .transpose()
    }
    /// Where the decoder is, from the payload's start.
    pub fn at(&self) -> usize {
        self.at
    }
    pub fn done(&self) -> DResult<()> {
        if self.at != self.b.len() {
            return Err(format!("{} bytes left over", self.b.len() - self.at));
        }
        Ok(())
    }
}

/// One message of a `MESSAGES` record, before it is stored.
pub(crate) struct MsgRec<'a> {
    pub partition: u32,
    pub offset: u64,
    pub time_ms: u64,
    pub deliver_at_ms: u64,
    pub key: Option<&'a [u8]>,
    pub id: Option<&'a str>,
    pub headers: &'a BTreeMap<String, String>,
    pub value: &'a [u8],
}

/// Encodes a framed message at the end of `out`.
pub(crate) fn encode_message(m: &MsgRec<'_>, out: &mut Vec<u8>) {
    let start = weft_log::begin_record(out);
    let mut e = Enc(out);
    e.u32(m.partition)
        .u64(m.offset)
        .u64(m.time_ms)
        .u64(m.deliver_at_ms)
        .opt_bytes(m.key)
        .opt_str(m.id)
        .u32(m.headers.len() as u32);
    for (k, v) in m.headers {
        e.str(k).str(v);
    }
    e.bytes(m.value);
    weft_log::finish_record(out, start);
}

/// The fields of a message the index keeps.
pub(crate) struct MsgHead {
    pub partition: u32,
    pub offset: u64,
    pub time_ms: u64,
    pub deliver_at_ms: u64,
    pub key: Option<u64>,
    pub id: Option<String>,
}

/// Decodes a message's payload (inside its frame).
pub(crate) fn decode_message(payload: &[u8]) -> DResult<(MsgHead, Message)> {
    let mut d = Dec::new(payload);
    let partition = d.u32()?;
    let offset = d.u64()?;
    let time_ms = d.u64()?;
    let deliver_at_ms = d.u64()?;
    let key = d.opt_bytes()?.map(Bytes::copy_from_slice);
    let id = d.opt_str()?;
    let n = d.u32()? as usize;
    let mut headers = BTreeMap::new();
    for _ in 0..n.min(payload.len()) {
        let k = d.str()?;
        headers.insert(k, d.str()?);
    }
    let value = Bytes::copy_from_slice(d.bytes()?);
    d.done()?;
    let head = MsgHead {
        partition,
        offset,
        time_ms,
        deliver_at_ms,
        key: key.as_deref().map(weft_shard::hash),
        id: id.clone(),
    };
    Ok((
        head,
        Message {
            partition,
            offset,
            time_ms,
            key,
            value,
            headers,
            id,
        },
    ))
}

/// Checks a framed message read back from disk at `pos` and decodes it.
pub(crate) fn decode_framed(buf: &[u8], pos: u64) -> DResult<(MsgHead, Message)> {
    if buf.len() < weft_log::RECORD_HEADER {
        return Err(format!("message at log position {pos} is cut short"));
    }
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4")) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4"));
    let payload = &buf[weft_log::RECORD_HEADER..];
    if len != payload.len() || crc32fast::hash(payload) != crc {
        return Err(format!("message at log position {pos} fails its checksum"));
    }
    decode_message(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_and_damage_is_caught() {
        let mut headers = BTreeMap::new();
        headers.insert("h".to_string(), "v".to_string());
        let mut buf = vec![9, 9];
        encode_message(
            &MsgRec {
                partition: 3,
                offset: 42,
                time_ms: 1000,
                deliver_at_ms: 2000,
                key: Some(b"k"),
                id: Some("id-1"),
                headers: &headers,
                value: b"hello",
            },
            &mut buf,
        );
        let (head, m) = decode_framed(&buf[2..], 7).unwrap();
        assert_eq!(
            (head.partition, head.offset, head.deliver_at_ms),
            (3, 42, 2000)
        );
        assert_eq!(head.key, Some(weft_shard::hash(b"k")));
        assert_eq!(m.value, "hello");
        assert_eq!(m.headers, headers);
        assert_eq!(m.id.as_deref(), Some("id-1"));
        let mut bad = buf[2..].to_vec();
        let n = bad.len();
        bad[n - 1] ^= 1;
        let err = decode_framed(&bad, 7).err().unwrap();
        assert!(
            err.contains("position 7") && err.contains("checksum"),
            "{err}"
        );
    }
}
