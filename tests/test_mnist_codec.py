"""``recray codec mnist``: exact round trips across processes and CPU code paths, old runs
(codec version 1), and the errors a user meets (corrupted message, other model) named by
image."""

import json
import os
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import rehash_part

pytest.importorskip("torch")

from recray.bench.decode_envs import ENVIRONMENTS, decode_in  # noqa: E402
from recray.codecs import mnist  # noqa: E402
from recray.data.mnist import load_mnist  # noqa: E402
from recray.errors import FormatError, InputError, MessageError  # noqa: E402
from recray.models import intdec  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 40
#: SP-PFR on 32-bit blocks under the fixed codes: a fast setting that needs no fitted laws.
SP_PFR_32 = dict(
    method="sp-pfr", block_bits=32, collapsed_block_size=8, budget_offset_bits=0, laws="fixed"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mnist") / "run")
    info = mnist.compress(out, limit=N, engine="local", **SP_PFR_32)
    assert info["images"] == N
    return out, info


def test_round_trip_is_exact_in_another_process(run, tmp_path):
    out, info = run
    dec = str(tmp_path / "dec")
    env = dict(os.environ, PYTHONPATH=REPO, OMP_WAIT_POLICY="PASSIVE")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "recray",
            "codec",
            "mnist",
            "decompress",
            out,
            "--out",
            dec,
            "--verify",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "identical to the source" in r.stdout
    with np.load(os.path.join(dec, "images.npz")) as z:
        ids, images = z["ids"], z["images"]
    src, _ = load_mnist("test", flat=False)
    assert ids.tolist() == list(range(N))
    assert images.dtype == np.uint8 and np.array_equal(images, src[:N])


def _messages(run_dir: str) -> list[bytes]:
    from recray.format.run import Run

    return [
        m for p in Run.open(run_dir).part_paths() for m in pq.read_table(p)["message"].to_pylist()
    ]


def test_messages_do_not_depend_on_how_the_pixel_stage_chunks(run, tmp_path, monkeypatch):
    """The network over 7 rows at a time and tables over 3 (boundaries inside and across
    both loops) write the bytes of the default chunking."""
    monkeypatch.setattr(mnist, "NETWORK_ROWS", 7)
    monkeypatch.setattr(mnist, "TABLE_CHUNK", 3)
    out = str(tmp_path / "chunked")
    mnist.compress(out, limit=N, engine="local", **SP_PFR_32)
    assert _messages(out) == _messages(run[0])


def test_table_chunks_computed_ahead_keep_order_and_errors():
    """Tables computed a chunk ahead on a worker thread arrive in row order, equal to the
    tables of their rows; an error in the worker reaches the caller with its message."""
    codec = mnist.MnistCodec()
    z = np.random.default_rng(4).standard_normal((7, 32))
    chunks = list(codec.table_chunks(z, 3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert np.array_equal(np.concatenate(chunks), mnist._tables(codec.decoder, z, 2))
    z[5, 0] = np.nan
    with pytest.raises(InputError, match="z row 5 is not finite"):
        list(codec.table_chunks(z, 3))


def test_bitrate_is_the_bytes_written_and_near_the_elbo(run):
    out, info = run
    payload = sum(
        len(m)
        for p in sorted(os.listdir(out))
        if p.endswith(".parquet")
        for m in pq.read_table(os.path.join(out, p), columns=["message"])["message"].to_pylist()
    )
    assert info["bits_per_image"] == pytest.approx(8 * payload / N)
    # one message per image: REC latent + pixels, within a few percent of KL + pixel ideal
    ideal = info["kl_bits_per_image"] + info["pixel_ideal_bits_per_image"]
    assert ideal < info["bits_per_image"] < 1.03 * ideal
    # the pixel part shares the latent message's coder: no second termination
    assert info["bits_per_image"] < info["latent_only_bits_per_image"] + (
        info["pixel_ideal_bits_per_image"] + 8
    )


def test_corrupted_message_names_the_image(run, tmp_path):
    d = str(tmp_path / "copy")
    shutil.copytree(run[0], d)
    part = "part-00000.parquet"
    t = pq.read_table(os.path.join(d, part))
    msgs = t.column("message").to_pylist()
    msgs[7] = msgs[7][:10] + bytes([msgs[7][10] ^ 0x10]) + msgs[7][11:]
    t = t.set_column(t.schema.get_field_index("message"), "message", pa.array(msgs, pa.binary()))
    pq.write_table(t, os.path.join(d, part))
    rehash_part(d, part)
    with pytest.raises(MessageError, match="image 7: its message fails its CRC"):
        mnist.decompress(d, str(tmp_path / "dec"))
    assert not os.path.exists(tmp_path / "dec")


def _replace_messages(run_dir, new):
    """Copy-edit: the messages of rows ``new`` (row -> bytes) with CRCs, lengths and the
    manifest made to agree, so that only the decoder's own checks can see the change."""
    part = "part-00000.parquet"
    t = pq.read_table(os.path.join(run_dir, part))
    msgs = t.column("message").to_pylist()
    for row, m in new.items():
        msgs[row] = m
    cols = {
        "message": pa.array(msgs, pa.binary()),
        "crc32": pa.array([zlib.crc32(m) for m in msgs], pa.uint32()),
        "nbits": pa.array([8 * len(m) for m in msgs], pa.int64()),
    }
    for name, col in cols.items():
        t = t.set_column(t.schema.get_field_index(name), name, col)
    pq.write_table(t, os.path.join(run_dir, part))
    rehash_part(run_dir, part)
    return msgs


def _with_extra_pixel(run_dir, row):
    """Image ``row``'s message coded again with one more pixel symbol after its 784 (level
    255 under the first pixel's table: improbable, so it needs more bytes)."""
    from recray.format.messages import Tail, encode_messages, read_head
    from recray.format.run import Run
    from recray.latents.io import Prior
    from recray.pipeline.codec import decode_indices
    from recray.pipeline.driver import spec_from_header

    r = Run.open(run_dir)
    spec = spec_from_header(r.header, Prior.from_dict(json.loads(r.prior_json), where="p"))
    msg = pq.read_table(r.part_paths()[0]).column("message")[row].as_py()
    h = read_head(msg, spec.layout)
    extra = h.extra[None] if spec.layout.adaptive else None
    z = decode_indices(np.array([row]), h.bins[None], h.local[None], spec, extra)
    probs = mnist._tables(mnist._int_decoder(None), z, mnist.CODEC_VERSION)
    image = load_mnist("test")[0][row : row + 1]
    tails = mnist._pixel_tails(image, probs, mnist.CODEC_VERSION)[0]
    one_more = Tail(np.array([255], np.int32), mnist.PIXEL_MODEL, probs[0, :1], 20.0)
    tails = [[*tails, one_more]]
    longer = encode_messages(h.bins[None], h.local[None], spec.layout, tails, extra)[0]
    assert len(longer) > len(msg)
    return longer


@pytest.mark.parametrize("what", ["byte 0x01", "zero byte", "pixel symbol"])
def test_message_with_more_after_its_pixels_is_refused_naming_the_image(run, tmp_path, what):
    """A message is the shortest byte string that decodes to its indices and 784 pixels;
    one with a byte (even a zero byte: the padding the decoder adds) or a symbol after them
    is refused, naming the image, though its CRC and the part's SHA-256 hold."""
    d = str(tmp_path / "copy")
    shutil.copytree(run[0], d)
    msgs = pq.read_table(os.path.join(d, "part-00000.parquet")).column("message").to_pylist()
    row = 5
    new = {
        "byte 0x01": msgs[row] + b"\x01",
        "zero byte": msgs[row] + b"\x00",
        "pixel symbol": _with_extra_pixel(d, row) if what == "pixel symbol" else None,
    }[what]
    _replace_messages(d, {row: new})
    with pytest.raises(MessageError, match=f"image {row}: the message does not end where its 784"):
        mnist.decompress(d, str(tmp_path / "dec"))
    assert not os.path.exists(tmp_path / "dec")


def test_negative_control_an_extra_byte_is_unseen_without_the_check(run, tmp_path, monkeypatch):
    """What the end check is for: without it, the message with a byte appended decodes to
    the very same image (verify passes), and the sound run passes the check."""
    d = str(tmp_path / "copy")
    shutil.copytree(run[0], d)
    msgs = pq.read_table(os.path.join(d, "part-00000.parquet")).column("message").to_pylist()
    _replace_messages(d, {5: msgs[5] + b"\x01"})
    monkeypatch.setattr(mnist, "_check_end", lambda *a: None)
    assert mnist.decompress(d, str(tmp_path / "dec"), verify=True)["verified"]
    monkeypatch.undo()
    assert mnist.decompress(run[0], str(tmp_path / "dec2"), verify=True)["verified"]


def test_other_model_is_refused(run, tmp_path):
    """A run records its integer decoder's SHA-256; another decoder (here: one weight
    moved by one unit, with a valid card of its own) is refused before any work."""
    w = tmp_path / "mnist_vae.npz"  # --weights names the float file; the decoder sits next
    with np.load(intdec.DEFAULT_INT_DECODER) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["w1"].flat[0] += 1
    intdec.save_int_decoder(arrays, intdec.int_decoder_path(w))
    with pytest.raises(FormatError, match="coded with the integer decoder of SHA-256"):
        mnist.decompress(run[0], str(tmp_path / "dec"), weights=str(w))
    assert not os.path.exists(tmp_path / "dec")


def test_demo_prints_the_table_rows_it_measured(tmp_path, capsys):
    from recray.cli.main import main

    code = main(
        [
            "codec",
            "mnist",
            "demo",
            "--limit",
            "6",
            "--engine",
            "local",
            "--workdir",
            str(tmp_path),
            "--json",
            str(tmp_path / "t.json"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    for row in (
        "-ELBO",
        "ORC 16-bit blocks, N=2^16, collapsed spread",
        "SP-ORC 48-bit blocks, N=2^10, collapsed spread, B-4, learned laws",
        "ORC 16-bit blocks, N=2^ceil(I_b) per block, collapsed spread",
        "png",
        "webp",
    ):
        assert row in out
    rows = json.load(open(tmp_path / "t.json"))["rows"]
    assert rows[1]["verified_round_trip"] is True
    assert rows[2]["laws"] == "learned" and rows[2]["laws_fit_seconds"] == 0.0  # shipped
    assert rows[3]["setting"]["n_samples"] == "kl"


def test_learned_laws_run_decodes_and_old_plan_runs_keep_version_1(tmp_path):
    """The default setting (learned laws: plan version 2, message codec 3) round-trips; a
    run without laws writes a version 1 plan, as before."""
    from recray.bench.mnist import BEST_SP

    out = str(tmp_path / "learned")
    info = mnist.compress(
        out,
        limit=4,
        method=BEST_SP.method,
        block_bits=BEST_SP.block_bits,
        n_samples=BEST_SP.n_samples,
        collapsed_block_size=BEST_SP.collapsed_block_size,
        budget_offset_bits=BEST_SP.budget_offset_bits,
        laws="learned",
        engine="local",
    )
    assert info["laws"] == "learned"
    header = json.load(open(os.path.join(out, "plan.json")))
    assert header["plan"]["version"] == 2 and header["plan"]["index_laws"]["method"] == "sp-orc"
    assert header["message_codec_version"] == 5
    dec = mnist.decompress(out, str(tmp_path / "dec"), verify=True)
    assert dec["verified"]


def test_fair_orc_with_per_block_budget_round_trips(tmp_path):
    """ORC-16's blocks with N_b = 2^ceil(I_b) (``--n-samples kl``): each block's index is
    ceil(I_b) raw bits inside the image's message; decoding rebuilds the images."""
    from recray.bench.mnist import FAIR_ORC_KL
    from recray.format.messages import read_head
    from recray.latents.io import Prior
    from recray.pipeline.driver import spec_from_header
    from recray.plan import kl_sample_bits

    out = str(tmp_path / "orc-kl")
    s = FAIR_ORC_KL
    info = mnist.compress(
        out, limit=3, method=s.method, block_bits=s.block_bits, n_samples=s.n_samples,
        collapsed_block_size=s.collapsed_block_size, engine="local",
    )  # fmt: skip
    header = json.load(open(os.path.join(out, "plan.json")))
    prior = Prior.from_dict(json.load(open(os.path.join(out, "prior.json"))))
    spec = spec_from_header(header, prior)
    e = kl_sample_bits(spec.plan)
    assert header["n_samples"] == "kl" and e == (15, 15, 14)  # I_b = 14.16, 14.03, 13.93
    assert spec.layout.block_raw_bits == e and header["message_codec_version"] == 5
    assert info["latent_only_bits_per_image"] <= 48  # 44 bits, rounded up to whole bytes
    msgs = pq.read_table(os.path.join(out, "part-00000.parquet")).column("message").to_pylist()
    local = np.stack([read_head(m, spec.layout).local for m in msgs])
    assert (local <= np.array([1 << v for v in e])).all()
    dec = mnist.decompress(out, str(tmp_path / "dec"), verify=True)
    assert dec["verified"]


def test_integer_tables_need_no_torch_version(run, tmp_path, monkeypatch):
    import torch

    assert "torch_version" not in json.load(open(os.path.join(run[0], "plan.json")))["codec"]
    monkeypatch.setattr(torch, "__version__", "9.9.9+cpu")
    assert mnist.decompress(run[0], str(tmp_path / "dec"), verify=True)["verified"]


def test_codec_version_1_runs_still_decode_on_their_torch_build(tmp_path, monkeypatch):
    """Runs of the float-table format (codec version 1) decode with the old path, and are
    refused, naming the version and the torch build, under another torch."""
    import torch

    out = str(tmp_path / "v1")
    mnist.compress(out, limit=3, engine="local", codec_version=1)
    codec = json.load(open(os.path.join(out, "plan.json")))["codec"]
    assert codec["version"] == 1 and codec["torch_version"] == torch.__version__
    assert mnist.decompress(out, str(tmp_path / "dec"), verify=True)["verified"]
    monkeypatch.setattr(torch, "__version__", "9.9.9+cpu")
    with pytest.raises(FormatError, match=r"codec version 1 run .* install torch=="):
        mnist.decompress(out, str(tmp_path / "dec2"))


def test_unknown_codec_version_is_refused():
    class Stub:
        path = "runs/x"
        header = {"codec": {"name": mnist.CODEC_NAME, "version": 7}}

    with pytest.raises(FormatError, match="codec version 7; this recray decodes versions 1"):
        mnist._codec_of(Stub())


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mnist-small") / "run")
    mnist.compress(out, limit=4, engine="local", **SP_PFR_32)
    return out


OTHER_ENVS = ENVIRONMENTS[1:]  # the first, the same environment: the round-trip test


@pytest.mark.parametrize(
    "name,env", OTHER_ENVS, ids=[f"env{i + 1}" for i in range(len(OTHER_ENVS))]
)
def test_decodes_identically_under_other_cpu_code_paths(small_run, tmp_path, name, env):
    """Issue 14: the float tables failed under ATEN_CPU_CAPABILITY=default and MKL_CBWR;
    the integer tables decode every image identically whatever kernels torch, MKL,
    oneDNN, OpenBLAS and NumPy take and however many threads run."""
    r = decode_in(small_run, str(tmp_path / "dec"), env, pythonpath=REPO, timeout=300)
    assert r["result"] == "ok", f"{name}: {r['result']}"


def test_decodes_where_torch_is_not_installed(small_run, tmp_path):
    """Decoding a version 2 run needs NumPy and constriction, not torch: here any
    ``import torch`` fails."""
    fake = tmp_path / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch is not installed here')\n")
    r = decode_in(small_run, str(tmp_path / "dec"), {}, pythonpath=f"{fake.parent}:{REPO}")
    assert r["result"] == "ok", r["result"]


def test_encodes_where_torch_is_not_installed(tmp_path):
    """Compressing needs only the NumPy encoder (recray.models.vae_encoder): here any
    ``import torch`` fails, and the run is coded, written and decoded back."""
    fake = tmp_path / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch is not installed here')\n")
    env = dict(os.environ, PYTHONPATH=f"{fake.parent}:{REPO}", OMP_WAIT_POLICY="PASSIVE")
    out, dec = str(tmp_path / "run"), str(tmp_path / "dec")
    flags = ["--method", "sp-pfr", "--block-bits", "32", "--collapsed-block-size", "8"]
    flags += ["--budget-offset-bits", "0", "--laws", "fixed", "--engine", "local"]
    cli = [sys.executable, "-m", "recray", "codec", "mnist"]
    for args in (
        ["compress", "--limit", "4", "--out", out, *flags],
        ["decompress", out, "--out", dec, "--verify"],
    ):
        r = subprocess.run(cli + args, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "identical to the source" in r.stdout


def test_numpy_posteriors_are_the_torch_encoders():
    """The NumPy encoder is the trained network: within a few float64 ulps of the torch
    encoder evaluated in float64 on the same images (a wrong layer order, transpose or
    activation would be off by far more)."""
    import torch

    from recray.models.vae import load_mnist_vae
    from recray.models.vae_encoder import load_encoder, posteriors

    x, _ = load_mnist("test")
    x = x[:200].reshape(200, -1)
    mu, sigma = posteriors(load_encoder(), x)
    model = load_mnist_vae()
    enc = model.encoder.to(torch.float64)
    with torch.inference_mode():
        h = enc(torch.from_numpy(x.astype(np.float64) * (2.0 / 255.0) - 1.0)).numpy()
    d = model.config.latent_dim
    np.testing.assert_allclose(mu, h[:, :d], rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma, model.config.sigma_max / (1 + np.exp(-h[:, d:])), atol=1e-13)
    assert np.abs(mu).max() > 0.5 and sigma.min() > 0  # a real signal, not zeros
