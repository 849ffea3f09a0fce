"""How fast a sandbox without network finds out: name lookups and `pip download` (issue 23).

Run as root after the default image is built (HUTCH_TEST_IMAGES picks the image store):

    .venv/bin/python bench/bench_offline.py [--n 200] [--pip 3]

Timed inside one network="none" sandbox by Python's own clock, so the exec round trip is not
in the figures: getaddrinfo() of a public name (fails), next to the baseline of the same call
for `localhost` (answered from /etc/hosts) in the same run. Then `pip download` of one package
end to end as a user runs it (exec included), next to the same with pip's own retries (the
behaviour before PIP_RETRIES=1 was set for sandboxes without network), and `getent hosts`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stats import report
from hutch import Sandbox
from tests._server import ServerProcess

LOOKUPS = """
import json, socket, sys, time
name, n = sys.argv[1], int(sys.argv[2])
samples, error = [], None
for _ in range(n):
    t0 = time.perf_counter()
    try:
        socket.getaddrinfo(name, 443)
    except OSError as e:
        error = str(e)
    samples.append(time.perf_counter() - t0)
print(json.dumps({"samples": samples, "error": error}))
"""


def lookups(sb: Sandbox, name: str, n: int) -> tuple[list[float], str | None]:
    r = sb.run("python3", ["-c", LOOKUPS, name, str(n)], timeout=600)
    data = json.loads(r.stdout)
    return data["samples"], data["error"]


def timed_exec(sb: Sandbox, command: str, n: int) -> tuple[list[float], str]:
    samples, last = [], ""
    for _ in range(n):
        t0 = time.perf_counter()
        r = sb.exec(command, timeout=120)
        samples.append(time.perf_counter() - t0)
        last = (r.stderr.strip().splitlines() or [""])[-1]
    return samples, last


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--pip", type=int, default=3)
    args = parser.parse_args()

    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}")
    server = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-bench-", dir="/var/tmp")))
    server.start()
    try:
        with Sandbox.create(base_url=server.url, api_key=server.api_key) as sb:
            ok, _ = lookups(sb, "localhost", args.n)
            print(report("baseline: getaddrinfo('localhost') (hosts)", ok))
            failed, error = lookups(sb, "pypi.org", args.n)
            print(report("getaddrinfo('pypi.org'), network=none", failed) + f"  [{error}]")
            base, _ = timed_exec(sb, "true", 20)
            print(report("baseline: exec true", base))
            getent, _ = timed_exec(sb, "getent hosts pypi.org", 20)
            print(report("exec getent hosts pypi.org (fails)", getent))
            pip_cmd = "pip download --no-deps -d /tmp/dl pytest"
            old, _ = timed_exec(sb, f"env -u PIP_RETRIES {pip_cmd}", args.pip)
            print(report("before: pip download, pip's own retries", old))
            pip, last = timed_exec(sb, pip_cmd, args.pip)
            print(report("exec pip download pytest (fails)", pip) + f"  [{last[:90]}]")
    finally:
        server.stop()
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
