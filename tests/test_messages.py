"""Per-item message codec (recray.format.messages): round trips, wire format, overhead."""

from __future__ import annotations

import constriction
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import recray.format.messages.fixed as fixed
from recray.errors import InputError, MessageError
from recray.format.messages import (
    MESSAGE_CODEC_VERSION,
    IndexLayout,
    decode_message,
    decode_messages,
    encode_message,
    encode_messages,
    ideal_bits,
)
from recray.rec.codes import CLASS_PROBS


def roundtrip(bins, local, layout: IndexLayout) -> bytes:
    msg = encode_message(bins, local, layout)
    got_bins, got_local = decode_message(msg, layout)
    assert got_bins.dtype == np.int64 and got_local.dtype == np.int64
    np.testing.assert_array_equal(got_bins, np.asarray(bins, dtype=np.int64))
    np.testing.assert_array_equal(got_local, np.asarray(local, dtype=np.int64))
    return msg


# ----------------------------------------------------------------------------- hand cases
def test_roundtrip_sp_like():
    layout = IndexLayout((16, 12, 0), "universal")
    roundtrip([5, 7, 0], [1, 2, 5], layout)
    roundtrip([2**16 - 1, 0, 0], [1, 1, 1], layout)


def test_roundtrip_pfr_like_large_locals():
    layout = IndexLayout((0, 0))
    roundtrip([0, 0], [2**20 + 3, 2**40], layout)
    roundtrip([0, 0], [2**48 - 1, 1], layout)


def test_roundtrip_raw():
    layout = IndexLayout((0, 0, 0, 0), "raw", 16)
    roundtrip([0, 0, 0, 0], [1, 2**16, 300, 2**16 - 1], layout)
    roundtrip([0], [1], IndexLayout((0,), "raw", 0))  # N = 1: nothing to send
    roundtrip([3, 0], [7, 2**24], IndexLayout((2, 0), "raw", 24))


def test_roundtrip_wide_fields_cross_chunk_boundaries():
    layout = IndexLayout((62, 17, 33, 48, 1), "universal")
    bins = [2**62 - 1, 2**16 + 5, 2**32 + 2**16 - 1, 2**47 + 1, 1]
    local = [2**47, 2**47 + 2**31 + 12345, 2**16, 2**17 - 1, 3]
    roundtrip(bins, local, layout)
    roundtrip([2**62 - 2, 2**16], [2**48 - 1, 2**32 + 1], IndexLayout((62, 17), "raw", 48))


def test_batch_roundtrip_and_layout_from_list():
    rng = np.random.default_rng(3)
    layout = IndexLayout([10, 10, 12, 0, 8, 16])  # a list is stored as a tuple
    assert layout.bin_bits == (10, 10, 12, 0, 8, 16) and layout.n_blocks == 6
    bins = np.stack([rng.integers(0, 2**b, 50) for b in layout.bin_bits], 1)
    local = rng.integers(1, 1000, (50, 6))
    msgs = encode_messages(bins, local, layout)
    assert msgs == [encode_message(bins[i], local[i], layout) for i in range(50)]
    got_bins, got_local = decode_messages(msgs, layout)
    np.testing.assert_array_equal(got_bins, bins)
    np.testing.assert_array_equal(got_local, local)


def test_empty_message():
    layout = IndexLayout((0, 0, 0), "raw", 0)
    assert encode_message([0, 0, 0], [1, 1, 1], layout) == b""
    bins, local = decode_message(b"", layout)
    np.testing.assert_array_equal(bins, [0, 0, 0])
    np.testing.assert_array_equal(local, [1, 1, 1])
    none = IndexLayout(())
    assert encode_message([], [], none) == b""
    assert decode_message(b"", none)[0].shape == (0,)
    assert encode_messages(np.zeros((2, 3), int), np.ones((2, 3), int), layout) == [b"", b""]


