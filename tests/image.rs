//! The container image as an ECS daemon task runs it: `scripts/build-image` (the static
//! binary on an empty root), run with host networking, the host's Docker socket and a
//! host directory as `/run/berth` and `/var/lib/berth`; another container's `fluentd` log
//! driver sends a line to the socket in that directory, and berth's stdout sink (the
//! image's config) prints it. The image's HEALTHCHECK is `berth health`, and the container
//! becomes healthy.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::docker::{docker, docker_ok, docker_ready, image as busybox};
use common::*;
use std::process::Command;
use std::time::Duration;

const TAG: &str = "berth-test-image:latest";

/// Removes the container when the test ends, passed or not.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = docker(&["logs", &self.0]);
            eprintln!(
                "---- docker logs {} ----\n{}{}",
                self.0,
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_image_receives_a_containers_fluentd_logs_and_is_healthy() {
    if !docker_ready("the_image_receives_a_containers_fluentd_logs_and_is_healthy") {
        return;
    }
    let out = Command::new(package_file("scripts/build-image"))
        .arg(TAG)
        .output()
        .expect("run scripts/build-image");
    assert!(out.status.success(), "scripts/build-image:\n{}", String::from_utf8_lossy(&out.stderr));

    // The HEALTHCHECK is berth's own (the image has no shell to run anything else).
    let health = docker_ok(&["image", "inspect", "--format", "{{json .Config.Healthcheck}}", TAG]);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(
        health["Test"],
        serde_json::json!(["CMD", "/usr/bin/berth", "health", "--config", "/etc/berth/berth.toml"])
    );

    // The host's directories, as the task definition mounts them. The sockets' directory is
    // world-searchable so dockerd (root) reaches the socket whatever the test's umask.
    let dir = tempfile::tempdir().unwrap();
    let (run, lib) = (dir.path().join("run"), dir.path().join("lib"));
    for d in [&run, &lib] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    // On the host network: the image's ports would meet whatever else runs here, so the
    // test moves Forward to the socket alone and the admin endpoint to a free port, the way
    // a task definition overrides them (BERTH_* variables).
    let admin = format!("127.0.0.1:{}", free_port());
    let name = format!("berth-test-image-{}", std::process::id());
    let id = docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        // As the task definitions run it (readonlyRootFilesystem): berth writes only to
        // the host directories mounted below.
        "--read-only",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &format!("{}:/run/berth", run.display()),
        "-v",
        &format!("{}:/var/lib/berth", lib.display()),
        // Never the real instance metadata address from a test.
        "-e",
        "AWS_EC2_METADATA_DISABLED=true",
        "-e",
        "BERTH_INPUT__FORWARD__LISTEN=[\"unix:///run/berth/forward.sock\"]",
        "-e",
        &format!("BERTH_ADMIN__LISTEN={admin}"),
        // The image's 30 s interval, shortened so the test does not wait for it.
        "--health-interval",
        "1s",
        TAG,
    ]);
    let berth = Container(id);

    let socket = run.join("forward.sock");
    wait_for(WAIT, "berth's Forward socket", || socket.exists().then_some(()));

    let line = format!("hello from a container {}", std::process::id());
    let app = Container(docker_ok(&[
        "run",
        "-d",
        "--log-driver",
        "fluentd",
        "--log-opt",
        &format!("fluentd-address=unix://{}", socket.display()),
        "--log-opt",
        "tag=image.test",
        busybox(),
        "echo",
        &line,
    ]));

    // berth's stdout sink: one JSON line per event, on the berth container's stdout.
    let event = wait_for(Duration::from_secs(30), "the line in berth's stdout", || {
        let logs = docker(&["logs", &berth.0]);
        String::from_utf8_lossy(&logs.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["record"]["log"] == line.as_str())
    });
    assert_eq!(event["tag"], "image.test");
    // The Docker socket mounted: the record carries the container's name from its inspect.
    let app_name = docker_ok(&["inspect", "--format", "{{.Name}}", &app.0]);
    assert_eq!(event["record"]["container_name"], app_name.trim_start_matches('/'), "{event}");

    let status = wait_for(Duration::from_secs(30), "the container to be healthy", || {
        let s = docker_ok(&["inspect", "--format", "{{.State.Health.Status}}", &berth.0]);
        (s != "starting").then_some(s)
    });
    assert_eq!(status, "healthy");
}

/// Dockerfile.multistage (documented, not built here: no base image can be pulled) ends in
/// the same runtime as the Dockerfile that is built and tested above.
#[test]
fn the_multistage_dockerfile_ends_in_the_tested_runtime() {
    let runtime = |path: &str| -> Vec<String> {
        std::fs::read_to_string(package_file(path))
            .unwrap()
            .lines()
            .filter(|l| {
                ["ENV ", "EXPOSE ", "HEALTHCHECK ", "ENTRYPOINT ", "CMD "]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .map(str::to_string)
            .collect()
    };
    let built = runtime("Dockerfile");
    assert_eq!(built.len(), 5, "{built:?}");
    assert_eq!(runtime("Dockerfile.multistage"), built);
    let multi = std::fs::read_to_string(package_file("Dockerfile.multistage")).unwrap();
    assert!(multi.contains("\nFROM scratch\n"), "a FROM scratch runtime");
    assert!(multi.contains("+crt-static"), "a static binary for the empty root");
}
