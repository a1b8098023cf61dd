//! Enrichment at the input: Docker container, ECS task and EC2 host fields added to each
//! record before it is stored, so that every sink (and its `{field}` templates) sees them.
//!
//! - [`docker`]: the container cache, a subscriber of the host's Docker engine
//!   ([`crate::docker`]: its container list and events).
//! - [`ec2`]: the host fields (IMDSv2).
//! - [`record`]: the msgpack rewrite, pure.
//!
//! Per record: a `memmem` search for `container_id` rejects the records of other clients
//! without parsing them; a Docker record's map is walked once, its container looked up
//! (the batch remembers the last container: Docker's driver sends each container's lines
//! on its own connection), and the pre-encoded fields copied after it. Keys the record
//! already has are kept — except `container_name`: Docker's driver writes it with a leading
//! `/` and never updates it after `docker rename`, so the cache's current name replaces it.
//! All rewritten records of a batch share one new allocation.
//!
//! Never in the way of intake: without Docker or IMDS records pass through unchanged; a
//! first-sight inspect is waited for at most `[enrich.docker] inspect_wait`, by that connection
//! only.

pub mod docker;
pub mod ec2;
pub mod record;

use crate::config::{ApplyTo, EnrichConfig};
use crate::event::Batch;
use crate::metrics::Metrics;
use bytes::Bytes;
use docker::{Container, DockerCache, Lookup};
use ec2::HostFields;
use memchr::memmem;
use record::{Edit, Fields, MapView};
use std::ops::Range;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

// The config refuses more added keys than one pre-encoded set holds.
const _: () = assert!(record::MAX_PAIRS == crate::config::enrich::MAX_KEYS);

const CONTAINER_ID: &[u8] = b"container_id";
const CONTAINER_NAME: &[u8] = b"container_name";

/// What became of one batch's records (counted once per batch).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Docker records that got their container's fields.
    pub enriched: u64,
    /// Docker records whose container is unknown (Docker down, inspect failed or late).
    pub no_metadata: u64,
    /// Records without `container_id`.
    pub not_docker: u64,
}

/// Shared by all connections.
pub struct Enricher {
    docker: Option<Arc<DockerCache>>,
    host: Option<Arc<HostFields>>,
    apply_to: ApplyTo,
    finder: memmem::Finder<'static>,
    metrics: Option<Arc<Metrics>>,
}

/// `/v1/status` → `enrich`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EnrichStatus {
    pub docker: Option<docker::DockerStatus>,
    pub ec2: Option<ec2::HostStatus>,
}

impl Enricher {
    /// Does nothing to records.
    pub fn disabled() -> Enricher {
        Enricher {
            docker: None,
            host: None,
            apply_to: ApplyTo::All,
            finder: memmem::Finder::new(CONTAINER_ID),
            metrics: None,
        }
    }

    /// An enricher from its parts (tests and benchmarks build them without I/O).
    pub fn from_parts(
        docker: Option<Arc<DockerCache>>,
        host: Option<Arc<HostFields>>,
        apply_to: ApplyTo,
        metrics: Option<Arc<Metrics>>,
    ) -> Enricher {
        Enricher { docker, host, apply_to, finder: memmem::Finder::new(CONTAINER_ID), metrics }
    }

    /// The Docker cache, for the multiline stage (`multiline_start`).
    pub fn docker(&self) -> Option<&Arc<DockerCache>> {
        self.docker.as_ref()
    }

    pub fn status(&self) -> EnrichStatus {
        EnrichStatus {
            docker: self.docker.as_ref().map(|d| d.status()),
            ec2: self.host.as_ref().map(|h| h.status()),
        }
    }

