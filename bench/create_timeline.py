"""Where a cold create -> first exec goes after the server asks for it: a kernel timeline.

    .venv/bin/python bench/create_timeline.py [--n 15] [--python /work/main/.venv/bin/python]

Runs `perf record` (system wide, scheduler and socket tracepoints, CLOCK_MONOTONIC so the
client's own time stamps line up) around `--n` cold creates, each followed by one
`sb.exec("true")`, and splits each into intervals by what the kernel saw:

    runc spawned      the server starts `runc run --detach`
    runc exited       runc returns: the agent's loader may exec now
    server connected  the server connects to the agent's socket (after runc exited)
    server pinged     the server's next send: its ping, queued until the agent accepts
    agent exec        the agent's loader (`/.hutch/lib/ld-linux-x86-64.so.2`) is exec'd
    agent accepted    the agent accepts the server's first connection (its start-up done)
    agent answered    the agent's first send (sendmsg): the answer to the server's ping
    network done      the last `ip`/`nft`/`sh`/`nsenter` of the deferred network attach exits
                      (since create16 only `ip`: the nft transactions run inside the server
                      by libnftables, and the in-netns tools need no nsenter or sh; since
                      create17 none: the attach is rtnetlink from the server, and this mark
                      is "-")
    create returned   the SDK has the create's response
    exec arrived      the agent reads the exec request (its first read after both the
                      create's answer and its own answer to the ping)
    true exec'd       `/usr/bin/true` is exec'd in the sandbox
    exec returned     the SDK has the exec's result

Each interval's p50/p95 over the creates is printed, with the load average. Needs root,
`perf`, and tracefs (mounted at /sys/kernel/tracing if it is not). Other processes on the
machine are ignored (events are matched to the server's, runc's and the agent's pids).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tests._server as test_server
from bench._stats import percentile
from hutch import Sandbox
from tests._server import ServerProcess
from tests.conftest import _cleanup_home

EVENTS = (
    "sched:sched_process_exec",
    "sched:sched_process_exit",
    "syscalls:sys_exit_accept4",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_sendmsg",  # the agent's sends (the server's are sendto)
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_connect",
)
NETWORK_TOOLS = ("ip", "nft", "sh", "nsenter")
LINE = re.compile(r"\s*(.+?)\s+(\d+)/(\d+)\s+([\d.]+):\s+\S+:(\S+):\s*(.*)")
MARKS = (
    "runc spawned",
    "runc exited",
    "server connected",
    "server pinged",
    "agent exec",
    "agent accepted",
    "agent answered",
    "network done",
    "create returned",
    "exec arrived",
    "true exec'd",
    "exec returned",
)


@dataclass(frozen=True, slots=True)
class Event:
    t: float
    comm: str
    pid: int
    tid: int
    name: str
    rest: str


def parse(perf_data: Path) -> list[Event]:
    out = subprocess.run(
        ["perf", "script", "-i", str(perf_data), "-F", "comm,pid,tid,time,event,trace"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    events = []
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            comm, pid, tid, t, name, rest = m.groups()
            events.append(Event(float(t), comm, int(pid), int(tid), name, rest))
    return events


def marks_of(
    events: list[Event], server: int, t0: float, created: float, done: float
) -> dict[str, float]:
    """The time (ms after t0) of each mark in one create's window, as far as found."""
    window = [e for e in events if t0 <= e.t <= done + 0.005]
    found: dict[str, float] = {}

    def first(name: str, pred: Callable[[Event], bool]) -> Event | None:
        for e in window:
            if pred(e):
                found.setdefault(name, (e.t - t0) * 1e3)
                return e
        return None

    runc = first(
        "runc spawned",
        lambda e: e.name == "sched_process_exec" and "filename=/usr/sbin/runc " in e.rest,
    )
    if runc is not None:
        exits = [e.t for e in window if e.name == "sched_process_exit" and e.pid == runc.pid]
        if exits:
            found["runc exited"] = (max(exits) - t0) * 1e3
    runc_end = t0 + found.get("runc exited", 0.0) / 1e3
    first(
        "server connected",
        lambda e: e.pid == server and e.t >= runc_end and e.name == "sys_enter_connect",
    )
    connected = t0 + found.get("server connected", 0.0) / 1e3
    first(
        "server pinged",
        lambda e: e.pid == server and e.t >= connected and e.name == "sys_enter_sendto",
    )
    agent = first(
        "agent exec",
        lambda e: e.name == "sched_process_exec" and "ld-linux-x86-64.so.2" in e.rest,
    )
    if agent is not None:
        # NB: runc's init had the same pid before it exec'd the agent's loader.
        pid, started = agent.pid, agent.t
        first(
            "agent accepted",
            lambda e: (
                e.pid == pid
                and e.t > started
                and e.name == "sys_exit_accept4"
                and "0xffff" not in e.rest
            ),
        )
        first(
            "agent answered",
            lambda e: (
                e.pid == pid
                and e.t > started
                and e.name in ("sys_enter_sendto", "sys_enter_sendmsg")
            ),
        )
        # NB: after the answer too: a create that answers before its agent does is back at
        # the client before the agent has even read the ping.
        answered = t0 + found.get("agent answered", 0.0) / 1e3
        first(
            "exec arrived",
            lambda e: (
                e.pid == pid and e.name == "sys_enter_recvfrom" and e.t > max(created, answered)
            ),
        )
    network = [
        e.t
        for e in window
        if e.name == "sched_process_exit" and e.comm in NETWORK_TOOLS and e.t <= created
    ]
    if network:
        found["network done"] = (max(network) - t0) * 1e3
    # NB: other users of the machine run `true` too: only one after the exec arrived counts.
    arrived = t0 + found.get("exec arrived", (created - t0) * 1e3) / 1e3
    first(
        "true exec'd",
        lambda e: (
            e.t >= arrived
            and e.name == "sched_process_exec"
            and re.search(r"filename=\S*/true ", e.rest) is not None
        ),
    )
    found["create returned"] = (created - t0) * 1e3
    found["exec returned"] = (done - t0) * 1e3
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=15)
    parser.add_argument("--python", type=Path, help="another checkout's interpreter (its server)")
    args = parser.parse_args()
    if args.python is not None:
        test_server.HUTCH_BIN = args.python.with_name("hutch")
    if not Path("/sys/kernel/tracing/events").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)
    server = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-timeline-", dir="/var/tmp")))
    server.start(timeout=180)
    opts = {"base_url": server.url, "api_key": server.api_key}
    work = Path(tempfile.mkdtemp(prefix="hutch-timeline-perf-", dir="/var/tmp"))
    try:
        for _ in range(3):  # the page cache, the agent bundle
            with Sandbox.create(**opts) as sb:
                sb.exec("true")
        perf = subprocess.Popen(
            ["perf", "record", "-q", "-a", "-k", "CLOCK_MONOTONIC", "-o", str(work / "perf.data")]
            + [a for e in EVENTS for a in ("-e", e)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        load_before = os.getloadavg()
        windows = []
        for _ in range(args.n):
            t0 = time.monotonic()
            sb = Sandbox.create(**opts)
            created = time.monotonic()
            sb.exec("true")
            windows.append((t0, created, time.monotonic()))
            time.sleep(0.05)
            sb.destroy()
            time.sleep(0.05)
        load_after = os.getloadavg()
        perf.send_signal(signal.SIGINT)
        perf.wait()
        events = parse(work / "perf.data")
    finally:
        server.stop()
        _cleanup_home(server)
        subprocess.run(["rm", "-rf", str(work)], check=False)
    assert server.proc is not None
    rows = [marks_of(events, server.proc.pid, *w) for w in windows]
    print(f"{args.n} cold creates + first exec; ms after the SDK's create call")
    print(f"{'mark':18} {'p50':>8} {'p95':>8}   {'interval from the mark before':30} p50")
    previous = None
    for mark in MARKS:
        times = [r[mark] for r in rows if mark in r]
        if not times:
            print(f"{mark:18} {'-':>8}")
            continue
        gap = ""
        if previous is not None:
            gaps = [r[mark] - r[previous] for r in rows if mark in r and previous in r]
            if gaps:
                gap = f"{previous + ' -> ' + mark:30} {percentile(gaps, 50):6.2f}"
        print(f"{mark:18} {percentile(times, 50):8.2f} {percentile(times, 95):8.2f}   {gap}")
        previous = mark
    start = [r["agent answered"] - r["agent exec"] for r in rows if "agent answered" in r]
    if start:
        print(f"agent exec -> answered: p50 {percentile(start, 50):.2f} ms")
    print(f"load average before {load_before}, after {load_after}")


if __name__ == "__main__":
    main()
