#!/bin/sh
# Runs as root inside the image (chroot) after the packages and the npm CLIs are installed.
set -eu

# The CLIs (npm ci put them under /opt/hutch-agents): on everyone's PATH.
for cli in claude codex opencode; do
  ln -sf "/opt/hutch-agents/node_modules/.bin/$cli" "/usr/local/bin/$cli"
done

# A non-root account for agents (Claude Code refuses --dangerously-skip-permissions as root).
if ! id user >/dev/null 2>&1; then
  useradd --create-home --uid 1000 --user-group --shell /bin/bash user
fi
mkdir -p /workspace
chown user:user /workspace
chmod 755 /workspace
# Git refuses a repository owned by someone else; agents and root both work in /workspace.
git config --system --add safe.directory '*'
git config --system init.defaultBranch main
printf 'user ALL=(ALL) NOPASSWD:ALL\n' > /etc/sudoers.d/user
chmod 440 /etc/sudoers.d/user
