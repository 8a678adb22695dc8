//! HPACK (RFC 7541): the decoder for request header blocks, and an encoder for responses.
//!
//! The decoder is complete: indexed fields, literals with and without indexing, the dynamic
//! table with its size updates, Huffman-coded strings (decoded by `httlib-huffman`'s
//! table-driven decoder). Field values are slices of the header block where they are plain.
//!
//! The encoder only indexes what a gRPC server sends on every response
//! (`content-type: application/grpc`, `grpc-status: 0`), so after the first response of a
//! connection those cost the client one byte each to decode; everything else is a literal
//! without indexing and without Huffman coding.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

/// Size the decoder's dynamic table may have (the protocol default; weft does not change it).
pub const TABLE_SIZE: usize = 4096;

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Why a header block cannot be decoded. Any of these is a connection error
/// (`COMPRESSION_ERROR`): the two sides' tables can no longer agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub &'static str);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HPACK: {}", self.0)
    }
}

fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// Reads an integer with an `n`-bit prefix (RFC 7541 5.1) at `*i`.
fn int(b: &[u8], i: &mut usize, n: u8) -> Result<usize, Error> {
    let mask = (1usize << n) - 1;
    let first = *b.get(*i).ok_or(Error("truncated integer"))? as usize & mask;
    *i += 1;
    if first < mask {
        return Ok(first);
    }
    let mut v = mask;
    let mut shift = 0;
    loop {
        let c = *b.get(*i).ok_or(Error("truncated integer"))? as usize;
        *i += 1;
        if shift > 28 {
            return Err(Error("integer too large"));
        }
        v += (c & 0x7f) << shift;
        shift += 7;
        if c & 0x80 == 0 {
            return Ok(v);
        }
    }
}

/// Writes `v` with an `n`-bit prefix, `flags` in the prefix's high bits.
fn put_int(w: &mut BytesMut, flags: u8, n: u8, v: usize) {
    let mask = (1usize << n) - 1;
    if v < mask {
        w.put_u8(flags | v as u8);
        return;
    }
    w.put_u8(flags | mask as u8);
    let mut v = v - mask;
    while v >= 0x80 {
        w.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    w.put_u8(v as u8);
}

/// Huffman-coded strings remembered with what they decode to. A client sends the same
/// `:path` literal (never indexed, RFC 7541 7.1.3) with every call of a method.
const HUFFMAN_CACHE: usize = 4;

/// The decoding side of one connection.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first.
    table: VecDeque<(Bytes, Bytes)>,
    size: usize,
    max: usize,
    /// (coded, decoded) pairs, replaced round robin.
    huffman: Vec<(Bytes, Bytes)>,
    next: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: TABLE_SIZE,
            huffman: Vec::with_capacity(HUFFMAN_CACHE),
            next: 0,
        }
    }
}

impl Decoder {
    /// A string literal (RFC 7541 5.2) at `*i`: a slice of `b` if plain, decoded if
    /// Huffman-coded.
    fn string(&mut self, b: &Bytes, i: &mut usize) -> Result<Bytes, Error> {
        let huffman = b.get(*i).ok_or(Error("truncated string"))? & 0x80 != 0;
        let n = int(b, i, 7)?;
        let end = i.checked_add(n).filter(|e| *e <= b.len());
        let end = end.ok_or(Error("string longer than the block"))?;
        let raw = &b[*i..end];
        let start = *i;
        *i = end;
        if !huffman {
            return Ok(b.slice(start..end));
        }
        if let Some((_, d)) = self.huffman.iter().find(|(c, _)| c[..] == *raw) {
            return Ok(d.clone());
        }
        let mut out = Vec::with_capacity(n * 8 / 5 + 1);
        httlib_huffman::decode(raw, &mut out, httlib_huffman::DecoderSpeed::FiveBits)
            .map_err(|_| Error("invalid Huffman code"))?;
        let decoded = Bytes::from(out);
        if n <= 64 {
            let pair = (Bytes::copy_from_slice(raw), decoded.clone());
            if self.huffman.len() < HUFFMAN_CACHE {
                self.huffman.push(pair);
            } else {
                self.huffman[self.next] = pair;
                self.next = (self.next + 1) % HUFFMAN_CACHE;
            }
        }
        Ok(decoded)
    }

