//! Scenario 6, connections: resident memory per idle WebSocket connection, as a slope: a
//! quarter of the connections are opened first, then the rest, and the figure is the RSS the
//! rest added, per connection. A fresh server's allocator holds memory freed after start-up
//! (modules compiled, caches read), which the first connections take without growing the
//! RSS; measured from an empty server, 1,000 connections read 3.6-4.3 KiB each where their
//! cost at 4,000 was about 9 KiB (docs/PERFORMANCE.md). Tasks play no part, so sandbox and
//! native are the same server here; the context is the idle server's RSS.

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
    /// Connections open at the end.
    pub connections: usize,
    /// Connections opened first, before the slope is measured.
    pub first: usize,
    pub idle_server_rss_bytes: u64,
    pub with_first_rss_bytes: u64,
    pub with_connections_rss_bytes: u64,
    /// What the first ones added, per connection: flattered by the allocator's free memory.
    pub first_per_connection_bytes: f64,
    /// What the rest added, per connection: the figure reported.
    pub per_connection_bytes: f64,
}

pub async fn run(launcher: &Launcher, count: usize) -> anyhow::Result<Connections> {
    let first = count / 4;
    let server = launcher.start("connections", Mode::Sandbox, &[]).await?;
    tokio::time::sleep(SETTLE).await;
    let before = server.memory()?.rss_bytes;
    let mut clients = Client::connect_many(server.addr, first, &[]).await?;
    tokio::time::sleep(SETTLE).await;
    let with_first = server.memory()?.rss_bytes;
    clients.extend(Client::connect_many(server.addr, count - first, &[]).await?);
    tokio::time::sleep(SETTLE).await;
    let after = server.memory()?.rss_bytes;
    for client in clients {
        client.close().await;
    }
    server.stop().await?;
    let per = |added: u64, connections: usize| added as f64 / connections.max(1) as f64;
    Ok(Connections {
        connections: count,
        first,
        idle_server_rss_bytes: before,
        with_first_rss_bytes: with_first,
        with_connections_rss_bytes: after,
        first_per_connection_bytes: per(with_first.saturating_sub(before), first),
        per_connection_bytes: per(after.saturating_sub(with_first), count - first),
    })
}

impl Connections {
    pub fn rows(&self) -> Vec<Row> {
        vec![
            Row::new(
                NAME,
                format!(
                    "RSS per idle connection ({} -> {})",
                    Unit::Count.format(self.first as f64),
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
