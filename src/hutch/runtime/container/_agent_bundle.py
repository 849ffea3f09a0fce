"""The agent's Python runtime and code, assembled from the host's, to mount into any image.

The agent must run in images with no Python or no glibc at all (bare busybox), so the host's
interpreter is copied with its own dynamic loader and every shared library it and its extension
modules need, and started through that loader. Built once per interpreter into
`HUTCH_HOME/agent/runtime-<hash>/` and once per agent source into `HUTCH_HOME/agent/code-<hash>/`;
a runc sandbox mounts both as one directory, `joined-<hash>-<hash>/` (hard links to them).
Each is built in a temporary directory and renamed into place, so a crash never leaves half of one.
"""

from __future__ import annotations

import compileall
import hashlib
import os
import py_compile
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hutch.runtime.container._errors import AgentBundleError
from hutch.runtime.container._gvisor_launch import SOURCE as LAUNCHER_SOURCE
from hutch.runtime.container._gvisor_launch import compile_launcher
from hutch.runtime.container._oci import Mount

# Bump when the layout or the selection of files changes, so existing bundles are rebuilt.
_FORMAT = "1"

AGENT_MOUNT = "/.hutch"
PYTHON_MOUNT = "/.hutch/python"
LIB_MOUNT = "/.hutch/lib"
CODE_MOUNT = "/.hutch/code"
LOADER = "ld-linux-x86-64.so.2"

