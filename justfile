# taskhost: `just build-guests && just run` serves the bundled tasks; `just test` tests it all.

set shell := ["bash", "-euo", "pipefail", "-c"]

# The guest packages (guest-tasks/) and the task files they become: preview 1 modules
# (wasm32-wasip1), then preview 2 components (wasm32-wasip2), whose package and task
# names are the same.
guest_packages := "-p slow -p echo -p fib -p spin -p oom -p task-panic -p task-exit -p recurse -p snoop -p broadcast -p send_mail -p flaky -p counter -p notes -p chat -p query -p fetch"
guest_tasks := "slow echo fib spin oom panic exit recurse snoop broadcast send_mail flaky counter notes chat query fetch"
guest_components := "wordcount flood"

# The packages the tests, the soak and the benchmark build for this machine, in one set: cargo
# unifies features over the packages it is given, and over dev-dependencies when test targets are
# built, so a different set would build wasmtime, tokio and the rest a second time (as large
# again on disk). `cargo test` and `cargo build --all-targets` over this set share every artifact.
host_packages := "-p taskhost -p taskhost-bench -p taskhost-guest -p broadcast -p send_mail -p wordcount -p slow"

# The folder cargo builds into, as cargo itself reports it: `target/` in the workspace
# unless CARGO_TARGET_DIR (or `build.target-dir` in a cargo config) puts it elsewhere,
# as many Rust users do globally. A shell command for the recipes; plain sed, no jq.
target_dir := '''cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p' '''

# The private recipe `apt-install`, run from a recipe's shell line.
apt_install := quote(just_executable()) + " --justfile " + quote(justfile()) + " apt-install"

# List the recipes.
default:
    @just --list

# Install the WebAssembly targets if this toolchain lacks them.
wasm-target:
    @rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
    @rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# Install make if this machine lacks it: building the server runs it, for its allocator
# (jemalloc, which the tikv-jemalloc-sys crate builds from source with the C compiler that
# linking any Rust program already needs).
build-tools:
    @command -v make >/dev/null || {{ apt_install }} "building the server's allocator" make

# Installs Debian packages with apt, as root or through sudo, waiting up to 10 minutes for
# another apt run to let go of dpkg's lock; the recipes that need a package call it.
[private]
apt-install WHY +PACKAGES:
    #!/usr/bin/env bash
    set -euo pipefail
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing {{ PACKAGES }} for {{ WHY }} (apt)…"
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq {{ PACKAGES }} >/dev/null

