//! A follower keeps a local database file equal to a namespace's latest durable state.
//!
//! The first catch-up restores the latest state (each page read once). Later ones apply
//! the committed transactions after the recorded position, page by page, in place. The
//! position is kept in a sidecar file `<output>.walvault-position`, replaced atomically
//! after the database file is fsynced, so after a crash the follower re-applies at most
//! the transactions since the last recorded position (page images: applying them again
//! changes nothing) and never skips one. Between catch-ups the file is a consistent
//! database; during one it is not, so readers should open it between catch-ups.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{next_segment, transactions_in};
use crate::error::{Error, FormatError, Part, Result};
use crate::format::NamespaceName;
use crate::storage::fsutil::{fsync_dir, write_atomic};
use crate::storage::{RestoreOptions, Storage};

/// Keeps `output` in step with a namespace. See the module docs.
#[derive(Debug)]
pub struct Follower<S: Storage> {
    storage: S,
    namespace: NamespaceName,
    output: PathBuf,
    sidecar: PathBuf,
    position: u64,
}

impl<S: Storage> Follower<S> {
    /// A follower of `namespace` writing `output`, resuming from its sidecar if there is
    /// one. A sidecar without its database file is an error (the position would lie).
    pub fn open(storage: S, namespace: NamespaceName, output: impl Into<PathBuf>) -> Result<Self> {
        let output = output.into();
        let mut sidecar = output.clone().into_os_string();
        sidecar.push(".walvault-position");
        let sidecar = PathBuf::from(sidecar);
        let position = read_position(&sidecar)?;
        if position > 0 && !output.exists() {
            return Err(Error::NotFound(format!(
                "{} (its position file {} says frame {position} was applied)",
                output.display(),
                sidecar.display()
            )));
        }
        Ok(Self {
            storage,
            namespace,
            output,
            sidecar,
            position,
        })
    }

    /// The commit frame the output file is at (0 before the first catch-up).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Brings the output up to the namespace's durable frame number; returns the new
    /// position.
    pub async fn catch_up(&mut self) -> Result<u64> {
        self.storage.refresh(&self.namespace, None).await?;
        let durable = self.storage.durable_frame_no(&self.namespace, None).await?;
        if self.position == 0 {
            if durable == 0 {
                return Ok(0);
            }
            let frame_no = self.restore_latest().await?;
            self.record(frame_no)?;
        }
        while self.position < durable {
            let segment = next_segment(&self.storage, &self.namespace, self.position).await?;
            let txns = transactions_in(&segment, self.position, durable);
            let Some(last) = txns.last().map(|t| t.commit.frame_no) else {
                break;
            };
            let page_size = u64::from(segment.page_size());
            let path = &self.output;
            let io_err = |e| Error::io(format!("applying to {}", path.display()), e);
            let mut file = OpenOptions::new().write(true).open(path).map_err(io_err)?;
            for txn in &txns {
                for (page_no, data) in &txn.pages {
                    let offset = u64::from(page_no - 1) * page_size;
                    file.seek(SeekFrom::Start(offset))
                        .and_then(|_| file.write_all(data))
                        .map_err(io_err)?;
                }
                file.set_len(u64::from(txn.commit.size_after) * page_size)
                    .map_err(io_err)?;
            }
            file.sync_all().map_err(io_err)?;
            self.record(last)?;
        }
        Ok(self.position)
    }

    /// Restores the latest state beside the output and renames it over the output: a
    /// crash before the position is recorded leaves a file the next run replaces.
    async fn restore_latest(&self) -> Result<u64> {
        let mut tmp = self.output.clone().into_os_string();
        tmp.push(".walvault-restore");
        let tmp = PathBuf::from(tmp);
        let io_err = |e| Error::io(format!("restoring into {}", self.output.display()), e);
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(e)),
            _ => {}
        }
        let summary = self
            .storage
            .restore_to_path(&self.namespace, RestoreOptions::Latest, &tmp, None)
            .await?;
        std::fs::rename(&tmp, &self.output).map_err(io_err)?;
        fsync_dir(&self.dir()).map_err(io_err)?;
        Ok(summary.frame_no)
    }

    fn dir(&self) -> PathBuf {
        match self.output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn record(&mut self, frame_no: u64) -> Result<()> {
        let dir = self.dir();
        let name = self
            .sidecar
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        let mut bytes = frame_no.to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
        write_atomic(&dir, &name, &[&bytes])
            .map_err(|e| Error::io(format!("writing {}", self.sidecar.display()), e.source))?;
        self.position = frame_no;
        Ok(())
    }
}

fn read_position(path: &Path) -> Result<u64> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let corrupt = |reason| Error::corrupt(path.display(), reason);
    if bytes.len() != 12 {
        return Err(corrupt(FormatError::Length {
            expected: 12,
            actual: bytes.len() as u64,
        }));
    }
    let (value, crc) = bytes.split_at(8);
    if crc32c::crc32c(value).to_le_bytes() != crc {
        return Err(corrupt(FormatError::Checksum {
            part: Part::Header,
            offset: 8,
        }));
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(value);
    Ok(u64::from_le_bytes(word))
}