# ----------------------------------------------------------------------------- property
@st.composite
def layouts_and_indices(draw):
    nb = draw(st.integers(1, 12))
    bits = draw(st.lists(st.integers(0, 62), min_size=nb, max_size=nb))
    code = draw(st.sampled_from(["universal", "raw", "raw-per-block"]))
    raw_bits = draw(st.integers(0, 48)) if code == "raw" else 0
    widths = (
        draw(st.lists(st.integers(0, 48), min_size=nb, max_size=nb))
        if code == "raw-per-block"
        else [raw_bits] * nb
    )
    bins = [draw(st.integers(0, 2**b - 1)) for b in bits]
    if code == "universal":
        classes = [draw(st.integers(0, 47)) for _ in range(nb)]
        local = [draw(st.integers(2**c, min(2 ** (c + 1), 2**48) - 1)) for c in classes]
    else:
        local = [draw(st.integers(1, min(2**w, 2**48 - 1))) for w in widths]
    if code == "raw-per-block":
        return IndexLayout(tuple(bits), "raw", block_raw_bits=tuple(widths)), bins, local
    return IndexLayout(tuple(bits), code, raw_bits), bins, local


@settings(max_examples=300, deadline=None)
@given(layouts_and_indices())
def test_roundtrip_property(case):
    layout, bins, local = case
    msg = roundtrip(bins, local, layout)
    ideal = ideal_bits(bins, local, layout)
    assert 8 * len(msg) < ideal + 9
    if len(msg) > 1:  # shortest: one byte less no longer decodes to the same indices
        try:
            got = decode_message(msg[:-1], layout)
        except MessageError:
            return
        assert not (np.array_equal(got[0], bins) and np.array_equal(got[1], local))


# ----------------------------------------------------------------------------- wire format
# These bytes pin the wire format of MESSAGE_CODEC_VERSION 2 (symbol order, chunking,
# constriction's model quantization, big-endian words, shortest termination; layouts
# without adaptive_dims code exactly as version 1 did), which version 3 keeps for layouts
# without learned laws (so old runs decode). Change them only together with a
# MESSAGE_CODEC_VERSION bump.
GOLDEN = [
    (IndexLayout((16, 12, 0), "universal"), [5, 7, 0], [1, 2, 5], "290ad58206"),
    (IndexLayout((0, 0), "universal"), [0, 0], [2**20 + 3, 2**40], "e29f58f8aa8d72c0"),
    (IndexLayout((8, 8, 8), "raw", 16), [1, 2, 3], [1, 65536, 300], "01000002fffb030228"),
]


@pytest.mark.parametrize("layout,bins,local,hexbytes", GOLDEN)
def test_golden_bytes(layout, bins, local, hexbytes):
    assert MESSAGE_CODEC_VERSION == 5
    assert encode_message(bins, local, layout).hex() == hexbytes
    got_bins, got_local = decode_message(bytes.fromhex(hexbytes), layout)
    assert got_bins.tolist() == bins and got_local.tolist() == local


# Version 4: a raw index width per block (orc with a per-block budget N_b). Block b's
# local - 1 is written in block_raw_bits[b] bits; with equal widths the bytes are those of
# the version 2/3 layout with that raw_bits (old messages decode unchanged).
GOLDEN_V4 = (IndexLayout((8, 8, 8), "raw", block_raw_bits=(3, 16, 9)), [1, 2, 3], [8, 65536, 300])


