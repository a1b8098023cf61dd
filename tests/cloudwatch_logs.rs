//! The cloudwatch_logs sink against a real CloudWatch Logs API (moto_server, from
//! scripts/test-deps), through `berth run`: read back with boto3 and compared message by
//! message in order; batch limits checked on every PutLogEvents through a recording proxy;
//! throttling, 5xx and lost responses; SIGKILL and restart; the group deleted while running;
//! SigV4 + IAM checked by moto with a wrong and then a right secret.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;
use common::moto::{cw_tool, FaultProxy, Faults, Moto, PutCall, Stored};
use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

const LONG: Duration = Duration::from_secs(90);

fn now_secs() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// berth with one cloudwatch_logs sink `cw` to `url`; `extra` is appended to the sink
/// (`flush_interval` there replaces the 100ms default).
fn config(url: &str, extra: &str) -> String {
    let flush = if extra.contains("flush_interval") { "" } else { "flush_interval = \"100ms\"" };
    format!(
        r#"{NETWORK_HEAD}
[[sink]]
name = "cw"
type = "cloudwatch_logs"
match = "**"
region = "us-east-1"
endpoint_url = "{url}"
{flush}
timeout = "10s"
dead_letter_path = "{{dir}}/dead/cw.ndjson"
{extra}
"#
    )
}

const CREDS: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/dev/null"),
];

fn start_cw(cfg: &str) -> Berth {
    start_in(tempfile::tempdir().unwrap(), cfg, &CREDS)
}

/// A Docker record as the ECS enrichment stage leaves it.
fn ecs(task: &str, container: &str, log: &str) -> rmpv::Value {
    rec(&[
        ("log", log),
        ("ecs_cluster", "prod"),
        ("ecs_task_definition_family", "app"),
        ("ecs_task_id", task),
        ("ecs_container_name", container),
        ("container_id", "0123456789ab"),
    ])
}

/// Send `(time, record)` entries as Forward-mode requests of `per` entries and wait for
/// each ack: once acked they are durable in berth's buffer.
fn send(b: &Berth, tag: &str, entries: &[(i64, rmpv::Value)], per: usize) {
    let mut c = Client::connect(&format!("tcp://{}", b.tcp_addr()));
    c.set_read_timeout(WAIT);
    for (i, part) in entries.chunks(per).enumerate() {
        let list = part
            .iter()
            .map(|(t, r)| rmpv::Value::Array(vec![rmpv::Value::from(*t), r.clone()]))
            .collect();
        let chunk = format!("{tag}-{i}-{}", entries.len());
        let req = mp(&rmpv::Value::Array(vec![
            s(tag),
            rmpv::Value::Array(list),
            rmpv::Value::Map(vec![(s("chunk"), s(&chunk))]),
        ]));
        c.send(&req, usize::MAX).unwrap();
        assert_eq!(
            c.read_exact_n(ack_bytes(&chunk).len()),
            ack_bytes(&chunk),
            "ack for request {i}"
        );
    }
}

fn wait_acknowledged(b: &Berth) {
    wait_for(LONG, "everything acknowledged", || {
        (b.metric("berth_sink_lag_records{sink=\"cw\"}") == 0.0).then_some(())
    });
}

fn wait_stored(url: &str, n: usize) -> Stored {
    wait_for(LONG, &format!("{n} events stored"), || {
        Some(Stored::read(url, None)).filter(|s| s.total() >= n)
    })
}

/// Every PutLogEvents within the documented limits.
fn assert_limits(calls: &[PutCall]) {
    for c in calls {
        assert!(c.events <= 10_000, "{c:?}");
        assert!(c.bytes <= 1_048_576, "{c:?}");
        assert!(c.max_ts - c.min_ts < 24 * 3600 * 1000, "{c:?}");
        assert!(c.sorted, "{c:?}");
        assert!(c.max_event <= 1_048_576, "{c:?}");
    }
}

