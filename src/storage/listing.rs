//! Streams over a catalog, shared by the backends: `list_segments` reads the catalog a
//! page at a time, so a namespace of millions of segments is never copied whole and
//! concurrent stores never wait on a slow consumer.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll};

use tokio_stream::Stream;

use super::catalog::Catalog;
use super::SegmentInfo;
use crate::error::Result;

const PAGE: usize = 1024;

/// A shared catalog. Critical sections are short and never await.
pub(crate) type SharedCatalog = Arc<RwLock<Catalog>>;

pub(crate) fn read(catalog: &RwLock<Catalog>) -> RwLockReadGuard<'_, Catalog> {
    catalog.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write(catalog: &RwLock<Catalog>) -> RwLockWriteGuard<'_, Catalog> {
    catalog.write().unwrap_or_else(PoisonError::into_inner)
}

/// Resolves to the namespace's catalog, or `None` when the namespace does not exist.
pub(crate) type OpenCatalog<'a> =
    Pin<Box<dyn Future<Output = Result<Option<SharedCatalog>>> + Send + 'a>>;

/// Segments with end frame at least `until`, newest first.
pub(crate) struct CatalogStream<'a> {
    opening: Option<OpenCatalog<'a>>,
    catalog: Option<SharedCatalog>,
    until: u64,
    before: Option<u64>,
    buf: VecDeque<SegmentInfo>,
    done: bool,
}

impl<'a> CatalogStream<'a> {
    pub(crate) fn new(open: OpenCatalog<'a>, until: u64) -> Self {
        Self {
            opening: Some(open),
            catalog: None,
            until,
            before: None,
            buf: VecDeque::new(),
            done: false,
        }
    }

    pub(crate) fn empty() -> Self {
        Self {
            opening: None,
            catalog: None,
            until: 0,
            before: None,
            buf: VecDeque::new(),
            done: true,
        }
    }

    fn refill(&mut self) {
        let Some(catalog) = &self.catalog else { return };
        let page = read(catalog).page_newest_first(self.until, self.before, PAGE);
        if let Some(last) = page.last() {
            self.before = Some(last.key.end_frame_no);
        }
        self.buf.extend(page);
    }
}

impl Stream for CatalogStream<'_> {
    type Item = Result<SegmentInfo>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(opening) = this.opening.as_mut() {
            let opened = match opening.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(opened) => opened,
            };
            this.opening = None;
            match opened {
                Ok(catalog) => this.catalog = catalog,
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
        if this.buf.is_empty() {
            this.refill();
        }
        match this.buf.pop_front() {
            Some(info) => Poll::Ready(Some(Ok(info))),
            None => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }
}
