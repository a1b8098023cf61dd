//! The process's IMDS client (`berth::imds`) against the fake IMDSv2 of tests/common/imds.rs:
//! one token for many reads, 404 as "absent" (no Spot notice, no lifecycle state), and no
//! answer as an error that says so.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use berth::imds::{path, Imds, ImdsError};
use common::imds::{self, FakeImds};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn values_absent_items_and_one_token() {
    let fake = FakeImds::start();
    imds::self_check(&fake);
    let client = Imds::new(&fake.endpoint).unwrap();
    rt().block_on(async {
        assert_eq!(
            client.get(path::INSTANCE_ID).await.unwrap().as_deref(),
            Some(imds::INSTANCE_ID)
        );
        assert_eq!(client.require(path::REGION).await.unwrap(), imds::REGION);
        // No notice and no Auto Scaling group: 404, which is an answer, not an error.
        for p in [path::SPOT_INSTANCE_ACTION, path::REBALANCE, path::TARGET_LIFECYCLE_STATE] {
            assert_eq!(client.get(p).await.unwrap(), None, "{p}");
        }
        // Where the item must exist, 404 is an error naming the path.
        let e = client.require(path::SPOT_INSTANCE_ACTION).await.unwrap_err();
        assert!(matches!(e, ImdsError::Status { status: 404, .. }), "{e}");
        assert!(e.to_string().contains(path::SPOT_INSTANCE_ACTION), "{e}");
    });
    let reqs = fake.requests();
    let puts: Vec<_> = reqs.iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(puts.len(), 1, "one token for every read: {reqs:?}");
    assert_eq!(puts[0].ttl.as_deref(), Some("21600"));
    assert!(
        reqs.iter()
            .filter(|r| r.method == "GET")
            .all(|r| r.token.as_deref() == Some("fake-token-1")),
        "{reqs:?}"
    );
}

#[test]
fn nothing_listening_is_an_error_not_absent() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client = Imds::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let started = std::time::Instant::now();
    let res = rt().block_on(client.get(path::SPOT_INSTANCE_ACTION));
    assert!(matches!(res, Err(ImdsError::Unreachable { .. })), "{res:?}");
    // Off EC2 a start must not wait long for it (connection refused is not retried).
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
}

/// The drain's triggers flip on command in the fake (its tests rely on it), read through
/// berth's own IMDS client: absent (404) is `None`, not an error.
#[test]
fn event_paths_are_absent_until_set_and_absent_again_when_cleared() {
    let fake = FakeImds::start();
    let imds = Imds::new(&fake.endpoint).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        assert_eq!(imds.get(path::TARGET_LIFECYCLE_STATE).await.unwrap(), None);
        fake.set(path::TARGET_LIFECYCLE_STATE, Some("InService"));
        assert_eq!(
            imds.get(path::TARGET_LIFECYCLE_STATE).await.unwrap().as_deref(),
            Some("InService")
        );
        fake.set(path::TARGET_LIFECYCLE_STATE, Some("Terminated"));
        assert_eq!(
            imds.get(path::TARGET_LIFECYCLE_STATE).await.unwrap().as_deref(),
            Some("Terminated")
        );
        let notice = r#"{"action": "terminate", "time": "2017-09-18T08:22:00Z"}"#;
        fake.set(path::SPOT_INSTANCE_ACTION, Some(notice));
        let got = imds.get(path::SPOT_INSTANCE_ACTION).await.unwrap().unwrap();
        assert_eq!(berth::drain::plan::parse_spot_notice(&got).unwrap().action, "terminate");
        fake.set(path::SPOT_INSTANCE_ACTION, None);
        assert_eq!(imds.get(path::SPOT_INSTANCE_ACTION).await.unwrap(), None);
    });
}
