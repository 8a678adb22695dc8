//! JSON shapes of the HTTP API and their conversion to and from store types.
//!
//! Keys and values are strings. By default they are UTF-8 text; with `"encoding": "base64"`
//! every key and value in the request and the response is base64 (standard alphabet), which is
//! how binary data goes through. A response that would contain non-UTF-8 bytes in `utf8` mode
//! fails with code `not_utf8` instead of mangling the data.

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weft_store as ws;

use crate::error::ApiError;

/// How keys and values are written in JSON.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 text (the default).
    #[default]
    Utf8,
    /// Base64, for binary keys and values.
    Base64,
}

impl Encoding {
    /// Decodes a key or value from the request.
    pub fn decode(self, field: &str, s: &str) -> Result<Bytes, ApiError> {
        match self {
            Encoding::Utf8 => Ok(Bytes::copy_from_slice(s.as_bytes())),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(Bytes::from)
                .map_err(|e| ApiError::BadRequest(format!("{field} is not valid base64: {e}"))),
        }
    }

    /// Encodes a key or value for the response.
    pub fn encode(self, b: &[u8]) -> Result<String, ApiError> {
        match self {
            Encoding::Utf8 => String::from_utf8(b.to_vec()).map_err(|_| {
                ApiError::Store(ws::StoreError::InvalidArgument(
                    "not_utf8: the data holds bytes that are not UTF-8; ask again with \"encoding\": \"base64\"".into(),
                ))
            }),
            Encoding::Base64 => Ok(base64::engine::general_purpose::STANDARD.encode(b)),
        }
    }
}

/// Response header.
#[derive(Debug, Serialize, Deserialize, Clone, Copy)]
pub struct Header {
    /// Store revision.
    pub revision: i64,
}

impl From<ws::ResponseHeader> for Header {
    fn from(h: ws::ResponseHeader) -> Self {
        Header {
            revision: h.revision,
        }
    }
}

/// A key-value pair in JSON.
#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct KvJson {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Create revision.
    pub create_revision: i64,
    /// Mod revision.
    pub mod_revision: i64,
    /// Version.
    pub version: i64,
    /// Lease id (0: none).
    pub lease: i64,
}

/// Converts a pair.
pub fn kv_json(enc: Encoding, kv: &ws::KeyValue) -> Result<KvJson, ApiError> {
    Ok(KvJson {
        key: enc.encode(&kv.key)?,
        value: enc.encode(&kv.value)?,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    })
}

fn kvs_json(enc: Encoding, kvs: &[ws::KeyValue]) -> Result<Vec<KvJson>, ApiError> {
    kvs.iter().map(|kv| kv_json(enc, kv)).collect()
}

/// Selects keys: `key` alone, or with exactly one of `range_end`, `prefix`, `from_key`. A
/// view of a request's fields (the bodies declare them with `key_selecting!`), so building
/// it copies nothing.
#[derive(Debug, Clone, Copy)]
pub struct KeySel<'a> {
    /// Key, first key of a range, or prefix.
    pub key: &'a str,
    /// End of `[key, range_end)`.
    pub range_end: Option<&'a str>,
    /// Every key starting with `key` (an empty key with `prefix` selects all keys).
    pub prefix: bool,
    /// Every key `>= key`.
    pub from_key: bool,
}

impl<'a> KeySel<'a> {
    /// A selection from the fields that request bodies share.
    pub fn of(key: &'a str, range_end: &'a Option<String>, prefix: bool, from_key: bool) -> Self {
        KeySel {
            key,
            range_end: range_end.as_deref(),
            prefix,
            from_key,
        }
    }

