//! The bundled page (`static/index.html`) in a real browser: headless Chromium, driven
//! over the DevTools protocol by [`crate::cdp`], against a real server.
//!
//! The tests rely on the page's stable ids (`#status`, `#task`, `#input`,
//! `#input-error`, `#send`, `#tasks`, …), listed at the top of the page. When one fails,
//! its error carries the page's status, task rows and log, and a screenshot is saved
//! beside the test binary's temp files (the path is in the error).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use taskhost::ProtocolApp;

use crate::cdp::Browser;
use crate::common::{TaskFolder, start_server, start_server_with, test_config};

/// How long the page may take to connect, list tasks or finish a quick task.
const WAIT: Duration = Duration::from_secs(20);

/// How soon a module dropped into a watched folder must show in the open page's picker:
/// the promise is "within a second" (it takes about a tenth of one); the rest is slack
/// for a busy test machine.
const LIVE_LIST_DEADLINE: Duration = Duration::from_secs(2);

/// The states after which a task row changes no more.
const ENDED_STATES: &str = "['finished', 'failed', 'rejected', 'lost']";

#[tokio::test(flavor = "multi_thread")]
async fn page_sends_a_task_and_shows_its_result() -> anyhow::Result<()> {
    let server = start_server().await;
    let mut browser = Browser::launch().await?;
    let outcome = send_echo_from_the_served_page(&mut browser, &server.addr.to_string()).await;
    explain_failure(
        &mut browser,
        "page_sends_a_task_and_shows_its_result",
        outcome,
    )
    .await
}

