"""The latents the encoder chose for the images of an old MNIST codec run, and the
images: what a decoder must give back (run with the old library on PYTHONPATH)."""

import json
import sys

import numpy as np
import pyarrow.parquet as pq

from recray.data.mnist import load_mnist
from recray.format.messages import decode_message_head
from recray.format.run import Run
from recray.latents.io import Prior
from recray.pipeline.codec import decode_indices
from recray.pipeline.driver import spec_from_header

run_dir, out = sys.argv[1], sys.argv[2]
run = Run.open(run_dir)
spec = spec_from_header(run.header, Prior.from_dict(json.loads(run.prior_json), where="p"))
t = pq.read_table(run.part_paths()[0])
ids = t.column("id").to_numpy()
heads = [decode_message_head(m, spec.layout) for m in t.column("message").to_pylist()]
bins = np.stack([h[0] for h in heads])
local = np.stack([h[1] for h in heads])
z = decode_indices(ids, bins, local, spec)
images = np.asarray(load_mnist(run.header["codec"]["split"])[0])[ids].reshape(-1, 28, 28)
np.savez(out, ids=ids, z=z, images=images)
print(ids, z.shape, z[:, :3])
