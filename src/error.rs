//! Errors, in two layers.
//!
//! The public [`Error`] is small and classified by what the caller should do about it
//! ([`Error::kind`], an [`ErrorKind`]): retry later, have a person fix something (the
//! credentials, a permission, a missing bucket), treat stored data as corrupt, fix the
//! input, look elsewhere, or reopen. A daemon decides from the kind alone whether to
//! wait out a failure or stop, so the kind comes from the structure of the failure
//! (`object_store`'s error variants, the transport error inside them, the operating
//! system's error kind), never from message text.
//! Each variant carries a detail type ([`InvalidInput`], [`FormatError`]) that names
//! exactly what was wrong, so a message never needs a debugger to be understood.
//! `Error` is `Clone` (sources live in `Arc`) because one failure may have to reach many
//! waiters.

use std::fmt;
use std::io;
use std::sync::Arc;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in walvault, classified by what the caller should do.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller passed something malformed. Retrying the same call will fail again.
    #[error("invalid input: {0}")]
    InvalidInput(#[from] InvalidInput),
    /// Stored bytes failed verification. `what` names the object (segment key, file path).
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// The object that failed verification.
        what: String,
        /// What exactly is wrong with it.
        reason: FormatError,
    },
    /// The thing asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An I/O operation failed; the operation may succeed if retried.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What walvault was doing.
        context: String,
        /// The underlying error.
        source: Arc<io::Error>,
    },
    /// An earlier write or fsync failed, so the on-disk state is unknown. Every later
    /// operation on that namespace reports this until the storage is reopened.
    #[error("namespace {namespace} is unusable after an earlier I/O failure ({cause}); reopen the storage")]
    Poisoned {
        /// The namespace whose state is unknown.
        namespace: String,
        /// The first failure.
        cause: String,
    },
    /// Another handle or process is writing the namespace; one writer at a time.
    #[error("namespace {namespace} is being written by another handle or process: {detail}")]
    Conflict {
        /// The namespace.
        namespace: String,
        /// What holds it.
        detail: String,
    },
    /// A newer writer took over the namespace: this handle's stores are refused, and
    /// nothing it stored after losing is visible.
    #[error("namespace {namespace}: this writer (epoch {epoch}) was fenced by a newer writer (epoch {newer}); reopen to write again")]
    Fenced {
        /// The namespace.
        namespace: String,
        /// This handle's writer epoch.
        epoch: u64,
        /// The epoch of the writer that took over.
        newer: u64,
    },
    /// A segment does not build on the namespace's latest state: its lineage checksum
    /// names another database state (another copy of the database wrote the namespace,
    /// or the store's history was emptied or replaced). Nothing was stored; ship a
    /// snapshot, which starts a new lineage.
    #[error("namespace {namespace} has diverged from this writer: {detail}")]
    Diverged {
        /// The namespace.
        namespace: String,
        /// Which states disagree.
        detail: String,
    },
    /// The storage was shut down.
    #[error("storage is shut down")]
    Closed,
    /// The backend cannot do what was asked (for example, edit its catalog).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A request to an object store failed. `kind` says whether waiting can help
    /// ([`ErrorKind::Transient`]) or a person must fix something
    /// ([`ErrorKind::Permanent`]; `context` then says what).
    #[error("{context}: {source}")]
    Store {
        /// What the caller should do about it.
        kind: ErrorKind,
        /// What walvault was doing, and for a permanent failure what to fix.
        context: String,
        /// The store client's error.
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// An attached connection's commit did not reach the durability it waits for within
    /// its deadline. The transaction is committed in the database all the same, and
    /// walvault goes on shipping it: the application must not run it a second time.
    #[error("the commit of {db} is not {level} after {waited:?} (the store is away or slow); it is committed in the database and walvault keeps shipping it")]
    CommitTimeout {
        /// The database.
        db: String,
        /// The durability the commit waited for.
        level: String,
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// SQLite reported an error while walvault read or checked a database.
    #[error("SQLite error while {context}: {message}")]
    Sqlite {
        /// What walvault was doing.
        context: String,
        /// SQLite's message.
        message: String,
    },
}

impl Error {
    /// An I/O error, with what walvault (or a tool built on it) was doing.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// An error SQLite reported, with what was being done.
    pub fn sqlite(context: impl Into<String>, e: impl fmt::Display) -> Self {
        Error::Sqlite {
            context: context.into(),
            message: e.to_string(),
        }
    }

    pub(crate) fn corrupt(what: impl fmt::Display, reason: FormatError) -> Self {
        Error::Corrupt {
            what: what.to_string(),
            reason,
        }
    }

    /// What the caller should do about this error; see [`ErrorKind`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Io { source, .. } => io_kind(source.kind()),
            Error::Poisoned { .. } | Error::Closed => ErrorKind::Closed,
            Error::Conflict { .. } | Error::Fenced { .. } => ErrorKind::Conflict,
            Error::Diverged { .. } => ErrorKind::Diverged,
            // SQLite's messages carry no code here; walvault cannot tell a busy database
            // from a broken one, so it does not wait on either.
            Error::Unsupported(_) | Error::Sqlite { .. } => ErrorKind::Permanent,
            Error::Store { kind, .. } => *kind,
            Error::CommitTimeout { .. } => ErrorKind::Transient,
        }
    }

    /// True when the same operation may succeed if retried later
    /// ([`ErrorKind::Transient`]).
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// This error, saying that retries gave up on it after `elapsed` and `attempts`
    /// attempts.
    pub(crate) fn gave_up(self, elapsed: std::time::Duration, attempts: u32) -> Self {
        let after = format!(
            "gave up after {attempts} attempts in {:.1} s",
            elapsed.as_secs_f64()
        );
        self.with_note(&after)
    }

    /// This error with `note` added to what walvault was doing (store and I/O errors;
    /// others are returned as they are).
    pub(crate) fn with_note(self, note: &str) -> Self {
        let after = format!("; {note}");
        match self {
            Error::Store {
                kind,
                context,
                source,
            } => Error::Store {
                kind,
                context: context + &after,
                source,
            },
            Error::Io { context, source } => Error::Io {
                context: context + &after,
                source,
            },
            other => other,
        }
    }

    /// True when the error is about malformed input from the caller.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Error::InvalidInput(_))
    }

    /// True when stored data failed verification.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }

    /// True when a store refused a segment because it does not build on the
    /// namespace's latest state (see [`Error::Diverged`]).
    pub fn is_diverged(&self) -> bool {
        matches!(self, Error::Diverged { .. })
    }

    /// True when the requested object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }
}

