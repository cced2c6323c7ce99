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
    /// The frames asked for (fewer at a segment's end).
    pub(crate) length: u32,
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

/// Runs held at once: a scan of a database whose pages come from several segments (a
/// snapshot and the changes since) keeps one run per segment it reads, rather than
/// dropping the snapshot's run each time a page comes from a newer segment.
const RUNS_KEPT: usize = 4;

/// Ends of the last runs read, remembered for telling a scan from random reads.
const ENDS_KEPT: usize = 16;

/// Frames a miss may lie past a run's end and still count as going on from it.
const SLACK: u32 = 8;

/// One connection's read-ahead state.
#[derive(Default)]
pub(crate) struct Runs {
    /// The runs in hand, the most recently read last.
    current: Vec<Run>,
    /// Where the last runs read ended (segment, position after the run, its length),
    /// the most recent last: a miss just past one is a scan going on.
    ends: Vec<(SegmentKey, u32, u32)>,
    pub(crate) next: Option<Pending>,
}

impl Runs {
    /// The frame at `position` of `key`, if a run in hand holds it.
    pub(crate) fn frame(&self, key: SegmentKey, position: u32) -> Option<&(u32, Bytes)> {
        self.current
            .iter()
            .find_map(|run| run.get_at(key, position))
    }

    /// Keeps `run` (the shortest run in hand goes), and where it ended. A run of one frame
    /// (a random read) is not kept: its page is in the cache, and keeping it would push
    /// out a scan's run.
    pub(crate) fn keep(&mut self, run: Run) {
        if self.ends.len() >= ENDS_KEPT {
            self.ends.remove(0);
        }
        self.ends.push((run.key, run.end(), run.length));
        if run.frames.len() <= 1 {
            return;
        }
        if self.current.len() >= RUNS_KEPT {
            // The shortest run goes (the oldest of those): a scan's long runs outlive the
            // short ones that reads of other segments leave.
            let shortest = (0..self.current.len())
                .min_by_key(|&i| self.current[i].frames.len())
                .unwrap_or(0);
            self.current.remove(shortest);
        }
        self.current.push(run);
    }

    /// Where to start reading and how many frames to read on a miss at `position` of
    /// `key`. Going on from a run that ended at or a little before `position` (a scan;
    /// it reads interior pages between its leaves): from that run's end, so the frames
    /// skipped are read too, twice as many as that run, up to [`MAX_RUN_BYTES`]. Else
    /// (a random read) the frame alone.
    pub(crate) fn plan(&self, key: SegmentKey, position: u32, page_size: u32) -> (u32, u32) {
        let most = (MAX_RUN_BYTES / page_size.max(512)).max(1);
        if let Some(p) = self
            .next
            .as_ref()
            .filter(|p| p.key == key && (p.start..p.end).contains(&position))
        {
            return (p.start, ((p.end - p.start) * 2).min(most));
        }
        let before = self
            .ends
            .iter()
            .filter(|(k, end, length)| {
                *k == key && position >= *end && position - *end < (*length).max(SLACK)
            })
            .max_by_key(|(_, _, length)| *length);
        match before {
            Some(&(_, end, length)) => (end, (length * 2).min(most)),
            None => (position, 1),
        }
    }

    /// True when runs of `length` are full length: the next one is worth reading ahead.
    pub(crate) fn steady(length: u32, page_size: u32) -> bool {
        length >= (MAX_RUN_BYTES / page_size.max(512)).max(1)
    }

    /// The run read in the background, if it covers `position` of `key`.
    pub(crate) fn take_pending(&mut self, key: SegmentKey, position: u32) -> Option<Pending> {
        match &self.next {
            Some(p) if p.key == key && (p.start..p.end).contains(&position) => self.next.take(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> SegmentKey {
        SegmentKey {
            start_frame_no: n,
            end_frame_no: n,
            timestamp: 0,
        }
    }

    fn run(k: u64, start: u32, frames: u32) -> Run {
        Run {
            key: key(k),
            start,
            frames: (start..start + frames)
                .map(|p| (p + 1, Bytes::from(vec![0u8; 8])))
                .collect(),
            length: frames,
        }
    }

    #[test]
    fn a_random_read_is_one_frame_and_a_scan_doubles_from_where_it_was() {
        let mut runs = Runs::default();
        assert_eq!(runs.plan(key(1), 100, 4096), (100, 1));
        runs.keep(run(1, 100, 1));
        assert_eq!(runs.plan(key(1), 101, 4096), (101, 2));
        runs.keep(run(1, 101, 64));
        // An interior page a few frames past the run: the gap is read too.
        assert_eq!(runs.plan(key(1), 168, 4096), (165, 128));
        // Far past it, or in another segment: a random read.
        assert_eq!(runs.plan(key(1), 400, 4096), (400, 1));
        assert_eq!(runs.plan(key(2), 165, 4096), (165, 1));
        // Never more than 4 MiB.
        runs.keep(run(1, 165, 1024));
        assert_eq!(runs.plan(key(1), 1189, 4096), (1189, 1024));
    }

    #[test]
    fn short_runs_of_other_segments_do_not_push_out_a_scans_run() {
        let mut runs = Runs::default();
        runs.keep(run(1, 0, 1024));
        for k in 2..10 {
            runs.keep(run(k, 5, 2));
        }
        assert!(runs.frame(key(1), 1000).is_some());
        assert!(runs.frame(key(9), 6).is_some());
        assert!(runs.frame(key(2), 6).is_none(), "the oldest short run went");
    }
}
