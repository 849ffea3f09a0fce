"""The preview proxy's pure parts: Host routing, strict request heads, chunked framing, rules."""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from hutch.proxy import (
    BadRequest,
    ChunkedFraming,
    PreviewRoutes,
    PreviewTarget,
    new_token,
    parse_request,
    parse_response,
    preview_target,
    split_host,
)
from hutch.proxy._http1 import _parse_request_slow, _parse_response_slow
from hutch.runtime.container._nft import NetworkPolicy, policy_rules

TOKEN = "ab" * 16
HOST = f"8080-sb-1-{TOKEN}.localhost:7070"


def head(*lines: str) -> bytes:
    return "\r\n".join(lines).encode()


def test_tokens_are_128_bits_of_hex() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100 and all(len(t) == 32 and int(t, 16) >= 0 for t in tokens)


def test_preview_host_routing() -> None:
    name, port = split_host(HOST)
    assert port == 7070
    assert preview_target(name, "localhost") == PreviewTarget(8080, "sb-1", TOKEN)
    assert preview_target("127.0.0.1", "localhost") is None
    assert preview_target("api.example.com", "localhost") is None
    # E2B's shape (`get_host`): the token is not in the name but in a request header.
    assert preview_target("8080-sb-1.localhost", "localhost") == PreviewTarget(
        8080, "sb-1", "", in_header=True
    )
    for bad in (
        "sb-1.localhost",
        "99999-sb-1.localhost",
        f"99999-sb-1-{TOKEN}.localhost",
        f"x-sb-1-{TOKEN}.localhost",
    ):
        with pytest.raises(BadRequest):
            preview_target(bad, "localhost")
    for bad in ("a b", "host:99999", "host:", "-x.localhost", "a..b", "x.localhost:12a"):
        with pytest.raises(BadRequest):
            split_host(bad)


def test_routes_answer_alike_for_every_wrong_part() -> None:
    routes = PreviewRoutes()
    routes.address_of = lambda sandbox_id: "10.0.0.1" if sandbox_id == "sb-1" else None
    routes.add("sb-1", 8080, TOKEN)
    assert routes.resolve(PreviewTarget(8080, "sb-1", TOKEN)) == "10.0.0.1"
    assert routes.resolve(PreviewTarget(8080, "sb-1", "0" * 32)) is None
    assert routes.resolve(PreviewTarget(8081, "sb-1", TOKEN)) is None
    assert routes.resolve(PreviewTarget(8080, "sb-2", TOKEN)) is None
    routes.forget_sandbox("sb-1")
    assert routes.resolve(PreviewTarget(8080, "sb-1", TOKEN)) is None


def test_e2b_hosts_open_every_port_with_the_traffic_token_alone() -> None:
    routes = PreviewRoutes()
    routes.address_of = lambda sandbox_id: "10.0.0.1" if sandbox_id == "sb-1" else None
    e2b = partial(PreviewTarget, sandbox_id="sb-1", in_header=True)
    assert routes.resolve(e2b(8080, token="t" * 64)) is None  # no E2B tokens: nothing opens
    changed: list[str] = []
    routes.on_change.append(changed.append)
    routes.traffic_token_of = lambda sandbox_id: sandbox_id[::-1] + "t" * 60
    routes.reserved_ports = frozenset({2222})
    good = "1-bs" + "t" * 60
    assert routes.resolve(e2b(8080, token=good)) == "10.0.0.1"
    assert routes.resolve(e2b(3000, token=good)) == "10.0.0.1"  # any port, none exposed
    assert routes.reached_by_header("sb-1") and changed == ["sb-1"]  # the native map learns
    for wrong in ("", "t" * 64, good[:-1], good + "t", "é" * 64):
        assert routes.resolve(e2b(8080, token=wrong)) is None
    assert routes.resolve(e2b(2222, token=good)) is None  # a port Hutch reserves
    assert routes.resolve(PreviewTarget(8080, "sb-1", good)) is None  # not as a name's token
    routes.forget_sandbox("sb-1")
    assert not routes.reached_by_header("sb-1")


