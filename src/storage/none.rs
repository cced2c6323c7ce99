//! A storage that keeps nothing, for replicas whose log lives elsewhere.

use tokio_stream::Stream;

use super::listing::CatalogStream;
use super::{FindSegmentReq, OnStoreCallback, SegmentInfo, Storage};
use crate::error::{Error, Result};
use crate::format::{NamespaceName, PageIndex, SealedSegment, SegmentKey};

/// Stores nothing and reports every frame durable (`u64::MAX`): for replicas that keep
/// no history. Lookups and fetches find nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStorage;

impl Storage for NoStorage {
    type Config = ();

    async fn store(
        &self,
        _namespace: &NamespaceName,
        _segment: SealedSegment,
        _config_override: Option<()>,
        on_store: OnStoreCallback,
    ) -> Result<()> {
        on_store(u64::MAX).await;
        Ok(())
    }

    async fn durable_frame_no(
        &self,
        _namespace: &NamespaceName,
        _config: Option<()>,
    ) -> Result<u64> {
        Ok(u64::MAX)
    }

    async fn find_segment(
        &self,
        namespace: &NamespaceName,
        req: FindSegmentReq,
        _config: Option<()>,
    ) -> Result<SegmentKey> {
        Err(Error::NotFound(format!(
            "no {req} in namespace {namespace}: NoStorage keeps nothing"
        )))
    }

    async fn fetch_segment_index(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        _config: Option<()>,
    ) -> Result<PageIndex> {
        Err(Error::NotFound(format!(
            "segment {key} of {namespace}: NoStorage keeps nothing"
        )))
    }

    async fn fetch_segment_data(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        _config: Option<()>,
    ) -> Result<SealedSegment> {
        Err(Error::NotFound(format!(
            "segment {key} of {namespace}: NoStorage keeps nothing"
        )))
    }

    fn list_segments<'a>(
        &'a self,
        _namespace: &'a NamespaceName,
        _until: u64,
        _config: Option<()>,
    ) -> impl Stream<Item = Result<SegmentInfo>> + Send + 'a {
        CatalogStream::empty()
    }
}
