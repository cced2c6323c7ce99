//! The store as the VFS sees it: the few reads a view makes, behind one object-safe
//! trait, so that a file handle holds any backend without being generic over it, and
//! every read is a `'static` future the VFS's own runtime can run.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::Result;
use crate::format::{CommitTable, NamespaceName, PageIndex, SegmentKey};
use crate::storage::restore::{locate_target, Target};
use crate::storage::{FindSegmentReq, RestoreOptions, Storage};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a view reads of a store.
pub(crate) trait Source: Send + Sync + 'static {
    /// The target commit of `at` and the segment that holds it.
    fn locate(&self, ns: &NamespaceName, at: RestoreOptions) -> BoxFuture<Result<Target>>;
    /// Brings the catalog up to date (one cheap request on an object store, no listing).
    fn refresh(&self, ns: &NamespaceName) -> BoxFuture<Result<()>>;
    /// The newest durable frame number.
    fn durable(&self, ns: &NamespaceName) -> BoxFuture<Result<u64>>;
    /// The catalog's answer to `req`, or `None` when no segment answers it.
    fn find(
        &self,
        ns: &NamespaceName,
        req: FindSegmentReq,
    ) -> BoxFuture<Result<Option<SegmentKey>>>;
    /// The oldest segment's key (for messages naming the history's span).
    fn oldest(&self, ns: &NamespaceName) -> BoxFuture<Result<Option<SegmentKey>>>;
    /// Page indexes of `keys`, in order.
    fn indexes(
        &self,
        ns: &NamespaceName,
        keys: Vec<SegmentKey>,
    ) -> BoxFuture<Vec<Result<PageIndex>>>;
    /// The verified frames at `positions` (strictly ascending) of one segment.
    fn frames(
        &self,
        ns: &NamespaceName,
        key: SegmentKey,
        positions: Vec<u32>,
    ) -> BoxFuture<Result<Vec<(u32, Bytes)>>>;
    /// The position of `frame_no` in the segment `table` describes.
    fn position_of(
        &self,
        ns: &NamespaceName,
        table: CommitTable,
        frame_no: u64,
    ) -> BoxFuture<Result<Option<u32>>>;
}

/// Any backend, shared.
pub(crate) struct Store<S: Storage>(pub(crate) Arc<S>);

impl<S: Storage> Source for Store<S> {
    fn locate(&self, ns: &NamespaceName, at: RestoreOptions) -> BoxFuture<Result<Target>> {
        let (s, ns) = (self.0.clone(), ns.clone());
        Box::pin(async move { locate_target(&*s, &ns, at, &None).await })
    }

    fn refresh(&self, ns: &NamespaceName) -> BoxFuture<Result<()>> {
        let (s, ns) = (self.0.clone(), ns.clone());
        Box::pin(async move { s.refresh(&ns, None).await })
    }

    fn durable(&self, ns: &NamespaceName) -> BoxFuture<Result<u64>> {
        let (s, ns) = (self.0.clone(), ns.clone());
        Box::pin(async move { s.durable_frame_no(&ns, None).await })
    }

    fn find(
        &self,
        ns: &NamespaceName,
        req: FindSegmentReq,
    ) -> BoxFuture<Result<Option<SegmentKey>>> {
        let (s, ns) = (self.0.clone(), ns.clone());
        Box::pin(async move {
            match s.find_segment(&ns, req, None).await {
                Ok(key) => Ok(Some(key)),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn oldest(&self, ns: &NamespaceName) -> BoxFuture<Result<Option<SegmentKey>>> {
        let (s, ns) = (self.0.clone(), ns.clone());
        Box::pin(async move {
            use tokio_stream::StreamExt;
            let mut oldest = None;
            let mut listed = std::pin::pin!(s.list_segments(&ns, 0, None));
            while let Some(info) = listed.next().await {
                oldest = Some(info?.key);
            }
            Ok(oldest)
        })
    }

    fn indexes(
        &self,
        ns: &NamespaceName,
        keys: Vec<SegmentKey>,
    ) -> BoxFuture<Vec<Result<PageIndex>>> {
        let (s, ns) = (self.0.clone(), ns.clone());
        Box::pin(async move { s.fetch_segment_indexes(&ns, &keys, None).await })
    }

    fn frames(
        &self,
        ns: &NamespaceName,
        key: SegmentKey,
        positions: Vec<u32>,
    ) -> BoxFuture<Result<Vec<(u32, Bytes)>>> {
        let (s, ns) = (self.0.clone(), ns.clone());
        Box::pin(async move { s.fetch_frames(&ns, &key, &positions, None).await })
    }

    fn position_of(
        &self,
        ns: &NamespaceName,
        table: CommitTable,
        frame_no: u64,
    ) -> BoxFuture<Result<Option<u32>>> {
        let (s, ns) = (self.0.clone(), ns.clone());
        Box::pin(async move {
            crate::storage::frames::position_of(&*s, &ns, &table, frame_no, &None).await
        })
    }
}