def test_per_block_raw_widths_golden_bytes_and_widths_used():
    layout, bins, local = GOLDEN_V4
    msg = encode_message(bins, local, layout)
    assert msg.hex() == "01e05fffde8fb1"
    b, n = decode_message(msg, layout)
    assert b.tolist() == bins and n.tolist() == local
    # read with a bare constriction decoder: the uniform symbols are bin_b in 8 bits, then
    # local_b - 1 in exactly w_b bits, block by block
    words = np.frombuffer(msg + b"\0" * (-len(msg) % 4), dtype=">u4").astype(np.uint32)
    dec = constriction.stream.queue.RangeDecoder(words)
    sizes = np.array([2**8, 2**3, 2**8, 2**16, 2**8, 2**9], dtype=np.int32)
    got = dec.decode(constriction.stream.model.Uniform(), sizes)
    assert got.tolist() == [1, 7, 2, 65535, 3, 299]
    # the fields are exactly 8 + w_b bits wide: 24 + 3 + 16 + 9 = 52 bits, 7 bytes
    assert ideal_bits(bins, local, layout) == 52.0 and len(msg) == 7
    assert layout.raw_widths.tolist() == [3, 16, 9]
    # the negative control: the same bytes read with any other width per block (the widths
    # permuted, or one width for all) do not give the indices back
    for wrong in (
        IndexLayout((8, 8, 8), "raw", block_raw_bits=(16, 3, 9)),
        IndexLayout((8, 8, 8), "raw", block_raw_bits=(3, 9, 16)),
        IndexLayout((8, 8, 8), "raw", 16),
    ):
        try:
            got = decode_message(msg, wrong)
        except MessageError:
            continue
        assert not (got[0].tolist() == bins and got[1].tolist() == local)
    # equal widths code exactly as the scalar raw_bits layout (version 2/3 bytes)
    same = IndexLayout((8, 8, 8), "raw", block_raw_bits=(16, 16, 16))
    assert encode_message([1, 2, 3], [1, 65536, 300], same).hex() == GOLDEN[2][3]
    assert decode_message(bytes.fromhex(GOLDEN[2][3]), same)[1].tolist() == [1, 65536, 300]


def test_per_block_raw_widths_bound_each_block():
    layout = IndexLayout((0, 0, 0), "raw", block_raw_bits=(2, 0, 5))
    roundtrip([0, 0, 0], [4, 1, 32], layout)
    with pytest.raises(InputError, match=r"local\[0\] = 5 must be in \[1, 2\^2\].*block_raw_bits"):
        encode_message([0, 0, 0], [5, 1, 1], layout)
    with pytest.raises(InputError, match=r"local\[1, 1\] = 2 must be in \[1, 2\^0\]"):
        encode_messages([[0, 0, 0], [0, 0, 0]], [[1, 1, 1], [1, 2, 1]], layout)
    with pytest.raises(InputError, match=r"local\[2\] = 33 must be in \[1, 2\^5\]"):
        encode_message([0, 0, 0], [1, 1, 33], layout)


def test_per_block_raw_widths_validation_names_the_field():
    with pytest.raises(InputError, match=r"block_raw_bits\[1\] = 49 must be in \[0, 48\]"):
        IndexLayout((0, 0), "raw", block_raw_bits=(3, 49))
    with pytest.raises(InputError, match=r"block_raw_bits\[0\] = -1"):
        IndexLayout((0, 0), "raw", block_raw_bits=(-1, 3))
    with pytest.raises(InputError, match=r"block_raw_bits\[1\] must be an int"):
        IndexLayout((0, 0), "raw", block_raw_bits=(3, 2.0))
    with pytest.raises(InputError, match="block_raw_bits has 1 entries; the layout has 2 blocks"):
        IndexLayout((0, 0), "raw", block_raw_bits=(3,))
    with pytest.raises(InputError, match="block_raw_bits .* need code='raw'"):
        IndexLayout((0, 0), "universal", block_raw_bits=(3, 3))
    with pytest.raises(InputError, match="block_raw_bits replaces raw_bits"):
        IndexLayout((0, 0), "raw", 4, block_raw_bits=(3, 3))
    with pytest.raises(InputError, match="block_raw_bits must be a sequence"):
        IndexLayout((0, 0), "raw", block_raw_bits=3)


def test_ideal_bits_value():
    layout = IndexLayout((16, 12, 0))
    want = 28 + (0 + 1 + 2) - np.log2(CLASS_PROBS[[0, 1, 2]]).sum()
    assert ideal_bits([5, 7, 0], [1, 2, 5], layout) == pytest.approx(want)
    two = ideal_bits([[5, 7, 0], [0, 0, 0]], [[1, 2, 5], [1, 2, 5]], layout)
    assert two.shape == (2,) and two == pytest.approx([want, want])
    assert ideal_bits([1, 2], [3, 4], IndexLayout((2, 2), "raw", 5)) == 14.0


