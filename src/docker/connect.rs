//! Where the engine is (`socket` from the config, else `$DOCKER_HOST`, else the default
//! socket) and connecting to it.

use super::DockerError;
use bollard::Docker;
use std::time::Duration;

/// Where the engine listens on a Linux host (and where the ECS daemon task mounts it).
pub const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
/// Docker's own variable for a non-default engine address.
pub const HOST_ENV: &str = "DOCKER_HOST";

/// The engine's address: the configured one, else `$DOCKER_HOST`, else [`DEFAULT_SOCKET`].
pub fn resolve_host(configured: Option<&str>) -> String {
    resolve_host_from(configured, std::env::var(HOST_ENV).ok().as_deref())
}

/// [`resolve_host`] with the environment given (tests). Empty values count as unset, as
/// the docker CLI treats them.
fn resolve_host_from(configured: Option<&str>, env: Option<&str>) -> String {
    configured
        .filter(|h| !h.is_empty())
        .or(env.filter(|h| !h.is_empty()))
        .unwrap_or(DEFAULT_SOCKET)
        .to_string()
}

/// A client for `host` (`unix://PATH`, `tcp://HOST:PORT`, `http://…`), speaking the
/// engine's API version: the engine may speak an older API than bollard's default
/// (Docker 20.10: 1.41). Bounded by `timeout`.
pub async fn connect(host: &str, timeout: Duration) -> Result<Docker, DockerError> {
    let failed = |source| DockerError::Connect { host: host.to_string(), source };
    let client = Docker::connect_with_host(host).map_err(failed)?;
    match tokio::time::timeout(timeout, client.negotiate_version()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(failed(e)),
        Err(_) => Err(DockerError::ConnectTimeout { host: host.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_then_environment_then_default() {
        let tcp = Some("tcp://10.0.0.1:2375");
        let unix = Some("unix:///run/docker.sock");
        assert_eq!(resolve_host_from(unix, tcp), "unix:///run/docker.sock");
        assert_eq!(resolve_host_from(None, tcp), "tcp://10.0.0.1:2375");
        assert_eq!(resolve_host_from(Some(""), tcp), "tcp://10.0.0.1:2375");
        assert_eq!(resolve_host_from(None, Some("")), DEFAULT_SOCKET);
        assert_eq!(resolve_host_from(None, None), DEFAULT_SOCKET);
    }

    #[tokio::test]
    async fn an_absent_socket_fails_with_the_host_in_the_message() {
        let e = connect("unix:///nonexistent/docker.sock", Duration::from_secs(5))
            .await
            .expect_err("no engine there");
        assert!(e.to_string().contains("/nonexistent/docker.sock"), "{e}");
    }
}
