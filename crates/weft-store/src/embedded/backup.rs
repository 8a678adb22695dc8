//! Online backups and restoring them.
//!
//! A backup is a snapshot file (the same format, magic and checksum as the data dir's
//! `snap-*.snap`) of the state at one revision, taken while the store keeps serving: the
//! state copy is O(1) (the key index is a persistent tree), and it is encoded into a temp
//! file in the data dir that is unlinked at once, so a dropped stream or a crash leaves
//! nothing behind. [`restore`] makes a new data directory of such a file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::stream::BoxStream;

use super::codec;
use super::mvcc::Snapshot;
use super::wal;
use crate::{Result, StoreError};

/// Bytes per chunk of a backup stream.
const CHUNK: usize = 256 << 10;

/// Generation of the snapshot a restored data dir starts from (its first log is the same
/// generation, as after a rotation).
const RESTORED_GEN: u64 = 1;

/// Encodes `snap` into an unlinked temp file in `dir`; returns it, positioned at its start,
/// and its length.
pub(crate) fn write_temp(dir: &Path, snap: &Snapshot) -> io::Result<(File, u64)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // `.tmp`: if the unlink below does not happen (a crash in between), opening the data
    // dir removes it.
    let path = dir.join(format!(
        "backup-{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    // The open file stays readable; the name goes now.
    let _ = fs::remove_file(&path);
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let len = codec::write_snapshot(snap, &mut w, usize::MAX, |_| Ok(()))?;
    let mut file = w.into_inner().map_err(|e| e.into_error())?;
    file.seek(SeekFrom::Start(0))?;
    Ok((file, len))
}

/// Reads `file` as a stream of chunks (on the blocking pool).
pub(crate) fn chunks(file: File) -> BoxStream<'static, Result<Bytes>> {
    Box::pin(futures::stream::try_unfold(file, |mut file| async move {
        let (file, buf) = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; CHUNK];
            let mut n = 0;
            while n < buf.len() {
                match file.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(n);
            Ok((file, buf))
        })
        .await
        .map_err(|e| StoreError::Storage(format!("backup reader stopped: {e}")))?
        .map_err(|e| StoreError::Storage(format!("cannot read backup: {e}")))?;
        Ok((!buf.is_empty()).then(|| (Bytes::from(buf), file)))
    }))
}

/// What a backup file holds ([`verify_backup`], [`restore`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupInfo {
    /// The revision it is at (a restored store starts there).
    pub revision: i64,
    /// Its compaction point.
    pub compact_revision: i64,
    /// Keys with history in it (live, or deleted and not yet compacted).
    pub keys: u64,
    /// The snapshot's length in bytes (without the framing a backup saved through the etcd
    /// API has, see [`restore`]).
    pub bytes: u64,
}

/// The length of the snapshot in `buf` if `buf` is one in etcd's framing (what weft's etcd
/// API sends for `etcdctl snapshot save`): the snapshot, zeros up to a multiple of 512
/// bytes, then the SHA-256 of everything before it. `None` if `buf` is not framed that way
/// (a plain snapshot file is not: its length is exactly what its header says).
fn etcd_framed(buf: &[u8]) -> std::result::Result<Option<usize>, String> {
    use sha2::Digest;
    if buf.len() < 20 {
        return Ok(None);
    }
    let Ok(len) = usize::try_from(u64::from_le_bytes(buf[8..16].try_into().expect("8"))) else {
        return Ok(None);
    };
    let Some(snap) = len.checked_add(20) else {
        return Ok(None);
    };
    let framed = snap
        .checked_next_multiple_of(512)
        .and_then(|n| n.checked_add(32));
    if framed != Some(buf.len()) {
        return Ok(None);
    }
    let (body, sum) = buf.split_at(buf.len() - 32);
    if body[snap..].iter().any(|b| *b != 0) {
        return Err("the padding after the snapshot is not zeros".into());
    }
    if sha2::Sha256::digest(body)[..] != sum[..] {
        return Err("its SHA-256 does not match its bytes".into());
    }
    Ok(Some(snap))
}