# ----------------------------------------------------------------------------- overhead
def test_overhead_of_shortest_termination():
    rng = np.random.default_rng(7)
    over, naive = [], []
    for _ in range(2000):
        nb = int(rng.integers(1, 13))
        bits = tuple(int(b) for b in rng.integers(0, 63, nb))
        if rng.random() < 0.5:
            layout = IndexLayout(bits, "universal")
            local = 2 ** rng.integers(0, 48, nb)
            local = local + rng.integers(0, local)  # any value of the class
        else:
            layout = IndexLayout(bits, "raw", int(rng.integers(0, 25)))
            local = rng.integers(1, 2**layout.raw_bits + 1, nb)
        bins = np.array([rng.integers(0, 2**b) for b in bits], dtype=np.int64)
        msg = encode_message(bins, local, layout)
        ideal = ideal_bits(bins, local, layout)
        over.append(8 * len(msg) - ideal)
        naive.append(32 * full_words(bins, local, layout) - ideal)
    over, naive = np.array(over), np.array(naive)
    # measured (seed 7): mean 2.6 bits, max 7.85; the full word string: mean 16.8, max 32.8
    assert over.mean() < 3.5
    assert over.max() < 9.0
    assert naive.mean() > over.mean() + 8


def full_words(bins, local, layout: IndexLayout) -> int:
    """Length (32-bit words) of constriction's unshortened output for one item."""
    classes, cv, cw, mask = fixed._symbols(
        np.asarray(bins, dtype=np.int64)[None], np.asarray(local, dtype=np.int64)[None], layout
    )
    m = mask[0]
    if not m.any() and classes is None:
        return 0
    words, _ = fixed._encode_words(
        None if classes is None else classes[0],
        cv[0][m].astype(np.int32),
        np.left_shift(1, cw[0][m]).astype(np.int32),
        layout.class_probs,
    )
    return len(words)


def test_near_prior_class_model_is_cheaper_for_first_candidates():
    """Collapsed blocks (n* = 1 most of the time) cost less under class model 1, and the
    layout's per-block models round-trip."""
    default = IndexLayout((0,) * 4)
    near = IndexLayout((0,) * 4, class_models=(1, 1, 1, 1))
    mixed = IndexLayout((0,) * 4, class_models=(0, 1, 0, 1))
    ones = np.ones(4, dtype=np.int64)
    zeros = np.zeros(4, dtype=np.int64)
    assert ideal_bits(zeros, ones, near) < ideal_bits(zeros, ones, default) - 4
    loc = np.array([1, 3, 700, 1])
    for layout in (default, near, mixed):
        msg = encode_message(zeros, loc, layout)
        assert decode_message(msg, layout)[1].tolist() == loc.tolist()
    with pytest.raises(InputError, match="class_models"):
        IndexLayout((0, 0), class_models=(0, 2))


# ----------------------------------------------------------------------------- errors
def test_garbage_raises_message_error_naming_item():
    layout = IndexLayout((16, 12, 0))
    good = encode_message([5, 7, 0], [1, 2, 5], layout)
    with pytest.raises(MessageError, match="does not decode under this layout"):
        decode_message(b"\xff" * 8, layout)  # constriction rejects the data
    with pytest.raises(MessageError, match="item 'abc'"):
        decode_messages([good, b"\xff" * 8], layout, item_ids=["xyz", "abc"])
    with pytest.raises(MessageError, match="item 1"):
        decode_messages([good, b"\xff" * 8], layout)
    with pytest.raises(InputError, match="item_ids"):
        decode_messages([good], layout, item_ids=["a", "b"])


def test_impossible_class_raises():
    """A class >= 48 would give local >= 2^48: rejected, not returned."""
    enc = constriction.stream.queue.RangeEncoder()
    model = constriction.stream.model.Categorical(CLASS_PROBS, perfect=False)
    enc.encode(np.array([50, 0], dtype=np.int32), model)
    data = enc.get_compressed().astype(">u4").tobytes()
    with pytest.raises(MessageError, match="class 50"):
        decode_message(data, IndexLayout((0, 0)))