    fn get(&self, index: usize) -> Result<(Bytes, Bytes), Error> {
        match index {
            0 => Err(Error("index 0")),
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok((
                    Bytes::from_static(n.as_bytes()),
                    Bytes::from_static(v.as_bytes()),
                ))
            }
            _ => self
                .table
                .get(index - 62)
                .cloned()
                .ok_or(Error("index beyond the dynamic table")),
        }
    }

    /// Panics if the table's bookkeeping is off (for the fuzz target).
    pub fn check(&self) {
        let size: usize = self.table.iter().map(|(n, v)| entry_size(n, v)).sum();
        assert_eq!(size, self.size, "table size accounting");
        assert!(
            self.size <= self.max && self.max <= TABLE_SIZE,
            "table over its size"
        );
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            let (n, v) = self
                .table
                .pop_back()
                .expect("a table with a size has entries");
            self.size -= entry_size(&n, &v);
        }
    }

    fn insert(&mut self, name: Bytes, value: Bytes) {
        let size = entry_size(&name, &value);
        if size > self.max {
            // RFC 7541 4.4: an entry larger than the table empties it.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max - size);
        self.size += size;
        self.table.push_front((name, value));
    }

    /// Decodes one complete header block, calling `field` with each name and value in order.
    pub fn decode(&mut self, block: &Bytes, field: impl FnMut(Bytes, Bytes)) -> Result<(), Error> {
        self.decode_until(block, usize::MAX, field).map(|_| ())
    }

    /// Decodes `block`, giving `field` each header while the list (names, values and 32
    /// bytes per field, as RFC 9113 counts it) stays within `budget`; past that it only keeps
    /// the dynamic table in step with the encoder, without copying or handing out fields, so
    /// that a block of references to one large entry costs its bytes, not its decoded size.
    /// Returns whether the list stayed within the budget.
    pub(crate) fn decode_until(
        &mut self,
        block: &Bytes,
        budget: usize,
        mut field: impl FnMut(Bytes, Bytes),
    ) -> Result<bool, Error> {
        let mut i = 0;
        let mut fields = false;
        let mut list = 0usize;
        let mut within = true;
        let mut give = |n: Bytes, v: Bytes, within: &mut bool| {
            list = list.saturating_add(n.len() + v.len() + 32);
            if list > budget {
                *within = false;
            } else {
                field(n, v);
            }
        };
        while i < block.len() {
            let c = block[i];
            if c & 0x80 != 0 {
                let index = int(block, &mut i, 7)?;
                if within {
                    let (n, v) = self.get(index)?;
                    give(n, v, &mut within);
                } else if index == 0 || index > 61 + self.table.len() {
                    self.get(index)?; // the error
                }
            } else if c & 0xe0 == 0x20 {
                // Dynamic table size update: only before the first field.
                if fields {
                    return Err(Error("table size update after a field"));
                }
                let max = int(block, &mut i, 5)?;
                if max > TABLE_SIZE {
                    return Err(Error("table size update above the agreed size"));
                }
                self.max = max;
                self.evict_to(max);
                continue;
            } else {
                // Literal: with incremental indexing (01), without (0000) or never (0001).
                let (prefix, index) = if c & 0x40 != 0 { (6, true) } else { (4, false) };
                let name_index = int(block, &mut i, prefix)?;
                if !within && !index {
                    // Nothing to hand out and nothing to remember: skip the strings.
                    if name_index == 0 {
                        skip_string(block, &mut i)?;
                    } else {
                        self.get(name_index)?;
                    }
                    skip_string(block, &mut i)?;
                    fields = true;
                    continue;
                }
                let name = if name_index == 0 {
                    self.string(block, &mut i)?
                } else {
                    self.get(name_index)?.0
                };
                let value = self.string(block, &mut i)?;
                if index {
                    self.insert(name.clone(), value.clone());
                }
                if within {
                    give(name, value, &mut within);
                }
            }
            fields = true;
        }
        Ok(within)
    }
}

