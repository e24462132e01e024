"""A run with learned index laws (message codec version 3, plan version 2), written with
the library of the commit on PYTHONPATH: laws estimated on 192 training items coded with the
same plan and method, then the 8 test items coded under them."""

import sys

import numpy as np
import pyarrow.parquet as pq

from recray.format.messages import decode_blocks
from recray.latents import synthesize
from recray.latents.io import read_prior
from recray.pipeline import driver
from recray.pipeline.codec import CodecSpec, encode_items
from recray.plan import build_plan
from recray.plan.laws import estimate_laws

work, out = sys.argv[1], sys.argv[2]
lat, pri = synthesize(200, 16, work, seed=3)
prior = read_prior(pri)
t = pq.read_table(lat)
pq.write_table(t.slice(0, 8), f"{work}/test.parquet")
mu = np.stack(t.column("mu").to_numpy(zero_copy_only=False))
sigma = np.stack(t.column("sigma").to_numpy(zero_copy_only=False))
ids = t.column("id").to_numpy()
plan = build_plan(prior.mi_bits, 8.0, budget_offset_bits=-1)
spec = CodecSpec(
    plan=plan, method="sp-orc", seed=0, prior_mu=prior.mu, prior_sigma=prior.sigma, n_samples=1024
)
enc = encode_items(ids[8:], mu[8:], sigma[8:], spec)
bins, local, _ = decode_blocks(enc.messages, spec.layout)
laws = estimate_laws(
    bins,
    local,
    [[plan.bits[d] for d in b] for b in plan.blocks],
    method="sp-orc",
    source="synth seed 3, items 8..199",
)
info = driver.compress(
    f"{work}/test.parquet",
    pri,
    out,
    method="sp-orc",
    n_samples=1024,
    index_laws=laws,
    engine="local",
    debug_samples=True,
    block_bits=8.0,
    budget_offset_bits=-1,
)
print(info["bits_per_item"], info["mean_kl_bits_per_item"])