#[test]
fn records_arrive_in_order_message_by_message_with_fallbacks() {
    let moto = Moto::start(&[]);
    let b = start_cw(&config(
        &moto.url(),
        "retention_days = 7\nlog_group_class = \"INFREQUENT_ACCESS\"",
    ));
    let t0 = now_secs() - 600;
    let mut entries = Vec::new();
    let mut want: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for i in 0..50 {
        for (task, container) in [("t1", "web"), ("t1", "worker"), ("t2", "web")] {
            let line = format!("{task}/{container} line {i} ünïcode");
            entries.push((t0 + i, ecs(task, container, &line)));
            want.entry(("/ecs/prod/app".into(), format!("{task}/{container}")))
                .or_default()
                .push(line);
        }
    }
    send(&b, "docker.app", &entries, 40);
    // No ECS fields: the stream falls back to the container id, the group to `unknown`.
    let plain: Vec<_> = (0..10)
        .map(|i| (t0 + i, rec(&[("log", &format!("plain {i}")), ("container_id", "c0ffee")])))
        .collect();
    send(&b, "docker.plain", &plain, 10);
    want.insert(
        ("/ecs/unknown/unknown".into(), "c0ffee".into()),
        (0..10).map(|i| format!("plain {i}")).collect(),
    );
    // Neither: the stream is the tag, and without a `log` field the message is the JSON.
    let bare: Vec<_> = (0..5).map(|i| (t0 + i, rec(&[("msg", &format!("m{i}"))]))).collect();
    send(&b, "app.bare", &bare, 5);
    want.entry(("/ecs/unknown/unknown".into(), "app.bare".into()))
        .or_default()
        .extend((0..5).map(|i| format!("{{\"msg\":\"m{i}\"}}")));

    wait_stored(&moto.url(), 165);
    wait_acknowledged(&b);
    // Read again once everything is acknowledged: a read lists the groups (with their
    // retention) before it reads their events, so the snapshot that first saw all 165 events
    // may predate the retention a worker set just before its last PutLogEvents.
    let stored = Stored::read(&moto.url(), None);
    let mut got = BTreeMap::new();
    for (g, group) in &stored.groups {
        for (st, evs) in &group.streams {
            got.insert(
                (g.clone(), st.clone()),
                evs.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
            );
        }
    }
    assert_eq!(got, want);
    for (name, g) in &stored.groups {
        assert_eq!(g.retention, Some(7), "retention of created group {name}");
        if let Some(class) = &g.class {
            assert_eq!(class, "INFREQUENT_ACCESS", "{name}");
        }
    }
    b.wait_metric("berth_output_records_total{sink=\"cw\"}", 165.0);
    assert!(b.metric("berth_output_bytes_total{sink=\"cw\"}") > 0.0);
    assert!(b.metric("berth_output_request_duration_seconds_count{sink=\"cw\"}") >= 5.0);
    assert!(read_ndjson(&b.path().join("dead/cw.ndjson")).is_empty());
}

