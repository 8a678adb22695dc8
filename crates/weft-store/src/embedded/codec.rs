//! On-disk encodings: log records and snapshots.
//!
//! Log file: a sequence of records `len: u32 LE | crc32(payload): u32 LE | payload`.
//! Record payload (tag 1, a batch): `rev: i64`, grants `n: u32, (id: i64, ttl: i64)*`,
//! changes `n: u32, (kind: u8, key, [value, lease: i64])*`, revokes `n: u32, id: i64*`,
//! compact `flag: u8, [rev: i64]`. Byte strings are `len: u32 LE | bytes`.
//!
//! Snapshot file: `"WEFTSNP1" | len: u64 | crc32(body): u32 | body`, body =
//! `rev, compact_rev, leases n: u32 (id, ttl)*, keys n: u64 (key, entries n: u32
//! (rev: i64, sub: u32, live: u8, [create: i64, version: i64, lease: i64, value]))*`.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::mvcc::{Batch, Change, Entry, History, IndexKey, Keys, Lease, Mvcc, Snapshot};
use crate::types::KeyValue;

pub(crate) use weft_log::RECORD_HEADER;
const SNAP_MAGIC: &[u8; 8] = b"WEFTSNP1";

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

/// A cursor over a byte slice that reports what ran out.
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

type DResult<T> = std::result::Result<T, String>;

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> DResult<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(format!("truncated: needed {n} bytes at {}", self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> DResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> DResult<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> DResult<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn i64(&mut self) -> DResult<i64> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> DResult<Bytes> {
        let n = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }
    /// Count prefix, checked against the bytes left (each item takes at least `min` bytes).
    fn count(&mut self, n: u64, min: usize) -> DResult<usize> {
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min as u64) > left {
            return Err(format!("count {n} exceeds remaining {left} bytes"));
        }
        Ok(n as usize)
    }
    fn done(&self) -> DResult<()> {
        if self.pos != self.buf.len() {
            return Err(format!("{} trailing bytes", self.buf.len() - self.pos));
        }
        Ok(())
    }
}

/// Encodes a batch as one framed log record.
#[cfg(test)]
pub(crate) fn encode_record(b: &Batch) -> Vec<u8> {
    let mut v = Vec::with_capacity(record_len(b));
    encode_record_into(b, &mut v);
    v
}

/// The length of `encode_record(b)`, without encoding it.
pub(crate) fn record_len(b: &Batch) -> usize {
    let changes: usize = b
        .changes
        .iter()
        .map(|c| match c {
            Change::Put { key, value, .. } => 1 + 4 + key.len() + 4 + value.len() + 8,
            Change::Delete { key } => 1 + 4 + key.len(),
        })
        .sum();
    RECORD_HEADER
        + 1
        + 8
        + 4
        + 16 * b.grants.len()
        + 4
        + changes
        + 4
        + 8 * b.revokes.len()
        + 1
        + if b.compact.is_some() { 8 } else { 0 }
}

