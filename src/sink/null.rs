//! Counts and discards: the sink for benchmarks and for tags nobody wants.
//!
//! It reads counts, not events (`SinkReader::recv_counted`): an entry the buffer still holds
//! in memory is counted from its head, never decoded, so what this sink costs is the
//! buffer's own work (as Fluent Bit's `null` output, which drops its chunks unread). Its
//! route joins nothing (`sink::set::route`): there is nothing to join lines for.
use super::{SinkContext, SinkError};
use crate::metrics::SinkLabel;

/// Deliveries taken per cursor update: the cursor is written once per group, not per batch.
const GROUP: usize = 1024;

pub async fn run(mut ctx: SinkContext) -> Result<(), SinkError> {
    let records =
        ctx.metrics.output_records.get_or_create(&SinkLabel { sink: ctx.name.clone() }).clone();
    while let Some(d) = ctx.reader.recv_counted().await {
        let (mut n, mut seq) = (d.live, d.seq);
        for _ in 1..GROUP {
            let Some(d) = ctx.reader.try_recv_counted().await else { break };
            n += d.live;
            seq = d.seq;
        }
        records.inc_by(n);
        ctx.reader.ack(seq);
    }
    Ok(())
}
