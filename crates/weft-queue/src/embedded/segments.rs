//! The commit log on disk: segment files `log/<first position, 20 digits>.seg`, written by the
//! group-commit thread (`weft_log::Committer` with [`SegSink`]), read by position
//! ([`Segments::read_at`]), scanned on start ([`scan`]) and removed once nothing in them is
//! needed ([`Segments::remove_below`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use weft_log::{LogFile, LogIo, LogTail};

use crate::{QueueError, Result};

/// The segment files, by first position, open for reading.
pub(crate) struct Segments {
    dir: PathBuf,
    files: RwLock<BTreeMap<u64, Arc<File>>>,
}

pub(crate) fn seg_name(base: u64) -> String {
    format!("{base:020}.seg")
}

impl Segments {
    fn add(&self, base: u64) -> io::Result<()> {
        let f = File::open(self.dir.join(seg_name(base)))?;
        self.files
            .write()
            .expect("segments poisoned")
            .insert(base, Arc::new(f));
        Ok(())
    }

    /// Reads `len` bytes at log position `pos`.
    pub fn read_at(&self, pos: u64, len: u32) -> Result<Vec<u8>> {
        let files = self.files.read().expect("segments poisoned");
        self.read_in(&files, pos, len)
    }

    /// [`Segments::read_at`] with the file table already read-locked.
    fn read_in(&self, files: &BTreeMap<u64, Arc<File>>, pos: u64, len: u32) -> Result<Vec<u8>> {
        let (base, f) = {
            let Some((b, f)) = files.range(..=pos).next_back() else {
                return Err(QueueError::Corrupt(format!(
                    "no segment holds log position {pos}"
                )));
            };
            (*b, f.clone())
        };
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, pos - base).map_err(|e| {
            QueueError::Storage(format!(
                "cannot read {} at {}: {e}",
                self.dir.join(seg_name(base)).display(),
                pos - base
            ))
        })?;
        Ok(buf)
    }

    /// Reads several spans `(pos, len)`, in the order given: spans that lie close together in
    /// one segment are read with one `pread` (a pull's messages usually do).
    pub fn read_many(&self, spans: &[(u64, u32)]) -> Result<Vec<bytes::Bytes>> {
        /// Most bytes of unwanted records a run reads through, and the most a run reads.
        const GAP: u64 = 16 << 10;
        const RUN: u64 = 1 << 20;
        let mut order: Vec<usize> = (0..spans.len()).collect();
        order.sort_unstable_by_key(|&i| spans[i].0);
        let mut out = vec![bytes::Bytes::new(); spans.len()];
        let files = self.files.read().expect("segments poisoned");
        let base_of = |pos: u64| files.range(..=pos).next_back().map(|(b, _)| *b);
        let mut i = 0;
        while i < order.len() {
            let (start, first_len) = spans[order[i]];
            let base = base_of(start);
            let mut end = start + u64::from(first_len);
            let mut j = i + 1;
            while j < order.len() {
                let (p, l) = spans[order[j]];
                let e = p + u64::from(l);
                if p > end + GAP || e.max(end) - start > RUN || base_of(p) != base {
                    break;
                }
                end = end.max(e);
                j += 1;
            }
            let run = bytes::Bytes::from(self.read_in(&files, start, (end - start) as u32)?);
            for &k in &order[i..j] {
                let (p, l) = spans[k];
                let at = (p - start) as usize;
                out[k] = run.slice(at..at + l as usize);
            }
            i = j;
        }
        Ok(out)
    }

    /// Bytes on disk.
    pub fn disk_bytes(&self) -> u64 {
        let files = self.files.read().expect("segments poisoned");
        files
            .values()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// How many segments end at or before `pos` (not counting the newest one).
    pub fn removable_below(&self, pos: u64) -> usize {
        let files = self.files.read().expect("segments poisoned");
        let bases: Vec<u64> = files.keys().copied().collect();
        bases.windows(2).filter(|w| w[1] <= pos).count()
    }

    /// Removes the segments that end at or before `pos`, never the newest one. Returns how
    /// many.
    pub fn remove_below(&self, pos: u64) -> usize {
        let mut files = self.files.write().expect("segments poisoned");
        let bases: Vec<u64> = files.keys().copied().collect();
        let mut n = 0;
        for w in bases.windows(2) {
            // Segment w[0] ends where w[1] starts.
            if w[1] <= pos {
                files.remove(&w[0]);
                let path = self.dir.join(seg_name(w[0]));
                match fs::remove_file(&path) {
                    Ok(()) => n += 1,
                    Err(e) => tracing::warn!(file = %path.display(), "cannot remove segment: {e}"),
                }
            }
        }
        n
    }
}

/// The group-commit thread's side: appends to the newest segment, starts a new one past
/// `segment_bytes`, and makes messages visible once durable.
pub(crate) struct SegSink {
    pub segs: Arc<Segments>,
    pub file: LogFile,
    pub base: u64,
    pub end: u64,
    pub segment_bytes: u64,
    pub io: LogIo,
    pub on_durable: Box<dyn FnMut(u64) + Send>,
    /// The writes' size, for the metrics.
    pub written: Arc<Mutex<u64>>,
}