# Not the agent's business, or large: the host's site-packages (the agent imports only the
# stdlib), tests, GUI toolkits, build configuration.
_STDLIB_SKIP = frozenset(
    {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip"}
)
# Extension modules left out: _tkinter alone would drag in Tk and X11; the rest are CPython's
# own test modules.
_DYNLOAD_SKIP_PREFIXES = ("_tkinter", "_test", "_ctypes_test", "_xx", "xx")
# glibc dlopen()s libgcc_s for thread cancellation and unwinding; ldd cannot see that.
_DLOPENED = ("libgcc_s.so.1",)

AGENT_SOURCE_PACKAGES = ("_wire", "agent")


def python_name(version: tuple[int, int] = (sys.version_info[0], sys.version_info[1])) -> str:
    return f"python{version[0]}.{version[1]}"


def agent_args(
    version: tuple[int, int] = (sys.version_info[0], sys.version_info[1]),
) -> tuple[str, ...]:
    """The agent's command line inside the sandbox: the host's Python through its own loader.

    `--library-path` puts the interpreter's own lib dir first, or a libpython of the image's
    could be picked up. `-I -S`: nothing from the image's environment or site-packages.
    """
    return (
        f"{LIB_MOUNT}/{LOADER}",
        "--library-path",
        f"{PYTHON_MOUNT}/lib:{LIB_MOUNT}",
        f"{PYTHON_MOUNT}/bin/{python_name(version)}",
        "-I",
        "-S",
        "-c",
        f"import sys; sys.path.insert(0, '{CODE_MOUNT}'); "
        "from hutch.agent.__main__ import main; main()",
    )


AGENT_ENV: tuple[str, ...] = (f"PYTHONHOME={PYTHON_MOUNT}",)


@dataclass(frozen=True, slots=True)
class AgentBundle:
    runtime_dir: Path  # holds python/ and lib/
    code_dir: Path  # holds hutch/
    # python/, lib/ and code/ in one directory (hard links of the two above), mounted as
    # /.hutch itself: one bind mount instead of three.
    joined_dir: Path | None = None

    def mounts(self, *, joined: bool = False) -> tuple[Mount, ...]:
        """The agent's read-only mounts. `joined` (runc): one mount of `joined_dir` at
        /.hutch, with the same paths in it. NB: runc 1.1 makes each bind mount with a
        user namespace as an fd opened on the host, a bind and a remount; two fewer cut
        ~0.5 ms of CPU from every start (docs/performance.md, create17). gVisor keeps the
        three: it mounts its socket dir under /.hutch, and the agent there creates a file in
        /.hutch on the root mount (_gvisor.CLOSE_FLUSH_FILE)."""
        if joined and self.joined_dir is not None:
            return (Mount.bind(self.joined_dir, AGENT_MOUNT, readonly=True),)
        return (
            Mount.bind(self.runtime_dir / "python", PYTHON_MOUNT, readonly=True),
            Mount.bind(self.runtime_dir / "lib", LIB_MOUNT, readonly=True),
            Mount.bind(self.code_dir, CODE_MOUNT, readonly=True),
        )


def ensure_agent_bundle(
    agent_home: Path, package_dir: Path, sandboxes_dir: Path | None = None
) -> AgentBundle:
    """Build (if needed) the runtime of this interpreter and the code of `package_dir`, and
    remove the bundles of earlier versions that no sandbox under `sandboxes_dir` mounts.

    Args:
        agent_home: `HUTCH_HOME/agent`.
        package_dir: the `hutch` package whose `_wire` and `agent` subpackages are the agent.
        sandboxes_dir: `HUTCH_HOME/sandboxes` (None: collect nothing).

    Blocking (the first build copies ~60 MB): call it from a worker thread.
    """
    agent_home.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(agent_home, 0o755)
    runtime_dir = build_runtime(agent_home, Path(sys.base_prefix))
    code_dir = build_code(agent_home, package_dir)
    bundle = AgentBundle(
        runtime_dir=runtime_dir,
        code_dir=code_dir,
        joined_dir=build_joined(agent_home, runtime_dir, code_dir),
    )
    if sandboxes_dir is not None:
        collect_old_bundles(agent_home, bundle, sandboxes_dir)
    return bundle


def collect_old_bundles(agent_home: Path, current: AgentBundle, sandboxes_dir: Path) -> list[str]:
    """Remove `runtime-*`, `code-*`, `joined-*` and crashed builds' `.tmp-*` other than
    `current` that no sandbox's config.json names (a mounted bundle must stay: its files are
    the sandbox's agent). Each upgrade of Hutch or of the host's Python left one more before;
    returns the names removed."""
    keep = {current.runtime_dir.name, current.code_dir.name}
    if current.joined_dir is not None:
        keep.add(current.joined_dir.name)
    configs = [p.read_text(errors="replace") for p in sandboxes_dir.glob("*/config.json")]
    removed = []
    for entry in agent_home.iterdir():
        name = entry.name
        if name in keep or not name.startswith(("runtime-", "code-", "joined-", ".tmp-")):
            continue
        if any(str(entry) in config for config in configs):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(name)
    return removed


def _interpreter(prefix: Path) -> Path:
    binary = prefix / "bin" / python_name()
    if not binary.is_file():
        raise AgentBundleError(f"no interpreter at {binary} (sys.base_prefix = {prefix})")
    return binary


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def runtime_hash(prefix: Path) -> str:
    stdlib = prefix / "lib" / python_name()
    keys = [_FORMAT, sys.version, _stat_key(_interpreter(prefix)), _stat_key(stdlib / "os.py")]
    keys += [_stat_key(p) for p in sorted((prefix / "lib").glob("libpython*.so*"))]
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def build_runtime(agent_home: Path, prefix: Path) -> Path:
    final = agent_home / f"runtime-{runtime_hash(prefix)}"
    if final.is_dir():
        return final
    with _staging(agent_home, final) as tmp:
        _copy_python(prefix, tmp / "python")
        _copy_libraries(tmp / "python", tmp / "lib")
    return final


def _copy_python(prefix: Path, dest: Path) -> None:
    name = python_name()
    (dest / "bin").mkdir(parents=True)
    shutil.copy2(_interpreter(prefix), dest / "bin" / name)
    (dest / "lib").mkdir()
    for lib in sorted((prefix / "lib").glob(f"lib{name}.so*")):
        shutil.copy2(lib, dest / "lib" / lib.name, follow_symlinks=False)
    stdlib = prefix / "lib" / name

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n.endswith((".opt-1.pyc", ".opt-2.pyc"))}
        if Path(directory) == stdlib:
            skipped |= {n for n in names if n in _STDLIB_SKIP or n.startswith("config-")}
        elif Path(directory) == stdlib / "lib-dynload":
            skipped |= {n for n in names if n.startswith(_DYNLOAD_SKIP_PREFIXES)}
        return skipped

    # copy2 keeps mtimes, which the stdlib's timestamp-checked .pyc files are validated against:
    # the interpreter never has to recompile (it could not write the read-only mount anyway).
    shutil.copytree(stdlib, dest / "lib" / name, symlinks=True, ignore=ignore)


def _copy_libraries(python: Path, dest: Path) -> None:
    """Copy the loader and the shared libraries the interpreter and its modules link against."""
    dest.mkdir()
    objects = [python / "bin" / python_name()]
    objects += sorted((python / "lib").glob("libpython*.so*"))
    objects += sorted((python / "lib" / python_name() / "lib-dynload").glob("*.so"))
    needed = _ldd([o for o in objects if not o.is_symlink()])
    for soname, path in sorted(needed.items()):
        # Libraries of the interpreter itself (libpython) are in python/lib already.
        if path.resolve().is_relative_to(python.resolve()) or (python / "lib" / soname).exists():
            continue
        shutil.copy2(path.resolve(), dest / soname)
    for soname in _DLOPENED:
        system = Path("/lib/x86_64-linux-gnu") / soname
        if system.exists() and not (dest / soname).exists():
            shutil.copy2(system.resolve(), dest / soname)
    if not (dest / LOADER).exists():
        raise AgentBundleError(f"ldd did not report the dynamic loader {LOADER}")


