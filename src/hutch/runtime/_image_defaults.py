"""What an image's config tells the agent: the default working directory and user of every
exec, session and terminal (as `docker exec` does with WORKDIR and USER)."""

from __future__ import annotations

from hutch.runtime._images import Image


def image_agent_env(image: Image) -> dict[str, str]:
    """The agent's private settings (`HUTCH_AGENT_*`, never seen by children) for `image`."""
    env = {"HUTCH_AGENT_WORKSPACE": image.config.working_dir}
    if image.config.user not in ("", "root", "0", "0:0"):
        env["HUTCH_AGENT_USER"] = image.config.user
    return env
