//! `weft snapshot`: save a backup from a running node, check one, restore one into a data dir.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;

use crate::Conn;

#[derive(Subcommand)]
pub(crate) enum SnapshotCmd {
    /// Save a backup of the node's store (a consistent copy at one revision, taken while it
    /// serves) to FILE: written to FILE.part, checked, synced, then renamed. Also works
    /// against an etcd backend's node (the file is then etcd's database format).
    Save {
        /// Where to write the backup (an existing file is replaced only once the new one is
        /// complete).
        file: PathBuf,
    },
    /// Check a backup file (magic, length, checksum, structure) and print what it holds.
    Status {
        /// The backup file.
        file: PathBuf,
    },
    /// Make a new data directory from a backup (offline); then run `weft up --data-dir DIR`.
    /// Accepts files from `weft snapshot save` and from `etcdctl snapshot save` against weft.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The data directory to create; it must not exist or be empty.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// Prints what a weft backup file holds.
fn print_backup(
    what: &str,
    path: &std::path::Path,
    i: &weft_store::embedded::BackupInfo,
    json: bool,
) {
    if json {
        println!(
            "{}",
            json!({"file": path.display().to_string(), "revision": i.revision,
                   "compact_revision": i.compact_revision, "keys": i.keys, "bytes": i.bytes})
        );
    } else {
        println!(
            "{what} {}: revision {}  compact revision {}  keys {}  {} bytes",
            path.display(),
            i.revision,
            i.compact_revision,
            i.keys,
            i.bytes
        );
    }
}

pub(crate) async fn snapshot(cmd: SnapshotCmd, conn: &Conn) -> Result<()> {
    use weft_store::embedded::{restore, verify_backup};
    match cmd {
        SnapshotCmd::Save { file } => {
            let c = conn.client()?;
            let part = {
                let mut p = file.clone().into_os_string();
                p.push(".part");
                PathBuf::from(p)
            };
            let saved = async {
                let saved = c.download("/v1/snapshot", &part).await?;
                if saved.format == weft_store::BackupFormat::Weft.name() {
                    verify_backup(&part).context("the node sent a damaged backup, not saved")?;
                }
                anyhow::Ok(saved)
            }
            .await
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&part);
            })?;
            std::fs::rename(&part, &file).with_context(|| {
                format!("cannot rename {} to {}", part.display(), file.display())
            })?;
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .with_context(|| format!("cannot sync {}", dir.display()))?;
            }
            if conn.json {
                println!(
                    "{}",
                    json!({"file": file.display().to_string(), "revision": saved.revision,
                           "format": saved.format, "bytes": saved.bytes})
                );
            } else {
                println!(
                    "saved {}: revision {}  {} bytes  format {}",
                    file.display(),
                    saved.revision,
                    saved.bytes,
                    saved.format
                );
            }
        }
        SnapshotCmd::Status { file } => {
            let i = verify_backup(&file)?;
            print_backup("backup", &file, &i, conn.json);
        }
        SnapshotCmd::Restore { file, data_dir } => {
            let i = restore(&file, &data_dir)?;
            print_backup(
                &format!("restored into {} from", data_dir.display()),
                &file,
                &i,
                conn.json,
            );
        }
    }
    Ok(())
}
