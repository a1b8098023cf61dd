//! Process-wide counters, exported in OpenMetrics text by the admin endpoint.
//!
//! One `Metrics` is built at start and shared by `Arc`; there is no global registry.
//! Counters are bumped once per request or batch, never per record, on the hot path.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JoinLabel {
    pub sink: String,
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkReasonLabel {
    pub sink: String,
    pub reason: &'static str,
}

/// Buckets of `berth_output_request_duration_seconds`: 1 ms to 30 s (the default request
/// timeout), roughly ×2.5 apart — a loopback `_bulk` answers in milliseconds, a loaded
/// cluster in seconds.
pub const REQUEST_DURATION_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

fn request_duration_histogram() -> Histogram {
    Histogram::new(REQUEST_DURATION_BUCKETS)
}

/// A histogram family whose histograms have [`REQUEST_DURATION_BUCKETS`].
pub type DurationFamily = Family<SinkLabel, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiCallLabel {
    pub action: &'static str,
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// The latest capacity report, whose gauges are made at each scrape.
    pub capacity: std::sync::Arc<crate::capacity::publish::Latest>,
    /// AWS API calls made by capacity (and the drain), by action and result (`ok`,
    /// `throttled`, `error`).
    pub api_calls: Family<ApiCallLabel, Counter>,
    pub input_records: Counter,
    pub input_bytes: Counter,
    pub input_requests: Counter,
    /// Forward requests received again with a chunk already stored (a client resending
    /// what it got no ack for): acked, their events not stored twice.
    pub input_duplicate_chunks: Counter,
    pub input_errors: Family<ReasonLabel, Counter>,
    pub input_connections: Gauge,
    /// Times a listener had every slot taken and stopped accepting (new clients wait in
    /// the accept queue until a connection closes), by listener (`tcp://…`, `unix://…`).
    pub input_connection_waits: Family<ListenerLabel, Counter>,
    /// `input.forward.memory_budget`, in bytes.
    pub input_memory_budget: Gauge,
    /// Bytes connections hold from the memory budget now.
    pub input_memory_bytes: Gauge,
    /// Times a connection stopped reading to wait for the memory budget.
    pub input_memory_waits: Counter,
    pub unmatched_records: Counter,
    pub output_records: Family<SinkLabel, Counter>,
    pub output_bytes: Family<SinkLabel, Counter>,
    pub output_errors: Family<SinkLabel, Counter>,
    /// Requests or items sent again, by why (`connection`, `http_429`, `item_429`, …).
    pub output_retries: Family<SinkReasonLabel, Counter>,
    /// Events written to a sink's dead-letter file instead of being delivered.
    pub dead_letter_records: Family<SinkReasonLabel, Counter>,
    /// Dead-letter lines dropped with the oldest generation at `dead_letter_max_size`.
    pub dead_letter_dropped: Family<SinkLabel, Counter>,
    /// Events too large for one CloudWatch Logs event, sent as several parts.
    pub output_split_records: Family<SinkLabel, Counter>,
    /// Time from sending a request to having its whole response, per request (answered or
    /// failed), in seconds.
    pub output_request_duration: DurationFamily,
    /// Records joined from Docker partial messages or multiline groups, per sink.
    pub reassembled_records: Family<JoinLabel, Counter>,
    pub buffer_bytes: Gauge,
    pub buffer_records: Gauge,
    pub buffer_segments: Gauge,
    pub buffer_healthy: Gauge,
    /// Counters the buffer keeps itself; copied (their increase) at each scrape.
    pub buffer_fsyncs: Counter,
    pub buffer_written_bytes: Counter,
    pub buffer_write_errors: Counter,
    pub buffer_dropped: Family<ReasonLabel, Counter>,
    pub buffer_recovered_records: Counter,
    pub buffer_corrupt_records: Counter,
    pub buffer_cursor_errors: Counter,
    pub buffer_host_changed: Gauge,
    pub sink_lag_records: Family<SinkLabel, Gauge>,
    pub sink_oldest_age: Family<SinkLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Records seen by enrichment, by `result`: `enriched`, `no_metadata`, `not_docker`.
    pub enrich_records: Family<ResultLabel, Counter>,
    /// Failed or timed-out Docker inspects.
    pub enrich_docker_errors: Counter,
    /// Entries in the Docker metadata cache (removed containers in their grace period
    /// included).
    pub enrich_docker_cache_size: Gauge,
    /// The drain's step: 1 for the current one (`idle` when no drain is in progress).
    pub drain_state: Family<StepLabel, Gauge>,
    pub drain_remaining_tasks: Gauge,
    pub drain_heartbeats: Counter,
    /// Seconds to the deadline of the drain in progress (0 when none).
    pub drain_deadline_seconds: Gauge,
    /// Seconds since the drain started (its whole length once finished).
    pub drain_duration_seconds: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub step: &'static str,
}

