# taskhost: `just build-guests && just run` serves the bundled tasks; `just test` tests it all.

set shell := ["bash", "-euo", "pipefail", "-c"]

# The guest packages (guest-tasks/) and the task files they become.
guest_packages := "-p slow -p echo -p fib -p spin -p oom -p task-panic -p task-exit -p recurse -p snoop"
guest_tasks := "slow echo fib spin oom panic exit recurse snoop"

# List the recipes.
default:
    @just --list

# Install the WebAssembly target if this toolchain lacks it.
wasm-target:
    @rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

# Build the bundled task modules into tasks/.
build-guests: wasm-target
    cargo build --release --target wasm32-wasip1 {{ guest_packages }} -p taskhost-guest
    mkdir -p tasks
    for task in {{ guest_tasks }}; do cp "target/wasm32-wasip1/release/$task.wasm" "tasks/$task.wasm.tmp" && mv "tasks/$task.wasm.tmp" "tasks/$task.wasm"; done
    cp guest-tasks/wat/*.wat tasks/
    @echo "tasks/: $(ls tasks | tr '\n' ' ')"

# Start the server on 127.0.0.1:9501 (pass flags after: just run --task-workers 64).
run *FLAGS:
    cargo run --release -p taskhost -- {{ FLAGS }}

# Install Debian's Chromium for the browser test, if it is missing.
browser:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -x "${CHROMIUM:-/usr/bin/chromium}" ]; then exit 0; fi
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing chromium for the browser test (apt)…"
    $sudo apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null

# Build the guests, then run every test (unit, integration, browser).
test *ARGS: build-guests browser
    cargo test --release -p taskhost -p taskhost-guest {{ ARGS }}

# Formatting and lints, as CI would have them.
check:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings
