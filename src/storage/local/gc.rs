//! Garbage collection for the local backend (see `storage/retired.rs` for the rules):
//! retired records are files in `<namespace>/retired/`, segment ages are file
//! modification times.

use std::fs;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use hashbrown::HashSet;

use super::namespace::Namespace;
use super::SEGMENT_EXT;
use crate::error::{Error, Result};
use crate::format::{NamespaceName, SegmentKey};
use crate::storage::fork::FORKS_DIR;
use crate::storage::fsutil::{create_dir_durable, fsync_dir, write_atomic};
use crate::storage::listing;
use crate::storage::retired::{self, GcOptions, GcReport, Record, RETIRED_DIR};

/// Writes a retired record naming `keys`, durably, before the catalog edit that
/// retires them.
pub(super) fn record_retired(dir: &Path, keys: &[SegmentKey]) -> Result<()> {
    let records = dir.join(RETIRED_DIR);
    let io_err = |e| {
        Error::io(
            format!("writing a retired record in {}", records.display()),
            e,
        )
    };
    create_dir_durable(&records).map_err(io_err)?;
    let name = retired::record_name(crate::clock::Clock::system_now(&crate::clock::SystemClock));
    write_atomic(&records, &name, &[&retired::encode(keys)]).map_err(|e| io_err(e.source))?;
    Ok(())
}

/// Records that `fork` reads segments from the namespace in `dir`, durably, before the
/// fork's manifest exists: garbage collection there then asks the fork what it needs.
pub(super) fn mark_fork(dir: &Path, fork: &NamespaceName) -> Result<()> {
    let forks = dir.join(FORKS_DIR);
    let io_err = |e| Error::io(format!("writing a fork marker in {}", forks.display()), e);
    create_dir_durable(&forks).map_err(io_err)?;
    write_atomic(&forks, fork.as_str(), &[]).map_err(|e| io_err(e.source))?;
    Ok(())
}

/// The forks marked in the namespace at `dir`.
pub(super) fn forks(dir: &Path) -> Result<Vec<NamespaceName>> {
    let mut names = Vec::new();
    for entry in entries(&dir.join(FORKS_DIR))? {
        if let Ok(name) = NamespaceName::new(&entry.file_name().to_string_lossy()) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Collects `ns`: `forks` are the keys of this namespace that forks still name.
pub(super) fn collect(
    ns: &Namespace,
    forks: &HashSet<SegmentKey>,
    options: GcOptions,
) -> Result<GcReport> {
    if !ns.dir.exists() {
        return Ok(GcReport::default()); // nothing was ever stored
    }
    let (live, durable) = catalogued(ns)?;
    let records = read_records(&ns.dir.join(RETIRED_DIR))?;
    let objects = segment_files(&ns.dir)?;
    let now = crate::clock::Clock::system_now(&crate::clock::SystemClock);
    let decision = retired::decide(&live, durable, forks, records, &objects, now, options.grace);
    if options.dry_run {
        return Ok(decision.report);
    }
    let mut report = decision.report;
    // A store or fork may have named a segment since the listing: read the catalog
    // again, and check each orphan's age again right before it goes (a re-submitted
    // store writes a new file).
    let (live, _) = catalogued(ns)?;
    report.deleted.retain(|key| !live.contains(key));
    report.orphans.retain(|key| !live.contains(key));
    let mut deleted = Vec::new();
    for key in &report.deleted {
        remove(&ns.segment_path(key))?;
    }
    for key in &report.orphans {
        let path = ns.segment_path(key);
        let young = fs::metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| {
                now.duration_since(t)
                    .map_or(true, |age| age < options.grace)
            });
        if young {
            continue;
        }
        remove(&path)?;
        deleted.push(*key);
    }
    report.orphans = deleted;
    if !report.deleted.is_empty() || !report.orphans.is_empty() {
        fsync(&ns.dir)?;
    }
    if !decision.records.is_empty() {
        for path in &decision.records {
            remove(path)?;
        }
        fsync(&ns.dir.join(RETIRED_DIR))?;
    }
    Ok(report)
}

/// The keys named by the retired records of the namespace at `dir`.
pub(super) fn retired_keys(dir: &Path) -> Result<Vec<SegmentKey>> {
    let records = read_records(&dir.join(RETIRED_DIR))?;
    Ok(records.into_iter().flat_map(|r| r.keys).collect())
}

/// The namespace's catalogued keys and durable frame number, re-read from disk.
fn catalogued(ns: &Namespace) -> Result<(HashSet<SegmentKey>, u64)> {
    ns.refresh()?;
    let catalog = listing::read(&ns.catalog);
    let keys = catalog.entries().iter().map(|e| e.key).collect();
    Ok((keys, catalog.durable_frame_no()))
}

/// The entries of `dir`; none if it does not exist.
fn entries(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let listing = |e| Error::io(format!("listing {}", dir.display()), e);
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map_err(listing)).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(listing(e)),
    }
}

fn read_records(dir: &Path) -> Result<Vec<Record<std::path::PathBuf>>> {
    let mut records = Vec::new();
    for entry in entries(dir)? {
        let name = entry.file_name();
        // Temp files of an interrupted write are not records.
        let Some(at) = retired::parse_name(&name.to_string_lossy()) else {
            continue;
        };
        let path = entry.path();
        let what = path.display().to_string();
        let bytes = fs::read(&path).map_err(|e| Error::io(format!("reading {what}"), e))?;
        let keys = retired::decode(&bytes, &what)?;
        records.push(Record { id: path, at, keys });
    }
    Ok(records)
}

/// The namespace's segment files with their modification times.
fn segment_files(dir: &Path) -> Result<Vec<(SegmentKey, SystemTime)>> {
    let mut out = Vec::new();
    for entry in entries(dir)? {
        let name = entry.file_name();
        let key = name
            .to_string_lossy()
            .strip_suffix(SEGMENT_EXT)
            .and_then(|k| k.parse::<SegmentKey>().ok());
        let Some(key) = key else { continue };
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .map_err(|e| Error::io(format!("reading the age of {}", entry.path().display()), e))?;
        out.push((key, modified));
    }
    Ok(out)
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("deleting {}", path.display()), e)),
    }
}

fn fsync(dir: &Path) -> Result<()> {
    fsync_dir(dir).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
}
