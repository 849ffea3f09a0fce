"""What an image's config tells the agent: the default working directory and user of every
exec, session and terminal (as `docker exec` does with WORKDIR and USER), and the shell of
sessions and terminals when the image's ENTRYPOINT+CMD is one (`CMD ["bash", "-l"]`)."""

from __future__ import annotations

import json
import posixpath

from hutch.runtime.images._store import Image, ImageConfig

SHELL_NAMES = frozenset({"sh", "bash", "ash", "zsh", "dash"})


def image_command(config: ImageConfig) -> list[str]:
    """What `docker run IMAGE` runs: ENTRYPOINT followed by CMD (empty if neither is set)."""
    return [*config.entrypoint, *config.cmd]


def image_shell(config: ImageConfig) -> list[str] | None:
    """The image's command if it starts an interactive shell (a shell with options only, such
    as `-l` or `--login`; never `-c CMD` or a script), else None."""
    argv = image_command(config)
    if not argv or posixpath.basename(argv[0]) not in SHELL_NAMES:
        return None
    for arg in argv[1:]:
        if not arg.startswith("-") or arg == "-":
            return None  # a script, or an option's value: it runs something else
        if not arg.startswith("--") and "c" in arg[1:]:
            return None  # -c CMD (alone or in a cluster such as -lc)
    return argv


def image_agent_env(image: Image) -> dict[str, str]:
    """The agent's private settings (`HUTCH_AGENT_*`, never seen by children) for `image`."""
    env = {"HUTCH_AGENT_WORKSPACE": image.config.working_dir}
    if image.config.user not in ("", "root", "0", "0:0"):
        env["HUTCH_AGENT_USER"] = image.config.user
    shell = image_shell(image.config)
    if shell is not None:
        env["HUTCH_AGENT_SHELL"] = json.dumps(shell)
    return env
