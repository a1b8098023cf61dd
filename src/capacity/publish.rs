//! The latest report, shared with its readers: the admin endpoint (`GET /v1/capacity`,
//! `berth capacity`) and the Prometheus exposition, which is made from the report at each
//! scrape (a `Collector`), so a figure is either the current one or absent — never a gauge
//! left at an old value.

use super::report::{Report, Source};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::{Arc, RwLock};

/// The last report; `None` before the first tick (or with capacity off).
#[derive(Debug, Default)]
pub struct Latest {
    report: RwLock<Option<Arc<Report>>>,
    /// Gauges on `/metrics` (`[capacity.publish] prometheus`).
    prometheus: std::sync::atomic::AtomicBool,
}

impl Latest {
    pub fn new(prometheus: bool) -> Latest {
        Latest { report: RwLock::new(None), prometheus: prometheus.into() }
    }

    pub fn set_prometheus(&self, on: bool) {
        self.prometheus.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<Arc<Report>> {
        self.report.read().map_or_else(|p| p.into_inner().clone(), |r| r.clone())
    }

    pub fn set(&self, r: Report) {
        let r = Arc::new(r);
        match self.report.write() {
            Ok(mut g) => *g = Some(r),
            Err(p) => *p.into_inner() = Some(r),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShapeLabel {
    shape: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: impl Into<f64>) -> std::fmt::Result {
    let g = ConstGauge::new(v.into());
    let m = e.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

fn family<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    items: impl IntoIterator<Item = (L, f64)>,
) -> std::fmt::Result {
    let mut items = items.into_iter().peekable();
    if items.peek().is_none() {
        return Ok(());
    }
    let mut m =
        e.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
    for (label, v) in items {
        ConstGauge::new(v).encode(m.encode_family(&label)?)?;
    }
    Ok(())
}

impl Collector for Latest {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        if !self.prometheus.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let Some(r) = self.get() else { return Ok(()) };
        let e = &mut e;
        // Whether each source answered, and how old the figures are: always, so an alert
        // can see a stale host.
        family(
            e,
            "capacity_source_up",
            "Whether the source's last call answered (agent, docker, cgroup, ecs_api, imds)",
            Source::ALL.into_iter().filter_map(|s| {
                r.source(s)
                    .map(|st| (SourceLabel { source: s.as_str() }, f64::from(u8::from(st.up))))
            }),
        )?;
        if let Some(age) = r.age_seconds() {
            gauge(e, "capacity_age_seconds", "Age of the oldest local figure of the report", age)?;
        }
        // Figures only when they are this tick's: absent rather than stale.
        if r.fresh {
            if let Some(free) = r.free {
                gauge(
                    e,
                    "capacity_free_cpu_units",
                    "CPU units ECS can still place here",
                    free.cpu_units as f64,
                )?;
                gauge(
                    e,
                    "capacity_free_memory_mib",
                    "Memory MiB ECS can still place here",
                    free.memory_mib as f64,
                )?;
            }
            family(
                e,
                "capacity_schedulable",
                "Tasks of each configured shape that still fit here",
                r.shapes.iter().filter_map(|s| {
                    s.schedulable.map(|n| (ShapeLabel { shape: s.name.clone() }, n as f64))
                }),
            )?;
        }
        if r.source(Source::Agent).is_some_and(|s| s.up) {
            gauge(
                e,
                "capacity_running_tasks",
                "Non-daemon tasks running here",
                r.running_tasks as f64,
            )?;
            gauge(
                e,
                "capacity_pending_tasks",
                "Non-daemon tasks placed here, not yet running",
                r.pending_tasks as f64,
            )?;
            gauge(
                e,
                "capacity_idle_seconds",
                "Seconds since a non-daemon task last ran here",
                r.idle_seconds as f64,
            )?;
        }
        if let Some(d) = &r.drift {
            family(
                e,
                "capacity_drift",
                "Local figure minus ECS's (remainingResources, task counts) at the last cross-check",
                [
                    (ResourceLabel { resource: "cpu_units" }, d.cpu_units as f64),
                    (ResourceLabel { resource: "memory_mib" }, d.memory_mib as f64),
                    (ResourceLabel { resource: "running_tasks" }, d.running_tasks as f64),
                    (ResourceLabel { resource: "pending_tasks" }, d.pending_tasks as f64),
                ],
            )?;
        }
        if let Some(p) = r.protected {
            gauge(
                e,
                "capacity_protected",
                "Scale-in protection of this instance as last set (0/1)",
                f64::from(u8::from(p)),
            )?;
        }
        Ok(())
    }
}
