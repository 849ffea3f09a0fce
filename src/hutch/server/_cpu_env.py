"""A sandbox's CPU limit, said where tools that size themselves look.

The limit is a CFS quota (`cpu=1.0`: one CPU's worth of time, on any of the host's CPUs), not
a set of CPUs, so `sched_getaffinity` (what `nproc` and `os.cpu_count()`-style code ask) still
names every host CPU, and `make -j$(nproc)` or a BLAS pool starts more workers than the quota
can run. Pinning each sandbox to CPUs (cpuset) would crowd sandboxes onto the same cores while
others idle. Instead the sandbox starts with the variables those tools already honour:
`OMP_NUM_THREADS` (GNU `nproc` answers it, as do OpenMP, OpenBLAS and MKL) and
`PYTHON_CPU_COUNT` (`os.cpu_count()` from Python 3.13), set to the limit rounded up, unless
the sandbox's own env sets them. A limit of all the host's CPUs or more sets nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

CPU_COUNT_VARIABLES = ("OMP_NUM_THREADS", "PYTHON_CPU_COUNT")


def cpu_env(
    cpu: float, user_env: Mapping[str, str], host_cpus: int | None = None
) -> dict[str, str]:
    """The variables a sandbox with this CPU limit starts with, below its own ``env``."""
    host = host_cpus if host_cpus is not None else len(os.sched_getaffinity(0))
    cpus = max(1, math.ceil(round(cpu, 3)))
    if cpus >= host:
        return {}
    return {name: str(cpus) for name in CPU_COUNT_VARIABLES if name not in user_env}
