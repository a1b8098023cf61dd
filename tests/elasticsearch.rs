//! The elasticsearch sink against a real OpenSearch-compatible server (osmem-server, from
//! scripts/test-deps), through `berth run`: documents field by field, stable `_id`s,
//! dead letters for mapping conflicts, and exactly-once across a server outage and a
//! SIGKILL of berth.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;
use common::*;
use std::collections::BTreeMap;

/// 2026-11-22T07:00:05Z
const BASE_TIME: i64 = 1_795_330_805;

fn config(endpoint: &str, extra: &str) -> String {
    config_endpoints(&[endpoint], extra)
}

/// Send `records` as acked Message-mode requests (one per record) and wait for each ack:
/// once acked they are durable in berth's buffer.
fn send_acked(b: &Berth, tag: &str, records: &[rmpv::Value]) {
    let mut c = Client::connect(&format!("tcp://{}", b.tcp_addr()));
    c.set_read_timeout(WAIT);
    for (i, r) in records.iter().enumerate() {
        let chunk = format!("c{i}-{}", records.len());
        c.send(&message(tag, BASE_TIME + i as i64, r.clone(), Some(&chunk)), usize::MAX).unwrap();
        assert_eq!(
            c.read_exact_n(ack_bytes(&chunk).len()),
            ack_bytes(&chunk),
            "ack for record {i}"
        );
    }
}

fn rec_n(app: &str, n: usize) -> rmpv::Value {
    rec(&[("app", app), ("n", &n.to_string()), ("log", &format!("line {n}"))])
}

/// Distinct `_id`s and how many documents each has, with the `n` field of each.
fn ids(os: &Osmem, index: &str) -> (BTreeMap<String, usize>, Vec<u64>) {
    let mut counts = BTreeMap::new();
    let mut ns = Vec::new();
    for h in os.search_all(index) {
        *counts.entry(h["_id"].as_str().unwrap().to_string()).or_insert(0) += 1;
        let n = &h["_source"]["n"];
        ns.push(
            n.as_u64()
                .or_else(|| n.as_str().and_then(|s| s.parse().ok()))
                .unwrap_or_else(|| panic!("n in {h}")),
        );
    }
    ns.sort_unstable();
    (counts, ns)
}

fn wait_count(os: &Osmem, index: &str, n: u64, what: &str) {
    wait_for(std::time::Duration::from_secs(60), what, || (os.count(index) >= n).then_some(()));
    assert_eq!(os.count(index), n, "{what}: no more than expected");
}

#[test]
fn osmem_server_starts_and_indexes() {
    let os = Osmem::start();
    let body = "{\"create\":{\"_index\":\"probe\",\"_id\":\"a\"}}\n{\"x\":1}\n";
    let (status, v) = os.request("POST", "/_bulk", Some(body));
    assert_eq!(status, 200, "{v}");
    assert_eq!(os.count("probe"), 1);
    assert_eq!(os.search_all("probe")[0]["_id"], "a");
}