def test_truncated_message_fails_or_differs():
    layout = IndexLayout((16, 12, 3, 20))
    bins, local = [40000, 4000, 5, 2**19 + 7], [1, 1234, 2**30 + 5, 17]
    msg = encode_message(bins, local, layout)
    for cut in range(len(msg)):
        try:
            got = decode_message(msg[:cut], layout)
        except MessageError:
            continue
        assert not (got[0].tolist() == bins and got[1].tolist() == local)


def test_encode_input_errors():
    layout = IndexLayout((4, 4))
    with pytest.raises(InputError, match="bins"):
        encode_message([1, 2, 3], [1, 1], layout)
    with pytest.raises(InputError, match="local"):
        encode_message([1, 2], [1], layout)
    with pytest.raises(InputError, match="local"):
        encode_message([1, 2], [1.0, 2.0], layout)
    with pytest.raises(InputError, match="bins"):
        encode_messages([1, 2], [1, 1], layout)  # 1-D where (n_items, n_blocks) is needed
    with pytest.raises(InputError, match="local"):
        encode_messages([[1, 2]], [[1, 1], [1, 1]], layout)
    with pytest.raises(InputError, match=r"bins\[1\] = 16"):
        encode_message([1, 16], [1, 1], layout)
    with pytest.raises(InputError, match=r"local\[0, 1\] = 0 must be in \[1, 2\^48\)"):
        encode_messages([[1, 2]], [[1, 0]], layout)
    with pytest.raises(InputError, match="local"):
        encode_message([1, 2], [1, 2**48], layout)
    raw = IndexLayout((0, 0), "raw", 4)
    encode_message([0, 0], [16, 1], raw)  # 2^raw_bits itself is fine
    with pytest.raises(InputError, match=r"local\[0\] = 17 must be in \[1, 2\^4\]"):
        encode_message([0, 0], [17, 1], raw)
    with pytest.raises(InputError, match="local"):
        encode_message([0, 0], [0, 1], raw)


def test_layout_validation():
    with pytest.raises(InputError, match=r"bin_bits\[1\]"):
        IndexLayout((3, 63))
    with pytest.raises(InputError, match="bin_bits"):
        IndexLayout((3, -1))
    with pytest.raises(InputError, match="code"):
        IndexLayout((3,), "gamma")
    with pytest.raises(InputError, match="raw_bits"):
        IndexLayout((3,), "raw", 49)
    with pytest.raises(InputError, match="bin_bits"):
        IndexLayout((3, 2.0))
    assert IndexLayout([1, 2]) == IndexLayout((1, 2)) and hash(IndexLayout([1, 2]))


def test_tail_symbols_share_the_message_and_its_termination():
    import constriction

    from recray.format.messages import Tail, decode_message_head

    layout = IndexLayout(bin_bits=(6, 0), code="universal", class_models=(0, 1))
    rng = np.random.default_rng(4)
    fam = constriction.stream.model.Categorical(perfect=False)
    bins = np.array([[5, 0], [63, 0], [0, 0]])
    local = np.array([[1, 1], [3, 1], [70, 2]])
    tails, probs = [], []
    for _ in range(3):
        p = rng.dirichlet(np.full(16, 0.3), size=50)
        x = np.array([rng.choice(16, p=row) for row in p], dtype=np.int32)
        ideal = float(-np.log2(p[np.arange(50), x]).sum())
        tails.append([Tail(x, fam, p, ideal)])
        probs.append(p)
    msgs = encode_messages(bins, local, layout, tails)
    for i, m in enumerate(msgs):
        b, n, dec = decode_message_head(m, layout)
        assert b.tolist() == bins[i].tolist() and n.tolist() == local[i].tolist()
        got = dec.decode(fam, probs[i])
        assert got.tolist() == tails[i][0].symbols.tolist()
        # one termination: within ~2 bytes of the ideal of indices plus tail
        ideal = ideal_bits(bins[i], local[i], layout) + tails[i][0].ideal_bits
        assert 8 * len(m) <= ideal + 16
        # and never longer than coding the tail separately would be
        assert len(m) <= len(encode_message(bins[i], local[i], layout)) + int(ideal) // 8 + 3


