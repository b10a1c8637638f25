//! Running taskhost as a service (issue 14), against the built binary where it matters:
//! per-task metrics, `build_info` and the `process_*` metrics; the `watch` feed; the
//! dashboard in headless Chromium under real load (its screenshot is `docs/dashboard.png`);
//! configuration from a file and the environment; the completions and man page; the
//! systemd unit (`systemd-analyze verify`); the container image where podman or docker
//! works; the page and dashboard built into the binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::CommandFactory;
use serde_json::json;

use crate::cdp::Browser;
use crate::common::listening_address;
use crate::common::{Client, TaskFolder, start_server_with, taskhost_command, test_config};
use crate::lifecycle::{get, spawn_binary_with_env};

/// The promise of the dashboard: real traffic shows within two seconds.
const DASHBOARD_DEADLINE: Duration = Duration::from_secs(2);

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A started binary, killed when dropped.
struct Binary {
    child: Child,
    address: String,
}

impl Binary {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Binary {
        let mut child = spawn_binary_with_env(args, "info", env);
        let address = listening_address(&mut child);
        Binary { child, address }
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.address.parse().unwrap()
    }

    async fn client(&self, query: &str) -> Client {
        Client::connect(&format!("ws://{}/{query}", self.address)).await
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample `line_start` (name and labels) in a Prometheus text.
fn sample(metrics: &str, line_start: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(line_start)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_the_task_label_queue_wait_build_info_and_process_metrics() {
    let server = Binary::start(&["--warm-slots", "0"], &[]);
    let mut client = server.client("").await;
    for _ in 0..3 {
        client.run("echo", json!("hi")).await;
    }
    client.run("exit", json!(1)).await;
    let (status, metrics) = get(server.addr(), "/metrics").await;
    assert_eq!(status, 200);
    let expect = |line: &str, value: f64| {
        assert_eq!(sample(&metrics, line), Some(value), "{line} in:\n{metrics}");
    };
    expect(
        r#"taskhost_tasks_total{task="echo",outcome="finished"}"#,
        3.0,
    );
    expect(r#"taskhost_tasks_total{task="exit",outcome="exit"}"#, 1.0);
    expect(r#"taskhost_task_duration_seconds_count{task="echo"}"#, 3.0);
    expect("taskhost_task_queue_wait_seconds_count", 4.0);
    expect("taskhost_module_load_failures_total", 0.0);
    // The tasks and the pool-warming modules, from the compile cache or compiled afresh (the
    // cache is shared by the tests, so which of the two depends on what ran first).
    let loads: f64 = ["cache", "compiler"]
        .iter()
        .map(|from| {
            let line = format!(r#"taskhost_module_loads_total{{from="{from}"}}"#);
            sample(&metrics, &line).unwrap_or_else(|| panic!("{line} missing from:\n{metrics}"))
        })
        .sum();
    assert!(loads >= 2.0, "{loads} modules loaded");
    expect("taskhost_task_workers", 1024.0);
    let build = metrics
        .lines()
        .find(|line| line.starts_with("taskhost_build_info{"))
        .unwrap_or_else(|| panic!("no build_info in:\n{metrics}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.contains("wasmtime=\"48.")
            && build.contains("commit=\"")
            && build.ends_with(" 1"),
        "{build}"
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = sample(&metrics, "process_start_time_seconds").expect("start time");
    assert!(
        started <= now + 1.0 && started > now - 300.0,
        "started {started}, now {now}"
    );
    let resident = sample(&metrics, "process_resident_memory_bytes").expect("rss");
    assert!(resident > 1e6, "{resident}");
    let open = sample(&metrics, "process_open_fds").expect("open fds");
    let max = sample(&metrics, "process_max_fds").expect("max fds");
    assert!(open >= 4.0 && open < max, "{open} of {max}");
    assert!(sample(&metrics, "process_cpu_seconds_total").expect("cpu") > 0.0);
    assert!(sample(&metrics, "process_virtual_memory_bytes").expect("vsize") >= resident);
    // Counters end in _total and only counters do (Prometheus's naming guidelines).
    for line in metrics.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split_whitespace().skip(2);
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        assert!(
            !name.ends_with("_total"),
            "{line}: the family name has no _total"
        );
        if kind == "counter" {
            assert!(
                metrics.contains(&format!("\n{name}_total")),
                "{line}: its samples end in _total"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_fails_to_load_is_counted() {
    let folder = TaskFolder::with(&["echo.wasm"]);
    std::fs::write(folder.path.join("broken.wasm"), b"not a module").unwrap();
    let mut config = test_config();
    config.tasks_dir = folder.path.clone();
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let (_, metrics) = get(server.addr, "/metrics").await;
    assert_eq!(
        sample(&metrics, "taskhost_module_load_failures_total"),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_pushes_the_load_tasks_failures_and_modules_every_second() {
    let folder = TaskFolder::with(&["echo.wasm", "exit.wasm", "flaky.wasm", "flaky.toml"]);
    std::fs::write(folder.path.join("broken.wasm"), b"not a module").unwrap();
    let mut config = test_config();
    config.tasks_dir = folder.path.clone();
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut worker = server.client().await;
    worker.run("echo", json!(1)).await;
    worker.run("exit", json!(1)).await;
    // Fails every one of its 4 attempts: a dead letter.
    let dead_end = worker.run("flaky", json!({"fail_attempts": 9})).await;
    assert_eq!(dead_end["type"], "failed", "{dead_end}");

    let mut watcher = server.client().await;
    let first = watcher.request(json!({"type": "watch"})).await;
    assert_eq!(first["type"], "watch", "{first}");
    assert!(
        first["server"]["connections"].as_u64().unwrap() >= 2,
        "{first}"
    );
    assert_eq!(first["build"]["version"], env!("CARGO_PKG_VERSION"));
    let echo = first["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "echo")
        .unwrap_or_else(|| panic!("echo in {first}"));
    assert_eq!(echo["count"], 1);
    assert_eq!(echo["by_outcome"]["finished"], 1);
    assert!(echo["p99_ms"].as_f64().unwrap() >= echo["p50_ms"].as_f64().unwrap());
    assert!(echo["fuel_used"].as_u64().unwrap() > 0);
    // Newest first: flaky's failure (after its four attempts), then exit's.
    assert_eq!(first["failures"][0]["task"], "flaky", "{first}");
    let failure = first["failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["task"] == "exit")
        .unwrap_or_else(|| panic!("exit's failure in {first}"));
    assert_eq!(failure["code"], "exit", "{failure}");
    assert!(
        failure["message"].as_str().unwrap().contains("status 3"),
        "{failure}"
    );
    let broken = first["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "broken")
        .unwrap_or_else(|| panic!("broken in {first}"));
    assert_eq!(broken["state"], "failed");
    assert!(broken["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(first["server"]["module_load_failures"], 1);
    // The dead letters, newest first, without their inputs (`dead` gives those).
    assert_eq!(first["dead"]["total"], 1, "{first}");
    let letter = &first["dead"]["tasks"][0];
    assert_eq!(
        (&letter["task"], &letter["task_id"], &letter["attempts"]),
        (&json!("flaky"), &dead_end["task_id"], &json!(4)),
        "{first}"
    );
    assert!(letter.get("input").is_none(), "{letter}");
    // A task id on the dashboard links to its kept result: `attach` on the same connection.
    watcher
        .send(json!({"type": "attach", "task_id": dead_end["task_id"]}))
        .await;
    let attached = watcher
        .recv_until(Duration::from_secs(5), "attached", |_| true)
        .await;
    assert_eq!(attached["state"], "ended", "{attached}");
    let kept = watcher
        .recv_until(Duration::from_secs(5), "failed", |m| {
            m["task_id"] == dead_end["task_id"]
        })
        .await;
    assert_eq!(kept, dead_end);
    let ready = first["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "echo")
        .unwrap();
    assert!(
        ready["hash"].is_string() && ready["kind"] == "module" && ready["loaded_at"].is_string()
    );

    // Then once a second, with the samples taken since, while tasks run.
    let started = Instant::now();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        worker.run("echo", json!(2)).await;
        let message = watcher.recv().await;
        if message["type"] == "watch" {
            seen.push((started.elapsed(), message));
        }
    }
    let (at, second) = &seen[1];
    assert!(*at < Duration::from_secs(4), "two pushes took {at:?}");
    let history = second["history"].as_array().unwrap();
    assert!(
        (1..=2).contains(&history.len()),
        "only new samples: {history:?}"
    );
    assert!(
        history[0]["at_ms"].as_u64()
            > first["history"]
                .as_array()
                .unwrap()
                .last()
                .map(|s| s["at_ms"].as_u64().unwrap())
    );
    assert_eq!(second["server"]["watchers"], 1);
}

/// Sends a mix of tasks from several connections until `stop`: echo, fib, slow, exit (fails
/// `exit`), panic (fails `trap`) and spin (fails `timeout` at its 300 ms limit).
async fn load(address: String, token: &str, stop: tokio_util::sync::CancellationToken) {
    let query = format!("?token={token}");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::connect(&format!("ws://{address}/{query}")).await);
    }
    let mix = [
        json!({"type": "task", "task": "echo", "input": "hello"}),
        json!({"type": "task", "task": "fib", "input": {"n": 20}}),
        json!({"type": "task", "task": "echo", "input": [1, 2, 3]}),
        json!({"type": "task", "task": "slow", "input": {"seconds": 0.4}}),
        json!({"type": "task", "task": "exit", "input": 1}),
        json!({"type": "task", "task": "panic", "input": 1}),
        json!({"type": "task", "task": "spin", "input": 1, "limits": {"timeout_ms": 300}}),
    ];
    let mut round = 0usize;
    while !stop.is_cancelled() {
        for (n, client) in clients.iter_mut().enumerate() {
            client.send(mix[(round + n) % mix.len()].clone()).await;
        }
        round += 1;
        // Drain what came back so that no outbox fills.
        for client in &mut clients {
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(1), client.next_frame()).await
            {
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_real_traffic_within_two_seconds() -> anyhow::Result<()> {
    let token = "dashboard-test-token-0123456789";
    let server = Binary::start(&["--warm-slots", "0", "--token", token], &[]);
    let (status, _) = get(server.addr(), "/dashboard").await;
    ensure!(status == 401, "/dashboard without the token: {status}");
    let (status, page) = get(server.addr(), &format!("/dashboard?token={token}")).await;
    ensure!(
        status == 200 && page.contains("id=\"tasks\""),
        "/dashboard: {status}"
    );

    let mut browser = Browser::launch().await?;
    browser
        .call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 2000, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await?;
    let url = format!("http://{}/dashboard?token={token}", server.address);
    browser.navigate(&url).await?;
    browser
        .wait_for(
            "document.querySelector('#status').dataset.state === 'open'",
            Duration::from_secs(10),
        )
        .await
        .context("the dashboard did not connect")?;

    // One exit failure, then the page must show it and the echo count within 2 s.
    let mut client = server.client(&format!("?token={token}")).await;
    for _ in 0..5 {
        client.run("echo", json!(1)).await;
    }
    client.run("exit", json!(1)).await;
    let sent = Instant::now();
    browser
        .wait_for(
            "(() => {
               const echo = document.querySelector('#tasks tr[data-task=\"echo\"] .count');
               const exit = document.querySelector(
                 '#tasks tr[data-task=\"exit\"] .failures .code[data-code=\"exit\"]');
               return echo && echo.textContent === '5' && exit && exit.textContent === 'exit 1'
                 && document.querySelector('#failures li[data-code=\"exit\"] .message')
                      .textContent.includes('status 3');
             })()",
            DASHBOARD_DEADLINE + Duration::from_millis(500),
        )
        .await
        .context("per-task counts and failure codes did not show")?;
    let took = sent.elapsed();
    ensure!(
        took <= DASHBOARD_DEADLINE,
        "the dashboard took {took:?} to show the traffic"
    );

    // Under a steady mixed load, rates, failure codes of several kinds and the chart fill.
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = tokio::spawn(load(server.address.clone(), token, stop.clone()));
    browser
        .wait_for(
            "(() => {
               const codes = [...document.querySelectorAll('#tasks .code')].map(c => c.dataset.code);
               return ['exit', 'trap', 'timeout'].every(c => codes.includes(c))
                 && document.querySelectorAll('#rates tbody tr').length >= 3
                 && Number(document.querySelector('#connections').textContent) >= 4;
             })()",
            Duration::from_secs(15),
        )
        .await
        .context("the load did not show")?;
    // Let the chart gather some seconds of history for the picture.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let shot = browser.screenshot_png().await?;
    stop.cancel();
    let _ = traffic.await;
    let saved = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&saved, &shot)?;
    // `TASKHOST_UPDATE_SCREENSHOT=1` refreshes the picture the README shows.
    if std::env::var_os("TASKHOST_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(root().join("docs/dashboard.png"), &shot)?;
    }
    ensure!(shot.starts_with(b"\x89PNG") && shot.len() > 10_000);

    // The filter keeps the rows of matching tasks only.
    browser
        .eval("(() => { const f = document.querySelector('#filter'); f.value = 'ech'; f.dispatchEvent(new Event('input')); })()")
        .await?;
    let shown = browser
        .eval("[...document.querySelectorAll('#tasks tbody tr')].map(r => r.dataset.task)")
        .await?;
    ensure!(shown == json!(["echo"]), "filtered rows: {shown}");

    // At a phone's width nothing makes the page scroll sideways.
    browser
        .call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
        )
        .await?;
    let widths = browser
        .wait_for(
            "(() => { const w = document.documentElement.scrollWidth;
                      return w <= window.innerWidth ? [w, window.innerWidth] : null; })()",
            Duration::from_secs(5),
        )
        .await
        .context("the page is wider than a phone")?;
    ensure!(widths[1] == json!(390), "{widths}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_configures_the_running_binary_below_the_environment() {
    let folder = TaskFolder::with(&[]);
    let file = folder.path.join("taskhost.toml");
    std::fs::write(&file, "task-workers = 5\nmax_frame = 4096\n").unwrap();
    let config = file.to_str().unwrap();
    let stats = |server: Binary| async move {
        let mut client = server.client("").await;
        client.request(json!({"type": "stats"})).await
    };
    let from_file = stats(Binary::start(&["--config", config], &[])).await;
    assert_eq!(from_file["task_workers"], 5, "{from_file}");
    let from_env = stats(Binary::start(
        &["--config", config],
        &[("TASKHOST_TASK_WORKERS", "7")],
    ))
    .await;
    assert_eq!(from_env["task_workers"], 7, "{from_env}");
    let from_flag = stats(Binary::start(
        &["--config", config, "--task-workers", "6"],
        &[("TASKHOST_TASK_WORKERS", "7")],
    ))
    .await;
    assert_eq!(from_flag["task_workers"], 6, "{from_flag}");
}

#[test]
fn every_option_has_an_environment_variable() {
    // Actions that print and exit are not settings.
    let actions = [
        "help",
        "version",
        "print_config",
        "completions",
        "man",
        "host_index",
    ];
    for arg in taskhost::Options::command().get_arguments() {
        let id = arg.get_id().as_str();
        if actions.contains(&id) {
            continue;
        }
        let long = arg.get_long().unwrap_or(id);
        let expected = format!("TASKHOST_{}", long.replace('-', "_").to_uppercase());
        assert_eq!(
            arg.get_env().map(|e| e.to_string_lossy().into_owned()),
            Some(expected),
            "--{long}"
        );
    }
}

#[test]
fn the_binary_prints_completions_and_a_man_page() {
    let run = |args: &[&str]| {
        let output = taskhost_command().args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["--completions", shell]);
        assert!(script.contains("task-workers"), "{shell}: {script}");
    }
    let man = run(&["--man"]);
    assert!(man.contains(".TH taskhost 1"), "{man}");
    assert!(
        man.contains("TASKHOST_TASK_WORKERS"),
        "the variables are in it"
    );

    // They are actions: a config file cannot ask for them (the server would not serve).
    let folder = TaskFolder::with(&[]);
    let file = folder.path.join("taskhost.toml");
    std::fs::write(&file, "man = true\n").unwrap();
    let output = taskhost_command()
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("\"man\" prints and exits"),
        "{stderr}"
    );
}

/// `taskhost --man | head -1`: when the reader has gone, the printing commands end as `cat`
/// does, by SIGPIPE, not with a panic's message on stderr.
#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    for args in [
        &["--man"][..],
        &["--completions", "bash"],
        &["--print-config"],
    ] {
        // The read end is closed before the child starts: its first write finds no reader.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = taskhost_command()
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
            .wait_with_output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {output:?}"
        );
    }
}

/// The binary allocates with jemalloc and has it return freed memory after a second
/// (host/src/main.rs). The settings are a symbol jemalloc looks up by its name: a jemalloc
/// crate that renamed it would drop them without a word, and a burst's memory would then stay
/// for ten seconds. Asked to, jemalloc prints the options it runs with when the process ends.
#[test]
fn the_binary_allocates_with_jemalloc_returning_memory_after_a_second() {
    let output = taskhost_command()
        .arg("--version")
        .env(
            "_RJEM_MALLOC_CONF",
            "stats_print:true,stats_print_opts:mdablxe",
        )
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let statistics = String::from_utf8_lossy(&output.stderr);
    for option in ["opt.dirty_decay_ms: 1000 ", "opt.muzzy_decay_ms: 0 "] {
        assert!(
            statistics.contains(option),
            "`{option}` is not in jemalloc's statistics: {statistics}"
        );
    }
}

/// The unit with its binary at `binary`, and the man page its Documentation= names, in a
/// folder of their own: `systemd-analyze verify` checks that both exist.
fn unit_for_verify(dir: &Path, binary: &Path) -> (PathBuf, PathBuf) {
    let unit = std::fs::read_to_string(root().join("deploy/taskhost.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/taskhost "));
    let unit = unit.replace("/usr/local/bin/taskhost", binary.to_str().unwrap());
    let path = dir.join("taskhost.service");
    std::fs::write(&path, unit).unwrap();
    let man = dir.join("man/man1");
    std::fs::create_dir_all(&man).unwrap();
    let page = taskhost_command().arg("--man").output().unwrap().stdout;
    std::fs::write(man.join("taskhost.1"), page).unwrap();
    (path, dir.join("man"))
}

#[test]
fn the_systemd_unit_verifies_and_is_sandboxed() {
    let unit = std::fs::read_to_string(root().join("deploy/taskhost.service")).unwrap();
    for setting in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "StateDirectory=taskhost",
        "CacheDirectory=taskhost",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "Environment=TASKHOST_CACHE_DIR=/var/cache/taskhost",
    ] {
        assert!(
            unit.lines().any(|line| line == setting),
            "{setting} missing"
        );
    }
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("skipped `systemd-analyze verify`: systemd-analyze is not installed here");
        return;
    };
    let folder = TaskFolder::with(&[]);
    let (path, manpath) = unit_for_verify(&folder.path, Path::new(env!("CARGO_BIN_EXE_taskhost")));
    let output = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .env("MANPATH", &manpath)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "{stderr}"
    );

    // A unit naming a missing binary fails: the check is real.
    let (broken, _) = unit_for_verify(&folder.path, Path::new("/nonexistent/taskhost"));
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&broken)
        .env("MANPATH", &manpath)
        .output()
        .unwrap();
    assert!(!output.status.success());
}

/// The path of `program` on PATH.
fn which(program: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .with_context(|| format!("{program} is not on PATH"))
}

/// A container engine that works here (its daemon or its rootless setup answers).
fn container_engine() -> Result<&'static str, String> {
    let mut why = Vec::new();
    for engine in ["podman", "docker"] {
        match Command::new(engine).arg("info").output() {
            Ok(output) if output.status.success() => return Ok(engine),
            Ok(output) => why.push(format!(
                "{engine} info failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            Err(error) => why.push(format!("{engine}: {error}")),
        }
    }
    Err(why.join("; "))
}

#[test]
fn the_dockerfile_copies_what_exists_and_builds_where_an_engine_works() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let ignored = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    // The build stage needs the workspace, and the .dockerignore keeps out only outputs.
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "justfile",
        "host",
        "guest-tasks",
        "wit",
    ] {
        assert!(root().join(needed).exists(), "{needed}");
        assert!(
            !ignored.lines().any(|l| l.trim() == needed),
            "{needed} is ignored"
        );
    }
    for line in [
        "USER taskhost",
        "HEALTHCHECK ",
        "AS build",
        "FROM debian:bookworm-slim",
    ] {
        assert!(dockerfile.contains(line), "{line} missing");
    }
    assert!(dockerfile.contains("/healthz"));

    let engine = match container_engine() {
        Ok(engine) => engine,
        Err(why) => {
            eprintln!("skipped building the image: neither podman nor docker works here ({why})");
            return;
        }
    };
    // The base images must come from a registry: a machine without one cannot build it.
    for line in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
        let image = line.split_whitespace().nth(1).unwrap();
        let pulled = Command::new("timeout")
            .args(["120", engine, "pull", image])
            .output()
            .unwrap();
        if !pulled.status.success() {
            eprintln!(
                "skipped building the image: {engine} could not pull {image} ({})",
                String::from_utf8_lossy(&pulled.stderr).trim()
            );
            return;
        }
    }
    let tag = "taskhost-test:operations";
    let status = Command::new(engine)
        .args(["build", "-t", tag, "."])
        .current_dir(root())
        .status()
        .unwrap();
    assert!(status.success(), "{engine} build failed");
    let output = Command::new(engine)
        .args(["run", "--rm", tag, "--print-config"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("listen = \"0.0.0.0:9501\""), "{printed}");
    let output = Command::new(engine)
        .args(["run", "--rm", "--entrypoint", "id", tag, "-u"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "10001",
        "non-root"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_dashboard_are_built_into_the_binary() {
    // A copy of the binary, run from a folder with no static files near it.
    let folder = TaskFolder::with(&["echo.wasm"]);
    let binary = folder.path.join("taskhost");
    std::fs::copy(env!("CARGO_BIN_EXE_taskhost"), &binary).unwrap();
    let mut child = Command::new(&binary)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-cache",
            "--warm-slots",
            "0",
            "--tasks",
        ])
        .arg(&folder.path)
        .current_dir(&folder.path)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let address: std::net::SocketAddr = listening_address(&mut child).parse().unwrap();
    let (page_status, page) = get(address, "/").await;
    let (dashboard_status, dashboard) = get(address, "/dashboard").await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!((page_status, dashboard_status), (200, 200));
    assert_eq!(
        page,
        std::fs::read_to_string(root().join("host/static/index.html")).unwrap()
    );
    assert_eq!(
        dashboard,
        std::fs::read_to_string(root().join("host/static/dashboard.html")).unwrap()
    );
    // And `cargo install --path host` packs them: they are in the crate's package.
    let listed = Command::new(env!("CARGO"))
        .args([
            "package",
            "-p",
            "taskhost",
            "--list",
            "--allow-dirty",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    let files = String::from_utf8_lossy(&listed.stdout);
    for file in [
        "static/index.html",
        "static/dashboard.html",
        "build.rs",
        "src/http/dashboard.rs",
    ] {
        assert!(
            files.lines().any(|l| l == file),
            "{file} not packaged:\n{files}"
        );
    }
}
