//! Key permissions and the check of a request's key range against them.
//!
//! A range is written as etcd writes it: `key` alone is that one key; `key` with `range_end`
//! is `[key, range_end)`; a `range_end` of `"\0"` means every key from `key` on. A request is
//! permitted when the union of the caller's granted ranges (of a kind that covers what it
//! needs) covers the whole requested range, as etcd checks it.

use serde::{Deserialize, Serialize};

/// What a permission allows (etcd's `Permission.Type`: READ 0, WRITE 1, READWRITE 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PermKind {
    /// Range and watch.
    Read,
    /// Put and delete.
    Write,
    /// Both.
    ReadWrite,
}

impl PermKind {
    /// etcd's number for this kind.
    pub fn as_i32(self) -> i32 {
        match self {
            PermKind::Read => 0,
            PermKind::Write => 1,
            PermKind::ReadWrite => 2,
        }
    }

    /// The kind etcd numbers `n`, if any.
    pub fn from_i32(n: i32) -> Option<PermKind> {
        match n {
            0 => Some(PermKind::Read),
            1 => Some(PermKind::Write),
            2 => Some(PermKind::ReadWrite),
            _ => None,
        }
    }

    fn allows(self, need: Need) -> bool {
        matches!(
            (self, need),
            (PermKind::ReadWrite, _)
                | (PermKind::Read, Need::Read)
                | (PermKind::Write, Need::Write)
        )
    }
}

/// What a request needs on its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Reading (range, watch, compare, a previous value).
    Read,
    /// Writing (put, delete, revoking a lease with keys).
    Write,
}

/// A permission granted to a role: a kind on a key or key range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// What it allows.
    pub kind: PermKind,
    /// The first key.
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    /// The end of the range (exclusive); empty: the key alone; `"\0"`: every key from `key`.
    #[serde(with = "b64")]
    pub range_end: Vec<u8>,
}

/// A key range as an interval: `[start, end)`, `end` none for "no end".
type Interval<'a> = (&'a [u8], Option<Vec<u8>>);

/// `[key, range_end)` as an interval (a single key is `[key, key + "\0")`).
fn interval<'a>(key: &'a [u8], range_end: &[u8]) -> Interval<'a> {
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            (key, Some(end))
        }
        [0] => (key, None),
        end => (key, Some(end.to_vec())),
    }
}

/// Whether `[key, range_end)` is a valid range to grant: a non-empty key, and an end that is
/// empty, `"\0"`, or after the key.
pub fn valid_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || key < range_end)
}

/// Whether `perms` allow `need` on every key of `[key, range_end)`.
pub fn covers<'a>(
    perms: impl IntoIterator<Item = &'a Permission>,
    key: &[u8],
    range_end: &[u8],
    need: Need,
) -> bool {
    let (start, end) = interval(key, range_end);
    // An empty range (end at or before the start) asks for nothing... but etcd still wants
    // some permission there; treat it as the start key.
    let end = match end {
        Some(e) if e.as_slice() <= start => Some([start, &[0]].concat()),
        e => e,
    };
    let mut granted: Vec<Interval<'_>> = perms
        .into_iter()
        .filter(|p| p.kind.allows(need))
        .map(|p| interval(&p.key, &p.range_end))
        .collect();
    granted.sort_by(|a, b| a.0.cmp(b.0));
    // Sweep: `reached` is how far from `start` the granted intervals cover without a gap.
    let mut reached = start.to_vec();
    for (s, e) in granted {
        if s > reached.as_slice() {
            break;
        }
        match e {
            None => return true,
            Some(e) if e > reached => reached = e,
            Some(_) => {}
        }
        if end
            .as_ref()
            .is_some_and(|end| reached.as_slice() >= end.as_slice())
        {
            return true;
        }
    }
    false
}

/// Bytes as base64 in the file.
mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(kind: PermKind, key: &str, end: &str) -> Permission {
        Permission {
            kind,
            key: key.into(),
            range_end: end.into(),
        }
    }

    #[test]
    fn single_keys_prefixes_and_open_ranges() {
        let perms = [
            p(PermKind::Read, "a", ""),
            p(PermKind::ReadWrite, "app/", "app0"),
            p(PermKind::Write, "z", "\0"),
        ];
        assert!(covers(&perms, b"a", b"", Need::Read));
        assert!(!covers(&perms, b"a", b"", Need::Write));
        assert!(
            !covers(&perms, b"a", b"b", Need::Read),
            "a range past the key"
        );
        assert!(covers(&perms, b"app/x", b"", Need::Write));
        assert!(covers(&perms, b"app/", b"app0", Need::Read));
        assert!(!covers(&perms, b"app/", b"app1", Need::Read));
        assert!(!covers(&perms, b"ap", b"", Need::Read));
        assert!(covers(&perms, b"zzz", b"\0", Need::Write));
        assert!(!covers(&perms, b"zzz", b"\0", Need::Read));
        assert!(!covers(&perms, b"\0", b"\0", Need::Read), "everything");
    }

    #[test]
    fn adjacent_grants_join() {
        let perms = [p(PermKind::Read, "a", "c"), p(PermKind::Read, "c", "e")];
        assert!(covers(&perms, b"a", b"e", Need::Read));
        assert!(covers(&perms, b"b", b"d", Need::Read));
        assert!(!covers(&perms, b"a", b"f", Need::Read));
        let gap = [p(PermKind::Read, "a", "c"), p(PermKind::Read, "d", "e")];
        assert!(!covers(&gap, b"a", b"e", Need::Read));
    }

    #[test]
    fn valid_ranges() {
        assert!(valid_range(b"a", b""));
        assert!(valid_range(b"a", b"\0"));
        assert!(valid_range(b"a", b"b"));
        assert!(!valid_range(b"", b""));
        assert!(!valid_range(b"z", b"a"));
        assert!(!valid_range(b"a", b"a"));
    }

    proptest! {
        /// The sweep agrees with a key-by-key check over a small alphabet.
        #[test]
        fn covers_agrees_with_every_key(
            grants in prop::collection::vec(("[ab]{1,2}", "[ab]{0,2}"), 0..4),
            key in "[ab]{1,2}",
            end in "[ab]{0,2}",
        ) {
            let perms: Vec<Permission> = grants
                .iter()
                .filter(|(k, e)| valid_range(k.as_bytes(), e.as_bytes()))
                .map(|(k, e)| p(PermKind::Read, k, e))
                .collect();
            // Every key up to 3 letters of {a, b}: the requested ones must each be granted.
            let mut all = vec![String::new()];
            for _ in 0..3 {
                let next: Vec<String> = all.iter().flat_map(|s| [format!("{s}a"), format!("{s}b")]).collect();
                all.extend(next);
            }
            let within = |k: &str, s: &str, e: &str| {
                if e.is_empty() { k == s } else { k >= s && k < e }
            };
            let requested: Vec<&String> = all.iter()
                .filter(|k| !k.is_empty() && within(k, &key, &end))
                .collect();
            let each = requested.iter().all(|k| perms.iter().any(|p| {
                within(k, std::str::from_utf8(&p.key).unwrap(), std::str::from_utf8(&p.range_end).unwrap())
            }));
            let swept = covers(&perms, key.as_bytes(), end.as_bytes(), Need::Read);
            // The sweep is exact on continuous ranges; the key-by-key check sees only a finite
            // alphabet, so a sweep's yes must be a per-key yes.
            if swept { prop_assert!(each, "{perms:?} {key} {end}"); }
            // And a single key is decided the same both ways.
            if end.is_empty() { prop_assert_eq!(swept, each); }
        }
    }
}
