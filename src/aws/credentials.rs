//! One credentials cache per AWS identity, shared by every user of it: the SDK clients
//! (CloudWatch Logs now, ECS and Auto Scaling next) and the Elasticsearch sink's SigV4
//! signer alike.
//!
//! Why our own cache and not the SDK's identity cache: the SDK keeps its cache inside each
//! client's orchestrator, out of reach of code that signs requests itself (the `_bulk`
//! signer), so two users of one role would load and refresh it twice. Here the provider
//! itself caches; the `SdkConfig` built on it is given no identity cache of its own
//! (`IdentityCache::no_cache()`), so there is exactly one.
//!
//! Credentials are never logged: `Credentials`' `Debug` redacts the secret.

use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Credentials are refreshed this long before they expire, so a request signed now is not
/// refused for an expiry during its flight (the SDK clients use the same margin).
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// A caching credentials provider. Cheap to clone; clones share the cache.
#[derive(Clone, Debug)]
pub struct CachedCredentials {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    provider: SharedCredentialsProvider,
    /// The last credentials loaded; `None` until the first use or after `invalidate`. The
    /// lock is held across a refresh so that concurrent users wait for one load.
    current: tokio::sync::Mutex<Option<Credentials>>,
}

impl CachedCredentials {
    pub fn new(provider: SharedCredentialsProvider) -> CachedCredentials {
        CachedCredentials {
            inner: Arc::new(Inner { provider, current: tokio::sync::Mutex::new(None) }),
        }
    }

    /// The credentials to use at `now`: the kept ones unless they expire within
    /// [`REFRESH_BEFORE_EXPIRY`]. A failed early refresh keeps the current ones while they
    /// are still valid (a warning says so).
    pub async fn get(&self, now: SystemTime) -> Result<Credentials, CredentialsError> {
        let mut current = self.inner.current.lock().await;
        if let Some(c) = current.as_ref() {
            if !expires_soon(c, now) {
                return Ok(c.clone());
            }
        }
        match self.inner.provider.provide_credentials().await {
            Ok(c) => {
                *current = Some(c.clone());
                Ok(c)
            }
            Err(e) => match current.as_ref() {
                Some(c) if c.expiry().is_none_or(|t| t > now) => {
                    tracing::warn!(error = %crate::error::describe(&e), "aws credentials not refreshed; using the current ones until they expire");
                    Ok(c.clone())
                }
                _ => Err(e),
            },
        }
    }

    /// Forget the credentials: the next use loads them again (after a 401/403, which may
    /// mean a role's credentials were rotated or revoked before their expiry).
    pub async fn invalidate(&self) {
        *self.inner.current.lock().await = None;
    }

    /// Whether both share one cache.
    pub fn same_cache(&self, other: &CachedCredentials) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// As a provider for the SDK's clients.
    pub fn shared(&self) -> SharedCredentialsProvider {
        SharedCredentialsProvider::new(self.clone())
    }
}

fn expires_soon(c: &Credentials, now: SystemTime) -> bool {
    c.expiry().is_some_and(|t| t <= now + REFRESH_BEFORE_EXPIRY)
}

impl ProvideCredentials for CachedCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.get(SystemTime::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn creds(expiry: Option<SystemTime>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            expiry,
            "t",
        )
    }

    #[derive(Debug)]
    struct Counting {
        calls: Arc<AtomicUsize>,
        expiry: Option<SystemTime>,
    }

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            self.calls.fetch_add(1, Ordering::SeqCst);
            future::ProvideCredentials::ready(Ok(creds(self.expiry)))
        }
    }

    #[tokio::test]
    async fn credentials_are_kept_until_shortly_before_expiry_or_invalidated() {
        let now = SystemTime::now();
        let calls = Arc::new(AtomicUsize::new(0));
        let p = Counting { calls: calls.clone(), expiry: Some(now + Duration::from_secs(3600)) };
        let s = CachedCredentials::new(SharedCredentialsProvider::new(p));
        s.get(now).await.unwrap();
        s.get(now + Duration::from_secs(60)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "kept");
        s.get(now + Duration::from_secs(3600 - 60)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "refreshed within the margin before expiry");
        s.invalidate().await;
        s.get(now).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "loaded again after invalidate");

        let calls = Arc::new(AtomicUsize::new(0));
        let s = CachedCredentials::new(SharedCredentialsProvider::new(Counting {
            calls: calls.clone(),
            expiry: None,
        }));
        for _ in 0..3 {
            s.get(now).await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "credentials without expiry are kept");
    }

    #[tokio::test]
    async fn clones_and_the_sdk_provider_share_one_cache() {
        let calls = Arc::new(AtomicUsize::new(0));
        let s = CachedCredentials::new(SharedCredentialsProvider::new(Counting {
            calls: calls.clone(),
            expiry: None,
        }));
        let other = s.clone();
        let sdk = s.shared();
        s.get(SystemTime::now()).await.unwrap();
        other.get(SystemTime::now()).await.unwrap();
        sdk.provide_credentials().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        other.invalidate().await;
        sdk.provide_credentials().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "an invalidate is seen by every user");
    }
}