    /// The store range.
    pub fn range(&self, enc: Encoding) -> Result<ws::KeyRange, ApiError> {
        let key = enc.decode("key", self.key)?;
        let n = self.range_end.is_some() as u8 + self.prefix as u8 + self.from_key as u8;
        if n > 1 {
            return Err(ApiError::BadRequest(
                "give at most one of range_end, prefix and from_key".into(),
            ));
        }
        if self.prefix {
            return Ok(ws::KeyRange::prefix(key));
        }
        if key.is_empty() {
            return Err(ApiError::BadRequest(
                "key must not be empty (use prefix: true with an empty key for all keys)".into(),
            ));
        }
        if self.from_key {
            return Ok(ws::KeyRange::range(
                key,
                Bytes::from_static(ws::RANGE_END_ALL),
            ));
        }
        match &self.range_end {
            Some(end) => Ok(ws::KeyRange::range(key, enc.decode("range_end", end)?)),
            None => Ok(ws::KeyRange::key(key)),
        }
    }
}

/// Declares a request body (or query) that selects keys: the four [`KeySel`] fields (`key`,
/// `range_end`, `prefix`, `from_key`) written once here, the body's own fields after them, and
/// `sel()`. (serde's `flatten` would do this, but it cannot be combined with
/// `deny_unknown_fields`, which every body keeps.)
macro_rules! key_selecting {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            /// The key, the first key of a range, or the prefix (see [`KeySel`]).
            pub key: String,
            /// See [`KeySel`].
            #[serde(default)]
            pub range_end: Option<String>,
            /// See [`KeySel`].
            #[serde(default)]
            pub prefix: bool,
            /// See [`KeySel`].
            #[serde(default)]
            pub from_key: bool,
            $($(#[$fmeta])* $fvis $field: $ty,)*
        }

        impl $name {
            /// The keys this request selects.
            pub fn sel(&self) -> $crate::api::KeySel<'_> {
                $crate::api::KeySel::of(&self.key, &self.range_end, self.prefix, self.from_key)
            }
        }
    };
}
pub(crate) use key_selecting;

key_selecting! {
/// `POST /v1/kv/range`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeBody {
    /// Max keys (0: no limit).
    #[serde(default)]
    pub limit: i64,
    /// Read at this revision (0: latest).
    #[serde(default)]
    pub revision: i64,
    /// Keys only.
    #[serde(default)]
    pub keys_only: bool,
    /// Count only.
    #[serde(default)]
    pub count_only: bool,
    /// Encoding of keys and values.
    #[serde(default)]
    pub encoding: Option<Encoding>,
}
}

impl RangeBody {
    /// To a store request.
    pub fn to_store(&self, enc: Encoding) -> Result<ws::RangeRequest, ApiError> {
        let sel = self.sel();
        Ok(ws::RangeRequest {
            range: sel.range(enc)?,
            limit: self.limit,
            revision: self.revision,
            keys_only: self.keys_only,
            count_only: self.count_only,
        })
    }
}

/// Range result.
#[derive(Debug, Serialize, Deserialize)]
pub struct RangeResp {
    /// Header.
    pub header: Header,
    /// Pairs.
    pub kvs: Vec<KvJson>,
    /// More than `limit` matched.
    pub more: bool,
    /// Matching keys.
    pub count: i64,
}

/// Converts a range result.
pub fn range_resp(enc: Encoding, r: &ws::RangeResponse) -> Result<RangeResp, ApiError> {
    Ok(RangeResp {
        header: r.header.into(),
        kvs: kvs_json(enc, &r.kvs)?,
        more: r.more,
        count: r.count,
    })
}

/// `POST /v1/kv/put`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Lease (0: none).
    #[serde(default)]
    pub lease: i64,
    /// Return the previous pair.
    #[serde(default)]
    pub prev_kv: bool,
    /// Encoding.
    #[serde(default)]
    pub encoding: Option<Encoding>,
}

impl PutBody {
    /// To a store request.
    pub fn to_store(&self, enc: Encoding) -> Result<ws::PutRequest, ApiError> {
        Ok(ws::PutRequest {
            key: enc.decode("key", &self.key)?,
            value: enc.decode("value", &self.value)?,
            lease: self.lease,
            prev_kv: self.prev_kv,
        })
    }
}

