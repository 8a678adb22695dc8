//! Request and response types: etcd v3's data model, expressed in plain Rust.

use bytes::Bytes;

/// The range end that selects every key at or after `key` (etcd's `"\0"`).
pub const RANGE_END_ALL: &[u8] = b"\0";

/// Returns the smallest key greater than every key that starts with `prefix`
/// (etcd's `GetPrefixRangeEnd`). An empty or all-`0xff` prefix yields `"\0"` (every key).
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(RANGE_END_ALL)
}

/// A key range in etcd's encoding: `range_end` empty means the single `key`; `"\0"` means
/// every key `>= key`; otherwise `[key, range_end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct KeyRange {
    /// First key (inclusive).
    pub key: Bytes,
    /// End of the range (exclusive), see the type docs.
    pub range_end: Bytes,
}

impl KeyRange {
    /// Exactly one key.
    pub fn key(key: impl Into<Bytes>) -> Self {
        KeyRange {
            key: key.into(),
            range_end: Bytes::new(),
        }
    }
    /// Every key that starts with `prefix` (an empty prefix selects all keys).
    pub fn prefix(prefix: impl Into<Bytes>) -> Self {
        let key: Bytes = prefix.into();
        if key.is_empty() {
            return Self::all();
        }
        let range_end = prefix_end(&key);
        KeyRange { key, range_end }
    }
    /// `[start, end)`.
    pub fn range(start: impl Into<Bytes>, end: impl Into<Bytes>) -> Self {
        KeyRange {
            key: start.into(),
            range_end: end.into(),
        }
    }
    /// Every key.
    pub fn all() -> Self {
        KeyRange {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(RANGE_END_ALL),
        }
    }
    /// Whether this selects a single key.
    pub fn is_single(&self) -> bool {
        self.range_end.is_empty()
    }
    /// Whether `k` lies in the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return k == &self.key[..];
        }
        if k < &self.key[..] {
            return false;
        }
        &self.range_end[..] == RANGE_END_ALL || k < &self.range_end[..]
    }
}

/// One key-value pair as stored, with its revision metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// Revision of the write that created this key (since its last delete).
    pub create_revision: i64,
    /// Revision of the last write to this key.
    pub mod_revision: i64,
    /// Number of writes since creation (1 after the first put); 0 for deleted keys.
    pub version: i64,
    /// The value.
    pub value: Bytes,
    /// Lease the key is attached to, 0 for none.
    pub lease: i64,
}

/// Header carried by every response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ResponseHeader {
    /// The store revision when the request was applied (for reads: the revision read at, or the
    /// current revision for reads of the latest state).
    pub revision: i64,
}

/// Read keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RangeRequest {
    /// Which keys.
    pub range: KeyRange,
    /// At most this many keys (0: no limit).
    pub limit: i64,
    /// Read at this past revision (0: the latest).
    pub revision: i64,
    /// Return keys and metadata without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
}

impl RangeRequest {
    /// Read the keys in `range` at the latest revision.
    pub fn new(range: KeyRange) -> Self {
        RangeRequest {
            range,
            ..Default::default()
        }
    }
    /// Set a limit.
    pub fn limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }
    /// Read at a past revision.
    pub fn revision(mut self, revision: i64) -> Self {
        self.revision = revision;
        self
    }
    /// Only keys.
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }
    /// Only the count.
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }
}

/// Result of a range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RangeResponse {
    /// Header.
    pub header: ResponseHeader,
    /// Matching keys, in key order (empty for `count_only`).
    pub kvs: Vec<KeyValue>,
    /// Whether more keys matched than `limit` allowed.
    pub more: bool,
    /// Number of keys in the range (ignoring `limit`).
    pub count: i64,
}

/// Write one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PutRequest {
    /// Key (must not be empty).
    pub key: Bytes,
    /// Value.
    pub value: Bytes,
    /// Attach to this lease (0: none; a previous lease is detached).
    pub lease: i64,
    /// Return the previous key-value pair.
    pub prev_kv: bool,
}

impl PutRequest {
    /// Put `value` at `key`.
    pub fn new(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }
    }
    /// Attach to a lease.
    pub fn lease(mut self, lease: i64) -> Self {
        self.lease = lease;
        self
    }
    /// Return the previous pair.
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
}

/// Result of a put.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PutResponse {
    /// Header (the revision of this write).
    pub header: ResponseHeader,
    /// Previous pair, if asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// Delete keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DeleteRequest {
    /// Which keys.
    pub range: KeyRange,
    /// Return the deleted pairs.
    pub prev_kv: bool,
}

impl DeleteRequest {
    /// Delete the keys in `range`.
    pub fn new(range: KeyRange) -> Self {
        DeleteRequest {
            range,
            prev_kv: false,
        }
    }
    /// Return the deleted pairs.
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
}

/// Result of a delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DeleteResponse {
    /// Header.
    pub header: ResponseHeader,
    /// Number of keys deleted.
    pub deleted: i64,
    /// Deleted pairs, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// What a [`Compare`] looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum CompareTarget {
    /// The value (a missing key never matches).
    Value(Bytes),
    /// The version (0 for a missing key).
    Version(i64),
    /// The create revision (0 for a missing key).
    CreateRevision(i64),
    /// The mod revision (0 for a missing key).
    ModRevision(i64),
    /// The lease (0 for none or a missing key).
    Lease(i64),
}

