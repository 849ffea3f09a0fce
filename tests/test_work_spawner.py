"""Every process the agent starts is born in the sandbox's `work` cgroup, by the spawner
thread (agent/_spawner.py), while the agent itself stays outside it."""

from __future__ import annotations

import pytest

from hutch import Sandbox
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox


def cgroups(text: str) -> dict[str, str]:
    lines = (line.split(":", 2) for line in text.splitlines() if line.count(":") >= 2)
    return {controllers: path for _, controllers, path in lines}


def test_children_are_born_in_work_and_the_agent_is_not(server: ServerProcess) -> None:
    with Sandbox.create(base_url=server.url, api_key=server.api_key) as sb:
        for r in (
            sb.run("cat", ["/proc/self/cgroup"]),  # argv: vfork from the spawner thread
            sb.exec("cat /proc/self/cgroup"),  # through the shell
            sb.exec("sh -c 'cat /proc/self/cgroup' &  wait"),  # a grandchild
            sb.exec("cat /proc/self/cgroup", user="nobody"),  # a uid switch: via the launcher
        ):
            assert r.exit_code == 0, r.stderr
            mine = cgroups(r.stdout)
            assert mine["memory"] == "/work" and mine["pids"] == "/work", r.stdout
        agent = cgroups(sb.exec("cat /proc/1/cgroup").stdout)
        assert agent["memory"] == "/" and agent["pids"] == "/"
        # Every thread of the agent but the spawner stays out of `work` as well.
        main_thread = cgroups(sb.exec("cat /proc/1/task/1/cgroup").stdout)
        assert main_thread["memory"] == "/"