async fn send_echo_from_the_served_page(browser: &mut Browser, addr: &str) -> anyhow::Result<()> {
    browser.navigate(&format!("http://{addr}/")).await?;
    wait_until_connected_and_listed(browser, "echo").await?;
    let url = browser.eval("document.querySelector('#url').value").await?;
    ensure!(
        url == json!(format!("ws://{addr}/")),
        "served over http, the page should default to its own host, got {url}"
    );

    choose_task(browser, "echo").await?;

    // A typo is pointed out, with the parser's message, and blocks sending.
    type_input(browser, r#"{"greeting": "hi""#).await?;
    browser
        .wait_for(
            "document.querySelector('#input-error').textContent.includes('Invalid JSON')
             && document.querySelector('#input').getAttribute('aria-invalid') === 'true'
             && document.querySelector('#send').disabled",
            WAIT,
        )
        .await
        .context("invalid JSON should show #input-error and disable #send")?;

    // Fixed, it can be sent.
    type_input(browser, r#"{"greeting":"hi"}"#).await?;
    browser
        .wait_for(
            "document.querySelector('#input-error').textContent === ''
             && !document.querySelector('#send').disabled",
            WAIT,
        )
        .await
        .context("valid JSON should clear #input-error and enable #send")?;
    browser
        .eval("document.querySelector('#send').click()")
        .await?;

    // The row goes accepted → finished; wait for any end so a failure shows at once.
    let row = wait_for_end(browser, "page-1").await?;
    ensure!(
        row["state"] == "finished",
        "the echo task should finish, its row is {row}"
    );
    ensure!(
        row["taskId"].as_str().is_some_and(|id| !id.is_empty()),
        "a finished row carries the server's task id, got {row}"
    );
    ensure!(
        row["result"].as_str().is_some_and(|r| r.contains("hi")),
        "the row's .result should show the echoed input, got {row}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn page_opened_from_disk_connects_and_lists_tasks() -> anyhow::Result<()> {
    // As `just run` starts it: pages from files (Origin: null) allowed.
    let mut config = test_config();
    config.allowed_origins = vec!["null".to_owned()];
    let server = start_server_with(config, ProtocolApp).await;
    let mut browser = Browser::launch().await?;
    let outcome = open_from_disk(&mut browser, &format!("ws://{}/", server.addr)).await;
    explain_failure(
        &mut browser,
        "page_opened_from_disk_connects_and_lists_tasks",
        outcome,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn page_from_disk_against_a_strict_server_explains_the_refusal() -> anyhow::Result<()> {
    let server = start_server().await;
    let mut browser = Browser::launch().await?;
    let outcome = explain_refusal(&mut browser, &format!("ws://{}/", server.addr)).await;
    explain_failure(
        &mut browser,
        "page_from_disk_against_a_strict_server_explains_the_refusal",
        outcome,
    )
    .await
}

async fn explain_refusal(browser: &mut Browser, ws_url: &str) -> anyhow::Result<()> {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../static/index.html");
    let page = page.canonicalize()?;
    browser
        .navigate(&format!("{}?url={ws_url}", file_url(&page)))
        .await?;
    browser
        .wait_for(
            "[...document.querySelectorAll('#log li')].some(li => \
             li.textContent.includes('--allow-origin null')) \
             && document.querySelector('#status').dataset.state !== 'open'",
            WAIT,
        )
        .await
        .context("the page should say why a strict server refused it")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn page_with_the_token_connects_to_a_server_that_needs_one() -> anyhow::Result<()> {
    let mut config = test_config();
    config.token = Some(taskhost::config::Secret::token(
        "correct horse battery staple",
    ));
    let server = start_server_with(config, ProtocolApp).await;
    let mut browser = Browser::launch().await?;
    let outcome = connect_with_token(&mut browser, &server.addr.to_string()).await;
    explain_failure(
        &mut browser,
        "page_with_the_token_connects_to_a_server_that_needs_one",
        outcome,
    )
    .await
}

async fn connect_with_token(browser: &mut Browser, addr: &str) -> anyhow::Result<()> {
    // Without the token the page stays offline and says a token may be needed.
    browser.navigate(&format!("http://{addr}/")).await?;
    browser
        .wait_for(
            "[...document.querySelectorAll('#log li')].some(li => \
             li.textContent.includes('enter the token'))",
            WAIT,
        )
        .await
        .context("without a token the page should say one may be needed")?;
    // Typed into the field, it gets in.
    browser
        .eval(
            "document.querySelector('#token').value = 'correct horse battery staple'; \
             document.querySelector('#connect').click(); true",
        )
        .await?;
    wait_until_connected_and_listed(browser, "echo").await
}

async fn open_from_disk(browser: &mut Browser, ws_url: &str) -> anyhow::Result<()> {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../static/index.html");
    let page = page
        .canonicalize()
        .with_context(|| format!("finding the page at {}", page.display()))?;
    browser
        .navigate(&format!("{}?url={ws_url}", file_url(&page)))
        .await?;
    wait_until_connected_and_listed(browser, "echo").await?;
    let url = browser.eval("document.querySelector('#url').value").await?;
    ensure!(
        url == json!(ws_url),
        "?url= should set the server URL, got {url}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn page_shows_progress_of_a_running_task() -> anyhow::Result<()> {
    let server = start_server().await;
    let mut browser = Browser::launch().await?;
    let outcome = watch_progress(&mut browser, &server.addr.to_string()).await;
    explain_failure(
        &mut browser,
        "page_shows_progress_of_a_running_task",
        outcome,
    )
    .await
}

async fn watch_progress(browser: &mut Browser, addr: &str) -> anyhow::Result<()> {
    browser.navigate(&format!("http://{addr}/")).await?;
    wait_until_connected_and_listed(browser, "slow").await?;
    choose_task(browser, "slow").await?;
    type_input(browser, r#"{"seconds": 2}"#).await?;
    click_send(browser).await?;

    // `slow` reports every tenth of its sleep: while the row has not ended, its bar
    // shows and rises above 0. Polled, so an end reached first is returned too.
    let seen = browser
        .wait_for(
            &format!(
                r#"(() => {{
                    const row = document.querySelector('#tasks [data-ref="page-1"]');
                    if (!row) return null;
                    const line = row.querySelector('.progress-line');
                    const bar = line.querySelector('progress');
                    const seen = {{ state: row.dataset.state, hidden: line.hidden, value: bar.value,
                                    text: line.querySelector('.progress-message').textContent,
                                    label: bar.getAttribute('aria-label'),
                                    result: row.querySelector('.result').textContent }};
                    if ({ENDED_STATES}.includes(row.dataset.state)) return seen;
                    return !line.hidden && bar.value > 0 ? seen : null;
                }})()"#
            ),
            WAIT,
        )
        .await
        .context("the row of slow (page-1) should show progress, or end")?;
    ensure!(
        seen["state"] == "running",
        "before it ends, the row of slow should be running with a progress bar above 0; it was {seen}"
    );
    ensure!(
        seen["hidden"] == false && seen["value"].as_f64().is_some_and(|v| v > 0.0 && v <= 1.0),
        "the progress bar should show a value in (0, 1], got {seen}"
    );
    ensure!(
        seen["text"]
            .as_str()
            .is_some_and(|t| t.contains('%') && t.contains("slept")),
        "beside the bar: the percentage and the module's message, got {seen}"
    );
    ensure!(
        seen["label"].as_str().is_some_and(|l| l.contains("slow")),
        "the progress bar should have an accessible name, got {seen}"
    );

    let row = wait_for_end(browser, "page-1").await?;
    ensure!(
        row["state"] == "finished",
        "slow should finish, its row is {row}"
    );
    ensure!(
        row["result"]
            .as_str()
            .is_some_and(|r| r.contains("success")),
        "slow's result is \"success\", the row shows {row}"
    );
    let bar = browser
        .eval(r#"document.querySelector('#tasks [data-ref="page-1"] progress').value"#)
        .await?;
    ensure!(bar == json!(1), "a finished task's bar is full, got {bar}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn broadcast_reaches_every_open_page() -> anyhow::Result<()> {
    let server = start_server().await;
    let mut browser = Browser::launch().await?;
    let first = browser.page();
    let outcome = broadcast_to_two_pages(&mut browser, &server.addr.to_string()).await;
    // Describe the page that failed (the current one), and the first page too.
    let current = browser.page();
    let outcome = explain_failure(&mut browser, "broadcast_reaches_every_open_page", outcome).await;
    if current == first {
        return outcome;
    }
    browser.switch_to(&first);
    explain_failure(
        &mut browser,
        "broadcast_reaches_every_open_page-first",
        outcome,
    )
    .await
}

async fn broadcast_to_two_pages(browser: &mut Browser, addr: &str) -> anyhow::Result<()> {
    let chat_line = "ann: hello room";
    let sender = browser.page();
    browser.navigate(&format!("http://{addr}/")).await?;
    wait_until_connected_and_listed(browser, "broadcast").await?;
    let listener = browser.open_page().await?;
    browser.switch_to(&listener);
    browser.navigate(&format!("http://{addr}/")).await?;
    wait_until_connected_and_listed(browser, "broadcast").await?;

    browser.switch_to(&sender);
    choose_task(browser, "broadcast").await?;
    type_input(browser, r#"{"user":"ann","text":"hello room"}"#).await?;
    click_send(browser).await?;
    let row = wait_for_end(browser, "page-1").await?;
    ensure!(
        row["state"] == "finished",
        "the sender still gets finished for a broadcast task, its row is {row}"
    );

    for (page, name) in [(&sender, "the sending page"), (&listener, "the other page")] {
        browser.switch_to(page);
        let shown = browser
            .wait_for(
                &format!(
                    "(() => {{
                        const items = [...document.querySelectorAll('#broadcasts li')];
                        const lines = items.map(li => li.querySelector('.broadcast-line')?.textContent ?? '');
                        return lines.some(l => l.includes({line})) ? {{ lines, taskIds: items.map(li => li.dataset.taskId) }} : null;
                    }})()",
                    line = json!(chat_line)
                ),
                WAIT,
            )
            .await
            .with_context(|| format!("{name} should show the chat line in #broadcasts"))?;
        ensure!(
            shown["lines"] == json!([chat_line]),
            "{name} should show one broadcast, as the chat line {chat_line:?} (not JSON), got {shown}"
        );
        ensure!(
            shown["taskIds"] == json!([row["taskId"]]),
            "{name}'s broadcast should carry the sent task's id {}, got {shown}",
            row["taskId"]
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn page_subscribes_to_a_room_and_shows_what_is_published() -> anyhow::Result<()> {
    let server = start_server().await;
    let mut browser = Browser::launch().await?;
    let outcome = hear_the_room(&mut browser, server.addr).await;
    explain_failure(
        &mut browser,
        "page_subscribes_to_a_room_and_shows_what_is_published",
        outcome,
    )
    .await
}

async fn hear_the_room(browser: &mut Browser, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    browser.navigate(&format!("http://{addr}/")).await?;
    wait_until_connected_and_listed(browser, "chat").await?;
    choose_task(browser, "chat").await?;
    browser
        .wait_for(
            "document.querySelector('#task-info .task-grants')?.textContent.includes('publish room:*') || null",
            WAIT,
        )
        .await
        .context("#task-info should name chat's grant")?;
    browser
        .eval("document.querySelector('#topic').value = 'room:lobby'; document.querySelector('#subscribe').click(); true")
        .await?;
    browser
        .wait_for(
            "document.querySelector('#subscriptions li[data-topic=\"room:lobby\"]') ? true : null",
            WAIT,
        )
        .await
        .context("#subscriptions should list room:lobby once subscribed")?;
    // Another client speaks in the room.
    let mut speaker = crate::common::Client::connect(&format!("ws://{addr}/")).await;
    let ended = speaker
        .run(
            "chat",
            json!({"room": "lobby", "user": "bob", "text": "hello page"}),
        )
        .await;
    ensure!(
        ended["result"]["delivered"] == 1,
        "the page is the one subscriber: {ended}"
    );
    let shown = browser
        .wait_for(
            "(() => { const li = document.querySelector('#published li[data-topic=\"room:lobby\"] .published-line'); \
             return li && li.textContent.includes('hello page') ? li.textContent : null; })()",
            WAIT,
        )
        .await
        .context("#published should show bob's message")?;
    ensure!(shown == json!("bob: hello page"), "got {shown}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn page_follows_the_tasks_folder_without_reload() -> anyhow::Result<()> {
    let folder = TaskFolder::with(&["echo.wasm"]);
    let server = start_server_with(folder.config(), ProtocolApp).await;
    let mut browser = Browser::launch().await?;
    let outcome = follow_the_folder(&mut browser, &server.addr.to_string(), &folder).await;
    explain_failure(
        &mut browser,
        "page_follows_the_tasks_folder_without_reload",
        outcome,
    )
    .await
}

async fn follow_the_folder(
    browser: &mut Browser,
    addr: &str,
    folder: &TaskFolder,
) -> anyhow::Result<()> {
    browser.navigate(&format!("http://{addr}/")).await?;
    wait_until_connected_and_listed(browser, "echo").await?;
    choose_task(browser, "echo").await?;
    // The version in service: its kind, hash and load time.
    browser
        .wait_for(
            r"(() => {
                const info = document.querySelector('#task-info .task-version')?.textContent ?? '';
                return /module/.test(info) && /hash [0-9a-f]{12}\b/.test(info) && /loaded /.test(info) ? info : null;
            })()",
            WAIT,
        )
        .await
        .context("#task-info should show echo's kind, hash and load time")?;
    let options = browser
        .eval("[...document.querySelectorAll('#task option')].map(o => o.value)")
        .await?;
    ensure!(
        options == json!(["echo"]),
        "the folder holds only echo, the picker offers {options}"
    );
    // Marks this document: a reload would lose the mark.
    browser.eval("window.__sameDocument = true").await?;

    folder.copy_in("fib.wasm", "fib.wasm");
    let copied = Instant::now();
    browser
        .wait_for(
            "[...document.querySelectorAll('#task option')].some(o => o.value === 'fib' && !o.disabled)",
            WAIT,
        )
        .await
        .context("the picker should offer fib once fib.wasm is in the folder")?;
    let took = copied.elapsed();
    ensure!(
        took <= LIVE_LIST_DEADLINE,
        "fib showed in the picker {took:?} after it was copied in; it should within {LIVE_LIST_DEADLINE:?}"
    );
    let after = browser
        .eval(
            "({ same: window.__sameDocument === true,
                selected: document.querySelector('#task').value,
                log: document.querySelector('#log').textContent })",
        )
        .await?;
    ensure!(
        after["same"] == true,
        "the page must not reload, got {after}"
    );
    ensure!(
        after["selected"] == "echo",
        "the user's choice (echo) should stay selected, got {after}"
    );
    ensure!(
        after["log"]
            .as_str()
            .is_some_and(|log| log.contains("The server's tasks changed")),
        "the log should note that the server's tasks changed, got {after}"
    );

    // A broken newer echo.wasm: echo keeps serving, and the page warns about it.
    folder.write("echo.wasm", b"this is not a wasm module");
    browser
        .wait_for(
            "(() => {
                const warning = document.querySelector('#task-warning').textContent;
                const echo = [...document.querySelectorAll('#task option')].find(o => o.value === 'echo');
                return warning.includes('failed to load') && echo && !echo.disabled
                    && document.querySelector('#task').value === 'echo' ? warning : null;
            })()",
            WAIT,
        )
        .await
        .context("a broken newer echo.wasm should show as a warning, echo still ready")?;
    Ok(())
}

/// Clicks `#send` once the page enables it.
async fn click_send(browser: &mut Browser) -> anyhow::Result<()> {
    browser
        .wait_for("!document.querySelector('#send').disabled", WAIT)
        .await
        .context("#send should be enabled")?;
    browser
        .eval("document.querySelector('#send').click()")
        .await?;
    Ok(())
}

/// Waits for the row sent with `reference` to end (any end, so a failure shows at
/// once) and returns its state, task id and result text.
async fn wait_for_end(browser: &mut Browser, reference: &str) -> anyhow::Result<Value> {
    browser
        .wait_for(
            &format!(
                r#"(() => {{
                    const row = [...document.querySelectorAll('#tasks [data-ref]')]
                        .find(r => r.dataset.ref === {reference});
                    if (!row || !{ENDED_STATES}.includes(row.dataset.state)) return null;
                    return {{ state: row.dataset.state, taskId: row.dataset.taskId,
                             result: row.querySelector('.result').textContent }};
                }})()"#,
                reference = json!(reference)
            ),
            WAIT,
        )
        .await
        .with_context(|| format!("the task sent as {reference} should end"))
}

