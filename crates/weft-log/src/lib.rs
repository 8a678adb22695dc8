//! weft's append-only log files, shared by the embedded store (`weft-store`) and the embedded
//! queue (`weft-queue`):
//!
//! - [`frame`]: records framed as `len | crc32 | payload`, and [`parse_log`], which tells a
//!   clean end, a torn tail (a write cut short: truncate it) and damage (refuse to start) apart;
//! - [`file`](mod@file): [`LogFile`], positional appends made durable by direct I/O (`O_DIRECT |
//!   O_DSYNC`, one `pwrite` per group) where the file system allows it, else `write` +
//!   `fdatasync`;
//! - [`commit`]: [`Committer`], group commit: one thread writes and syncs everything writers
//!   appended meanwhile, and tells each writer when its records are durable;
//! - [`sched`]: the log threads run under `SCHED_BATCH`, so they do not preempt request
//!   handling.
//!
//! ```
//! use weft_log::{begin_record, finish_record, parse_log, LogTail};
//!
//! let mut buf = Vec::new();
//! for payload in [&b"first"[..], b"second"] {
//!     let start = begin_record(&mut buf);
//!     buf.extend_from_slice(payload);
//!     finish_record(&mut buf, start);
//! }
//! let mut seen = Vec::new();
//! let tail = parse_log(&buf[..buf.len() - 2], |_, p| Ok(seen.push(p.to_vec())));
//! // The second record was cut short: a torn tail, at its start.
//! assert!(matches!(tail, LogTail::Torn { offset: 13 }));
//! assert_eq!(seen, vec![b"first".to_vec()]);
//! ```

pub mod commit;
pub mod file;
pub mod frame;
pub mod sched;

pub use commit::{CommitError, Committer, Sink};
pub use file::{block_start, LogFile, LogIo, BLOCK};
pub use frame::{begin_record, finish_record, parse_log, LogTail, MAX_RECORD, RECORD_HEADER};

/// Makes a directory's entries (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Why a data dir could not be locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirLockError {
    /// The lock file could not be opened (the message names it).
    Io(String),
    /// Another process holds it: the dir, and its pid when known (`"<dir> (pid N)"`).
    InUse(String),
}

/// Takes the exclusive lock of `dir/LOCK` (created if needed) and writes this process's pid in
/// it; the lock lasts as long as the returned file is open.
pub fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File, DirLockError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("LOCK");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| DirLockError::Io(format!("cannot open {}: {e}", path.display())))?;
    if f.try_lock().is_err() {
        let mut owner = String::new();
        let _ = f.read_to_string(&mut owner);
        let who = match owner.trim() {
            "" => String::new(),
            o => format!(" (pid {o})"),
        };
        return Err(DirLockError::InUse(format!("{}{who}", dir.display())));
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = write!(f, "{}", std::process::id());
    let _ = f.sync_all();
    Ok(f)
}
