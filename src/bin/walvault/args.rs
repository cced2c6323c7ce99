//! Argument types shared by the commands: store URLs, durations, times.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
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

/// Where the store is when `--store` is not given.
pub const DEFAULT_STORE: &str = "./walvault-store";

/// The store URL a command uses: `--store` when given, else `WALVAULT_STORE`, else
/// `./walvault-store`. One function so every command resolves it alike (a config file's
/// store belongs between the flag and the environment).
pub fn store_url(flag: Option<&str>) -> String {
    if let Some(url) = flag {
        return url.to_string();
    }
    match std::env::var("WALVAULT_STORE") {
        Ok(url) if !url.is_empty() => url,
        _ => DEFAULT_STORE.to_string(),
    }
}

/// The directory of a local store URL (a path or `file://` URL); None for object stores.
pub fn local_dir(url: &str) -> Option<PathBuf> {
    walvault::local_store_dir(url)
}

/// Opens the store named by `--store`, creating a local store's directory: a directory
/// path or `file://` URL (the local backend), or an object-store URL (`s3://bucket/prefix`,
/// `gs://`, `az://`, with credentials from the standard environment variables). Only
/// commands that write a namespace's history from a database (`replicate`, `demo`) use
/// this; the others use [`open_store_existing`].
pub fn open_store(url: &str) -> Result<Opened> {
    match local_dir(url) {
        Some(dir) => LocalStorage::open(dir).map(Opened::Local),
        None => ObjectStorage::from_url(url).map(Opened::Object),
    }
}

/// Opens a store that must already exist: a local store directory that does not exist
/// is an error naming it (a typo would otherwise look like an empty store), not created.
pub fn open_store_existing(url: &str) -> Result<Opened> {
    if let Some(dir) = local_dir(url) {
        if !dir.is_dir() {
            return Err(missing_store(&dir));
        }
    }
    open_store(url)
}

/// The error for a local store directory that does not exist.
pub fn missing_store(dir: &Path) -> walvault::Error {
    walvault::Error::NotFound(format!(
        "store directory {} does not exist (`walvault replicate` creates it; pass --store \
         or set WALVAULT_STORE to use another store)",
        dir.display()
    ))
}

/// Parses a namespace name, saying which argument was wrong.
pub fn namespace(name: &str) -> Result<NamespaceName> {
    NamespaceName::new(name)
}

/// Parses a duration as `humantime` does: `250ms`, `10s`, `1.5s`, `1h30m`, `1h 30m`, `7d`.
/// A number without a unit is refused (is `10` seconds or milliseconds?), except `0`.
pub fn duration(text: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("duration {text:?}: {e} (write it like 250ms, 1.5s, 1h30m or 7d)"))
}

/// A duration above zero: for intervals and lags, where zero would make a loop spin.
pub fn positive_duration(text: &str) -> std::result::Result<Duration, String> {
    at_least(text, Duration::from_millis(1))
}

/// A duration of at least `min` (for `value_parser`, wrap it in a closure or a function:
/// `|t: &str| args::at_least(t, Duration::from_millis(10))`). The error names the minimum.
pub fn at_least(text: &str, min: Duration) -> std::result::Result<Duration, String> {
    let d = duration(text)?;
    if d < min {
        let min = humantime::format_duration(min);
        return Err(format!("duration {text:?} is too short: at least {min}"));
    }
    Ok(d)
}

/// A time as every command prints it: RFC 3339 in UTC with milliseconds and `Z`
/// (`2026-11-21T10:00:00.123Z`), which is what `--at` takes back and what commits store.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A memory budget: a size of at least [`walvault::MIN_MEMORY_BUDGET`].
pub fn budget_size(text: &str) -> std::result::Result<usize, String> {
    let bytes = byte_size(text)?;
    if bytes < walvault::MIN_MEMORY_BUDGET {
        return Err(format!("{text} is below the smallest memory budget, 1MiB"));
    }
    Ok(bytes)
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
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "10", "s", "10x", "99999999999999999999d", "-1s"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_is_refused_where_it_would_spin() {
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        assert!(positive_duration("0s").unwrap_err().contains("too short"));
        assert!(positive_duration("0ms").is_err());
        assert_eq!(positive_duration("1ms"), Ok(Duration::from_millis(1)));
        let err = at_least("5ms", Duration::from_millis(10)).unwrap_err();
        assert!(err.contains("at least 10ms"), "{err}");
    }

    #[test]
    fn times_print_in_one_format() {
        let t = time("2026-11-21T12:00:00.5+02:00").unwrap();
        assert_eq!(rfc3339(t), "2026-11-21T10:00:00.500Z");
    }
}