/// What the caller should do about an [`Error`] (see [`Error::kind`]).
///
/// A replication daemon waits out [`Transient`](ErrorKind::Transient) errors for as long
/// as its policy says and stops on every other kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Retrying later may succeed: the store is unreachable (connection refused or reset,
    /// a timeout), failing for now (HTTP 5xx), throttling (HTTP 429), or a local I/O
    /// operation failed in a way that may pass (EIO, a full disk). An error whose cause
    /// walvault cannot tell apart is also transient, so that a daemon keeps the log and
    /// says what fails rather than exit on a glitch.
    Transient,
    /// Waiting will not help; a person must fix something: credentials the store
    /// rejects, a permission it denies, a bucket that does not exist, a configuration it
    /// refuses, an operation the backend does not support, a local permission.
    Permanent,
    /// Stored bytes failed verification.
    Corrupt,
    /// The caller passed something malformed; the same call fails again.
    InvalidInput,
    /// The thing asked for does not exist.
    NotFound,
    /// Another writer holds the namespace or took it over (fencing), or an object that
    /// must be created once already exists.
    Conflict,
    /// The store's history moved on without this writer (another copy of the database
    /// wrote the namespace, or its history was emptied or replaced): nothing was stored;
    /// ship a snapshot, which starts a new lineage.
    Diverged,
    /// The handle is shut down, or unusable after an earlier failure: reopen it.
    Closed,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Diverged => "diverged",
            ErrorKind::NotFound => "not found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Closed => "closed",
        })
    }
}

/// The kind of a local I/O error: a missing or forbidden path, a read-only file system
/// or malformed data will not change by waiting; anything else (EIO, a full disk, an
/// interrupted or timed-out operation) may.
pub(crate) fn io_kind(kind: io::ErrorKind) -> ErrorKind {
    use io::ErrorKind as K;
    match kind {
        K::PermissionDenied
        | K::NotFound
        | K::ReadOnlyFilesystem
        | K::InvalidInput
        | K::InvalidData
        | K::Unsupported
        | K::IsADirectory
        | K::NotADirectory
        | K::InvalidFilename => ErrorKind::Permanent,
        _ => ErrorKind::Transient,
    }
}

