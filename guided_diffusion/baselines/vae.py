"""The VAE baseline of the comparison (SPEC section 9): a constrained adversarial
auto-encoder (cAAE) after Chen & Konukoglu 2018, "Unsupervised detection of lesions in
brain MRI using constrained adversarial auto-encoders" (MIDL 2018, arXiv 1806.04972).

Idea: an auto-encoder trained on healthy slices only learns to reconstruct healthy
anatomy; a lesion is not reproduced, so the residual |x - x_rec| (summed over channels,
:func:`anomaly.anomaly_map`) marks it. The reconstruction x_rec = Dec(mu(x)) (the
posterior mean, no sampling) is the "healthy translation" of the shared output format.

Architecture (:class:`VAE`; a dense latent vector, not a spatial one):

- encoder: 3x3 conv (C -> w), then ``depth`` blocks [4x4 conv stride 2, GroupNorm,
  LeakyReLU(0.2)] with w * min(2^i, 8) channels, so (C, S, S) -> (w', S/2^depth,
  S/2^depth); flattened and mapped by a linear layer to the latent mean mu (R^d,
  d = ``latent_dim``) and, for the KL prior, to log sigma^2 as well;
- decoder: the mirror image: a linear layer back to (w', S/2^depth, S/2^depth), then
  ``depth`` blocks [nearest 2x upsampling, 3x3 conv, GroupNorm, LeakyReLU(0.2)] and a
  3x3 conv to C channels with a sigmoid, so x_rec is in [0, 1] like the inputs.

Defaults (w = 32, depth = 6, d = 128) give a 4 x 4 bottleneck at 256 x 256; the
channel widths, the dense latent and its size are our choices (the comparison in
Wolleb et al. 2022 does not state them).

Losses. ``latent_prior="adversarial"`` (the default) is the cAAE; ``"kl"`` is the plain
Gaussian VAE with the same constraint. With E the encoder mean, D the decoder,
x_rec = D(E(x)) and sums over all pixels (or latent units) of one image, averaged over
the batch:

- reconstruction: L_rec = sum (x - x_rec)^2 (the Gaussian log-likelihood up to
  constants);
- latent consistency, the "constraint" that makes the AAE a cAAE (Chen & Konukoglu 2018):
  L_cons = || E(x) - E(x_rec) ||_2^2, so an image and its reconstruction share a latent
  code, which pulls a lesioned image towards the code of its healthy counterpart;
- adversarial prior (Makhzani et al. 2016, "Adversarial autoencoders", Sec. 2): a
  latent discriminator D_z (an MLP) separates codes z ~ p(z) = N(0, I) from codes
  E(x). Its loss is L_Dz = -log D_z(z_prior) - log(1 - D_z(E(x))); the encoder's is the
  non-saturating L_adv = -log D_z(E(x)). As in the AAE, one training step has a
  reconstruction phase (encoder and decoder minimise L_rec + lambda_cons * L_cons)
  and a regularisation phase (a D_z step, then an encoder step on lambda_adv * L_adv),
  each with its own Adam optimiser, so the loss scales of the phases do not compete
  (the training recipe is :class:`guided_diffusion.pipeline.methods.vae.VAEPiece`);
- KL prior (Kingma & Welling 2014): the encoder also gives log sigma^2, z = mu + sigma
  * eps, x_rec = D(z) during training, and one step minimises L_rec + kl_weight * KL +
  lambda_cons * L_cons with KL = 1/2 sum (mu^2 + sigma^2 - log sigma^2 - 1) (the ELBO
  for kl_weight = 1).

Randomness (eps, prior samples) comes in as arguments, so a loss is a function of its inputs.
Shapes: images (B, C, S, S) in [0, 1].
"""
from __future__ import annotations

import torch as th
import torch.nn as nn
import torch.nn.functional as F

from ..util.errors import UserError

LATENT_PRIORS = ("adversarial", "kl")
"""The values of ``--latent_prior``: the cAAE's adversarial prior, or a Gaussian VAE's KL term."""
MAX_WIDTH_MULT = 8


def _groups(channels: int) -> int:
    """Largest of 8, 4, 2, 1 dividing ``channels`` (GroupNorm groups)."""
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