# Build the bundled task modules and components into tasks/, with the .wat tasks and
# the manifests (guest-tasks/manifests/NAME.toml). They build with the `guest` profile
# (the root Cargo.toml: release without DWARF).
build-guests: wasm-target
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --profile guest --target wasm32-wasip1 {{ guest_packages }} -p taskhost-guest
    cargo build --profile guest --target wasm32-wasip2 {{ prepend("-p ", guest_components) }} -p counter -p fetch
    target="$({{ target_dir }})"
    [ -d "$target" ] || { echo "cargo reported no target directory (got '$target')" >&2; exit 1; }
    mkdir -p tasks
    # Copy under a temporary name, then rename into place: a running server that
    # watches tasks/ never sees a file half-written (it ignores NAME.wasm.tmp).
    put() { local name; name="$(basename "$1")"; cp "$1" "tasks/$name.tmp"; mv "tasks/$name.tmp" "tasks/$name"; }
    for task in {{ guest_tasks }}; do put "$target/wasm32-wasip1/guest/$task.wasm"; done
    for task in {{ guest_components }}; do put "$target/wasm32-wasip2/guest/$task.wasm"; done
    # `counter` and `fetch` again, as components: the capabilities through the WIT
    # interfaces, and outbound HTTP through the standard wasi:http.
    for task in counter fetch; do
        cp "$target/wasm32-wasip2/guest/$task.wasm" "tasks/${task}_component.wasm.tmp"
        mv "tasks/${task}_component.wasm.tmp" "tasks/${task}_component.wasm"
    done
    for file in guest-tasks/wat/*.wat guest-tasks/manifests/*.toml; do put "$file"; done
    echo "tasks/: $(ls tasks | tr '\n' ' ')"

# Build the C tasks (guest-tasks/c/*.c) into tasks/ with Debian's clang and wasi-libc,
# installing them with apt if they are missing (the recipe that the README gives by hand).
# Debian 12's clang 14 names the target wasm32-wasi; `wasm32-wasip1` finds no headers there.
build-c-tasks:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v clang >/dev/null || [ ! -d /usr/include/wasm32-wasi ] \
        || ! ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1; then
        {{ apt_install }} "the C tasks" clang lld wasi-libc libclang-rt-14-dev-wasm32
    fi
    mkdir -p tasks
    for source in guest-tasks/c/*.c; do
        name="$(basename "$source" .c)"
        clang --target=wasm32-wasi -O2 -Wall -Werror -Wl,--strip-debug -o "tasks/$name.wasm.tmp" "$source"
        mv "tasks/$name.wasm.tmp" "tasks/$name.wasm"
    done
    echo "C tasks: $(cd guest-tasks/c && ls *.c | sed 's/\.c$//' | tr '\n' ' ')"

# The componentize-py release that builds the Python tasks: its WASI 0.2 components run on
# wasmtime 48 (the server's).
componentize_py := "0.25.1"

# Build the Python tasks (guest-tasks/python/NAME.py) into components in tasks/ with
# componentize-py from PyPI, against the world `taskhost:task/command` in wit/. It installs
# componentize-py into a virtual environment in the target directory if it is missing there,
# and rebuilds a task only when its source, wit/ or the tool changed (a build takes ~20 s).
build-py-tasks:
    #!/usr/bin/env bash
    set -euo pipefail
    target="$({{ target_dir }})"
    [ -d "$target" ] || mkdir -p "$target"
    tools="$target/python-tools"
    tool="$tools/bin/componentize-py"
    if [ "$("$tool" --version 2>/dev/null)" != "componentize-py {{ componentize_py }}" ]; then
        echo "installing componentize-py {{ componentize_py }} into $tools (pip)…"
        python3 -m venv "$tools"
        "$tools/bin/python" -m pip install --quiet --disable-pip-version-check "componentize-py=={{ componentize_py }}"
    fi
    mkdir -p tasks
    for source in guest-tasks/python/*.py; do
        name="$(basename "$source" .py)"
        out="tasks/$name.wasm"
        manifest="guest-tasks/manifests/$name.toml"
        if [ -f "$manifest" ]; then cp "$manifest" "tasks/$name.toml.tmp"; mv "tasks/$name.toml.tmp" "tasks/$name.toml"; fi
        if [ -f "$out" ] && [ -z "$(find "$source" wit "$tool" -newer "$out" -print -quit)" ]; then
            continue
        fi
        echo "componentize-py: $source -> $out"
        "$tool" --quiet -d wit -w taskhost:task/command componentize -p guest-tasks/python "$name" -o "$out.tmp"
        mv "$out.tmp" "$out"
    done
    echo "Python tasks: $(cd guest-tasks/python && ls *.py | sed 's/\.py$//' | tr '\n' ' ')"

# Start the server on 127.0.0.1:9501 (pass flags after: just run --task-workers 64). It allows
# pages opened from a file (--allow-origin null), as the original example opens its page; the
# binary on its own refuses them.
run *FLAGS: build-tools
    cargo run --release -p taskhost -- --allow-origin null {{ FLAGS }}

# Install Debian's Chromium for the browser test, if it is missing.
browser:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -x "${CHROMIUM:-/usr/bin/chromium}" ]; then exit 0; fi
    {{ apt_install }} "the browser test" chromium

# Build the guests, then run every test (unit, integration, browser).
test *ARGS: build-tools build-guests build-c-tasks build-py-tasks browser
    cargo test --release {{ host_packages }} {{ ARGS }}

# Formatting and lints, as CI would have them.
check: build-tools
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings

# Benchmark sandbox against native, and against Swoole when `just swoole` has built it: a
# table, target/bench/latest.{json,svg} (in CARGO_TARGET_DIR when set; --quick: seconds).
bench *ARGS: build-tools build-guests
    cargo build --release --all-targets {{ host_packages }}
    "$({{ target_dir }})/release/loadgen" {{ ARGS }}

# The cost of a task through NATS JetStream (--nats) against the embedded queue: per-task CPU
# of the node and of a nats-server it starts, and latency (docs/SCALING.md). Needs nats-server
# and python3-websockets (apt-get install nats-server python3-websockets).
bench-cluster TASKS="2000": build-tools build-guests
    cargo build --release --all-targets {{ host_packages }}
    CARGO_TARGET_DIR="$({{ target_dir }})" python3 bench/cluster_cost.py {{ TASKS }}

# Needs python3-websockets. Flags after `--` go to the server (`just bench-sleepers 10000 --
# --warm-slots 0`).
# Where a sleeping task's memory goes: N `slow` tasks asleep at once, the server's RSS, PSS and smaps by mapping, per sleeper (docs/PERFORMANCE.md).
bench-sleepers N="10000" *ARGS: build-tools build-guests
    cargo build --release --all-targets {{ host_packages }}
    CARGO_TARGET_DIR="$({{ target_dir }})" python3 bench/sleeper_memory.py {{ N }} {{ ARGS }}

# Build Swoole 6.2.2 for Debian's PHP 8.2 into the target directory (swoole/swoole.so), for the
# benchmark's peer column. SRC: a git clone of swoole/swoole-src holding tag v6.2.2
# (after `git clone https://github.com/swoole/swoole-src`, pass swoole-src/.git); installs
# PHP's build kit with apt.
swoole SRC:
    bash bench/peers/build-swoole.sh "{{ SRC }}" "$({{ target_dir }})/swoole"

# Soak: mixed load against the release binary for MINUTES (default 60): echo, slow, broadcast,
# the failure tasks, clients leaving mid-task, a slow reader, module reloads. Samples the
# server's memory, open files, queue depth and echo p99 every 10 s, and fails if one trends
# upward (docs/RELIABILITY.md has the rule); writes soak/latest.json in the target directory.
soak MINUTES="60": build-tools build-guests
    cargo build --release --all-targets {{ host_packages }}
    "$({{ target_dir }})/release/loadgen" soak --minutes {{ MINUTES }}

# Fuzz the parsers (text frames, HTTP request heads, task manifests) with their property
# tests: CASES inputs per property (default 1,000,000), one property at a time on one thread;
# each prints how many inputs it tried. `just test` runs the same properties briefly.
fuzz CASES="1000000": build-tools
    PROPTEST_CASES={{ CASES }} cargo test --release -p taskhost --lib fuzz_tests -- --test-threads 1 --nocapture