/// Waits for `#status` to report an open connection and for `task` to be a choice in
/// the `#task` picker, which the page fills from the server's `list` answer.
async fn wait_until_connected_and_listed(browser: &mut Browser, task: &str) -> anyhow::Result<()> {
    browser
        .wait_for(
            "document.querySelector('#status').dataset.state === 'open'
             && document.querySelector('#status').textContent.includes('connected')",
            WAIT,
        )
        .await
        .context("the page should connect to the server")?;
    browser
        .wait_for(
            &format!(
                "[...document.querySelectorAll('#task option')].some(o => o.value === {} && !o.disabled)",
                json!(task)
            ),
            WAIT,
        )
        .await
        .with_context(|| format!("the task picker should offer {task}"))?;
    Ok(())
}

/// Picks `task` in `#task` as a user would (the page listens for `change`).
async fn choose_task(browser: &mut Browser, task: &str) -> anyhow::Result<()> {
    let chosen = browser
        .eval(&format!(
            "(() => {{
                const select = document.querySelector('#task');
                select.value = {};
                select.dispatchEvent(new Event('change', {{ bubbles: true }}));
                return select.value;
            }})()",
            json!(task)
        ))
        .await?;
    ensure!(
        chosen == json!(task),
        "could not choose {task} in #task, it shows {chosen}"
    );
    Ok(())
}

