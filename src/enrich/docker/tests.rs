use super::*;
use crate::config::CopyKey;
use crate::docker::{Change, Options};
use std::sync::atomic::AtomicU64;

/// A cache whose engine is connected to `socket` without running its events task (which
/// would list the containers and count in the fake engine).
fn connected(cfg: DockerEnrichConfig, socket: &str) -> Arc<DockerCache> {
    let engine = Engine::new(Options { socket: Some(socket.to_string()), ..Default::default() });
    engine.set_connected(bollard::Docker::connect_with_host(socket).unwrap());
    Arc::new(DockerCache::new(cfg, Arc::new(engine), Arc::new(Metrics::new())))
}

/// A cache whose engine is never connected.
fn offline(cfg: DockerEnrichConfig) -> Arc<DockerCache> {
    let engine = Arc::new(Engine::new(Options::default()));
    Arc::new(DockerCache::new(cfg, engine, Arc::new(Metrics::new())))
}

pub(super) fn cfg() -> DockerEnrichConfig {
    DockerEnrichConfig {
        enabled: true,
        socket: None,
        fields: DockerField::DEFAULTS.to_vec(),
        labels: vec![
            CopyKey { name: "team".into(), key: "team".into() },
            CopyKey { name: "com.example.v".into(), key: "version".into() },
        ],
        env: vec![CopyKey { name: "APP_ENV".into(), key: "app_env".into() }],
        removed_grace_period: Duration::from_secs(60),
        inspect_wait: Duration::from_secs(2),
        max_containers: 2,
    }
}

/// A fake engine on a Unix socket: answers the container list after 200 ms (counting
/// those requests) and inspect after `inspect_delay`, as Docker 20.10 answers them.
async fn fake_engine(
    dir: &std::path::Path,
    inspect_delay: Duration,
    list_image: &'static str,
) -> (String, Arc<AtomicU64>) {
    let inspects = Arc::new(AtomicU64::new(0));
    let n = Arc::clone(&inspects);
    let socket = crate::docker::fake::serve(dir, move |line| {
        let n = Arc::clone(&n);
        async move {
            let body = if line.contains("/containers/json") {
                n.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                // The id filter also matches prefixes: only the exact id counts.
                format!(
                    r#"[{{"Id":"abcd","Names":["/other"],"Image":"x","Labels":{{}},"State":"running"}},
                    {{"Id":"abc","Names":["/web"],"Image":"{list_image}","Labels":{{"com.amazonaws.ecs.cluster":"c1"}},"State":"exited"}}]"#
                )
            } else if line.contains("/containers/abc/json") {
                tokio::time::sleep(inspect_delay).await;
                r#"{"Id":"abc","Name":"/web","Config":{"Image":"img:1","Labels":{"com.amazonaws.ecs.cluster":"c1"},"Env":["APP_ENV=prod"]}}"#.to_string()
            } else {
                "{}".to_string()
            };
            crate::docker::fake::json(&body)
        }
    })
    .await;
    (socket, inspects)
}

#[tokio::test]
async fn concurrent_first_lookups_share_one_list_and_wait_for_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, inspects) = fake_engine(dir.path(), Duration::from_millis(400), "img:1").await;
    let cache = connected(cfg(), &socket);
    let mut waits = Vec::new();
    for _ in 0..5 {
        let c = Arc::clone(&cache);
        waits.push(tokio::spawn(async move {
            match c.lookup("abc") {
                Lookup::Wait(rx) => c.wait("abc", rx).await,
                Lookup::Hit(h) => Some(h),
                Lookup::Miss => None,
            }
        }));
    }
    for w in waits {
        let c = w.await.unwrap().expect("listed");
        assert_eq!(c.name, "web");
        assert_eq!(c.fields.get("ecs_cluster"), Some("c1"));
        assert_eq!(
            c.fields.get("app_env"),
            Some("prod"),
            "the environment came within inspect_wait"
        );
    }
    assert_eq!(inspects.load(Ordering::SeqCst), 1, "one list for five first sights");
    assert!(matches!(cache.lookup("abc"), Lookup::Hit(_)));
}

/// Docker holds an exiting container's inspect until its logs have drained — into
/// berth. The lookup must not depend on it: here inspect never answers. Without `env`
/// the list answers at once; with it, the first sight waits `inspect_wait` for the
/// environment, then takes the entry without it, and later lookups wait no more.
#[tokio::test]
async fn lookup_does_not_wait_for_a_stuck_inspect() {
    for with_env in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _) = fake_engine(dir.path(), Duration::from_secs(3600), "img:1").await;
        let mut cfg = cfg();
        cfg.inspect_wait = Duration::from_millis(500);
        if !with_env {
            cfg.env.clear();
        }
        let cache = connected(cfg, &socket);
        let t = std::time::Instant::now();
        let c = match cache.lookup("abc") {
            Lookup::Wait(rx) => cache.wait("abc", rx).await,
            _ => panic!("first sight waits for the lookup"),
        };
        let c = c.expect("found in the list");
        let took = t.elapsed();
        assert!(
            took < Duration::from_millis(if with_env { 1500 } else { 450 }),
            "with env {with_env}: {took:?}"
        );
        assert_eq!(c.fields.get("ecs_cluster"), Some("c1"));
        assert_eq!(c.fields.get("image"), Some("img:1"));
        assert_eq!(c.fields.get("app_env"), None);
        if with_env {
            assert!(took >= Duration::from_millis(450), "waited for the environment: {took:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(matches!(cache.lookup("abc"), Lookup::Hit(_)), "past the deadline: no more waits");
    }
}