/// Malformed input, with the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// A namespace name that is not 1–128 characters of `[A-Za-z0-9._-]`, or is `.`/`..`.
    #[error("namespace name {name:?}: {reason}")]
    NamespaceName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A string that is not a well-formed segment key.
    #[error("segment key {key:?}: {reason}")]
    SegmentKey {
        /// The rejected key (truncated to 100 characters).
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A page size SQLite does not allow.
    #[error("page size {0}: must be a power of two from 512 to 65536")]
    PageSize(u32),
    /// Page number zero (SQLite page numbers start at 1).
    #[error("page number 0: page numbers start at 1")]
    PageNo,
    /// A page buffer whose length differs from the segment's page size.
    #[error("page of {actual} bytes in a segment of {expected}-byte pages")]
    PageLength {
        /// The segment's page size.
        expected: u32,
        /// The length passed.
        actual: usize,
    },
    /// A frame number that cannot be used (zero, or the log ran out of numbers).
    #[error("frame number {frame_no}: {reason}")]
    FrameNo {
        /// The offending frame number.
        frame_no: u64,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// A commit that cannot be recorded.
    #[error("commit at frame {frame_no}: {reason}")]
    Commit {
        /// The commit's frame number.
        frame_no: u64,
        /// Why it was rejected.
        reason: String,
    },
    /// A timestamp outside the range walvault stores (the Unix epoch to year 262143).
    #[error("timestamp {0}: must be at or after 1970-01-01T00:00:00Z")]
    Timestamp(String),
    /// A segment builder that cannot be sealed yet.
    #[error("cannot seal: {0}")]
    Seal(&'static str),
    /// A segment that does not extend the namespace's log.
    #[error("segment {key} does not extend the log of {namespace}: {reason}")]
    OutOfOrder {
        /// The namespace.
        namespace: String,
        /// The rejected segment's key.
        key: String,
        /// What it conflicts with.
        reason: String,
    },
    /// An output that cannot be written, such as an existing file restore would replace.
    #[error("output {0}")]
    Output(String),
    /// A bad configuration value.
    #[error("configuration: {0}")]
    Config(String),
    /// A catalog edit (compaction, retention) that does not fit the catalog.
    #[error("cannot replace segments of namespace {namespace}: {reason}")]
    Replace {
        /// The namespace.
        namespace: String,
        /// Which rule the edit broke.
        reason: String,
    },
}

/// What exactly is wrong with a byte sequence that failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The magic number of a part is wrong: not a walvault file, or the wrong part.
    #[error("bad magic number in {0}")]
    BadMagic(Part),
    /// A format version this build does not read.
    #[error("unsupported format version {0}")]
    Version(u16),
    /// A checksum did not match.
    #[error("checksum mismatch in {part} at byte {offset}")]
    Checksum {
        /// The part whose checksum failed.
        part: Part,
        /// Byte offset of the part in the file.
        offset: u64,
    },
    /// The byte count differs from what the header describes (truncation or trailing bytes).
    #[error("length is {actual} bytes, the header describes {expected}")]
    Length {
        /// Length implied by the header.
        expected: u64,
        /// Length found.
        actual: u64,
    },
    /// A field holds a value that is not allowed or disagrees with another field.
    #[error("{part} at byte {offset}: {reason}")]
    Invalid {
        /// The part holding the field.
        part: Part,
        /// Byte offset of the field (or of the part) in the file.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A part of an encoded file, named in [`FormatError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Part {
    /// The segment header.
    Header,
    /// The frame at this position (0-based) in the segment.
    Frame(u32),
    /// The commit table.
    CommitTable,
    /// The page index.
    PageIndex,
    /// The segment trailer.
    Trailer,
    /// The manifest file header.
    ManifestHeader,
    /// A manifest journal record.
    ManifestRecord,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Header => f.write_str("header"),
            Part::Frame(i) => write!(f, "frame #{i}"),
            Part::CommitTable => f.write_str("commit table"),
            Part::PageIndex => f.write_str("page index"),
            Part::Trailer => f.write_str("trailer"),
            Part::ManifestHeader => f.write_str("manifest header"),
            Part::ManifestRecord => f.write_str("manifest record"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_io_errors_are_transient_unless_waiting_cannot_help() {
        let kind = |k: io::ErrorKind| Error::io("doing", io::Error::from(k)).kind();
        assert_eq!(kind(io::ErrorKind::StorageFull), ErrorKind::Transient);
        assert_eq!(kind(io::ErrorKind::Other), ErrorKind::Transient);
        assert_eq!(kind(io::ErrorKind::TimedOut), ErrorKind::Transient);
        assert_eq!(kind(io::ErrorKind::PermissionDenied), ErrorKind::Permanent);
        assert_eq!(
            kind(io::ErrorKind::ReadOnlyFilesystem),
            ErrorKind::Permanent
        );
        assert!(Error::io("doing", io::ErrorKind::Interrupted.into()).is_transient());
    }

    #[test]
    fn every_variant_has_the_kind_its_docs_promise() {
        let poisoned = Error::Poisoned {
            namespace: "a".into(),
            cause: "fsync".into(),
        };
        assert_eq!(poisoned.kind(), ErrorKind::Closed);
        assert_eq!(Error::Closed.kind(), ErrorKind::Closed);
        assert_eq!(Error::NotFound("x".into()).kind(), ErrorKind::NotFound);
        let fenced = Error::Fenced {
            namespace: "a".into(),
            epoch: 1,
            newer: 2,
        };
        assert_eq!(fenced.kind(), ErrorKind::Conflict);
        assert_eq!(
            Error::from(InvalidInput::PageNo).kind(),
            ErrorKind::InvalidInput
        );
        let noted = Error::io("storing", io::ErrorKind::TimedOut.into())
            .gave_up(std::time::Duration::from_secs(3), 4);
        assert!(
            noted
                .to_string()
                .contains("gave up after 4 attempts in 3.0 s"),
            "{noted}"
        );
        assert!(noted.is_transient());
    }
}
