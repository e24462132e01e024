"""Single-process drivers of ``recray compress / decompress / inspect``.

Batches of items stream from the latent data set through :mod:`recray.pipeline.codec` into
Parquet parts; memory is bounded by the batch size (plus 8 bytes per item for the
duplicate-id check).
"""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recray import __version__, rec
from recray.errors import FormatError, InputError
from recray.format.messages import MESSAGE_CODEC_VERSION
from recray.format.run import (
    MANIFEST_FILE,
    PLAN_FILE,
    PRIOR_FILE,
    RUN_FORMAT,
    RUN_FORMAT_VERSION,
    Run,
    RunWriter,
    check_crcs,
    crc32_of,
    part_schema,
)
from recray.latents.io import LatentSource, Prior, read_prior
from recray.pipeline.codec import CodecSpec, decode_items, encode_items, item_keys

__all__ = ["Run", "compress", "decompress", "inspect", "format_inspect"]
from recray.plan import CodecPlan, build_plan
from recray.rec.philox import RNG_VERSION


def run_header(spec: CodecSpec, prior: Prior, id_kind: str) -> dict:
    return {
        "format": RUN_FORMAT,
        "version": RUN_FORMAT_VERSION,
        "recray_version": __version__,
        "rng_version": RNG_VERSION,
        "message_codec_version": MESSAGE_CODEC_VERSION,
        "method": spec.method,
        "seed": spec.seed,
        "n_samples": spec.n_samples,
        "max_steps": spec.max_steps,
        "on_unbounded": spec.on_unbounded,
        "id_type": id_kind,
        "dim": spec.plan.dim,
        "prior_sha256": prior.checksum(),
        "plan": spec.plan.to_dict(),
        "plan_checksum": spec.plan.checksum(),
    }


def spec_from_header(header: dict, prior: Prior, backend=None) -> CodecSpec:
    for key in ("rng_version", "message_codec_version"):
        want = RNG_VERSION if key == "rng_version" else MESSAGE_CODEC_VERSION
        if header.get(key) != want:
            raise FormatError(
                f"run header: {key} = {header.get(key)!r}; this recray decodes {key} {want}"
            )
    plan = CodecPlan.from_dict(header["plan"])
    if plan.checksum() != header.get("plan_checksum"):
        raise FormatError("run header: the plan does not match its plan_checksum")
    if prior.checksum() != header.get("prior_sha256"):
        raise FormatError(
            "the prior does not match the run's prior checksum: this run was "
            "coded under another prior"
        )
    return CodecSpec(
        plan=plan,
        method=header["method"],
        seed=int(header["seed"]),
        prior_mu=prior.mu,
        prior_sigma=prior.sigma,
        n_samples=int(header["n_samples"]),
        max_steps=int(header["max_steps"]),
        on_unbounded=header["on_unbounded"],
        backend=backend,
    )


class _IdTracker:
    """Collects 64-bit item keys to find duplicate ids at the end of a run."""

    def __init__(self, id_kind: str):
        self.id_kind = id_kind
        self.keys: list[np.ndarray] = []

    def add(self, ids) -> None:
        self.keys.append(item_keys(ids))

    def check(self, run_tmp: str) -> None:
        if not self.keys:
            return
        keys = np.concatenate(self.keys)
        srt = np.sort(keys)
        dup = srt[1:][srt[1:] == srt[:-1]]
        if dup.size == 0:
            return
        if self.id_kind == "int":
            raise InputError(
                f"duplicate item id {int(dup[0].view(np.int64))!r} "
                f"({dup.size} duplicates in all); ids must be unique"
            )
        # string ids: confirm on the written parts (a 64-bit hash can collide)
        wanted = set(int(k) for k in dup)
        seen: dict[int, str] = {}
        for name in sorted(os.listdir(run_tmp)):
            if not name.endswith(".parquet"):
                continue
            for s in (
                pq.read_table(os.path.join(run_tmp, name), columns=["id"]).column("id").to_pylist()
            ):
                k = int(item_keys([s])[0])
                if k in wanted:
                    if k in seen and seen[k] == s:
                        raise InputError(f"duplicate item id {s!r}; ids must be unique")
                    seen[k] = s