/// Replaces the text of `#input` by typing `text` into it.
async fn type_input(browser: &mut Browser, text: &str) -> anyhow::Result<()> {
    browser
        .eval("(() => { const input = document.querySelector('#input'); input.focus(); input.select(); })()")
        .await?;
    browser.insert_text(text).await?;
    let now = browser
        .eval("document.querySelector('#input').value")
        .await?;
    ensure!(
        now == json!(text),
        "typing into #input left {now} instead of {text:?}"
    );
    Ok(())
}

/// Passes `outcome` through; on an error, adds what the page showed and saves a
/// screenshot, so a failure in CI can be understood without rerunning it.
async fn explain_failure(
    browser: &mut Browser,
    test: &str,
    outcome: anyhow::Result<()>,
) -> anyhow::Result<()> {
    let Err(error) = outcome else { return Ok(()) };
    let page = browser
        .eval(
            "({ url: location.href,
                status: document.querySelector('#status')?.textContent,
                tasks: document.querySelector('#tasks')?.innerText,
                log: document.querySelector('#log')?.innerText })",
        )
        .await
        .unwrap_or_else(|e| Value::String(format!("(could not read the page: {e:#})")));
    let shot = screenshot_path(test);
    let saved = match browser.screenshot_png().await {
        Ok(png) => match std::fs::write(&shot, png) {
            Ok(()) => format!("screenshot saved to {}", shot.display()),
            Err(e) => format!("could not save the screenshot to {}: {e}", shot.display()),
        },
        Err(e) => format!("could not take a screenshot: {e:#}"),
    };
    Err(error.context(format!(
        "{test} failed; the page showed {}\n{saved}",
        serde_json::to_string_pretty(&page).unwrap_or_default()
    )))
}

