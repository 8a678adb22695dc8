//! The log file writer: positional appends, durable by direct I/O where the file system
//! allows it, else by `write` + `fdatasync`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How the log is written (see [`LogFile`]).
#[derive(Clone, Copy, Debug)]
pub struct LogIo {
    /// Every write is durable before it returns (`fsync` policies `group` and `always`).
    pub sync: bool,
    /// Try direct I/O for durable writes.
    pub direct: bool,
}

/// Offsets, lengths and memory addresses of direct I/O are multiples of this (it covers the
/// logical block sizes of common disks).
pub const BLOCK: usize = 4096;

/// Direct I/O: how many bytes of zeros a write that extends the log file writes after its
/// data. A write into blocks the file does not have yet costs the file system an allocation,
/// logged in its journal before `O_DSYNC` returns; overwriting zeros written earlier does not.
/// With this, one write in about 30 (at 2 KiB of records per flush) extends the file. Measured
/// on ext4 over a virtio disk (one block per write, a new block every 2.5 writes): 39–40 µs
/// and 8–10 µs of kernel CPU per write, against 46–58 µs and 16–19 µs without zeros ahead,
/// and no higher maximum (weft-store; docs/runs/etcd-api.md, "key heads in the index, zeros ahead in the
/// log"). The zeros end the log cleanly on
/// recovery, as the rest of a tail block does.
const ZERO_AHEAD: usize = 64 * 1024;

/// The offset of the block `offset` falls in.
pub fn block_start(offset: u64) -> usize {
    (offset - offset % BLOCK as u64) as usize
}

/// The log file being written: records go at `end`, the end of its valid data, by positional
/// writes.
///
/// Durable writes use direct I/O where the file system allows it (ext4, xfs, btrfs; not
/// every tmpfs): the file is opened `O_DIRECT | O_DSYNC`, so one `pwrite` of whole blocks
/// both writes and makes durable, with no page cache and no separate `fdatasync`. The last
/// block is partly data: that data is kept in `tail` and written again, followed by the next
/// records, by the next flush; the rest of the block is zeros on disk, which
/// [`crate::parse_log`] reads as the end of the log. On ext4 over a virtio disk a durable write
/// took 42–48 µs and 11–13 µs of kernel CPU, against 68–75 µs and 23–27 µs for `write` +
/// `fdatasync`, when the machine was fast (the tail block rewritten, the usual case); 65–73 µs
/// and 19–22 µs against 154–163 µs and 49–58 µs when it was slow (a growing file)
/// (weft-store; docs/runs/etcd-api.md, "direct I/O for the log"). Elsewhere, and for `fsync none`: `pwrite`,
/// then `fdatasync` when durable.
pub struct LogFile {
    file: File,
    path: PathBuf,
    end: u64,
    /// The file's length: `end`, or more with the zero padding of direct I/O, or a recycled
    /// file's length.
    size: u64,
    /// Direct I/O: blocks before this offset have been written (zeros or records), so writes
    /// there are overwrites; past it, a write brings zeros ahead (`ZERO_AHEAD`).
    zeroed: u64,
    sync: bool,
    direct: bool,
    /// Direct I/O: the data in the block `end` falls in (`end % BLOCK` bytes).
    tail: Vec<u8>,
    /// Direct I/O: memory for one write, a block larger than needed so that a block-aligned
    /// slice of it fits.
    scratch: Vec<u8>,
}

