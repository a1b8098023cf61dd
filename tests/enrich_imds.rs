//! EC2 host fields: `berth run` against a fake IMDSv2 (tests/common/imds.rs) on loopback,
//! reached through `AWS_EC2_METADATA_SERVICE_ENDPOINT` as the AWS SDKs do; and against no
//! IMDS at all (connection refused), where records flow without host fields.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::imds::{self, FakeImds};
use common::*;
use serde_json::Value;

fn ndjson(b: &Berth, tag: &str, n: usize) -> Vec<Value> {
    let path = b.path().join("out").join(format!("{tag}.ndjson"));
    wait_for(WAIT, &format!("{n} events for {tag}"), || {
        let got = read_ndjson(&path);
        (got.len() >= n).then_some(got)
    })
}

fn status(b: &Berth) -> Value {
    serde_json::from_str(&b.http_get("/v1/status").1).expect("status json")
}

/// Docker enrichment off (no engine needed here): the environment override is part of
/// what is tested.
const NO_DOCKER: (&str, &str) = ("BERTH_ENRICH__DOCKER__ENABLED", "false");

#[test]
fn imds_host_fields_are_added_to_every_record() {
    let fake = FakeImds::start();
    imds::self_check(&fake);
    let b = start_in(
        tempfile::tempdir().unwrap(),
        FILE_SINK,
        &[
            ("AWS_EC2_METADATA_DISABLED", "false"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &fake.endpoint),
            NO_DOCKER,
        ],
    );
    let mut c = Client::connect(&format!("tcp://{}", b.tcp_addr()));
    c.send(&message("app.plain", 1, rec(&[("msg", "hi")]), None), usize::MAX).unwrap();
    c.send(&message("app.plain", 2, rec(&[("msg", "mine"), ("region", "kept")]), None), usize::MAX)
        .unwrap();
    let docker_like = rec(&[
        ("container_id", "0123"),
        ("container_name", "/x"),
        ("source", "stdout"),
        ("log", "l"),
    ]);
    c.send(&message("docker.x", 3, docker_like, Some("c1")), usize::MAX).unwrap();
    assert_eq!(c.read_exact_n(ack_bytes("c1").len()), ack_bytes("c1"), "acked once stored");

    let got = ndjson(&b, "app.plain", 2);
    let r = &got[0]["record"];
    assert_eq!(r["msg"], "hi");
    assert_eq!(r["ec2_instance_id"], imds::INSTANCE_ID);
    assert_eq!(r["availability_zone"], imds::AZ);
    assert_eq!(r["region"], imds::REGION);
    assert_eq!(r["instance_type"], imds::INSTANCE_TYPE);
    assert_eq!(got[1]["record"]["region"], "kept", "a key the record has is not overwritten");
    assert_eq!(got[1]["record"]["ec2_instance_id"], imds::INSTANCE_ID);
    let d = &ndjson(&b, "docker.x", 1)[0]["record"];
    assert_eq!(d["ec2_instance_id"], imds::INSTANCE_ID);
    assert_eq!(d["container_name"], "/x", "no Docker metadata: Docker's own field stays");

    // One token (PUT with a TTL), then GETs carrying it; nothing refused.
    let reqs = fake.requests();
    let puts: Vec<_> = reqs.iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(puts.len(), 1, "{reqs:?}");
    assert_eq!(puts[0].ttl.as_deref(), Some("21600"));
    let gets: Vec<_> = reqs.iter().filter(|r| r.method == "GET").collect();
    assert_eq!(gets.len(), 4, "fetched once, cached: {reqs:?}");
    assert!(
        gets.iter().all(|r| r.token.as_deref() == Some("fake-token-1") && r.status == 200),
        "{reqs:?}"
    );

    let st = status(&b);
    assert_eq!(st["enrich"]["ec2"]["state"], "available", "{st}");
    assert_eq!(st["enrich"]["ec2"]["fields"]["region"], imds::REGION);
    assert!(
        st["enrich"]["docker"].is_null(),
        "docker enrichment disabled by the environment: {st}"
    );
    assert_eq!(b.metric("berth_enrich_records_total{result=\"not_docker\"}"), 2.0);
}

#[test]
fn without_imds_records_flow_without_host_fields_and_one_warning() {
    // A loopback port with nothing listening: connection refused, as off EC2 with a
    // reachable-but-closed endpoint.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let b = start_in(
        tempfile::tempdir().unwrap(),
        FILE_SINK,
        &[
            ("AWS_EC2_METADATA_DISABLED", "false"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint),
            NO_DOCKER,
        ],
    );
    let mut c = Client::connect(&format!("tcp://{}", b.tcp_addr()));
    for i in 0..20 {
        c.send(&message("app.plain", i, rec(&[("n", &i.to_string())]), None), usize::MAX).unwrap();
    }
    let got = ndjson(&b, "app.plain", 20);
    for e in &got {
        assert!(e["record"].get("ec2_instance_id").is_none(), "{e}");
        assert_eq!(e["record"].as_object().unwrap().len(), 1, "unchanged: {e}");
    }
    let st = status(&b);
    assert_eq!(st["enrich"]["ec2"]["state"], "unavailable", "{st}");
    let warnings =
        b.stderr_text().lines().filter(|l| l.contains("EC2 instance metadata unavailable")).count();
    assert_eq!(warnings, 1, "one warning, not one per record:\n{}", b.stderr_text());
}
