//! The bundled page (`static/index.html`) in a real browser: headless Chromium, driven
//! over the DevTools protocol by [`crate::cdp`], against a real server.
//!
//! The tests rely on the page's stable ids (`#status`, `#task`, `#input`,
//! `#input-error`, `#send`, `#tasks`, …), listed at the top of the page. When one fails,
//! its error carries the page's status, task rows and log, and a screenshot is saved
//! beside the test binary's temp files (the path is in the error).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::cdp::Browser;
use crate::common::start_server;

/// How long the page may take to connect, list tasks or finish a quick task.
const WAIT: Duration = Duration::from_secs(20);

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
    let row = browser
        .wait_for(
            r#"(() => {
                const row = document.querySelector('#tasks [data-ref="page-1"]');
                if (!row || !['finished', 'failed', 'rejected', 'lost'].includes(row.dataset.state)) return null;
                return { state: row.dataset.state, taskId: row.dataset.taskId,
                         result: row.querySelector('.result').textContent };
            })()"#,
            WAIT,
        )
        .await
        .context("the task sent as page-1 should end")?;
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
    let server = start_server().await;
    let mut browser = Browser::launch().await?;
    let outcome = open_from_disk(&mut browser, &format!("ws://{}/", server.addr)).await;
    explain_failure(
        &mut browser,
        "page_opened_from_disk_connects_and_lists_tasks",
        outcome,
    )
    .await
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
