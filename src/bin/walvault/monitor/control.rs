//! The control socket of one database: `<db>-walvault/daemon.sock`, answering each
//! connection with the database's state as one JSON document (and a newline), then
//! closing it. Unix only; elsewhere there is no socket and `status` says so.

use std::sync::Arc;

use super::DbState;

/// A control socket being served; [`stop`](Self::stop) ends it and removes the file.
pub(crate) struct Control {
    #[cfg(unix)]
    inner: unix::Served,
}

impl Control {
    pub(crate) fn stop(self) {
        #[cfg(unix)]
        self.inner.stop();
    }
}

/// Starts serving `state`'s socket, or warns why it cannot (replication goes on).
pub(crate) fn serve(state: Arc<DbState>) -> Option<Control> {
    #[cfg(unix)]
    {
        let path = state.info.log_dir.join(super::SOCKET_NAME);
        match unix::serve(state.clone(), &path) {
            Ok(inner) => Some(Control { inner }),
            Err(why) => {
                eprintln!(
                    "walvault: warning: `walvault status` cannot reach this daemon for {}: {why}",
                    state.info.db.display()
                );
                None
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = state;
        None
    }
}

#[cfg(unix)]
mod unix {
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::{UnixListener, UnixStream};
    use tokio::task::JoinHandle;

    use super::DbState;

    /// The longest a client gets to take its document.
    const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

    pub(crate) struct Served {
        path: PathBuf,
        /// The socket file's device and inode: only this file is removed at stop, not
        /// one another daemon put there meanwhile.
        id: (u64, u64),
        task: JoinHandle<()>,
    }

    impl Served {
        pub(crate) fn stop(self) {
            self.task.abort();
            let ours =
                std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
            if ours {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    pub(crate) fn serve(state: Arc<DbState>, path: &Path) -> Result<Served, String> {
        let listener = bind(path)?;
        let id = std::fs::symlink_metadata(path)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let task = tokio::spawn(accept(listener, state));
        Ok(Served {
            path: path.to_path_buf(),
            id,
            task,
        })
    }

    /// Binds `path`, first removing a socket file nobody answers on (left by a daemon
    /// that was killed).
    fn bind(path: &Path) -> Result<UnixListener, String> {
        if std::fs::symlink_metadata(path).is_ok() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "another walvault replicate answers on {}",
                    path.display()
                ));
            }
            std::fs::remove_file(path)
                .map_err(|e| format!("removing the stale socket {}: {e}", path.display()))?;
        }
        UnixListener::bind(path).map_err(|e| format!("listening on {}: {e}", path.display()))
    }

    async fn accept(listener: UnixListener, state: Arc<DbState>) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, state.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "control socket: accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn answer(mut stream: UnixStream, state: Arc<DbState>) {
        let mut text = state.document().to_string();
        text.push('\n');
        let write = async {
            stream.write_all(text.as_bytes()).await?;
            stream.shutdown().await
        };
        if let Ok(Err(e)) = tokio::time::timeout(WRITE_TIMEOUT, write).await {
            tracing::debug!(error = %e, "control socket: answering");
        }
    }
}