impl weft_log::Sink for SegSink {
    fn write(&mut self, at: u64, data: &[u8]) -> io::Result<()> {
        debug_assert_eq!(at, self.end);
        self.file.write(data).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}: {e}", self.segs.dir.join(seg_name(self.base)).display()),
            )
        })?;
        self.end += data.len() as u64;
        *self.written.lock().expect("written poisoned") += data.len() as u64;
        if self.end - self.base >= self.segment_bytes {
            let base = self.end;
            let path = self.segs.dir.join(seg_name(base));
            self.file = LogFile::open(&path, 0, Vec::new(), self.io, false)?;
            weft_log::sync_dir(&self.segs.dir)?;
            self.base = base;
            self.segs.add(base)?;
        }
        Ok(())
    }

    fn durable(&mut self, end: u64) {
        (self.on_durable)(end);
    }
}

/// What a start found in `log/`.
pub(crate) struct Scanned {
    pub segs: Arc<Segments>,
    /// The newest segment, open for appending at its valid end.
    pub file: LogFile,
    pub base: u64,
    pub end: u64,
}

/// Opens `dir/log`, calling `f(position, payload)` for every record from the oldest segment
/// on. A torn tail of the newest segment is cut off; damage anywhere else is refused with
/// the file and offset.
pub(crate) fn scan(
    dir: &Path,
    io: LogIo,
    mut f: impl FnMut(u64, &[u8]) -> std::result::Result<(), String>,
) -> Result<Scanned> {
    let dir = dir.join("log");
    fs::create_dir_all(&dir).map_err(|e| storage("cannot create", &dir, e))?;
    let mut bases = Vec::new();
    for e in fs::read_dir(&dir).map_err(|e| storage("cannot read", &dir, e))? {
        let e = e.map_err(|e| storage("cannot read", &dir, e))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(b) = name
            .strip_suffix(".seg")
            .and_then(|b| b.parse::<u64>().ok())
        {
            bases.push(b);
        }
    }
    bases.sort_unstable();
    if bases.is_empty() {
        bases.push(0);
    }
    let segs = Arc::new(Segments {
        dir: dir.clone(),
        files: RwLock::new(BTreeMap::new()),
    });
    let mut last = (0, 0, Vec::new());
    for (i, &base) in bases.iter().enumerate() {
        let path = dir.join(seg_name(base));
        let buf = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(storage("cannot read", &path, e)),
        };
        let is_last = i + 1 == bases.len();
        let end = match weft_log::parse_log(&buf, |at, p| {
            f(base + at + weft_log::RECORD_HEADER as u64, p)
        }) {
            LogTail::Clean { end } => end,
            LogTail::Torn { offset } if is_last => {
                tracing::warn!(file = %path.display(), offset, "cutting off a torn write at the end of the queue log");
                offset
            }
            LogTail::Torn { offset } => {
                return Err(QueueError::Corrupt(format!(
                    "{} is cut short at offset {offset}, and later segments follow it",
                    path.display()
                )))
            }
            LogTail::Corrupt { offset, reason } => {
                return Err(QueueError::Corrupt(format!(
                    "{} at offset {offset}: {reason}",
                    path.display()
                )))
            }
        };
        if !is_last && base + end != bases[i + 1] {
            return Err(QueueError::Corrupt(format!(
                "{} ends at log position {} but the next segment starts at {}",
                path.display(),
                base + end,
                bases[i + 1]
            )));
        }
        if is_last {
            let tail = buf[weft_log::block_start(end)..end as usize].to_vec();
            last = (base, end, tail);
        }
    }
    let (base, end, tail) = last;
    let path = dir.join(seg_name(base));
    let file =
        LogFile::open(&path, end, tail, io, false).map_err(|e| storage("cannot open", &path, e))?;
    weft_log::sync_dir(&dir).map_err(|e| storage("cannot sync", &dir, e))?;
    for &b in &bases {
        segs.add(b)
            .map_err(|e| storage("cannot open", &dir.join(seg_name(b)), e))?;
    }
    Ok(Scanned {
        segs,
        file,
        base,
        end: base + end,
    })
}

fn storage(what: &str, path: &Path, e: io::Error) -> QueueError {
    QueueError::Storage(format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_many_returns_each_span_in_the_order_asked_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let first: Vec<u8> = (0..100u8).collect();
        let second: Vec<u8> = (100..=255u8).collect();
        fs::write(dir.path().join(seg_name(0)), &first).unwrap();
        fs::write(dir.path().join(seg_name(100)), &second).unwrap();
        let segs = Segments {
            dir: dir.path().to_path_buf(),
            files: RwLock::new(BTreeMap::new()),
        };
        segs.add(0).unwrap();
        segs.add(100).unwrap();
        // Out of order, overlapping a segment end, adjacent, and far apart.
        let spans = [(150, 5), (2, 3), (95, 5), (100, 2), (5, 1), (0, 0)];
        let got = segs.read_many(&spans).unwrap();
        for ((pos, len), b) in spans.iter().zip(&got) {
            let want: Vec<u8> = (*pos..pos + u64::from(*len)).map(|v| v as u8).collect();
            assert_eq!(b.as_ref(), &want[..], "span at {pos}");
        }
        assert!(segs.read_many(&[(250, 10)]).is_err(), "past the end");
    }
}