/// Once an image's tag has moved (a redeploy pulled `:latest` again), the list names a
/// running container's image by id; the inspect tells the name it was created from.
#[tokio::test]
async fn image_named_by_id_in_the_list_is_completed_by_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, _) = fake_engine(dir.path(), Duration::from_millis(100), "sha256:0123abcd").await;
    let mut cfg = cfg();
    cfg.env.clear();
    let cache = connected(cfg, &socket);
    let c = match cache.lookup("abc") {
        Lookup::Wait(rx) => cache.wait("abc", rx).await,
        _ => panic!("first sight waits for the lookup"),
    };
    assert_eq!(c.expect("found").fields.get("image"), Some("img:1"));
}

#[tokio::test(start_paused = true)]
async fn lru_bound_and_removed_entries_expire_after_the_grace_period() {
    let cache = offline(cfg());
    let put = |id: &str| {
        cache.put(&Inspected { id: id.into(), name: format!("/{id}"), ..Default::default() })
    };
    put("a");
    put("b");
    assert!(matches!(cache.lookup("a"), Lookup::Hit(_)), "a used last");
    put("c");
    assert!(cache.get("b").is_none(), "b was the least recently used");
    assert!(cache.get("a").is_some() && cache.get("c").is_some());
    // Docker is not connected: an unknown id is a miss at once, no wait.
    assert!(matches!(cache.lookup("zzz"), Lookup::Miss));

    cache.mark_removed("a");
    tokio::time::advance(Duration::from_secs(59)).await;
    cache.sweep();
    assert!(cache.get("a").is_some(), "still within the grace period");
    assert_eq!(cache.status().removed_containers, 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    cache.sweep();
    assert!(cache.get("a").is_none(), "expired");
    assert!(cache.get("c").is_some(), "running containers do not expire");
}

fn summary(id: &str, running: bool) -> Summary {
    Summary {
        id: id.into(),
        name: format!("/{id}"),
        image: "img:1".into(),
        labels: [(crate::docker::labels::ECS_CLUSTER.to_string(), "c1".to_string())].into(),
        state: Some(if running {
            bollard::models::ContainerSummaryStateEnum::RUNNING
        } else {
            bollard::models::ContainerSummaryStateEnum::EXITED
        }),
    }
}

/// The engine's changes as the cache applies them: a list after a (re)connection fills
/// the running containers, refreshes cached ones and marks removed what it lacks; `start`
/// and `rename` store what the list said; `destroy` marks removed; a lookup that failed
/// or found nothing leaves a negative entry.
#[tokio::test]
async fn changes_from_the_engine_keep_the_cache() {
    let mut cfg = cfg();
    cfg.env.clear();
    cfg.max_containers = 10;
    let cache = offline(cfg);
    cache.put(&Inspected { id: "old".into(), name: "/old".into(), ..Default::default() });
    cache.put(&Inspected { id: "stopped".into(), name: "/x".into(), ..Default::default() });
    let list: HashMap<String, Summary> = [summary("run", true), summary("stopped", false)]
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    cache.apply(Change::Listed(Arc::new(list)));
    assert_eq!(cache.get("run").unwrap().fields.get("ecs_cluster"), Some("c1"));
    assert_eq!(cache.get("stopped").unwrap().name, "stopped", "a cached one is refreshed");
    assert_eq!(cache.status().removed_containers, 1, "old is gone from the list");

    let mut renamed = summary("run", true);
    renamed.name = "/new-name".into();
    cache.apply(Change::Renamed { id: "run".into(), found: Found::Listed(renamed) });
    assert_eq!(cache.get("run").unwrap().name, "new-name");
    cache.apply(Change::Started { id: "late".into(), found: Found::Listed(summary("late", true)) });
    assert!(cache.get("late").is_some());
    cache.apply(Change::Destroyed("late".into()));
    assert_eq!(cache.status().removed_containers, 2);
    assert!(cache.get("late").is_some(), "kept for the grace period");

    cache.apply(Change::Started { id: "gone".into(), found: Found::Gone });
    cache.apply(Change::Started { id: "err".into(), found: Found::Failed("timed out".into()) });
    assert!(matches!(cache.lookup("gone"), Lookup::Miss));
    assert!(matches!(cache.lookup("err"), Lookup::Miss));
    assert_eq!(cache.metrics.enrich_docker_errors.get(), 1, "the failed lookup is counted");
}
