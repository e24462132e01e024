"""Progress of long work: a bar with items/s, bits/item so far and the time left.

The drivers take a ``progress`` factory with tqdm's signature (``progress(total=...,
initial=..., unit=..., desc=...)``, ``bar.update(n)``, ``bar.close()``); the command line
passes :func:`bar_factory` when its output is a terminal, and nothing otherwise. The
engines advance a bar with :func:`tick`, which also shows the bits per item written so far
when the bar is one of :class:`Bar`.
"""

from __future__ import annotations

import sys

import numpy as np


def tick(bar, items: int, nbits=None) -> None:
    """Advance ``bar`` (or nothing when ``None``) by ``items``; ``nbits`` (the message
    lengths in bits of the items just written, any array-like) feeds bits/item."""
    if bar is None:
        return
    if nbits is not None and hasattr(bar, "add_bits"):
        bar.add_bits(int(np.sum(np.asarray(nbits))), len(nbits))
    bar.update(items)


def tick_total(bar, items: int, bits: int, coded: int) -> None:
    """Advance ``bar`` by ``items`` of which ``coded`` were written in ``bits`` bits in all
    (what a shard's summary says)."""
    if bar is None:
        return
    if hasattr(bar, "add_bits"):
        bar.add_bits(int(bits), int(coded))
    bar.update(items)


def bar_factory(stream=None):
    """:class:`Bar` when both stdout and the bar's stream (stderr) are terminals, else
    ``None`` (no bar in logs, pipes or files)."""
    stream = stream or sys.stderr
    if not (sys.stdout.isatty() and stream.isatty()):
        return None
    return Bar


def _bar_class():
    from tqdm import tqdm

    class _Bar(tqdm):
        """A tqdm bar that shows the bits per item written so far."""

        def __init__(self, *args, **kw):
            kw.setdefault("dynamic_ncols", True)
            kw.setdefault("smoothing", 0.1)
            super().__init__(*args, **kw)
            self._bits = 0
            self._coded = 0

        def add_bits(self, bits: int, items: int) -> None:
            self._bits += bits
            self._coded += items
            if self._coded:
                self.set_postfix_str(f"{self._bits / self._coded:.1f} bits/item", refresh=False)

    return _Bar


class _Lazy:
    """Builds the tqdm subclass on first use (tqdm imports only where a bar is drawn)."""

    def __call__(self, *args, **kw):
        return _bar_class()(*args, **kw)


Bar = _Lazy()