#[test]
fn records_arrive_field_by_field_with_stable_ids_and_timestamp() {
    let os = Osmem::start();
    for gzip in ["gzip", "none"] {
        let b = start(&config(&os.url(), &format!("compression = \"{gzip}\"")));
        let app = format!("web{gzip}");
        let records: Vec<_> = (0..20).map(|n| rec_n(&app, n)).collect();
        send_acked(&b, "app.web", &records);
        let index = format!("logs-{app}-2026.11.22");
        wait_count(&os, &index, 20, "20 documents");
        let instance = std::fs::read(b.path().join("buffer/instance-id")).ok();
        let mut hits = os.search_all(&index);
        hits.sort_by_key(|h| h["_source"]["n"].as_str().unwrap().parse::<u64>().unwrap());
        let mut ids = std::collections::BTreeSet::new();
        for (n, h) in hits.iter().enumerate() {
            let src = &h["_source"];
            assert_eq!(src["app"], app.as_str());
            assert_eq!(src["n"], n.to_string());
            assert_eq!(src["log"], format!("line {n}"));
            assert_eq!(src["tag"], "app.web");
            assert_eq!(
                parse_rfc3339(src["@timestamp"].as_str().unwrap()),
                (BASE_TIME + n as i64, 0)
            );
            assert_eq!(src.as_object().unwrap().len(), 5, "no other fields: {src}");
            // `_id` = `{instance_id:016x}-{offset:x}-{content crc:08x}`: one instance,
            // offsets in send order.
            let id = h["_id"].as_str().unwrap();
            let parts: Vec<&str> = id.split('-').collect();
            let [inst, off, crc] = parts[..] else { panic!("id {id}") };
            assert_eq!(inst.len(), 16, "{id}");
            assert_eq!(u64::from_str_radix(off, 16).unwrap(), n as u64, "{id}");
            assert!(crc.len() == 8 && u32::from_str_radix(crc, 16).is_ok(), "{id}");
            ids.insert(inst.to_string());
        }
        assert_eq!(ids.len(), 1, "one buffer instance: {ids:?} ({instance:?})");
        let admin = b.admin.clone().unwrap();
        wait_for(WAIT, "output metrics", || {
            let (_, m) = http_get(&admin, "/metrics");
            (metric_value(&m, "berth_output_records_total{sink=\"search\"}") == 20.0).then_some(m)
        });
        let (_, m) = http_get(&admin, "/metrics");
        assert!(metric_value(&m, "berth_output_bytes_total{sink=\"search\"}") > 0.0);
        // One observation per `_bulk` request, in buckets from 1 ms to 30 s.
        let requests =
            metric_value(&m, "berth_output_request_duration_seconds_count{sink=\"search\"}");
        assert!(requests >= 1.0, "{m}");
        assert!(
            metric_value(&m, "berth_output_request_duration_seconds_sum{sink=\"search\"}") > 0.0,
            "{m}"
        );
        assert!(
            m.contains("berth_output_request_duration_seconds_bucket{le=\"30.0\",sink=\"search\"}"),
            "{m}"
        );
        assert_eq!(
            metric_value(&m, "berth_sink_lag_records{sink=\"search\"}"),
            0.0,
            "everything acknowledged"
        );
    }
}

#[test]
fn mapping_conflict_sends_exactly_the_bad_records_to_the_dead_letter_file() {
    let os = Osmem::start();
    let b = start(&config(&os.url(), ""));
    // `n` becomes a long with the first document; the bad ones hold an object there.
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for i in 0..30usize {
        let v = if i > 0 && i % 7 == 0 {
            bad.push(i);
            rmpv::Value::Map(vec![
                (s("app"), s("map")),
                (s("n"), rmpv::Value::Map(vec![(s("nested"), s("object"))])),
                (s("i"), rmpv::Value::from(i as u64)),
            ])
        } else {
            rmpv::Value::Map(vec![
                (s("app"), s("map")),
                (s("n"), rmpv::Value::from(i as u64)),
                (s("i"), rmpv::Value::from(i as u64)),
            ])
        };
        records.push(v);
    }
    // The first one alone, so its mapping exists before the others arrive.
    send_acked(&b, "app.map", &records[..1]);
    wait_count(&os, "logs-map-2026.11.22", 1, "the first document");
    send_acked(&b, "app.map", &records[1..]);
    let dl = b.path().join("dead/search.ndjson");
    let lines = wait_for(std::time::Duration::from_secs(30), "dead letters", || {
        let l = read_ndjson(&dl);
        (l.len() >= bad.len()).then_some(l)
    });
    wait_count(&os, "logs-map-2026.11.22", (30 - bad.len()) as u64, "good documents");
    let mut got: Vec<usize> =
        lines.iter().map(|l| l["record"]["i"].as_u64().unwrap() as usize).collect();
    got.sort_unstable();
    assert_eq!(got, bad, "exactly the bad records: {lines:?}");
    for l in &lines {
        assert_eq!(l["status"], 400, "{l}");
        assert!(l["error_type"].as_str().unwrap().contains("exception"), "{l}");
        assert!(!l["reason"].as_str().unwrap().is_empty(), "{l}");
        assert_eq!(l["tag"], "app.map");
        assert_eq!(l["record"]["n"]["nested"], "object");
    }
    b.wait_metric(
        "berth_dead_letter_records_total{sink=\"search\",reason=\"rejected\"}",
        bad.len() as f64,
    );
    let (_, good) = ids(&os, "logs-map-2026.11.22");
    let want: Vec<u64> = (0..30u64).filter(|i| !bad.contains(&(*i as usize))).collect();
    assert_eq!(good, want);
}

