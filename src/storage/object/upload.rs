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
use crate::format::SealedSegment;

impl ObjectStorage {
    /// Writes a segment object in parts. `guard` is the manifest version whose existence
    /// means another writer may have taken over (see the module docs); a maintainer,
    /// which holds no epoch, passes none.
    pub(super) async fn put_in_parts(
        &self,
        path: &Path,
        segment: &SealedSegment,
        guard: Option<&Path>,
    ) -> Result<()> {
        if let Some(size) = self.object_size(path).await? {
            if size != segment.encoded_len() {
                return Err(different_segment(path));
            }
            return self.check_same_segment(path, segment).await;
        }
        let mut upload = self
            .inner
            .store
            .put_multipart_opts(path, PutMultipartOptions::default())
            .await
            .map_err(|e| write_error(&format!("starting an upload of {path}"), e))?;
        match self
            .upload_parts(upload.as_mut(), path, segment, guard)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                abandon(upload.as_mut(), path).await;
                tracing::info!(%path, "another writer may have taken over; writing the segment with a conditional PUT");
                if !segment.is_in_memory() {
                    // Rare (a writer overtook this one mid-upload) and the only way to a
                    // conditional write: the one place a spilled segment is loaded.
                    tracing::warn!(%path, size = segment.encoded_len(), "loading a spilled segment for a conditional PUT");
                }
                self.put_once(path, segment.load()?.encoded().clone()).await
            }
            Err(e) => {
                abandon(upload.as_mut(), path).await;
                Err(e)
            }
        }
    }

    /// Parts in flight at once: the handle's setting, within a quarter of the memory
    /// budget (at least one part).
    fn parts_in_flight(&self) -> usize {
        let part_size = self.tuning.part_size.max(1);
        let fit = (crate::budget::share(4) / part_size).max(1);
        self.tuning.upload_concurrency.min(fit)
    }

    /// Uploads the parts, each read from the segment when its upload starts, then
    /// completes the upload unless `guard` exists. False if it did not complete for
    /// that reason.
    async fn upload_parts(
        &self,
        upload: &mut dyn MultipartUpload,
        path: &Path,
        segment: &SealedSegment,
        guard: Option<&Path>,
    ) -> Result<bool> {
        let part_size = self.tuning.part_size as u64;
        let len = segment.encoded_len();
        let parts = (0..len).step_by(part_size as usize).map(|at| {
            let sent = segment
                .read_encoded(at..len.min(at + part_size))
                .map(|part| upload.put_part(PutPayload::from(part)));
            async move {
                sent?
                    .await
                    .map_err(|e| write_error(&format!("uploading a part of {path}"), e))
            }
        });
        concurrent::try_ordered(parts, self.parts_in_flight()).await?;
        if let Some(guard) = guard {
            if self.head_exists(guard).await? {
                return Ok(false);
            }
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

    /// [`check_same`](Self::check_same) for a segment of any size: the object is read
    /// and compared a part at a time.
    pub(super) async fn check_same_segment(
        &self,
        path: &Path,
        segment: &SealedSegment,
    ) -> Result<()> {
        let len = segment.encoded_len();
        if self.object_size(path).await? != Some(len) {
            return Err(different_segment(path));
        }
        let step = self.tuning.part_size as u64;
        for at in (0..len).step_by(step as usize) {
            let range = at..len.min(at + step);
            let stored = self
                .inner
                .store
                .get_range(path, range.clone())
                .await
                .map_err(|e| store_error(&format!("reading {path}"), e))?;
            if stored != segment.read_encoded(range)? {
                return Err(different_segment(path));
            }
        }
        Ok(())
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