/// Moves past a string literal without decoding it.
fn skip_string(b: &Bytes, i: &mut usize) -> Result<(), Error> {
    let n = int(b, i, 7)?;
    let end = i.checked_add(n).filter(|e| *e <= b.len());
    *i = end.ok_or(Error("string longer than the block"))?;
    Ok(())
}

/// Fields the encoder indexes (the values every gRPC response repeats).
const INDEXED: [(&str, &str); 2] = [("content-type", "application/grpc"), ("grpc-status", "0")];

/// The encoding side of one connection.
#[derive(Debug)]
pub(crate) struct Encoder {
    /// The peer's limit for this side's dynamic table (SETTINGS_HEADER_TABLE_SIZE).
    max: usize,
    /// Newest first; only entries of [`INDEXED`].
    table: VecDeque<usize>,
    /// A size update to send before the next field (the peer lowered its limit).
    update: Option<usize>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            max: TABLE_SIZE,
            table: VecDeque::new(),
            update: None,
        }
    }
}

impl Encoder {
    /// The peer set SETTINGS_HEADER_TABLE_SIZE to `size`: the table is emptied (a size
    /// update to 0 and then to the new size starts the next block) and refilled as it goes.
    pub(crate) fn set_max(&mut self, size: usize) {
        self.max = size.min(TABLE_SIZE);
        self.table.clear();
        self.update = Some(self.max);
    }

    fn used(&self) -> usize {
        self.table
            .iter()
            .map(|&k| entry_size(INDEXED[k].0.as_bytes(), INDEXED[k].1.as_bytes()))
            .sum()
    }

    /// Starts a header block in `w`.
    pub(crate) fn begin(&mut self, w: &mut BytesMut) {
        if let Some(max) = self.update.take() {
            put_int(w, 0x20, 5, 0);
            put_int(w, 0x20, 5, max);
        }
    }

    /// `:status`.
    pub(crate) fn status(&mut self, w: &mut BytesMut, code: u16) {
        match code {
            200 => w.put_u8(0x88),
            _ => {
                put_int(w, 0x00, 4, 8);
                let s = code.to_string();
                put_int(w, 0, 7, s.len());
                w.put_slice(s.as_bytes());
            }
        }
    }

    /// One field: indexed if it is one of [`INDEXED`] and the peer's table has room.
    pub(crate) fn field(&mut self, w: &mut BytesMut, name: &[u8], value: &[u8]) {
        if let Some(k) = INDEXED
            .iter()
            .position(|(n, v)| n.as_bytes() == name && v.as_bytes() == value)
        {
            if let Some(pos) = self.table.iter().position(|&e| e == k) {
                put_int(w, 0x80, 7, 62 + pos);
                return;
            }
            let size = entry_size(name, value);
            if self.used() + size <= self.max {
                // Literal with incremental indexing, new name.
                w.put_u8(0x40);
                put_int(w, 0, 7, name.len());
                w.put_slice(name);
                put_int(w, 0, 7, value.len());
                w.put_slice(value);
                self.table.push_front(k);
                return;
            }
        }
        // Literal without indexing, new name.
        w.put_u8(0x00);
        put_int(w, 0, 7, name.len());
        w.put_slice(name);
        put_int(w, 0, 7, value.len());
        w.put_slice(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    fn decode(d: &mut Decoder, block: &str) -> Result<Vec<(String, String)>, Error> {
        let mut out = Vec::new();
        d.decode(&hex(block), |n, v| {
            out.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ))
        })?;
        Ok(out)
    }

