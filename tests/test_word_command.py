"""A `command` that is a plain word list is exec-ed without bash, giving exactly what bash
gives; anything with shell syntax (or a builtin, or an environment bash acts on) still goes
through bash.

The sandbox tests compare each word-list command with its shell twin: the same words with the
first one quoted, which bash parses and then execs the same program (its one-command exec),
so a difference in output, exit code, environment, directory, user or argv shows.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hutch import Sandbox
from hutch.agent._word_command import BASH, direct_command, plain_words
from tests._server import ServerProcess

ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root"}


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("ls -l /tmp", ["ls", "-l", "/tmp"]),
        ("  python3\t-m  http.server 8080 ", ["python3", "-m", "http.server", "8080"]),
        (
            "env a=b x,y user@host 50% c:d e+f",
            ["env", "a=b", "x,y", "user@host", "50%", "c:d", "e+f"],
        ),
        ("./run.sh", ["./run.sh"]),
        ("true", ["true"]),
        ("false", ["false"]),
    ],
)
def test_plain_word_lists(command: str, words: list[str]) -> None:
    assert plain_words(command) == words


@pytest.mark.parametrize(
    "command",
    [
        "",
        "   ",
        "echo hi",  # a builtin: `echo --help` differs from /bin/echo's
        "true --help",  # alone only: GNU true prints its help
        "cd /tmp",
        "export A=1",
        "A=1 env",  # an assignment
        "time ls",  # a reserved word
        "coproc ls",
        "ls 'a b'",
        'ls "a"',
        "ls a\\ b",
        "echo $HOME",
        "ls `pwd`",
        "ls *",
        "ls ?",
        "ls [ab]",
        "ls ~",
        "ls {a,b}",
        "ls > out",
        "ls < in",
        "ls | cat",
        "ls; ls",
        "ls && ls",
        "ls &",
        "ls # comment",
        "ls\nls",
        "ls (x)",
        "! ls",
        "ls !x",
    ],
)
def test_shell_syntax_is_not_a_word_list(command: str) -> None:
    assert plain_words(command) is None


@pytest.mark.parametrize(
    "env",
    [
        {**ENV, "BASH_ENV": "/etc/profile"},
        {**ENV, "BASH_FUNC_ls%%": "() { echo mine; }"},
        {**ENV, "SHELLOPTS": "xtrace"},
        {**ENV, "EXECIGNORE": "/bin/*"},
        {**ENV, "PWD": "/"},
        {**ENV, "SHLVL": "x"},
        {**ENV, "LC_ALL": "xx_XX.UTF-8"},  # bash warns about it on stderr
        {**ENV, "PATH": "/usr/bin::/bin"},  # an empty entry is the current directory
        {**ENV, "PATH": "bin:/usr/bin"},
    ],
)
def test_an_environment_bash_acts_on_keeps_bash(env: dict[str, str]) -> None:
    assert direct_command(BASH, "ls -l", env, "/") is None


def test_direct_exec_as_bash_would() -> None:
    direct = direct_command(BASH, "ls -l", ENV, "/tmp")
    assert direct is not None
    assert direct.argv == ["ls", "-l"]
    assert direct.executable == "/usr/bin/ls"
    assert direct.env == {**ENV, "PWD": "/tmp", "SHLVL": "0", "_": "/usr/bin/ls"}
    # Another shell, or a program not on PATH (bash's own message): bash.
    assert direct_command("/bin/sh", "ls -l", ENV, "/tmp") is None
    assert direct_command(BASH, "no-such-program-here", ENV, "/tmp") is None


# -- in a sandbox ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sb(server: ServerProcess) -> Iterator[Sandbox]:
    box = Sandbox.create(base_url=server.url, api_key=server.api_key)
    box.write_file("/tmp/no-shebang", "echo from-script $0\n")
    box.write_file("/tmp/not-executable", "#!/bin/sh\necho never\n")
    assert box.exec(
        "chmod +x /tmp/no-shebang && mkdir -p /tmp/real && ln -sfn real /tmp/link"
    ).success
    yield box
    box.destroy()


def _both(sb: Sandbox, command: str, **kwargs: object) -> tuple[tuple[str, str, int], ...]:
    """(stdout, stderr, exit code) of `command` and of its shell twin (first word quoted)."""
    first, _, rest = command.partition(" ")
    twin = f"'{first}' {rest}".rstrip()
    out = []
    for c in (command, twin):
        r = sb.exec(c, **kwargs)  # type: ignore[arg-type]
        out.append((r.stdout, r.stderr, r.exit_code))
    return tuple(out)


def _env(text: str) -> dict[str, str]:
    env = dict(line.split("=", 1) for line in text.splitlines())
    env.pop("HUTCH_EXEC_ID")  # one per exec
    return env


@pytest.mark.sandbox
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"cwd": "/tmp/link"}, {"user": "nobody"}, {"env": {"SHLVL": "3", "A": "b c"}}],
)
def test_environment_directory_and_user_as_bash_gives(
    sb: Sandbox, kwargs: dict[str, object]
) -> None:
    direct = sb.exec("env", **kwargs)  # type: ignore[arg-type]
    shell = sb.exec("'env'", **kwargs)  # type: ignore[arg-type]
    assert direct.exit_code == shell.exit_code == 0
    assert _env(direct.stdout) == _env(shell.stdout)
    assert "PWD" in _env(direct.stdout) and "_" in _env(direct.stdout)
    for command in ("id", "/bin/pwd"):
        direct_out, shell_out = _both(sb, command, **kwargs)
        assert direct_out == shell_out


@pytest.mark.sandbox
@pytest.mark.parametrize(
    "command",
    [
        "cat /proc/self/cmdline",  # argv[0] is the word typed, not the path found
        "ls /no/such/dir",  # the program's own failure: its stderr and exit code
        "true",
        "false",
        "no-such-program",  # bash's "command not found", 127
        "/tmp/no-shebang",  # ENOEXEC: bash runs it as a script
        "/tmp/not-executable",  # 126
        "/tmp",  # a directory: 126
        "sh -c exit\t7",
    ],
)
def test_output_and_exit_codes_as_bash_gives(sb: Sandbox, command: str) -> None:
    direct, shell = _both(sb, command)
    assert direct == shell


@pytest.mark.sandbox
def test_stdin_reaches_a_word_list_command(sb: Sandbox) -> None:
    assert sb.exec("cat", stdin=b"in\n").stdout == "in\n"


@pytest.mark.sandbox
def test_shell_syntax_still_goes_through_bash(sb: Sandbox) -> None:
    # Each would differ if the words were exec-ed: /bin/echo prints its help, GNU true too.
    assert sb.exec("echo --help").stdout == "--help\n"
    r = sb.exec("true --help")
    assert (r.stdout, r.exit_code) == ("", 0)
    assert "A=1" in sb.exec("A=1 env").stdout.splitlines()
    assert sb.exec("echo ~", user="root").stdout == "/root\n"
    assert sb.exec("cd /tmp").exit_code == 0
    assert sb.exec("ls /tmp/no-* > /dev/null; echo $?").stdout == "0\n"
    # BASH_ENV: bash runs that file first, so the command is bash's business.
    sb.write_file("/tmp/bash-env", "echo from-bash-env\n")
    r = sb.exec("true", env={"BASH_ENV": "/tmp/bash-env"})
    assert r.stdout == "from-bash-env\n"
