"""The sandbox seccomp profile: an allowlist in the spirit of Docker's default profile.

Differences from Docker's `profiles/seccomp/default.json`, all stricter:
- no 32-bit (x86, x32) syscall ABIs: sandbox images are x86_64, and the compat entry points are a
  classic source of kernel bugs; a 32-bit binary is killed instead of running half-filtered;
- `io_uring_*` fail with ENOSYS (callers such as libuv fall back to threads): io_uring has been
  the largest source of kernel privilege escalations of recent years;
- `name_to_handle_at`, `process_vm_readv`/`writev` are not allowed (Docker allows them);
- no capability-dependent rules: the sandbox never holds SYS_ADMIN, SYS_PTRACE, SYS_TIME, ...
"""

from __future__ import annotations

import errno
import os
import re

from hutch.runtime.container._oci import Seccomp, SeccompArg, SyscallRule

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"

# Unconditionally allowed. Docker's list minus the exclusions above, plus syscalls newer than it
# (runc skips names its libseccomp does not know, and answers ENOSYS for syscalls newer than the
# filter's, so glibc falls back).
ALLOWED_SYSCALLS: tuple[str, ...] = (
    "accept", "accept4", "access", "adjtimex", "alarm", "arch_prctl", "bind", "brk",
    "cachestat", "capget", "capset", "chdir", "chmod", "chown", "chroot", "clock_adjtime",
    "clock_getres", "clock_gettime", "clock_nanosleep", "close", "close_range", "connect",
    "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create", "epoll_create1",
    "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old",
    "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2",
    "fadvise64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2",
    "fchown", "fchownat", "fcntl", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork",
    "fremovexattr", "fsetxattr", "fstat", "fstatfs", "fsync", "ftruncate", "futex",
    "futex_requeue", "futex_wait", "futex_waitv", "futex_wake", "futimesat", "get_robust_list",
    "get_thread_area", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "geteuid",
    "getgid", "getgroups", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid",
    "getpriority", "getrandom", "getresgid", "getresuid", "getrlimit", "getrusage", "getsid",
    "getsockname", "getsockopt", "gettid", "gettimeofday", "getuid", "getxattr",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel",
    "io_destroy", "io_getevents", "io_pgetevents", "io_setup", "io_submit", "ioctl",
    "ioprio_get", "ioprio_set", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lgetxattr", "link", "linkat", "listen", "listxattr",
    "llistxattr", "lremovexattr", "lseek", "lsetxattr", "lstat", "madvise", "map_shadow_stack",
    "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod",
    "mknodat", "mlock", "mlock2", "mlockall", "mmap", "modify_ldt", "mprotect", "mq_getsetattr",
    "mq_notify", "mq_open", "mq_timedreceive", "mq_timedsend", "mq_unlink", "mremap", "mseal",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "nanosleep", "newfstatat", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll",
    "ppoll", "prctl", "pread64", "preadv", "preadv2", "prlimit64", "process_mrelease",
    "pselect6", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink",
    "readlinkat", "readv", "recvfrom", "recvmmsg", "recvmsg", "remap_file_pages", "removexattr",
    "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_tgsigqueueinfo", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_getscheduler",
    "sched_rr_get_interval", "sched_setaffinity", "sched_setattr", "sched_setparam",
    "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget", "semop",
    "semtimedop", "sendfile", "sendmmsg", "sendmsg", "sendto", "set_robust_list",
    "set_thread_area", "set_tid_address", "setfsgid", "setfsuid", "setgid", "setgroups",
    "setitimer", "setpgid", "setpriority", "setregid", "setresgid", "setresuid", "setreuid",
    "setrlimit", "setsid", "setsockopt", "setuid", "setxattr", "shmat", "shmctl", "shmdt",
    "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "socketpair", "splice",
    "stat", "statfs", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs",
    "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_settime", "timerfd_create", "timerfd_gettime", "timerfd_settime",
    "times", "tkill", "truncate", "umask", "uname", "unlink", "unlinkat", "utime", "utimensat",
    "utimes", "vfork", "vmsplice", "wait4", "waitid", "write", "writev",
)  # fmt: skip

