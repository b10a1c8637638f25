//! Tasks written in languages other than Rust, built from registry packages: `visits_py`,
//! Python made into a WebAssembly component by componentize-py from PyPI
//! (`just build-py-tasks`), against the world `taskhost:task/command` in wit/. It counts
//! visits in its granted key-value store; a copy without the grant is refused.
//!
//! The component holds a whole Python runtime (18 MB), whose first compile takes tens of
//! seconds: the server loads it after it starts, and serves the other tasks meanwhile.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::common::{TaskFolder, listed, start_server_with};

/// How long the Python component may take to load: one compile on one low-priority core, on
/// a machine that runs the other tests at the same time.
const LOAD_WITHIN: Duration = Duration::from_secs(300);

/// A folder of the test's own (a data dir, a compile cache), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "languages-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_task_loads_after_start_counts_in_its_store_and_is_refused_without_its_grant() {
    let data = Scratch::new("data");
    // A compile cache of its own, empty: the component really compiles, so the test sees
    // the server serve while it does.
    let cache = Scratch::new("cache");
    let folder = TaskFolder::with(&["visits_py.wasm", "visits_py.toml", "echo.wasm"]);
    folder.copy_in("visits_py.wasm", "visits_bare.wasm");
    let mut config = folder.config();
    config.capabilities.data_dir = data.0.clone();
    config.cache_dir = Some(cache.0.clone());
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;

    // Loading: listed as such, refused with a message saying so, and other tasks run.
    let list = client.request(json!({"type": "list"})).await;
    let visits = listed(&list, "visits_py").expect("visits_py is listed");
    assert_eq!(visits["state"], "loading", "{visits}");
    assert_eq!(listed(&list, "echo").unwrap()["state"], "ready", "{list}");
    let refused = client.submit("visits_py", json!({"page": "home"})).await;
    assert_eq!(refused["type"], "rejected", "{refused}");
    assert_eq!(refused["error"]["code"], "unknown_task", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("still loading"), "{message}");
    let echoed = client.run("echo", json!("while Python compiles")).await;
    assert_eq!(echoed["result"], "while Python compiles", "{echoed}");

    // Loaded: the server pushes the new list.
    client
        .recv_until(LOAD_WITHIN, "tasks_changed", |list| {
            ["visits_py", "visits_bare"]
                .iter()
                .all(|name| listed(list, name).is_some_and(|task| task["state"] == "ready"))
        })
        .await;
    let list = client.request(json!({"type": "list"})).await;
    let visits = listed(&list, "visits_py").unwrap();
    assert_eq!(visits["kind"], "component", "{visits}");
    assert_eq!(visits["capabilities"]["kv"], "visits", "{visits}");

    for expected in 1..=3 {
        let ended = client.run("visits_py", json!({"page": "home"})).await;
        assert_eq!(ended["type"], "finished", "{ended}");
        assert_eq!(ended["result"], expected, "{ended}");
    }
    let other = client.run("visits_py", json!({"page": "about"})).await;
    assert_eq!(other["result"], 1, "{other}");

    // Its own checks fail as a task's do, with its message.
    let bad = client.run("visits_py", json!({"pages": "home"})).await;
    assert_eq!(bad["type"], "failed", "{bad}");
    let message = bad["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(r#"{"page": "P"}"#), "{message}");

    // The same component without its manifest has no grant: refused, never a trap.
    let refused = client.run("visits_bare", json!({"page": "home"})).await;
    assert_eq!(refused["type"], "failed", "{refused}");
    assert_eq!(refused["error"]["code"], "exit", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not allowed"), "{message}");
    assert!(message.contains("key-value"), "names what: {message}");
    assert!(message.contains("[capabilities] kv"), "says how: {message}");

    // Dropped into the watched folder, a large module loads too (off the async threads, on
    // the low-priority compile thread; from the compile cache here, since its bytes are the
    // same).
    folder.copy_in("visits_py.wasm", "visits_dropped.wasm");
    client
        .recv_until(LOAD_WITHIN, "tasks_changed", |list| {
            listed(list, "visits_dropped").is_some_and(|task| task["state"] == "ready")
        })
        .await;
    let refused = client.run("visits_dropped", json!({"page": "home"})).await;
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not allowed"), "{refused}");

    let metrics = crate::lifecycle::http(server.addr, "GET", "/metrics")
        .await
        .1;
    assert!(
        metrics.contains("taskhost_capability_refused_total{capability=\"kv\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("taskhost_capability_calls_total{capability=\"kv\",outcome=\"ok\"} 4"),
        "{metrics}"
    );
}