@pytest.mark.parametrize("parse", [parse_request, _parse_request_slow])
def test_traffic_token_header_fills_the_target_and_never_reaches_the_sandbox(
    parse: Callable[[bytes, str, bytes], Any],
) -> None:
    raw = head("GET / HTTP/1.1", "Host: 8080-sb-1.localhost:7070", "E2B-Traffic-Access-Token: abc")
    req = parse(raw, "localhost", b"127.0.0.1")
    assert req.target == PreviewTarget(8080, "sb-1", "abc", in_header=True)
    assert b"abc" not in req.forwarded and b"traffic" not in req.forwarded.lower()
    plain = parse(
        head("GET / HTTP/1.1", f"Host: {HOST}", "E2B-Traffic-Access-Token: abc"),
        "localhost",
        b"127.0.0.1",
    )
    assert plain.target == PreviewTarget(8080, "sb-1", TOKEN)  # a name's token stays
    bare = parse(head("GET / HTTP/1.1", "Host: 8080-sb-1.localhost"), "localhost", b"1.2.3.4")
    assert bare.target.token == ""


def test_request_is_forwarded_with_x_forwarded_headers() -> None:
    req = parse_request(
        head("GET /a?b=1 HTTP/1.1", f"Host: {HOST}", "X-Forwarded-For: 1.2.3.4", "Accept: */*"),
        "localhost",
        b"127.0.0.1",
    )
    assert req.length == 0 and req.keep_alive and not req.upgrade
    lines = req.forwarded.split(b"\r\n")
    assert lines[0] == b"GET /a?b=1 HTTP/1.1"
    assert b"X-Forwarded-For: 1.2.3.4, 127.0.0.1" in lines
    assert b"X-Forwarded-Proto: http" in lines
    assert f"X-Forwarded-Host: {HOST}".encode() in lines


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (
            head(
                "POST / HTTP/1.1",
                f"Host: {HOST}",
                "Content-Length: 3",
                "Transfer-Encoding: chunked",
            ),
            400,
        ),
        (f"GET / HTTP/1.1\nHost: {HOST}".encode(), 400),
        (head("GET http://evil.localhost/ HTTP/1.1", f"Host: {HOST}"), 400),
        (head("GET / HTTP/1.1", f"Host: {HOST}", f"Host: {HOST}"), 400),
        (head("GET / HTTP/1.1"), 400),
        (head("GET / HTTP/1.1", f"Host: {HOST}", " folded: line"), 400),
        (head("GET / HTTP/1.1", f"Host: {HOST}", "Bad Name: x"), 400),
        (head("POST / HTTP/1.1", f"Host: {HOST}", "Content-Length: 1", "Content-Length: 2"), 400),
        (head("POST / HTTP/1.1", f"Host: {HOST}", "Content-Length: -1"), 400),
        (head("POST / HTTP/1.1", f"Host: {HOST}", "Transfer-Encoding: gzip, chunked"), 501),
        (head("GET / HTTP/2.0", f"Host: {HOST}"), 505),
        (head("GET / HTTP/1.1", "Host: api.localhost:7070"), 400),
    ],
)
def test_ambiguous_requests_are_refused(raw: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_request(raw, "localhost", b"127.0.0.1")
    assert exc.value.status == status


def test_absolute_form_that_agrees_with_host_is_rewritten() -> None:
    req = parse_request(head(f"GET http://{HOST}/x HTTP/1.1", f"Host: {HOST}"), "localhost", b"1")
    assert req.forwarded.startswith(b"GET /x HTTP/1.1\r\n")


def test_chunked_framing_finds_the_end_across_splits() -> None:
    body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\n"
    for split in range(1, len(body)):
        framing = ChunkedFraming()
        first = framing.feed(body[:split])
        rest = body[first:]
        end = framing.feed(rest)
        while not framing.done and end < len(rest):
            rest = rest[end:]
            end = framing.feed(rest)
        assert framing.done
    framing = ChunkedFraming()
    assert framing.feed(body + b"GET / HTTP/1.1\r\n") == len(body)  # stops at its own end
    with pytest.raises(BadRequest):
        ChunkedFraming().feed(b"zz\r\n")
    with pytest.raises(BadRequest):
        ChunkedFraming().feed(b"4\r\nWikiXX")


def test_response_framing() -> None:
    ok = parse_response(
        head("HTTP/1.1 200 OK", "Content-Length: 5", "Connection: keep-alive"), b"GET", True
    )
    assert ok.length == 5 and not ok.close and b"keep-alive" not in ok.forwarded.lower()
    assert (
        parse_response(head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked"), b"GET", True).length
        == -1
    )
    eof = parse_response(head("HTTP/1.1 200 OK"), b"GET", True)
    assert eof.length == -2 and eof.close and eof.forwarded.endswith(b"Connection: close\r\n")
    assert (
        parse_response(head("HTTP/1.1 304 Not Modified", "Content-Length: 9"), b"GET", True).length
        == 0
    )
    assert parse_response(head("HTTP/1.1 200 OK", "Content-Length: 9"), b"HEAD", True).length == 0
    with pytest.raises(BadRequest):
        parse_response(
            head("HTTP/1.1 200 OK", "Content-Length: 1", "Content-Length: 2"), b"GET", True
        )


def test_a_response_cannot_desync_the_client() -> None:
    """A sandbox's response with both framings goes out with Transfer-Encoding only, and a
    status that is not three digits is refused (int() would read "+99" as an interim 99)."""
    for parse in (parse_response, _parse_response_slow):
        both = parse(
            head("HTTP/1.1 200 OK", "Content-Length: 5", "Transfer-Encoding: chunked"), b"GET", True
        )
        assert both.length == -1 and b"content-length" not in both.forwarded.lower()
        assert b"transfer-encoding: chunked" in both.forwarded.lower()
        gzip = parse(
            head("HTTP/1.1 200 OK", "Content-Length: 5", "Transfer-Encoding: gzip"), b"GET", True
        )
        assert gzip.length == -2 and gzip.close
        assert b"content-length" not in gzip.forwarded.lower()
        for status in ("+99", "1_0", "-10", "\t20", "２００"):
            with pytest.raises(BadRequest):
                parse(head(f"HTTP/1.1 {status} X"), b"GET", True)


def test_policy_rules() -> None:
    none = policy_rules("t", 3, "10.0.0.7", NetworkPolicy.of("none"))
    assert none.splitlines()[-1].endswith("sb_3 reject with icmpx type admin-prohibited")
    assert "ip saddr != 10.0.0.7 drop" in none
    mixed = policy_rules(
        "t", 3, "10.0.0.7", NetworkPolicy.of("internet", ["1.2.3.4"], ["9.9.9.0/24"])
    )
    lines = mixed.splitlines()
    assert "9.9.9.0/24 } reject" in lines[1] and "1.2.3.4/32 } accept" in lines[2]
    assert lines[-1].endswith("sb_3 accept")
    for bad in ("nope", "::1/128", "1.2.3.4/33"):
        with pytest.raises(ValueError):
            NetworkPolicy.of("none", [bad])


def _normalized(forwarded: bytes) -> list[bytes]:
    lines = forwarded.split(b"\r\n")
    return [lines[0]] + [
        name + b":" + value.strip(b" \t")
        for name, _, value in (line.partition(b":") for line in lines[1:])
    ]


def _outcome(parse: Callable[[], Any]) -> object:
    try:
        r = parse()
    except BadRequest as exc:
        return ("refused", exc.status)
    fields = {k: getattr(r, k) for k in r.__slots__ if k not in ("forwarded", "verbatim")}
    return (fields, _normalized(r.forwarded))


def test_fast_parsers_agree_with_the_line_by_line_reference() -> None:
    """The fast request/response parsers accept, refuse and forward exactly as the reference
    (a line at a time, no shortcuts) on thousands of mutated heads."""
    rng = random.Random(5)
    requests = [
        head("GET /a HTTP/1.1", f"Host: {HOST}"),
        head(
            "POST /up HTTP/1.1",
            f"host:{HOST}",
            "Content-Length: 12",
            "Connection: keep-alive, Upgrade",
            "Upgrade: websocket",
            "X-Forwarded-For: 9.9.9.9",
            "Accept:  text/html ",
        ),
        head("PUT / HTTP/1.0", f"Host: {HOST}", "Transfer-Encoding: chunked", "Te: trailers"),
        head(f"GET http://{HOST}/x?y HTTP/1.1", f"Host: {HOST}", "Connection: close"),
    ]
    responses = [
        head("HTTP/1.1 200 OK", "Content-Length: 2", "Content-Type: text/plain"),
        head("HTTP/1.1 200 OK", "Transfer-Encoding: gzip", "Connection: keep-alive"),
        head("HTTP/1.1 204 No Content", "Content-Length: 3", "Content-Length: 3"),
        head("HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"),
        head("HTTP/1.0 200 OK", "Transfer-Encoding: chunked", "Connection: close"),
        head("HTTP/1.1 200 OK", "Set-Cookie: a=1; Domain=localhost", "Content-Length: 0"),
    ]
    pieces = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"\x00", b"\x7f", b"\xff", b",", b"0"]

    def mutate(raw: bytes) -> bytes:
        data = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data) + 1)
            choice = rng.random()
            if choice < 0.1:
                lines = bytes(data).split(b"\r\n")
                lines.insert(rng.randrange(1, len(lines) + 1), rng.choice(lines[1:] or [b"X: 1"]))
                data = bytearray(b"\r\n".join(lines))
            elif choice < 0.4:
                data[at:at] = rng.choice(pieces)
            elif choice < 0.7 and at < len(data):
                del data[at : at + rng.randint(1, 3)]
            elif at < len(data):
                data[at] = rng.choice(b"\r\n :\t,aZ0-")
        return bytes(data)

    for raw in requests:
        for candidate in [raw] + [mutate(raw) for _ in range(1500)]:
            args = (candidate, "localhost", b"1.2.3.4")
            assert _outcome(partial(parse_request, *args)) == (
                _outcome(partial(_parse_request_slow, *args))
            ), candidate
    for raw in responses:
        for method in (b"GET", b"HEAD"):
            for candidate in [raw] + [mutate(raw) for _ in range(800)]:
                assert _outcome(partial(parse_response, candidate, method, True)) == (
                    _outcome(partial(_parse_response_slow, candidate, method, True))
                ), candidate