def _tail_layout(path: str) -> IndexLayout:
    """A two-block layout of each message code path: fixed codes, learned laws, ordinal
    bins (message codec versions 2, 3, 5)."""
    from recray.plan.laws import FREQ_TOTAL, N_LAW_CLASSES, BlockLaw

    classes = tuple([FREQ_TOTAL - N_LAW_CLASSES * 1000] + [1000] * N_LAW_CLASSES)
    if path == "fixed":
        return IndexLayout((2, 0), "universal")
    if path == "learned":
        law = BlockLaw(
            classes, ((FREQ_TOTAL // 2, FREQ_TOTAL // 4, FREQ_TOTAL // 8, FREQ_TOTAL // 8),)
        )
        return IndexLayout((2, 0), laws=(law, BlockLaw(classes)))
    law = BlockLaw(classes, ((1 << 18, 1 << 19, 1 << 18), (1 << 19, 1 << 19)))
    return IndexLayout((3, 0), laws=(law, BlockLaw(classes)), bin_radix=((3, 1, 2), (1, 1)))


def _tail_messages(seed: int, n: int, symbols: int, path: str = "fixed"):
    """``n`` items of :func:`_tail_layout` ``path``, each with a tail of ``symbols``
    256-level symbols under its own random tables (MNIST-like: most of the mass on a few
    levels)."""
    import constriction

    from recray.format.messages import Tail

    rng = np.random.default_rng(seed)
    fam = constriction.stream.model.Categorical(perfect=False)
    bins = np.stack([rng.integers(0, 4, n), np.zeros(n, np.int64)], axis=1)
    local = rng.integers(1, 200, (n, 2))
    tails = []
    for _ in range(n):
        p = rng.dirichlet(np.full(256, 0.02), size=symbols)
        x = np.array([rng.choice(256, p=row) for row in p], dtype=np.int32)
        ideal = float(-np.log2(p[np.arange(symbols), x]).sum())
        tails.append([Tail(x, fam, p, ideal)])
    return bins, local, tails


@pytest.mark.parametrize("path", ["fixed", "learned", "ordinal"])
def test_final_interval_termination_equals_the_full_decode_search(monkeypatch, path):
    """The search for the shortest message decides each try by the coder's final interval
    (coder.in_final_interval); it must settle on the very bytes that decoding every try
    from the front finds, over many lengths and carries (the termination is in the
    format). Every try the full search makes is also checked against the interval."""
    from recray.format.messages import coder, read_head

    layout = _tail_layout(path)
    bins, local, tails = _tail_messages(11, 150, 300, path)
    quick = encode_messages(bins, local, layout, tails)
    real = coder._shortest
    tries = []

    def slow_search(full, ideal, decodes, final=None):
        def decodes_and_compare(cand):
            ok = decodes(cand)
            tries.append(coder.in_final_interval(cand, full, final) == ok)
            return ok

        return real(full, ideal, decodes_and_compare)

    for mod in ("ordinals", "learned", "fixed"):
        monkeypatch.setattr(f"recray.format.messages.{mod}._shortest", slow_search)
    slow = encode_messages(bins, local, layout, tails)
    assert quick == slow
    assert len(tries) > 2 * len(quick) and all(tries)
    for i, m in enumerate(quick):
        head = read_head(m, layout)
        assert head.bins.tolist() == bins[i].tolist()
        assert tails[i][0].decodes_from(head.decoder)


@pytest.mark.parametrize("path", ["fixed", "learned", "ordinal"])
def test_a_wrong_interval_verdict_is_caught_by_the_final_decode(monkeypatch, path):
    """Negative control: an interval verdict that accepts every try would end messages
    too early; the full decode of the chosen bytes catches it and the search is redone
    with full decodes, so the messages stay those of the full search."""
    from recray.format.messages import coder

    layout = _tail_layout(path)
    bins, local, tails = _tail_messages(12, 40, 200, path)
    want = encode_messages(bins, local, layout, tails)
    overruled = []
    real = coder._shortest

    def spy(full, ideal, decodes, final=None):
        out = real(full, ideal, decodes, final)
        overruled.append(real(full, ideal, lambda c: True) != out)
        return out

    monkeypatch.setattr(coder, "in_final_interval", lambda *a: True)
    for mod in ("ordinals", "learned", "fixed"):
        monkeypatch.setattr(f"recray.format.messages.{mod}._shortest", spy)
    assert encode_messages(bins, local, layout, tails) == want
    assert len(overruled) == len(want) and all(overruled)


def test_a_misread_final_interval_falls_back_to_decoding():
    """When the sealed output is not inside the interval as read (a wrong reading of the
    coder's state), the verdict is None and the tries are decoded instead."""
    from recray.format.messages import coder

    full = bytes.fromhex("0123456789abcdef")
    assert coder.in_final_interval(full, full, (0, ((1 << 64) - 5, 3))) is None
    assert coder.in_final_interval(full[:4], full, (0, (0x0123456700000000, 1 << 40)))
    assert not coder.in_final_interval(full[:3], full, (0, (0x0123456700000000, 1 << 32)))


# ----------------------------------------------------------------------------- adaptive
ADAPTIVE = IndexLayout((6, 4), "universal", adaptive_dims=(3, 2))


def test_adaptive_golden_bytes_and_round_trip():
    from recray.format.messages import read_head

    extra = np.zeros((2, 3), int)
    extra[1, 0] = 9  # block 1, its first dimension: 9 extra partition bits (13-bit bins)
    msg = encode_message([5, 2**13 - 1], [1, 3], ADAPTIVE, extra=extra)
    assert msg.hex() == "ffb67bf8eb51"
    head = read_head(msg, ADAPTIVE)
    assert head.bins.tolist() == [5, 2**13 - 1] and head.local.tolist() == [1, 3]
    assert head.extra.tolist() == extra.tolist()
    # unflagged blocks cost ~0.0014 bit each: the common case is the version-1 message
    plain = encode_message([5, 7], [1, 3], ADAPTIVE)
    assert plain.hex() == "21b8"
    assert (
        ideal_bits([5, 7], [1, 3], ADAPTIVE) - ideal_bits([5, 7], [1, 3], IndexLayout((6, 4)))
        < 0.003
    )


def test_adaptive_random_round_trip_many_items():
    from recray.format.messages import decode_blocks

    rng = np.random.default_rng(9)
    layout = IndexLayout((10, 3, 0, 7), "universal", adaptive_dims=(4, 2, 3, 1))
    n = 60
    extra = np.zeros((n, 4, 4), np.int64)
    for i in range(0, n, 7):  # some items have adapted blocks
        b = int(rng.integers(0, 4))
        nd = layout.adaptive_dims[b]
        extra[i, b, :nd] = rng.integers(0, 6, size=nd)
    width = np.asarray(layout.bin_bits) + extra.sum(axis=2)
    bins = (rng.random((n, 4)) * (2.0**width)).astype(np.int64)
    local = rng.integers(1, 3000, size=(n, 4))
    msgs = encode_messages(bins, local, layout, extra=extra)
    got = decode_blocks(msgs, layout)
    assert np.array_equal(got[0], bins) and np.array_equal(got[1], local)
    assert np.array_equal(got[2], extra)
    with pytest.raises(InputError, match="use decode_blocks"):
        decode_messages(msgs, layout)


def test_adaptive_extra_is_checked():
    bad = np.zeros((2, 3), int)
    bad[0, 2] = 1  # block 0 has 3 dimensions: fine; block 1 has 2: index 2 must stay 0
    encode_message([0, 0], [1, 1], ADAPTIVE, extra=bad)
    bad = np.zeros((2, 3), int)
    bad[1, 2] = 1
    with pytest.raises(InputError, match=r"extra\[0, 1, 2\]"):
        encode_message([0, 0], [1, 1], ADAPTIVE, extra=bad)
    with pytest.raises(InputError, match="no adaptive_dims"):
        encode_message([0, 0], [1, 1], IndexLayout((6, 4)), extra=np.ones((2, 3), int))
    with pytest.raises(InputError, match="adaptive_dims"):
        IndexLayout((6, 4), adaptive_dims=(3,))