impl LogFile {
    /// Opens the log at `path` for records from `end` on (a log without valid data, `end`
    /// 0, is emptied, unless it is `recycled`: a spare whose blocks read as zeros); `tail` is
    /// its data from the start of the block `end` falls in.
    pub fn open(
        path: &Path,
        end: u64,
        tail: Vec<u8>,
        io: LogIo,
        recycled: bool,
    ) -> io::Result<Self> {
        let truncate = end == 0 && !recycled;
        let mut file = None;
        if io.sync && io.direct {
            match open_direct(path, truncate) {
                Ok(f) => file = Some(f),
                Err(e) if refused(&e) => {
                    tracing::info!(file = %path.display(), "no direct I/O here ({e}): the log uses write + fdatasync");
                }
                Err(e) => return Err(e),
            }
        }
        let direct = file.is_some();
        let file = match file {
            Some(f) => f,
            None => OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(truncate)
                .open(path)?,
        };
        debug_assert_eq!(tail.len() as u64, end - block_start(end) as u64);
        let size = file.metadata()?.len().max(end);
        Ok(LogFile {
            file,
            path: path.to_path_buf(),
            end,
            size,
            // Only the blocks holding data are known to be written: a new log has none, a
            // recycled spare's blocks are unwritten extents (they read as zeros), and past the
            // data of a log reopened after a restart the zeros written ahead end somewhere
            // unknown (in a recycled one, unwritten extents follow). Zeros are written ahead
            // from there, so later writes overwrite written blocks instead of each costing the
            // file system an allocation or an extent conversion.
            zeroed: end.div_ceil(BLOCK as u64) * BLOCK as u64,
            sync: io.sync,
            direct,
            tail: if direct { tail } else { Vec::new() },
            scratch: Vec::new(),
        })
    }

    /// Whether writes use direct I/O.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// How this file is written: a log started after it is written the same way.
    pub fn io(&self) -> LogIo {
        LogIo {
            sync: self.sync,
            direct: self.direct,
        }
    }

    /// The file's length.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes `data` at the end of the log; durable on return if the log syncs.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.direct {
            match self.write_direct(data) {
                Ok(()) => {}
                Err(e) if refused(&e) => {
                    // The file system took the open but not the write (an alignment it
                    // needs larger than BLOCK): go on without direct I/O.
                    tracing::warn!(file = %self.path.display(), "direct I/O write refused ({e}): the log uses write + fdatasync");
                    self.file = OpenOptions::new().write(true).open(&self.path)?;
                    self.direct = false;
                    self.tail = Vec::new();
                    self.scratch = Vec::new();
                    self.write_buffered(data)?;
                }
                Err(e) => return Err(e),
            }
        } else {
            self.write_buffered(data)?;
        }
        self.end += data.len() as u64;
        self.size = self.size.max(self.end);
        Ok(())
    }

    fn write_buffered(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, self.end)?;
        if self.sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn write_direct(&mut self, data: &[u8]) -> io::Result<()> {
        let start = self.end - self.tail.len() as u64;
        let len = self.tail.len() + data.len();
        let padded = len.div_ceil(BLOCK) * BLOCK;
        // Past the file's end, write zeros ahead too, so that the next writes overwrite
        // blocks that exist (see `ZERO_AHEAD`).
        let zeros = if start + padded as u64 > self.zeroed {
            ZERO_AHEAD
        } else {
            0
        };
        let total = padded + zeros;
        if self.scratch.len() < total + BLOCK {
            self.scratch = vec![0; total + BLOCK];
        }
        let at = self.scratch.as_ptr().align_offset(BLOCK);
        let buf = &mut self.scratch[at..at + total];
        buf[..self.tail.len()].copy_from_slice(&self.tail);
        buf[self.tail.len()..len].copy_from_slice(data);
        buf[len..].fill(0);
        self.file.write_all_at(buf, start)?;
        self.zeroed = self.zeroed.max(start + total as u64);
        self.size = self.size.max(start + total as u64);
        let keep = (self.end + data.len() as u64) as usize % BLOCK;
        self.tail.clear();
        self.tail.extend_from_slice(&buf[len - keep..len]);
        Ok(())
    }
}

/// An error that means "not with direct I/O here", as opposed to a failing disk.
fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL) || e.kind() == io::ErrorKind::Unsupported
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path, truncate: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(truncate)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(path)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &Path, _: bool) -> io::Result<File> {
    Err(io::ErrorKind::Unsupported.into())
}
