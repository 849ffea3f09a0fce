"""Running a ``command`` that is a plain word list without the shell that would only exec it.

``bash -c "ls -l /tmp"`` parses the string, finds ``ls`` on PATH and execs it in its own
process (bash's one-command exec): the program gets the words as argv, the environment with
three variables bash adds (PWD, SHLVL, ``_``) and bash's pid. Under gVisor's ptrace platform
loading and linking bash is most of an exec's cost (profiled: ~63 of ~91 ms), so a command
that bash would only exec is exec-ed here directly, with exactly that argv and environment.

Only commands where nothing else could happen qualify: words of letters, digits and
``_ . / : , + @ % - =`` separated by spaces or tabs (no quotes, ``$``, globs, ``~``, braces,
redirections, operators, comments, newlines); a first word that is no assignment, reserved
word or builtin; an environment that cannot change what bash does (no exported functions,
BASH_ENV, SHELLOPTS, EXECIGNORE, a PATH with relative or empty entries, a locale bash would
warn about). Everything else, and any program the direct exec cannot start (not found, not
executable, a script without ``#!``), goes through bash, which then says and does what it
always did.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

BASH = "/bin/bash"

# The characters of a plain command: words of these, separated by spaces and tabs. (Not `re`:
# it and the `enum` it imports are ~5 ms of a new agent's first exec.)
_WORD = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:,+@%=-"
_PLAIN = frozenset(_WORD + " \t")

# `compgen -b` and `compgen -k` of bash 5.2: as a first word these are not programs.
_BUILTINS = frozenset(
    ". : [ alias bg bind break builtin caller cd command compgen complete compopt continue "
    "declare dirs disown echo enable eval exec exit export false fc fg getopts hash help "
    "history jobs kill let local logout mapfile popd printf pushd pwd read readarray readonly "
    "return set shift shopt source suspend test times trap true type typeset ulimit umask "
    "unalias unset wait".split()
)
_RESERVED = frozenset(
    "if then else elif fi case esac for select while until do done in function time { } ! "
    "[[ ]] coproc".split()
)
# Builtins that, alone with no argument, do exactly what their program does: nothing but an
# exit status (`true --help` would differ: GNU's prints its help, the builtin ignores it).
_SAME_ALONE = frozenset({"true", "false"})

# Variables under which bash itself does something more than exec the program.
_BASH_VARIABLES = frozenset(
    {"BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "EXECIGNORE", "POSIXLY_CORRECT", "OLDPWD"}
)
_QUIET_LOCALES = frozenset({"", "C", "POSIX", "C.UTF-8", "C.utf8"})


class Direct:
    """How to exec a word-list command as bash would: the program's path, argv, env."""

    __slots__ = ("executable", "argv", "env")

    def __init__(self, executable: str, argv: list[str], env: dict[str, str]) -> None:
        self.executable = executable
        self.argv = argv
        self.env = env


def plain_words(command: str) -> list[str] | None:
    """The words of `command` when it has no shell syntax at all and its first word is a
    program (not an assignment, reserved word or builtin); None otherwise."""
    command = command.strip(" \t")
    if not command or not _PLAIN.issuperset(command):
        return None
    words = command.split()
    first = words[0]
    if "=" in first or first in _RESERVED:
        return None
    if first in _BUILTINS and not (first in _SAME_ALONE and len(words) == 1):
        return None
    return words


def _bash_neutral(env: Mapping[str, str]) -> bool:
    for name, value in env.items():
        if name in _BASH_VARIABLES or name.startswith("BASH_FUNC_"):
            return False
        if (name == "LANG" or name.startswith("LC_")) and value not in _QUIET_LOCALES:
            return False  # bash warns on stderr about a locale it cannot set
    shlvl = env.get("SHLVL")
    if shlvl is not None and not (shlvl.isdigit() and str(int(shlvl)) == shlvl):
        return False
    if shlvl is not None and int(shlvl) >= 999:  # bash resets it, with a warning
        return False
    path = env.get("PATH", "")
    return all(d.startswith("/") for d in path.split(":"))


def _find(program: str, path: str) -> str | None:
    # bash's search: the first regular file on PATH with an execute bit for us. A file the
    # command's user cannot run after all makes the exec fail, and bash then decides.
    if "/" in program:
        return program
    for d in path.split(":"):
        candidate = os.path.join(d, program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def direct_command(
    shell: str, command: str, env: Mapping[str, str], cwd: str | None
) -> Direct | None:
    """A `Direct` exec giving exactly what ``shell -c command`` would, or None when only the
    shell can say (see the module's docstring)."""
    if shell != BASH:
        return None
    words = plain_words(command)
    if words is None or not _bash_neutral(env) or "PWD" in env:
        return None
    executable = _find(words[0], env.get("PATH", ""))
    if executable is None:
        return None  # bash's "command not found", word for word
    try:
        # bash with no PWD in its environment sets the physical working directory.
        pwd = os.path.realpath(cwd if cwd is not None else os.getcwd())
    except OSError:
        return None
    direct_env = dict(env)
    direct_env["PWD"] = pwd
    direct_env.setdefault("SHLVL", "0")  # bash adds 1 at start and takes it back to exec
    direct_env["_"] = executable
    return Direct(executable, words, direct_env)
