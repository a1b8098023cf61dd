//! The one batch gatherer of every sink: deliveries from the [`SinkReader`] into a group,
//! until the group reaches a limit (events, bytes, deliveries) or has waited long enough.
//!
//! The first delivery of a group is waited for without limit (an idle sink sleeps). After
//! it, [`MaxWait`] says how long the group may wait for more: `Queued` takes only what is
//! already readable (the local sinks: write bursts together, never delay a line), `For(d)`
//! waits until `d` after the first (the network sinks: fewer, fuller requests).
//!
//! Cancel-safe: [`Gather::next`] may be dropped at its await point (a `select!` arm losing
//! to another) without losing anything, because `SinkReader::recv` is cancel-safe and the
//! group is only changed after a delivery arrived. [`Gather::fill`] is the simple loop for
//! the sinks that do nothing else while gathering.

use crate::pipeline::{Delivery, SinkReader};
use std::time::Duration;
use tokio::time::Instant;

/// How long a group waits for more after its first delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxWait {
    /// Only what the reader has right now (`try_recv`): no wait at all.
    Queued,
    /// Until this long after the first delivery.
    For(Duration),
}

/// A group is full once it reaches any of these; a single delivery larger than a limit is
/// a group of its own (deliveries are never split).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Events (`Batch::len`, tombstones included).
    pub events: usize,
    /// Record payload bytes (`Batch::record_bytes`).
    pub bytes: usize,
    /// Deliveries.
    pub deliveries: usize,
    pub max_wait: MaxWait,
}

impl Limits {
    /// No count limit: only `max_wait`, until a caller sets the limits it has.
    pub fn waiting(max_wait: MaxWait) -> Limits {
        Limits { events: usize::MAX, bytes: usize::MAX, deliveries: usize::MAX, max_wait }
    }
}

/// What [`Gather::next`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A delivery joined the group; `true` when the group is now full.
    Added(bool),
    /// The group has waited long enough (`MaxWait` passed, or nothing more queued).
    Waited,
    /// The reader has ended: nothing more will come.
    End,
}

/// The group being gathered.
#[derive(Debug)]
pub struct Gather {
    limits: Limits,
    group: Vec<Delivery>,
    events: usize,
    bytes: usize,
    /// Set by the first delivery (`MaxWait::For`).
    deadline: Option<Instant>,
}

impl Gather {
    pub fn new(limits: Limits) -> Gather {
        Gather { limits, group: Vec::new(), events: 0, bytes: 0, deadline: None }
    }

    pub fn is_empty(&self) -> bool {
        self.group.is_empty()
    }

    /// Whether the group has reached a limit.
    pub fn is_full(&self) -> bool {
        self.events >= self.limits.events
            || self.bytes >= self.limits.bytes
            || self.group.len() >= self.limits.deliveries
    }

    /// Read one more delivery into the group (see the module doc for the waits).
    pub async fn next(&mut self, reader: &mut SinkReader) -> Step {
        let read = if self.group.is_empty() {
            reader.recv().await
        } else {
            match self.limits.max_wait {
                MaxWait::Queued => match reader.try_recv().await {
                    Some(d) => Some(d),
                    // Nothing more right now; the next call sees an end again.
                    None => return Step::Waited,
                },
                MaxWait::For(_) => {
                    let Some(deadline) = self.deadline else { return Step::Waited };
                    match tokio::time::timeout_at(deadline, reader.recv()).await {
                        Ok(d) => d,
                        Err(_) => return Step::Waited,
                    }
                }
            }
        };
        match read {
            Some(d) => Step::Added(self.push(d)),
            None => Step::End,
        }
    }

    /// Read until the group is full, has waited long enough or the reader has ended; the
    /// group, `None` once the reader has ended with nothing gathered. After an end the
    /// group gathered so far is returned, and the next call sees the end again.
    pub async fn fill(&mut self, reader: &mut SinkReader) -> Option<Vec<Delivery>> {
        while !self.is_full() {
            match self.next(reader).await {
                Step::Added(false) => {}
                Step::Added(true) | Step::Waited => break,
                Step::End if self.is_empty() => return None,
                Step::End => break,
            }
        }
        Some(self.take())
    }

    /// The group so far, leaving an empty one with the same limits.
    pub fn take(&mut self) -> Vec<Delivery> {
        self.events = 0;
        self.bytes = 0;
        self.deadline = None;
        std::mem::take(&mut self.group)
    }

