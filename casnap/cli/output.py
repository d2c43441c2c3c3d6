"""How the command line prints: sizes, times, JSON, escaped names and the progress bar."""

from __future__ import annotations

import contextlib
import json
import sys
import time
import unicodedata
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from casnap.progress import ProgressFn
from casnap.repository import parse_time

if TYPE_CHECKING:
    from casnap.cli.main import Context


def human(n: float) -> str:
    """Bytes as a short human-readable size (binary units)."""
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


class ProgressBar:
    """A (bytes done, total) callback drawing click's progress bar with size, rate and ETA."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None
        self.last = 0
        self.t0 = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.t0 = time.monotonic()
            self.bar = click.progressbar(
                length=max(total, 1),
                label=self.label,
                file=sys.stderr,
                show_eta=True,
                show_percent=True,
                width=24,
                item_show_func=self._text,
            )
            self.bar.__enter__()
        self.bar.update(max(0, done - self.last), current_item=(done, total))
        self.last = max(self.last, done)

    def _text(self, item: tuple[int, int] | None) -> str:
        if item is None:
            return ""
        done, total = item
        rate = done / max(time.monotonic() - self.t0, 1e-6)
        return f"{human(done)} / {human(total)}  {human(rate)}/s"

    def close(self) -> None:
        """Finish the bar (a final redraw and a newline), if one was drawn."""
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@contextlib.contextmanager
def progress_bar(c: Context, label: str) -> Iterator[ProgressFn | None]:
    """A progress callback drawing a bar on stderr; None (no output) with -q or off a terminal."""
    if c.quiet or not sys.stderr.isatty():
        yield None
        return
    bar = ProgressBar(label)
    try:
        yield bar
    finally:
        bar.close()


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))
