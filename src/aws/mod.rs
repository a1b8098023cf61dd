//! AWS set-up, once for the process: region, credentials and the SDK's configuration that
//! every AWS user builds on — the Elasticsearch sink's SigV4 signer, the CloudWatch Logs
//! client, and next the ECS and Auto Scaling clients of capacity and drain.
//!
//! For one [`AwsAuth`] (the `region`, `role_arn`, `external_id` keys of a config section):
//! - region: the key, else `AWS_REGION` (or `AWS_DEFAULT_REGION`), else the profile, else
//!   the instance's region from IMDS; none of them: [`AwsError::NoRegion`];
//! - credentials: the SDK's default chain (environment, profile, web identity, the ECS task
//!   role, the instance role through the process's one IMDS client), with AssumeRole
//!   (session name `berth`, optional external id) on top when `role_arn` is set;
//! - endpoints: the SDK's standard environment (`AWS_ENDPOINT_URL`,
//!   `AWS_ENDPOINT_URL_<SERVICE>`), read by aws-config itself: no code path of ours.
//!
//! Sections with the same keys get the same [`AwsConfig`] (one credentials cache, see
//! `credentials.rs`); sections that assume different roles share the base credentials they
//! assume them with.
//!
//! `api`: the one error type of AWS API calls ([`ApiError`], classified by code and status)
//! and the retry and timeout settings of the capacity and drain clients.
//!
//! Never logs a credential, and never formats one into an error.

pub mod api;
pub mod credentials;

pub use api::{ApiError, ApiErrorKind};
pub use credentials::CachedCredentials;

use crate::config::AwsAuth;
use crate::imds::Imds;
use aws_config::identity::IdentityCache;
use aws_config::meta::region::RegionProviderChain;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error(
        "no aws region: set `region` in the section, AWS_REGION in the environment, or run where the instance metadata answers"
    )]
    NoRegion,
}

/// What one section's AWS clients are built from.
#[derive(Clone, Debug)]
pub struct AwsConfig {
    sdk: SdkConfig,
    credentials: CachedCredentials,
    region: String,
}

impl AwsConfig {
    /// For `aws_sdk_*::config::Builder::from(…)`: region, endpoints, the shared credentials,
    /// no identity cache of its own.
    pub fn sdk(&self) -> &SdkConfig {
        &self.sdk
    }

    /// The shared credentials, for code that signs requests itself.
    pub fn credentials(&self) -> &CachedCredentials {
        &self.credentials
    }

    pub fn region(&self) -> &str {
        &self.region
    }
}

/// The process's AWS loader. Loads lazily (the first user of an identity pays for it, so a
/// missing role or a slow IMDS holds up only that user) and once.
pub struct Aws {
    imds: Imds,
    /// Replaces the SDK's default credentials chain (tests).
    base_provider: Option<SharedCredentialsProvider>,
    /// Per section's keys, and per resolved region for the base credentials (as an
    /// `AwsAuth` with only `region`).
    loaded: tokio::sync::Mutex<HashMap<AwsAuth, AwsConfig>>,
}

impl std::fmt::Debug for Aws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aws").field("imds", &self.imds.endpoint()).finish_non_exhaustive()
    }
}

impl Aws {
    pub fn new(imds: Imds) -> Aws {
        Aws { imds, base_provider: None, loaded: Default::default() }
    }

    /// With fixed base credentials instead of the default chain (tests).
    pub fn with_credentials_provider(imds: Imds, provider: SharedCredentialsProvider) -> Aws {
        Aws { imds, base_provider: Some(provider), loaded: Default::default() }
    }

