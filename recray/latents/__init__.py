"""Latent data sets: the input contract of ``recray compress`` (a Parquet data set of
posteriors and a prior JSON file), their validation, and synthetic data sets."""

from recray.latents.io import LatentSource, Prior, read_prior
from recray.latents.synth import synthesize

__all__ = ["LatentSource", "Prior", "read_prior", "synthesize"]