/// Appends `b` as one framed log record to `out` (the flusher encodes straight into its
/// write buffer).
pub(crate) fn encode_record_into(b: &Batch, out: &mut Vec<u8>) {
    let start = out.len();
    let mut e = Enc(std::mem::take(out));
    e.0.extend_from_slice(&[0u8; RECORD_HEADER]);
    e.u8(1);
    e.i64(b.rev);
    e.u32(b.grants.len() as u32);
    for (id, ttl) in &b.grants {
        e.i64(*id);
        e.i64(*ttl);
    }
    e.u32(b.changes.len() as u32);
    for c in &b.changes {
        match c {
            Change::Put { key, value, lease } => {
                e.u8(0);
                e.bytes(key);
                e.bytes(value);
                e.i64(*lease);
            }
            Change::Delete { key } => {
                e.u8(1);
                e.bytes(key);
            }
        }
    }
    e.u32(b.revokes.len() as u32);
    for id in &b.revokes {
        e.i64(*id);
    }
    match b.compact {
        Some(c) => {
            e.u8(1);
            e.i64(c);
        }
        None => e.u8(0),
    }
    let mut v = e.0;
    let body = start + RECORD_HEADER;
    let payload_len = (v.len() - body) as u32;
    let crc = crc32fast::hash(&v[body..]);
    v[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    v[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    *out = v;
}

/// Decodes a record payload (already checksummed).
pub(crate) fn decode_batch(payload: &[u8]) -> DResult<Batch> {
    let mut d = Dec::new(payload);
    let tag = d.u8()?;
    if tag != 1 {
        return Err(format!("unknown record type {tag}"));
    }
    let rev = d.i64()?;
    let n = d.u32()?;
    let n = d.count(n as u64, 16)?;
    let mut grants = Vec::with_capacity(n);
    for _ in 0..n {
        grants.push((d.i64()?, d.i64()?));
    }
    let n = d.u32()?;
    let n = d.count(n as u64, 5)?;
    let mut changes = Vec::with_capacity(n);
    for _ in 0..n {
        match d.u8()? {
            0 => {
                let key = d.bytes()?;
                let value = d.bytes()?;
                let lease = d.i64()?;
                changes.push(Change::Put { key, value, lease });
            }
            1 => changes.push(Change::Delete { key: d.bytes()? }),
            k => return Err(format!("unknown change kind {k}")),
        }
    }
    let n = d.u32()?;
    let n = d.count(n as u64, 8)?;
    let mut revokes = Vec::with_capacity(n);
    for _ in 0..n {
        revokes.push(d.i64()?);
    }
    let compact = match d.u8()? {
        0 => None,
        1 => Some(d.i64()?),
        f => return Err(format!("bad compact flag {f}")),
    };
    d.done()?;
    Ok(Batch {
        rev,
        grants,
        changes,
        revokes,
        compact,
    })
}

/// Serializes the whole state (in memory: for tests).
#[cfg(test)]
pub(crate) fn encode_snapshot(m: &Snapshot) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    write_snapshot(m, &mut out, usize::MAX, |_| Ok(())).expect("writing to memory");
    out.into_inner()
}

/// Writes the whole state to `w` (positioned at its start) without holding it all in memory:
/// a placeholder header, the body in pieces of about 1 MiB, then the header with the body's
/// length and checksum over the placeholder. `sync` is called with `w` after every `every`
/// bytes. Returns the total length.
pub(crate) fn write_snapshot<W: std::io::Write + std::io::Seek>(
    m: &Snapshot,
    w: &mut W,
    every: usize,
    mut sync: impl FnMut(&mut W) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    const PIECE: usize = 1 << 20;
    let mut crc = crc32fast::Hasher::new();
    let mut len = 0u64;
    let mut unsynced = 0usize;
    let mut out = |e: &mut Enc, w: &mut W| -> std::io::Result<()> {
        crc.update(&e.0);
        len += e.0.len() as u64;
        w.write_all(&e.0)?;
        unsynced += e.0.len();
        e.0.clear();
        if unsynced >= every {
            unsynced = 0;
            sync(w)?;
        }
        Ok(())
    };
    w.write_all(&[0u8; 20])?;
    let mut e = Enc(Vec::with_capacity(PIECE + (64 << 10)));
    e.i64(m.rev);
    e.i64(m.compact_rev);
    e.u32(m.leases.len() as u32);
    for (id, ttl) in &m.leases {
        e.i64(*id);
        e.i64(*ttl);
    }
    e.u64(m.keys.len() as u64);
    // Keys are encoded a window at a time, in two passes: the first reads what the encoding
    // needs from each entry's key-value (a separate allocation: a cache miss or two each,
    // which were 87 % of the encoder's time) and touches each value's first byte, with no
    // dependency between entries, so the misses overlap; the second encodes from there.
    // A window holds at most `WINDOW` keys and `WINDOW_ENTRIES` entries: a long history is
    // encoded over several windows, so that the pieces written (and synced) stay about
    // `PIECE` long whatever the histories' lengths (one piece per window of keys made a
    // 30 MB write and sync of a state whose 64 keys had 27k revisions each, and the log's
    // own durable writes waited behind it).
    const WINDOW: usize = 32;
    const WINDOW_ENTRIES: usize = 1024;
    let mut keys = m.keys.iter();
    /// A part of one key's history: with the key and the history's length if it starts it.
    type Segment<'a> = (Option<(&'a [u8], usize)>, &'a [Entry]);
    let mut window: Vec<Segment<'_>> = Vec::with_capacity(WINDOW);
    // The key being encoded: its head if not written yet, the parts of its history to go,
    // the current one and how much of it is done.
    type Cursor<'a, P> = (Option<(&'a [u8], usize)>, P, &'a [Entry], usize);
    let mut cur = None;
    /// A live entry's create revision, version, lease and value (`None`: a tombstone).
    type Fields<'a> = Option<(i64, i64, i64, &'a [u8])>;
    let mut fields: Vec<Fields<'_>> = Vec::with_capacity(WINDOW_ENTRIES);
    loop {
        window.clear();
        let mut entries = 0;
        while entries < WINDOW_ENTRIES && window.len() < WINDOW {
            let (head, mut parts, part, done): Cursor<'_, _> = match cur.take() {
                Some(c) => c,
                None => match keys.next() {
                    Some((k, h)) => {
                        let mut parts = h.parts();
                        let first = parts.next().unwrap_or_default();
                        (Some((&k.bytes()[..], h.len())), parts, first, 0)
                    }
                    None => break,
                },
            };
            let n = (part.len() - done).min(WINDOW_ENTRIES - entries);
            window.push((head, &part[done..done + n]));
            entries += n;
            if done + n < part.len() {
                cur = Some((None, parts, part, done + n));
            } else if let Some(next) = parts.next() {
                cur = Some((None, parts, next, 0));
            }
        }
        if window.is_empty() {
            break;
        }
        fields.clear();
        for (_, part) in &window {
            for ent in part.iter() {
                fields.push(ent.kv.as_deref().map(|kv| {
                    std::hint::black_box(kv.value.first().copied());
                    (kv.create_revision, kv.version, kv.lease, &kv.value[..])
                }));
            }
        }
        let mut field = fields.iter();
        for (head, part) in &window {
            if let Some((key, len)) = head {
                e.bytes(key);
                e.u32(*len as u32);
            }
            for ent in part.iter() {
                e.i64(ent.rev);
                e.u32(ent.sub);
                match field.next().expect("one field per entry") {
                    Some((create_revision, version, lease, value)) => {
                        e.u8(1);
                        e.i64(*create_revision);
                        e.i64(*version);
                        e.i64(*lease);
                        e.bytes(value);
                    }
                    None => e.u8(0),
                }
            }
        }
        if e.0.len() >= PIECE {
            out(&mut e, w)?;
        }
    }
    out(&mut e, w)?;
    let mut head = Vec::with_capacity(20);
    head.extend_from_slice(SNAP_MAGIC);
    head.extend_from_slice(&len.to_le_bytes());
    head.extend_from_slice(&crc.finalize().to_le_bytes());
    w.seek(std::io::SeekFrom::Start(0))?;
    w.write_all(&head)?;
    Ok(20 + len)
}

