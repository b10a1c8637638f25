#!/usr/bin/env python3
"""The cost of a task through NATS JetStream (`--nats`) against the embedded queue.

Starts a nats-server (-js, a temporary store) and one taskhost node, sends echo tasks, and
prints per-task CPU (the node's and the broker's, from /proc) and latency, then the same
against a node without --nats. docs/SCALING.md reads its figures from here.
Usage: bench/cluster_cost.py [TASKS] (the binary from $CARGO_TARGET_DIR or target/release).
Needs python3-websockets and nats-server.
"""
import asyncio, json, os, socket, subprocess, sys, tempfile, time

import websockets

TICK = os.sysconf("SC_CLK_TCK")
TASKS = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
CONNECTIONS = 4
SEQUENTIAL = 300
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "taskhost")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_for(proc, text, within=30):
    deadline = time.time() + within
    while time.time() < deadline:
        line = proc.stderr.readline().decode(errors="replace")
        if text in line:
            return
    raise SystemExit(f"no {text!r} in the node's log")


async def pipelined(url, count):
    async with websockets.connect(url, max_size=None) as ws:
        await ws.recv()  # hello
        for i in range(count):
            await ws.send(json.dumps({"type": "task", "task": "echo", "input": i}))
        ends = 0
        while ends < count:
            kind = json.loads(await ws.recv())["type"]
            if kind in ("finished", "failed"):
                ends += 1
            elif kind == "rejected":
                raise SystemExit("a task was rejected")


async def sequential(url, count):
    latencies = []
    async with websockets.connect(url) as ws:
        await ws.recv()
        for i in range(count):
            start = time.perf_counter()
            await ws.send(json.dumps({"type": "task", "task": "echo", "input": i}))
            while json.loads(await ws.recv())["type"] not in ("finished", "failed"):
                pass
            latencies.append(time.perf_counter() - start)
    latencies.sort()
    return latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]


def measure(nats_url):
    port = free_port()
    args = [BINARY, "--listen", f"127.0.0.1:{port}", "--tasks", os.path.join(ROOT, "tasks"),
            "--task-workers", "4", "--no-watch"]
    if nats_url:
        args += ["--nats", nats_url, "--node-name", "bench"]
    env = dict(os.environ, RUST_LOG="info")
    node = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    try:
        wait_for(node, "joined the broker" if nats_url else "taskhost listening")
        url = f"ws://127.0.0.1:{port}/"
        asyncio.run(pipelined(url, 100))  # warm up
        broker_pid = BROKER.pid if nats_url else None
        node_cpu, broker_cpu, start = cpu_seconds(node.pid), broker_pid and cpu_seconds(broker_pid), time.time()

        async def all_connections():
            await asyncio.gather(*(pipelined(url, TASKS // CONNECTIONS) for _ in range(CONNECTIONS)))

        asyncio.run(all_connections())
        wall = time.time() - start
        node_cpu = cpu_seconds(node.pid) - node_cpu
        broker_cpu = cpu_seconds(broker_pid) - broker_cpu if broker_pid else 0.0
        p50, p99 = asyncio.run(sequential(url, SEQUENTIAL))
        return TASKS / wall, node_cpu / TASKS * 1e6, broker_cpu / TASKS * 1e6, p50 * 1e3, p99 * 1e3
    finally:
        node.kill()
        node.wait()


store = tempfile.mkdtemp(prefix="nats-bench-")
nats_port = free_port()
BROKER = subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd", store],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    time.sleep(0.5)
    rows = [("embedded", measure(None)), ("--nats", measure(f"nats://127.0.0.1:{nats_port}"))]
finally:
    BROKER.kill()
    BROKER.wait()
    subprocess.run(["rm", "-rf", store])
print(f"{TASKS} echo tasks, {CONNECTIONS} connections pipelined; latency over {SEQUENTIAL} sequential tasks")
print("| queue | tasks/s | node CPU µs/task | broker CPU µs/task | p50 ms | p99 ms |")
print("| --- | --- | --- | --- | --- | --- |")
for name, (rate, node_us, broker_us, p50, p99) in rows:
    print(f"| {name} | {rate:.0f} | {node_us:.0f} | {broker_us:.0f} | {p50:.2f} | {p99:.2f} |")
