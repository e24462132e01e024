"""Exception types of recray.

Every error raised on bad input is a :class:`RecrayError` subclass whose message names the
item (block index, item id) and the field, and says what to do. Callers that want to treat
a whole class of failures alike catch the base class; tests catch the precise type.
"""

from __future__ import annotations


class RecrayError(Exception):
    """Base class of every error recray raises on purpose.

    ``block`` and ``dim``, when set, locate the offending entry (row of the call and
    dimension), so callers that know more (an item id, a plan block) can say it.
    """

    def __init__(self, message: str = "", *, block: int | None = None, dim: int | None = None):
        super().__init__(message)
        self.block = block
        self.dim = dim


class InputError(RecrayError, ValueError):
    """An argument has the wrong shape, dtype or value (NaN/inf, sigma <= 0, ...)."""


class UnboundedRatioError(InputError):
    """An exact method (PFR, SP-PFR) was asked to code a target whose density ratio q/p is
    unbounded: a posterior wider than the prior in some dimension, or of equal width with a
    shifted mean. Such a search never stops; use a fixed-budget method (``orc``/``sp-orc``)."""


class OutOfReachError(InputError):
    """An exact method was asked to code a target with more than a tiny share of its mass
    (``2^-40``) beyond the sampler's reach (about 8.2 prior-sigma for an unpartitioned
    dimension): the sample would be exact only for the target cut to that range, so the
    block is refused rather than truncated silently. Such a posterior sits 7 or more
    prior-sigma out; give the dimension partition bits (or adaptive partitions), or use a
    fixed-budget method."""


class SearchBudgetError(RecrayError):
    """A search hit its step cap (``max_steps``) or is predicted to need far more steps than
    the cap allows. The message names the block and the dimension that dominates the cost."""


class BackendError(RecrayError):
    """The requested array backend (NumPy or CuPy) is unknown or not usable here."""


class PlanError(RecrayError, ValueError):
    """A codec plan is invalid, inconsistent with its inputs, or cannot be read."""


def fmt_block(i: int, block_ids=None) -> str:
    """How messages name a block: its row in the call, and its stream id when that differs."""
    if block_ids is None:
        return f"block {i}"
    sid = int(block_ids[i])
    return f"block {i} (stream id {sid})" if sid != i else f"block {i}"


class MessageError(RecrayError):
    """A coded message cannot be decoded: corrupted, truncated, or coded under another
    layout. The message names the item when the caller knows it."""


class FormatError(RecrayError):
    """A run directory or file is not a (complete, compatible) recray bitstream: missing or
    foreign files, a format version this recray does not read, a plan or prior checksum
    that does not match, a failed CRC."""


class StorageError(RecrayError):
    """A file of a run could not be written or read (disk full, file size limit, permission,
    a storage service that fails). Committed parts are kept: run again with ``--resume``."""


class ClusterError(RecrayError):
    """The Ray cluster cannot be reached (no cluster at the address, a host or port that does
    not answer within the connection timeout), or Ray failed outside recray's own code."""


def fmt_item(item_id) -> str:
    """How messages name an item: its id as Python writes it (``7``, ``'img-0042'``)."""
    return repr(item_id.item() if hasattr(item_id, "item") else item_id)