#[test]
fn server_outage_then_everything_arrives_exactly_once() {
    let os = Osmem::start();
    let proxy = Proxy::start(&os.addr);
    let b = start(&config(&proxy.url(), "batch_max_records = 7"));
    let index = "logs-outage-2026.11.22";
    send_acked(&b, "app.o", &(0..50).map(|n| rec_n("outage", n)).collect::<Vec<_>>());
    wait_count(&os, index, 50, "50 documents before the outage");
    proxy.set_down(true);
    send_acked(&b, "app.o", &(50..150).map(|n| rec_n("outage", n)).collect::<Vec<_>>());
    let admin = b.admin.clone().unwrap();
    wait_for(WAIT, "berth to notice the outage", || {
        let (_, m) = http_get(&admin, "/metrics");
        (metric_value(&m, "berth_output_retries_total{sink=\"search\",reason=\"connection\"}")
            >= 2.0)
            .then_some(())
    });
    assert_eq!(os.count(index), 50, "nothing got through while down");
    proxy.set_down(false);
    wait_count(&os, index, 150, "150 documents after the outage");
    let (counts, ns) = ids(&os, index);
    assert_eq!(counts.len(), 150, "distinct ids");
    assert!(counts.values().all(|c| *c == 1));
    assert_eq!(ns, (0..150).collect::<Vec<u64>>());
}

#[test]
fn berth_sigkilled_mid_stream_and_restarted_delivers_exactly_once() {
    let os = Osmem::start();
    let proxy = Proxy::start(&os.addr);
    let cfg = config(&proxy.url(), "batch_max_records = 5\ntimeout = \"30s\"");
    let mut b = start(&cfg);
    let index = "logs-kill-2026.11.22";
    send_acked(&b, "app.k", &(0..40).map(|n| rec_n("kill", n)).collect::<Vec<_>>());
    wait_count(&os, index, 40, "the first 40");
    // From now on the server stores what it gets but its answers are lost: berth has sent
    // a request whose items are stored and not acknowledged when it is killed.
    proxy.set_lose_responses(true);
    send_acked(&b, "app.k", &(40..200).map(|n| rec_n("kill", n)).collect::<Vec<_>>());
    wait_for(std::time::Duration::from_secs(30), "a request stored without an answer", || {
        (os.count(index) > 40).then_some(())
    });
    b.signal(9);
    wait_exit(&mut b.child, WAIT);
    let in_flight = os.count(index) - 40;
    assert!(in_flight > 0 && in_flight < 160, "killed mid-stream ({in_flight} of 160 stored)");
    proxy.set_lose_responses(false);
    proxy.set_down(true); // close the connections with lost answers
    proxy.set_down(false);
    let dir = std::mem::replace(&mut b.dir, tempfile::tempdir().expect("tempdir"));
    drop(b);
    let b2 = start_in(dir, &cfg, &[]);
    wait_count(&os, index, 200, "200 documents after the restart");
    let (counts, ns) = ids(&os, index);
    assert_eq!(counts.len(), 200);
    assert!(counts.values().all(|c| *c == 1));
    assert_eq!(ns, (0..200).collect::<Vec<u64>>());
    // Everything acknowledged, the resent ones as "already delivered" (409 on create).
    let admin = b2.admin.clone().unwrap();
    wait_for(WAIT, "the buffer to be fully acknowledged", || {
        let (_, m) = http_get(&admin, "/metrics");
        (metric_value(&m, "berth_sink_lag_records{sink=\"search\"}") == 0.0).then_some(())
    });
    let dl = read_ndjson(&b2.path().join("dead/search.ndjson"));
    assert!(dl.is_empty(), "no dead letters: {dl:?}");
}

