//! Record framing: `len: u32 LE | crc32(payload): u32 LE | payload`, and the parser that tells
//! a clean end, a torn tail and damage apart.

/// Size of a record header.
pub const RECORD_HEADER: usize = 8;
/// Largest record payload accepted when reading (guards against garbage lengths).
pub const MAX_RECORD: usize = 256 * 1024 * 1024;

/// Starts a record at the end of `out`: reserves its header. Returns the record's start, for
/// [`finish_record`].
pub fn begin_record(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    start
}

/// Ends the record started at `start` (by [`begin_record`]): everything after its header is its
/// payload; writes the length and checksum.
pub fn finish_record(out: &mut [u8], start: usize) {
    let body = start + RECORD_HEADER;
    let len = (out.len() - body) as u32;
    let crc = crc32fast::hash(&out[body..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Outcome of parsing a log buffer.
#[derive(Debug)]
pub enum LogTail {
    /// Valid records up to `end`, then nothing, or only zero bytes: the padding of the last
    /// block that direct I/O writes (see [`crate::LogFile`]).
    Clean {
        /// Where the valid data ends.
        end: u64,
    },
    /// The last record is incomplete or fails its checksum and nothing but zero bytes follows
    /// it: a write that was cut short. Valid data ends at `offset`.
    Torn {
        /// Where the cut record starts: the valid data ends there.
        offset: u64,
    },
    /// A bad record followed by more data: real damage.
    Corrupt {
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Parses every record of a log file, calling `f` for each payload with its offset.
pub fn parse_log(buf: &[u8], mut f: impl FnMut(u64, &[u8]) -> Result<(), String>) -> LogTail {
    let mut pos = 0usize;
    while pos < buf.len() {
        let left = buf.len() - pos;
        if left < RECORD_HEADER {
            if zeros(&buf[pos..]) {
                return LogTail::Clean { end: pos as u64 };
            }
            return LogTail::Torn { offset: pos as u64 };
        }
        let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().expect("4"));
        if len == 0 {
            // No record is empty: this is the padding after the last record, or damage.
            if zeros(&buf[pos..]) {
                return LogTail::Clean { end: pos as u64 };
            }
            return LogTail::Corrupt {
                offset: pos as u64,
                reason: "record length 0 followed by data".into(),
            };
        }
        let end = pos + RECORD_HEADER + len;
        if len > MAX_RECORD {
            // A garbage length: torn if it is the end of the file's meaningful data.
            if zeros(&buf[pos + RECORD_HEADER..]) {
                return LogTail::Torn { offset: pos as u64 };
            }
            return LogTail::Corrupt {
                offset: pos as u64,
                reason: format!("record length {len} is impossible"),
            };
        }
        if end > buf.len() {
            return LogTail::Torn { offset: pos as u64 };
        }
        let payload = &buf[pos + RECORD_HEADER..end];
        if crc32fast::hash(payload) != crc {
            if zeros(&buf[end..]) {
                return LogTail::Torn { offset: pos as u64 };
            }
            return LogTail::Corrupt {
                offset: pos as u64,
                reason: "checksum mismatch".into(),
            };
        }
        if let Err(reason) = f(pos as u64, payload) {
            return LogTail::Corrupt {
                offset: pos as u64,
                reason,
            };
        }
        pos = end;
    }
    LogTail::Clean {
        end: buf.len() as u64,
    }
}

fn zeros(b: &[u8]) -> bool {
    b.iter().all(|x| *x == 0)
}
