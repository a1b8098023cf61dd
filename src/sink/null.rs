//! Counts and discards: the sink for benchmarks and for tags nobody wants.
use super::{SinkContext, SinkError};
use crate::metrics::SinkLabel;

/// Deliveries taken per cursor update: the cursor is written once per group, not per batch.
const GROUP: usize = 1024;

pub async fn run(mut ctx: SinkContext) -> Result<(), SinkError> {
    let records =
        ctx.metrics.output_records.get_or_create(&SinkLabel { sink: ctx.name.clone() }).clone();
    while let Some(d) = ctx.reader.recv().await {
        let (mut n, mut seq) = (d.batch.live_len() as u64, d.seq);
        for _ in 1..GROUP {
            let Some(d) = ctx.reader.try_recv().await else { break };
            n += d.batch.live_len() as u64;
            seq = d.seq;
        }
        records.inc_by(n);
        ctx.reader.ack(seq);
    }
    Ok(())
}
