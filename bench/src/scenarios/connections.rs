//! Scenario 6, connections: resident memory per idle WebSocket connection, over 1,000 of them:
//! (RSS with them open − RSS before) / count, on a fresh server. Tasks play no part, so
//! sandbox and native are the same server here; the baseline is the idle server itself.

use std::time::Duration;

use serde::Serialize;

use crate::client::Client;
use crate::report::{Row, Target, Unit};
use crate::server::{Launcher, Mode};

pub const NAME: &str = "6 connections";

/// Time for the server to finish each connection's set-up (and the allocator to settle)
/// before its memory is read.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    pub connections: usize,
    pub idle_server_rss_bytes: u64,
    pub with_connections_rss_bytes: u64,
    pub per_connection_bytes: f64,
}

pub async fn run(launcher: &Launcher, count: usize) -> anyhow::Result<Connections> {
    let server = launcher.start("connections", Mode::Sandbox, &[]).await?;
    tokio::time::sleep(SETTLE).await;
    let before = server.memory()?.rss_bytes;
    let clients = Client::connect_many(server.addr, count, &[]).await?;
    tokio::time::sleep(SETTLE).await;
    let after = server.memory()?.rss_bytes;
    for client in clients {
        client.close().await;
    }
    server.stop().await?;
    Ok(Connections {
        connections: count,
        idle_server_rss_bytes: before,
        with_connections_rss_bytes: after,
        per_connection_bytes: after.saturating_sub(before) as f64 / count as f64,
    })
}

impl Connections {
    pub fn rows(&self) -> Vec<Row> {
        vec![
            Row::new(
                NAME,
                format!(
                    "RSS per idle connection ({})",
                    Unit::Count.format(self.connections as f64)
                ),
                Unit::Bytes,
                self.per_connection_bytes,
            )
            .context(
                "idle server",
                self.idle_server_rss_bytes as f64,
                Unit::Bytes,
            )
            .target(Target::AtMost {
                value: 16.0 * 1024.0,
            }),
        ]
    }
}
