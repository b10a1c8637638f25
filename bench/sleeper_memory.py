#!/usr/bin/env python3
"""Where a sleeping task's memory goes: N `slow` tasks asleep at once, the server's smaps.

Starts taskhost with `--task-workers N` (and any extra flags given after `--`), reads its
memory when idle, submits N `slow` tasks of 30 s over 100 connections, waits until every one
is accepted and asleep, then reads `/proc/PID/smaps_rollup` (RSS, PSS, shared and private
pages) and `/proc/PID/smaps` grouped by what each mapping is, and prints both with the
difference per sleeper. Unlike the benchmark's scenario 4 (1 s tasks, whose first ones end
while the last start), every task is asleep when it measures, so the figure does not depend
on how fast the burst went, and memory can be measured on a busy machine.
docs/PERFORMANCE.md ("Where a sleeper's memory goes") reads its figures from here.

Usage: bench/sleeper_memory.py [N] [--tasks DIR] [-- SERVER FLAGS...]
(the binary from $CARGO_TARGET_DIR or target/release). Needs python3-websockets.
"""
import asyncio, collections, json, os, socket, subprocess, sys, tempfile, time, urllib.request

import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "taskhost")
CONNECTIONS = 100
SLEEP_SECONDS = 30
# How long the whole run may take: start, the burst, the reading. Past it, it gives up.
DEADLINE_SECONDS = 120


def arguments():
    args, extra = sys.argv[1:], []
    if "--" in args:
        extra = args[args.index("--") + 1 :]
        args = args[: args.index("--")]
    tasks = os.path.join(ROOT, "tasks")
    if "--tasks" in args:
        tasks = args[args.index("--tasks") + 1]
        del args[args.index("--tasks") : args.index("--tasks") + 2]
    count = int(args[0]) if args else 2000
    return max(CONNECTIONS, count - count % CONNECTIONS), tasks, extra


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rollup(pid):
    fields = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1])
    return fields


def kind(size_kib, perms, name):
    """What a mapping is, as far as its name, size and permissions tell."""
    if name.startswith("/memfd:wasm-memory-image"):
        return "module data images (copy-on-write memfd)"
    if name:
        return "files and the main heap (" + ("[heap]" if name == "[heap]" else "binary, libraries") + ")"
    if perms.startswith("---"):
        return "guard pages"
    if size_kib == 2048:
        return "fiber stacks (2 MiB each)"
    if size_kib == 1024:
        return "guests' stacks (the first 1 MiB of each memory)"
    return "other anonymous (malloc arenas, pool slots: memories past 1 MiB, tables)"


def groups(pid):
    totals = collections.defaultdict(lambda: [0, 0, 0])
    current = None
    for line in open(f"/proc/{pid}/smaps"):
        parts = line.split()
        if "-" in parts[0] and ":" not in parts[0]:
            low, high = (int(x, 16) for x in parts[0].split("-"))
            current = totals[kind((high - low) >> 10, parts[1], parts[5] if len(parts) > 5 else "")]
            current[0] += 1
        elif parts[0] == "Rss:":
            current[1] += int(parts[1])
        elif parts[0] == "Pss:":
            current[2] += int(parts[1])
    return totals


async def wait_ready(port, server):
    deadline = time.time() + 60
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200:
                return
        except OSError:
            await asyncio.sleep(0.1)
    raise SystemExit("the server did not answer /healthz within 60 s")


async def put_to_sleep(port, count):
    """Submits `count` sleeps over CONNECTIONS connections; returns once all are accepted."""
    connections = [await websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None) for _ in range(CONNECTIONS)]
    for connection in connections:
        await connection.recv()  # hello
    task = json.dumps({"type": "task", "task": "slow", "input": {"seconds": SLEEP_SECONDS}})

    async def submit(connection, tasks):
        for _ in range(tasks):
            await connection.send(task)
        accepted = 0
        while accepted < tasks:
            message = json.loads(await connection.recv())
            if message["type"] == "accepted":
                accepted += 1
            elif message["type"] in ("rejected", "failed", "error"):
                raise SystemExit(f"a task did not go to sleep: {message}")

    await asyncio.gather(*(submit(c, count // CONNECTIONS) for c in connections))
    return connections


async def measure(count, tasks, extra):
    port = free_port()
    with tempfile.TemporaryDirectory() as cache:
        server = subprocess.Popen(
            [BINARY, "--listen", f"127.0.0.1:{port}", "--tasks", tasks, "--task-workers", str(count),
             "--cache-dir", cache, *extra],
            env=dict(os.environ, RUST_LOG="warn"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_ready(port, server)
            await asyncio.sleep(2)  # the pool's warming (--warm-slots) ends
            idle = rollup(server.pid)
            began = time.time()
            connections = await put_to_sleep(port, count)
            accepted_after = time.time() - began
            await asyncio.sleep(max(0.0, 2.5 - accepted_after))  # each has run to its first sleep
            asleep, by_kind = rollup(server.pid), groups(server.pid)
            for connection in connections:
                await connection.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"{count} `slow` tasks asleep ({' '.join(extra) or 'default flags'}; all accepted in {accepted_after:.2f} s)")
    print(f"{'':16}{'idle':>11}{'asleep':>11}{'per sleeper':>14}")
    for field in ("Rss", "Pss", "Shared_Dirty", "Private_Dirty", "Anonymous"):
        before, after = idle.get(field, 0), asleep.get(field, 0)
        print(f"{field:16}{before / 1024:>7.1f} MiB{after / 1024:>7.1f} MiB{(after - before) / count:>10.1f} KiB")
    print("asleep, by mapping:")
    for name, (maps, rss, pss) in sorted(by_kind.items(), key=lambda item: -item[1][1]):
        print(f"  {name:72} {maps:>6} maps  RSS {rss / 1024:>7.1f} MiB ({rss / count:>5.1f} KiB a sleeper)  PSS {pss / 1024:>7.1f} MiB")


def main():
    count, tasks, extra = arguments()
    asyncio.run(asyncio.wait_for(measure(count, tasks, extra), DEADLINE_SECONDS))


if __name__ == "__main__":
    main()