# Syscalls the sandbox must never make: host-wide effects, kernel attack surface, or a way out of
# its namespaces. Not in the allowlist, so they get the default EPERM; listed so tests hold the
# line when the allowlist changes.
DENIED_SYSCALLS: tuple[str, ...] = (
    "acct", "add_key", "bpf", "clock_settime", "delete_module", "fanotify_init",
    "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "get_mempolicy",
    "init_module", "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl",
    "lookup_dcookie", "mbind", "mount", "mount_setattr", "move_mount", "name_to_handle_at",
    "nfsservctl", "open_by_handle_at", "open_tree", "perf_event_open", "pidfd_getfd",
    "pivot_root", "process_madvise", "process_vm_readv", "process_vm_writev", "quotactl",
    "quotactl_fd", "reboot", "request_key", "set_mempolicy", "setdomainname", "sethostname",
    "setns", "settimeofday", "stime", "swapoff", "swapon", "syslog", "umount", "umount2",
    "unshare", "uselib", "userfaultfd", "vhangup",
)  # fmt: skip

# Answered with ENOSYS rather than EPERM, so that callers take their fallback path: glibc retries
# clone3 as clone (which we can filter by flags; clone3 takes a pointer seccomp cannot read), and
# io_uring users fall back to threads.
ENOSYS_SYSCALLS: tuple[str, ...] = (
    "clone3",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NAMESPACE_FLAGS = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
)

AF_VSOCK = 40  # a path to the hypervisor, not a sandbox's business

# personality(2) values Docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and
# 0xffffffff (query only).
PERSONALITIES: tuple[int, ...] = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# Since Linux 4.8 seccomp runs after ptrace, so a tracer can no longer rewrite a syscall past the
# filter; before that, ptrace is a seccomp bypass.
PTRACE_MIN_KERNEL = (4, 8)


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of the running kernel, or of a `uname -r` string."""
    match = re.match(r"(\d+)\.(\d+)", release if release is not None else os.uname().release)
    if match is None:
        return (0, 0)
    return (int(match[1]), int(match[2]))


def default_profile(kernel: tuple[int, int]) -> Seccomp:
    """The seccomp profile of every runc sandbox, for a host running `kernel`."""
    rules: list[SyscallRule] = [SyscallRule(names=ALLOWED_SYSCALLS, action=ALLOW)]
    if kernel >= PTRACE_MIN_KERNEL:
        # Inside the sandbox's pid namespace ptrace reaches only its own processes (strace, gdb).
        rules.append(SyscallRule(names=("ptrace",), action=ALLOW))
    rules.append(
        SyscallRule(
            names=("socket",),
            action=ALLOW,
            args=(SeccompArg(index=0, value=AF_VSOCK, op="SCMP_CMP_NE"),),
        )
    )
    rules.extend(
        SyscallRule(
            names=("personality",),
            action=ALLOW,
            args=(SeccompArg(index=0, value=p, op="SCMP_CMP_EQ"),),
        )
        for p in PERSONALITIES
    )
    # clone without any CLONE_NEW* flag: threads and processes, no new namespaces.
    rules.append(
        SyscallRule(
            names=("clone",),
            action=ALLOW,
            args=(
                SeccompArg(
                    index=0, value=CLONE_NAMESPACE_FLAGS, value_two=0, op="SCMP_CMP_MASKED_EQ"
                ),
            ),
        )
    )
    rules.append(SyscallRule(names=ENOSYS_SYSCALLS, action=ERRNO, errno_ret=errno.ENOSYS))
    return Seccomp(
        default_action=ERRNO,
        default_errno_ret=errno.EPERM,
        architectures=("SCMP_ARCH_X86_64",),
        syscalls=tuple(rules),
    )
