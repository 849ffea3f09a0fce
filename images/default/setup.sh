#!/bin/sh
# Runs as root inside the image (chroot) after the packages are installed.
set -eu

# A sandbox is a throwaway machine: `pip install` into the system Python should just work there
# (PEP 668's marker would make it refuse).
rm -f /usr/lib/python3*/EXTERNALLY-MANAGED

mkdir -p /workspace
chmod 755 /workspace

# A normal user as E2B's base image has: uid 1000, /home/user, sudo without a password. Commands
# still run as root unless the caller asks for `user` (the image config's user is root).
useradd --create-home --uid 1000 --user-group --shell /bin/bash user
echo 'user ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/user
chmod 440 /etc/sudoers.d/user
# /workspace is the default working directory: `user` must be able to write there too.
chown user:user /workspace

# What debootstrap installed before files/etc/dpkg/dpkg.cfg.d/ applied: same trimming.
find /usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
find /usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf /usr/share/man/* /usr/share/info/* /usr/share/groff/* /usr/share/lintian/*
find /usr/share/locale -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +


# A login shell is what every E2B command runs in (`bash -l -c CMD`): Debian's profiles fork
# `id -u` (and `mesg n`, for root) on each. Bash knows its uid ($EUID) and `mesg` only acts
# on a terminal: the same PATH and the same result, without the forks (plain sh still asks id).
sed -i 's/^if \[ "\$(id -u)" -eq 0 \]; then$/if [ "${BASH_VERSION:+$EUID}" = 0 ] || { [ -z "${BASH_VERSION-}" ] \&\& [ "$(id -u)" -eq 0 ]; }; then/' /etc/profile
grep -q 'BASH_VERSION:+$EUID' /etc/profile
sed -i 's/^mesg n 2> \/dev\/null || true$/{ [ -t 0 ] \&\& mesg n 2> \/dev\/null; } || true/' /root/.profile
grep -q '\[ -t 0 \] && mesg n' /root/.profile