#[test]
fn endpoints_fail_over_in_order() {
    let os = Osmem::start();
    // A port nobody listens on: connection refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let b = start(&config_endpoints(&[&dead_url, &os.url()], ""));
    send_acked(&b, "app.f", &(0..10).map(|n| rec_n("failover", n)).collect::<Vec<_>>());
    wait_count(&os, "logs-failover-2026.11.22", 10, "10 documents through the second endpoint");
    let (_, m) = http_get(b.admin.as_ref().unwrap(), "/metrics");
    assert!(
        metric_value(&m, "berth_output_retries_total{sink=\"search\",reason=\"connection\"}")
            >= 1.0,
        "{m}"
    );
}

/// berth sending to `faults` (sink keys `extra`): 120 records reach the index
/// `logs-<name>-2026.11.22` exactly once each.
fn exactly_once_through(
    os: &Osmem,
    faults: &FaultServer,
    extra: &str,
    name: &str,
) -> (Berth, FaultStats) {
    let b = start(&config(&faults.url(), extra));
    let index = format!("logs-{name}-2026.11.22");
    send_acked(&b, "app.x", &(0..120).map(|n| rec_n(name, n)).collect::<Vec<_>>());
    wait_count(os, &index, 120, "120 documents through the faults");
    let (counts, ns) = ids(os, &index);
    assert_eq!(counts.len(), 120);
    assert!(counts.values().all(|c| *c == 1), "exactly once: {counts:?}");
    assert_eq!(ns, (0..120).collect::<Vec<u64>>());
    let st = faults.stats.lock().unwrap().clone();
    (b, st)
}

#[test]
fn faults_413_503_and_item_429_end_with_every_record_exactly_once() {
    let os = Osmem::start();
    let faults = FaultServer::start(
        &os.addr,
        Faults {
            max_body: 1500,
            unavailable_every: 3,
            item_429_every: 4,
            gate: 0,
            retry_after: 0,
            forbidden: false,
        },
    );
    let (b, st) = exactly_once_through(
        &os,
        &faults,
        "compression = \"none\"\nbatch_max_records = 50",
        "faults",
    );
    assert!(
        st.too_large > 0 && st.unavailable > 0 && st.items_429 > 0,
        "every fault happened: {st:?}"
    );
    let admin = b.admin.clone().unwrap();
    wait_for(WAIT, "everything acknowledged", || {
        let (_, m) = http_get(&admin, "/metrics");
        (metric_value(&m, "berth_sink_lag_records{sink=\"search\"}") == 0.0).then_some(m)
    });
    let (_, m) = http_get(&admin, "/metrics");
    for reason in ["split", "http_status", "item"] {
        assert!(
            metric_value(
                &m,
                &format!("berth_output_retries_total{{sink=\"search\",reason=\"{reason}\"}}")
            ) > 0.0,
            "{reason}: {m}"
        );
    }
    assert!(read_ndjson(&b.path().join("dead/search.ndjson")).is_empty(), "no dead letters");
}

/// The same faults with gzip bodies (the default): a 413 splits the batch and each half is
/// compressed anew, and a 503's `Retry-After` is waited out before the body is sent again.
#[test]
fn gzip_bodies_split_on_413_and_retry_after_is_honoured() {
    let os = Osmem::start();
    let faults = FaultServer::start(
        &os.addr,
        Faults {
            max_body: 700,
            unavailable_every: 2,
            item_429_every: 0,
            gate: 0,
            retry_after: 1,
            forbidden: false,
        },
    );
    let (_b, st) =
        exactly_once_through(&os, &faults, "batch_max_records = 50\nconcurrency = 1", "gzfaults");
    assert!(st.too_large > 0 && st.unavailable > 0, "both faults happened: {st:?}");
    assert_eq!(
        st.gzipped + st.too_large + st.unavailable,
        st.requests,
        "every forwarded body was gzip: {st:?}"
    );
    // One request in flight: the request after a 503 is its retry, and it waits for the
    // Retry-After (a lower bound only, which load cannot break).
    for t in &st.unavailable_at {
        if let Some(next) = st.arrived.iter().find(|a| *a > t) {
            let waited = next.duration_since(*t);
            assert!(
                waited >= std::time::Duration::from_millis(950),
                "retried {waited:?} after a 503 with Retry-After: 1"
            );
        }
    }
}