def _norm_act(channels: int) -> list[nn.Module]:
    return [nn.GroupNorm(_groups(channels), channels), nn.LeakyReLU(0.2)]


def check_depth(image_size: int, depth: int, flag: str) -> int:
    """Side of the bottleneck, S / 2^depth; a size the network cannot halve is an error."""
    if depth < 1:
        raise UserError(f"{flag} {depth}: expected at least 1 downsampling")
    if image_size < 1 or image_size % (2**depth):
        raise UserError(
            f"{flag} {depth}: --image_size {image_size} must be divisible by 2^{depth} = {2**depth}"
        )
    return image_size // 2**depth


class VAE(nn.Module):
    """Convolutional auto-encoder with a dense latent code (see the module docstring).

    :param in_channels: C (4 for BRATS, 1 for CheXpert).
    :param image_size: S; must be divisible by 2^depth.
    :param width: channels of the first layer (w).
    :param depth: number of stride-2 downsamplings (and upsamplings).
    :param latent_dim: size d of the latent vector.
    :param variational: True for the KL prior (the encoder also predicts log sigma^2).
    """

    def __init__(self, in_channels: int, image_size: int, width: int = 32, depth: int = 6,
                 latent_dim: int = 128, variational: bool = False):
        super().__init__()
        if width < 1:
            raise UserError(f"--vae_width {width}: expected a positive number of channels")
        if latent_dim < 1:
            raise UserError(f"--latent_dim {latent_dim}: expected a positive size")
        self.in_channels = in_channels
        self.image_size = image_size
        self.latent_dim = latent_dim
        self.variational = variational
        self.bottleneck = check_depth(image_size, depth, "--vae_depth")
        chans = [width * min(2**i, MAX_WIDTH_MULT) for i in range(depth + 1)]
        self.top_channels = chans[-1]
        flat = chans[-1] * self.bottleneck**2

        enc: list[nn.Module] = [nn.Conv2d(in_channels, chans[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            enc += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), *_norm_act(c_out)]
        self.encoder = nn.Sequential(*enc)
        self.to_latent = nn.Linear(flat, latent_dim * (2 if variational else 1))

        self.from_latent = nn.Linear(latent_dim, flat)
        dec: list[nn.Module] = []
        for c_in, c_out in zip(chans[:0:-1], chans[-2::-1]):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1),
                    *_norm_act(c_out)]
        dec += [nn.Conv2d(chans[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: th.Tensor) -> tuple[th.Tensor, th.Tensor | None]:
        """(B, C, S, S) -> mean (B, d) and log sigma^2 (B, d), or None without the KL prior."""
        h = self.encoder(x).flatten(1)  # (B, w' * s * s)
        out = self.to_latent(h)
        if self.variational:
            mu, logvar = out.chunk(2, dim=1)
            return mu, logvar.clamp(-30.0, 20.0)
        return out, None

    def decode(self, z: th.Tensor) -> th.Tensor:
        """(B, d) -> reconstruction (B, C, S, S) in [0, 1]."""
        h = self.from_latent(z).view(z.shape[0], self.top_channels, self.bottleneck, self.bottleneck)
        return th.sigmoid(self.decoder(h))

    def reconstruct(self, x: th.Tensor) -> th.Tensor:
        """Deterministic reconstruction Dec(mu(x)): the healthy translation, (B, C, S, S)."""
        return self.decode(self.encode(x)[0])

    def forward(self, x: th.Tensor) -> th.Tensor:
        return self.reconstruct(x)


class LatentDiscriminator(nn.Module):
    """D_z of the adversarial auto-encoder: an MLP from a code (B, d) to a logit (B,)."""

    def __init__(self, latent_dim: int, width: int = 256):
        super().__init__()
        if width < 1:
            raise UserError(f"--latent_disc_width {width}: expected a positive number of units")
        self.net = nn.Sequential(
            nn.Linear(latent_dim, width), nn.LeakyReLU(0.2),
            nn.Linear(width, width), nn.LeakyReLU(0.2),
            nn.Linear(width, 1),
        )

    def forward(self, z: th.Tensor) -> th.Tensor:
        return self.net(z).squeeze(1)


# ---------------------------------------------------------------------------------
# Loss terms (per image, then averaged over the batch)


def reconstruction_loss(x: th.Tensor, x_rec: th.Tensor) -> th.Tensor:
    """L_rec = sum over pixels and channels of (x - x_rec)^2, mean over the batch."""
    return (x - x_rec).pow(2).flatten(1).sum(1).mean()


def consistency_loss(model: VAE, mu: th.Tensor, x_rec: th.Tensor) -> th.Tensor:
    """cAAE constraint L_cons = ||E(x) - E(x_rec)||_2^2 (Chen & Konukoglu 2018), batch mean."""
    mu_rec = model.encode(x_rec)[0]
    return (mu - mu_rec).pow(2).sum(1).mean()


def kl_divergence(mu: th.Tensor, logvar: th.Tensor) -> th.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum (mu^2 + sigma^2 - log sigma^2 - 1), batch mean."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(1).mean()


def latent_discriminator_loss(disc: LatentDiscriminator, z_prior: th.Tensor, z_code: th.Tensor) -> th.Tensor:
    """L_Dz = -log D_z(z_prior) - log(1 - D_z(E(x))) (AAE, Makhzani et al. 2016)."""
    real, fake = disc(z_prior), disc(z_code)
    return (F.binary_cross_entropy_with_logits(real, th.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, th.zeros_like(fake)))


def encoder_adversarial_loss(disc: LatentDiscriminator, z_code: th.Tensor) -> th.Tensor:
    """Non-saturating encoder loss L_adv = -log D_z(E(x))."""
    logits = disc(z_code)
    return F.binary_cross_entropy_with_logits(logits, th.ones_like(logits))


def autoencoder_loss(model: VAE, x: th.Tensor, *, lambda_consistency: float) -> tuple[th.Tensor, dict]:
    """The cAAE's reconstruction phase: L_rec + lambda_cons * L_cons with x_rec = D(E(x))."""
    mu, _ = model.encode(x)
    x_rec = model.decode(mu)
    rec = reconstruction_loss(x, x_rec)
    cons = consistency_loss(model, mu, x_rec) if lambda_consistency else th.zeros((), device=x.device)
    loss = rec + lambda_consistency * cons
    return loss, {"loss": loss, "rec": rec, "cons": cons}


def kl_vae_loss(model: VAE, x: th.Tensor, eps: th.Tensor, *, kl_weight: float,
                lambda_consistency: float) -> tuple[th.Tensor, dict]:
    """The KL prior's one loss: L_rec + kl_weight * KL + lambda_cons * L_cons, with
    z = mu + sigma * ``eps`` (reparameterisation; eps (B, d) standard normal from the caller)."""
    mu, logvar = model.encode(x)
    z = mu + (0.5 * logvar).exp() * eps
    x_rec = model.decode(z)
    rec = reconstruction_loss(x, x_rec)
    kl = kl_divergence(mu, logvar)
    cons = consistency_loss(model, mu, x_rec) if lambda_consistency else th.zeros((), device=x.device)
    loss = rec + kl_weight * kl + lambda_consistency * cons
    return loss, {"loss": loss, "rec": rec, "kl": kl, "cons": cons}


def encoder_parameters(model: VAE) -> list[nn.Parameter]:
    """The encoder's parameters (what the adversarial regularisation phase trains)."""
    return list(model.encoder.parameters()) + list(model.to_latent.parameters())


def latent_prior_check(prior: str) -> bool:
    """True for the KL prior; an unknown name is an error naming ``--latent_prior``."""
    if prior not in LATENT_PRIORS:
        raise UserError(f"--latent_prior {prior!r}: expected one of {', '.join(LATENT_PRIORS)}")
    return prior == "kl"


__all__ = [
    "LATENT_PRIORS",
    "VAE",
    "LatentDiscriminator",
    "autoencoder_loss",
    "kl_vae_loss",
    "encoder_parameters",
    "reconstruction_loss",
    "consistency_loss",
    "kl_divergence",
    "latent_discriminator_loss",
    "encoder_adversarial_loss",
    "check_depth",
    "latent_prior_check",
]
