//! `object_store` errors as walvault errors, classified by what the caller should do.
//!
//! The kind comes from the error's structure only: `object_store`'s variant (which its
//! clients derive from the HTTP status: 401 `Unauthenticated`, 403 `PermissionDenied`,
//! 404 `NotFound`, 409 `AlreadyExists`, 412 `Precondition`), and for `Generic` errors
//! the transport error or operating-system error in its source chain. `object_store`
//! already retries 5xx, 429, timeouts and connection failures a few times itself; what
//! still comes back as `Generic` is such a failure that outlasted those retries, or a
//! status walvault cannot see (the client's retry error type is private), so `Generic`
//! is transient unless its chain says otherwise. Waiting on an unknown failure costs a
//! log line every few seconds; exiting on a glitch costs the operator their replica.
//!
//! One case needs the operation: a 404 to a PUT (or to starting an upload) cannot mean a
//! missing object, only a missing bucket or container, so write paths map `NotFound` to
//! a permanent error that says so.

use std::error::Error as StdError;
use std::sync::Arc;

#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
use object_store::client::HttpError;

use crate::error::{io_kind, Error, ErrorKind};

/// A failed read, listing or check (`context` says what walvault was doing).
pub(super) fn store_error(context: &str, e: object_store::Error) -> Error {
    let (kind, advice) = classify(&e);
    wrap(kind, context, advice, e)
}

/// A failed write (PUT, upload start, part, completion): as [`store_error`], but a
/// `NotFound` means the bucket or container does not exist.
pub(super) fn write_error(context: &str, e: object_store::Error) -> Error {
    if let object_store::Error::NotFound { .. } = e {
        return wrap(ErrorKind::Permanent, context, NO_BUCKET, e);
    }
    store_error(context, e)
}

const NO_BUCKET: &str = "the bucket (or container) does not exist: create it, or fix the store URL";
const CREDENTIALS: &str =
    "the store rejected the credentials: check the access key and secret (AWS_*, GOOGLE_* or AZURE_* variables)";
const PERMISSION: &str =
    "the store denied the request: check the credentials (a wrong key or secret is denied too) and that they may read, write, list and delete objects under the store's prefix";
const CONFIG: &str = "the store does not accept this request: check the store URL and options";

fn wrap(kind: ErrorKind, context: &str, advice: &str, e: object_store::Error) -> Error {
    let summary = match kind {
        ErrorKind::Transient => "store unavailable",
        ErrorKind::Permanent => "store refused the request",
        _ => "store error",
    };
    let context = if advice.is_empty() {
        format!("{summary} while {context}")
    } else {
        format!("{summary} while {context}; {advice}")
    };
    Error::Store {
        kind,
        context,
        source: Arc::new(e),
    }
}

/// The kind of `e`, and for a permanent error what to fix ("" when nothing to add).
fn classify(e: &object_store::Error) -> (ErrorKind, &'static str) {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => (ErrorKind::NotFound, ""),
        E::AlreadyExists { .. } | E::Precondition { .. } | E::NotModified { .. } => {
            (ErrorKind::Conflict, "")
        }
        E::Unauthenticated { .. } => (ErrorKind::Permanent, CREDENTIALS),
        E::PermissionDenied { .. } => (ErrorKind::Permanent, PERMISSION),
        E::UnknownConfigurationKey { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented => (ErrorKind::Permanent, CONFIG),
        E::JoinError { .. } => (ErrorKind::Transient, ""),
        E::Generic { source, .. } => (chain_kind(source.as_ref()), ""),
        _ => (ErrorKind::Transient, ""),
    }
}

/// The kind a `Generic` error's source chain shows: the first transport or
/// operating-system error in it decides; without one, transient (see the module docs).
fn chain_kind(source: &(dyn StdError + 'static)) -> ErrorKind {
    let mut next = Some(source);
    while let Some(e) = next {
        // (Only cloud backends speak HTTP; a build without them has no such errors.)
        #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
        if e.downcast_ref::<HttpError>().is_some() {
            // Every transport failure may pass: a refused or dropped connection, a
            // timeout, a response cut short or garbled (by a proxy in trouble, say).
            return ErrorKind::Transient;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io_kind(io.kind());
        }
        next = e.source();
    }
    ErrorKind::Transient
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::client::HttpErrorKind;
    use object_store::Error as E;

    fn boxed(text: &str) -> Box<dyn StdError + Send + Sync> {
        text.into()
    }

    fn path(text: &str) -> String {
        text.to_string()
    }

    #[test]
    fn variants_map_to_what_the_caller_should_do() {
        let cases = [
            (
                E::NotFound {
                    path: path("a"),
                    source: boxed("404"),
                },
                ErrorKind::NotFound,
            ),
            (
                E::AlreadyExists {
                    path: path("a"),
                    source: boxed("409"),
                },
                ErrorKind::Conflict,
            ),
            (
                E::Precondition {
                    path: path("a"),
                    source: boxed("412"),
                },
                ErrorKind::Conflict,
            ),
            (
                E::PermissionDenied {
                    path: path("a"),
                    source: boxed("403"),
                },
                ErrorKind::Permanent,
            ),
            (
                E::Unauthenticated {
                    path: path("a"),
                    source: boxed("401"),
                },
                ErrorKind::Permanent,
            ),
            (
                E::UnknownConfigurationKey {
                    store: "S3",
                    key: "nope".into(),
                },
                ErrorKind::Permanent,
            ),
            (E::NotImplemented, ErrorKind::Permanent),
        ];
        for (e, kind) in cases {
            let shown = e.to_string();
            let err = store_error("reading x", e);
            assert_eq!(err.kind(), kind, "{shown}");
            assert!(matches!(err, Error::Store { .. }), "{err}");
        }
    }

    #[test]
    fn generic_errors_follow_their_transport_or_os_error() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let connect = HttpError::new(HttpErrorKind::Connect, refused);
        let timeout = HttpError::new(HttpErrorKind::Timeout, boxed_err("timed out"));
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let generic = |source: Box<dyn StdError + Send + Sync>| E::Generic {
            store: "S3",
            source,
        };
        let cases: Vec<(E, ErrorKind)> = vec![
            (generic(Box::new(connect)), ErrorKind::Transient),
            (generic(Box::new(Wrapper(timeout))), ErrorKind::Transient),
            (generic(Box::new(denied)), ErrorKind::Permanent),
            // A status the client's private retry error holds (a 503 that outlasted
            // object_store's own retries, say): nothing says permanent.
            (
                generic(boxed("Server returned non-2xx status code: 503")),
                ErrorKind::Transient,
            ),
        ];
        for (e, kind) in cases {
            let shown = e.to_string();
            assert_eq!(store_error("writing x", e).kind(), kind, "{shown}");
        }
    }

    #[test]
    fn a_write_to_a_missing_bucket_is_permanent_and_says_so() {
        let e = E::NotFound {
            path: path("ns/segments/k"),
            source: boxed("NoSuchBucket"),
        };
        let err = write_error("writing ns/segments/k", e);
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert!(err.to_string().contains("bucket"), "{err}");
        let denied = E::PermissionDenied {
            path: path("a"),
            source: boxed("403"),
        };
        let err = write_error("writing a", denied);
        assert!(err.to_string().contains("denied"), "{err}");
    }

    fn boxed_err(text: &str) -> std::io::Error {
        std::io::Error::other(text.to_string())
    }

    /// An error whose source is the transport error, as `object_store`'s own error
    /// types wrap one.
    #[derive(Debug)]
    struct Wrapper(HttpError);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("request failed")
        }
    }

    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }
}
