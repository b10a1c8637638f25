//! The outbound HTTP capability against real HTTP servers started here, on 127.0.0.1 ports
//! of their own: the allowlist before every request and redirect, internal addresses behind
//! names, the caps, and the task's deadline and cancel during a slow response; first the
//! host's client on its own, then `fetch` (Rust) and `fetch_c` (C) in the built binary.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use taskhost::http_capability::{Allowlist, HttpCaps, HttpError, HttpRequest, HttpSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::common::{Client, TaskFolder, taskhost_command};

/// A small HTTP/1.1 server that records what reaches it. Routes:
/// - `/hello`: 200, `hello`, with the header `x-test: yes`;
/// - `/redirect?to=URL`: 302 to URL (taken as it is, unescaped);
/// - `/headers`: 200, the request's header lines as the body;
/// - `/slow`: 200 with a 1000-byte length, 5 bytes of it, then nothing for a minute;
/// - `/big`: 200, 100,000 bytes.
pub struct OriginServer {
    pub address: SocketAddr,
    /// TCP connections accepted.
    connections: Arc<AtomicUsize>,
    /// Connections closed by the client while the server was still writing `/slow`.
    closed_mid_response: Arc<AtomicUsize>,
    /// Request lines received (`GET /hello HTTP/1.1`).
    requests: Arc<Mutex<Vec<String>>>,
    _accepting: AbortOnDropHandle<()>,
}

impl OriginServer {
    pub async fn start() -> OriginServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed_mid_response = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (counted, closed, seen) = (
            connections.clone(),
            closed_mid_response.clone(),
            requests.clone(),
        );
        let accepting = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, seen.clone(), closed.clone()));
            }
        });
        OriginServer {
            address,
            connections,
            closed_mid_response,
            requests,
            _accepting: AbortOnDropHandle::new(accepting),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    pub fn closed_mid_response(&self) -> usize {
        self.closed_mid_response.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut stream: TcpStream,
    requests: Arc<Mutex<Vec<String>>>,
    closed_mid_response: Arc<AtomicUsize>,
) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
        if head.len() > 64 << 10 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    requests.lock().unwrap().push(request_line.clone());
    let target = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
    let reply = |status: &str, headers: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let response = if target == "/hello" {
        reply("200 OK", "x-test: yes\r\n", "hello")
    } else if let Some(to) = target.strip_prefix("/redirect?to=") {
        reply("302 Found", &format!("location: {to}\r\n"), "")
    } else if target == "/headers" {
        let lines = head.split("\r\n").skip(1).collect::<Vec<_>>().join("\n");
        reply("200 OK", "", &lines)
    } else if target == "/big" {
        reply("200 OK", "", &"x".repeat(100_000))
    } else if target == "/slow" {
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nstart";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        // Nothing more for a minute; a client that gives up closes the connection, which
        // the read sees.
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buffer)).await
        {
            closed_mid_response.fetch_add(1, Ordering::SeqCst);
        }
        return;
    } else {
        reply("404 Not Found", "", "no such route")
    };
    let _ = stream.write_all(response.as_bytes()).await; // The client may have gone.
}

fn session(origins: &[String], deadline: Duration) -> HttpSession {
    let allowlist = Allowlist::parse(origins).unwrap();
    HttpSession::new(
        Arc::new(allowlist),
        HttpCaps::default(),
        Instant::now() + deadline,
    )
}

fn get(url: &str) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        url: url.into(),
        ..HttpRequest::default()
    }
}

fn assert_not_allowed(error: &HttpError, origin: &str) {
    let message = error.to_string();
    assert!(
        matches!(error, HttpError::NotAllowed { .. })
            && message.contains("not allowed")
            && message.contains(origin),
        "expected a refusal naming {origin}: {message}"
    );
}