/// The values of `berth_drain_state{step}`.
pub const DRAIN_STEPS: [&str; 6] =
    ["idle", "set_draining", "wait_tasks", "flush", "complete", "done"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("berth");
        let m = Metrics {
            registry: Registry::default(),
            capacity: std::sync::Arc::default(),
            api_calls: Family::default(),
            drain_state: Family::default(),
            drain_remaining_tasks: Gauge::default(),
            drain_heartbeats: Counter::default(),
            drain_deadline_seconds: Gauge::default(),
            drain_duration_seconds: Gauge::default(),
            input_records: Counter::default(),
            input_bytes: Counter::default(),
            input_requests: Counter::default(),
            input_duplicate_chunks: Counter::default(),
            input_errors: Family::default(),
            input_connections: Gauge::default(),
            input_connection_waits: Family::default(),
            input_memory_budget: Gauge::default(),
            input_memory_bytes: Gauge::default(),
            input_memory_waits: Counter::default(),
            unmatched_records: Counter::default(),
            output_records: Family::default(),
            output_bytes: Family::default(),
            output_errors: Family::default(),
            output_retries: Family::default(),
            dead_letter_records: Family::default(),
            dead_letter_dropped: Family::default(),
            output_split_records: Family::default(),
            output_request_duration: Family::new_with_constructor(request_duration_histogram),
            reassembled_records: Family::default(),
            buffer_bytes: Gauge::default(),
            buffer_records: Gauge::default(),
            buffer_segments: Gauge::default(),
            buffer_healthy: Gauge::default(),
            buffer_fsyncs: Counter::default(),
            buffer_written_bytes: Counter::default(),
            buffer_write_errors: Counter::default(),
            buffer_dropped: Family::default(),
            buffer_recovered_records: Counter::default(),
            buffer_corrupt_records: Counter::default(),
            buffer_cursor_errors: Counter::default(),
            buffer_host_changed: Gauge::default(),
            sink_lag_records: Family::default(),
            sink_oldest_age: Family::default(),
            enrich_records: Family::default(),
            enrich_docker_errors: Counter::default(),
            enrich_docker_cache_size: Gauge::default(),
        };
        registry.register("input_records", "Events accepted from clients", m.input_records.clone());
        registry.register(
            "input_bytes",
            "Record bytes accepted from clients",
            m.input_bytes.clone(),
        );
        registry.register("input_requests", "Forward requests accepted", m.input_requests.clone());
        registry.register(
            "input_duplicate_chunks",
            "Forward requests resent with a chunk already stored: acked, not stored again",
            m.input_duplicate_chunks.clone(),
        );
        registry.register(
            "input_errors",
            "Connections closed for bad input, by reason",
            m.input_errors.clone(),
        );
        registry.register(
            "input_connections",
            "Open client connections",
            m.input_connections.clone(),
        );
        registry.register(
            "input_connection_waits",
            "Times a listener had every connection slot taken and stopped accepting until one freed, by listener",
            m.input_connection_waits.clone(),
        );
        registry.register(
            "input_memory_budget_bytes",
            "Bytes connections may hold beyond their allowance (input.forward.memory_budget)",
            m.input_memory_budget.clone(),
        );
        registry.register(
            "input_memory_bytes",
            "Bytes connections hold from the memory budget",
            m.input_memory_bytes.clone(),
        );
        registry.register(
            "input_memory_waits",
            "Times a connection stopped reading to wait for the memory budget",
            m.input_memory_waits.clone(),
        );
        registry.register(
            "unmatched_records",
            "Events whose tag matched no sink (discarded)",
            m.unmatched_records.clone(),
        );
        registry.register("output_records", "Events delivered by a sink", m.output_records.clone());
        registry.register(
            "output_split_records",
            "Events larger than the destination's event size limit, sent as several marked parts",
            m.output_split_records.clone(),
        );
        registry.register("output_bytes", "Bytes written by a sink", m.output_bytes.clone());
        registry.register("output_errors", "Failed sink writes", m.output_errors.clone());
        registry.register(
            "output_retries",
            "Requests or items a sink sent again, by reason",
            m.output_retries.clone(),
        );
        registry.register(
            "dead_letter_records",
            "Events written to a dead-letter file, by reason",
            m.dead_letter_records.clone(),
        );
        registry.register(
            "dead_letter_dropped_records",
            "Dead-letter lines dropped with the oldest file generation at dead_letter_max_size",
            m.dead_letter_dropped.clone(),
        );
        registry.register(
            "output_request_duration_seconds",
            "Duration of a sink's requests (sent to whole response or failure)",
            m.output_request_duration.clone(),
        );
        registry.register(
            "reassembled_records",
            "Records a sink's reader joined from split lines (partial) or line groups (multiline), by outcome",
            m.reassembled_records.clone(),
        );
        registry.register(
            "buffer_bytes",
            "Bytes of segments in the durable buffer",
            m.buffer_bytes.clone(),
        );
        registry.register(
            "buffer_records",
            "Events in the durable buffer (head - oldest)",
            m.buffer_records.clone(),
        );
        registry.register(
            "buffer_segments",
            "Segment files in the durable buffer",
            m.buffer_segments.clone(),
        );
        registry.register(
            "buffer_healthy",
            "1 while the buffer can write, 0 after a disk error",
            m.buffer_healthy.clone(),
        );
        registry.register("buffer_fsyncs", "Segment fsyncs since start", m.buffer_fsyncs.clone());
        registry.register(
            "buffer_written_bytes",
            "Bytes of entries written to buffer segments since start",
            m.buffer_written_bytes.clone(),
        );
        registry.register(
            "buffer_write_errors",
            "Failed buffer writes since start",
            m.buffer_write_errors.clone(),
        );
        // Zero from the start, so that an alert on its rate has a series to watch.
        for reason in ["full", "too_large"] {
            let _ = m.buffer_dropped.get_or_create(&ReasonLabel { reason });
        }
        registry.register(
            "buffer_dropped_records",
            "Events refused by the buffer, by reason",
            m.buffer_dropped.clone(),
        );
        registry.register(
            "buffer_recovered_records",
            "Events found in the buffer at start",
            m.buffer_recovered_records.clone(),
        );
        registry.register(
            "buffer_corrupt_records",
            "Events lost to damaged buffer entries found at start",
            m.buffer_corrupt_records.clone(),
        );
        registry.register(
            "buffer_host_changed",
            "1 when the buffer was found written on another host at start (a copied disk image) and took a new instance id",
            m.buffer_host_changed.clone(),
        );
        registry.register(
            "buffer_cursor_errors",
            "Failed writes of a sink cursor",
            m.buffer_cursor_errors.clone(),
        );
        registry.register(
            "sink_lag_records",
            "Events in the buffer a sink has not delivered",
            m.sink_lag_records.clone(),
        );
        registry.register(
            "sink_oldest_record_age_seconds",
            "Age of the oldest event a sink has read but not delivered",
            m.sink_oldest_age.clone(),
        );
        registry.register(
            "enrich_records",
            "Records seen by enrichment, by result",
            m.enrich_records.clone(),
        );
        registry.register(
            "enrich_docker_errors",
            "Failed or timed-out Docker container inspects",
            m.enrich_docker_errors.clone(),
        );
        registry.register(
            "enrich_docker_cache_containers",
            "Containers in the Docker metadata cache",
            m.enrich_docker_cache_size.clone(),
        );
        registry.register(
            "aws_api_calls",
            "AWS API calls made by capacity and the drain, by action and result",
            m.api_calls.clone(),
        );
        registry.register(
            "drain_state",
            "The drain's step (1 for the current one)",
            m.drain_state.clone(),
        );
        registry.register(
            "drain_remaining_tasks",
            "Non-daemon tasks the drain in progress waits for",
            m.drain_remaining_tasks.clone(),
        );
        registry.register(
            "drain_heartbeats",
            "Lifecycle action heartbeats sent",
            m.drain_heartbeats.clone(),
        );
        registry.register(
            "drain_deadline_seconds",
            "Seconds to the deadline of the drain in progress",
            m.drain_deadline_seconds.clone(),
        );
        registry.register(
            "drain_duration_seconds",
            "Seconds since the drain started, or its whole length once finished",
            m.drain_duration_seconds.clone(),
        );
        registry.register_collector(Box::new(std::sync::Arc::clone(&m.capacity)));
        registry.register_collector(Box::new(crate::process_metrics::Process));
        registry.register(
            "build",
            "berth's version",
            prometheus_client::metrics::info::Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        Metrics { registry, ..m }
    }

    pub fn input_error(&self, reason: &'static str) {
        self.input_errors.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn reassembled(&self, sink: &str, kind: &'static str, outcome: &'static str) {
        self.reassembled_records
            .get_or_create(&JoinLabel { sink: sink.to_owned(), kind, outcome })
            .inc();
    }

    pub fn api_call(&self, action: &'static str, result: &'static str) {
        self.api_calls.get_or_create(&ApiCallLabel { action, result }).inc();
    }

    /// Count one AWS call by its outcome: `ok`, `throttled` or `error`.
    pub fn api_outcome<T>(&self, action: &'static str, r: &Result<T, crate::aws::api::ApiError>) {
        let result = match r {
            Ok(_) => "ok",
            Err(e) if e.kind == crate::aws::api::ApiErrorKind::Throttled => "throttled",
            Err(_) => "error",
        };
        self.api_call(action, result);
    }

    pub fn buffer_dropped(&self, reason: &'static str, n: u64) {
        self.buffer_dropped.get_or_create(&ReasonLabel { reason }).inc_by(n);
    }

    /// Copy the buffer's state into the gauges (called before each scrape).
    pub fn observe_buffer(&self, stats: &crate::buffer::BufferStats) {
        self.buffer_bytes.set(stats.total_bytes as i64);
        self.buffer_records.set(stats.total_events as i64);
        self.buffer_segments.set(stats.segments as i64);
        self.buffer_healthy.set(stats.healthy as i64);
        // Counters are counters (`_total`): the buffer's own tallies only grow, and their
        // latest is the counter's value: `fetch_max` keeps it exact under concurrent
        // scrapes.
        for (c, now) in [
            (&self.buffer_fsyncs, stats.segment_fsyncs),
            (&self.buffer_written_bytes, stats.written_bytes),
            (&self.buffer_write_errors, stats.write_errors),
        ] {
            c.inner().fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        }
        self.buffer_host_changed.set(stats.recovery.host_changed as i64);
        let now = crate::event::EventTime::now();
        for s in &stats.sinks {
            let label = SinkLabel { sink: s.name.clone() };
            self.sink_lag_records.get_or_create(&label).set(s.lag_events as i64);
            let age = s.oldest_undelivered.map_or(0.0, |t| {
                (now.secs - t.secs) as f64 + (now.nanos as f64 - t.nanos as f64) / 1e9
            });
            self.sink_oldest_age.get_or_create(&label).set(age.max(0.0));
        }
    }

    /// Copy the drain's view into its gauges (at each of its ticks).
    pub fn observe_drain(&self, v: &crate::drain::runner::View) {
        let step = match &v.drain {
            Some(d) if v.active => d.step.as_str(),
            Some(_) => "done",
            None => "idle",
        };
        for s in DRAIN_STEPS {
            self.drain_state.get_or_create(&StepLabel { step: s }).set(i64::from(s == step));
        }
        self.drain_remaining_tasks.set(i64::from(v.remaining_tasks.unwrap_or(0)));
        self.drain_deadline_seconds.set(v.deadline_in_seconds.unwrap_or(0).max(0));
        let now = crate::capacity::collector::unix_ms(std::time::SystemTime::now());
        let took = v
            .drain
            .as_ref()
            .map_or(0, |d| d.done_ms.unwrap_or(now).saturating_sub(d.started_ms) / 1000);
        self.drain_duration_seconds.set(took as i64);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_required_names() {
        let m = Metrics::new();
        m.input_error("malformed");
        m.output_records.get_or_create(&SinkLabel { sink: "console".into() }).inc_by(3);
        m.output_request_duration
            .get_or_create(&SinkLabel { sink: "search".into() })
            .observe(0.003);
        let text = m.render();
        for name in [
            "berth_output_request_duration_seconds_count{sink=\"search\"} 1",
            "berth_output_request_duration_seconds_bucket{le=\"0.005\",sink=\"search\"} 1",
            "berth_output_request_duration_seconds_bucket{le=\"0.0025\",sink=\"search\"} 0",
            "berth_input_records_total",
            "berth_input_bytes_total",
            "berth_input_errors_total{reason=\"malformed\"} 1",
            "berth_input_connections",
            "berth_input_memory_budget_bytes",
            "berth_input_memory_bytes",
            "berth_input_memory_waits_total",
            "berth_output_records_total{sink=\"console\"} 3",
            "berth_build_info{version=\"",
            "berth_process_cpu_seconds_total ",
            "berth_process_resident_memory_bytes ",
            "berth_process_open_fds ",
            "berth_buffer_fsyncs_total 0",
            "berth_buffer_written_bytes_total 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