/// Put result.
#[derive(Debug, Serialize, Deserialize)]
pub struct PutResp {
    /// Header.
    pub header: Header,
    /// Previous pair.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prev_kv: Option<KvJson>,
}

/// Converts a put result.
pub fn put_resp(enc: Encoding, r: &ws::PutResponse) -> Result<PutResp, ApiError> {
    Ok(PutResp {
        header: r.header.into(),
        prev_kv: r.prev_kv.as_ref().map(|kv| kv_json(enc, kv)).transpose()?,
    })
}

key_selecting! {
/// `POST /v1/kv/delete`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteBody {
    /// Return deleted pairs.
    #[serde(default)]
    pub prev_kv: bool,
    /// Encoding.
    #[serde(default)]
    pub encoding: Option<Encoding>,
}
}

impl DeleteBody {
    /// To a store request.
    pub fn to_store(&self, enc: Encoding) -> Result<ws::DeleteRequest, ApiError> {
        let sel = self.sel();
        Ok(ws::DeleteRequest {
            range: sel.range(enc)?,
            prev_kv: self.prev_kv,
        })
    }
}

/// Delete result.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeleteResp {
    /// Header.
    pub header: Header,
    /// Keys deleted.
    pub deleted: i64,
    /// Deleted pairs, if asked for.
    pub prev_kvs: Vec<KvJson>,
}

/// Converts a delete result.
pub fn delete_resp(enc: Encoding, r: &ws::DeleteResponse) -> Result<DeleteResp, ApiError> {
    Ok(DeleteResp {
        header: r.header.into(),
        deleted: r.deleted,
        prev_kvs: kvs_json(enc, &r.prev_kvs)?,
    })
}

/// One guard of a txn.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareBody {
    /// Key.
    pub key: String,
    /// See [`KeySel`].
    #[serde(default)]
    pub range_end: Option<String>,
    /// See [`KeySel`].
    #[serde(default)]
    pub prefix: bool,
    /// `value`, `version`, `create_revision`, `mod_revision` or `lease`.
    pub target: String,
    /// `=`, `!=`, `<` or `>`.
    pub op: String,
    /// A string for `value`, an integer otherwise.
    pub value: serde_json::Value,
}

impl CompareBody {
    fn to_store(&self, enc: Encoding) -> Result<ws::Compare, ApiError> {
        let sel = KeySel::of(&self.key, &self.range_end, self.prefix, false);
        let op = match self.op.as_str() {
            "=" | "==" | "equal" => ws::CompareOp::Equal,
            "!=" | "not_equal" => ws::CompareOp::NotEqual,
            "<" | "less" => ws::CompareOp::Less,
            ">" | "greater" => ws::CompareOp::Greater,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown compare op {other:?}; allowed: =, !=, <, >"
                )))
            }
        };
        let int = || {
            self.value.as_i64().ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "compare on {} needs an integer value, got {}",
                    self.target, self.value
                ))
            })
        };
        let target = match self.target.as_str() {
            "value" => {
                let s = self.value.as_str().ok_or_else(|| {
                    ApiError::BadRequest(format!("compare on value needs a string value, got {}", self.value))
                })?;
                ws::CompareTarget::Value(enc.decode("compare value", s)?)
            }
            "version" => ws::CompareTarget::Version(int()?),
            "create_revision" | "create" => ws::CompareTarget::CreateRevision(int()?),
            "mod_revision" | "mod" => ws::CompareTarget::ModRevision(int()?),
            "lease" => ws::CompareTarget::Lease(int()?),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown compare target {other:?}; allowed: value, version, create_revision, mod_revision, lease"
                )))
            }
        };
        Ok(ws::Compare {
            range: sel.range(enc)?,
            target,
            op,
        })
    }
}

/// One txn operation: `{"range": {...}}`, `{"put": {...}}`, `{"delete": {...}}` or a nested
/// `{"txn": {...}}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum OpBody {
    /// Read.
    Range(RangeBody),
    /// Write.
    Put(PutBody),
    /// Delete.
    Delete(DeleteBody),
    /// A transaction inside the transaction.
    Txn(TxnBody),
}