    /// The configuration for a section's keys (loaded on first use, then shared).
    pub async fn load(&self, auth: &AwsAuth) -> Result<AwsConfig, AwsError> {
        let mut loaded = self.loaded.lock().await;
        if let Some(c) = loaded.get(auth) {
            return Ok(c.clone());
        }
        let region = match non_empty(&auth.region) {
            Some(r) => Region::new(r.to_owned()),
            None => self.region_chain().region().await.ok_or(AwsError::NoRegion)?,
        };
        let base_key = AwsAuth { region: Some(region.to_string()), ..AwsAuth::default() };
        let base = match loaded.get(&base_key) {
            Some(b) => b.clone(),
            None => {
                let b = self.load_base(region.clone()).await;
                loaded.insert(base_key, b.clone());
                b
            }
        };
        let config = match non_empty(&auth.role_arn) {
            None => base,
            Some(arn) => {
                let mut b = aws_config::sts::AssumeRoleProvider::builder(arn)
                    .configure(&base.sdk)
                    .session_name("berth");
                if let Some(id) = non_empty(&auth.external_id) {
                    b = b.external_id(id);
                }
                let credentials =
                    CachedCredentials::new(SharedCredentialsProvider::new(b.build().await));
                let sdk = base.sdk.to_builder().credentials_provider(credentials.shared()).build();
                AwsConfig { sdk, credentials, region: base.region.clone() }
            }
        };
        loaded.insert(auth.clone(), config.clone());
        Ok(config)
    }

    /// `AWS_REGION`, the profile, then IMDS (through the process's client).
    fn region_chain(&self) -> RegionProviderChain {
        let chain = RegionProviderChain::first_try(
            aws_config::environment::region::EnvironmentVariableRegionProvider::new(),
        )
        .or_else(aws_config::profile::ProfileFileRegionProvider::new());
        match self.imds.sdk_client() {
            Some(c) => chain.or_else(
                aws_config::imds::region::ImdsRegionProvider::builder()
                    .imds_client(c.clone())
                    .build(),
            ),
            None => chain,
        }
    }

    /// The default credentials chain for `region`, cached, in an `SdkConfig` with the
    /// standard endpoint environment.
    async fn load_base(&self, region: Region) -> AwsConfig {
        let provider = match &self.base_provider {
            Some(p) => p.clone(),
            None => {
                let mut chain =
                    aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                        .region(region.clone());
                if let Some(c) = self.imds.sdk_client() {
                    chain = chain.imds_client(c.clone());
                }
                SharedCredentialsProvider::new(chain.build().await)
            }
        };
        let credentials = CachedCredentials::new(provider);
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(region.clone())
            .credentials_provider(credentials.shared())
            .identity_cache(IdentityCache::no_cache())
            .load()
            .await;
        AwsConfig { sdk, credentials, region: region.to_string() }
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;

    fn aws() -> Aws {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        Aws::with_credentials_provider(Imds::disabled(), SharedCredentialsProvider::new(creds))
    }

    fn auth(region: &str, role: Option<&str>) -> AwsAuth {
        AwsAuth {
            region: Some(region.into()),
            role_arn: role.map(str::to_owned),
            external_id: None,
        }
    }

    fn same_cache(a: &AwsConfig, b: &AwsConfig) -> bool {
        a.credentials.same_cache(&b.credentials)
    }

    #[tokio::test]
    async fn one_config_per_keys_and_roles_share_their_base() {
        let aws = aws();
        let a = aws.load(&auth("eu-west-1", None)).await.unwrap();
        let b = aws.load(&auth("eu-west-1", None)).await.unwrap();
        assert_eq!(a.region(), "eu-west-1");
        assert_eq!(a.sdk().region().map(|r| r.as_ref()), Some("eu-west-1"));
        assert!(same_cache(&a, &b), "the same keys share one credentials cache");

        let other = aws.load(&auth("us-east-1", None)).await.unwrap();
        assert!(!same_cache(&a, &other));

        let role = aws
            .load(&auth("eu-west-1", Some("arn:aws:iam::123456789012:role/berth")))
            .await
            .unwrap();
        assert!(!same_cache(&a, &role), "a role has credentials of its own");
        assert_eq!(role.region(), "eu-west-1");
        let again = aws
            .load(&auth("eu-west-1", Some("arn:aws:iam::123456789012:role/berth")))
            .await
            .unwrap();
        assert!(same_cache(&role, &again));
        assert_eq!(aws.loaded.lock().await.len(), 3, "eu-west-1, us-east-1, the role");
    }

    #[tokio::test]
    async fn an_empty_key_means_absent() {
        let aws = aws();
        let a = aws
            .load(&AwsAuth {
                region: Some("eu-west-1".into()),
                role_arn: Some(String::new()),
                external_id: Some(String::new()),
            })
            .await
            .unwrap();
        let b = aws.load(&auth("eu-west-1", None)).await.unwrap();
        assert!(same_cache(&a, &b), "an empty role_arn assumes nothing");
    }
}