    /// Add the fields to every record of `batch` that should get them; the byte count the
    /// records grew by.
    pub async fn enrich(&self, batch: &mut Batch) -> usize {
        if self.docker.is_none() && self.host.is_none() {
            return 0;
        }
        let host = self.host.as_ref().and_then(|h| h.get());
        let mut counts = Counts::default();
        let mut work = Work { batch_len: batch.events.len(), ..Work::default() };
        // The last container looked up, by id: one lookup per container and batch.
        let mut last: Option<(Bytes, Option<Arc<Container>>)> = None;
        for (i, ev) in batch.events.iter().enumerate() {
            let rec = &ev.record;
            let host_here = host.as_deref().filter(|_| self.apply_to == ApplyTo::All);
            if self.finder.find(rec).is_none() {
                counts.not_docker += 1;
                if let Some(h) = host_here {
                    if let Some(view) = work.scan.walk(rec) {
                        work.apply(i, rec, view, None, Some(h));
                    }
                }
                continue;
            }
            let Some(view) = work.scan.walk(rec) else {
                // Not a map after all: left alone.
                counts.not_docker += 1;
                continue;
            };
            let Some(id) = work.scan.container_id.clone().map(|r| rec.slice(r)) else {
                counts.not_docker += 1;
                if let Some(h) = host_here {
                    work.apply(i, rec, view, None, Some(h));
                }
                continue;
            };
            let container = match &last {
                Some((prev, c)) if *prev == id => c.clone(),
                _ => {
                    let c = self.container(&id).await;
                    last = Some((id, c.clone()));
                    c
                }
            };
            if container.is_some() {
                counts.enriched += 1;
            } else {
                counts.no_metadata += 1;
            }
            work.apply(i, rec, view, container.as_deref(), host.as_deref());
        }
        self.count(counts);
        if work.rewritten.is_empty() {
            return 0;
        }
        let shared = Bytes::from(work.out);
        let mut grew = 0;
        for (i, r) in work.rewritten {
            let ev = &mut batch.events[i];
            grew += r.len().saturating_sub(ev.record.len());
            ev.record = shared.slice(r);
        }
        grew
    }

    async fn container(&self, id: &[u8]) -> Option<Arc<Container>> {
        let docker = self.docker.as_ref()?;
        let id = std::str::from_utf8(id).ok()?;
        match docker.lookup(id) {
            Lookup::Hit(c) => Some(c),
            Lookup::Miss => None,
            Lookup::Wait(rx) => docker.wait(id, rx).await,
        }
    }

    fn count(&self, c: Counts) {
        let Some(m) = &self.metrics else { return };
        for (result, n) in
            [("enriched", c.enriched), ("no_metadata", c.no_metadata), ("not_docker", c.not_docker)]
        {
            if n > 0 {
                m.enrich_records.get_or_create(&crate::metrics::ResultLabel { result }).inc_by(n);
            }
        }
    }
}

static EMPTY: Fields = Fields::EMPTY;

/// One batch's rewrites: every rewritten record goes into one buffer.
#[derive(Default)]
struct Work {
    /// Events in the batch (sizes the buffer).
    batch_len: usize,
    scan: Scan,
    out: Vec<u8>,
    /// Event index → its new record's range in `out`.
    rewritten: Vec<(usize, Range<usize>)>,
}

impl Work {
    /// Rewrite event `i`'s record (walked into `self.scan` as `view`) with the container's
    /// and the host's fields, unless that changes nothing.
    fn apply(
        &mut self,
        i: usize,
        rec: &Bytes,
        view: MapView,
        c: Option<&Container>,
        host: Option<&Fields>,
    ) {
        let scan = &self.scan;
        let keys = || scan.keys.iter().map(|r| &rec[r.clone()]);
        let mut append: [(&Fields, u64); 2] = [(&EMPTY, 0), (&EMPTY, 0)];
        let mut replace = None;
        if let Some(c) = c {
            let mut skip = c.fields.present(keys());
            if let (Some(at), Some(k)) =
                (scan.container_name.clone(), c.fields.index(CONTAINER_NAME))
            {
                replace = Some((at, c.fields.value_bytes(k)));
                skip |= 1 << k;
            }
            append[0] = (&c.fields, skip);
        }
        if let Some(h) = host {
            append[1] = (h, h.present(keys()));
        }
        let edit = Edit { replace, append: &append };
        if edit.is_noop() {
            return;
        }
        let start = self.out.len();
        if self.out.capacity() == 0 {
            // Room for the rest of the batch like this one: one allocation, not a doubling
            // series of copies.
            let extra: usize = append.iter().map(|(f, _)| f.encoded_len()).sum();
            self.out.reserve((rec.len() + extra + 5) * self.batch_len.saturating_sub(i).max(1));
        }
        record::rewrite(rec, view, &edit, &mut self.out);
        self.rewritten.push((i, start..self.out.len()));
    }
}

