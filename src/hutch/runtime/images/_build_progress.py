"""Progress of an image build: debootstrap's and apt's status records (parsed purely), drawn.

A build step reports `(fraction 0..1, message)` to a `Progress` callback.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from typing import IO

Progress = Callable[[float, str], None]

# debootstrap's --debian-installer progress phases -> the part of the debootstrap step they cover.
_DEBOOTSTRAP_PHASES: dict[str, tuple[float, float]] = {
    "DOWNREL": (0.0, 0.01),
    "DOWNRELSIG": (0.01, 0.02),
    "DOWNPKGS": (0.02, 0.03),
    "DOWNMAINPKGS": (0.02, 0.03),
    "SIZEDEBS": (0.03, 0.05),
    "DOWNDEBS": (0.05, 0.45),
    "EXTRACTPKGS": (0.45, 0.6),
    # The second stage counts all of these with one counter.
    "INSTCORE": (0.6, 1.0),
    "UNPACKREQ": (0.6, 1.0),
    "CONFREQ": (0.6, 1.0),
    "UNPACKBASE": (0.6, 1.0),
    "CONFBASE": (0.6, 1.0),
}


class DebootstrapStatusParser:
    """Parses `debootstrap --debian-installer`'s fd 3 (`P:`/`I:`/`E:` records).

    `feed(line)` returns (fraction of debootstrap done, message) when the line moves the progress
    or the message; `errors` collects `E:` messages.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.message = "debootstrap"
        self._phase = ""
        self._now = self._end = 0
        self._kind = ""
        self._args: list[str] = []

    def fraction(self) -> float:
        lo, hi = _DEBOOTSTRAP_PHASES.get(self._phase, (0.0, 0.0))
        done = min(self._now / self._end, 1.0) if self._end > 0 else 0.0
        return lo + (hi - lo) * done

    def feed(self, line: str) -> tuple[float, str] | None:
        tag, _, rest = line.partition(": ")
        if tag == "P":
            words = rest.split()
            if len(words) < 2 or not (words[0].isdigit() and words[1].isdigit()):
                return None
            self._now, self._end = int(words[0]), int(words[1])
            if len(words) > 2:
                self._phase = words[2]
            return self.fraction(), self.message
        if tag in ("I", "W", "E"):
            self._kind, self._args = tag, []
        elif tag in ("PA", "IA", "WA", "EA"):
            self._args.append(rest)
        elif tag in ("IF", "WF", "EF") and self._kind == tag[0]:
            text = _printf(rest, self._args)
            if tag == "EF":
                self.errors.append(text)
            elif tag == "IF":
                self.message = text
                return self.fraction(), self.message
        elif tag == "PF":
            self._args = []
        return None


def _printf(fmt: str, args: Sequence[str]) -> str:
    try:
        return fmt.replace("\\n", " ") % tuple(args)
    except (TypeError, ValueError):
        return " ".join([fmt, *args])


def parse_apt_status(line: str) -> tuple[str, float, str] | None:
    """One `APT::Status-Fd` line -> (kind: "download"|"install"|"error", percent, message)."""
    parts = line.rstrip("\n").split(":", 3)
    if len(parts) != 4:
        return None
    kind, _, percent, message = parts
    try:
        value = float(percent)
    except ValueError:
        return None
    if kind == "dlstatus":
        return "download", value, message
    if kind == "pmstatus":
        return "install", value, message
    if kind == "pmerror":
        return "error", value, message
    return None


# -- rendering ----------------------------------------------------------------------------------


def render_progress_bar(stream: IO[str]) -> Progress:
    """A progress callback that draws a one-line bar on a terminal, or plain lines every 5%."""
    tty = stream.isatty()
    last_bucket = -1

    def draw(fraction: float, message: str) -> None:
        nonlocal last_bucket
        fraction = min(max(fraction, 0.0), 1.0)
        if tty:
            width = shutil.get_terminal_size((80, 24)).columns
            bar = "#" * int(fraction * 30)
            line = f"[{bar:<30}] {fraction * 100:3.0f}% {message}"
            stream.write("\r" + line[: width - 1].ljust(width - 1))
            if fraction >= 1.0:
                stream.write("\n")
        else:
            bucket = int(fraction * 20)
            if bucket == last_bucket:
                return
            last_bucket = bucket
            stream.write(f"{fraction * 100:3.0f}% {message}\n")
        stream.flush()

    return draw


class MonotonicProgress:
    """Forwards progress, never backwards (phases overlap a little), and never raising."""

    def __init__(self, sink: Progress | None) -> None:
        self._sink = sink
        self._last = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        self._last = max(self._last, min(fraction, 1.0))
        if self._sink is not None:
            self._sink(self._last, message)

    def span(self, lo: float, hi: float) -> Progress:
        return lambda fraction, message: self(lo + (hi - lo) * fraction, message)
