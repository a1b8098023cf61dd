//! Which Forward requests are already stored, so that a resent one is not stored twice.
//!
//! A Forward client that asked for an ack (`chunk` option) and did not get one sends the
//! same request again: when berth was killed between the fsync and the ack, when the
//! network dropped the ack, and in a loop when Docker 20.10's driver with
//! `fluentd-request-ack=true` races its own ack reads (6 lines seen stored 299 times;
//! fluent-logger-golang #103). Each request that carries a `chunk` gets a key
//! ([`chunk_key`]: the chunk id and the request's bytes), written in the entry
//! that stores its events (see `record`), so that the buffer knows after a restart, too,
//! which requests it holds. A request whose key is known is acknowledged again and its
//! events are not stored.
//!
//! [`RecentChunks`] keeps the keys of the requests stored most recently, bounded by count
//! ([`MAX_CHUNKS`]) and age ([`WINDOW`]): a client resends within seconds or minutes of
//! its first try, and an old key only costs memory. It is rebuilt from the newest entries
//! when the buffer opens. A key is *claimed* by the connection that stores the request,
//! and becomes *stored* only once that request is durable: a resend that arrives while the
//! first copy is still being written waits for it, and is stored itself if the first copy
//! never is (its write was refused, its connection dropped).
//!
//! The key covers the request's bytes, not only the chunk id: a client that reused chunk
//! ids for different requests loses nothing. Two requests with the same chunk id and the
//! same bytes within the window are one request sent twice.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Keys kept at most: 16 bytes in the map and 16 in the eviction queue each, about 3 MiB
/// when full (the daemon's memory reservation is 64 MiB). A client resends what it holds no
/// ack for as soon as it reconnects, and holds few such requests (Docker's driver, one per
/// container), so the keys needed are those of the last seconds: a minute of 1,000 acked
/// requests a second.
pub const MAX_CHUNKS: usize = 65_536;
/// Keys older than this are forgotten: longer than a client's retries take to reach berth
/// again after a restart (Docker's driver waits at most 60 s between tries).
pub const WINDOW: Duration = Duration::from_secs(3600);

/// The key of one Forward request: its `chunk` option's raw bytes and the whole frame it
/// came in, as received (tag, entries, options; compressed as sent). A client resending a
/// request sends the same bytes again (it keeps the encoded request until it is acked).
/// FNV-1a over the chunk and the frame's length and CRC-32C: stable across versions (it is
/// written to disk), one hardware-fast pass over the frame, and a collision needs the same
/// chunk id.
pub fn chunk_key(chunk: &[u8], frame: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write(&(chunk.len() as u64).to_le_bytes());
    h.write(chunk);
    h.write(&(frame.len() as u64).to_le_bytes());
    h.write(&crc32c::crc32c(frame).to_le_bytes());
    h.0
}

/// FNV-1a, 64 bits: written here because its few lines are fixed for ever, which is what a
/// key stored on disk needs (std's `DefaultHasher` may change between releases).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Now, in unix seconds (what entries record as `stored_at`).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What a claim found.
pub enum Claim {
    /// Nobody has this request: store it, and call [`Claimed::stored`] once it is durable.
    New(Claimed),
    /// Already durable: ack it, do not store it.
    Stored,
    /// Another copy is being stored: wait for [`Pending::settled`], then claim again.
    Pending(Pending),
}

/// The keys, stored and claimed. Shared by every connection of every listener.
pub struct RecentChunks {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// Stored keys and when (unix seconds).
    stored: HashMap<u64, u64>,
    /// The stored keys in the order they were stored, for eviction.
    order: VecDeque<(u64, u64)>,
    /// Keys claimed by a connection and not yet durable: a sender the claimant holds.
    claimed: HashMap<u64, watch::Receiver<bool>>,
    max: usize,
    window: u64,
}

impl Table {
    /// Whether `key` is stored and within the bounds at `now` (pure: table-tested below).
    fn is_stored(&mut self, key: u64, now: u64) -> bool {
        self.evict(now);
        self.stored.contains_key(&key)
    }

    fn insert(&mut self, key: u64, at: u64, now: u64) {
        if now.saturating_sub(at) > self.window {
            return;
        }
        // A key already stored keeps its first time and place: the map and the queue
        // agree, so eviction removes every key it pushes out.
        if let std::collections::hash_map::Entry::Vacant(v) = self.stored.entry(key) {
            v.insert(at);
            self.order.push_back((key, at));
        }
        self.evict(now);
    }

    fn evict(&mut self, now: u64) {
        while let Some(&(key, at)) = self.order.front() {
            if self.order.len() <= self.max && now.saturating_sub(at) <= self.window {
                break;
            }
            // Each stored key is in `order` once (see `insert`).
            self.order.pop_front();
            self.stored.remove(&key);
        }
    }
}

