//! Reading ahead: a connection that reads pages in order (a table scan) gets runs of
//! frames of growing length in one request each, and once the runs are at full length
//! the next run is read while SQLite works through the current one.
//!
//! A run is held by the connection, not put in the shared cache: a run is larger than
//! the part of the cache that takes new entries, so runs would push each other's pages
//! out before SQLite reads them (and every page be read twice). Only pages SQLite asks
//! for go to the cache.

use std::sync::mpsc::Receiver;

use bytes::Bytes;

use crate::error::Result;
use crate::format::SegmentKey;

/// Bytes a run reads at most.
pub(crate) const MAX_RUN_BYTES: u32 = 4 << 20;

/// Frames of one segment at consecutive positions.
pub(crate) struct Run {
    pub(crate) key: SegmentKey,
    pub(crate) start: u32,
    pub(crate) frames: Vec<(u32, Bytes)>,
}

impl Run {
    pub(crate) fn get_at(&self, key: SegmentKey, position: u32) -> Option<&(u32, Bytes)> {
        if key != self.key || position < self.start {
            return None;
        }
        self.frames.get((position - self.start) as usize)
    }

    pub(crate) fn end(&self) -> u32 {
        self.start + self.frames.len() as u32
    }
}

/// A run being read in the background.
pub(crate) struct Pending {
    pub(crate) key: SegmentKey,
    pub(crate) start: u32,
    pub(crate) end: u32,
    pub(crate) frames: Receiver<Result<Vec<(u32, Bytes)>>>,
}

/// One connection's read-ahead state.
#[derive(Default)]
pub(crate) struct Runs {
    last_page: u32,
    length: u32,
    pub(crate) current: Option<Run>,
    pub(crate) next: Option<Pending>,
}

impl Runs {
    /// The frame at `position` of `key`, if the current run holds it.
    pub(crate) fn frame(&self, key: SegmentKey, position: u32) -> Option<&(u32, Bytes)> {
        self.current.as_ref()?.get_at(key, position)
    }

    /// How many frames to read on a miss at `page_no`: 1 for a random read, doubling on
    /// each read that follows the previous page, up to [`MAX_RUN_BYTES`].
    pub(crate) fn length(&mut self, page_no: u32, page_size: u32) -> u32 {
        if page_no == self.last_page.wrapping_add(1) {
            self.length = (self.length.max(1) * 2).min(Self::most(page_size));
        } else {
            self.length = 1;
        }
        self.last_page = page_no;
        self.length
    }

    /// Notes a page read (for telling sequential reads from random ones).
    pub(crate) fn saw(&mut self, page_no: u32) {
        self.last_page = page_no;
    }

    /// True once runs are at full length: the next one is worth reading ahead of time.
    pub(crate) fn steady(&self, page_size: u32) -> bool {
        self.length >= Self::most(page_size)
    }

    fn most(page_size: u32) -> u32 {
        (MAX_RUN_BYTES / page_size.max(512)).max(1)
    }

    /// The run read in the background, if it covers `position` of `key`.
    pub(crate) fn take_pending(&mut self, key: SegmentKey, position: u32) -> Option<Pending> {
        match &self.next {
            Some(p) if p.key == key && (p.start..p.end).contains(&position) => self.next.take(),
            _ => None,
        }
    }
}
