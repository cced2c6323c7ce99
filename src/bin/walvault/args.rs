//! Argument types shared by the commands: store URLs, durations, times.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use walvault::{LocalStorage, NamespaceName, ObjectStorage, Result, Storage};

/// A store the commands can work with: any backend that can also list its namespaces.
pub trait Store: Storage + Clone {
    fn namespaces(&self) -> impl std::future::Future<Output = Result<Vec<NamespaceName>>>;
}

impl Store for LocalStorage {
    async fn namespaces(&self) -> Result<Vec<NamespaceName>> {
        LocalStorage::namespaces(self)
    }
}

impl Store for ObjectStorage {
    async fn namespaces(&self) -> Result<Vec<NamespaceName>> {
        ObjectStorage::namespaces(self).await
    }
}

/// The store `--store` names.
#[derive(Clone)]
pub enum Opened {
    Local(LocalStorage),
    Object(ObjectStorage),
}

/// Opens the store named by `--store`: a directory path or `file://` URL (the local
/// backend), or an object-store URL (`s3://bucket/prefix`, `gs://`, `az://`, with
/// credentials from the standard environment variables).
pub fn open_store(url: &str) -> Result<Opened> {
    match url.split_once("://") {
        None => LocalStorage::open(PathBuf::from(url)).map(Opened::Local),
        Some(("file", rest)) => LocalStorage::open(PathBuf::from(rest)).map(Opened::Local),
        Some(_) => ObjectStorage::from_url(url).map(Opened::Object),
    }
}

/// Parses a namespace name, saying which argument was wrong.
pub fn namespace(name: &str) -> Result<NamespaceName> {
    NamespaceName::new(name)
}

/// Parses `250ms`, `10s`, `5m`, `2h` or `7d`.
pub fn duration(text: &str) -> std::result::Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {text:?} needs a unit: ms, s, m, h or d"))?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("duration {text:?} does not start with a number"))?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "duration {text:?}: unknown unit {unit:?} (ms, s, m, h or d)"
            ))
        }
    };
    n.checked_mul(ms_per)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

/// Parses a size such as `64MiB`, `512KiB` or `1GiB` (or a plain number of bytes).
pub fn byte_size(text: &str) -> std::result::Result<usize, String> {
    let size: bytesize::ByteSize = text
        .parse()
        .map_err(|e| format!("size {text:?} is not a size like 64MiB: {e}"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("size {text:?} is too large"))
}

/// Parses an RFC 3339 time such as `2026-11-21T10:00:00Z`.
pub fn time(text: &str) -> std::result::Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("time {text:?} is not RFC 3339 (like 2026-11-21T10:00:00Z): {e}"))
}

/// Ctrl-C (SIGINT) and, on Unix, SIGTERM, listened for from creation on: a signal that
/// arrives while a long-running command is busy (not waiting on this) is kept, not lost.
pub struct StopSignal {
    #[cfg(unix)]
    signals: (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
}

impl StopSignal {
    /// Starts listening. Must be called inside the tokio runtime.
    pub fn listen() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen =
                |kind| signal(kind).map_err(|e| walvault::Error::io("listening for signals", e));
            Ok(Self {
                signals: (
                    listen(SignalKind::interrupt())?,
                    listen(SignalKind::terminate())?,
                ),
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves once a stop signal arrived (at any time since `listen`).
    pub async fn received(&mut self) {
        #[cfg(unix)]
        {
            let (int, term) = &mut self.signals;
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_reject_nonsense() {
        assert_eq!(byte_size("64MiB"), Ok(64 << 20));
        assert_eq!(byte_size("512KiB"), Ok(512 << 10));
        assert_eq!(byte_size("1048576"), Ok(1 << 20));
        for bad in ["", "MiB", "64 parsecs", "-1MiB"] {
            assert!(byte_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_parse_and_reject_nonsense() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "10", "s", "10x", "99999999999999999999d"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }
}