/// Dead letters of `path` whose `error_type` is `retry_expired`, once there are `n`.
fn wait_expired(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    wait_for(std::time::Duration::from_secs(60), "retry_expired dead letters", || {
        let l: Vec<_> =
            read_ndjson(path).into_iter().filter(|l| l["error_type"] == "retry_expired").collect();
        (l.len() >= n).then_some(l)
    })
}

#[test]
fn max_retry_duration_dead_letters_a_batch_then_later_records_flow() {
    let os = Osmem::start();
    let proxy = Proxy::start(&os.addr);
    let b = start(&config(
        &proxy.url(),
        "batch_max_records = 10\ntimeout = \"1s\"\nmax_retry_duration = \"2s\"",
    ));
    let index = "logs-expire-2026.11.22";
    proxy.set_down(true);
    send_acked(&b, "app.e", &(0..20).map(|n| rec_n("expire", n)).collect::<Vec<_>>());
    let dl = b.path().join("dead/search.ndjson");
    let lines = wait_expired(&dl, 20);
    let mut got: Vec<u64> =
        lines.iter().map(|l| l["record"]["n"].as_str().unwrap().parse().unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<u64>>(), "each record once: {lines:?}");
    for l in &lines {
        assert_eq!(l["status"], 0, "a connection failure has no status: {l}");
        assert!(l["reason"].as_str().unwrap().contains("max_retry_duration (2s)"), "{l}");
        assert_eq!(l["tag"], "app.e");
    }
    let admin = b.admin.clone().unwrap();
    b.wait_metric(
        "berth_dead_letter_records_total{sink=\"search\",reason=\"retry_expired\"}",
        20.0,
    );
    assert_eq!(os.count(index), 0);

    // The server is back: later records are delivered, none of the expired ones again.
    proxy.set_down(false);
    send_acked(&b, "app.e", &(20..30).map(|n| rec_n("expire", n)).collect::<Vec<_>>());
    wait_count(&os, index, 10, "the 10 records sent after the recovery");
    let (counts, ns) = ids(&os, index);
    assert!(counts.values().all(|c| *c == 1));
    assert_eq!(ns, (20..30).collect::<Vec<u64>>());
    wait_for(WAIT, "everything acknowledged", || {
        let (_, m) = http_get(&admin, "/metrics");
        (metric_value(&m, "berth_sink_lag_records{sink=\"search\"}") == 0.0).then_some(())
    });
    assert_eq!(read_ndjson(&dl).len(), 20, "no more dead letters");
}

#[test]
fn max_retry_duration_dead_letters_a_batch_answered_503_forever() {
    let os = Osmem::start();
    let faults = FaultServer::start(
        &os.addr,
        Faults {
            max_body: usize::MAX,
            unavailable_every: 1,
            item_429_every: 0,
            gate: 0,
            retry_after: 0,
            forbidden: false,
        },
    );
    let b = start(&config(
        &faults.url(),
        "compression = \"none\"\ntimeout = \"1s\"\nmax_retry_duration = \"1s\"",
    ));
    send_acked(&b, "app.u", &(0..5).map(|n| rec_n("unavailable", n)).collect::<Vec<_>>());
    let lines = wait_expired(&b.path().join("dead/search.ndjson"), 5);
    assert_eq!(lines.len(), 5, "{lines:?}");
    for l in &lines {
        assert_eq!(l["status"], 503, "{l}");
        assert!(l["reason"].as_str().unwrap().contains("last error: http status 503"), "{l}");
    }
    assert!(faults.stats.lock().unwrap().unavailable >= 2, "retried before giving up");
    let admin = b.admin.clone().unwrap();
    wait_for(WAIT, "the expired records acknowledged", || {
        let (_, m) = http_get(&admin, "/metrics");
        (metric_value(&m, "berth_sink_lag_records{sink=\"search\"}") == 0.0).then_some(m)
    });
    b.wait_metric("berth_dead_letter_records_total{sink=\"search\",reason=\"retry_expired\"}", 5.0);
}

