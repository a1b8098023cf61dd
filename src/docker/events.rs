//! The one events task: connect with backoff, list on every connection, follow the events,
//! keep the snapshot and tell the subscribers.

use super::container::{self, Found, Summary};
use super::{bounded, connect, Change, Containers, Engine, BACKOFF_INITIAL, BACKOFF_MAX};
use crate::backoff::Backoff;
use bollard::models::{ContainerSummaryStateEnum, EventMessage};
use bollard::query_parameters::EventsOptions;
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How far before a (re)connection's list the events are replayed from: Docker's `since`
/// has whole-second precision in older engines, and the list's own time is not known.
const REPLAY: std::time::Duration = std::time::Duration::from_secs(2);

/// The `since` of the events request: [`REPLAY`] before `now`, in Unix seconds.
pub(super) fn replay_from(now: std::time::SystemTime) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(REPLAY.as_secs());
    secs.to_string()
}

/// The events a subscriber may need: a container appears, changes name, stops, goes.
const EVENTS: [&str; 4] = ["start", "die", "destroy", "rename"];

impl Engine {
    /// Connect, follow the events and keep the list until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        // The engine is this host's alone: nobody to spread reconnections from.
        let mut backoff = Backoff::doubling(BACKOFF_INITIAL, BACKOFF_MAX);
        loop {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = connect(&self.socket, self.request_timeout) => c,
            };
            let client = match connected {
                Ok(c) => c,
                Err(e) => {
                    self.failed_connects.fetch_add(1, Ordering::Relaxed);
                    self.set_disconnected(e.to_string());
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = backoff.wait(None) => continue,
                    }
                }
            };
            backoff.reset();
            let mut filters = HashMap::new();
            filters.insert("type".to_string(), vec!["container".to_string()]);
            filters.insert("event".to_string(), EVENTS.iter().map(|s| s.to_string()).collect());
            // bollard sends the events request only when the stream is first read, after the
            // list: events in between would be missed. Asking for the events since just before
            // the list closes that gap (Docker replays them); replaying a few the list already
            // reflects is harmless, as every change is applied from a fresh lookup.
            let since = replay_from(std::time::SystemTime::now());
            let mut events = client.events(Some(EventsOptions {
                since: Some(since),
                filters: Some(filters),
                ..Default::default()
            }));
            self.set_connected(client.clone());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = self.list(&client) => {}
            }
            let why = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ev = events.next() => match ev {
                        Some(Ok(ev)) => self.on_event(&client, ev).await,
                        Some(Err(e)) => break format!("events stream: {e}"),
                        None => break "events stream ended".to_string(),
                    },
                }
            };
            self.set_disconnected(why);
        }
    }

    /// After a (re)connection: one list of every container replaces what was known (events
    /// were missed meanwhile).
    async fn list(&self, client: &Docker) {
        let listed =
            bounded("container list", "", self.request_timeout, container::list_all(client)).await;
        match listed {
            Ok(list) => {
                let containers: Containers =
                    Arc::new(list.into_iter().map(|s| (s.id.clone(), s)).collect());
                self.snapshot.send_modify(|s| {
                    s.listed += 1;
                    s.containers = Arc::clone(&containers);
                });
                self.publish(Change::Listed(containers));
            }
            Err(e) => {
                tracing::debug!(error = %e, "docker container list failed");
                self.publish(Change::ListFailed(e.to_string()));
            }
        }
    }

    async fn on_event(&self, client: &Docker, ev: EventMessage) {
        let Some(actor) = ev.actor else { return };
        let Some(id) = actor.id else { return };
        match ev.action.as_deref() {
            Some("start") => {
                let found = self.look_up(client, &id, None).await;
                self.keep(&id, &found);
                self.publish(Change::Started { id, found });
            }
            Some("rename") => {
                let name = actor
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get("name"))
                    .map(|n| format!("/{}", n.trim_start_matches('/')));
                let found = self.look_up(client, &id, name).await;
                self.keep(&id, &found);
                self.publish(Change::Renamed { id, found });
            }
            Some("die") => {
                // The list would say `exited`; not worth a call to learn it.
                self.update(|m| {
                    if let Some(c) = m.get_mut(&id) {
                        c.state = Some(ContainerSummaryStateEnum::EXITED);
                    }
                });
                self.publish(Change::Died(id));
            }
            Some("destroy") => {
                self.update(|m| {
                    m.remove(&id);
                });
                self.publish(Change::Destroyed(id));
            }
            _ => {}
        }
    }

    /// What the list says of `id` now; `name`: an event's own word on its name.
    async fn look_up(&self, client: &Docker, id: &str, name: Option<String>) -> Found {
        let res =
            bounded("container lookup", id, self.request_timeout, container::list_one(client, id))
                .await;
        match res {
            Ok(Some(mut found)) => {
                if let Some(n) = name {
                    found.name = n;
                }
                Found::Listed(found)
            }
            Ok(None) => Found::Gone,
            Err(e) => Found::Failed(e.to_string()),
        }
    }

    /// The snapshot learns what a lookup found (a failed one teaches nothing).
    fn keep(&self, id: &str, found: &Found) {
        match found {
            Found::Listed(s) => self.update(|m| {
                m.insert(id.to_string(), s.clone());
            }),
            Found::Gone => self.update(|m| {
                m.remove(id);
            }),
            Found::Failed(_) => {}
        }
    }

    /// Change the snapshot's list in place (copied only while a reader holds the old one).
    fn update(&self, f: impl FnOnce(&mut HashMap<String, Summary>)) {
        self.snapshot.send_modify(|s| f(Arc::make_mut(&mut s.containers)));
    }
}
