//! The elasticsearch sink with `auth.type = "aws_sigv4"`, through `berth run`, against
//! osmem-server behind a verifying reverse proxy (tests/fixtures/sigv4_proxy.py) that
//! recomputes every signature with botocore, an implementation independent of the
//! `aws-sigv4` crate berth signs with. Credentials come from the environment of the berth
//! process; IMDS is disabled, so nothing but 127.0.0.1 is ever contacted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;
use common::*;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// 2026-11-22T07:00:05Z
const BASE_TIME: i64 = 1_795_330_805;
const AK: &str = "AKIDBERTHTEST";
const SK: &str = "berth/test+secret/key0123456789abcdefghij";
const REGION: &str = "eu-west-1";

/// The verifying proxy, killed on drop (and exiting by itself when its stdin closes).
struct SigProxy {
    child: Child,
    _stdin: Option<ChildStdin>,
    url: String,
}

impl SigProxy {
    fn start(target: &str, service: &str, token: Option<&str>, clock_offset_secs: i64) -> SigProxy {
        SigProxy::start_with(target, service, token, clock_offset_secs, &[])
    }

    /// `extra`: more arguments of the script (`--assume-role` …).
    fn start_with(
        target: &str,
        service: &str,
        token: Option<&str>,
        clock_offset_secs: i64,
        extra: &[&str],
    ) -> SigProxy {
        let script = common::package_file("tests/fixtures/sigv4_proxy.py");
        let target = target.trim_start_matches("http://");
        let mut cmd = Command::new(test_python());
        cmd.arg(script).args([
            "--target",
            target,
            "--region",
            REGION,
            "--service",
            service,
            "--access-key",
            AK,
            "--secret-key",
            SK,
        ]);
        cmd.args(["--clock-offset", &clock_offset_secs.to_string()]);
        if let Some(t) = token {
            cmd.args(["--session-token", t]);
        }
        cmd.args(extra);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sigv4_proxy.py");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let url: Arc<Mutex<Option<String>>> = Arc::default();
        let u2 = Arc::clone(&url);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(u) = v["url"].as_str() {
                        *u2.lock().unwrap() = Some(u.to_string());
                    }
                }
            }
        });
        let mut p = SigProxy { child, _stdin: stdin, url: String::new() };
        p.url = wait_for(
            WAIT,
            "sigv4_proxy.py to print its url (is botocore in the venv? run scripts/test-deps)",
            || {
                if let Ok(Some(status)) = p.child.try_wait() {
                    panic!("sigv4_proxy.py exited during start with {status}");
                }
                url.lock().unwrap().clone()
            },
        );
        p
    }

    fn stats(&self) -> serde_json::Value {
        let (status, body) = http_get(self.url.trim_start_matches("http://"), "/__proxy/stats");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("stats json")
    }
}

impl Drop for SigProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(endpoint: &str, compression: &str, auth: &str) -> String {
    config_endpoints(
        &[endpoint],
        &format!("compression = \"{compression}\"\n[sink.auth]\ntype = \"aws_sigv4\"\n{auth}"),
    )
}