/// A 403 for the whole request (the access policy refuses the role) is bounded by
/// `max_retry_duration` like any other failure that holds the sink: one rule for both
/// network sinks (CloudWatch's credentials errors honour it too).
#[test]
fn max_retry_duration_bounds_a_request_refused_403() {
    let os = Osmem::start();
    let faults = FaultServer::start(
        &os.addr,
        Faults {
            max_body: usize::MAX,
            unavailable_every: 0,
            item_429_every: 0,
            gate: 0,
            retry_after: 0,
            forbidden: true,
        },
    );
    let b = start(&config(
        &faults.url(),
        "compression = \"none\"\ntimeout = \"1s\"\nmax_retry_duration = \"2s\"",
    ));
    send_acked(&b, "app.f", &(0..5).map(|n| rec_n("forbidden", n)).collect::<Vec<_>>());
    let lines = wait_expired(&b.path().join("dead/search.ndjson"), 5);
    assert_eq!(lines.len(), 5, "{lines:?}");
    for l in &lines {
        assert_eq!(l["error_type"], "retry_expired", "{l}");
        assert!(l["reason"].as_str().unwrap().contains("http status 403"), "{l}");
    }
    assert!(b.metric("berth_output_retries_total{sink=\"search\",reason=\"unauthorized\"}") >= 2.0);
    assert!(b.stderr_text().contains("refused as unauthorized"));
}

