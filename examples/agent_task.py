"""Run a coding agent on a task in a Hutch sandbox, end to end.

    export HUTCH_URL=http://127.0.0.1:7070 HUTCH_API_KEY=hk_...
    export ANTHROPIC_API_KEY=sk-ant-...
    python examples/agent_task.py https://github.com/pallets/itsdangerous \\
        "Add a /health page to the example app and start it on port 8080"

    # no internet or no key: a fake model inside the sandbox (tests/support/fake_anthropic.py)
    python examples/agent_task.py --fake-model /workspace/repo "write hello.txt"

What it does:
1. creates a sandbox from the `agents` image (`hutch image build agents`), the API key given as
   a secret (encrypted at rest, never returned by the API; the agent's processes can read it);
2. clones the repository into /workspace/repo;
3. runs Claude Code on the task as a background process as the non-root `user`, streaming its
   output live;
4. reads the agent's diff back (git) and the changed files (the file API);
5. prints the preview URL of port 8080, where the task may have started a server.

Uses the SDK names of DESIGN.md (`git_checkout`, `start_process`, `read_file`,
`get_preview_url`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from hutch import Sandbox

FAKE_MODEL = Path(__file__).resolve().parents[1] / "tests" / "support" / "fake_anthropic.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo", help="git URL to clone, or a path in the sandbox with --fake-model")
    parser.add_argument("task", help="what the agent should do")
    parser.add_argument("--port", type=int, default=8080, help="port to show a preview URL for")
    parser.add_argument("--fake-model", action="store_true", help="no internet: fake the model")
    parser.add_argument("--keep", action="store_true", help="do not destroy the sandbox")
    args = parser.parse_args()

    key = os.environ.get("ANTHROPIC_API_KEY") or ("sk-fake" if args.fake_model else None)
    if key is None:
        parser.error("set ANTHROPIC_API_KEY (or use --fake-model)")
    sb = Sandbox.create(
        image="agents",
        network="none" if args.fake_model else "internet",
        secrets={"ANTHROPIC_API_KEY": key},
        timeout=3600,
    )
    print(f"sandbox {sb.id}", file=sys.stderr)
    try:
        return run_task(sb, args)
    finally:
        if not args.keep:
            sb.destroy()


def run_task(sb: Sandbox, args: argparse.Namespace) -> int:
    repo = "/workspace/repo"
    env = {}
    if args.fake_model:
        sb.write_file("/tmp/fake_anthropic.py", FAKE_MODEL.read_bytes())
        model = sb.start_process(
            "python3 /tmp/fake_anthropic.py 8765 /tmp/fake.jsonl",
            env={"FAKE_TARGET": f"{repo}/hello.txt"},
        )
        model.wait_for_port(8765, mode="tcp", timeout=30)
        env["ANTHROPIC_BASE_URL"] = "http://127.0.0.1:8765"
        sb.exec(
            f"mkdir -p {repo} && cd {repo} && git init -q && git commit -q --allow-empty -m init"
        )
    else:
        sb.git_checkout(args.repo, target_dir=repo, depth=1)
    sb.exec(f"chown -R user:user {repo}")

    # The agent runs as `user` (Claude Code will not skip permission prompts as root); sudo -H
    # gives it /home/user, and the secret and the model URL pass through.
    keep = ",".join(["ANTHROPIC_API_KEY", *env])
    command = (
        f"sudo -u user -H --preserve-env={keep} claude -p {shlex.quote(args.task)} "
        "--allowedTools Edit,Write,Bash,Read,Glob,Grep --output-format text"
    )
    agent = sb.start_process(command, cwd=repo, env=env)
    for chunk in agent.stream_logs(since=0):  # replays from byte 0, then follows live
        data = getattr(chunk, "data", chunk)
        sys.stdout.write(data.decode(errors="replace") if isinstance(data, bytes) else str(data))
    agent.wait(timeout=3600)
    print(f"\nagent exited with {agent.exit_code}", file=sys.stderr)

    # The agent's work, read back: the diff from git, new files through the file API.
    status = sb.exec("git status --porcelain", cwd=repo).stdout.splitlines()
    print("\n--- git diff ---")
    print(sb.exec("git diff", cwd=repo).stdout)
    for line in status:
        if line.startswith("??"):
            path = f"{repo}/{line[3:]}"
            print(f"--- new file {path} ---")
            print(sb.read_file(path, text=True))

    # A server the task may have started (e.g. "start it on port 8080"): open it in a browser.
    print(f"preview: {sb.get_preview_url(args.port)}")
    return 0 if agent.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
