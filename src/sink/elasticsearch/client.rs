//! The HTTP side of the sink: one `POST /_bulk` to one endpoint, and which endpoint is next.
//!
//! Owns: the reqwest client (rustls, the system roots plus `tls.ca_file`), headers
//! (NDJSON, gzip, basic auth, the SigV4 signature of the exact bytes sent), the order of
//! endpoints. Never decides what a response means
//! (that is `response::classify`) and never sleeps (the run loop does).

use super::sigv4::{SigV4Error, Signer};
use crate::aws::Aws;
use crate::config::elasticsearch::{ElasticsearchConfig, EsAuth};
pub use crate::error::describe;
use crate::sink::retry::parse_retry_after;
use bytes::Bytes;
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read tls.ca_file {path}: {source}")]
    ReadCaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tls.ca_file {path} holds no usable PEM certificate: {message}")]
    ParseCaFile { path: String, message: String },
    #[error("cannot build the http client: {0}")]
    Build(String),
    #[error("aws sigv4: {0}")]
    SigV4(#[from] SigV4Error),
}

/// Why a request got no reply: nothing is known about its items.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
    #[error(transparent)]
    Sign(#[from] SigV4Error),
}

/// What came back from one request.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// The endpoints, in configured order, and the one requests go to now.
pub struct BulkClient {
    http: reqwest::Client,
    /// `{endpoint}/_bulk`, one per endpoint.
    urls: Vec<String>,
    current: usize,
    auth: EsAuth,
    signer: Option<Signer>,
}

impl BulkClient {
    pub async fn new(cfg: &ElasticsearchConfig, aws: &Aws) -> Result<BulkClient, ClientError> {
        let mut b = reqwest::Client::builder()
            .timeout(cfg.network.timeout)
            .connect_timeout(cfg.network.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &cfg.ca_file {
            let p = path.display().to_string();
            let pem = std::fs::read(path)
                .map_err(|source| ClientError::ReadCaFile { path: p.clone(), source })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ClientError::ParseCaFile { path: p.clone(), message: e.to_string() }
            })?;
            if certs.is_empty() {
                return Err(ClientError::ParseCaFile {
                    path: p,
                    message: "no certificate in the file".into(),
                });
            }
            b = b.tls_certs_merge(certs);
        }
        let http = b.build().map_err(|e| ClientError::Build(e.to_string()))?;
        let signer = match &cfg.auth {
            EsAuth::AwsSigV4(a) => {
                let loaded = aws.load(&a.aws).await.map_err(SigV4Error::from)?;
                Some(Signer::new(&loaded, a.service))
            }
            EsAuth::None | EsAuth::Basic { .. } => None,
        };
        Ok(BulkClient {
            http,
            urls: cfg.endpoints.iter().map(|e| format!("{e}/_bulk")).collect(),
            current: 0,
            auth: cfg.auth.clone(),
            signer,
        })
    }

    /// The endpoint requests go to now.
    pub fn endpoint(&self) -> &str {
        self.urls.get(self.current).map_or("", |u| u.trim_end_matches("/_bulk"))
    }

    /// After a failure at the current endpoint: the next one, in configured order (wrapping
    /// to the first). Returns true when it wrapped (every endpoint failed once in a row).
    pub fn fail_over(&mut self) -> bool {
        self.current += 1;
        if self.current >= self.urls.len() {
            self.current = 0;
            return true;
        }
        false
    }

    /// With SigV4: load the credentials again before the next request (after a 401/403).
    /// False when requests are not signed (nothing to refresh).
    pub async fn refresh_credentials(&self) -> bool {
        match &self.signer {
            Some(s) => {
                s.invalidate().await;
                true
            }
            None => false,
        }
    }

    /// POST `body` (gzip-compressed when `gzipped`) to the current endpoint. `Err` is a
    /// transport failure (connect, reset, timeout) or no credentials to sign with: nothing
    /// is known about the items.
    pub async fn send(&mut self, body: bytes::Bytes, gzipped: bool) -> Result<Reply, SendError> {
        let url = self.urls.get(self.current).map_or("", String::as_str);
        let mut req =
            self.http.post(url).header(reqwest::header::CONTENT_TYPE, "application/x-ndjson");
        if gzipped {
            req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        if let EsAuth::Basic { username, password } = &self.auth {
            req = req.basic_auth(username, Some(password));
        }
        if let Some(signer) = &self.signer {
            // Every header set above is signed: a proxy that rewrites one breaks the signature
            // (as it should). The body is the exact bytes sent, compressed or not.
            let mut signed = vec![("content-type", "application/x-ndjson")];
            if gzipped {
                signed.push(("content-encoding", "gzip"));
            }
            for (name, value) in signer.sign("POST", url, &signed, &body).await? {
                req = req.header(name, value);
            }
        }
        let req = req.body(body);
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = resp.bytes().await?;
        Ok(Reply { status, retry_after, body })
    }
}