    /// Add `d`; true when the group is full.
    fn push(&mut self, d: Delivery) -> bool {
        if let MaxWait::For(wait) = self.limits.max_wait {
            self.deadline.get_or_insert_with(|| Instant::now() + wait);
        }
        self.events += d.batch.len();
        self.bytes += d.batch.record_bytes();
        self.group.push(d);
        self.is_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Batch, Event, EventTime, Tag};
    use crate::metrics::Metrics;
    use crate::pipeline::Pipeline;
    use bytes::Bytes;
    use std::sync::Arc;

    fn batch(n: usize, record_len: usize) -> Batch {
        let events = (0..n)
            .map(|_| Event {
                time: EventTime::new(0, 0),
                record: Bytes::from(vec![0x90; record_len]),
                metadata: Bytes::new(),
            })
            .collect();
        Batch { tag: Tag::from_static("t"), events }
    }

    fn setup() -> (Pipeline, SinkReader, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (p, reader) =
            Pipeline::with_one_sink(dir.path(), "s", Arc::new(Metrics::new())).unwrap();
        (p, reader, dir)
    }

    fn sizes(group: &[Delivery]) -> Vec<usize> {
        group.iter().map(|d| d.batch.len()).collect()
    }

    #[tokio::test]
    async fn limits_end_a_group_and_a_large_delivery_is_a_group_of_its_own() {
        let (p, mut reader, _dir) = setup();
        for n in [3, 3, 3, 10, 1] {
            p.submit(&batch(n, 10)).await.unwrap();
        }
        p.buffer().close().await.unwrap();
        let mut g = Gather::new(Limits {
            events: 6,
            bytes: usize::MAX,
            deliveries: usize::MAX,
            max_wait: MaxWait::For(Duration::from_secs(3600)),
        });
        assert_eq!(sizes(&g.fill(&mut reader).await.unwrap()), [3, 3], "6 events: full");
        assert_eq!(sizes(&g.fill(&mut reader).await.unwrap()), [3, 10]);
        // The end ends the group without waiting, and the next call sees it again.
        assert_eq!(sizes(&g.fill(&mut reader).await.unwrap()), [1]);
        assert!(g.fill(&mut reader).await.is_none());
        assert!(g.fill(&mut reader).await.is_none());
    }

    #[tokio::test]
    async fn bytes_and_deliveries_limits() {
        let (p, mut reader, _dir) = setup();
        for _ in 0..5 {
            p.submit(&batch(1, 100)).await.unwrap();
        }
        p.buffer().close().await.unwrap();
        let mut by_bytes = Gather::new(Limits { bytes: 250, ..Limits::waiting(MaxWait::Queued) });
        assert_eq!(sizes(&by_bytes.fill(&mut reader).await.unwrap()), [1, 1, 1]);
        let mut by_count =
            Gather::new(Limits { deliveries: 1, ..Limits::waiting(MaxWait::Queued) });
        assert_eq!(sizes(&by_count.fill(&mut reader).await.unwrap()), [1]);
        assert_eq!(sizes(&by_count.fill(&mut reader).await.unwrap()), [1]);
        assert!(by_count.fill(&mut reader).await.is_none());
    }

    /// `Queued` takes what is readable and returns at once; `For` waits for more until its
    /// deadline, counted from the first delivery. (Real time: the buffer's writer is a
    /// thread, which paused time would jump past.)
    #[tokio::test]
    async fn max_wait_from_the_first_delivery() {
        let (p, mut reader, _dir) = setup();
        p.submit(&batch(1, 10)).await.unwrap();
        p.submit(&batch(2, 10)).await.unwrap();
        let mut queued = Gather::new(Limits::waiting(MaxWait::Queued));
        assert_eq!(sizes(&queued.fill(&mut reader).await.unwrap()), [1, 2]);

        let wait = Duration::from_millis(400);
        p.submit(&batch(3, 10)).await.unwrap();
        let mut timed = Gather::new(Limits::waiting(MaxWait::For(wait)));
        assert_eq!(timed.next(&mut reader).await, Step::Added(false));
        let start = Instant::now();
        let p = Arc::new(p);
        let later = Arc::clone(&p);
        let submit = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            later.submit(&batch(4, 10)).await.unwrap();
        });
        assert_eq!(timed.next(&mut reader).await, Step::Added(false), "came within the wait");
        assert_eq!(timed.next(&mut reader).await, Step::Waited);
        let took = start.elapsed();
        // From the last delivery it would be 500 ms.
        let (early, late) = (wait - Duration::from_millis(50), wait + Duration::from_millis(90));
        assert!(took >= early && took <= late, "{took:?}: from the first delivery");
        assert_eq!(sizes(&timed.take()), [3, 4]);
        submit.await.unwrap();
    }
}
