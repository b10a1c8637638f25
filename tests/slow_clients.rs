//! Clients that do not keep up, or do not finish what they start: a reader that never reads
//! must not stall anyone else, and silent or half-sent connections are closed on deadlines.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use taskhost::ProtocolApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{start_server_with, test_config};

/// A WebSocket connection opened by hand (handshake answered) that then does only what the
/// test tells it to.
async fn raw_websocket(addr: SocketAddr) -> TcpStream {
    // A small receive buffer, so that a client that does not read fills it soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// Reads until `count` tasks have finished, skipping every other message.
async fn finished(client: &mut crate::common::Client, count: usize) {
    let mut ended = 0;
    while ended < count {
        let message = client.recv_within(Duration::from_secs(60)).await;
        match message["type"].as_str() {
            Some("finished") => ended += 1,
            Some("failed") | Some("rejected") => panic!("{message}"),
            _ => {}
        }
    }
}

/// Reads until the server closes the connection; returns how long that took.
async fn time_until_closed(stream: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server did not close the connection within {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_stalls_no_one_else() {
    let mut config = test_config();
    config.slow_client = Duration::from_secs(2);
    let server = start_server_with(config, ProtocolApp).await;
    let _never_reads = raw_websocket(server.addr).await;
    let mut sender = server.client().await;

    // 6,000 chat lines of 2,000 characters, more than the non-reader's outbox and socket
    // buffers hold, sent 500 at a time (one connection's cap is below 6,000).
    let text = "x".repeat(2000);
    let started = Instant::now();
    for batch in 0..12 {
        for n in 0..500 {
            let task = json!({"type": "task", "task": "broadcast", "ref": batch * 500 + n,
                              "input": {"user": "ann", "text": text}});
            sender.send(task).await;
        }
        finished(&mut sender, 500).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    // The sender is still served at once, however far behind the other reader is.
    let finished = sender.run("echo", json!("prompt")).await;
    assert_eq!(finished["result"], "prompt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_slow_client_deadline() {
    let mut config = test_config();
    config.slow_client = Duration::from_millis(500);
    // An outbox that takes every broadcast, so the writer really pushes them at the socket
    // until the client's buffers are full (a small one would drop most of them first).
    config.outbox_bytes = 64 << 20;
    let server = start_server_with(config, ProtocolApp).await;
    let mut never_reads = raw_websocket(server.addr).await;
    let mut sender = server.client().await;
    let text = "y".repeat(2000);
    let closed =
        |metrics: &str| metrics.contains("taskhost_closed_total{reason=\"slow_client\"} 1");
    // Broadcasts until the socket's buffers are full and the deadline passes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for _ in 0..200 {
            sender
                .send(json!({"type": "task", "task": "broadcast", "input": {"text": text}}))
                .await;
        }
        finished(&mut sender, 200).await;
        let (_, metrics) = crate::lifecycle::http(server.addr, "GET", "/metrics").await;
        if closed(&metrics) {
            break;
        }
        assert!(Instant::now() < deadline, "never closed: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reading now drains what was buffered, then the end.
    time_until_closed(&mut never_reads, Duration::from_secs(10)).await;
    // The sender was never held up.
    let finished = sender.run("echo", json!("fine")).await;
    assert_eq!(finished["result"], "fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_no_ping_is_closed() {
    let mut config = test_config();
    config.ping_interval = Duration::from_millis(300);
    let server = start_server_with(config, ProtocolApp).await;
    let mut silent = raw_websocket(server.addr).await;
    let took = time_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(500),
        "closed too soon: {took:?}"
    );

    // A client that answers pings (tungstenite does, while it reads) stays: it reads for
    // the whole second that `slow` takes, through three pings.
    let mut client = server.client().await;
    let finished = client.run("slow", json!({"seconds": 1.2})).await;
    assert_eq!(finished["result"], "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_never_finishes_arriving_is_closed() {
    let mut config = test_config();
    config.frame_timeout = Duration::from_millis(500);
    let server = start_server_with(config, ProtocolApp).await;
    let mut half = raw_websocket(server.addr).await;
    // A masked text frame announcing 1,000 bytes, of which 10 arrive.
    let mut frame = vec![0x81, 0xFE, 0x03, 0xE8, 1, 2, 3, 4];
    frame.extend_from_slice(&[b'a' ^ 1; 10]);
    half.write_all(&frame).await.unwrap();
    let took = time_until_closed(&mut half, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(400),
        "closed too soon: {took:?}"
    );

    // An idle connection is not a late frame: it stays (until its pings go unanswered).
    let mut idle = server.client().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let finished = idle.run("echo", json!(1)).await;
    assert_eq!(finished["result"], 1);
}