#[test]
fn batch_limits_split_and_dead_letter_exactly() {
    let moto = Moto::start(&[]);
    let proxy = FaultProxy::start(&moto.addr, Faults::default());
    let b = start_cw(&config(&proxy.url(), "flush_interval = \"2s\""));
    let now = now_secs();
    // 10,001 small events in one stream, in one request: one delivery, so one group of
    // deliveries holds them all whatever the timing, and the cut is the sink's alone.
    let count: Vec<_> =
        (0..10_001).map(|i| (now - 100, ecs("limits", "count", &format!("c{i}")))).collect();
    send(&b, "docker.count", &count, 10_001);
    // 2 MiB in 4 KiB events.
    let filler = "s".repeat(4096 - 8);
    let size: Vec<_> =
        (0..512).map(|i| (now - 90, ecs("limits", "size", &format!("{i:07} {filler}")))).collect();
    send(&b, "docker.size", &size, 64);
    // 31 events an hour apart: 30 hours.
    let span: Vec<_> =
        (0..=30).rev().map(|h| (now - h * 3600, ecs("limits", "span", &format!("h{h}")))).collect();
    send(&b, "docker.span", &span, 31);
    // One 3 MiB event.
    let big: String = (0..3 << 20).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    send(&b, "docker.big", &[(now - 80, ecs("limits", "big", &big))], 1);
    // 15 days old, 3 hours ahead, and one in the window.
    let window = vec![
        (now - 15 * 86_400, ecs("limits", "window", "too old")),
        (now + 3 * 3600, ecs("limits", "window", "too new")),
        (now - 70, ecs("limits", "window", "fine")),
    ];
    send(&b, "docker.window", &window, 3);

    wait_acknowledged(&b);
    let calls = proxy.calls();
    assert_limits(&calls);
    // Accepted calls only: the first call to a new stream is answered ResourceNotFound.
    let of = |s: &str| {
        calls
            .iter()
            .filter(|c| c.stream == format!("limits/{s}") && c.accepted())
            .cloned()
            .collect::<Vec<_>>()
    };
    let c = of("count");
    assert_eq!(
        c.iter().map(|c| c.events).collect::<Vec<_>>(),
        vec![10_000, 1],
        "10,001 events: one full batch and one"
    );
    let sz = of("size");
    assert_eq!(sz.iter().map(|c| c.events).sum::<usize>(), 512);
    assert_eq!(sz.iter().map(|c| c.bytes).sum::<usize>(), 512 * (4096 + 26));
    assert!(sz.len() >= 3, "2 MiB needs at least 3 batches: {sz:?}");
    let sp = of("span");
    assert!(sp.len() >= 2 && sp.iter().map(|c| c.events).sum::<usize>() == 31, "{sp:?}");

    let stored = Stored::read(&moto.url(), None);
    let g = "/ecs/prod/app";
    assert_eq!(
        stored.messages(g, "limits/count"),
        (0..10_001).map(|i| format!("c{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        stored.messages(g, "limits/size"),
        size.iter()
            .map(|(_, r)| r.as_map().unwrap()[0].1.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        stored.messages(g, "limits/span"),
        (0..=30).rev().map(|h| format!("h{h}")).collect::<Vec<_>>()
    );
    // The 3 MiB event: marked parts that join to the original, in order.
    let parts = stored.messages(g, "limits/big");
    let n = parts.len();
    assert!(n >= 4, "3 MiB in parts of at most 1 MiB (max_event_size, the default): {n}");
    assert!(parts.iter().all(|p| p.len() + 26 <= 1 << 20), "no part over 1 MiB");
    assert!(parts.iter().any(|p| p.len() > 256 << 10), "parts beyond the old 256 KiB limit");
    let mut joined = String::new();
    for (i, p) in parts.iter().enumerate() {
        let marker = format!("[berth part {}/{n}] ", i + 1);
        assert!(p.starts_with(&marker), "part {i}: {}", &p[..40]);
        joined.push_str(&p[marker.len()..]);
    }
    assert!(joined == big, "the parts join to the original event");
    b.wait_metric("berth_output_split_records_total{sink=\"cw\"}", 1.0);
    // Outside the window: dead letters with the reason, counted; never sent.
    assert_eq!(stored.messages(g, "limits/window"), vec!["fine"]);
    let dl = read_ndjson(&b.path().join("dead/cw.ndjson"));
    let mut kinds: Vec<(String, String)> = dl
        .iter()
        .map(|l| {
            (l["error_type"].as_str().unwrap().into(), l["record"]["log"].as_str().unwrap().into())
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![("too_new".into(), "too new".into()), ("too_old".into(), "too old".into())]
    );
    b.wait_metric("berth_dead_letter_records_total{sink=\"cw\",reason=\"too_old\"}", 1.0);
    b.wait_metric("berth_dead_letter_records_total{sink=\"cw\",reason=\"too_new\"}", 1.0);
    assert!(
        calls.iter().all(|c| c.fate == "forwarded" && (c.status == 200 || c.status == 400)),
        "{calls:?}"
    );
    b.wait_metric("berth_output_records_total{sink=\"cw\"}", (10_001 + 512 + 31 + 1 + 1) as f64);
}

#[test]
fn events_the_server_rejects_are_dead_lettered_with_its_reason() {
    let moto = Moto::start(&[]);
    let proxy =
        FaultProxy::start(&moto.addr, Faults { age_first_event: true, ..Faults::default() });
    let b = start_cw(&config(&proxy.url(), "flush_interval = \"50ms\""));
    let t0 = now_secs() - 500;
    let entries: Vec<_> = (0..60).map(|i| (t0 + i, ecs("rej", "web", &format!("r{i}")))).collect();
    send(&b, "docker.rej", &entries, 6);
    wait_acknowledged(&b);
    let stored = Stored::read(&moto.url(), None).messages("/ecs/prod/app", "rej/web");
    let dl = read_ndjson(&b.path().join("dead/cw.ndjson"));
    // The first event of each accepted call was aged by the proxy and rejected by moto.
    let accepted = proxy.calls().iter().filter(|c| c.accepted()).count();
    assert_eq!(dl.len(), accepted, "{dl:?}");
    let mut all: Vec<String> = stored.clone();
    for l in &dl {
        assert_eq!(l["error_type"], "too_old");
        assert!(l["reason"].as_str().unwrap().contains("rejectedLogEventsInfo"), "{l}");
        all.push(l["record"]["log"].as_str().unwrap().to_string());
    }
    all.sort_by_key(|m| m[1..].parse::<u32>().unwrap());
    assert_eq!(
        all,
        (0..60).map(|i| format!("r{i}")).collect::<Vec<_>>(),
        "each record stored or dead-lettered, once"
    );
    b.wait_metric(
        "berth_dead_letter_records_total{sink=\"cw\",reason=\"too_old\"}",
        dl.len() as f64,
    );
    b.wait_metric("berth_output_records_total{sink=\"cw\"}", stored.len() as f64);
}

#[test]
fn a_group_berth_may_not_create_holds_events_until_it_exists() {
    let moto = Moto::start(&[]);
    let b = start_cw(&config(&moto.url(), "create_missing_group = false"));
    let t0 = now_secs() - 100;
    send(
        &b,
        "docker.nogroup",
        &(0..10).map(|i| (t0 + i, ecs("ng", "web", &format!("n{i}")))).collect::<Vec<_>>(),
        5,
    );
    wait_for(LONG, "the error", || {
        b.stderr_text().contains("create_missing_group = false").then_some(())
    });
    assert!(b.metric("berth_sink_lag_records{sink=\"cw\"}") > 0.0, "nothing acknowledged");
    assert_eq!(Stored::read(&moto.url(), None).total(), 0, "no group created");
    cw_tool(&moto.url(), &["create-group", "/ecs/prod/app"], None);
    wait_acknowledged(&b);
    let stored = Stored::read(&moto.url(), None);
    assert_eq!(
        stored.messages("/ecs/prod/app", "ng/web"),
        (0..10).map(|i| format!("n{i}")).collect::<Vec<_>>()
    );
    assert_eq!(stored.groups["/ecs/prod/app"].retention, None);
}

#[test]
fn role_arn_assumes_a_role_and_aws_endpoint_url_is_honoured() {
    // No endpoint_url in the config: AWS_ENDPOINT_URL sends STS (AssumeRole) and CloudWatch
    // Logs alike to moto.
    let moto = Moto::start(&[]);
    let cfg = config("", "role_arn = \"arn:aws:iam::123456789012:role/berth-logs\"")
        .replace("endpoint_url = \"\"\n", "");
    let mut env: Vec<(&str, &str)> = CREDS.to_vec();
    let url = moto.url();
    env.push(("AWS_ENDPOINT_URL", &url));
    let b = start_in(tempfile::tempdir().unwrap(), &cfg, &env);
    let t0 = now_secs() - 100;
    send(
        &b,
        "docker.role",
        &(0..5).map(|i| (t0 + i, ecs("role", "web", &format!("r{i}")))).collect::<Vec<_>>(),
        5,
    );
    wait_acknowledged(&b);
    assert_eq!(
        Stored::read(&moto.url(), None).messages("/ecs/prod/app", "role/web"),
        (0..5).map(|i| format!("r{i}")).collect::<Vec<_>>()
    );
    // The SDK logs (at debug level) its calls and the provider of the identity it signs
    // with: STS AssumeRole was called, and the logs calls were signed with its credentials.
    let err = b.stderr_text();
    assert!(err.contains(r#""rpc.method":"AssumeRole""#), "STS AssumeRole called");
    assert!(
        err.contains(r#"provider_name: \"AssumeRoleProvider\""#),
        "signed with the assumed role's credentials"
    );
}

/// Messages of `stream` in first-occurrence order, and how many extra copies were stored.
fn dedup(msgs: &[String]) -> (Vec<String>, usize) {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for m in msgs {
        if seen.insert(m.clone()) {
            out.push(m.clone());
        }
    }
    let dups = msgs.len() - out.len();
    (out, dups)
}

#[test]
fn throttling_5xx_and_lost_responses_lose_nothing_and_bound_duplicates() {
    let moto = Moto::start(&[]);
    let proxy = FaultProxy::start(
        &moto.addr,
        Faults { throttle_every: 3, unavailable_every: 5, lose_every: 7, ..Faults::default() },
    );
    let b = start_cw(&config(&proxy.url(), "flush_interval = \"50ms\"\nconcurrency = 2"));
    let t0 = now_secs() - 3000;
    let streams = ["a", "b", "c", "d"];
    let mut entries = Vec::new();
    for i in 0..2000i64 {
        let st = streams[(i % 4) as usize];
        entries.push((t0 + i, ecs("faults", st, &format!("{st} {i}"))));
    }
    // In 10 waves, each acknowledged before the next: at least 40 PutLogEvents, so every
    // kind of fault is met whatever the batching.
    for wave in entries.chunks(200) {
        send(&b, "docker.faults", wave, 50);
        wait_acknowledged(&b);
    }
    let calls = proxy.calls();
    assert_limits(&calls);
    let lost: usize =
        calls.iter().filter(|c| c.fate == "lost" && c.status == 200).map(|c| c.events).sum();
    assert!(
        calls.iter().any(|c| c.fate == "throttled")
            && calls.iter().any(|c| c.fate == "unavailable")
            && lost > 0,
        "faults injected"
    );
    let stored = Stored::read(&moto.url(), None);
    let mut dups = 0;
    for st in streams {
        let msgs = stored.messages("/ecs/prod/app", &format!("faults/{st}"));
        let (unique, d) = dedup(&msgs);
        dups += d;
        let want: Vec<String> = (0..2000)
            .filter(|i| streams[(i % 4) as usize] == st)
            .map(|i| format!("{st} {i}"))
            .collect();
        assert_eq!(unique, want, "stream {st}: every record, in order");
    }
    // Duplicates only from batches whose response was lost, at most one copy each.
    assert!(dups <= lost, "{dups} duplicates, {lost} events in batches with a lost response");
    assert!(b.metric("berth_output_retries_total{sink=\"cw\",reason=\"throttled\"}") >= 1.0);
    assert!(b.metric("berth_output_retries_total{sink=\"cw\",reason=\"unavailable\"}") >= 1.0);
    assert!(b.metric("berth_output_retries_total{sink=\"cw\",reason=\"connection\"}") >= 1.0);
    b.wait_metric("berth_output_records_total{sink=\"cw\"}", 2000.0);
    assert!(read_ndjson(&b.path().join("dead/cw.ndjson")).is_empty());
}

#[test]
fn sigkill_restart_then_group_deleted_while_running() {
    let moto = Moto::start(&[]);
    let proxy = FaultProxy::start(&moto.addr, Faults::default());
    let cfg = config(&proxy.url(), "flush_interval = \"50ms\"");
    let mut b = start_cw(&cfg);
    let t0 = now_secs() - 2000;
    let line = |i: i64| (t0 + i, ecs("kill", "web", &format!("k{i}")));
    send(&b, "docker.kill", &(0..300).map(line).collect::<Vec<_>>(), 20);
    // Killed while delivering: whatever was acked by the server and not yet acknowledged to
    // the buffer is sent again after the restart (the bounded duplicates).
    wait_for(LONG, "a first batch stored", || (!proxy.calls().is_empty()).then_some(()));
    b.signal(9);
    wait_exit(&mut b.child, WAIT);
    let dir = std::mem::replace(&mut b.dir, tempfile::tempdir().unwrap());
    drop(b);
    let b = start_in(dir, &cfg, &CREDS);
    send(&b, "docker.kill", &(300..600).map(line).collect::<Vec<_>>(), 20);
    wait_acknowledged(&b);
    let msgs = Stored::read(&moto.url(), None).messages("/ecs/prod/app", "kill/web");
    let (unique, dups) = dedup(&msgs);
    assert_eq!(unique, (0..600).map(|i| format!("k{i}")).collect::<Vec<_>>());
    assert!(dups < 300, "{dups} duplicates: at most what was in flight at the kill");

    // The group is deleted under berth: the next batch finds it missing, berth creates the
    // group and the stream again and sends; nothing sent after the deletion is lost.
    cw_tool(&moto.url(), &["delete-group", "/ecs/prod/app"], None);
    send(&b, "docker.kill", &(600..700).map(line).collect::<Vec<_>>(), 20);
    wait_acknowledged(&b);
    let msgs = Stored::read(&moto.url(), None).messages("/ecs/prod/app", "kill/web");
    assert_eq!(msgs, (600..700).map(|i| format!("k{i}")).collect::<Vec<_>>());
    assert!(b.metric("berth_output_retries_total{sink=\"cw\",reason=\"not_found\"}") >= 1.0);
}

#[test]
fn sigv4_and_iam_checked_by_moto_wrong_secret_is_a_clear_error_and_loses_nothing() {
    // The first 6 calls (the IAM setup) are not authenticated; every later one has its
    // SigV4 signature recomputed and its IAM policy evaluated by moto. berth's user holds
    // packaging/iam/berth-sink-policy.json only, and the sink makes every call it can
    // (creates the group, sets its retention, creates the stream, puts the events); the
    // test reads them back as another user.
    let moto = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "6")]);
    let policy = package_file("packaging/iam/berth-sink-policy.json");
    let keys: serde_json::Value =
        serde_json::from_str(&cw_tool(&moto.url(), &["iam-setup", policy.to_str().unwrap()], None))
            .unwrap();
    let (key, secret) =
        (keys["key"].as_str().unwrap().to_string(), keys["secret"].as_str().unwrap().to_string());
    let reader = &keys["reader"];
    let reader = (reader["key"].as_str().unwrap(), reader["secret"].as_str().unwrap());
    let cfg = config(&moto.url(), "retention_days = 7");
    let env = |secret: &str| -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), secret.into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
        ]
    };
    let as_refs =
        |v: &[(String, String)]| v.iter().map(|(a, b)| (a.clone(), b.clone())).collect::<Vec<_>>();
    let wrong = as_refs(&env("not-the-secret"));
    let wrong: Vec<(&str, &str)> = wrong.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut b = start_in(tempfile::tempdir().unwrap(), &cfg, &wrong);
    let t0 = now_secs() - 100;
    let entries: Vec<_> = (0..20).map(|i| (t0 + i, ecs("iam", "web", &format!("i{i}")))).collect();
    send(&b, "docker.iam", &entries, 5);
    wait_for(LONG, "unauthorized retries", || {
        (b.metric("berth_output_retries_total{sink=\"cw\",reason=\"unauthorized\"}") >= 2.0)
            .then_some(())
    });
    let err = b.stderr_text();
    assert!(err.contains("refused as unauthorized"), "a clear error in the log:\n{err}");
    assert_eq!(Stored::read(&moto.url(), Some(reader)).total(), 0);
    assert!(b.metric("berth_sink_lag_records{sink=\"cw\"}") > 0.0, "nothing acknowledged");
    b.stop();
    let dir = std::mem::replace(&mut b.dir, tempfile::tempdir().unwrap());
    drop(b);

    let right = as_refs(&env(&secret));
    let right: Vec<(&str, &str)> = right.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let b = start_in(dir, &cfg, &right);
    wait_acknowledged(&b);
    let stored = Stored::read(&moto.url(), Some(reader));
    assert_eq!(
        stored.messages("/ecs/prod/app", "iam/web"),
        (0..20).map(|i| format!("i{i}")).collect::<Vec<_>>()
    );
    assert_eq!(stored.groups["/ecs/prod/app"].retention, Some(7), "PutRetentionPolicy allowed");
    // Every call the sink made is an action of the policy (the SDK's operation names).
    let granted = common::iam::actions("packaging/iam/berth-sink-policy.json");
    for action in ["CreateLogGroup", "PutRetentionPolicy", "CreateLogStream", "PutLogEvents"] {
        assert!(granted.contains(&format!("logs:{action}")), "{action}");
    }
}

#[test]
fn a_log_group_the_policy_refuses_is_dead_lettered_and_the_other_streams_go_on() {
    let moto = Moto::start(&[]);
    let proxy = FaultProxy::start(
        &moto.addr,
        Faults { deny_group: Some("/ecs/prod/secret"), ..Faults::default() },
    );
    let b = start_cw(&config(&proxy.url(), "denied_retry_duration = \"2s\""));
    let t0 = now_secs() - 100;
    let mut entries = Vec::new();
    for i in 0..40 {
        let family = if i % 2 == 0 { "app" } else { "secret" };
        let mut r = ecs("deny", "web", &format!("d{i}"));
        if let rmpv::Value::Map(m) = &mut r {
            for (k, v) in m.iter_mut() {
                if k.as_str() == Some("ecs_task_definition_family") {
                    *v = rmpv::Value::from(family);
                }
            }
        }
        entries.push((t0 + i, r));
    }
    send(&b, "docker.deny", &entries, 4);
    // Everything settles: the allowed group's events stored, the refused group's in the
    // dead-letter file with the reason, none lost, the sink not stuck.
    wait_acknowledged(&b);
    let stored = Stored::read(&moto.url(), None);
    assert_eq!(
        stored.messages("/ecs/prod/app", "deny/web"),
        (0..40).step_by(2).map(|i| format!("d{i}")).collect::<Vec<_>>()
    );
    let dl = read_ndjson(&b.path().join("dead/cw.ndjson"));
    let mut dead: Vec<i64> = dl
        .iter()
        .map(|l| {
            assert_eq!(l["error_type"], "denied", "{l}");
            let reason = l["reason"].as_str().unwrap();
            assert!(
                reason.contains("/ecs/prod/secret") && reason.contains("AccessDenied"),
                "{reason}"
            );
            l["record"]["log"].as_str().unwrap()[1..].parse().unwrap()
        })
        .collect();
    dead.sort_unstable();
    assert_eq!(dead, (1..40).step_by(2).collect::<Vec<_>>());
    b.wait_metric("berth_dead_letter_records_total{sink=\"cw\",reason=\"denied\"}", 20.0);
    assert!(b.metric("berth_output_retries_total{sink=\"cw\",reason=\"denied\"}") >= 1.0);
    assert!(b.stderr_text().contains("refused for this log group by the policy"));
}

/// packaging/iam/berth-sink-policy.json grants the sinks' actions, each on ARNs of the
/// documented formats (Service Authorization Reference: `log-group:NAME`,
/// `log-group:NAME:log-stream:NAME`; `domain/NAME/PATH` for `es:ESHttp*`;
/// `collection/ID` for `aoss:APIAccessAll`) and not on others.
#[test]
fn the_sink_policy_grants_the_sinks_actions_on_the_documented_arn_formats() {
    const POLICY: &str = "packaging/iam/berth-sink-policy.json";
    let want: std::collections::BTreeSet<String> = [
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "logs:PutRetentionPolicy",
        "es:ESHttpPost",
        "aoss:APIAccessAll",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(common::iam::actions(POLICY), want);
    let group = "arn:aws:logs:eu-west-1:123456789012:log-group:/ecs/prod/app";
    let stream = "arn:aws:logs:eu-west-1:123456789012:log-group:/ecs/prod/app:log-stream:t/web";
    let other = "arn:aws:logs:eu-west-1:123456789012:log-group:/berth/capacity";
    let bulk = "arn:aws:es:eu-west-1:123456789012:domain/logs/_bulk";
    common::iam::check_resources(
        POLICY,
        &[
            ("logs:CreateLogGroup", &[group], &[other]),
            ("logs:PutRetentionPolicy", &[group], &[other]),
            ("logs:CreateLogStream", &[stream], &[&format!("{other}:log-stream:x")]),
            ("logs:PutLogEvents", &[stream], &[&format!("{other}:log-stream:x")]),
            (
                "es:ESHttpPost",
                &[bulk],
                &[
                    "arn:aws:es:eu-west-1:123456789012:domain/logs/_search",
                    "arn:aws:es:eu-west-1:123456789012:domain/logs/app/_doc",
                ],
            ),
            (
                "aoss:APIAccessAll",
                &["arn:aws:aoss:eu-west-1:123456789012:collection/abc123def"],
                &["arn:aws:aoss:eu-west-1:123456789012:dashboards/default"],
            ),
        ],
    );
}

/// SIGHUP replaces the running cloudwatch_logs sink (its stream template changes): the old
/// one stops, the new one resumes at the cursor with the new streams, nothing acknowledged
/// is lost and nothing already stored comes back under the new streams.
#[test]
fn a_sink_changed_on_sighup_resumes_at_its_cursor() {
    let moto = Moto::start(&[]);
    let cfg = config(&moto.url(), "");
    let b = start_cw(&cfg);
    let t0 = now_secs() - 100;
    let first: Vec<_> = (0..30).map(|i| (t0 + i, ecs("hup", "web", &format!("a{i}")))).collect();
    send(&b, "docker.hup", &first, 5);
    wait_acknowledged(&b);
    let path = b.path().join("berth.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let changed =
        text.replace("timeout = \"10s\"", "timeout = \"10s\"\nlog_stream = \"v2/{ecs_task_id}\"");
    assert_ne!(changed, text);
    std::fs::write(&path, changed).unwrap();
    b.signal(libc::SIGHUP);
    wait_for(WAIT, "the sink replaced", || {
        b.stderr_text().contains("SIGHUP: sinks changed").then_some(())
    });
    let second: Vec<_> = (30..60).map(|i| (t0 + i, ecs("hup", "web", &format!("a{i}")))).collect();
    send(&b, "docker.hup", &second, 5);
    wait_acknowledged(&b);
    let stored = wait_stored(&moto.url(), 60);
    assert_eq!(stored.total(), 60, "nothing twice");
    assert_eq!(
        stored.messages("/ecs/prod/app", "hup/web"),
        (0..30).map(|i| format!("a{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        stored.messages("/ecs/prod/app", "v2/hup"),
        (30..60).map(|i| format!("a{i}")).collect::<Vec<_>>()
    );
}
