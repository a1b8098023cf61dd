//! The artefacts a user takes as they are: the systemd unit verifies (`systemd-analyze
//! verify`, with its ExecStart pointed at the binary under test) and scores well on
//! `systemd-analyze security`; the daemon task definition asks for what a drain needs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use std::process::Command;

fn unit_for_test() -> (tempfile::TempDir, std::path::PathBuf) {
    let text = std::fs::read_to_string(package_file("systemd/berth.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.service");
    std::fs::write(&path, text.replace("/usr/bin/berth", berth_bin().to_str().unwrap())).unwrap();
    (dir, path)
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let (_dir, unit) = unit_for_test();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/test-deps installs it)");
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for berth.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    assert!(score <= 2.0, "exposure {score} (OK is below 2.0):\n{text}");

    let unit = std::fs::read_to_string(package_file("systemd/berth.service")).unwrap();
    for line in [
        "Type=notify",
        "RestartPreventExitStatus=78",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "EnvironmentFile=-/etc/default/berth",
        "Before=docker.service ecs.service",
        "After=network-online.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} in the unit");
    }
    // Longer than a drain's stop timeout (120 s by default).
    let stop = unit.lines().find_map(|l| l.strip_prefix("TimeoutStopSec=")).unwrap();
    assert!(stop.trim_end_matches('s').parse::<u64>().unwrap() > 120, "{stop}");
}

#[test]
fn the_daemon_task_definition_gives_a_drain_the_ecs_maximum_stop_timeout() {
    let text = std::fs::read_to_string(package_file("packaging/ecs/task-definition.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let c = &v["containerDefinitions"][0];
    assert_eq!(c["stopTimeout"], 120, "the ECS maximum: a drain finishes after SIGTERM");
    assert_eq!(v["networkMode"], "host");
}

/// `berth check-config` on a config text: the effective config as TOML, or the error.
fn check_config(text: &str) -> Result<toml::Value, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(berth_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("BERTH_CONFIG")
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap())
}

fn packaged_config() -> String {
    std::fs::read_to_string(package_file("packaging/berth.toml")).unwrap()
}

#[test]
fn the_packaged_config_is_safe_on_a_production_host() {
    let text = packaged_config();
    let c = check_config(&text).unwrap_or_else(|e| panic!("packaging/berth.toml: {e}"));
    let listen: Vec<&str> = c["input"]["forward"]["listen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(listen, ["unix:///run/berth/forward.sock", "tcp://127.0.0.1:24224"]);
    assert_eq!(c["admin"]["listen"].as_str(), Some("127.0.0.1:24220"), "admin on loopback");
    let buffer = c["buffer"]["path"].as_str().unwrap();
    assert!(buffer.starts_with("/var/lib/berth/"), "buffer under the StateDirectory: {buffer}");
    assert_eq!(c["buffer"]["when_full"].as_str(), Some("block"), "a full buffer loses nothing");
    // Nothing copied to the journal (stdout is the journal under systemd), nothing sent to
    // an endpoint that does not exist, nothing growing on disk without a bound: one sink,
    // a null one, named so that /v1/status and the metrics say it is not configured.
    let sinks = c["sink"].as_array().unwrap();
    assert_eq!(sinks.len(), 1, "{sinks:?}");
    assert_eq!(sinks[0]["type"].as_str(), Some("null"));
    assert_eq!(sinks[0]["name"].as_str(), Some("unconfigured"));
    assert!(c.get("drain").is_none_or(|d| d["enabled"].as_bool() == Some(false)));
    // The file tells the user the one edit to make.
    assert!(text.contains("THE ONE EDIT TO MAKE: the [[sink]]"), "the edit is named");
}

/// The sinks the packaged config offers, commented out, each uncommented in place of the
/// null sink: what a user does with the file must load.
#[test]
fn each_sink_the_packaged_config_offers_loads() {
    let text = packaged_config();
    let (head, tail) = text.split_once("[[sink]]\nname = \"unconfigured\"").unwrap();
    let offered: Vec<String> = tail
        .split("\n# [[sink]]\n")
        .skip(1)
        .map(|block| {
            let body: String = block
                .lines()
                .take_while(|l| l.starts_with("# "))
                .map(|l| format!("{}\n", &l[2..]))
                .collect();
            format!("{head}[[sink]]\n{body}")
        })
        .collect();
    assert_eq!(offered.len(), 3, "cloudwatch_logs, elasticsearch, file");
    let mut types = Vec::new();
    for config in &offered {
        let c = check_config(config).unwrap_or_else(|e| panic!("{e}\nin:\n{config}"));
        let sinks = c["sink"].as_array().unwrap();
        assert_eq!(sinks.len(), 1);
        types.push(sinks[0]["type"].as_str().unwrap().to_string());
    }
    assert_eq!(types, ["cloudwatch_logs", "elasticsearch", "file"]);
}

/// The packaged config serves: with its sockets and buffer moved under a temp dir (the
/// only change), an event sent to the Unix socket is acknowledged and delivered.
#[test]
fn the_packaged_config_serves() {
    let text = packaged_config()
        .replace("unix:///run/berth/", "unix://{dir}/")
        .replace("tcp://127.0.0.1:24224", "tcp://127.0.0.1:0")
        .replace("\"127.0.0.1:24220\"", "\"127.0.0.1:0\"")
        .replace("/var/lib/berth/", "{dir}/");
    let b = start_in(tmpfs_dir(), &text, &[("BERTH_ENRICH__DOCKER__ENABLED", "false")]);
    let socket = format!("unix://{}/forward.sock", b.path().display());
    let mut cat = Command::new(berth_bin())
        .args(["cat", "--ack", "--address", &socket, "app.hello"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut cat.stdin.take().unwrap(), b"{\"log\":\"hello\"}\n").unwrap();
    let out = cat.wait_with_output().unwrap();
    assert!(out.status.success(), "berth cat --ack: {}", String::from_utf8_lossy(&out.stderr));
    b.wait_metric("berth_input_records_total", 1.0);
    // Delivered: the null sink's lag, present in /metrics, is back to 0.
    wait_for(WAIT, "the null sink to deliver", || {
        let (_, body) = b.http_get("/metrics");
        body.lines().any(|l| l == "berth_sink_lag_records{sink=\"unconfigured\"} 0").then_some(())
    });
}