def compress(
    latents: str,
    prior_path: str,
    out_dir: str,
    *,
    method: str = "sp-pfr",
    block_bits: float = 16.0,
    n_samples: int = 1 << 16,
    allocation: str = "mi",
    seed: int = 0,
    backend=None,
    max_steps: int | None = None,
    on_unbounded: str = "error",
    batch_size: int = 4096,
    rows_per_part: int = 1 << 18,
    debug_samples: bool = False,
    progress=None,
) -> dict:
    """Compress a latent data set into the run directory ``out_dir`` (see
    :mod:`recray.format.run`); returns the run summary. Publishes nothing on error."""
    prior = read_prior(prior_path)
    plan = build_plan(prior.mi_bits, block_bits, strategy=allocation, seed=seed)
    spec = CodecSpec(
        plan=plan,
        method=method,
        seed=seed,
        prior_mu=prior.mu,
        prior_sigma=prior.sigma,
        n_samples=n_samples,
        max_steps=rec.DEFAULT_MAX_STEPS if max_steps is None else max_steps,
        on_unbounded=on_unbounded,
        backend=backend,
    )
    _ = spec.layout  # validates n_samples for orc before any work
    src = LatentSource(latents, prior.dim)
    schema = part_schema(src.id_kind, prior.dim, debug_samples)
    bar = progress(total=src.count_rows(), unit="item", desc="compress") if progress else None
    totals = {"items": 0, "kl_bits": 0.0, "steps": 0, "fallback_blocks": 0}
    tracker = _IdTracker(src.id_kind)
    with RunWriter(
        out_dir, run_header(spec, prior, src.id_kind), prior.to_json(), schema, rows_per_part
    ) as writer:
        for ids, mu, sigma in src.batches(batch_size):
            tracker.add(ids)
            enc = encode_items(ids, mu, sigma, spec)
            cols = {
                "id": pa.array(ids, type=schema.field("id").type),
                "message": pa.array(enc.messages, type=pa.binary()),
                "nbits": pa.array(
                    8 * np.fromiter(map(len, enc.messages), np.int64, len(enc.messages))
                ),
                "crc32": pa.array(crc32_of(enc.messages)),
                "kl_bits": pa.array(enc.kl_bits),
                "steps": pa.array(enc.steps),
                "fallback_blocks": pa.array(enc.fallback_blocks),
            }
            if debug_samples:
                cols["z_debug"] = pa.FixedSizeListArray.from_arrays(
                    pa.array(enc.samples.reshape(-1)), prior.dim
                )
            writer.write(pa.table(cols, schema=schema))
            totals["items"] += len(ids)
            totals["kl_bits"] += float(enc.kl_bits.sum())
            totals["steps"] += int(enc.steps.sum())
            totals["fallback_blocks"] += int(enc.fallback_blocks.sum())
            if bar:
                bar.update(len(ids))
        if bar:
            bar.close()
        tracker.check(writer.tmp)
        if totals["items"] == 0:
            raise InputError(f"latents {latents!r} hold no items")
        totals["payload_bytes"] = writer.payload_bytes
        writer.publish(totals)
    # report from the totals just written (inspect() would read every part again)
    return _report(
        out_dir,
        Run.open(out_dir, verify_parts=False),
        totals["payload_bytes"],
        totals["kl_bits"],
        totals["steps"],
        totals["fallback_blocks"],
    )


def decompress(
    run_dir: str,
    out_path: str,
    *,
    backend=None,
    prior_path: str | None = None,
    batch_size: int = 65536,
    progress=None,
) -> dict:
    """Decode every item of a complete run into ``out_path`` (Parquet: ``id``, ``z``)."""
    run = Run.open(run_dir)
    prior = Prior.from_dict(json.loads(run.prior_json), where="run prior")
    if prior_path is not None and read_prior(prior_path).checksum() != prior.checksum():
        raise FormatError(f"prior {prior_path!r} is not the prior this run was coded with")
    spec = spec_from_header(run.header, prior, backend)
    id_type = pa.int64() if run.header["id_type"] == "int" else pa.string()
    schema = pa.schema([("id", id_type), ("z", pa.list_(pa.float64(), spec.plan.dim))])
    if os.path.exists(out_path):
        raise InputError(f"output {out_path!r} already exists; remove it or choose another")
    tmp = os.path.join(
        os.path.dirname(os.path.abspath(out_path)),
        f".{os.path.basename(out_path)}.partial-{uuid.uuid4().hex[:12]}",
    )
    n = 0
    bar = (
        progress(total=run.manifest["items"], unit="item", desc="decompress") if progress else None
    )
    try:
        with pq.ParquetWriter(tmp, schema) as w:
            for rb in run.iter_rows(columns=["id", "message", "crc32"], batch_size=batch_size):
                ids = rb.column("id").to_pylist()
                msgs = rb.column("message").to_pylist()
                check_crcs(ids, msgs, rb.column("crc32").to_numpy())
                z = decode_items(
                    np.asarray(ids, dtype=np.int64) if run.header["id_type"] == "int" else ids,
                    msgs,
                    spec,
                )
                w.write_table(
                    pa.table(
                        {
                            "id": pa.array(ids, type=id_type),
                            "z": pa.FixedSizeListArray.from_arrays(
                                pa.array(z.reshape(-1)), spec.plan.dim
                            ),
                        },
                        schema=schema,
                    )
                )
                n += len(ids)
                if bar:
                    bar.update(len(ids))
        if n != run.manifest["items"]:
            raise FormatError(
                f"{run_dir!r}: the parts hold {n} items but the manifest says "
                f"{run.manifest['items']}"
            )
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        if bar:
            bar.close()
    return {"items": n, "out": out_path}


