//! The load generator's WebSocket client: connect and read `hello`, then keep a fixed number of
//! tasks in flight and time each one.
//!
//! A [`Load`] is a closed loop: each connection submits `in_flight` tasks, and submits one more
//! each time one ends, until `stop` or `max_tasks`; then it waits for the rest, or cancels
//! them (`cancel_at_stop`). Every task carries a numeric `ref`, so `accepted` and the terminal
//! message are matched to the send time. Every `task` frame must come back `accepted` then
//! `finished` or `failed` (or `rejected`); whatever the load did not expect is counted by kind
//! in [`Tally::unexpected`] and reported, never dropped.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One open connection that has read its `hello`.
pub struct Client {
    sink: SplitSink<Socket, Message>,
    stream: SplitStream<Socket>,
    /// `broadcast` and `tasks_changed` messages that came before `hello`.
    pushed_before_hello: u64,
}

/// Pushed messages skipped before `hello` at most; past it, the server sends no `hello`.
const MAX_PUSHED_BEFORE_HELLO: u64 = 100;

/// What the loop submits and when it stops.
#[derive(Debug, Clone)]
pub struct Load {
    pub task: String,
    /// The task's `input`, as JSON text.
    pub input: String,
    /// The task's `limits`, as JSON text, if any.
    pub limits: Option<String>,
    /// Tasks each connection keeps submitted and not yet ended.
    pub in_flight: usize,
    /// Tasks each connection submits at most.
    pub max_tasks: u64,
    /// No task is submitted after this.
    pub stop: Instant,
    /// At `stop`, cancel the tasks still running instead of waiting for them.
    pub cancel_at_stop: bool,
    /// The terminal message a task of this load should get.
    pub expect: Expect,
    /// A task still pending at this point is an error: the run is bounded in time.
    pub deadline: Instant,
}

/// How a task of a load should end.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    Finished,
    /// `failed` with one of these codes (a CPU hog ends by its time or fuel limit).
    Failed(&'static [&'static str]),
}

/// One task that ended as expected.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub sent: Instant,
    /// When `accepted` arrived (a task always has one before its end).
    pub accepted: Instant,
    /// When `started` arrived: the task got its worker and runs (a server that sends none, or
    /// a task that ended before it ran, leaves it empty).
    pub started: Option<Instant>,
    pub ended: Instant,
}

impl Sample {
    pub fn to_accepted(self) -> Duration {
        self.accepted - self.sent
    }

    pub fn to_started(self) -> Option<Duration> {
        self.started.map(|started| started - self.sent)
    }

    pub fn to_end(self) -> Duration {
        self.ended - self.sent
    }
}

/// What one or more connections saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub samples: Vec<Sample>,
    /// Tasks that ended otherwise than the load expected, and `error` answers, by kind
    /// (`failed:timeout`, `rejected:queue_full`, `error:bad_request`, ...).
    pub unexpected: BTreeMap<String, u64>,
    /// Tasks cancelled at `stop`, as the load asked.
    pub cancelled: u64,
    /// Sum of `fuel_used` over the `finished` tasks.
    pub fuel_used: u64,
    /// `progress` messages received (a task may report progress; the figures do not count it).
    pub progress: u64,
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
        self.samples.extend(other.samples);
        for (kind, count) in other.unexpected {
            *self.unexpected.entry(kind).or_default() += count;
        }
        self.cancelled += other.cancelled;
        self.fuel_used += other.fuel_used;
        self.progress += other.progress;
    }

    /// The samples that ended within `[from, to)`.
    pub fn ended_between(&self, from: Instant, to: Instant) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |sample| sample.ended >= from && sample.ended < to)
    }
}

/// The fields of a server message that the load generator reads; the rest is skipped.
#[derive(Debug, Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "ref")]
    reference: Option<u64>,
    task_id: Option<u64>,
    error: Option<ErrorBody>,
    fuel_used: Option<u64>,
    /// Names in `hello`; entries (objects) in a pushed `tasks_changed`.
    tasks: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: String,
}

/// A submitted task not yet ended.
struct Pending {
    sent: Instant,
    accepted: Option<Instant>,
    started: Option<Instant>,
    task_id: Option<u64>,
}

