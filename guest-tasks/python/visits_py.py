"""`visits_py`: `{"page": "P"}` in, the page's new visit count out (1, 2, 3, ...), kept in
the key-value store its manifest grants (`kv = "visits"`), so across restarts too.

A bundled task in Python, built into a WebAssembly component by componentize-py against
the world `taskhost:task/command` in wit/ (`just build-py-tasks`): it exports
`wasi:cli/run` and imports the typed `kv` interface. Like every task, its input is JSON
on stdin and its result JSON on stdout; a failure is a message on stderr and the `run`
export's error. Without the grant (a copy without its manifest) the host refuses the
call with a message saying "not allowed", which the task passes on.
"""

import json
import sys

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import kv

# The longest page name, in bytes (the store takes keys of up to 512).
MAX_PAGE_BYTES = 200


def count_visit(raw: str) -> int:
    """The page's new count; ValueError with a message for a person on bad input."""
    try:
        request = json.loads(raw) if raw.strip() else None
    except json.JSONDecodeError as error:
        raise ValueError(f"the input is not JSON: {error}") from None
    page = request.get("page") if isinstance(request, dict) else None
    if not isinstance(page, str) or not 0 < len(page.encode()) <= MAX_PAGE_BYTES:
        raise ValueError(
            f'visits_py takes {{"page": "P"}}, P a string of 1 to {MAX_PAGE_BYTES} bytes'
        )
    try:
        return kv.incr("visits:" + page, 1)
    except Err as refused:
        # The host's CallError: its message says what was refused and what to do.
        raise ValueError(f"{refused.value.code}: {refused.value.message}") from None


class Run(exports.Run):
    def run(self) -> None:
        try:
            count = count_visit(sys.stdin.read())
        except ValueError as error:
            print(error, file=sys.stderr)
            sys.stderr.flush()
            raise Err(None)
        sys.stdout.write(json.dumps(count))
        sys.stdout.flush()
