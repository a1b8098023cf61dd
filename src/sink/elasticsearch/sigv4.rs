//! AWS SigV4 for `_bulk` requests to Amazon OpenSearch Service (`es`) and OpenSearch
//! Serverless (`aoss`).
//!
//! Owns: the signature of one request, with the credentials of the shared AWS loader
//! ([`crate::aws`]: one credentials cache per identity, shared by every worker of every sink
//! that uses it). The signature itself is the `aws-sigv4` crate's (never hand-rolled);
//! [`sign_headers`] is pure so it can be tested against fixed credentials and a fixed time.
//!
//! Credentials are never logged: `Credentials`' `Debug` redacts the secret, and nothing here
//! formats a header value.

use crate::aws::{AwsConfig, AwsError, CachedCredentials};
use crate::config::elasticsearch::SigV4Service;
use crate::error::describe;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_smithy_runtime_api::client::identity::Identity;
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum SigV4Error {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("cannot load aws credentials: {0}")]
    Credentials(String),
    #[error("cannot sign the request: {0}")]
    Sign(String),
}

/// Signs requests for one sink: region, service and the shared credentials.
pub struct Signer {
    credentials: CachedCredentials,
    region: String,
    service: SigV4Service,
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
    /// For a section's loaded AWS configuration (no credentials are loaded yet: a missing
    /// role or a slow IMDS must not hold up the start of the other sinks).
    pub fn new(aws: &AwsConfig, service: SigV4Service) -> Signer {
        Signer { credentials: aws.credentials().clone(), region: aws.region().to_owned(), service }
    }

    /// A signer with a fixed provider (tests).
    pub fn with_provider(
        provider: SharedCredentialsProvider,
        region: &str,
        service: SigV4Service,
    ) -> Signer {
        Signer { credentials: CachedCredentials::new(provider), region: region.to_owned(), service }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Forget the credentials: the next request loads them again (after a 401/403, which may
    /// mean a role's credentials were rotated or revoked before their expiry). Every user of
    /// the same credentials sees the new ones.
    pub async fn invalidate(&self) {
        self.credentials.invalidate().await;
    }

    /// The headers to add to a `POST url` with `headers` and exactly `body` as sent.
    pub async fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<(&'static str, String)>, SigV4Error> {
        let now = SystemTime::now();
        let creds =
            self.credentials.get(now).await.map_err(|e| SigV4Error::Credentials(describe(&e)))?;
        sign_headers(&creds, &self.region, self.service, now, method, url, headers, body)
    }
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
    use std::time::Duration;

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
}
