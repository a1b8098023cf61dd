//! AWS SigV4 for `_bulk` requests to Amazon OpenSearch Service (`es`) and OpenSearch
//! Serverless (`aoss`).
//!
//! Owns: the credentials (aws-config's default chain, or AssumeRole on top of it), kept and
//! refreshed before they expire, and the signature of one request. The signature itself is
//! the `aws-sigv4` crate's (never hand-rolled); [`sign_headers`] is pure so it can be tested
//! against fixed credentials and a fixed time.
//!
//! Credentials are never logged: `Credentials`' `Debug` redacts the secret, and nothing here
//! formats a header value.

use crate::config::elasticsearch::{SigV4Auth, SigV4Service};
use aws_config::BehaviorVersion;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_smithy_runtime_api::client::identity::Identity;
use std::time::{Duration, SystemTime};

/// Credentials are refreshed this long before they expire, so a request signed now is not
/// refused for an expiry during its flight (the SDK clients use the same margin).
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum SigV4Error {
    #[error("no aws region: set [sink.auth] region, or AWS_REGION in the environment")]
    NoRegion,
    #[error("no aws credentials provider could be configured")]
    NoProvider,
    #[error("cannot load aws credentials: {0}")]
    Credentials(String),
    #[error("cannot sign the request: {0}")]
    Sign(String),
}

/// Signs requests for one sink: region, service and the current credentials.
pub struct Signer {
    provider: SharedCredentialsProvider,
    region: String,
    service: SigV4Service,
    /// The last credentials loaded; `None` until the first request or after `invalidate`.
    current: Option<Credentials>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("region", &self.region)
            .field("service", &self.service.name())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Resolve the region and the credentials chain (no credentials are loaded yet: a
    /// missing role or a slow IMDS must not hold up the start of the other sinks).
    pub async fn from_config(auth: &SigV4Auth) -> Result<Signer, SigV4Error> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = &auth.aws.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        let sdk = loader.load().await;
        let region = sdk.region().map(|r| r.as_ref().to_owned()).ok_or(SigV4Error::NoRegion)?;
        let provider = match &auth.aws.role_arn {
            None => sdk.credentials_provider().ok_or(SigV4Error::NoProvider)?,
            Some(arn) => {
                let mut b = aws_config::sts::AssumeRoleProvider::builder(arn.clone())
                    .configure(&sdk)
                    .session_name("berth");
                if let Some(id) = &auth.aws.external_id {
                    b = b.external_id(id.clone());
                }
                SharedCredentialsProvider::new(b.build().await)
            }
        };
        Ok(Signer { provider, region, service: auth.service, current: None })
    }

