//! A minimal Chrome DevTools Protocol (CDP) driver for the browser tests.
//!
//! It owns one headless Chromium and one page in it, and offers what the tests need:
//! [`Browser::navigate`], [`Browser::eval`], [`Browser::wait_for`],
//! [`Browser::insert_text`] and [`Browser::screenshot_png`]; [`Browser::call`] sends
//! any other CDP command to the page.
//!
//! More pages (tabs) of the same browser: [`Browser::open_page`] opens one and
//! returns its [`Page`]; [`Browser::switch_to`] chooses the page that the commands
//! above go to ([`Browser::page`] is the current one). Every page keeps running while
//! another one is current, so two pages can be connected to a server at once.
//!
//! How it works:
//!
//! 1. [`Browser::launch`] spawns Chromium (`/usr/bin/chromium`, or the path in the
//!    `CHROMIUM` environment variable) with a fresh profile folder and
//!    `--remote-debugging-port=0`, so the browser picks a free port and prints
//!    `DevTools listening on ws://…` on stderr. A thread reads stderr: it hands that
//!    address over and keeps the last lines for error messages.
//! 2. It connects to that browser endpoint with tokio-tungstenite, finds the page
//!    target (`Target.getTargets`) and attaches to it with `flatten: true`, so the
//!    page's commands travel on the same socket, tagged with the returned `sessionId`.
//! 3. Commands are strictly one at a time (`&mut self`): each is sent with a fresh
//!    `id`, then frames are read until the response with that `id` arrives. Events,
//!    and late responses to commands that timed out, are read and dropped.
//!
//! Dropping the [`Browser`] kills Chromium, waits for it and removes the profile folder.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Where Chromium is looked for when `CHROMIUM` is not set (Debian's `chromium` package).
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
/// How long Chromium may take to print its DevTools address; a cold start on a busy
/// machine takes a few seconds, so this is generous.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CDP command may take before the driver gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Browser::navigate`] waits for the new page to finish loading.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two evaluations of a [`Browser::wait_for`] condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How many of Chromium's last stderr lines are kept for error messages.
const STDERR_TAIL_LINES: usize = 30;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A headless Chromium with one attached page.
pub struct Browser {
    /// The browser-level DevTools socket; page commands carry `session_id`.
    socket: Socket,
    /// The flattened session of the current page target, from `Target.attachToTarget`.
    session_id: String,
    /// The id of the next command; responses are matched to commands by it.
    next_id: u64,
    /// The process and its profile folder; declared last so it is dropped after the socket.
    process: ChromiumProcess,
}

impl Browser {
    /// Starts Chromium and attaches to its page (`about:blank`).
    ///
    /// Fails with a hint to install Debian's `chromium` package when the binary is
    /// missing, and with the end of Chromium's stderr when it does not start.
    pub async fn launch() -> anyhow::Result<Browser> {
        let (mut process, endpoint) = ChromiumProcess::spawn()?;
        let endpoint = process.devtools_endpoint(endpoint).await?;
        let (socket, _) = tokio_tungstenite::connect_async(endpoint.as_str())
            .await
            .with_context(|| format!("connecting to Chromium's DevTools at {endpoint}"))?;
        let mut browser = Browser {
            socket,
            session_id: String::new(),
            next_id: 1,
            process,
        };
        let targets = browser.send(None, "Target.getTargets", json!({})).await?;
        let opened = targets["targetInfos"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["targetId"].as_str())
            .map(str::to_owned);
        let target_id = match opened {
            Some(id) => id,
            None => browser.create_target().await?,
        };
        browser.session_id = browser.attach(&target_id).await?;
        Ok(browser)
    }

    /// Opens a new page (a tab, `about:blank`) in this browser and returns it; the
    /// current page stays current until [`Browser::switch_to`].
    pub async fn open_page(&mut self) -> anyhow::Result<Page> {
        let target_id = self.create_target().await?;
        let session_id = self.attach(&target_id).await?;
        Ok(Page { session_id })
    }

    /// The page that commands go to now.
    pub fn page(&self) -> Page {
        Page {
            session_id: self.session_id.clone(),
        }
    }

    /// Makes `page` (from [`Browser::page`] or [`Browser::open_page`]) the one that
    /// commands go to.
    pub fn switch_to(&mut self, page: &Page) {
        self.session_id = page.session_id.clone();
    }