/// Send `records` as Forward-mode requests of `per` entries each and wait for each ack:
/// one request is one delivery, so the sink has many bodies to send at once.
fn send_forward_acked(b: &Berth, tag: &str, records: &[rmpv::Value], per: usize) {
    let mut c = Client::connect(&format!("tcp://{}", b.tcp_addr()));
    c.set_read_timeout(WAIT);
    for (i, part) in records.chunks(per).enumerate() {
        let entries = part
            .iter()
            .enumerate()
            .map(|(j, r)| {
                rmpv::Value::Array(vec![
                    rmpv::Value::from(BASE_TIME + (i * per + j) as i64),
                    r.clone(),
                ])
            })
            .collect();
        let chunk = format!("f{i}");
        let req = mp(&rmpv::Value::Array(vec![
            s(tag),
            rmpv::Value::Array(entries),
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
    let admin = b.admin.clone().unwrap();
    wait_for(WAIT, "everything acknowledged", || {
        let (_, m) = http_get(&admin, "/metrics");
        (metric_value(&m, "berth_sink_lag_records{sink=\"search\"}") == 0.0).then_some(())
    });
}

#[test]
fn concurrency_4_indexes_every_record_exactly_once_and_acknowledges_all() {
    let os = Osmem::start();
    let b = start(&config(&os.url(), "concurrency = 4\nbatch_max_records = 7"));
    let index = "logs-conc-2026.11.22";
    send_forward_acked(&b, "app.x", &(0..300).map(|n| rec_n("conc", n)).collect::<Vec<_>>(), 100);
    wait_count(&os, index, 300, "300 documents with 4 requests in flight");
    let (counts, ns) = ids(&os, index);
    assert_eq!(counts.len(), 300, "distinct ids");
    assert!(counts.values().all(|c| *c == 1));
    assert_eq!(ns, (0..300).collect::<Vec<u64>>());
    wait_acknowledged(&b);
    assert!(read_ndjson(&b.path().join("dead/search.ndjson")).is_empty(), "no dead letters");
}

#[test]
fn concurrency_4_through_413_503_and_item_429_ends_with_every_record_exactly_once() {
    let os = Osmem::start();
    // The gate holds the first 4 requests until all 4 are in flight at once.
    let faults = FaultServer::start(
        &os.addr,
        Faults {
            max_body: 1500,
            unavailable_every: 3,
            item_429_every: 4,
            gate: 4,
            retry_after: 0,
            forbidden: false,
        },
    );
    let b = start(&config(
        &faults.url(),
        "compression = \"none\"\nconcurrency = 4\nbatch_max_records = 10",
    ));
    let index = "logs-concfaults-2026.11.22";
    send_forward_acked(
        &b,
        "app.x",
        &(0..200).map(|n| rec_n("concfaults", n)).collect::<Vec<_>>(),
        100,
    );
    wait_count(&os, index, 200, "200 documents through the faults, 4 requests in flight");
    let (counts, ns) = ids(&os, index);
    assert_eq!(counts.len(), 200, "distinct ids");
    assert!(counts.values().all(|c| *c == 1));
    assert_eq!(ns, (0..200).collect::<Vec<u64>>());
    let st = faults.stats.lock().unwrap().clone();
    assert_eq!(st.gate_peak, 4, "4 requests in flight at once: {st:?}");
    assert!(
        st.too_large > 0 && st.unavailable > 0 && st.items_429 > 0,
        "every fault happened: {st:?}"
    );
    wait_acknowledged(&b);
    assert!(read_ndjson(&b.path().join("dead/search.ndjson")).is_empty(), "no dead letters");
}

/// A Docker part of a split line (`partial_*` keys), for index `logs-join-…`.
fn join_part(id: &str, ordinal: u32, last: bool, log: &str) -> rmpv::Value {
    rec(&[
        ("app", "join"),
        ("container_id", "c0ffee"),
        ("source", "stdout"),
        ("log", log),
        ("partial_message", "true"),
        ("partial_id", id),
        ("partial_ordinal", &ordinal.to_string()),
        ("partial_last", if last { "true" } else { "false" }),
    ])
}

/// What the joiner sends for an offset depends on what the buffer held when it read: at
/// shutdown a line still waiting for its other part is delivered incomplete; a host crash
/// before the cursor's fsync sends the sink over that offset again after the restart, when
/// the other part is there and the line is joined whole — at the same offset. The whole
/// line is another document: a 409 on the incomplete one's `_id` must not pass it off as
/// delivered.
#[test]
fn a_line_joined_whole_after_a_restart_is_stored_though_its_first_part_was() {
    let os = Osmem::start();
    let cfg = config(&os.url(), "") + "\n[enrich.partial]\ntimeout = \"60s\"\n";
    let index = "logs-join-2026.11.22";
    let mut b = start(&cfg);
    send_acked(&b, "docker.web", &[rec(&[("app", "join"), ("log", "before")])]);
    wait_count(&os, index, 1, "the line before");
    send_acked(&b, "docker.web", &[join_part("p1", 1, false, "AAA")]);
    b.wait_metric("berth_sink_lag_records{sink=\"search\"}", 1.0);
    // The cursor as a host crash would leave it: not past the held part.
    let cursor = b.path().join("buffer/cursors/search");
    let saved = std::fs::read(&cursor).unwrap();
    assert!(b.stop().success());
    let logs = |os: &Osmem| {
        let mut v: Vec<String> = os
            .search_all(index)
            .iter()
            .map(|h| h["_source"]["log"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(logs(&os), vec!["AAA", "before"], "the held part, flushed incomplete");
    std::fs::write(&cursor, &saved).unwrap();

    let b = restart(b, &cfg);
    send_acked(
        &b,
        "docker.web",
        &[join_part("p1", 2, true, "BBB"), rec(&[("app", "join"), ("log", "after")])],
    );
    wait_count(&os, index, 4, "the joined line and the one after");
    assert_eq!(logs(&os), vec!["AAA", "AAABBB", "after", "before"]);
    let ids: std::collections::BTreeSet<String> =
        os.search_all(index).iter().map(|h| h["_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 4, "distinct ids: {ids:?}");
    let admin = b.admin.clone().unwrap();
    wait_for(WAIT, "the buffer to be fully acknowledged", || {
        let (_, m) = http_get(&admin, "/metrics");
        (metric_value(&m, "berth_sink_lag_records{sink=\"search\"}") == 0.0).then_some(())
    });
}
