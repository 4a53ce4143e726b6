"""Comparison methods: the networks and losses of the baselines (VAE/cAAE, FixedPoint-GAN, ...)."""
