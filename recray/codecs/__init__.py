"""Entropy coding of a codec's data under a model's exact probabilities (constriction)."""
