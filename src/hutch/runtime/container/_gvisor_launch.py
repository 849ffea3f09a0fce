"""The launcher a gVisor sandbox's agent starts every process through (see hutch.agent._launch).

A static program with no libc (one exec under gVisor's ptrace platform is a few ms; a libc's
start-up would add its own system calls): `hutch-launch NPROC ERRFD COUNT PATH... ARGV...`
sets a hard RLIMIT_NPROC of NPROC on itself, marks ERRFD close-on-exec and execs the first
of the COUNT candidate PATHs that exists with ARGV, as subprocess would; when none can be
executed it writes the errno (a native int) to ERRFD and exits 127. Built with the preload
library, into the same directory (`_gvisor_preload.build_preload`), for x86-64 and arm64;
on another host, or with no C compiler, the agent falls back to a preexec_fn (a fork).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

LAUNCHER_NAME = "hutch-launch"

SOURCE = r"""
#include <sys/syscall.h>
#if defined(__x86_64__)
__asm__(".text\n.global _start\n_start:\n xor %rbp,%rbp\n mov %rsp,%rdi\n"
        " and $-16,%rsp\n call hutch_launch\n hlt\n");
static long sc(long n, long a, long b, long c, long d) {
    long r;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return r;
}
#elif defined(__aarch64__)
__asm__(".text\n.global _start\n_start:\n mov x0, sp\n bl hutch_launch\n");
static long sc(long n, long a, long b, long c, long d) {
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
    return x0;
}
#else
#error "hutch-launch: unsupported architecture"
#endif
static long num(const char *s) {
    long n = 0;
    if (!*s) return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        n = n * 10 + (*s - '0');
    }
    return n;
}
#define MAX_GROUPS 64
static void leave(int code) { for (;;) sc(SYS_exit_group, code, 0, 0, 0); }
void hutch_launch(long *sp) {
    long argc = sp[0];
    char **argv = (char **)(sp + 1);
    char **envp = argv + argc + 1;
    /* "-u UID GID G1,G2,..." first: become that user (groups, then gid, then uid). */
    long uid = -1, gid = -1, ngroups = 0;
    unsigned int groups[MAX_GROUPS];
    if (argc > 4 && argv[1][0] == '-' && argv[1][1] == 'u' && argv[1][2] == 0) {
        uid = num(argv[2]);
        gid = num(argv[3]);
        if (uid < 0 || gid < 0) leave(127);
        for (const char *p = argv[4]; *p;) {
            long g = 0;
            const char *digits = p;
            while (*p >= '0' && *p <= '9') g = g * 10 + (*p++ - '0');
            if (p == digits || ngroups == MAX_GROUPS) leave(127);
            groups[ngroups++] = (unsigned int)g;
            if (*p == ',') p++;
            else if (*p) leave(127);
        }
        argv += 4;
        argc -= 4;
    }
    if (argc < 5) leave(127);
    /* NPROC "-": no process limit (runc, where the `work` cgroup bounds them). */
    int unlimited = argv[1][0] == '-' && argv[1][1] == 0;
    long nproc = unlimited ? 0 : num(argv[1]), errfd = num(argv[2]), count = num(argv[3]);
    if (nproc < 0 || errfd < 0 || count < 1 || 4 + count >= argc) leave(127);
    int err = 0;
    if (!unlimited) {
        unsigned long limit[2] = {(unsigned long)nproc, (unsigned long)nproc};
        err = (int)-sc(SYS_prlimit64, 0, 6 /* RLIMIT_NPROC */, (long)limit, 0);
    }
    if (err == 0 && uid >= 0) {
        /* All three ids of each kind, as subprocess's user=/group=: no way back to root. */
        err = (int)-sc(SYS_setgroups, ngroups, (long)groups, 0, 0);
        if (err == 0) err = (int)-sc(SYS_setresgid, gid, gid, gid, 0);
        if (err == 0) err = (int)-sc(SYS_setresuid, uid, uid, uid, 0);
    }
    if (err == 0) {
        sc(SYS_fcntl, errfd, 2 /* F_SETFD */, 1 /* FD_CLOEXEC */, 0);
        int first = 0;
        for (long i = 0; i < count; i++) {
            err = (int)-sc(SYS_execve, (long)argv[4 + i], (long)(argv + 4 + count), (long)envp, 0);
            if (err != 2 /* ENOENT */ && err != 20 /* ENOTDIR */ && first == 0) first = err;
        }
        if (first != 0) err = first;
    }
    sc(SYS_write, errfd, (long)&err, sizeof err, 0);
    leave(127);
}
"""


def compile_launcher(cc: str, directory: Path) -> bool:
    """Build the launcher into `directory`; False when it could not be built."""
    source = directory / "launch.c"
    source.write_text(SOURCE)
    try:
        subprocess.run(
            [cc, "-static", "-nostdlib", "-O2", "-fno-stack-protector", "-fno-builtin"]
            + ["-o", str(directory / LAUNCHER_NAME), str(source)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return False
    finally:
        source.unlink(missing_ok=True)
    return True


def launcher_env(directory: Path, mounted_at: str) -> tuple[str, ...]:
    """The agent's variable naming the launcher, when `directory` holds one."""
    if not (directory / LAUNCHER_NAME).is_file():
        return ()
    return (f"HUTCH_AGENT_LAUNCHER={mounted_at}/{LAUNCHER_NAME}",)
