//! Build facts for `taskhost_build_info`: the git commit (from `git`, or the
//! `TASKHOST_GIT_COMMIT` variable where the source has no `.git`, as in a container build)
//! and the wasmtime version (from the workspace's `Cargo.lock`).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TASKHOST_GIT_COMMIT");
    let commit = std::env::var("TASKHOST_GIT_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TASKHOST_GIT_COMMIT={commit}");
    println!(
        "cargo:rustc-env=TASKHOST_WASMTIME_VERSION={}",
        wasmtime_version()
    );
}

/// The short hash of HEAD; the build script runs again when HEAD or its branch moves.
fn git_commit() -> Option<String> {
    let git = |args: &[&str]| {
        let output = Command::new("git").args(args).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    if let Some(file) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={file}");
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(file) = git(&["rev-parse", "--git-path", &branch])
    {
        println!("cargo:rerun-if-changed={file}");
    }
    Some(commit)
}

/// The `wasmtime` version locked in the workspace's `Cargo.lock`, else the major version
/// host/Cargo.toml asks for.
fn wasmtime_version() -> String {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasmtime\""
            && let Some(version) = lines
                .next()
                .and_then(|line| line.strip_prefix("version = \""))
                .and_then(|rest| rest.strip_suffix('"'))
        {
            return version.to_owned();
        }
    }
    "48".to_owned()
}
