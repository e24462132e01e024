"""Models whose latents recray codes (the MNIST VAE; later INRs). They only feed
posteriors to REC and probabilities to the entropy coder: no coding lives inside a network."""
