//! The connection to the broker and the JetStream objects the nodes share: the work-queue
//! stream, its durable pull consumer and the results bucket. [`connect`] never gives up: a
//! node whose broker is unreachable says so in its log and keeps trying while it serves
//! (tasks are refused `broker_unavailable` meanwhile).
//!
//! async-nats's `create_key_value` sends stream settings that nats-server 2.9 refuses, so the
//! bucket's stream (`KV_<bucket>`) is created here with the key-value settings, then opened
//! with `get_key_value`.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType, Stream};
use async_nats::jetstream::{self, kv};
use async_nats::{Client, ConnectOptions, Event};

use super::envelope::Subjects;
use crate::config::NatsSettings;
use crate::metrics::ClusterCounters;

/// How long a JetStream request waits for the broker before it counts as unavailable.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Between two attempts to set the stream and bucket up.
const SETUP_RETRY: Duration = Duration::from_secs(1);

/// What a node holds of the broker once it is set up. Cheap to clone.
#[derive(Clone)]
pub(super) struct Link {
    pub client: Client,
    pub js: jetstream::Context,
    pub tasks: Stream,
    pub consumer: PullConsumer,
    pub results: kv::Store,
}

impl Link {
    /// Whether the client is connected now (it reconnects by itself).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// What the streams are set up with: the result store's bounds.
pub(super) struct Bounds {
    pub result_ttl: Duration,
    pub result_bytes: u64,
}

/// Connects and sets the stream, consumer and bucket up, retrying until it works.
pub(super) async fn connect(
    settings: &NatsSettings,
    subjects: &Subjects,
    bounds: &Bounds,
    counters: ClusterCounters,
) -> Link {
    let options = ConnectOptions::new()
        .name(format!("taskhost {}", settings.node))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(REQUEST_TIMEOUT)
        .event_callback(move |event| {
            let counters = counters.clone();
            async move { log_event(&event, &counters) }
        });
    let client = loop {
        match options.clone().connect(settings.url.expose()).await {
            Ok(client) => break client,
            Err(error) => {
                // Only a malformed address gets here (retry_on_initial_connect): say so often.
                tracing::error!(url = %settings.url.shown(), %error, "cannot use --nats; retrying");
                tokio::time::sleep(SETUP_RETRY * 10).await;
            }
        }
    };
    let mut js = jetstream::new(client.clone());
    js.set_timeout(REQUEST_TIMEOUT);
    let mut failures = 0u32;
    loop {
        match set_up(&js, settings, subjects, bounds).await {
            Ok((tasks, consumer, results)) => {
                tracing::info!(url = %settings.url.shown(), stream = %subjects.stream, node = %subjects.node, "joined the broker");
                return Link {
                    client,
                    js,
                    tasks,
                    consumer,
                    results,
                };
            }
            Err(error) => {
                if failures.is_multiple_of(10) {
                    tracing::warn!(
                        url = %settings.url.shown(),
                        error = format!("{error:#}"),
                        "the NATS broker is unreachable or refused the stream setup; tasks are \
                         refused (broker_unavailable) until it works; retrying"
                    );
                }
                failures += 1;
                tokio::time::sleep(SETUP_RETRY).await;
            }
        }
    }
}

async fn set_up(
    js: &jetstream::Context,
    settings: &NatsSettings,
    subjects: &Subjects,
    bounds: &Bounds,
) -> anyhow::Result<(Stream, PullConsumer, kv::Store)> {
    // JetStream reads a max_age of 0 as "for ever": a TTL of 0 keeps results a second.
    let ttl = bounds.result_ttl.max(Duration::from_secs(1));
    let tasks = js
        .get_or_create_stream(jetstream::stream::Config {
            name: subjects.stream.clone(),
            subjects: vec![subjects.tasks()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            // A repeated idempotency key is a duplicate Nats-Msg-Id within this window.
            duplicate_window: ttl,
            ..Default::default()
        })
        .await
        .with_context(|| format!("could not create or open the stream {}", subjects.stream))?;
    let consumer = tasks
        .get_or_create_consumer(
            &subjects.consumer(),
            pull::Config {
                durable_name: Some(subjects.consumer()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: settings.ack_wait,
                max_deliver: -1,
                max_ack_pending: 100_000,
                ..Default::default()
            },
        )
        .await
        .with_context(|| {
            format!(
                "could not create or open the consumer {}",
                subjects.consumer()
            )
        })?;
    let bucket = subjects.bucket();
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        max_bytes: i64::try_from(bounds.result_bytes).unwrap_or(i64::MAX),
        // The oldest results go first when the bucket is full, as on one node.
        discard: DiscardPolicy::Old,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        storage: StorageType::File,
        duplicate_window: ttl.min(Duration::from_secs(120)),
        ..Default::default()
    })
    .await
    .with_context(|| format!("could not create or open the bucket stream KV_{bucket}"))?;
    let results = js
        .get_key_value(&bucket)
        .await
        .with_context(|| format!("could not open the bucket {bucket}"))?;
    Ok((tasks, consumer, results))
}

fn log_event(event: &Event, counters: &ClusterCounters) {
    match event {
        Event::Connected => {
            counters.broker_connected.set(1);
            tracing::info!("connected to the NATS broker");
        }
        Event::Disconnected => {
            counters.broker_connected.set(0);
            tracing::warn!(
                "lost the NATS broker; reconnecting (tasks are refused broker_unavailable \
                 meanwhile; running ones finish and report once it is back)"
            );
        }
        other => tracing::info!(event = %other, "NATS client event"),
    }
}