def _ldd(objects: list[Path]) -> dict[str, Path]:
    """soname -> resolved path for every library the objects need, plus the loader."""
    try:
        out = subprocess.run(
            ["ldd", *map(str, objects)], capture_output=True, text=True, check=False
        ).stdout
    except FileNotFoundError as e:
        raise AgentBundleError("ldd not found (apt-get install libc-bin)") from e
    needed: dict[str, Path] = {}
    for line in out.splitlines():
        line = line.strip()
        if "=>" in line:
            soname, _, rest = line.partition("=>")
            target = rest.strip().split(" (")[0].strip()
            # "not found": the module is broken on the host too; it fails to import either way.
            if target.startswith("/"):
                needed[soname.strip()] = Path(target)
        elif line.startswith("/") and "(0x" in line:
            loader = Path(line.split(" (")[0])
            needed[loader.name] = loader
    return needed


def code_hash(package_dir: Path) -> str:
    digest = hashlib.sha256(_FORMAT.encode())
    digest.update(LAUNCHER_SOURCE.encode())
    for rel, path in _agent_sources(package_dir):
        digest.update(f"\0{rel}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _agent_sources(package_dir: Path) -> Iterator[tuple[str, Path]]:
    for sub in AGENT_SOURCE_PACKAGES:
        root = package_dir / sub
        if not (root / "__init__.py").is_file():
            raise AgentBundleError(f"agent source package missing: {root}/__init__.py")
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield path.relative_to(package_dir).as_posix(), path


def build_code(agent_home: Path, package_dir: Path) -> Path:
    final = agent_home / f"code-{code_hash(package_dir)}"
    if final.is_dir():
        return final
    with _staging(agent_home, final) as tmp:
        pkg = tmp / "hutch"
        pkg.mkdir()
        # An empty package: the real hutch/__init__ imports the SDK, which the agent must not.
        (pkg / "__init__.py").write_bytes(b"")
        for rel, path in _agent_sources(package_dir):
            target = pkg / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        # Unchecked-hash .pyc: the directory is content-addressed, so the source never changes
        # under its bytecode, and the agent starts without compiling (it could not save it).
        ok = compileall.compile_dir(
            pkg, quiet=2, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
        )
        if not ok:
            raise AgentBundleError(f"the agent sources in {package_dir} do not compile")
        # The launcher the agent starts another user's processes through (agent/_launch.py);
        # best effort: without a C compiler it forks for them, as before.
        cc = shutil.which("cc")
        if cc is not None:
            compile_launcher(cc, tmp)
    return final


def build_joined(agent_home: Path, runtime_dir: Path, code_dir: Path) -> Path:
    """`joined-<runtime hash>-<code hash>/` with python/, lib/ (the runtime's) and code/:
    hard links, not copies (the same files, ~0 bytes more; built in ~0.1 s per new code)."""
    runtime_key = runtime_dir.name.removeprefix("runtime-")
    final = agent_home / f"joined-{runtime_key}-{code_dir.name.removeprefix('code-')}"
    if final.is_dir():
        return final
    with _staging(agent_home, final) as tmp:
        parts = {"python": runtime_dir / "python", "lib": runtime_dir / "lib", "code": code_dir}
        for name, source in parts.items():
            shutil.copytree(source, tmp / name, symlinks=True, copy_function=_link_or_copy)
    return final


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # a filesystem without hard links: a copy serves the same
        shutil.copy2(source, target)


class _staging:
    """A temporary directory that becomes `final` on success, and vanishes on failure."""

    def __init__(self, parent: Path, final: Path) -> None:
        self.tmp = parent / f".tmp-{final.name}-{secrets.token_hex(4)}"
        self.final = final

    def __enter__(self) -> Path:
        self.tmp.mkdir(mode=0o755)
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        _make_world_readable(self.tmp)
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            # Someone else built the same thing first: theirs is as good as ours.
            shutil.rmtree(self.tmp, ignore_errors=True)
            if not self.final.is_dir():
                raise


def _make_world_readable(root: Path) -> None:
    # Sandbox root is an unprivileged host uid: it reads the bundle as "other", whatever the
    # umask of whoever built it.
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode & 0o777
            os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))
