//! `taskhost run` and `taskhost check`, the tools for task authors, as the built binary
//! runs them.

use std::process::Output;

use serde_json::Value;

use crate::common::{TaskFolder, taskhost_command, tasks_dir};

/// Runs the binary with `args`; its exit code and stdout as JSON.
fn taskhost(args: &[&str]) -> (i32, Value) {
    let Output {
        status,
        stdout,
        stderr,
    } = taskhost_command().args(args).output().unwrap();
    let printed = serde_json::from_slice(&stdout).unwrap_or_else(|error| {
        panic!(
            "taskhost {args:?} printed no JSON ({error}): {}\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )
    });
    (status.code().unwrap(), printed)
}

fn task_file(name: &str) -> String {
    tasks_dir().join(name).display().to_string()
}

#[test]
fn run_prints_the_outcome_and_exits_by_it() {
    let (code, finished) = taskhost(&["run", &task_file("echo.wasm"), "--input", r#"{"a":1}"#]);
    assert_eq!(
        (code, &finished["type"]),
        (0, &"finished".into()),
        "{finished}"
    );
    assert_eq!(finished["result"]["a"], 1);

    let spin = task_file("spin.wasm");
    let (code, failed) = taskhost(&["run", &spin, "--input", "1", "--", "--timeout-ms", "200"]);
    assert_eq!(code, 1, "{failed}");
    assert_eq!(failed["error"]["code"], "timeout", "{failed}");
}

#[test]
fn check_reports_a_loadable_module_and_what_would_be_refused() {
    let (code, report) = taskhost(&["check", &task_file("echo.wasm")]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["loads"], true);
    assert_eq!(report["interface"]["kind"], "module");
    let exports = report["interface"]["exports"].as_array().unwrap();
    assert!(exports.contains(&"_start".into()), "{report}");

    let folder = TaskFolder::with(&["echo.wasm"]);
    folder.write(
        "sneaky.wat",
        r#"(module (import "env" "open_socket" (func)) (memory (export "memory") 1)
                   (func (export "_start")))"#,
    );
    let sneaky = folder.path.join("sneaky.wat").display().to_string();
    let (code, report) = taskhost(&["check", &sneaky]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["loads"], false);
    assert!(
        report["error"].as_str().unwrap().contains("open_socket"),
        "{report}"
    );
    let imports = report["interface"]["imports"].as_array().unwrap();
    assert_eq!(imports[0]["name"], "env.open_socket");
    assert_eq!(imports[0]["provided"], false);

    folder.write("echo.toml", "timeout_ms = 100\ncolour = \"blue\"\n");
    let echo = folder.path.join("echo.wasm").display().to_string();
    let (code, report) = taskhost(&["check", &echo]);
    assert_eq!(code, 1, "{report}");
    assert!(
        report["error"].as_str().unwrap().contains("echo.toml"),
        "{report}"
    );
}
