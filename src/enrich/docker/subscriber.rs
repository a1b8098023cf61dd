//! The cache as a subscriber of the engine: apply each change, rebuild from the list after
//! a (re)connection or when behind, expire removed entries.

use super::{lock, DockerCache, Slot};
use crate::docker::{Change, Subscription, Summary};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

impl DockerCache {
    /// Follow the engine's changes and keep the cache fresh until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let Subscription { snapshot, mut changes } = self.engine.subscribe();
        // Attached after the engine's first list: catch up from it (a change repeating
        // what the snapshot shows is applied twice, harmlessly).
        if snapshot.listed > 0 {
            self.resync(&snapshot.containers);
        }
        let sweep_every = (self.cfg.removed_grace_period / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(10));
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sweep.tick() => self.sweep(),
                change = changes.recv() => match change {
                    Ok(change) => self.apply(change),
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "docker changes missed: catching up from the engine's list");
                        self.resync(&self.engine.snapshot().containers);
                    }
                    // The engine is gone (it outlives its subscribers but for a bug):
                    // entries still expire.
                    Err(RecvError::Closed) => loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = sweep.tick() => self.sweep(),
                        }
                    },
                },
            }
        }
    }

    pub(super) fn apply(self: &Arc<Self>, change: Change) {
        match change {
            Change::Listed(containers) => self.resync(&containers),
            Change::ListFailed(why) => self.failed("container list", "", &why),
            // A new container's lines find their entry ready; a renamed one gets its new
            // name.
            Change::Started { id, found } | Change::Renamed { id, found } => {
                self.learn(&id, found);
            }
            Change::Destroyed(id) => self.mark_removed(&id),
            Change::Died(_) | Change::Disconnected => {}
        }
    }

    /// After a (re)connection: the list of every container fills the cache with the
    /// running ones (their first lines wait for nothing), refreshes what is cached, and
    /// marks removed what Docker no longer has (events were missed meanwhile).
    fn resync(self: &Arc<Self>, containers: &HashMap<String, Summary>) {
        for s in containers.values() {
            let mut inner = lock(&self.inner);
            if s.running() || matches!(inner.map.get(&s.id), Some(Slot::Ready { .. })) {
                self.store(&mut inner, s);
            }
        }
        let seen: HashSet<&String> = containers.keys().collect();
        let gone: Vec<String> = lock(&self.inner)
            .map
            .iter()
            .filter(|(k, s)| matches!(s, Slot::Ready { removed: None, .. }) && !seen.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        for id in gone {
            self.mark_removed(&id);
        }
    }
}
