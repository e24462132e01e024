"""The command line: ``main(argv)`` returns exit codes; the benchmarks write their records."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recray.backend import cupy_available
from recray.bench import throughput, toy
from recray.cli.main import main

REPO = str(Path(__file__).resolve().parents[1])


def test_version(capsys):
    assert main(["version"]) == 0
    assert "rng recipe 2" in capsys.readouterr().out


def test_bench_toy_quick_writes_records_and_plots(tmp_path, capsys):
    out = tmp_path / "toy.json"
    plots = tmp_path / "plots"
    assert main(["bench", "toy", "--quick", "--json", str(out), "--plots", str(plots)]) == 0
    data = json.loads(out.read_text())
    keys = {"family", "t", "d_kl", "d_inf", "method", "mean_steps", "mean_nbits", "runs"}
    assert data["records"] and all(keys <= set(r) for r in data["records"])
    fams = {r["family"] for r in data["records"]}
    assert fams == {"shifted", "narrow", "typical"}
    assert {p.name for p in plots.iterdir()} >= {"toy_steps.png", "toy_codelength.png"}
    s = data["summary"]
    # the headline claims hold even in the quick sweep
    assert s["typical_kl16_sp_pfr_mean_steps"] < 200
    assert s["largest_kl_ratio_sp_pfr_over_pfr"] > 3
    assert "summary:" in capsys.readouterr().out


def test_bench_toy_sp_pfr_beats_pfr_on_every_family():
    cfg = toy.ToyConfig(runs=16, pfr_step_cap=2.0**14, sp_step_cap=2.0**14, ablation_families=())
    for fam, t in (("shifted", 1.0), ("narrow", 0.25), ("typical", 8)):
        pfr = toy.run_exact(fam, t, cfg, "pfr")
        sp = toy.run_exact(fam, t, cfg, "sp-pfr")
        assert sp["mean_steps"] < pfr["mean_steps"], (fam, sp, pfr)


def test_throughput_small_run_agrees_numpy_and_kernel():
    r = throughput.run_throughput(n_kernel=64, n_numpy=16, n_decode=500, batch=32)
    assert r["identical_indices"] and r["identical_decode"]
    assert r["numpy_blocks_per_s"] > 0 and r["kernel_blocks_per_s"] > 0
    assert r["decode_blocks_per_s"] > 0
    assert "speed-up" in throughput.format_result(r)


@pytest.mark.skipif(cupy_available(), reason="CuPy works here")
def test_unusable_backend_is_exit_code_2(capsys):
    assert main(["bench", "toy", "--quick", "--backend", "cupy"]) == 2
    assert "backend 'cupy' is not usable" in capsys.readouterr().err


def test_jobs_entrypoint_forwards_to_bench(tmp_path):
    import runpy
    import sys

    argv = sys.argv
    sys.argv = ["jobs/bench.py", "--help"]
    try:
        with pytest.raises(SystemExit) as exc:
            runpy.run_path("jobs/bench.py", run_name="__main__")
    finally:
        sys.argv = argv
    assert exc.value.code == 0


def test_bench_bitrate_small(tmp_path):
    from recray.bench import bitrate

    recs = bitrate.run_bitrate(
        n=40,
        dim=8,
        workdir=str(tmp_path),
        methods=("sp-pfr", "orc"),
        block_bits=(8.0,),
        n_samples=256,
    )
    assert [r["method"] for r in recs] == ["sp-pfr", "orc"]
    for r in recs:
        assert r["items"] == 40 and r["bits_per_item"] > r["kl_bits_per_item"] > 0
    assert abs(recs[0]["z_std"] - 1) < 0.2  # exact method
    assert "| sp-pfr | 8 |" in bitrate.format_table(recs)


def test_bench_compress_small(tmp_path):
    from recray.bench import compress

    r = compress.run_compress_bench(
        n=50, dim=8, block_bits=8.0, workdir=str(tmp_path), extra=["--on-unbounded", "orc"]
    )
    assert r["items"] == 50 and r["items_per_s"] > 0 and r["peak_rss_mib"] > 10
    assert "items/s" in compress.format_result(r)


def test_bench_plan_star_is_the_compress_default():
    """The frontier's star (bench plan's DEFAULT) is the setting ``recray compress`` codes with
    by default; a setting one field off (negative control) is not."""
    import dataclasses
    import inspect

    from recray.bench import plan as bench_plan
    from recray.pipeline import driver

    params = inspect.signature(driver.compress).parameters

    def is_default(s) -> bool:
        return (
            s.partition == params["partition"].default
            and params["laws"].default in ("auto", "fit")
            and s.laws == "fit"
            and s.block_bits == params["block_bits"].default
            and s.budget_offset_bits == params["budget_offset_bits"].default
            and s.adapt_above_bits == params["adapt_above_bits"].default
            and s.collapsed_block_size == params["collapsed_block_size"].default
        )

    assert is_default(bench_plan.DEFAULT)
    assert [s.name for s in bench_plan.SETTINGS if is_default(s)] == [bench_plan.DEFAULT.name]
    assert not is_default(dataclasses.replace(bench_plan.DEFAULT, collapsed_block_size=8))


@pytest.mark.parametrize("given, expect", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_import_sets_a_passive_openmp_wait_policy_unless_one_is_given(given, expect):
    """Numba's OpenMP threads must not spin between kernel calls (recray/__init__.py); a
    policy the environment names is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, recray; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env | {"PYTHONPATH": REPO}, capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == expect