def test_authorization_is_not_forwarded_to_a_preview() -> None:
    raw = head("GET / HTTP/1.1", f"Host: {HOST}", "Authorization: Bearer hk_admin", "A: 1")
    for parse in (parse_request, _parse_request_slow):
        forwarded = parse(raw, "localhost", b"127.0.0.1").forwarded
        assert b"hk_admin" not in forwarded and b"A: 1" in forwarded


def test_set_cookie_domains_are_dropped_so_cookies_stay_host_only() -> None:
    raw = head(
        "HTTP/1.1 200 OK",
        "Set-Cookie: a=1; Domain=localhost; Path=/",
        "set-cookie: b=2;domain=.localhost",
        "Set-Cookie: c=3; HttpOnly",
        "Set-Cookie: domain=4",  # a cookie *named* domain is not an attribute
        "Content-Length: 0",
    )
    for status in (b"200 OK", b"101 Switching Protocols"):
        for parse in (parse_response, _parse_response_slow):
            r = parse(raw.replace(b"200 OK", status), b"GET", True)
            assert not r.verbatim
            lines = _normalized(r.forwarded)
            assert b"Set-Cookie:a=1; Path=/" in lines
            assert b"set-cookie:b=2" in lines
            assert b"Set-Cookie:c=3; HttpOnly" in lines
            assert b"Set-Cookie:domain=4" in lines
            assert b"domain=." not in r.forwarded.lower()