impl RecentChunks {
    /// A table holding `recovered` (key, stored_at) pairs, oldest first, as far as they are
    /// within the bounds.
    pub fn new(
        max: usize,
        window: Duration,
        recovered: impl IntoIterator<Item = (u64, u64)>,
    ) -> Arc<RecentChunks> {
        let mut t = Table { max, window: window.as_secs(), ..Default::default() };
        let now = unix_now();
        for (key, at) in recovered {
            t.insert(key, at, now);
        }
        Arc::new(RecentChunks { table: Mutex::new(t) })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keys known to be stored now.
    pub fn len(&self) -> usize {
        self.table().stored.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Claims the request `key` (see [`Claim`]).
    pub fn claim(self: &Arc<Self>, key: u64) -> Claim {
        let mut t = self.table();
        if t.is_stored(key, unix_now()) {
            return Claim::Stored;
        }
        if let Some(rx) = t.claimed.get(&key) {
            return Claim::Pending(Pending(rx.clone()));
        }
        let (tx, rx) = watch::channel(false);
        t.claimed.insert(key, rx);
        Claim::New(Claimed { table: Arc::clone(self), key, tx: Some(tx) })
    }
}

/// A claim on a request being stored. Dropped without [`Claimed::stored`], the claim is
/// given up: a copy waiting for it is then stored itself.
pub struct Claimed {
    table: Arc<RecentChunks>,
    key: u64,
    tx: Option<watch::Sender<bool>>,
}

impl Claimed {
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The request is durable: copies that come now are acknowledged without being stored.
    pub fn stored(mut self) {
        let now = unix_now();
        {
            let mut t = self.table.table();
            t.claimed.remove(&self.key);
            t.insert(self.key, now, now);
        }
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(true);
        }
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.table.table().claimed.remove(&self.key);
            // Dropping the sender wakes whoever waits (see `Pending::settled`).
        }
    }
}

/// Another connection's copy of a request, not yet durable.
pub struct Pending(watch::Receiver<bool>);

impl Pending {
    /// Resolves once that copy is durable or given up.
    pub async fn settled(mut self) {
        let _ = self.0.wait_for(|stored| *stored).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STABLE: u64 = 0x77e2_0843_bea7_2575;

    fn table(max: usize, window: u64) -> Table {
        Table { max, window, ..Default::default() }
    }

    #[test]
    fn found_after_insert_until_evicted_by_count_or_age() {
        // (max, window, inserts (key, at), now, key looked up, stored)
        type Case = (usize, u64, &'static [(u64, u64)], u64, u64, bool);
        let cases: &[Case] = &[
            (4, 100, &[], 0, 1, false),
            (4, 100, &[(1, 10)], 10, 1, true),
            (4, 100, &[(1, 10)], 110, 1, true),
            (4, 100, &[(1, 10)], 111, 1, false),
            (2, 100, &[(1, 10), (2, 11), (3, 12)], 12, 1, false),
            (2, 100, &[(1, 10), (2, 11), (3, 12)], 12, 2, true),
            (2, 100, &[(1, 10), (2, 11), (3, 12)], 12, 3, true),
            // Recovered keys older than the window are not kept at all.
            (4, 100, &[(1, 0)], 101, 1, false),
            // A key stored again keeps its first place (and age).
            (2, 100, &[(1, 10), (2, 11), (1, 12), (3, 13)], 13, 1, false),
            // A clock that went backwards keeps keys (bounded by count still).
            (4, 100, &[(1, 500)], 10, 1, true),
        ];
        for (i, (max, window, inserts, now, key, want)) in cases.iter().enumerate() {
            let mut t = table(*max, *window);
            for &(k, at) in *inserts {
                t.insert(k, at, at.min(*now));
            }
            assert_eq!(t.is_stored(*key, *now), *want, "case {i}");
            assert!(t.order.len() <= *max && t.stored.len() <= *max, "case {i}");
        }
    }

    #[tokio::test]
    async fn a_claim_is_new_then_pending_then_stored() {
        let r = RecentChunks::new(8, WINDOW, []);
        let Claim::New(c) = r.claim(7) else { panic!("first claim is new") };
        assert_eq!(c.key(), 7);
        let Claim::Pending(p) = r.claim(7) else { panic!("second claim waits") };
        let waiter = tokio::spawn(p.settled());
        c.stored();
        waiter.await.unwrap();
        assert!(matches!(r.claim(7), Claim::Stored));
        assert_eq!(r.len(), 1);
    }

    #[tokio::test]
    async fn a_claim_given_up_wakes_the_waiter_and_frees_the_key() {
        let r = RecentChunks::new(8, WINDOW, []);
        let Claim::New(c) = r.claim(7) else { panic!() };
        let Claim::Pending(p) = r.claim(7) else { panic!() };
        let waiter = tokio::spawn(p.settled());
        drop(c);
        waiter.await.unwrap();
        assert!(matches!(r.claim(7), Claim::New(_)), "the copy that waited stores it");
        assert!(r.is_empty());
    }

    #[test]
    fn recovered_keys_are_stored_within_the_bounds() {
        let now = unix_now();
        let r = RecentChunks::new(2, WINDOW, [(1, now - 7200), (2, now - 5), (3, now), (4, now)]);
        assert!(matches!(r.claim(1), Claim::New(_)), "older than the window");
        assert!(matches!(r.claim(2), Claim::New(_)), "pushed out by count");
        assert!(matches!(r.claim(3), Claim::Stored));
        assert!(matches!(r.claim(4), Claim::Stored));
    }

    #[test]
    fn the_key_covers_the_chunk_and_the_frame_and_is_stable() {
        let frame: &[u8] = b"\x93\xa1t\xc4\x03abc\x81\xa5chunk\xa3abc";
        let base = chunk_key(b"\xa3abc", frame);
        // Written to disk: the same inputs give this value in every version of berth.
        assert_eq!(base, STABLE);
        let mut other_byte = frame.to_vec();
        other_byte[5] ^= 1;
        for other in [
            chunk_key(b"\xa3abd", frame),
            chunk_key(b"\xa3abc", &other_byte),
            chunk_key(b"\xa3abc", &frame[..frame.len() - 1]),
            chunk_key(b"", frame),
        ] {
            assert_ne!(other, base);
        }
    }
}