/// One walk over a record's top-level keys, reusing its buffers across records.
#[derive(Default)]
struct Scan {
    keys: Vec<Range<usize>>,
    container_id: Option<Range<usize>>,
    container_name: Option<Range<usize>>,
}

impl Scan {
    fn walk(&mut self, rec: &[u8]) -> Option<MapView> {
        self.keys.clear();
        self.container_id = None;
        self.container_name = None;
        let keys = &mut self.keys;
        let (id, name) = (&mut self.container_id, &mut self.container_name);
        record::walk_map(rec, |k, v| {
            let key = &rec[k.clone()];
            if key == CONTAINER_ID {
                if crate::msgpack::str_body(&rec[v.clone()]).is_some() {
                    *id = Some(record::body_range(rec, v.clone()));
                }
            } else if key == CONTAINER_NAME && crate::msgpack::str_body(&rec[v.clone()]).is_some() {
                *name = Some(v);
            }
            keys.push(k);
        })
    }
}

/// The running parts: built from the config, tasks started on `tracker`.
pub struct Started {
    pub enricher: Arc<Enricher>,
    pub host: Option<Arc<HostFields>>,
}

/// Build the enricher and start its background tasks (the Docker cache's subscription to
/// `engine`, IMDS), all ending with `shutdown`. The engine itself is started by the caller:
/// it is the host's, shared with other subscribers.
pub fn start(
    cfg: &EnrichConfig,
    engine: Option<&Arc<crate::docker::Engine>>,
    metrics: &Arc<Metrics>,
    imds: &crate::imds::Imds,
    tracker: &tokio_util::task::TaskTracker,
    shutdown: &CancellationToken,
) -> Started {
    let docker = engine.filter(|_| cfg.docker.enabled).map(|e| {
        Arc::new(DockerCache::new(cfg.docker.clone(), Arc::clone(e), Arc::clone(metrics)))
    });
    if let Some(d) = &docker {
        tracker.spawn(Arc::clone(d).run(shutdown.clone()));
    }
    let host = match (cfg.ec2.enabled, imds.is_enabled()) {
        (true, true) => {
            let h = Arc::new(HostFields::new(imds.endpoint(), true));
            tracker.spawn(Arc::clone(&h).run(imds.clone(), shutdown.clone()));
            Some(h)
        }
        (true, false) => {
            tracing::info!("{} is set: no EC2 host fields", crate::imds::DISABLED_ENV);
            None
        }
        (false, _) => None,
    };
    let enricher = Arc::new(Enricher::from_parts(
        docker,
        host.clone(),
        cfg.ec2.apply_to,
        Some(Arc::clone(metrics)),
    ));
    Started { enricher, host }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DockerEnrichConfig, DockerField};
    use crate::event::{Event, EventTime, Tag};
    use docker::Inspected;
    use rmpv::Value;
    use std::time::Duration;

    fn mp(pairs: &[(&str, &str)]) -> Bytes {
        let v = Value::Map(pairs.iter().map(|(k, v)| (Value::from(*k), Value::from(*v))).collect());
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &v).unwrap();
        Bytes::from(out)
    }

    fn decoded(b: &Bytes) -> Vec<(String, String)> {
        let v = rmpv::decode::read_value(&mut &b[..]).unwrap();
        v.as_map()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap_or("?").to_string()))
            .collect()
    }

    fn enricher(apply_to: ApplyTo) -> (Enricher, Arc<Metrics>) {
        let m = Arc::new(Metrics::new());
        let cfg = DockerEnrichConfig {
            enabled: true,
            socket: None,
            fields: vec![DockerField::ContainerName, DockerField::EcsCluster],
            labels: vec![],
            env: vec![],
            removed_grace_period: Duration::from_secs(60),
            inspect_wait: Duration::from_secs(2),
            max_containers: 10,
        };
        let engine = Arc::new(crate::docker::Engine::new(Default::default()));
        let cache = Arc::new(DockerCache::new(cfg, engine, Arc::clone(&m)));
        let labels =
            [("com.amazonaws.ecs.cluster".to_string(), "c1".to_string())].into_iter().collect();
        cache.put(&Inspected {
            id: "aaa".into(),
            name: "/web".into(),
            labels,
            ..Default::default()
        });
        let host = Arc::new(HostFields::new("http://127.0.0.1:1", true));
        let mut f = Fields::new();
        f.push_str("region", "eu-west-1");
        host.set(f);
        (Enricher::from_parts(Some(cache), Some(host), apply_to, Some(Arc::clone(&m))), m)
    }

    fn batch(records: Vec<Bytes>) -> Batch {
        Batch {
            tag: Tag::from_static("t"),
            events: records
                .into_iter()
                .map(|record| Event { time: EventTime::new(1, 0), record, metadata: Bytes::new() })
                .collect(),
        }
    }

    #[tokio::test]
    async fn a_batch_of_mixed_records() {
        let (e, m) = enricher(ApplyTo::All);
        let plain = mp(&[("msg", "hi")]);
        let mentions = mp(&[("log", "no container_id key here, only in the text")]);
        let mut b = batch(vec![
            mp(&[("container_id", "aaa"), ("container_name", "/web"), ("log", "1")]),
            mp(&[
                ("container_id", "aaa"),
                ("container_name", "/web"),
                ("ecs_cluster", "mine"),
                ("log", "2"),
            ]),
            mp(&[("container_id", "zzz"), ("container_name", "/gone"), ("log", "3")]),
            plain.clone(),
            mentions.clone(),
            Bytes::from_static(&[0xc0]),
        ]);
        let grew = e.enrich(&mut b).await;
        assert!(grew > 0);
        let r: Vec<_> = b.events.iter().map(|e| &e.record).collect();
        let kv = |pairs: &[(&str, &str)]| {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>()
        };
        assert_eq!(
            decoded(r[0]),
            kv(&[
                ("container_id", "aaa"),
                ("container_name", "web"),
                ("log", "1"),
                ("ecs_cluster", "c1"),
                ("region", "eu-west-1")
            ])
        );
        assert_eq!(
            decoded(r[1]),
            kv(&[
                ("container_id", "aaa"),
                ("container_name", "web"),
                ("ecs_cluster", "mine"),
                ("log", "2"),
                ("region", "eu-west-1")
            ])
        );
        assert_eq!(
            decoded(r[2]),
            kv(&[
                ("container_id", "zzz"),
                ("container_name", "/gone"),
                ("log", "3"),
                ("region", "eu-west-1")
            ]),
            "unknown container: host fields only"
        );
        assert_eq!(decoded(r[3]), kv(&[("msg", "hi"), ("region", "eu-west-1")]));
        assert_eq!(decoded(r[4]).len(), 2);
        assert_eq!(&r[5][..], &[0xc0], "not a map: unchanged");
        let count =
            |result| m.enrich_records.get_or_create(&crate::metrics::ResultLabel { result }).get();
        assert_eq!((count("enriched"), count("no_metadata"), count("not_docker")), (2, 1, 3));
    }

    #[tokio::test]
    async fn apply_to_docker_leaves_other_records_as_they_are() {
        let (e, _) = enricher(ApplyTo::Docker);
        let plain = mp(&[("msg", "hi")]);
        let mut b = batch(vec![plain.clone()]);
        assert_eq!(e.enrich(&mut b).await, 0);
        assert_eq!(b.events[0].record.as_ptr(), plain.as_ptr(), "not even copied");
        assert_eq!(
            Enricher::disabled().enrich(&mut batch(vec![mp(&[("container_id", "aaa")])])).await,
            0
        );
        assert_eq!(e.docker().unwrap().multiline_start("aaa"), None);
    }
}
