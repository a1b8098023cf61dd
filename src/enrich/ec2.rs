//! Host fields from the EC2 instance metadata service, IMDSv2 only: a session token from
//! `PUT /latest/api/token` (with `X-aws-ec2-metadata-token-ttl-seconds`), then GETs that
//! carry it in `X-aws-ec2-metadata-token`. The token is kept and fetched again before its
//! TTL runs out; a 401 drops it and the GET is tried once more with a new one.
//!
//! The endpoint is `$AWS_EC2_METADATA_SERVICE_ENDPOINT` (as the AWS SDKs read it), else
//! `http://169.254.169.254`; `AWS_EC2_METADATA_DISABLED=true` turns IMDS off, as for the
//! SDKs. Timeouts are short: off EC2 nothing answers (or the address is unroutable), and
//! that must cost a start no more than a second or two. Off EC2 the host fields are simply
//! absent; one warning says so, and attempts continue rarely in the background.
//!
//! Docs: <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html>.

use super::record::Fields;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
pub const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
pub const DISABLED_ENV: &str = "AWS_EC2_METADATA_DISABLED";
/// The token TTL asked for (the maximum is 6 hours).
pub const TOKEN_TTL: Duration = Duration::from_secs(21_600);
/// A token this close to its end is replaced before use.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const RETRY_INITIAL: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(600);

/// Record key → metadata path.
pub const HOST_FIELDS: [(&str, &str); 4] = [
    ("ec2_instance_id", "/latest/meta-data/instance-id"),
    ("availability_zone", "/latest/meta-data/placement/availability-zone"),
    ("region", "/latest/meta-data/placement/region"),
    ("instance_type", "/latest/meta-data/instance-type"),
];

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("{path}: {source}")]
    Request { path: String, source: reqwest::Error },
    #[error("{path}: HTTP {status}")]
    Status { path: String, status: u16 },
}

/// Whether a token obtained at `got` must be replaced at `now`.
pub fn token_stale(got: Instant, now: Instant) -> bool {
    now.saturating_duration_since(got) + TOKEN_REFRESH_MARGIN >= TOKEN_TTL
}

/// An IMDSv2 client.
pub struct Imds {
    http: reqwest::Client,
    endpoint: String,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl Imds {
    /// From the SDKs' environment variables; `None` when IMDS is disabled there.
    pub fn from_env() -> Result<Option<Imds>, ImdsError> {
        if std::env::var(DISABLED_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let endpoint = std::env::var(ENDPOINT_ENV)
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Imds::new(&endpoint).map(Some)
    }

    pub fn new(endpoint: &str) -> Result<Imds, ImdsError> {
        let http = reqwest::Client::builder()
            // IMDS is link-local: never through an HTTP proxy.
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(ImdsError::Client)?;
        Ok(Imds {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: tokio::sync::Mutex::new(None),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn token(&self) -> Result<String, ImdsError> {
        let mut t = self.token.lock().await;
        if let Some((tok, got)) = t.as_ref() {
            if !token_stale(*got, Instant::now()) {
                return Ok(tok.clone());
            }
        }
        let path = "/latest/api/token";
        let got = Instant::now();
        let resp = self
            .http
            .put(format!("{}{path}", self.endpoint))
            .header("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL.as_secs().to_string())
            .send()
            .await
            .map_err(|source| ImdsError::Request { path: path.into(), source })?;
        let tok = text(path, resp).await?;
        *t = Some((tok.clone(), got));
        Ok(tok)
    }

    /// GET a metadata path with the session token.
    pub async fn get(&self, path: &str) -> Result<String, ImdsError> {
        for attempt in 0..2 {
            let tok = self.token().await?;
            let resp = self
                .http
                .get(format!("{}{path}", self.endpoint))
                .header("X-aws-ec2-metadata-token", tok)
                .send()
                .await
                .map_err(|source| ImdsError::Request { path: path.into(), source })?;
            if resp.status().as_u16() == 401 && attempt == 0 {
                // The token expired or IMDS restarted: get a new one.
                *self.token.lock().await = None;
                continue;
            }
            return text(path, resp).await;
        }
        Err(ImdsError::Status { path: path.into(), status: 401 })
    }

    /// The four host fields.
    pub async fn host_fields(&self) -> Result<Fields, ImdsError> {
        let mut f = Fields::new();
        for (key, path) in HOST_FIELDS {
            let v = self.get(path).await?;
            f.push_str(key, v.trim());
        }
        Ok(f)
    }
}

async fn text(path: &str, resp: reqwest::Response) -> Result<String, ImdsError> {
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(ImdsError::Status { path: path.into(), status });
    }
    resp.text().await.map_err(|source| ImdsError::Request { path: path.into(), source })
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
                r = imds.host_fields() => r,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_replaced_before_its_ttl() {
        let got = Instant::now();
        for (age, stale) in [
            (0, false),
            (3600, false),
            (TOKEN_TTL.as_secs() - TOKEN_REFRESH_MARGIN.as_secs() - 1, false),
            (TOKEN_TTL.as_secs() - TOKEN_REFRESH_MARGIN.as_secs(), true),
            (TOKEN_TTL.as_secs() + 1, true),
        ] {
            assert_eq!(token_stale(got, got + Duration::from_secs(age)), stale, "age {age}s");
        }
    }
}