#[tokio::test]
async fn a_listed_origin_is_reached_and_an_unlisted_one_receives_nothing() {
    let listed = OriginServer::start().await;
    let unlisted = OriginServer::start().await;
    let http = session(&[listed.origin()], Duration::from_secs(10));

    let response = http.send(get(&listed.url("/hello"))).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "hello");
    assert_eq!(response.headers["x-test"], "yes");
    assert_eq!(listed.requests(), vec!["GET /hello HTTP/1.1"]);

    // The same server under other spellings of its address is the same origin.
    let port = listed.address.port();
    for spelling in [
        format!("http://2130706433:{port}/hello"),
        format!("http://0x7f.0.0.1:{port}/hello"),
        format!("http://someone@127.0.0.1:{port}/hello"),
    ] {
        let response = http.send(get(&spelling)).await.unwrap();
        assert_eq!(response.body, "hello", "{spelling}");
    }

    let error = http.send(get(&unlisted.url("/hello"))).await.unwrap_err();
    assert_not_allowed(&error, &unlisted.origin());
    // `listed@unlisted` is the unlisted host with a user name.
    let trick = format!("http://{}@{}/hello", listed.address, unlisted.address);
    let error = http.send(get(&trick)).await.unwrap_err();
    assert_not_allowed(&error, &unlisted.origin());
    assert_eq!(
        unlisted.connections(),
        0,
        "the unlisted origin was contacted"
    );
}

#[tokio::test]
async fn a_redirect_to_an_unlisted_origin_is_refused_before_it_is_followed() {
    let listed = OriginServer::start().await;
    let unlisted = OriginServer::start().await;
    let http = session(&[listed.origin()], Duration::from_secs(10));

    let redirect = listed.url(&format!("/redirect?to={}", unlisted.url("/hello")));
    let error = http.send(get(&redirect)).await.unwrap_err();
    assert_not_allowed(&error, &unlisted.origin());
    assert!(error.to_string().contains("redirected"), "{error}");
    assert_eq!(unlisted.connections(), 0, "the redirect was followed");

    // A redirect within the listed origin is followed.
    let inside = listed.url(&format!("/redirect?to={}", listed.url("/hello")));
    assert_eq!(http.send(get(&inside)).await.unwrap().body, "hello");
    // So is a relative one.
    let relative = listed.url("/redirect?to=/hello");
    assert_eq!(http.send(get(&relative)).await.unwrap().body, "hello");
}

#[tokio::test]
async fn credentials_do_not_follow_a_redirect_to_another_origin() {
    let first = OriginServer::start().await;
    let second = OriginServer::start().await;
    let http = session(&[first.origin(), second.origin()], Duration::from_secs(10));
    let mut request = get(&first.url(&format!("/redirect?to={}", second.url("/headers"))));
    request
        .headers
        .insert("authorization".into(), "Bearer secret".into());
    request.headers.insert("x-kept".into(), "1".into());
    let response = http.send(request).await.unwrap();
    assert!(!response.body.contains("secret"), "{}", response.body);
    assert!(response.body.contains("x-kept: 1"), "{}", response.body);
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_unless_listed() {
    let server = OriginServer::start().await;
    let port = server.address.port();
    let by_name = format!("http://localhost:{port}/hello");

    // The address is listed, the name is not.
    let http = session(&[server.origin()], Duration::from_secs(10));
    let error = http.send(get(&by_name)).await.unwrap_err();
    assert_not_allowed(&error, &format!("http://localhost:{port}"));

    // The name is listed, but it resolves to loopback, which it may reach only when the
    // address is listed as well.
    let http = session(
        &[format!("http://localhost:{port}")],
        Duration::from_secs(10),
    );
    let error = http.send(get(&by_name)).await.unwrap_err();
    assert_not_allowed(&error, &format!("http://localhost:{port}"));
    assert!(error.to_string().contains("127.0.0.1"), "{error}");
    assert_eq!(server.connections(), 0);

    let http = session(
        &[format!("http://localhost:{port}"), server.origin()],
        Duration::from_secs(10),
    );
    assert_eq!(http.send(get(&by_name)).await.unwrap().body, "hello");
}

#[tokio::test]
async fn requests_and_bytes_are_capped_per_task() {
    let server = OriginServer::start().await;
    let caps = HttpCaps {
        max_requests: 2,
        max_response_bytes: 50_000,
        ..HttpCaps::default()
    };
    let allowlist = Arc::new(Allowlist::parse(&[server.origin()]).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let http = HttpSession::new(allowlist.clone(), caps, deadline);
    http.send(get(&server.url("/hello"))).await.unwrap();
    let error = http.send(get(&server.url("/big"))).await.unwrap_err();
    assert!(matches!(error, HttpError::Limit(_)), "{error}");
    assert!(error.to_string().contains("50000 bytes"), "{error}");
    let error = http.send(get(&server.url("/hello"))).await.unwrap_err();
    assert!(error.to_string().contains("at most 2"), "{error}");
    assert_eq!(server.connections(), 2);

    // A redirect loop ends at the redirect cap.
    let http = HttpSession::new(allowlist, HttpCaps::default(), deadline);
    let looping = server.url("/redirect?to=/redirect?to=/redirect?to=/redirect?to=/redirect?to=/redirect?to=/redirect?to=/hello");
    let error = http.send(get(&looping)).await.unwrap_err();
    assert!(error.to_string().contains("at most 5 redirects"), "{error}");
}

#[tokio::test]
async fn the_task_deadline_ends_a_slow_response_promptly() {
    let server = OriginServer::start().await;
    let http = session(&[server.origin()], Duration::from_millis(300));
    let started = std::time::Instant::now();
    let error = http.send(get(&server.url("/slow"))).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, HttpError::Timeout { .. }), "{error}");
    assert!(took < Duration::from_millis(1000), "took {took:?}");
    wait_for(|| server.closed_mid_response() == 1).await;
}