/// The `file://` URL of an absolute path, with the characters that would end or
/// break a URL's path escaped.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for c in path.display().to_string().chars() {
        match c {
            '%' => url.push_str("%25"),
            ' ' => url.push_str("%20"),
            '#' => url.push_str("%23"),
            '?' => url.push_str("%3F"),
            c => url.push(c),
        }
    }
    url
}

fn screenshot_path(test: &str) -> PathBuf {
    let dir = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("{test}.png"))
}

#[tokio::test(flavor = "multi_thread")]
async fn page_reattaches_its_unfinished_tasks_after_a_reconnect() -> anyhow::Result<()> {
    let server = start_server().await;
    let mut browser = Browser::launch().await?;
    let outcome = reattach_after_reconnect(&mut browser, &server.addr.to_string()).await;
    explain_failure(
        &mut browser,
        "page_reattaches_its_unfinished_tasks_after_a_reconnect",
        outcome,
    )
    .await
}

async fn reattach_after_reconnect(browser: &mut Browser, addr: &str) -> anyhow::Result<()> {
    browser.navigate(&format!("http://{addr}/")).await?;
    wait_until_connected_and_listed(browser, "slow").await?;
    choose_task(browser, "slow").await?;
    type_input(browser, r#"{"seconds": 2}"#).await?;
    click_send(browser).await?;
    let row = r#"document.querySelector('#tasks [data-ref="page-1"]')"#;
    browser
        .wait_for(&format!("{row}?.dataset.state === 'running'"), WAIT)
        .await
        .context("the row of slow should show it running (`started`)")?;
    // Disconnect (the button, with the URL unchanged), then connect again.
    browser
        .eval("document.querySelector('#connect').click()")
        .await?;
    let state = browser.eval(&format!("{row}.dataset.state")).await?;
    ensure!(
        state == json!("detached"),
        "a running task's row waits for the next connection, not lost; it is {state}"
    );
    browser
        .eval("document.querySelector('#connect').click()")
        .await?;
    let ended = wait_for_end(browser, "page-1").await?;
    ensure!(
        ended["state"] == "finished"
            && ended["result"]
                .as_str()
                .is_some_and(|r| r.contains("success")),
        "after the reconnect the row re-attaches and finishes; it is {ended}"
    );
    Ok(())
}
