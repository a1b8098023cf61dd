//! The sinks that run, by name: started with berth, and added, replaced or removed while it
//! runs when SIGHUP changes `[[sink]]`.
//!
//! A sink is replaced by stopping it (its task is aborted: what it had in flight and not
//! acknowledged to the buffer is delivered again by the new one, from its cursor — with the
//! elasticsearch sink's stable ids that is the same documents) and starting the new one on
//! the same cursor. A removed sink's cursor is forgotten, as at start for a sink no longer
//! configured, so it holds no segment; a new sink starts at the oldest event in the buffer.
//! Sinks whose config did not change keep running untouched.

use super::{SinkContext, SinkError};
use crate::aws::Aws;
use crate::config::{SinkConfig, SinkKind};
use crate::metrics::{Metrics, SinkLabel};
use crate::pipeline::{Pipeline, SinkReader, SinkRoute};
use crate::reassemble::JoinOptions;
use std::sync::Arc;
use tokio::task::{AbortHandle, Id, JoinSet};

/// What a new `[[sink]]` list means for the running one: which sinks stop, which of those
/// are gone (their cursors forgotten), which start. Pure; compared field by field.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub stop: Vec<String>,
    pub remove: Vec<String>,
    pub start: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty() && self.start.is_empty()
    }
}

pub fn plan(old: &[SinkConfig], new: &[SinkConfig]) -> Plan {
    let d = |s: &SinkConfig| format!("{s:?}");
    let mut p = Plan::default();
    for o in old {
        match new.iter().find(|n| n.name == o.name) {
            None => {
                p.stop.push(o.name.clone());
                p.remove.push(o.name.clone());
            }
            Some(n) if d(n) != d(o) => p.stop.push(o.name.clone()),
            Some(_) => {}
        }
    }
    for n in new {
        match old.iter().find(|o| o.name == n.name) {
            Some(o) if d(o) == d(n) => {}
            _ => p.start.push(n.name.clone()),
        }
    }
    p
}

/// The route of a sink's reader: its name, its pattern, the joins every sink shares (but
/// the `null` sink, which discards what it is given and so has nothing to join).
pub fn route(cfg: &SinkConfig, join: &JoinOptions) -> SinkRoute {
    let join = match cfg.kind {
        SinkKind::Null => JoinOptions::default(),
        _ => join.clone(),
    };
    SinkRoute { name: cfg.name.clone(), pattern: cfg.match_.clone(), join }
}

/// A finished sink task: its id and what it returned (a panic or an abort as `Stopped`).
type Joined = (Id, Result<(), SinkError>);

fn joined(r: Result<(Id, Result<(), SinkError>), tokio::task::JoinError>) -> Joined {
    r.unwrap_or_else(|e| (e.id(), Err(SinkError::Stopped)))
}

pub struct RunningSinks {
    tasks: JoinSet<Result<(), SinkError>>,
    /// In config order; a task's id is its handle's.
    running: Vec<(SinkConfig, AbortHandle)>,
    /// Sinks that ended while a reload waited for the ones it stopped: reported next.
    ended: Vec<(String, Result<(), SinkError>)>,
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
    aws: Arc<Aws>,
    join: JoinOptions,
}

impl RunningSinks {
    pub fn new(
        pipeline: Pipeline,
        metrics: Arc<Metrics>,
        aws: Arc<Aws>,
        join: JoinOptions,
    ) -> Self {
        RunningSinks {
            tasks: JoinSet::new(),
            running: Vec::new(),
            ended: Vec::new(),
            pipeline,
            metrics,
            aws,
            join,
        }
    }

    /// Runs `cfg` on `reader`.
    pub fn start(&mut self, cfg: SinkConfig, reader: SinkReader) {
        let label = SinkLabel { sink: cfg.name.clone() };
        let _ = self.metrics.output_records.get_or_create(&label);
        let _ = self.metrics.output_errors.get_or_create(&label);
        let _ = self.metrics.output_bytes.get_or_create(&label);
        let ctx = SinkContext {
            name: cfg.name.clone(),
            reader,
            metrics: Arc::clone(&self.metrics),
            aws: Arc::clone(&self.aws),
        };
        let instance_id = self.pipeline.buffer().instance_id();
        let run = cfg.clone();
        let handle = self.tasks.spawn(async move { super::run(&run, ctx, instance_id).await });
        self.running.push((cfg, handle));
    }

    /// The configs of the sinks that run, in order.
    pub fn configs(&self) -> Vec<SinkConfig> {
        self.running.iter().map(|(c, _)| c.clone()).collect()
    }

    /// The next sink to end by itself (its reader ended, or it failed): `None` once none
    /// runs. Sinks stopped by [`RunningSinks::apply`] are not reported.
    pub async fn next_end(&mut self) -> Option<(String, Result<(), SinkError>)> {
        if let Some(e) = self.ended.pop() {
            return Some(e);
        }
        loop {
            let (id, res) = joined(self.tasks.join_next_with_id().await?);
            if let Some(name) = self.forget(id) {
                return Some((name, res));
            }
        }
    }

    /// The running sink whose task is `id`, taken out of `running`; `None` for one that
    /// `apply` stopped.
    fn forget(&mut self, id: Id) -> Option<String> {
        let i = self.running.iter().position(|(_, h)| h.id() == id)?;
        Some(self.running.remove(i).0.name)
    }