/// How a [`Compare`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum CompareOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `<`
    Less,
    /// `>`
    Greater,
}

/// One guard of a transaction. With a range, every key in it must satisfy the comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Compare {
    /// Key or range compared.
    pub range: KeyRange,
    /// What is compared, and with which operand.
    pub target: CompareTarget,
    /// The comparison.
    pub op: CompareOp,
}

impl Compare {
    /// Compare a single key.
    pub fn new(key: impl Into<Bytes>, op: CompareOp, target: CompareTarget) -> Self {
        Compare {
            range: KeyRange::key(key),
            target,
            op,
        }
    }
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum TxnOp {
    /// Read.
    Range(RangeRequest),
    /// Write.
    Put(PutRequest),
    /// Delete.
    Delete(DeleteRequest),
    /// A transaction inside the transaction (etcd ≥ 3.3): its compares are evaluated with
    /// the outer ones, on the state before any operation applies, and its branch's operations
    /// run in order with the others, at the outer transaction's revision.
    Txn(TxnRequest),
}

/// Result of one transaction operation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum TxnOpResponse {
    /// Read result.
    Range(RangeResponse),
    /// Write result.
    Put(PutResponse),
    /// Delete result.
    Delete(DeleteResponse),
    /// Result of a nested transaction.
    Txn(TxnResponse),
}

/// If all `compare`s hold, apply `success`, else `failure`; atomically, at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TxnRequest {
    /// Guards.
    pub compare: Vec<Compare>,
    /// Operations when every guard holds.
    pub success: Vec<TxnOp>,
    /// Operations otherwise.
    pub failure: Vec<TxnOp>,
}

impl TxnRequest {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }
    /// Add guards.
    pub fn when(mut self, compare: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(compare);
        self
    }
    /// Add success operations.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }
    /// Add failure operations.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }
}

/// Result of a transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TxnResponse {
    /// Header (the revision of the write, or the current revision if nothing was written).
    pub header: ResponseHeader,
    /// Whether every guard held.
    pub succeeded: bool,
    /// One result per operation of the branch taken.
    pub responses: Vec<TxnOpResponse>,
}

/// Result of a lease grant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LeaseGrantResponse {
    /// Header.
    pub header: ResponseHeader,
    /// The lease id.
    pub id: i64,
    /// The granted TTL in seconds (raised to the minimum TTL if smaller).
    pub ttl: i64,
}

/// Result of a lease keepalive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LeaseKeepAliveResponse {
    /// Header.
    pub header: ResponseHeader,
    /// The lease id.
    pub id: i64,
    /// The TTL the lease was renewed to, in seconds.
    pub ttl: i64,
}

/// Result of a lease time-to-live query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LeaseTimeToLiveResponse {
    /// Header.
    pub header: ResponseHeader,
    /// The lease id.
    pub id: i64,
    /// Remaining seconds (truncated, as etcd).
    pub ttl: i64,
    /// TTL at grant time.
    pub granted_ttl: i64,
    /// Attached keys, if asked for.
    pub keys: Vec<Bytes>,
}

/// Result of a compaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CompactResponse {
    /// Header.
    pub header: ResponseHeader,
}

/// A digest of the store's key-value state at a revision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HashKvResponse {
    /// Header.
    pub header: ResponseHeader,
    /// The digest; two copies with the same data at the same revision have the same digest.
    pub hash: u32,
    /// The compaction point when the digest was computed.
    pub compact_revision: i64,
    /// The revision the digest covers.
    pub hash_revision: i64,
}

/// The format of a [`Backup`]'s bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackupFormat {
    /// A weft snapshot file (the embedded store's own format, checksummed): `weft snapshot
    /// restore FILE --data-dir DIR` makes a data directory of it.
    Weft,
    /// An etcd backend database (bbolt), as etcd's `Snapshot` call sends it: restore it with
    /// `etcdutl snapshot restore` (`etcdctl snapshot restore` in etcd 3.4).
    EtcdDb,
}

impl BackupFormat {
    /// A short name for headers and messages: `weft-snapshot-v1` or `etcd-db`.
    pub fn name(self) -> &'static str {
        match self {
            BackupFormat::Weft => "weft-snapshot-v1",
            BackupFormat::EtcdDb => "etcd-db",
        }
    }
}

/// A consistent copy of a whole store (see [`Store::backup`](crate::Store::backup)), read as
/// a stream of chunks. Dropping it part-way is fine: the store keeps nothing for it.
pub struct Backup {
    /// What the bytes are.
    pub format: BackupFormat,
    /// The revision the copy is at (0 if the backend does not say).
    pub revision: i64,
    /// Its length in bytes, if known before reading it.
    pub size: Option<u64>,
    /// The bytes, in order.
    pub chunks: futures::stream::BoxStream<'static, crate::Result<Bytes>>,
}

impl std::fmt::Debug for Backup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backup")
            .field("format", &self.format)
            .field("revision", &self.revision)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Store-wide status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusResponse {
    /// Header (the current revision).
    pub header: ResponseHeader,
    /// Compaction point.
    pub compact_revision: i64,
    /// Bytes used on disk (0 if unknown).
    pub db_size: i64,
    /// Backend name and version.
    pub version: String,
}
