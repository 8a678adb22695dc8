//! The auth file: JSON, written whole to a temporary file that is synced and renamed over
//! the old one, then the directory synced, so a crash leaves the old file or the new one.

use std::io::Write;
use std::path::Path;

use crate::{AuthError, Result, State};

/// The file format's version; a file of another version is refused.
const VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct OnDisk {
    version: u32,
    #[serde(flatten)]
    state: State,
}

fn io(path: &Path, source: std::io::Error) -> AuthError {
    AuthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The state in `path`; an empty state if there is no file.
pub(crate) fn load(path: &Path) -> Result<State> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(io(path, e)),
    };
    parse(&bytes, path)
}

/// The state in `bytes`, read from `place` (a file, or the store's key: named in errors).
pub(crate) fn parse(bytes: &[u8], place: impl AsRef<Path>) -> Result<State> {
    let path = place.as_ref();
    let corrupt = |reason: String| AuthError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let d: OnDisk = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if d.version != VERSION {
        return Err(corrupt(format!(
            "version {} (this weft reads version {VERSION})",
            d.version
        )));
    }
    for (name, u) in &d.state.users {
        if let Some(h) = &u.password {
            argon2::PasswordHash::new(h)
                .map_err(|e| corrupt(format!("user {name:?}: password hash: {e}")))?;
        }
    }
    Ok(d.state)
}

/// `state` as the file's (and the store key's) bytes.
pub(crate) fn to_bytes(state: &State) -> Result<Vec<u8>> {
    let d = OnDisk {
        version: VERSION,
        state: state.clone(),
    };
    serde_json::to_vec_pretty(&d).map_err(|e| AuthError::Store(format!("cannot encode: {e}")))
}

/// Writes `state` to `path` durably.
pub(crate) fn store(path: &Path, state: &State) -> Result<()> {
    let bytes = to_bytes(state)?;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        // Password hashes: readable by the node's user alone.
        let mut f = std::fs::OpenOptions::new();
        f.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
        let mut f = f.open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| io(path, e))
}
