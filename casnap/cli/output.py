"""How the command line prints: sizes, times, JSON, escaped names and the progress bar."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import click

from casnap.config import parse_time
from casnap.progress import ProgressFn

if TYPE_CHECKING:
    from casnap.cli.main import Context


def human(n: float) -> str:
    """Bytes as a short human-readable size (binary units); 8 EiB and more (no file system
    holds as much: only a crafted manifest's counter) as a bound, which no float overflows."""
    if abs(n) >= 1 << 63:
        return ">= 8 EiB" if n > 0 else "<= -8 EiB"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def local_time(iso: str) -> str:
    return parse_time(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


_NAMED_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
# control and format characters (a newline, an escape sequence, a right-to-left override), lone
# surrogates (bytes of a name that is not UTF-8), line and paragraph separators
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def printable(text: str, backslash: bool = True) -> str:
    """text for a terminal: control characters escaped as Python writes them (`\\n`, `\\x1b`),
    and the bytes of a name that is not UTF-8 as `\\xNN`, so one name stays on one line and
    cannot move the cursor; with backslash, `\\` too, so the escaped form is unambiguous (as
    `ls -b` does). JSON output keeps names exact."""
    if text.isprintable() and not (backslash and "\\" in text):
        return text
    import unicodedata  # only for text that needs escaping

    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\" if backslash else ch)
        elif ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif unicodedata.category(ch) in _UNPRINTABLE:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def paths_label(paths: Sequence[str]) -> str:
    """A snapshot's committed paths for a table: `(all)` for a whole-dir snapshot."""
    return " ".join(printable(p) for p in paths) if paths else "(all)"


def _clock(seconds: float) -> str:
    """Seconds as m:ss (h:mm:ss from an hour on)."""
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class ProgressBar:
    """A (bytes done, total) callback drawing one line on stderr: label, bar, percent, bytes,
    rate and ETA, fitted to the terminal's width (read at each redraw): the rate, the bytes, the
    label and the ETA are left out in turn, and the bar shortened, until the line fits.

    A new run (the count going back, or another total) ends the line and starts a new bar,
    labelled with the next of the labels given (verify: the structure check, then the data)."""

    MIN_BAR, MAX_BAR = 8, 30
    REDRAW_SECONDS = 0.1

    def __init__(self, label: str, *more: str, width: int | None = None, file: Any = None) -> None:
        self.labels = (label, *more)
        self.width = width  # None: the terminal's (COLUMNS when set)
        self.file = file
        self.run = -1
        self.total = 0
        self.done = 0
        self.t0 = 0.0
        self.drawn_at = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.run < 0 or total != self.total or done < self.done:
            if self.drawn:
                self._write("\n")
            self.run += 1
            self.total, self.t0, self.drawn = total, now, False
        self.done = done
        if not self.drawn or done >= total or now - self.drawn_at >= self.REDRAW_SECONDS:
            columns = self.width if self.width is not None else shutil.get_terminal_size().columns
            self._write("\r" + self.line(columns - 1, now))
            self.drawn, self.drawn_at = True, now

    def line(self, room: int, now: float | None = None) -> str:
        """The status line in at most room characters (padded to room, so a redraw covers the
        longer line it replaces)."""
        now = time.monotonic() if now is None else now
        done, total = self.done, self.total
        elapsed = max(now - self.t0, 1e-6)
        label = self.labels[min(self.run, len(self.labels) - 1)]
        pct = f"{100 * done // total if total else 100:>3d}%"
        # fixed widths, so the bar keeps its length from one redraw to the next
        amount = f"{human(done):>10} / {human(total)}"
        rate = f"{human(done / elapsed) + '/s':>12}"
        if done >= total:
            eta = f"in {_clock(elapsed)}"
        elif done > 0:
            eta = f"ETA {_clock(elapsed * (total - done) / done)}"
        else:
            eta = "ETA -:--"
        eta = eta.ljust(8)
        for parts in (
            (label, "BAR", pct, amount, rate, eta),
            (label, "BAR", pct, amount, eta),
            (label, "BAR", pct, eta),
            ("BAR", pct, eta),
            ("BAR", pct),
        ):
            words = [p for p in parts if p]
            fixed = sum(len(w) for w in words if w != "BAR") + len(words) - 1 + 2
            width = min(self.MAX_BAR, room - fixed)
            if width >= self.MIN_BAR:
                filled = width * done // total if total else width
                bar = "[" + "#" * filled + "-" * (width - filled) + "]"
                text = " ".join(bar if w == "BAR" else w for w in words)
                return text.ljust(room)
        return pct.strip()[:room].ljust(room)

    def _write(self, text: str) -> None:
        out = self.file if self.file is not None else sys.stderr
        out.write(text)
        out.flush()

    def close(self) -> None:
        """End the line, if a bar was drawn."""
        if self.drawn:
            self._write("\n")
            self.drawn = False


def on_terminal(stream: Any) -> bool:
    """Whether a standard stream is a terminal; False for one the process was started without
    (`2>&-` and the like: Python then holds None)."""
    return stream is not None and stream.isatty()


@contextlib.contextmanager
def progress_bar(c: Context, label: str, *more: str) -> Iterator[ProgressFn | None]:
    """A progress callback drawing a bar on stderr; None (no output) with -q or off a terminal.
    More labels name the runs that follow the first (see ProgressBar)."""
    if c.quiet or not on_terminal(sys.stderr):
        yield None
        return
    bar = ProgressBar(label, *more)
    try:
        yield bar
    finally:
        bar.close()


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))