    /// A signer with a fixed provider (tests).
    pub fn with_provider(
        provider: SharedCredentialsProvider,
        region: &str,
        service: SigV4Service,
    ) -> Signer {
        Signer { provider, region: region.to_owned(), service, current: None }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Forget the credentials: the next request loads them again (after a 401/403, which may
    /// mean a role's credentials were rotated or revoked before their expiry).
    pub fn invalidate(&mut self) {
        self.current = None;
    }

    /// The credentials to sign with now: the kept ones unless they expire within
    /// [`REFRESH_BEFORE_EXPIRY`]. The provider itself does not cache, so calling it on every
    /// request would hit IMDS or STS on every request.
    pub async fn credentials(&mut self, now: SystemTime) -> Result<Credentials, SigV4Error> {
        if let Some(c) = &self.current {
            if !expires_soon(c, now) {
                return Ok(c.clone());
            }
        }
        match self.provider.provide_credentials().await {
            Ok(c) => {
                self.current = Some(c.clone());
                Ok(c)
            }
            // A failed early refresh: the kept credentials are still valid for a while.
            Err(e) => match &self.current {
                Some(c) if c.expiry().is_none_or(|t| t > now) => {
                    tracing::warn!(error = %describe(&e), "aws credentials not refreshed; using the current ones until they expire");
                    Ok(c.clone())
                }
                _ => Err(SigV4Error::Credentials(describe(&e))),
            },
        }
    }

    /// The headers to add to a `POST url` with `headers` and exactly `body` as sent.
    pub async fn sign(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<(&'static str, String)>, SigV4Error> {
        let now = SystemTime::now();
        let creds = self.credentials(now).await?;
        sign_headers(&creds, &self.region, self.service, now, method, url, headers, body)
    }
}

fn expires_soon(c: &Credentials, now: SystemTime) -> bool {
    c.expiry().is_some_and(|t| t <= now + REFRESH_BEFORE_EXPIRY)
}

/// An error with its causes (the SDK's Display often hides the useful part).
fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The SigV4 headers (`authorization`, `x-amz-date`, `x-amz-content-sha256`, and
/// `x-amz-security-token` with a session token) for one request. `headers` are signed as
/// well and must be sent unchanged; `host` is taken from `url`.
#[allow(clippy::too_many_arguments)]
pub fn sign_headers(
    creds: &Credentials,
    region: &str,
    service: SigV4Service,
    time: SystemTime,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<(&'static str, String)>, SigV4Error> {
    let mut settings = SigningSettings::default();
    // `aoss` refuses requests without it; `es` accepts it.
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let identity: Identity = creds.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service.name())
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| SigV4Error::Sign(e.to_string()))?
        .into();
    let req = SignableRequest::new(method, url, headers.iter().copied(), SignableBody::Bytes(body))
        .map_err(|e| SigV4Error::Sign(e.to_string()))?;
    let (instructions, _signature) =
        sign(req, &params).map_err(|e| SigV4Error::Sign(e.to_string()))?.into_parts();
    let (out, _params) = instructions.into_parts();
    Ok(out.into_iter().map(|h| (h.name(), h.value().to_owned())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn creds(token: Option<&str>, expiry: Option<SystemTime>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            token.map(str::to_owned),
            expiry,
            "test",
        )
    }

    fn header<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn signs_body_hash_date_and_token() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
        let body = b"{\"create\":{}}\n{}\n";
        let h = sign_headers(
            &creds(Some("tok"), None),
            "us-east-1",
            SigV4Service::Es,
            t,
            "POST",
            "http://127.0.0.1:9200/_bulk",
            &[("content-type", "application/x-ndjson")],
            body,
        )
        .unwrap();
        assert_eq!(header(&h, "x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(header(&h, "x-amz-security-token"), Some("tok"));
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body));
        assert_eq!(header(&h, "x-amz-content-sha256"), Some(sha.as_str()));
        let auth = header(&h, "authorization").unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/es/aws4_request, "
            ),
            "{auth}"
        );
        assert!(auth.contains("SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"), "{auth}");
        assert!(!auth.contains("EXAMPLEKEY"));

        // Another service, another body, another signature.
        let h2 = sign_headers(
            &creds(None, None),
            "us-east-1",
            SigV4Service::Aoss,
            t,
            "POST",
            "http://127.0.0.1:9200/_bulk",
            &[],
            b"x",
        )
        .unwrap();
        let auth2 = header(&h2, "authorization").unwrap();
        assert!(auth2.contains("/us-east-1/aoss/aws4_request"), "{auth2}");
        assert!(header(&h2, "x-amz-security-token").is_none());
    }

    #[derive(Debug)]
    struct Counting {
        calls: Arc<AtomicUsize>,
        expiry: Option<SystemTime>,
    }

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            self.calls.fetch_add(1, Ordering::SeqCst);
            aws_credential_types::provider::future::ProvideCredentials::ready(Ok(creds(
                None,
                self.expiry,
            )))
        }
    }

    #[tokio::test]
    async fn credentials_are_kept_until_shortly_before_expiry_or_invalidated() {
        let now = SystemTime::now();
        let calls = Arc::new(AtomicUsize::new(0));
        let p = Counting { calls: calls.clone(), expiry: Some(now + Duration::from_secs(3600)) };
        let mut s =
            Signer::with_provider(SharedCredentialsProvider::new(p), "eu-west-1", SigV4Service::Es);
        s.credentials(now).await.unwrap();
        s.credentials(now + Duration::from_secs(60)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "kept");
        s.credentials(now + Duration::from_secs(3600 - 60)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "refreshed within the margin before expiry");
        s.invalidate();
        s.credentials(now).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "loaded again after invalidate");

        let calls = Arc::new(AtomicUsize::new(0));
        let mut s = Signer::with_provider(
            SharedCredentialsProvider::new(Counting { calls: calls.clone(), expiry: None }),
            "r",
            SigV4Service::Es,
        );
        for _ in 0..3 {
            s.credentials(now).await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "credentials without expiry are kept");
    }
}