impl OpBody {
    fn to_store(&self, enc: Encoding) -> Result<ws::TxnOp, ApiError> {
        Ok(match self {
            OpBody::Range(r) => ws::TxnOp::Range(r.to_store(r.encoding.unwrap_or(enc))?),
            OpBody::Put(p) => ws::TxnOp::Put(p.to_store(p.encoding.unwrap_or(enc))?),
            OpBody::Delete(d) => ws::TxnOp::Delete(d.to_store(d.encoding.unwrap_or(enc))?),
            OpBody::Txn(t) => ws::TxnOp::Txn(t.to_store(t.encoding.unwrap_or(enc))?),
        })
    }
}

/// `POST /v1/kv/txn`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TxnBody {
    /// Guards.
    #[serde(default)]
    pub compare: Vec<CompareBody>,
    /// Ops if all guards hold.
    #[serde(default)]
    pub success: Vec<OpBody>,
    /// Ops otherwise.
    #[serde(default)]
    pub failure: Vec<OpBody>,
    /// Encoding.
    #[serde(default)]
    pub encoding: Option<Encoding>,
}

impl TxnBody {
    /// To a store request.
    pub fn to_store(&self, enc: Encoding) -> Result<ws::TxnRequest, ApiError> {
        Ok(ws::TxnRequest {
            compare: self
                .compare
                .iter()
                .map(|c| c.to_store(enc))
                .collect::<Result<_, _>>()?,
            success: self
                .success
                .iter()
                .map(|o| o.to_store(enc))
                .collect::<Result<_, _>>()?,
            failure: self
                .failure
                .iter()
                .map(|o| o.to_store(enc))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// One txn op result.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpResp {
    /// Read result.
    Range(RangeResp),
    /// Write result.
    Put(PutResp),
    /// Delete result.
    Delete(DeleteResp),
    /// Nested txn result.
    Txn(TxnResp),
}

/// Txn result.
#[derive(Debug, Serialize, Deserialize)]
pub struct TxnResp {
    /// Header.
    pub header: Header,
    /// Whether the guards held.
    pub succeeded: bool,
    /// Results of the branch taken.
    pub responses: Vec<OpResp>,
}

/// Converts a txn result.
pub fn txn_resp(enc: Encoding, r: &ws::TxnResponse) -> Result<TxnResp, ApiError> {
    let responses = r
        .responses
        .iter()
        .map(|o| {
            Ok(match o {
                ws::TxnOpResponse::Range(x) => OpResp::Range(range_resp(enc, x)?),
                ws::TxnOpResponse::Put(x) => OpResp::Put(put_resp(enc, x)?),
                ws::TxnOpResponse::Delete(x) => OpResp::Delete(delete_resp(enc, x)?),
                ws::TxnOpResponse::Txn(x) => OpResp::Txn(txn_resp(enc, x)?),
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(TxnResp {
        header: r.header.into(),
        succeeded: r.succeeded,
        responses,
    })
}

/// Watch event in JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventJson {
    /// `PUT` or `DELETE`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The pair after the change.
    pub kv: KvJson,
    /// The pair before, if asked for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prev_kv: Option<KvJson>,
}

/// Watch message in JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct WatchJson {
    /// Store revision.
    pub revision: i64,
    /// Events (empty for a progress notice).
    pub events: Vec<EventJson>,
}

/// Converts a watch message.
pub fn watch_json(enc: Encoding, r: &ws::WatchResponse) -> Result<WatchJson, ApiError> {
    let events = r
        .events
        .iter()
        .map(|e| {
            Ok(EventJson {
                kind: match e.kind {
                    ws::EventType::Put => "PUT".into(),
                    ws::EventType::Delete => "DELETE".into(),
                },
                kv: kv_json(enc, &e.kv)?,
                prev_kv: e.prev_kv.as_ref().map(|kv| kv_json(enc, kv)).transpose()?,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(WatchJson {
        revision: r.revision,
        events,
    })
}
