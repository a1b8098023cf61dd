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