/// Reads and checks a whole backup file (magic, length, checksum, structure; the SHA-256
/// too if it came through the etcd API).
fn load(backup: &Path) -> Result<(Vec<u8>, BackupInfo)> {
    let mut buf = fs::read(backup)
        .map_err(|e| StoreError::Storage(format!("cannot read {}: {e}", backup.display())))?;
    let corrupt = |reason: String| StoreError::Corrupt {
        file: backup.display().to_string(),
        offset: 0,
        reason: format!("not an intact weft backup: {reason}"),
    };
    if let Some(snap) = etcd_framed(&buf).map_err(corrupt)? {
        buf.truncate(snap);
    }
    let state = codec::decode_snapshot(&buf, tokio::time::Instant::now()).map_err(corrupt)?;
    let info = BackupInfo {
        revision: state.rev,
        compact_revision: state.compact_rev,
        keys: state.keys.len() as u64,
        bytes: buf.len() as u64,
    };
    Ok((buf, info))
}

/// Checks that `backup` is an intact weft backup, as [`restore`] would, without writing
/// anything. Fails with [`StoreError::Corrupt`] if it is not.
pub fn verify_backup(backup: impl AsRef<Path>) -> Result<BackupInfo> {
    load(backup.as_ref()).map(|(_, info)| info)
}

/// Makes a data directory for [`Embedded::open`](super::Embedded::open) from a backup
/// ([`Store::backup`](crate::Store::backup), `weft snapshot save`, a data dir's
/// `snap-*.snap`, or `etcdctl snapshot save` against weft: etcd's framing, zeros to a
/// multiple of 512 bytes and a SHA-256, is checked and dropped). `dir` must not exist or be empty: a data dir is never overwritten. The
/// backup is checked whole (magic, length, checksum, structure) before anything is written,
/// and the snapshot is made durable (file and directory synced) before this returns.
///
/// Leases in the backup keep their ids and TTLs, with a fresh deadline when the store opens
/// (as after a restart). Fails with [`StoreError::Corrupt`] for a file that is not an intact
/// weft backup, and [`StoreError::InvalidArgument`] for a non-empty `dir`.
///
/// ```
/// use futures::StreamExt;
/// use weft_store::embedded::{restore, Embedded, Options};
/// use weft_store::{Store, StoreExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> weft_store::Result<()> {
/// let tmp = tempfile::tempdir().unwrap();
/// let store = Embedded::open(tmp.path().join("live"), Options::default()).await?;
/// store.put_kv("config", "v1").await?;
///
/// // Online: stream the backup to a file.
/// let mut backup = store.backup().await?;
/// let mut bytes = Vec::new();
/// while let Some(chunk) = backup.chunks.next().await {
///     bytes.extend_from_slice(&chunk?);
/// }
/// std::fs::write(tmp.path().join("backup.snap"), &bytes).unwrap();
///
/// // Offline: a new data dir from it, at the backup's revision.
/// let info = restore(tmp.path().join("backup.snap"), tmp.path().join("restored"))?;
/// assert_eq!(info.revision, backup.revision);
/// let copy = Embedded::open(tmp.path().join("restored"), Options::default()).await?;
/// assert_eq!(&copy.get("config").await?.unwrap().value[..], b"v1");
/// # Ok(()) }
/// ```
pub fn restore(backup: impl AsRef<Path>, dir: impl AsRef<Path>) -> Result<BackupInfo> {
    let (backup, dir) = (backup.as_ref(), dir.as_ref());
    let (buf, info) = load(backup)?;
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(StoreError::InvalidArgument(format!(
                    "{} is not empty: restore makes a new data directory (give a path that does \
                     not exist, or an empty directory)",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(dir)
            .map_err(|e| StoreError::Storage(format!("cannot create {}: {e}", dir.display())))?,
        Err(e) => {
            return Err(StoreError::Storage(format!(
                "cannot list {}: {e}",
                dir.display()
            )))
        }
    }
    let name = wal::snap_name(RESTORED_GEN);
    let tmp = dir.join(format!("{name}.tmp"));
    let io = |what: String, e: io::Error| StoreError::Storage(format!("{what}: {e}"));
    let mut f =
        File::create(&tmp).map_err(|e| io(format!("cannot create {}", tmp.display()), e))?;
    f.write_all(&buf)
        .and_then(|()| f.sync_all())
        .map_err(|e| io(format!("cannot write {}", tmp.display()), e))?;
    drop(f);
    fs::rename(&tmp, dir.join(&name))
        .and_then(|()| File::open(dir)?.sync_all())
        .map_err(|e| {
            io(
                format!("cannot put {name} in place in {}", dir.display()),
                e,
            )
        })?;
    Ok(info)
}
