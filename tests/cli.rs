//! The command line: version, check-config, and `run` refusing a bad config.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use std::process::Command;

fn berth(args: &[&str]) -> std::process::Output {
    Command::new(berth_bin()).args(args).env_remove("BERTH_CONFIG").output().unwrap()
}

#[test]
fn version() {
    let out = berth(&["version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("berth "));
}

#[test]
fn check_config_prints_redacted_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.toml");
    std::fs::write(
        &p,
        "[input.forward]\nshared_key = \"hunter2\"\n\n[[sink]]\nname = \"n\"\ntype = \"null\"\nmatch = \"**\"\n",
    )
    .unwrap();
    let out = berth(&["check-config", "--config", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("hunter2"), "secret leaked:\n{text}");
    assert!(text.contains("<redacted>"));
    assert!(text.contains("max_message_size"), "effective config includes defaults:\n{text}");
}

#[test]
fn check_config_error_names_file_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[input.forward]\nlisten = [\"tcp://127.0.0.1:24224\"]\nmax_message_size = \"16XB\"\n",
    )
    .unwrap();
    let out = berth(&["check-config", "--config", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(p.to_str().unwrap()), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("max_message_size"), "{err}");

    // `run` with the same file refuses to start with EX_CONFIG.
    let out = berth(&["run", "--config", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn environment_overrides_apply() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.toml");
    std::fs::write(&p, "[[sink]]\nname = \"n\"\ntype = \"null\"\nmatch = \"**\"\n").unwrap();
    let out = Command::new(berth_bin())
        .args(["check-config", "--config", p.to_str().unwrap()])
        .env("BERTH_INPUT__FORWARD__MAX_CONNECTIONS", "7")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_connections = 7"));
}

#[test]
fn quickstart_example_is_valid() {
    let p = common::package_file("examples/quickstart.toml");
    let out = berth(&["check-config", "--config", p.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn capacity_says_when_berth_is_not_running_or_capacity_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.toml");
    // A port nothing listens on: bind one, note it, let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sink = "[[sink]]\nname = \"n\"\ntype = \"null\"\nmatch = \"**\"\n";
    std::fs::write(&p, format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n{sink}")).unwrap();
    let out = berth(&["capacity", "--config", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "berth is not running (nothing answers on its admin endpoint 127.0.0.1:{port}"
        )),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    // A running berth without [capacity]: it says capacity is off.
    let b = start(&format!(
        "[input.forward]\nlisten = [\"tcp://127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[buffer]\npath = \"{{dir}}/buffer\"\n{sink}"
    ));
    let admin = b.admin.clone().unwrap();
    std::fs::write(&p, format!("[admin]\nlisten = \"{admin}\"\n{sink}")).unwrap();
    let out = berth(&["capacity", "--json", "--config", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("capacity is not enabled ([capacity] enabled = false)"), "{err}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[capacity]\nenabled = 3\n").unwrap();
    let out = berth(&["capacity", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78), "a config error is EX_CONFIG");
}

#[test]
fn an_aws_sink_without_a_region_is_a_config_error_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.toml");
    let buf = dir.path().join("buffer");
    std::fs::write(
        &p,
        format!(
            "[input.forward]\nlisten = [\"tcp://127.0.0.1:0\"]\n[admin]\nlisten = \"\"\n[buffer]\npath = {:?}\n\
             [[sink]]\nname = \"cw\"\ntype = \"cloudwatch_logs\"\nmatch = \"**\"\nlog_group = \"/ecs/app\"\nlog_stream = \"s\"\n",
            buf.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(berth_bin())
        .args(["run", "--config", p.to_str().unwrap()])
        .env_remove("BERTH_CONFIG")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains(&format!("berth: {}: sink[0] (\"cw\"): no aws region", p.display())),
        "{err}"
    );
    assert!(!err.contains("berth is running"), "it never served: {err}");
}

#[test]
fn health_is_zero_when_serving_and_one_when_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sink = "[[sink]]\nname = \"n\"\ntype = \"null\"\nmatch = \"**\"\n";
    std::fs::write(&p, format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n{sink}")).unwrap();
    let out = berth(&["health", "--config", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("berth is not running"));

    let b = start(&format!(
        "[input.forward]\nlisten = [\"tcp://127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[buffer]\npath = \"{{dir}}/buffer\"\n{sink}"
    ));
    std::fs::write(&p, format!("[admin]\nlisten = \"{}\"\n{sink}", b.admin.clone().unwrap()))
        .unwrap();
    let out = berth(&["health", "--config", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn a_bad_log_level_is_an_error_and_the_log_format_has_an_environment_variable() {
    let out = berth(&["--log-level", "berth=verbose", "version"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a level or a filter"));
    let out = std::process::Command::new(common::berth_bin())
        .args(["check-config", "--config", "/nonexistent/berth.toml"])
        .env("BERTH_LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown BERTH_LOG_FORMAT");
    assert!(String::from_utf8_lossy(&out.stderr).contains("yaml"));
}