def inspect(run_dir: str) -> dict:
    """Bitrate and diagnostics of a complete run, from the bytes on disk."""
    run = Run.open(run_dir, verify_parts=False)
    payload = 0
    kl = steps = fallback = 0.0
    for rb in run.iter_rows(columns=["message", "kl_bits", "steps", "fallback_blocks"]):
        payload += int(pc.sum(pc.binary_length(rb.column("message"))).as_py() or 0)
        kl += float(np.sum(rb.column("kl_bits").to_numpy()))
        steps += float(np.sum(rb.column("steps").to_numpy()))
        fallback += float(np.sum(rb.column("fallback_blocks").to_numpy()))
    return _report(run_dir, run, payload, kl, steps, fallback)


def _report(run_dir: str, run: Run, payload: int, kl: float, steps: float, fallback: float) -> dict:
    """The figures :func:`inspect` prints, from a run's totals."""
    man = run.manifest
    items = int(man["items"])
    header_bytes = sum(
        os.path.getsize(os.path.join(run_dir, f)) for f in (PLAN_FILE, PRIOR_FILE, MANIFEST_FILE)
    )
    part_bytes = sum(p["bytes"] for p in man["parts"])
    dim = int(run.header["dim"])
    plan = run.header["plan"]
    bits_item = 8.0 * payload / items
    mean_kl = kl / items
    return {
        "run": run_dir,
        "method": run.header["method"],
        "block_bits": plan["block_bits"],
        "n_blocks": len(plan["blocks"]),
        "dim": dim,
        "items": items,
        "payload_bytes": payload,
        "header_bytes": header_bytes,
        "parquet_bytes": part_bytes,
        "bits_per_item": bits_item,
        "bits_per_item_with_headers": 8.0 * (payload + header_bytes) / items,
        "bits_per_dim": bits_item / dim,
        "mean_kl_bits_per_item": mean_kl,
        "overhead_over_kl_pct": 100.0 * (bits_item - mean_kl) / mean_kl
        if mean_kl > 0
        else float("nan"),
        "mean_steps_per_item": steps / items,
        "fallback_blocks": int(fallback),
    }


def format_inspect(r: dict) -> str:
    return "\n".join(
        [
            f"run {r['run']}: method {r['method']}, {r['n_blocks']} blocks of ~{r['block_bits']:g} "
            f"bits over D = {r['dim']}",
            f"  items                 {r['items']:,}",
            f"  payload written       {r['payload_bytes']:,} bytes (messages only)",
            f"  headers               {r['header_bytes']:,} bytes (plan, prior, manifest)",
            f"  Parquet files         {r['parquet_bytes']:,} bytes on disk (ids, CRCs, "
            "diagnostics included)",
            f"  bits/item             {r['bits_per_item']:.2f} (payload); "
            f"{r['bits_per_item_with_headers']:.2f} with headers amortized",
            f"  bits/dim              {r['bits_per_dim']:.3f}",
            f"  mean KL/item          {r['mean_kl_bits_per_item']:.2f} bits",
            f"  overhead over KL      {r['overhead_over_kl_pct']:.1f} %",
            f"  mean steps/item       {r['mean_steps_per_item']:.1f}",
            f"  fallback blocks       {r['fallback_blocks']:,}",
        ]
    )
