"""git_checkout against real git servers: `git daemon` and `git http-backend` (through a CGI
web server) running inside the sandbox on its loopback, serving a bare repository the test
made on the host and uploaded. A file path works too.

NB: sandboxes have loopback-only networking for now; once they get a veth, the same servers
can run on the host instead.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hutch import Conflict, GitError, InvalidRequest, Sandbox
from tests._server import ServerProcess

pytestmark = pytest.mark.sandbox


def _git(*args: str, cwd: Path) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "HOME": str(cwd),
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A bare repository with a main branch and a feature branch; returns (path, feature sha)."""
    root = tmp_path_factory.mktemp("git")
    work = root / "work"
    work.mkdir()
    _git("init", "-q", "-b", "main", cwd=work)
    (work / "README.md").write_text("main\n")
    _git("add", ".", cwd=work)
    _git("commit", "-qm", "one", cwd=work)
    _git("checkout", "-qb", "feature", cwd=work)
    (work / "feature.txt").write_text("feature\n")
    _git("add", ".", cwd=work)
    _git("commit", "-qm", "two", cwd=work)
    sha = _git("rev-parse", "HEAD", cwd=work).strip()
    _git("checkout", "-q", "main", cwd=work)
    bare = root / "repo.git"
    _git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    return bare, sha


@pytest.fixture(scope="module")
def sb(server: ServerProcess, repo: tuple[Path, str]) -> Sandbox:
    box = Sandbox.create(base_url=server.url, api_key=server.api_key, labels={"suite": "git"})
    bare, _ = repo
    for path in sorted(bare.rglob("*")):
        if path.is_dir():
            box.mkdir(f"/srv/git/repo.git/{path.relative_to(bare)}", recursive=True)
        elif path.is_file():
            box.write_file(f"/srv/git/repo.git/{path.relative_to(bare)}", path.read_bytes())
    start = (
        # NB: the CGI server runs git-http-backend as nobody; the repository belongs to root.
        "git config --system --add safe.directory '*' && "
        "git daemon --base-path=/srv/git --export-all --reuseaddr --listen=127.0.0.1 "
        "--port=9418 --detach --pid-file=/tmp/gitd.pid /srv/git && "
        "mkdir -p /srv/www/cgi-bin && ln -sf /usr/lib/git-core/git-http-backend "
        "/srv/www/cgi-bin/git && cd /srv/www && "
        "(GIT_PROJECT_ROOT=/srv/git GIT_HTTP_EXPORT_ALL=1 setsid python3 -W ignore -m "
        "http.server --cgi --bind 127.0.0.1 8000 >/tmp/http.log 2>&1 &) && "
        # A server that refuses every request as unauthenticated.
        '(setsid python3 -c "import http.server as h\n'
        "class H(h.BaseHTTPRequestHandler):\n"
        "    def do_GET(s):\n"
        "        s.send_response(401); s.send_header('WWW-Authenticate', 'Basic realm=x');"
        " s.send_header('Content-Length', '0'); s.end_headers()\n"
        "h.HTTPServer(('127.0.0.1', 8001), H).serve_forever()\" >/dev/null 2>&1 &) && "
        "for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/8000) 2>/dev/null && "
        "(echo > /dev/tcp/127.0.0.1/8001) 2>/dev/null && "
        "(echo > /dev/tcp/127.0.0.1/9418) 2>/dev/null && exit 0; sleep 0.1; done; exit 1"
    )
    r = box.exec(start, timeout=60)
    assert r.exit_code == 0, r.stderr
    yield box
    box.destroy()


def test_clone_over_git_protocol(sb: Sandbox, repo: tuple[Path, str]) -> None:
    _, sha = repo
    out = sb.git_checkout("git://127.0.0.1/repo.git", branch="feature", depth=1)
    assert out.path == "/workspace/repo" and out.commit == sha
    assert sb.read_file("repo/feature.txt", text=True) == "feature\n"
    assert sb.exec("git -C /workspace/repo rev-list --count HEAD").stdout.strip() == "1"


def test_clone_over_http_and_file_path(sb: Sandbox) -> None:
    out = sb.git_checkout("http://127.0.0.1:8000/cgi-bin/git/repo.git", target_dir="viahttp")
    assert out.path == "/workspace/viahttp"
    assert sb.read_file("viahttp/README.md", text=True) == "main\n"
    assert not sb.exists("viahttp/feature.txt")
    out = sb.git_checkout("/srv/git/repo.git", target_dir="/tmp/viafile", branch="feature")
    assert sb.read_file("/tmp/viafile/feature.txt", text=True) == "feature\n"


def test_clear_errors(sb: Sandbox) -> None:
    with pytest.raises(GitError) as e:
        sb.git_checkout("git://127.0.0.1/repo.git", branch="nope", target_dir="b1")
    assert e.value.code == "git_branch_not_found" and e.value.status == 404
    with pytest.raises(GitError) as e:
        sb.git_checkout("git://127.0.0.1:1/repo.git", target_dir="b2")
    assert e.value.code == "git_unreachable"
    with pytest.raises(GitError) as e:
        sb.git_checkout("http://no-such-host.invalid/repo.git", target_dir="b3")
    assert e.value.code == "git_unreachable"
    with pytest.raises(GitError) as e:
        sb.git_checkout("http://127.0.0.1:8001/repo.git", target_dir="b4")
    assert e.value.code == "git_auth_failed" and e.value.status == 403
    with pytest.raises(GitError) as e:
        sb.git_checkout("git://127.0.0.1/missing.git", target_dir="b5")
    assert e.value.code == "git_repository_not_found"
    sb.write_file("full/x", "x")
    with pytest.raises(Conflict) as c:
        sb.git_checkout("/srv/git/repo.git", target_dir="full")
    assert c.value.code == "file_exists"
    for bad in ("ext::sh -c touch% /tmp/pwned", "--upload-pack=touch /tmp/x", "ftp://h/r.git"):
        with pytest.raises(InvalidRequest):
            sb.git_checkout(bad)
    assert not sb.exists("/tmp/pwned")
