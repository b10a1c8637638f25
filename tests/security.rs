//! Safe on a network: who may open the task channel and read /metrics (Host, Origin, the
//! token), TLS, and the caps on connections. Each test talks raw HTTP or real WebSockets to a
//! real server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use taskhost::ProtocolApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{TaskFolder, start_server_with, test_config};

const TOKEN: &str = "correct horse battery staple";

/// Sends `head` (a request head without its final blank line) and returns the status code
/// and the body.
async fn request(addr: SocketAddr, head: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response(&mut stream).await
}

async fn read_response(stream: &mut (impl AsyncReadExt + Unpin)) -> (u16, String) {
    // A refusal closes the connection; an upgrade does not: read the head, and the body
    // only when the connection ends.
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap_or(0);
        response.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&response);
        if read == 0 || text.starts_with("HTTP/1.1 101") && text.contains("\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A WebSocket upgrade of `/` (with `target`'s query, if any) with `extra` header lines.
fn upgrade(addr: SocketAddr, target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_need_a_name_of_this_server_and_an_allowed_origin() {
    let server = start_server_with(test_config(), ProtocolApp).await;
    let addr = server.addr;
    let (status, body) = request(addr, &upgrade(addr, "/", "\r\nOrigin: null")).await;
    assert_eq!(status, 403, "Origin: null is refused by default: {body}");
    assert!(body.contains("--allow-origin null"), "{body}");

    // DNS rebinding: a foreign page whose name now resolves to this machine.
    let rebound = format!(
        "GET / HTTP/1.1\r\nHost: evil.example:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Origin: http://evil.example:{}",
        addr.port(),
        addr.port()
    );
    let (status, body) = request(addr, &rebound).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--allow-host"), "{body}");
    let metrics = "GET /metrics HTTP/1.1
Host: evil.example
Origin: http://evil.example";
    assert_eq!(request(addr, metrics).await.0, 403, "not /metrics either");

    let own = format!("\r\nOrigin: http://{addr}");
    assert_eq!(request(addr, &upgrade(addr, "/", &own)).await.0, 101);

    let mut config = test_config();
    config.allowed_origins = vec!["null".to_owned()];
    config.allowed_hosts = vec!["tasks.example".to_owned()];
    let lenient = start_server_with(config, ProtocolApp).await;
    let addr = lenient.addr;
    assert_eq!(
        request(addr, &upgrade(addr, "/", "\r\nOrigin: null"))
            .await
            .0,
        101
    );
    let named = format!(
        "GET / HTTP/1.1\r\nHost: tasks.example:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nOrigin: http://tasks.example:{port}",
        port = addr.port()
    );
    assert_eq!(request(addr, &named).await.0, 101, "an --allow-host name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_task_channel_and_metrics_need_it() {
    let mut config = test_config();
    config.token = Some(taskhost::config::Secret::token(TOKEN));
    let server = start_server_with(config, ProtocolApp).await;
    let addr = server.addr;

    let (status, body) = request(addr, &upgrade(addr, "/", "")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let wrong = "\r\nAuthorization: Bearer correct horse battery stapler";
    assert_eq!(request(addr, &upgrade(addr, "/", wrong)).await.0, 401);
    let bearer = format!("\r\nAuthorization: Bearer {TOKEN}");
    assert_eq!(request(addr, &upgrade(addr, "/", &bearer)).await.0, 101);
    let query = "/?token=correct%20horse+battery%20staple";
    assert_eq!(request(addr, &upgrade(addr, query, "")).await.0, 101);

    let get = |path: &str, extra: &str| format!("GET {path} HTTP/1.1\r\nHost: {addr}{extra}");
    assert_eq!(request(addr, &get("/metrics", "")).await.0, 401);
    assert_eq!(request(addr, &get("/metrics", &bearer)).await.0, 200);
    assert_eq!(
        request(addr, &get("/healthz", "")).await.0,
        200,
        "health stays open"
    );
    assert_eq!(
        request(addr, &get("/", "")).await.0,
        200,
        "the page stays open"
    );

    // A real client with the token runs tasks.
    let mut client = crate::common::Client::connect(&format!(
        "ws://{addr}/?token=correct%20horse%20battery%20staple"
    ))
    .await;
    let finished = client.run("echo", json!({"with": "token"})).await;
    assert_eq!(finished["result"], json!({"with": "token"}));
}

#[test]
fn the_binary_will_not_serve_other_machines_without_a_token() {
    let output = crate::common::taskhost_command()
        .args(["--listen", "0.0.0.0:0", "--tasks", "/nonexistent"])
        .output()
        .expect("run taskhost");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--token") && stderr.contains("--no-token"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_wss_and_https() {
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let folder = TaskFolder::with(&["echo.wasm"]);
    let cert = folder.path.join("cert.pem");
    let key = folder.path.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let mut config = folder.config();
    config.tls = Some(taskhost::config::TlsFiles { cert, key });
    let server = start_server_with(config, ProtocolApp).await;

    let mut roots = RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(client_config));
    let connect = || async {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.expect("a TLS handshake")
    };

    let mut https = connect().await;
    https
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut https).await, (200, "ok\n".to_owned()));

    let url = format!("wss://localhost:{}/", server.addr.port());
    let (mut socket, _) = tokio_tungstenite::client_async(url, connect().await)
        .await
        .expect("a WebSocket over TLS");
    use futures_util::{SinkExt, StreamExt};
    let hello = socket.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("\"hello\""), "{hello}");
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            r#"{"type":"task","task":"echo","input":"over tls"}"#,
        ))
        .await
        .unwrap();
    loop {
        let message = socket.next().await.unwrap().unwrap();
        let message: serde_json::Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        if message["type"] == "finished" {
            assert_eq!(message["result"], "over tls");
            break;
        }
    }

    // Plain text to a TLS port gets no answer it could misread.
    let (status, _) = request(server.addr, "GET /healthz HTTP/1.1\r\nHost: localhost").await;
    assert_eq!(status, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_address_and_overall() {
    let mut config = test_config();
    config.max_connections_per_ip = Some(20);
    let server = start_server_with(config, ProtocolApp).await;
    let addr = server.addr;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(server.client().await);
    }
    let (status, body) = request(addr, &upgrade(addr, "/", "")).await;
    assert_eq!(status, 429, "the 21st connection from one address: {body}");
    assert!(body.contains("--max-connections-per-ip"), "{body}");
    let get = format!("GET /healthz HTTP/1.1\r\nHost: {addr}");
    assert_eq!(
        request(addr, &get).await.0,
        200,
        "plain requests are not counted per address"
    );
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = server.client().await;
    let finished = again.run("echo", json!(1)).await;
    assert_eq!(
        finished["result"], 1,
        "a closed connection's place came back"
    );

    let mut config = test_config();
    config.max_connections = 5;
    let small = start_server_with(config, ProtocolApp).await;
    let addr = small.addr;
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let get = format!("GET /healthz HTTP/1.1\r\nHost: {addr}");
    let (status, body) = request(addr, &get).await;
    assert_eq!(status, 503, "past --max-connections: {body}");
    assert!(body.contains("--max-connections"), "{body}");
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(request(addr, &get).await.0, 200);
    let metrics = format!("GET /metrics HTTP/1.1\r\nHost: {addr}");
    let (_, metrics) = request(addr, &metrics).await;
    assert!(
        metrics.contains("taskhost_refused_total{reason=\"max_connections\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_ref_is_refused_and_the_connection_goes_on() {
    let server = start_server_with(test_config(), ProtocolApp).await;
    let mut client = server.client().await;
    client
        .send(
            json!({"type": "task", "task": "slow", "input": {"seconds": 0.1},
                     "ref": "r".repeat(10_000)}),
        )
        .await;
    let rejected = client.recv().await;
    assert_eq!(rejected["type"], "rejected", "{rejected}");
    assert_eq!(rejected["error"]["code"], "bad_request", "{rejected}");
    assert!(
        rejected.get("ref").is_none(),
        "a ref over the limit is not echoed"
    );
    let finished = client.run("echo", json!("still usable")).await;
    assert_eq!(finished["result"], "still usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_inputs_are_bounded_in_bytes_across_the_server() {
    let mut config = test_config();
    config.task_workers = 1;
    config.queue_bytes = 64 << 10;
    let server = start_server_with(config, ProtocolApp).await;
    let mut client = server.client().await;
    let big = "z".repeat(40 << 10);
    let first = client
        .submit("slow", json!({"seconds": 0.5, "pad": big}))
        .await;
    assert_eq!(first["type"], "accepted", "{first}");
    let refused = client.submit("echo", json!(big)).await;
    assert_eq!(refused["type"], "rejected", "{refused}");
    assert_eq!(refused["error"]["code"], "queue_full", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--queue-bytes"),
        "{refused}"
    );
    client.recv_for(first["task_id"].as_u64().unwrap()).await;
    let finished = client.run("echo", json!(big)).await;
    assert_eq!(finished["type"], "finished", "the bytes came back");
}