    /// Moves the running sinks to `new`: stops the changed and removed ones (waiting until
    /// each has let go of its reader), forgets the removed ones' cursors, starts the added
    /// and changed ones. `Err` names the sinks that could not be started (their reader:
    /// a buffer error, logged); the others are applied.
    pub async fn apply(&mut self, new: &[SinkConfig]) -> Result<Plan, Vec<String>> {
        let plan = plan(&self.configs(), new);
        let mut stopping: Vec<Id> = Vec::new();
        for name in &plan.stop {
            if let Some(i) = self.running.iter().position(|(c, _)| c.name == *name) {
                let (_, handle) = self.running.remove(i);
                handle.abort();
                stopping.push(handle.id());
            }
        }
        while !stopping.is_empty() {
            let Some(next) = self.tasks.join_next_with_id().await else { break };
            let (id, res) = joined(next);
            if let Some(i) = stopping.iter().position(|s| *s == id) {
                stopping.swap_remove(i);
            } else if let Some(name) = self.forget(id) {
                // Another sink ended meanwhile: the main loop hears of it next.
                self.ended.push((name, res));
            }
        }
        for name in &plan.remove {
            match self.pipeline.remove_sink(name) {
                Ok(undelivered) => {
                    tracing::warn!(sink = %name, undelivered, "SIGHUP: sink removed; its cursor is forgotten")
                }
                Err(e) => {
                    tracing::error!(sink = %name, error = %e, "SIGHUP: cannot forget the removed sink's cursor")
                }
            }
        }
        let mut failed = Vec::new();
        for name in &plan.start {
            let Some(cfg) = new.iter().find(|c| c.name == *name) else { continue };
            match self.add_reader(cfg).await {
                Ok(reader) => {
                    let at = reader.acked();
                    self.start(cfg.clone(), reader);
                    tracing::info!(sink = %name, from_offset = at, "SIGHUP: sink started");
                }
                Err(e) => {
                    tracing::error!(sink = %name, error = %e, "SIGHUP: cannot start the sink");
                    failed.push(name.clone());
                }
            }
        }
        // Config order, for /v1/status.
        self.running.sort_by_key(|(c, _)| new.iter().position(|n| n.name == c.name));
        if failed.is_empty() {
            Ok(plan)
        } else {
            Err(failed)
        }
    }

    /// The reader of `cfg`. A stopped sink's task has ended, but a task it spawned may drop
    /// the old reader a moment later (aborted tasks are dropped on the runtime's next turn):
    /// "already has a reader" is retried for a while.
    async fn add_reader(&self, cfg: &SinkConfig) -> Result<SinkReader, crate::buffer::BufferError> {
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match self.pipeline.add_sink(route(cfg, &self.join)) {
                Err(crate::buffer::BufferError::ReaderExists(_))
                    if tokio::time::Instant::now() < until =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                other => return other,
            }
        }
    }

    /// Shutdown: waits for every sink to end by itself, logging failures.
    pub async fn join_all(&mut self) {
        while let Some((name, res)) = self.next_end().await {
            if let Err(e) = res {
                tracing::error!(sink = %name, error = %e, "sink failed during shutdown");
            }
        }
    }

    /// Shutdown past its deadline: stops every sink at once and waits for them.
    pub async fn abort_all(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.running.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SinkKind;
    use crate::route::TagPattern;

    fn sink(name: &str, pattern: &str) -> SinkConfig {
        SinkConfig {
            name: name.into(),
            match_: TagPattern::parse(pattern).unwrap(),
            kind: SinkKind::Null,
        }
    }

    #[test]
    fn plans_stop_remove_and_start_only_what_changed() {
        let (a, b, c) = (sink("a", "**"), sink("b", "app.*"), sink("c", "**"));
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (old, new, stop, remove, start)
        type Case = (
            Vec<SinkConfig>,
            Vec<SinkConfig>,
            &'static [&'static str],
            &'static [&'static str],
            &'static [&'static str],
        );
        let cases: Vec<Case> = vec![
            (vec![a.clone(), b.clone()], vec![a.clone(), b.clone()], &[], &[], &[]),
            (vec![a.clone()], vec![a.clone(), c.clone()], &[], &[], &["c"]),
            (vec![a.clone(), b.clone()], vec![a.clone()], &["b"], &["b"], &[]),
            (
                vec![a.clone(), b.clone()],
                vec![a.clone(), sink("b", "other.*")],
                &["b"],
                &[],
                &["b"],
            ),
            (vec![a.clone()], vec![c.clone()], &["a"], &["a"], &["c"]),
            // Order alone is no change.
            (vec![a.clone(), b.clone()], vec![b.clone(), a.clone()], &[], &[], &[]),
            (vec![], vec![a.clone()], &[], &[], &["a"]),
        ];
        for (i, (old, new, stop, remove, start)) in cases.into_iter().enumerate() {
            let p = plan(&old, &new);
            assert_eq!(
                p,
                Plan { stop: names(stop), remove: names(remove), start: names(start) },
                "case {i}"
            );
            assert_eq!(p.is_empty(), stop.is_empty() && start.is_empty());
        }
    }
}