/// Loads a snapshot. Leases get a fresh deadline of `now + ttl` (as etcd does on restart).
pub(crate) fn decode_snapshot(buf: &[u8], now: Instant) -> DResult<Mvcc> {
    if buf.len() < 20 || &buf[..8] != SNAP_MAGIC {
        return Err("not a weft snapshot (bad magic)".into());
    }
    let len = u64::from_le_bytes(buf[8..16].try_into().expect("8")) as usize;
    let crc = u32::from_le_bytes(buf[16..20].try_into().expect("4"));
    let body = &buf[20..];
    if body.len() != len {
        return Err(format!(
            "snapshot body is {} bytes, header says {len}",
            body.len()
        ));
    }
    if crc32fast::hash(body) != crc {
        return Err("snapshot checksum mismatch".into());
    }
    let mut d = Dec::new(body);
    let mut m = Mvcc {
        rev: d.i64()?,
        compact_rev: d.i64()?,
        ..Default::default()
    };
    let n = d.u32()?;
    let n = d.count(n as u64, 16)?;
    for _ in 0..n {
        let id = d.i64()?;
        let ttl = d.i64()?;
        let deadline = super::mvcc::deadline(now, ttl);
        m.leases.insert(
            id,
            Lease {
                ttl,
                deadline,
                keys: BTreeSet::new(),
            },
        );
    }
    let n = d.u64()?;
    let n = d.count(n, 8)?;
    let mut keys = Keys::new();
    for _ in 0..n {
        let key = d.bytes()?;
        let ne = d.u32()?;
        let ne = d.count(ne as u64, 13)?;
        let mut hist = History::default();
        for _ in 0..ne {
            let rev = d.i64()?;
            let sub = d.u32()?;
            let kv = match d.u8()? {
                0 => None,
                1 => Some(Arc::new(KeyValue {
                    key: key.clone(),
                    create_revision: d.i64()?,
                    mod_revision: rev,
                    version: d.i64()?,
                    lease: d.i64()?,
                    value: d.bytes()?,
                })),
                f => return Err(format!("bad entry flag {f}")),
            };
            hist.push(Entry { rev, sub, kv });
        }
        if let Some(kv) = hist.last().and_then(|e| e.kv.as_ref()) {
            if kv.lease != 0 {
                match m.leases.get_mut(&kv.lease) {
                    Some(l) => {
                        l.keys.insert(key.clone());
                    }
                    None => return Err(format!("key attached to unknown lease {}", kv.lease)),
                }
            }
        }
        keys.insert(IndexKey::new(key), Arc::new(hist));
    }
    d.done()?;
    m.keys = keys;
    m.mark_changed();
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_log::{parse_log, LogTail};

    #[test]
    fn batch_roundtrip() {
        let b = Batch {
            rev: 7,
            grants: vec![(5, 10)],
            changes: vec![
                Change::Put {
                    key: "a".into(),
                    value: "1".into(),
                    lease: 5,
                },
                Change::Delete { key: "b".into() },
            ],
            revokes: vec![9],
            compact: Some(3),
        };
        let rec = encode_record(&b);
        let mut seen = Vec::new();
        let tail = parse_log(&rec, |_, p| {
            seen.push(decode_batch(p)?);
            Ok(())
        });
        assert!(matches!(tail, LogTail::Clean { end } if end == rec.len() as u64));
        assert_eq!(seen, vec![b]);
    }

    /// The flusher appends records to a buffer that already holds others, and the log's
    /// rotation threshold counts `record_len` instead of encoded bytes: both must agree with
    /// `encode_record`.
    #[test]
    fn records_encode_in_place_and_their_length_is_known() {
        let batches = [
            Batch {
                rev: 7,
                grants: vec![(5, 10), (6, 20)],
                changes: vec![
                    Change::Put {
                        key: "a".into(),
                        value: vec![7u8; 300].into(),
                        lease: 5,
                    },
                    Change::Delete { key: "bb".into() },
                ],
                revokes: vec![9, 10, 11],
                compact: Some(3),
            },
            Batch {
                rev: 8,
                grants: vec![],
                changes: vec![Change::Put {
                    key: "k".into(),
                    value: Bytes::new(),
                    lease: 0,
                }],
                revokes: vec![],
                compact: None,
            },
            Batch {
                rev: 9,
                grants: vec![],
                changes: vec![],
                revokes: vec![],
                compact: Some(8),
            },
        ];
        let mut buf = Vec::new();
        for b in &batches {
            let before = buf.len();
            encode_record_into(b, &mut buf);
            assert_eq!(&buf[before..], &encode_record(b)[..]);
            assert_eq!(buf.len() - before, record_len(b), "rev {}", b.rev);
        }
        let mut seen = Vec::new();
        let tail = parse_log(&buf, |_, p| {
            seen.push(decode_batch(p)?);
            Ok(())
        });
        assert!(matches!(tail, LogTail::Clean { end } if end == buf.len() as u64));
        assert_eq!(seen, batches.to_vec());
    }

    #[test]
    fn torn_and_corrupt_are_told_apart() {
        let b = Batch {
            rev: 1,
            changes: vec![Change::Delete { key: "k".into() }],
            ..Default::default()
        };
        let rec = encode_record(&b);
        let mut two = rec.clone();
        two.extend_from_slice(&rec);
        // Cut the second record short: torn at the start of the second record.
        let cut = &two[..two.len() - 3];
        assert!(
            matches!(parse_log(cut, |_, _| Ok(())), LogTail::Torn { offset } if offset == rec.len() as u64)
        );
        // Flip a byte in the first record: corrupt, since a valid record follows.
        let mut bad = two.clone();
        bad[RECORD_HEADER + 2] ^= 0xff;
        assert!(matches!(
            parse_log(&bad, |_, _| Ok(())),
            LogTail::Corrupt { offset: 0, .. }
        ));
        // Flip a byte in the last record: torn.
        let mut bad_tail = two.clone();
        let n = bad_tail.len();
        bad_tail[n - 1] ^= 0xff;
        assert!(matches!(
            parse_log(&bad_tail, |_, _| Ok(())),
            LogTail::Torn { .. }
        ));
    }

    /// Direct I/O writes whole blocks: the records are followed by zero padding, which ends
    /// the log cleanly. A record cut short before the padding is torn; zeros inside the log
    /// followed by data, or data after a bad record, are damage.
    #[test]
    fn zero_padding_ends_the_log_and_damage_before_data_is_still_corrupt() {
        let b = Batch {
            rev: 1,
            changes: vec![Change::Delete { key: "k".into() }],
            ..Default::default()
        };
        let rec = encode_record(&b);
        let mut padded = rec.clone();
        padded.extend_from_slice(&rec);
        let data = padded.len() as u64;
        padded.resize(4096, 0);
        let mut n = 0;
        let tail = parse_log(&padded, |_, _| {
            n += 1;
            Ok(())
        });
        assert!(
            matches!(tail, LogTail::Clean { end } if end == data),
            "{tail:?}"
        );
        assert_eq!(n, 2);
        // A padding shorter than a record header is padding too.
        let short = &padded[..rec.len() * 2 + 3];
        assert!(matches!(
            parse_log(short, |_, _| Ok(())),
            LogTail::Clean { end } if end == data
        ));
        // The second record's payload half written (its tail still zero): torn.
        let mut torn = padded.clone();
        torn[rec.len() + RECORD_HEADER + 2..rec.len() * 2].fill(0);
        assert!(matches!(
            parse_log(&torn, |_, _| Ok(())),
            LogTail::Torn { offset } if offset == rec.len() as u64
        ));
        // A torn header whose length is garbage, zeros after it: torn.
        let mut garbage = padded.clone();
        garbage[rec.len()..rec.len() + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        garbage[rec.len() + 4..].fill(0);
        assert!(matches!(
            parse_log(&garbage, |_, _| Ok(())),
            LogTail::Torn { offset } if offset == rec.len() as u64
        ));
        // Data after zeros at a record boundary: corrupt, not the end of the log.
        let mut hole = vec![0u8; RECORD_HEADER + 4];
        hole.extend_from_slice(&rec);
        assert!(matches!(
            parse_log(&hole, |_, _| Ok(())),
            LogTail::Corrupt { offset: 0, .. }
        ));
        // A bad first record followed by a good one inside the padded block: corrupt.
        let mut bad = padded.clone();
        bad[RECORD_HEADER + 2] ^= 0xff;
        assert!(matches!(
            parse_log(&bad, |_, _| Ok(())),
            LogTail::Corrupt { offset: 0, .. }
        ));
    }
}