impl Client {
    /// Opens `ws://addr/`, reads `hello` and checks that it names every task in `needs`.
    pub async fn connect(addr: SocketAddr, needs: &[&str]) -> anyhow::Result<Client> {
        let url = format!("ws://{addr}/");
        // Nagle off: a task frame is small and its answer is awaited.
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
            .await
            .with_context(|| format!("could not open {url}"))?;
        let (sink, mut stream) = socket.split();
        let mut pushed_before_hello = 0;
        let hello = loop {
            let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .with_context(|| format!("{url} sent no hello within 10 s"))?
                .with_context(|| format!("{url} closed before its hello"))??;
            let message: Incoming =
                parse(&first)?.with_context(|| format!("{url} opened with a non-text frame"))?;
            match message.kind.as_str() {
                // Messages pushed to every open connection can come first: the server counts
                // a connection as open before its `hello` is queued. Counted, for the soak.
                "broadcast" | "tasks_changed" if pushed_before_hello < MAX_PUSHED_BEFORE_HELLO => {
                    pushed_before_hello += 1;
                }
                "hello" => break message,
                other => bail!("{url} opened with {other:?}, not hello"),
            }
        };
        let tasks = hello.tasks.unwrap_or_default();
        if let Some(missing) = needs
            .iter()
            .find(|need| !tasks.iter().any(|task| task.as_str() == Some(**need)))
        {
            bail!(
                "the server does not serve the task {missing:?} (it serves {tasks:?}): \
                 run `just build-guests`, or pass --tasks DIR"
            );
        }
        Ok(Client {
            sink,
            stream,
            pushed_before_hello,
        })
    }

    /// How many `broadcast` and `tasks_changed` messages came before `hello`.
    pub fn pushed_before_hello(&self) -> u64 {
        self.pushed_before_hello
    }

    /// Opens `count` connections, a hundred at a time.
    pub async fn connect_many(
        addr: SocketAddr,
        count: usize,
        needs: &[&str],
    ) -> anyhow::Result<Vec<Client>> {
        let mut clients = Vec::with_capacity(count);
        while clients.len() < count {
            let batch = (count - clients.len()).min(100);
            let opened =
                futures_util::future::join_all((0..batch).map(|_| Client::connect(addr, needs)))
                    .await;
            for client in opened {
                clients.push(client?);
            }
        }
        Ok(clients)
    }