#[tokio::test]
async fn a_cancel_closes_the_connection_promptly() {
    let server = OriginServer::start().await;
    let http = Arc::new(session(&[server.origin()], Duration::from_secs(60)));
    let slow = server.url("/slow");
    let request = tokio::spawn({
        let http = http.clone();
        async move { http.send(get(&slow)).await }
    });
    wait_for(|| server.requests().len() == 1).await;
    request.abort();
    let started = std::time::Instant::now();
    wait_for(|| server.closed_mid_response() == 1).await;
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// Waits up to two seconds for `condition`.
async fn wait_for(condition: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the condition did not become true within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `taskhost` process serving a tasks folder, killed when dropped.
struct Binary {
    child: Child,
    address: String,
}

impl Drop for Binary {
    fn drop(&mut self) {
        // Gone already or not: either way it must not outlive the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    /// Starts the built binary on a free port, serving `tasks`, once it says it listens.
    fn start(tasks: &Path) -> Binary {
        let address = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let mut child = taskhost_command()
            .args([
                "--listen",
                &address,
                "--task-workers",
                "8",
                "--timeout-ms",
                "2000",
            ])
            .arg("--tasks")
            .arg(tasks)
            .arg("--data-dir")
            .arg(tasks.join("data"))
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start taskhost");
        crate::common::listening_address(&mut child);
        Binary { child, address }
    }

    async fn client(&self) -> Client {
        Client::connect(&format!("ws://{}/", self.address)).await
    }
}

/// A tasks folder with `fetch` (and `fetch_c`, the C one, and `fetch_component`, the
/// component through wasi:http) granted `origins`, and copies of `fetch` and
/// `fetch_component` with no manifest (`fetch_ungranted`, `fetch_component_ungranted`).
fn fetch_folder(origins: &[String]) -> TaskFolder {
    let folder = TaskFolder::with(&["fetch.wasm", "fetch_c.wasm", "fetch_component.wasm"]);
    folder.copy_in("fetch.wasm", "fetch_ungranted.wasm");
    folder.copy_in("fetch_component.wasm", "fetch_component_ungranted.wasm");
    let grant = format!(
        "[capabilities]\nhttp = [{}]\n",
        origins
            .iter()
            .map(|origin| format!("{origin:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for task in FETCH_TASKS {
        folder.write(&format!("{task}.toml"), &grant);
    }
    folder
}

/// The bundled tasks that fetch: Rust and C modules through the `http` capability's JSON
/// call, and the Rust one built as a component, through `wasi:http/outgoing-handler`.
const FETCH_TASKS: [&str; 3] = ["fetch", "fetch_c", "fetch_component"];

fn failure_message(message: &Value) -> &str {
    assert_eq!(message["type"], "failed", "{message}");
    message["error"]["message"].as_str().unwrap()
}

#[tokio::test]
async fn fetch_reaches_a_listed_origin_and_no_other_through_the_binary() {
    let listed = OriginServer::start().await;
    let unlisted = OriginServer::start().await;
    let folder = fetch_folder(&[listed.origin()]);
    let server = Binary::start(&folder.path);
    let mut client = server.client().await;

    for task in FETCH_TASKS {
        let finished = client.run(task, json!({"url": listed.url("/hello")})).await;
        assert_eq!(finished["type"], "finished", "{task}: {finished}");
        assert_eq!(finished["result"]["status"], 200, "{finished}");
        assert_eq!(finished["result"]["body"], "hello", "{finished}");
        assert_eq!(finished["result"]["headers"]["x-test"], "yes", "{finished}");

        let failed = client
            .run(task, json!({"url": unlisted.url("/hello")}))
            .await;
        let message = failure_message(&failed);
        assert!(
            message.contains("not allowed") && message.contains(&unlisted.origin()),
            "{task}: {message}"
        );
        let redirected = listed.url(&format!("/redirect?to={}", unlisted.url("/hello")));
        let failed = client.run(task, json!({"url": redirected})).await;
        assert!(failure_message(&failed).contains("not allowed"), "{failed}");
    }
    assert_eq!(
        unlisted.connections(),
        0,
        "the unlisted origin was contacted"
    );

    let failed = client
        .run("fetch_ungranted", json!({"url": listed.url("/hello")}))
        .await;
    let message = failure_message(&failed);
    assert!(message.contains("not allowed"), "{message}");
    assert!(message.contains("grants no origins"), "{message}");
    let failed = client
        .run(
            "fetch_component_ungranted",
            json!({"url": listed.url("/hello")}),
        )
        .await;
    let message = failure_message(&failed);
    assert!(message.contains("not allowed"), "{message}");
    assert!(message.contains(&listed.origin()), "{message}");
    assert_eq!(
        listed.requests().len(),
        FETCH_TASKS.len() * 2,
        "a refused request reached the origin: {:?}",
        listed.requests()
    );

    // A component follows a redirect within the listed origin itself (wasi:http follows
    // none), and the host checks the new request again.
    let within = listed.url(&format!("/redirect?to={}", listed.url("/hello")));
    let finished = client.run("fetch_component", json!({"url": within})).await;
    assert_eq!(finished["result"]["body"], "hello", "{finished}");

    // The refusals are counted.
    let (_, metrics) =
        crate::lifecycle::http(server.address.parse().unwrap(), "GET", "/metrics").await;
    assert!(
        metrics.lines().any(|line| line
            .starts_with("taskhost_capability_refused_total{capability=\"http\"}")
            && !line.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test]
async fn cancel_and_timeout_end_a_task_waiting_on_a_slow_response() {
    let origin = OriginServer::start().await;
    let folder = fetch_folder(&[origin.origin()]);
    let server = Binary::start(&folder.path);
    let mut client = server.client().await;

    for (round, task) in ["fetch", "fetch_component"].into_iter().enumerate() {
        // Timeout: the task's limit of 300 ms ends it while the response trickles.
        let started = std::time::Instant::now();
        client
            .send(
                json!({"type": "task", "task": task, "input": {"url": origin.url("/slow")},
                         "limits": {"timeout_ms": 300}}),
            )
            .await;
        let accepted = client.recv().await;
        let ended = client.recv_for(accepted["task_id"].as_u64().unwrap()).await;
        assert_eq!(ended["error"]["code"], "timeout", "{task}: {ended}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{task}: took {:?}",
            started.elapsed()
        );
        wait_for(|| origin.closed_mid_response() == round * 2 + 1).await;

        // Cancel: the task ends at once, and the host closes its connection to the origin.
        let task_id = client
            .submit(task, json!({"url": origin.url("/slow")}))
            .await;
        let task_id = task_id["task_id"].as_u64().unwrap();
        wait_for(|| origin.requests().len() == round * 2 + 2).await;
        let started = std::time::Instant::now();
        client
            .send(json!({"type": "cancel", "task_id": task_id}))
            .await;
        let ended = client.recv_for(task_id).await;
        assert_eq!(ended["error"]["code"], "cancelled", "{task}: {ended}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{task}: took {:?}",
            started.elapsed()
        );
        wait_for(|| origin.closed_mid_response() == round * 2 + 2).await;
    }
}

/// The cost of an http capability call against the same request made natively by the host's
/// client (docs/PERFORMANCE.md): a measurement, not a check. Run it on its own:
/// `cargo test --release -p taskhost -- --ignored --nocapture measure_http_call_cost`.
#[tokio::test]
#[ignore = "a measurement for docs/PERFORMANCE.md; run it on its own"]
async fn measure_http_call_cost() {
    const ROUNDS: usize = 300;
    let origin = OriginServer::start().await;
    let folder = fetch_folder(&[origin.origin()]);
    folder.copy_in("echo.wasm", "echo.wasm");
    let server = Binary::start(&folder.path);
    let mut client = server.client().await;
    let url = origin.url("/hello");

    // native, echo, fetch (the JSON call), fetch_component (wasi:http)
    let mut timings: [Vec<Duration>; 4] = Default::default();
    for round in 0..ROUNDS + 20 {
        // A session per request, as a task has one (and its cap of 32 requests).
        let native = session(&[origin.origin()], Duration::from_secs(60));
        let started = std::time::Instant::now();
        native.send(get(&url)).await.unwrap();
        let mut times = [started.elapsed(); 4];
        for (slot, task) in [(1, "echo"), (2, "fetch"), (3, "fetch_component")] {
            let started = std::time::Instant::now();
            let finished = client.run(task, json!({"url": url})).await;
            times[slot] = started.elapsed();
            assert_eq!(finished["type"], "finished", "{task}: {finished}");
        }
        if round >= 20 {
            // The first rounds warm caches and connections; they are not counted.
            for (timing, time) in timings.iter_mut().zip(times) {
                timing.push(time);
            }
        }
    }
    let [native, echo, fetch, component] = timings.map(|mut times| {
        times.sort();
        times[times.len() / 2]
    });
    println!("median of {ROUNDS} rounds, one GET of 5 bytes from 127.0.0.1:");
    println!("  native (HttpSession::send in the host):      {native:?}");
    println!("  echo task round trip (no call):              {echo:?}");
    println!("  fetch task round trip (one http call):       {fetch:?}");
    println!("  fetch_component round trip (wasi:http):      {component:?}");
    for (what, time) in [("fetch", fetch), ("fetch_component", component)] {
        println!(
            "  the request through the sandbox, {what} - echo:  {:?} ({:?} over native)",
            time.saturating_sub(echo),
            time.saturating_sub(echo).saturating_sub(native)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_s_http_caps_bound_each_task() {
    let origin = OriginServer::start().await;
    let folder = fetch_folder(&[origin.origin()]);
    let mut config = folder.config();
    config.watch = false;
    config.capabilities.data_dir = folder.path.join("data");
    // --http-requests 1 --http-response-bytes 2000
    config.capabilities.http.max_requests = 1;
    config.capabilities.http.max_response_bytes = 2000;
    config.capabilities.http.max_request_bytes = 1000;
    let server = crate::common::start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;

    for task in ["fetch", "fetch_component"] {
        let finished = client.run(task, json!({"url": origin.url("/hello")})).await;
        assert_eq!(finished["result"]["body"], "hello", "{task}: {finished}");

        // A redirect is a second request: past the task's one.
        let redirect = origin.url(&format!("/redirect?to={}", origin.url("/hello")));
        let failed = client.run(task, json!({"url": redirect})).await;
        let message = failure_message(&failed);
        assert!(message.contains("--http-requests"), "{task}: {message}");

        // 100,000 bytes: past the task's 2,000.
        let failed = client.run(task, json!({"url": origin.url("/big")})).await;
        let message = failure_message(&failed);
        assert!(
            message.contains("--http-response-bytes"),
            "{task}: {message}"
        );

        // A body of 5,000 bytes: past the 1,000 one request may carry.
        let requests_before = origin.requests().len();
        let post = json!({"url": origin.url("/hello"), "method": "POST", "body": "x".repeat(5000)});
        let failed = client.run(task, post).await;
        let message = failure_message(&failed);
        assert!(
            message.contains("--http-request-bytes"),
            "{task}: {message}"
        );
        assert!(
            origin.requests().len() <= requests_before + 1,
            "{task}: {:?}",
            origin.requests()
        );
    }
    let metrics = crate::lifecycle::http(server.addr, "GET", "/metrics")
        .await
        .1;
    assert!(
        metrics.contains(
            "taskhost_capability_calls_total{capability=\"http\",outcome=\"limit_reached\"} 6"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_component_may_not_reach_loopback_behind_a_listed_name() {
    let origin = OriginServer::start().await;
    let by_name = format!("http://localhost:{}", origin.address.port());
    let folder = fetch_folder(std::slice::from_ref(&by_name));
    let server = Binary::start(&folder.path);
    let mut client = server.client().await;

    let failed = client
        .run(
            "fetch_component",
            json!({"url": format!("{by_name}/hello")}),
        )
        .await;
    let message = failure_message(&failed);
    assert!(
        message.contains("not allowed") && message.contains("internal"),
        "{message}"
    );
    assert!(message.contains(&by_name), "{message}");
    assert_eq!(
        origin.connections(),
        0,
        "the loopback address was contacted"
    );
}
