//! Host fields from the EC2 instance metadata service: instance id, zone, region and type,
//! read once through the process's IMDS client ([`crate::imds`]) and added to records.
//!
//! Off EC2 the host fields are simply absent; one warning says so, and attempts continue
//! rarely in the background.

use super::record::Fields;
use crate::imds::{path, Imds, ImdsError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const RETRY_INITIAL: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(600);

/// Record key → metadata path.
pub const HOST_FIELDS: [(&str, &str); 4] = [
    ("ec2_instance_id", path::INSTANCE_ID),
    ("availability_zone", path::AVAILABILITY_ZONE),
    ("region", path::REGION),
    ("instance_type", path::INSTANCE_TYPE),
];

/// The four host fields.
pub async fn host_fields(imds: &Imds) -> Result<Fields, ImdsError> {
    let mut f = Fields::new();
    for (key, path) in HOST_FIELDS {
        let v = imds.require(path).await?;
        f.push_str(key, v.trim());
    }
    Ok(f)
}

/// The state of the host fields, for `/v1/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostStatus {
    pub enabled: bool,
    pub endpoint: String,
    /// `pending`, `available`, `unavailable` or `disabled`.
    pub state: &'static str,
    pub error: Option<String>,
    pub fields: std::collections::BTreeMap<String, String>,
}

/// The host fields once known; shared by the input connections.
pub struct HostFields {
    fields: RwLock<Option<Arc<Fields>>>,
    status: Mutex<HostStatus>,
    /// Set once the first attempt is over (success or not).
    first: tokio::sync::watch::Sender<bool>,
}

impl HostFields {
    pub fn new(endpoint: &str, enabled: bool) -> HostFields {
        HostFields {
            fields: RwLock::new(None),
            status: Mutex::new(HostStatus {
                enabled,
                endpoint: endpoint.to_string(),
                state: if enabled { "pending" } else { "disabled" },
                error: None,
                fields: Default::default(),
            }),
            first: tokio::sync::watch::channel(!enabled).0,
        }
    }

    pub fn get(&self) -> Option<Arc<Fields>> {
        self.fields.read().ok().and_then(|f| f.clone())
    }

    pub fn status(&self) -> HostStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Wait (at most `max`) for the first attempt to be over, so that the first records
    /// of a start on EC2 already carry the host fields.
    pub async fn wait_first(&self, max: Duration) {
        let mut rx = self.first.subscribe();
        let _ = tokio::time::timeout(max, rx.wait_for(|d| *d)).await;
    }

    /// Use these host fields from now on.
    pub fn set(&self, f: Fields) {
        let shown = f.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if let Ok(mut cur) = self.fields.write() {
            *cur = Some(Arc::new(f));
        }
        self.set_status(|s| {
            s.state = "available";
            s.error = None;
            s.fields = shown;
        });
        self.first.send_replace(true);
    }

    fn set_status(&self, f: impl FnOnce(&mut HostStatus)) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }

    /// Fetch the fields; retry with backoff until they are known or `shutdown`. Instance
    /// id, zone, region and type do not change while the instance runs (a type change
    /// needs a stop, which restarts berth): fetched once.
    pub async fn run(self: Arc<Self>, imds: Imds, shutdown: CancellationToken) {
        // The metadata service is this host's alone: no jitter.
        let mut backoff = crate::backoff::Backoff::doubling(RETRY_INITIAL, RETRY_MAX);
        loop {
            let res = tokio::select! {
                r = host_fields(&imds) => r,
                _ = shutdown.cancelled() => return,
            };
            match res {
                Ok(f) => {
                    tracing::info!(fields = ?f.iter().collect::<Vec<_>>(), "EC2 host fields from instance metadata");
                    self.set(f);
                    return;
                }
                Err(e) => {
                    let first = !*self.first.borrow();
                    if first {
                        tracing::warn!(
                            endpoint = imds.endpoint(),
                            error = %e,
                            "EC2 instance metadata unavailable (not on EC2?): records get no host fields; retrying in the background"
                        );
                    }
                    self.set_status(|s| {
                        s.state = "unavailable";
                        s.error = Some(e.to_string());
                    });
                    self.first.send_replace(true);
                }
            }
            tokio::select! {
                _ = backoff.wait(None) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
