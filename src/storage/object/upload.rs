//! Segments larger than the multipart threshold upload in parts, several at a time.
//!
//! **Why a segment is still created only once.** A small segment is written with a
//! conditional PUT (`PutMode::Create`), so the store itself refuses to replace an object.
//! `object_store` 0.12 has no conditional multipart upload: `PutMultipartOptions` carries
//! no `PutMode`, and `MultipartUpload::complete` replaces whatever is under the key
//! (S3's own `If-None-Match` on completion is not exposed). Copying a part-uploaded
//! temporary object into place with `copy_if_not_exists` would download and upload the
//! segment again on S3. So a large segment relies on the store protocol instead:
//!
//! 1. A segment object is written only by a handle holding the namespace's writer epoch,
//!    and before the manifest version that names it is created; a manifest never names
//!    a key whose object is still being written by the writer that names it.
//! 2. Before the upload, a HEAD of the key: an object already there is kept if it holds
//!    the same bytes (a retried store) and refused otherwise, exactly as the conditional
//!    PUT would decide.
//! 3. After the parts are uploaded and before the upload is completed, a HEAD of the
//!    manifest version this handle would create next. Another writer can make a segment
//!    visible only by creating manifest versions, and the first one it creates is that
//!    very number (taking over the epoch). If it exists, this handle may have been
//!    overtaken: the upload is abandoned and the segment goes in one conditional PUT,
//!    which cannot replace anything.
//!
//! What remains is a narrow window: between the check of step 3 and the completion
//! landing at the store, a newer writer would have to take the epoch, write a segment
//! under the very same key (the same frames and the same first-commit millisecond) with
//! other bytes, and create the version naming it: three requests in sequence inside
//! one of ours, which takes a stall of this process at exactly that point. When
//! `object_store` exposes a conditional completion, step 3 can go.

use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, PutMultipartOptions, PutPayload};

use super::{concurrent, store_error, write_error, ObjectStorage};
use crate::error::{Error, Result};

impl ObjectStorage {
    /// Writes a segment object in parts; `guard` is the manifest version whose existence
    /// means another writer may have taken over (see the module docs).
    pub(super) async fn put_in_parts(&self, path: &Path, bytes: Bytes, guard: &Path) -> Result<()> {
        if let Some(size) = self.object_size(path).await? {
            if size != bytes.len() as u64 {
                return Err(different_segment(path));
            }
            return self.check_same(path, &bytes).await;
        }
        let mut upload = self
            .inner
            .store
            .put_multipart_opts(path, PutMultipartOptions::default())
            .await
            .map_err(|e| write_error(&format!("starting an upload of {path}"), e))?;
        match self
            .upload_parts(upload.as_mut(), path, &bytes, guard)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                abandon(upload.as_mut(), path).await;
                tracing::info!(%path, "another writer may have taken over; writing the segment with a conditional PUT");
                self.put_once(path, bytes).await
            }
            Err(e) => {
                abandon(upload.as_mut(), path).await;
                Err(e)
            }
        }
    }

    /// Uploads the parts, at most `upload_concurrency` at a time, then completes the
    /// upload unless `guard` exists. False if it did not complete for that reason.
    async fn upload_parts(
        &self,
        upload: &mut dyn MultipartUpload,
        path: &Path,
        bytes: &Bytes,
        guard: &Path,
    ) -> Result<bool> {
        let part_size = self.tuning.part_size;
        let parts = (0..bytes.len()).step_by(part_size).map(|at| {
            let part = bytes.slice(at..bytes.len().min(at + part_size));
            let sent = upload.put_part(PutPayload::from(part));
            async move {
                sent.await
                    .map_err(|e| write_error(&format!("uploading a part of {path}"), e))
            }
        });
        concurrent::try_ordered(parts, self.tuning.upload_concurrency).await?;
        if self.head_exists(guard).await? {
            return Ok(false);
        }
        upload
            .complete()
            .await
            .map_err(|e| write_error(&format!("completing the upload of {path}"), e))?;
        Ok(true)
    }

    /// The size of the object at `path`, or None when there is none.
    pub(super) async fn object_size(&self, path: &Path) -> Result<Option<u64>> {
        match self.inner.store.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(&format!("checking {path}"), e)),
        }
    }

    /// Ok if the object at `path` holds exactly `bytes`; a conflict otherwise.
    pub(super) async fn check_same(&self, path: &Path, bytes: &Bytes) -> Result<()> {
        if self.get(path).await?.as_deref() == Some(&bytes[..]) {
            return Ok(());
        }
        Err(different_segment(path))
    }
}

/// Gives up an upload, so the store can drop its parts. A failure is only logged: after
/// a completion whose response was lost there is nothing left to abort, and otherwise
/// the store's lifecycle rules for incomplete uploads clean up.
async fn abandon(upload: &mut dyn MultipartUpload, path: &Path) {
    if let Err(e) = upload.abort().await {
        tracing::warn!(%path, error = %e, "could not abort a multipart upload");
    }
}

fn different_segment(path: &Path) -> Error {
    Error::Conflict {
        namespace: path.to_string(),
        detail: "another writer stored a different segment under the same key".into(),
    }
}
