"""The baselines' networks and losses (VAE/cAAE, FixedPoint-GAN, the denoising autoencoder); their methods are
:mod:`guided_diffusion.pipeline.methods`."""
