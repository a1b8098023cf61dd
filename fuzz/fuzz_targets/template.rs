//! The name-template walker over arbitrary records and metadata: a template with fields
//! and date parts, rendered from bytes the fuzzer chooses (msgpack maps, or anything). No
//! panic, and the name is never empty and never past its kind's length limit.
#![no_main]

use berth::event::EventTime;
use berth::template::{NameTemplate, Naming};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len().saturating_sub(1));
    let rest = data.get(1..).unwrap_or_default();
    let (record, metadata) = rest.split_at(split.min(rest.len()));
    let secs = data.iter().take(8).fold(0i64, |a, b| a.wrapping_mul(31).wrapping_add(i64::from(*b)));
    let time = EventTime::new(secs.rem_euclid(10_000_000_000), 0);
    for (t, naming) in [
        ("/ecs/{ecs_cluster}/{ecs_task_definition_family}", Naming::LogGroup),
        ("{ecs_task_id}/{container_name}-%Y.%m.%d.%H", Naming::LogStream),
        ("logs-{app}-%Y.%m.%d", Naming::Index),
    ] {
        let tpl = NameTemplate::parse_as(t, naming).unwrap();
        let mut out = Vec::new();
        let _ = tpl.render(&mut out, record, metadata, time);
        assert!(!out.is_empty(), "{t}: an empty name");
        let max = if naming == Naming::Index { 255 } else { 512 };
        assert!(out.len() <= max, "{t}: {} bytes", out.len());
    }
});