/// The environment of `berth run`: static credentials, and no IMDS, no profile files.
fn env<'a>(
    dir: &'a std::path::Path,
    secret: &'a str,
    token: Option<&'a str>,
) -> Vec<(&'static str, String)> {
    let none = dir.join("no-such-aws-file").display().to_string();
    let mut e = vec![
        ("AWS_ACCESS_KEY_ID", AK.to_string()),
        ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
        ("AWS_REGION", REGION.to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ("AWS_CONFIG_FILE", none.clone()),
        ("AWS_SHARED_CREDENTIALS_FILE", none),
    ];
    if let Some(t) = token {
        e.push(("AWS_SESSION_TOKEN", t.to_string()));
    }
    e
}

fn start_signed(dir: tempfile::TempDir, cfg: &str, secret: &str, token: Option<&str>) -> Berth {
    start_signed_env(dir, cfg, secret, token, &[])
}

fn start_signed_env(
    dir: tempfile::TempDir,
    cfg: &str,
    secret: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> Berth {
    let e = env(dir.path(), secret, token);
    let mut e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    e.extend_from_slice(extra);
    start_in(dir, cfg, &e)
}

fn send_acked(b: &Berth, app: &str, n: usize) {
    let mut c = Client::connect(&format!("tcp://{}", b.tcp_addr()));
    c.set_read_timeout(WAIT);
    for i in 0..n {
        let chunk = format!("c{i}-{app}");
        let r = rec(&[("app", app), ("n", &i.to_string())]);
        c.send(&message("app.web", BASE_TIME + i as i64, r, Some(&chunk)), usize::MAX).unwrap();
        assert_eq!(
            c.read_exact_n(ack_bytes(&chunk).len()),
            ack_bytes(&chunk),
            "ack for record {i}"
        );
    }
}

fn wait_count(os: &Osmem, index: &str, n: u64, what: &str) {
    wait_for(Duration::from_secs(60), what, || (os.count(index) >= n).then_some(()));
    assert_eq!(os.count(index), n, "{what}: no more than expected");
}

/// Every document of `index` once: distinct `_id`s and `n` 0..n.
fn assert_exactly_once(os: &Osmem, index: &str, n: usize) {
    let hits = os.search_all(index);
    let ids: BTreeSet<_> = hits.iter().map(|h| h["_id"].as_str().unwrap().to_string()).collect();
    let ns: BTreeSet<u64> =
        hits.iter().map(|h| h["_source"]["n"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!((hits.len(), ids.len()), (n, n), "each document once");
    assert_eq!(ns, (0..n as u64).collect::<BTreeSet<_>>());
}

/// berth's json log lines at `level` whose message contains `what`.
fn logged(b: &Berth, level: &str, what: &str) -> Vec<serde_json::Value> {
    b.stderr
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["level"] == level && v["fields"]["message"].as_str().is_some_and(|m| m.contains(what))
        })
        .collect()
}

#[test]
fn signed_requests_pass_botocore_for_es_and_aoss_with_and_without_gzip_and_session_token() {
    let os = Osmem::start();
    let cases = [
        ("es", "gzip", None, ""),
        (
            "es",
            "none",
            Some("FwoGZXIvYXdzEJr//session+token=="),
            "region = \"eu-west-1\"\nservice = \"es\"",
        ),
        ("aoss", "gzip", Some("FwoGZXIvYXdzEJr//session+token=="), "service = \"aoss\""),
        ("aoss", "none", None, "region = \"eu-west-1\"\nservice = \"aoss\""),
    ];
    for (service, compression, token, auth) in cases {
        let what = format!("{service}/{compression}/token={}", token.is_some());
        let proxy = SigProxy::start(&os.url(), service, token, 0);
        let dir = tempfile::tempdir().expect("tempdir");
        let b = start_signed(dir, &config(&proxy.url, compression, auth), SK, token);
        let app = format!("{service}{compression}{}", token.is_some());
        send_acked(&b, &app, 30);
        let index = format!("logs-{app}-2026.11.22");
        wait_count(&os, &index, 30, &format!("30 documents ({what})"));
        assert_exactly_once(&os, &index, 30);
        let st = proxy.stats();
        assert_eq!(st["rejected"], 0, "{what}: {st}");
        assert!(st["accepted"].as_u64().unwrap() >= 1, "{what}: {st}");
        let text = b.stderr_text();
        assert!(!text.contains(SK), "the secret key is never logged");
        if let Some(t) = token {
            assert!(!text.contains(t), "the session token is never logged");
        }
    }
}

#[test]
fn wrong_secret_key_is_refused_logged_and_nothing_is_lost() {
    let os = Osmem::start();
    let proxy = SigProxy::start(&os.url(), "es", None, 0);
    let cfg = config(&proxy.url, "gzip", "service = \"es\"");
    let wrong = "not/the/right/secret/key/at/all/0123456789";
    let mut b = start_signed(tempfile::tempdir().expect("tempdir"), &cfg, wrong, None);
    send_acked(&b, "wrongkey", 20);
    let errors = wait_for(Duration::from_secs(30), "an error log for the 403", || {
        let e = logged(&b, "ERROR", "refused as unauthorized");
        (!e.is_empty()).then_some(e)
    });
    let f = &errors[0]["fields"];
    assert_eq!(
        (f["sink"].as_str(), f["endpoint"].as_str(), f["status"].as_u64()),
        (Some("search"), Some(proxy.url.as_str()), Some(403)),
        "{f}"
    );
    assert!(
        f["reason"].as_str().unwrap().contains("signature we calculated does not match"),
        "{f}"
    );
    assert!(
        !logged(&b, "INFO", "loading the aws credentials again").is_empty(),
        "credentials refreshed once before the error"
    );
    let st = proxy.stats();
    assert!(
        st["rejected"].as_u64().unwrap() >= 2,
        "the request and its retry after the refresh: {st}"
    );
    assert_eq!(st["accepted"], 0, "{st}");
    assert_eq!(os.count("logs-wrongkey-*"), 0);
    assert!(!b.stderr_text().contains(wrong), "the secret key is never logged");

    // Fix the key: everything buffered is delivered, once.
    let dir = std::mem::replace(&mut b.dir, tempfile::tempdir().expect("tempdir"));
    drop(b);
    let _b = start_signed(dir, &cfg, SK, None);
    wait_count(&os, "logs-wrongkey-2026.11.22", 20, "20 documents with the right key");
    assert_exactly_once(&os, "logs-wrongkey-2026.11.22", 20);
}

#[test]
fn expired_signature_is_refused_logged_and_nothing_is_lost() {
    let os = Osmem::start();
    // A proxy whose clock is 15 minutes ahead: berth's fresh signatures look expired to it.
    let late = SigProxy::start(&os.url(), "aoss", None, 900);
    let mut b = start_signed(
        tempfile::tempdir().expect("tempdir"),
        &config(&late.url, "none", "service = \"aoss\""),
        SK,
        None,
    );
    send_acked(&b, "expired", 10);
    let errors = wait_for(Duration::from_secs(30), "an error log for the 403", || {
        let e = logged(&b, "ERROR", "refused as unauthorized");
        (!e.is_empty()).then_some(e)
    });
    assert!(
        errors[0]["fields"]["reason"].as_str().unwrap().contains("Signature expired"),
        "{}",
        errors[0]
    );
    let st = late.stats();
    assert_eq!(st["accepted"], 0, "{st}");
    assert!(
        st["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.as_str().unwrap().starts_with("Signature expired")),
        "{st}"
    );
    assert_eq!(os.count("logs-expired-*"), 0);

    let on_time = SigProxy::start(&os.url(), "aoss", None, 0);
    let dir = std::mem::replace(&mut b.dir, tempfile::tempdir().expect("tempdir"));
    drop(b);
    let _b = start_signed(dir, &config(&on_time.url, "none", "service = \"aoss\""), SK, None);
    wait_count(&os, "logs-expired-2026.11.22", 10, "10 documents through a proxy on time");
    assert_exactly_once(&os, "logs-expired-2026.11.22", 10);
}

#[test]
fn role_arn_assumes_the_role_with_the_external_id_and_signs_with_its_credentials() {
    let os = Osmem::start();
    let role = "arn:aws:iam::123456789012:role/logs";
    let assumed_secret = "assumed/secret/key/0123456789abcdefghijklm";
    let assumed_token = "IQoJb3JpZ2luX2VjEassumed//token==";
    // Both STS (AssumeRole signed with the base credentials) and the _bulk endpoint (which
    // accepts only the assumed credentials).
    let proxy = SigProxy::start_with(
        &os.url(),
        "es",
        None,
        0,
        &[
            "--assume-role",
            role,
            "--external-id",
            "ext-1",
            "--assumed-access-key",
            "ASIAASSUMED",
            "--assumed-secret-key",
            assumed_secret,
            "--assumed-session-token",
            assumed_token,
        ],
    );
    let auth = format!("region = \"eu-west-1\"\nrole_arn = \"{role}\"\nexternal_id = \"ext-1\"");
    let sts = proxy.url.clone();
    let b = start_signed_env(
        tempfile::tempdir().expect("tempdir"),
        &config(&proxy.url, "gzip", &auth),
        SK,
        None,
        &[("AWS_ENDPOINT_URL_STS", sts.as_str())],
    );
    send_acked(&b, "assumed", 25);
    wait_count(&os, "logs-assumed-2026.11.22", 25, "25 documents signed with the assumed role");
    assert_exactly_once(&os, "logs-assumed-2026.11.22", 25);
    let st = proxy.stats();
    assert_eq!(st["rejected"], 0, "{st}");
    assert_eq!(
        st["assume_role"], 1,
        "the assumed credentials are kept until they near expiry: {st}"
    );
    let text = b.stderr_text();
    assert!(
        !text.contains(assumed_secret) && !text.contains(assumed_token) && !text.contains(SK),
        "no credentials in the log"
    );
}
