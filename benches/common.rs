#![allow(dead_code)] // each benchmark uses some of these
//! Inputs shared by the benchmarks.

use berth::event::{Event, EventTime};
use bytes::Bytes;

/// `n` events of [`docker_record`]s, a second apart.
pub fn docker_events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            time: EventTime::new(1_763_769_600 + i as i64, 123_456_789),
            record: docker_record(i),
            metadata: Bytes::new(),
        })
        .collect()
}

/// A record shaped like Docker's fluentd driver sends: ~200 bytes of msgpack.
pub fn docker_record(i: usize) -> Bytes {
    docker_record_of(i, &format!("{:064x}", 0x5eed_u64.wrapping_mul(i as u64 + 1)))
}

/// [`docker_record`] of the container `id`.
pub fn docker_record_of(i: usize, id: &str) -> Bytes {
    let log = format!("{i:06} GET /api/v1/items?page=3 HTTP/1.1 200 1532 \"-\" \"curl/8.5.0\" rt=0.004 upstream=10.0.3.7:8080");
    let mut v = Vec::with_capacity(220);
    let _ = rmp::encode::write_map_len(&mut v, 4);
    for (k, val) in [
        ("container_id", id),
        ("container_name", "/ecs-app-1"),
        ("source", "stdout"),
        ("log", &log[..100.min(log.len())]),
    ] {
        let _ = rmp::encode::write_str(&mut v, k);
        let _ = rmp::encode::write_str(&mut v, val);
    }
    Bytes::from(v)
}