    fn fields(f: &[(&str, &str)]) -> Vec<(String, String)> {
        f.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// RFC 7541 C.3 (plain) and C.4 (Huffman): three requests on one connection.
    #[test]
    fn rfc_7541_request_examples_decode() {
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut d = Decoder::default();
            let base = [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ];
            assert_eq!(decode(&mut d, blocks[0]).unwrap(), fields(&base));
            assert_eq!(d.size, 57);
            let mut second = base.to_vec();
            second.push(("cache-control", "no-cache"));
            assert_eq!(decode(&mut d, blocks[1]).unwrap(), fields(&second));
            assert_eq!(d.size, 110);
            assert_eq!(
                decode(&mut d, blocks[2]).unwrap(),
                fields(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value"),
                ])
            );
            assert_eq!(d.size, 164);
            assert_eq!(d.table[0].0, "custom-key");
        }
    }

    #[test]
    fn repeated_huffman_literals_decode_alike_from_the_cache() {
        // `:path: www.example.com` (Huffman, RFC 7541 C.4.1's string), never indexed, twice,
        // then a different one: each decodes right, the repeat comes from the cache.
        let block = "14 8c f1e3 c2e5 f23a 6ba0 ab90 f4ff";
        let mut d = Decoder::default();
        for _ in 0..3 {
            assert_eq!(
                decode(&mut d, block).unwrap(),
                fields(&[(":path", "www.example.com")])
            );
        }
        assert_eq!(d.huffman.len(), 1);
        assert_eq!(
            decode(&mut d, "14 86 a8eb 1064 9cbf").unwrap(),
            fields(&[(":path", "no-cache")])
        );
        assert_eq!(d.huffman.len(), 2);
    }

    #[test]
    fn eviction_and_size_updates_follow_the_rfc() {
        let mut d = Decoder::default();
        // Size update to 100, then a literal with indexing of 32 + 10 + 60 > 100: the table
        // ends up empty (an entry larger than the table clears it).
        let mut b = BytesMut::new();
        put_int(&mut b, 0x20, 5, 100);
        b.put_u8(0x40);
        put_int(&mut b, 0, 7, 10);
        b.put_slice(b"custom-key");
        put_int(&mut b, 0, 7, 60);
        b.put_slice(&[b'x'; 60]);
        d.decode(&b.freeze(), |_, _| {}).unwrap();
        assert_eq!((d.table.len(), d.size, d.max), (0, 0, 100));
        // Two entries of 50 fit in 100; a third evicts the oldest.
        for (k, v) in [("aaaaaaaaa", "1"), ("bbbbbbbbb", "2"), ("ccccccccc", "3")] {
            let mut b = BytesMut::new();
            b.put_u8(0x40);
            put_int(&mut b, 0, 7, k.len());
            b.put_slice(k.as_bytes());
            put_int(&mut b, 0, 7, v.len());
            b.put_slice(v.as_bytes());
            d.decode(&b.freeze(), |_, _| {}).unwrap();
        }
        assert_eq!(d.table.len(), 2);
        assert_eq!(d.table[1].0, "bbbbbbbbb");
        // Index 62 is the newest.
        assert_eq!(decode(&mut d, "be").unwrap(), fields(&[("ccccccccc", "3")]));
    }

    /// Past the budget nothing is handed out, but entries are still inserted, so the next
    /// block decodes as the encoder meant it; a bad index is still an error.
    #[test]
    fn past_the_budget_the_table_stays_in_step() {
        let mut d = Decoder::default();
        let mut b = BytesMut::new();
        // A 200-byte entry, then references to it far past a budget of 1000 bytes, then a
        // literal with indexing (which must still be inserted) and one without.
        b.put_u8(0x40);
        put_int(&mut b, 0, 7, 1);
        b.put_slice(b"a");
        put_int(&mut b, 0, 7, 200);
        b.put_slice(&[b'v'; 200]);
        b.put_slice(&[0xbe; 100]);
        b.put_u8(0x40);
        put_int(&mut b, 0, 7, 1);
        b.put_slice(b"b");
        put_int(&mut b, 0, 7, 1);
        b.put_slice(b"2");
        b.put_u8(0x00);
        put_int(&mut b, 0, 7, 1);
        b.put_slice(b"c");
        put_int(&mut b, 0, 7, 1);
        b.put_slice(b"3");
        let mut got = 0;
        let within = d.decode_until(&b.freeze(), 1000, |_, _| got += 1).unwrap();
        assert!(!within);
        assert!(got < 10, "fields past the budget are not handed out: {got}");
        assert_eq!(d.table.len(), 2, "b was inserted");
        assert_eq!(
            decode(&mut d, "be bf").unwrap(),
            fields(&[("b", "2"), ("a", &"v".repeat(200))])
        );
        let mut bad = BytesMut::new();
        bad.put_slice(&[0xbe; 20]);
        bad.put_u8(0xc5); // index 69: beyond the table
        assert!(d.decode_until(&bad.freeze(), 10, |_, _| {}).is_err());
    }

    #[test]
    fn malformed_blocks_are_errors() {
        for (block, why) in [
            ("80", "index 0"),
            ("c0", "index beyond the dynamic table"),
            ("ff", "truncated integer"),
            ("ff ff ff ff ff ff 01", "integer too large"),
            ("40 05 61", "string longer than the block"),
            ("3f e2 1f", "table size update above the agreed size"),
            ("82 20", "table size update after a field"),
            ("00 81 ff 00", "invalid Huffman code"),
        ] {
            let mut d = Decoder::default();
            assert_eq!(decode(&mut d, block), Err(Error(why)), "{block}");
        }
    }

    #[test]
    fn the_encoder_indexes_grpc_fields_and_the_decoder_reads_them_back() {
        let mut e = Encoder::default();
        let mut d = Decoder::default();
        let response = |e: &mut Encoder, status: &[u8]| {
            let mut w = BytesMut::new();
            e.begin(&mut w);
            e.status(&mut w, 200);
            e.field(&mut w, b"content-type", b"application/grpc");
            e.field(&mut w, b"grpc-status", status);
            e.field(&mut w, b"grpc-message", &[b'm'; 200]);
            w.freeze()
        };
        let first = response(&mut e, b"0");
        let second = response(&mut e, b"0");
        // The second time, status, content-type and grpc-status are one byte each; the
        // message (1 + 1 + 12 + 2 + 200 bytes) is a literal both times.
        assert_eq!(second.len(), 3 + 216);
        assert!(first.len() > second.len() + 30, "{}", first.len());
        let third = response(&mut e, b"5");
        for b in [first, second, third] {
            let mut got = Vec::new();
            d.decode(&b, |n, v| got.push((n, v))).unwrap();
            assert_eq!(got[0], (Bytes::from(":status"), Bytes::from("200")));
            assert_eq!(got[1].1, "application/grpc");
            assert_eq!(got[3].1.len(), 200);
        }
        // The peer shrinks its table: the next block starts with size updates and literals.
        e.set_max(0);
        let b = response(&mut e, b"0");
        assert_eq!(b[0], 0x20);
        let mut got = Vec::new();
        d.decode(&b, |n, v| got.push((n, v))).unwrap();
        assert_eq!(got[2], (Bytes::from("grpc-status"), Bytes::from("0")));
        assert_eq!(d.max, 0);
        // Statuses other than 200 are literals.
        let mut w = BytesMut::new();
        e.status(&mut w, 431);
        let mut got = Vec::new();
        d.decode(&w.freeze(), |n, v| got.push((n, v))).unwrap();
        assert_eq!(got[0].1, "431");
    }

    proptest::proptest! {
        /// Any bytes, as blocks on one decoder: fields or an error, never a panic, and the
        /// table's size accounting holds after every block. Blocks start from the encoder's
        /// own output half of the time, so decoding gets past the first byte.
        #[test]
        fn any_blocks_decode_or_fail_cleanly(
            blocks in proptest::collection::vec(
                proptest::collection::vec(proptest::num::u8::ANY, 0..64),
                1..8,
            ),
            seed in proptest::bool::ANY,
        ) {
            let mut d = Decoder::default();
            let mut e = Encoder::default();
            for b in blocks {
                let mut w = BytesMut::new();
                if seed {
                    e.begin(&mut w);
                    e.status(&mut w, 200);
                    e.field(&mut w, b"content-type", b"application/grpc");
                }
                w.extend_from_slice(&b);
                if d.decode(&w.freeze(), |_, _| {}).is_err() {
                    break;
                }
                d.check();
            }
        }
    }
}