    /// Runs `load` on this connection until it is done, then closes the connection.
    pub async fn run(mut self, load: &Load) -> anyhow::Result<Tally> {
        let mut tally = Tally::default();
        let mut pending: HashMap<u64, Pending> = HashMap::with_capacity(load.in_flight);
        let mut next_ref = 0_u64;
        let mut stopping = false;
        let prefix = format!(
            r#"{{"type":"task","task":{:?},"input":{}"#,
            load.task, load.input
        );
        let suffix = match &load.limits {
            Some(limits) => format!(r#","limits":{limits}}}"#),
            None => "}".to_owned(),
        };
        let may_submit = |submitted: u64, stopping: bool| !stopping && submitted < load.max_tasks;

        let task_frame =
            |reference: u64| Message::text(format!(r#"{prefix},"ref":{reference}{suffix}"#));

        while pending.len() < load.in_flight && may_submit(next_ref, stopping) {
            self.submit(task_frame(next_ref), next_ref, &mut pending)
                .await?;
            next_ref += 1;
        }
        self.sink.flush().await?;

        while !pending.is_empty() || may_submit(next_ref, stopping) {
            let frame = tokio::select! {
                frame = self.stream.next() => frame,
                () = sleep_until(load.stop.into()), if !stopping => {
                    stopping = true;
                    if load.cancel_at_stop {
                        let ids: Vec<u64> = pending.values().filter_map(|p| p.task_id).collect();
                        for task_id in ids {
                            self.cancel(task_id).await?;
                        }
                    }
                    continue;
                }
                () = sleep_until(load.deadline.into()) => {
                    bail!("{} {} tasks still pending at the deadline", pending.len(), load.task);
                }
            };
            let frame = frame
                .context("the server closed the connection with tasks pending")?
                .context("the connection failed")?;
            let Some(message) = parse(&frame)? else {
                if let Message::Close(close) = frame {
                    bail!("the server closed the connection with tasks pending: {close:?}");
                }
                continue;
            };
            let now = Instant::now();
            let Some(reference) = message.reference else {
                match message.kind.as_str() {
                    // A cancel that crossed its task's end is answered not_found: expected.
                    "error" if stopping && load.cancel_at_stop => {}
                    "error" => count(&mut tally, "error", message.error.as_ref()),
                    "accepted" | "finished" | "failed" | "rejected" => {
                        bail!("a {} message without our ref: {frame:?}", message.kind)
                    }
                    _ => {} // broadcast, progress of others: not ours to count
                }
                continue;
            };
            let Some(task) = pending.get_mut(&reference) else {
                bail!(
                    "a {} message for ref {reference}, which is not pending",
                    message.kind
                );
            };
            match message.kind.as_str() {
                "accepted" => {
                    task.accepted = Some(now);
                    task.task_id = message.task_id;
                    if stopping
                        && load.cancel_at_stop
                        && let Some(task_id) = message.task_id
                    {
                        self.cancel(task_id).await?;
                    }
                    continue;
                }
                "finished" | "failed" | "rejected" => {}
                "started" => {
                    task.started = Some(now);
                    continue;
                }
                "progress" => {
                    tally.progress += 1;
                    continue;
                }
                _ => continue,
            }
            let task = pending.remove(&reference).expect("looked up above");
            let code = message.error.as_ref().map(|error| error.code.as_str());
            let expected = match (message.kind.as_str(), load.expect) {
                ("finished", Expect::Finished) => true,
                ("failed", Expect::Failed(codes)) => code.is_some_and(|code| codes.contains(&code)),
                _ => false,
            };
            if message.kind == "failed"
                && code == Some("cancelled")
                && stopping
                && load.cancel_at_stop
            {
                tally.cancelled += 1;
            } else if expected {
                let Some(accepted) = task.accepted else {
                    bail!("task ref {reference} ended before its accepted");
                };
                tally.samples.push(Sample {
                    sent: task.sent,
                    accepted,
                    started: task.started,
                    ended: now,
                });
                tally.fuel_used += message.fuel_used.unwrap_or(0);
            } else {
                count(&mut tally, &message.kind, message.error.as_ref());
            }
            if pending.len() < load.in_flight && may_submit(next_ref, stopping) && now < load.stop {
                self.submit(task_frame(next_ref), next_ref, &mut pending)
                    .await?;
                self.sink.flush().await?;
                next_ref += 1;
            }
        }
        // The figures are in; a close that fails changes none of them.
        let _ = self.sink.close().await;
        Ok(tally)
    }

    /// Queues one task frame (it leaves at the next flush) and times it from now.
    async fn submit(
        &mut self,
        frame: Message,
        reference: u64,
        pending: &mut HashMap<u64, Pending>,
    ) -> anyhow::Result<()> {
        self.sink.feed(frame).await?;
        pending.insert(
            reference,
            Pending {
                sent: Instant::now(),
                accepted: None,
                started: None,
                task_id: None,
            },
        );
        Ok(())
    }

    async fn cancel(&mut self, task_id: u64) -> anyhow::Result<()> {
        let frame = format!(r#"{{"type":"cancel","task_id":{task_id}}}"#);
        self.sink.send(Message::text(frame)).await?;
        Ok(())
    }

    /// Sends text frames as they are, then flushes: for loads that are not a closed loop
    /// (a client that leaves mid-task, a client that stops reading, a `list`).
    pub async fn send_texts(
        &mut self,
        frames: impl IntoIterator<Item = String>,
    ) -> anyhow::Result<()> {
        for frame in frames {
            self.sink.feed(Message::text(frame)).await?;
        }
        self.sink.flush().await?;
        Ok(())
    }

    /// The next text message as JSON, skipping pings and pongs; `None` once the connection has
    /// ended (a close frame, or the socket closed). An error if nothing came within `wait`.
    pub async fn next_json(&mut self, wait: Duration) -> anyhow::Result<Option<serde_json::Value>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .with_context(|| format!("no message within {wait:?}"))?;
            match frame {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str())
                        .map(Some)
                        .with_context(|| {
                            format!("the server sent a message that is not JSON: {text}")
                        });
                }
                Some(Ok(Message::Binary(_))) => bail!("the server sent a binary frame"),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error).context("the connection failed"),
            }
        }
    }

    /// Closes the connection (for connections opened only to be held).
    pub async fn close(mut self) {
        // Closing idle connections at the end of a scenario: nothing depends on the answer.
        let _ = self.sink.close().await;
    }
}

/// Runs `load` on every client at once and adds up what they saw.
pub async fn run_all(clients: Vec<Client>, load: &Load) -> anyhow::Result<Tally> {
    let handles: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let load = load.clone();
            tokio::spawn(async move { client.run(&load).await })
        })
        .collect();
    let mut tally = Tally::default();
    for handle in handles {
        tally.merge(handle.await.context("a client task panicked")??);
    }
    Ok(tally)
}

fn count(tally: &mut Tally, kind: &str, error: Option<&ErrorBody>) {
    let key = match error {
        Some(error) => format!("{kind}:{}", error.code),
        None => kind.to_owned(),
    };
    *tally.unexpected.entry(key).or_default() += 1;
}

/// A text frame's message; `None` for other frames (ping, pong, close).
fn parse(frame: &Message) -> anyhow::Result<Option<Incoming>> {
    match frame {
        Message::Text(text) => serde_json::from_str(text.as_str())
            .map(Some)
            .with_context(|| format!("the server sent a message that is not valid: {text}")),
        Message::Binary(_) => bail!("the server sent a binary frame"),
        _ => Ok(None),
    }
}
