use super::*;
use std::sync::atomic::AtomicUsize;
use tokio_util::sync::CancellationToken;

const LIST: &str = r#"[{"Id":"aaa","Names":["/a"],"Image":"img:1","Labels":{"com.amazonaws.ecs.cluster":"c1"},"State":"running"},
    {"Id":"bbb","Names":["/b"],"Image":"img:1","Labels":{},"State":"exited"}]"#;
const ONE: &str = r#"[{"Id":"ccc","Names":["/c"],"Image":"img:2","Labels":{},"State":"running"}]"#;
const EVENTS: &str = concat!(
    r#"{"Type":"container","Action":"start","Actor":{"ID":"ccc","Attributes":{"name":"c"}}}"#,
    "\n",
    r#"{"Type":"container","Action":"destroy","Actor":{"ID":"aaa","Attributes":{}}}"#,
    "\n"
);

/// The request lines of the events streams the fake served.
static EVENTS_REQUESTS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// A fake engine on a Unix socket: the version, the list (all, or filtered by id), and an
/// events stream that sends two events, then ends the first time and stays open after.
/// Counts the events requests.
async fn fake_engine(dir: &std::path::Path) -> (String, Arc<AtomicUsize>) {
    let streams = Arc::new(AtomicUsize::new(0));
    let n = Arc::clone(&streams);
    let socket = fake::serve(dir, move |line| {
        let n = Arc::clone(&n);
        async move {
            if line.contains("/events") {
                EVENTS_REQUESTS.lock().unwrap().push(line.clone());
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
                let first = n.fetch_add(1, Ordering::SeqCst) == 0;
                // The first stream ends; later ones are held open: no more events, no end.
                let events = format!("{head}{EVENTS}");
                return if first { fake::Reply::Close(events) } else { fake::Reply::Hold(events) };
            }
            fake::json(if line.contains("/version") {
                r#"{"ApiVersion":"1.41","MinAPIVersion":"1.12","Version":"20.10.24"}"#
            } else if line.contains("/containers/json") && line.contains("filters") {
                ONE
            } else if line.contains("/containers/json") {
                LIST
            } else {
                "{}"
            })
        }
    })
    .await;
    (socket, streams)
}

async fn next(rx: &mut broadcast::Receiver<Change>) -> Change {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a change within 10 s")
        .expect("no lag, not closed")
}

fn ids(c: &Containers) -> Vec<&str> {
    let mut v: Vec<&str> = c.keys().map(String::as_str).collect();
    v.sort_unstable();
    v
}

/// The events task lists on every connection, looks each `start` up in the list, keeps the
/// snapshot, and tells every subscriber the same changes; a subscriber attaching later
/// gets the list as it is now, from the same single events stream.
#[tokio::test]
async fn one_events_stream_and_one_list_for_every_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, streams) = fake_engine(dir.path()).await;
    let engine = Arc::new(Engine::new(Options {
        socket: Some(socket),
        request_timeout: Duration::from_secs(5),
    }));
    assert!(!engine.is_connected());
    let mut first = engine.subscribe();
    let mut second = engine.subscribe();
    assert_eq!(first.snapshot.listed, 0);
    let stop = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&engine).run(stop.clone()));

    for sub in [&mut first, &mut second] {
        match next(&mut sub.changes).await {
            Change::Listed(c) => {
                assert_eq!(ids(&c), ["aaa", "bbb"]);
                assert!(c["aaa"].running() && !c["bbb"].running());
                assert_eq!(c["aaa"].label(labels::ECS_CLUSTER), Some("c1"));
            }
            other => panic!("{other:?}"),
        }
        match next(&mut sub.changes).await {
            Change::Started { id, found: Found::Listed(s) } => {
                assert_eq!(
                    (id.as_str(), s.name.as_str(), s.image.as_str()),
                    ("ccc", "/c", "img:2")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(next(&mut sub.changes).await, Change::Destroyed(id) if id == "aaa"));
        // The first events stream ends: reconnected, listed again.
        assert!(matches!(next(&mut sub.changes).await, Change::Disconnected));
        assert!(matches!(next(&mut sub.changes).await, Change::Listed(_)));
    }
    assert!(engine.is_connected());
    assert_eq!(engine.status().failed_connects, 0);
    // The second connection's events: ccc started (again), aaa destroyed; then quiet.
    for _ in 0..2 {
        next(&mut first.changes).await;
    }
    let late = engine.subscribe();
    assert!(late.snapshot.connected);
    assert_eq!(late.snapshot.listed, 2);
    assert_eq!(ids(&late.snapshot.containers), ["bbb", "ccc"], "the list, kept by the events");
    assert_eq!(streams.load(Ordering::SeqCst), 2, "one events stream per connection, shared");
    let asked = EVENTS_REQUESTS.lock().unwrap().clone();
    assert!(
        asked.len() == 2 && asked.iter().all(|l| l.contains("since=")),
        "every stream replays from before its list: {asked:?}"
    );
    stop.cancel();
    task.await.unwrap();
}

/// No engine: every attempt fails, counted, the first one ends `wait_first`; lookups fail
/// at once without a connection.
#[tokio::test(start_paused = true)]
async fn unreachable_engine_fails_fast_and_retries_with_backoff() {
    let engine = Arc::new(Engine::new(Options {
        socket: Some("unix:///nonexistent/docker.sock".into()),
        ..Default::default()
    }));
    let stop = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&engine).run(stop.clone()));
    engine.wait_first(Duration::from_secs(1)).await;
    assert_eq!(engine.status().failed_connects, 1);
    assert!(engine.status().error.is_some_and(|e| e.contains("/nonexistent/docker.sock")));
    // Attempts at 0, 0.5, 1.5, 3.5 s (doubling from 500 ms).
    tokio::time::sleep(Duration::from_millis(3600)).await;
    assert_eq!(engine.status().failed_connects, 4);
    assert!(matches!(
        engine.find("x", Duration::from_secs(1)).await,
        Err(DockerError::NotConnected)
    ));
    assert!(matches!(
        engine.resources("x", Duration::from_secs(1)).await,
        Err(DockerError::NotConnected)
    ));
    stop.cancel();
    task.await.unwrap();
}

#[test]
fn events_are_replayed_from_shortly_before_the_list() {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(super::events::replay_from(t), "1699999998");
    assert_eq!(super::events::replay_from(std::time::UNIX_EPOCH), "0");
}