    /// Creates a page target at `about:blank`; returns its target id.
    async fn create_target(&mut self) -> anyhow::Result<String> {
        let created = self
            .send(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await?;
        created["targetId"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("Target.createTarget answered without a targetId: {created}"))
    }

    /// Attaches to a target with a flattened session; returns the session id.
    async fn attach(&mut self, target_id: &str) -> anyhow::Result<String> {
        let attached = self
            .send(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await?;
        attached["sessionId"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                anyhow!("Target.attachToTarget answered without a sessionId: {attached}")
            })
    }

    /// Sends a CDP command to the page and returns its `result`.
    pub async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let session = self.session_id.clone();
        self.send(Some(&session), method, params).await
    }

    /// Opens `url` in the page and waits until its document has loaded.
    pub async fn navigate(&mut self, url: &str) -> anyhow::Result<()> {
        let result = self.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(error) = result["errorText"].as_str().filter(|e| !e.is_empty()) {
            bail!("navigating to {url} failed: {error}");
        }
        // Page.navigate answers once the navigation has committed, so this runs in the
        // new document.
        self.wait_for("document.readyState === 'complete'", LOAD_TIMEOUT)
            .await
            .with_context(|| format!("waiting for {url} to load"))?;
        Ok(())
    }

    /// Evaluates a JavaScript expression in the page and returns its value as JSON.
    ///
    /// A promise is awaited. `undefined` (and anything JSON cannot hold) comes back
    /// as `null`. A thrown exception is an error carrying the exception's text.
    pub async fn eval(&mut self, expression: &str) -> anyhow::Result<Value> {
        let reply = self
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": expression,
                    "returnByValue": true,
                    "awaitPromise": true,
                    // Lets a script do what needs a user's click (focus, select).
                    "userGesture": true,
                }),
            )
            .await?;
        if let Some(details) = reply.get("exceptionDetails") {
            let text = details["exception"]["description"]
                .as_str()
                .or_else(|| details["text"].as_str())
                .unwrap_or("unknown exception");
            bail!("JavaScript threw: {text}\n  in: {expression}");
        }
        Ok(reply["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Evaluates `condition` every [`POLL_INTERVAL`] until it is truthy (in the
    /// JavaScript sense) and returns that value; fails after `timeout` with the
    /// condition and what it last returned or threw.
    ///
    /// An evaluation that throws counts as "not yet" (the page may still be loading
    /// or the element not there yet); a typo in the condition therefore shows up as
    /// the timeout error's last exception.
    pub async fn wait_for(&mut self, condition: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // Bound each evaluation too, so a promise that never settles cannot
            // overstay the caller's timeout.
            match tokio::time::timeout(remaining.max(POLL_INTERVAL), self.eval(condition)).await {
                Ok(Ok(value)) if is_truthy(&value) => return Ok(value),
                Ok(Ok(value)) => last = format!("it last returned {value}"),
                Ok(Err(error)) => last = format!("it last failed: {error:#}"),
                Err(_) => last = "its last evaluation did not finish in time".to_owned(),
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for `{condition}`; {last}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Types `text` into the focused element, as an IME or a paste would: the page
    /// sees `beforeinput` and `input` events.
    pub async fn insert_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.call("Input.insertText", json!({ "text": text }))
            .await?;
        Ok(())
    }

    /// Captures the page's viewport as PNG bytes.
    pub async fn screenshot_png(&mut self) -> anyhow::Result<Vec<u8>> {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await?;
        let data = shot["data"]
            .as_str()
            .ok_or_else(|| anyhow!("Page.captureScreenshot answered without data"))?;
        // CDP sends binary data as standard, padded base64.
        STANDARD.decode(data).context("decoding the screenshot")
    }

    /// Sends one command (to the browser when `session` is `None`, else to that
    /// session) and reads frames until its response; see the module doc.
    async fn send(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        let exchange = async {
            self.socket
                .send(Message::Text(command.to_string().into()))
                .await
                .with_context(|| format!("sending {method} to Chromium"))?;
            loop {
                let frame = match self.socket.next().await {
                    Some(frame) => {
                        frame.with_context(|| format!("reading the answer to {method}"))?
                    }
                    None => {
                        bail!("Chromium closed the DevTools connection while {method} was pending")
                    }
                };
                let text = match &frame {
                    Message::Text(text) => text.as_str(),
                    Message::Close(close) => {
                        bail!(
                            "Chromium closed the DevTools connection ({close:?}) while {method} was pending"
                        )
                    }
                    _ => continue,
                };
                let reply: Value = serde_json::from_str(text)
                    .with_context(|| format!("Chromium sent a frame that is not JSON: {text}"))?;
                if reply["id"].as_u64() != Some(id) {
                    continue; // an event, or the late answer to a command that timed out
                }
                if let Some(error) = reply.get("error") {
                    bail!(
                        "{method} failed: {} (code {})",
                        error["message"],
                        error["code"]
                    );
                }
                return Ok(reply.get("result").cloned().unwrap_or(Value::Null));
            }
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(anyhow!(
                "Chromium did not answer {method} within {COMMAND_TIMEOUT:?}; its stderr ended with:\n{}",
                self.process.stderr_tail()
            )),
        }
    }
}

/// A page of a [`Browser`]: pass it to [`Browser::switch_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    session_id: String,
}

/// JavaScript truthiness of a value that came back as JSON.
fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0 && !n.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// The Chromium process and its profile folder; dropping it kills the one and
/// removes the other.
struct ChromiumProcess {
    child: Child,
    profile_dir: PathBuf,
    /// Chromium's last stderr lines, filled by the stderr reader thread.
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl ChromiumProcess {
    /// Starts Chromium; the receiver gets the DevTools address once Chromium prints it,
    /// and is closed unsent if Chromium's stderr ends first.
    fn spawn() -> anyhow::Result<(ChromiumProcess, oneshot::Receiver<String>)> {
        let binary = std::env::var_os("CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CHROMIUM));
        if !binary.exists() {
            bail!(missing_chromium(&binary));
        }
        let profile_dir = fresh_profile_dir()?;
        let mut command = Command::new(&binary);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--mute-audio",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile_dir.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&profile_dir); // best effort: it is empty
                if error.kind() == std::io::ErrorKind::NotFound {
                    bail!(missing_chromium(&binary));
                }
                return Err(error).with_context(|| format!("starting {}", binary.display()));
            }
        };

        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (endpoint_tx, endpoint_rx) = oneshot::channel();
        let tail = Arc::clone(&stderr_tail);
        // A plain thread, not a task: it does blocking reads until Chromium exits,
        // and it must keep draining stderr so Chromium never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut endpoint_tx = Some(endpoint_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(endpoint) = line.strip_prefix("DevTools listening on ")
                    && let Some(tx) = endpoint_tx.take()
                {
                    // The receiver is gone only if launch already gave up; nothing to do then.
                    let _ = tx.send(endpoint.trim().to_owned());
                }
                // std Mutex: held for a push, never across an await.
                let mut tail = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            // Dropping `endpoint_tx` here, unsent, tells the launcher Chromium exited.
        });

        let process = ChromiumProcess {
            child,
            profile_dir,
            stderr_tail,
        };
        Ok((process, endpoint_rx))
    }

    /// Waits for the `DevTools listening on ws://…` line and returns its address.
    async fn devtools_endpoint(
        &mut self,
        line: oneshot::Receiver<String>,
    ) -> anyhow::Result<String> {
        match tokio::time::timeout(LAUNCH_TIMEOUT, line).await {
            Ok(Ok(endpoint)) => Ok(endpoint),
            Ok(Err(_)) => {
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                bail!(
                    "Chromium exited ({status}) before printing its DevTools address; its stderr ended with:\n{}",
                    self.stderr_tail()
                )
            }
            Err(_) => bail!(
                "Chromium did not print its DevTools address within {LAUNCH_TIMEOUT:?}; its stderr ended with:\n{}",
                self.stderr_tail()
            ),
        }
    }

    fn stderr_tail(&self) -> String {
        let tail = self
            .stderr_tail
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if tail.is_empty() {
            return "  (nothing)".to_owned();
        }
        tail.iter().map(|line| format!("  {line}\n")).collect()
    }
}

impl Drop for ChromiumProcess {
    fn drop(&mut self) {
        // Errors are fine to ignore: the process may have exited already, and a
        // profile folder left in the temp dir harms nothing.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium's helper processes notice their parent's death and exit within
        // moments; until then they may still write into the profile, so retry.
        for _ in 0..20 {
            match std::fs::remove_dir_all(&self.profile_dir) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => break,
            }
        }
    }
}

fn missing_chromium(binary: &Path) -> String {
    format!(
        "Chromium was not found at {}. The browser tests drive a real Chromium: install \
         Debian's package (`apt-get install chromium`) or point the CHROMIUM environment \
         variable at a Chromium or Chrome binary.",
        binary.display()
    )
}

/// A new, empty folder under the system temp dir for Chromium's profile.
fn fresh_profile_dir() -> anyhow::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "taskhost-chromium-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating Chromium's profile folder {}", dir.display()))?;
    Ok(dir)
}
