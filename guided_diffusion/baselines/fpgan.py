"""The FixedPoint-GAN baseline of the comparison (SPEC section 9): Siddiquee et al. 2019,
"Learning Fixed Points in Generative Adversarial Networks: From Image-to-Image
Translation to Disease Detection and Localization" (ICCV 2019), built on StarGAN
(Choi et al. 2018) with the WGAN-GP objective (Gulrajani et al. 2017).

Domains: c in {0 = healthy, 1 = diseased}, given to the networks as one-hot vectors.

Generator G(x, c) (StarGAN's, Choi et al. 2018, appendix): the one-hot c is repeated
over the image and concatenated to x as C + 2 input channels; 7x7 conv (w); two 4x4
stride-2 convs (2w, 4w); ``res_blocks`` residual blocks [3x3 conv, IN, ReLU, 3x3 conv,
IN] at 4w; two 4x4 stride-2 transposed convs (2w, w); 7x7 conv to C channels and tanh.
Every conv but the last is followed by InstanceNorm (affine, no running statistics,
so training and evaluation compute the same thing) and ReLU. Our choice for images in
[0, 1]: the tanh output is an additive residual delta in [-1, 1] and

    G(x, c) = clamp(x + delta(x, c), 0, 1),

so an untrained generator starts near the identity (the fixed point FP-GAN asks for
within a domain), and the difference map |x - G(x, healthy)| is the residual itself
where the clamp is inactive.

Discriminator D (PatchGAN, StarGAN's): ``depth`` 4x4 stride-2 convs with LeakyReLU(0.01)
and widths w_d, 2w_d, 4w_d, ...; two heads on the last feature map (side
k = S / 2^depth): D_src, a 3x3 conv to one channel (a k x k patch of real/fake critic
values), and D_cls, a k x k conv to 2 logits (the domain classifier).

Losses (Siddiquee et al. 2019, method section, with the WGAN-GP form of the adversarial
term that StarGAN and FP-GAN train with). For a real image x of domain c_x and a target
domain c drawn uniformly from {healthy, diseased} per image (so the expectations over
c in {c_x, c_y} of the paper are sampled: same-domain and cross-domain translations
each half of the time):

- adversarial (critic): L_adv = E[D_src(x)] - E[D_src(G(x, c))]
  - lambda_gp E[(||grad_x^ D_src(x^)||_2 - 1)^2], x^ = a x + (1 - a) G(x, c),
  a ~ U(0, 1) per image (Gulrajani et al. 2017, Eq. 3); D maximises it, G minimises it;
- domain classification: L_cls^r = E[-log D_cls(c_x | x)] (for D),
  L_cls^f = E[-log D_cls(c | G(x, c))] (for G);
- cycle consistency: L_cyc = E[||G(G(x, c), c_x) - x||_1];
- conditional identity: L_id = E[||G(x, c) - x||_1] when c = c_x, 0 when c != c_x
  (the fixed-point loss: a same-domain translation must change nothing);
- totals: L_D = -L_adv + lambda_cls L_cls^r (the GP inside -L_adv adds
  +lambda_gp * GP) and L_G = L_adv + lambda_cls L_cls^f + lambda_rec L_cyc + lambda_id L_id
  (G only sees the terms that depend on it), with the paper's weights lambda_cls = 1,
  lambda_gp = lambda_rec = lambda_id = 10.

L1 norms are means over pixels and channels (as StarGAN). D is updated every step and
G every ``n_critic`` steps (5, as StarGAN); both with Adam (beta1 = 0.5, beta2 = 0.999). The
training recipe is :class:`guided_diffusion.pipeline.methods.fpgan.FPGANPiece`.

Translation to healthy (disease localisation as in Siddiquee et al. 2019):
x_healthy = G(x, c = healthy), and the anomaly map is |x - x_healthy| summed over
channels (:func:`anomaly.anomaly_map`).

Randomness (targets, interpolation weights) comes in as arguments.
Shapes: images (B, C, S, S) in [0, 1].
"""
from __future__ import annotations

import torch as th
import torch.nn as nn
import torch.nn.functional as F

from ..script_util import HEALTHY
from ..util.errors import UserError

NUM_DOMAINS = 2  # 0 = healthy, 1 = diseased (script_util.NUM_CLASSES)


def one_hot_domains(c: th.Tensor, num_domains: int = NUM_DOMAINS) -> th.Tensor:
    """(B,) domain indices -> (B, num_domains) float one-hot."""
    return F.one_hot(c.long(), num_domains).float()


def _instance_norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), _instance_norm(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), _instance_norm(channels),
        )

    def forward(self, x):
        return x + self.body(x)


class Generator(nn.Module):
    """G(x, c) of StarGAN with an additive, clamped output (see the module docstring).

    :param in_channels: C (4 for BRATS, 1 for CheXpert).
    :param width: channels of the first layer (w, 64 in StarGAN).
    :param res_blocks: residual blocks at the bottleneck (6 in StarGAN).
    """

    def __init__(self, in_channels: int, width: int = 64, res_blocks: int = 6,
                 num_domains: int = NUM_DOMAINS):
        super().__init__()
        if width < 1:
            raise UserError(f"--fpgan_width {width}: expected a positive number of channels")
        if res_blocks < 0:
            raise UserError(f"--fpgan_res_blocks {res_blocks}: expected 0 or more")
        self.num_domains = num_domains
        w = width
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels + num_domains, w, 7, padding=3, bias=False), _instance_norm(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1, bias=False), _instance_norm(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1, bias=False), _instance_norm(4 * w), nn.ReLU(),
        ]
        layers += [_ResidualBlock(4 * w) for _ in range(res_blocks)]
        layers += [
            nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1, bias=False), _instance_norm(2 * w), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1, bias=False), _instance_norm(w), nn.ReLU(),
            nn.Conv2d(w, in_channels, 7, padding=3, bias=False), nn.Tanh(),
        ]
        self.main = nn.Sequential(*layers)

    def residual(self, x: th.Tensor, c: th.Tensor) -> th.Tensor:
        """delta(x, c) in [-1, 1], (B, C, S, S); ``c`` holds (B,) domain indices."""
        onehot = one_hot_domains(c, self.num_domains).to(x.dtype)  # (B, K)
        maps = onehot[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])  # (B, K, S, S)
        return self.main(th.cat([x, maps], dim=1))

    def forward(self, x: th.Tensor, c: th.Tensor) -> th.Tensor:
        """The translation of x (B, C, S, S) in [0, 1] to domains c (B,): clamp(x + delta, 0, 1)."""
        return (x + self.residual(x, c)).clamp(0.0, 1.0)


class Discriminator(nn.Module):
    """PatchGAN critic with a domain-classification head (StarGAN's D).

    :param image_size: S; must be divisible by 2^depth.
    :param width: channels of the first layer (w_d, 64 in StarGAN).
    :param depth: stride-2 convolutions (6 in StarGAN).
    :return of forward: (critic (B, 1, k, k), domain logits (B, num_domains)).
    """

    def __init__(self, in_channels: int, image_size: int, width: int = 64, depth: int = 6,
                 num_domains: int = NUM_DOMAINS):
        super().__init__()
        if width < 1:
            raise UserError(f"--fpgan_d_width {width}: expected a positive number of channels")
        if depth < 1:
            raise UserError(f"--fpgan_d_depth {depth}: expected at least 1 downsampling")
        if image_size % (2**depth):
            raise UserError(f"--fpgan_d_depth {depth}: --image_size {image_size} must be divisible "
                             f"by 2^{depth} = {2**depth}")
        layers: list[nn.Module] = []
        c_in, c_out = in_channels, width
        for _ in range(depth):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            c_in, c_out = c_out, 2 * c_out
        self.main = nn.Sequential(*layers)
        k = image_size // 2**depth
        self.src = nn.Conv2d(c_in, 1, 3, padding=1, bias=False)
        self.cls = nn.Conv2d(c_in, num_domains, k, bias=False)

    def forward(self, x: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        h = self.main(x)  # (B, w_d * 2^(depth-1), k, k)
        return self.src(h), self.cls(h).flatten(1)


# ---------------------------------------------------------------------------------
# Loss terms


def gradient_penalty(disc: Discriminator, real: th.Tensor, fake: th.Tensor, alpha: th.Tensor) -> th.Tensor:
    """WGAN-GP E[(||grad D_src(x^)||_2 - 1)^2] on x^ = a real + (1 - a) fake, with the per-image
    weights a = ``alpha`` (B,) drawn from U(0, 1) by the caller."""
    a = alpha.reshape(-1, 1, 1, 1).to(real.dtype)
    x_hat = (a * real + (1 - a) * fake).requires_grad_(True)
    critic, _ = disc(x_hat)
    (grad,) = th.autograd.grad(critic.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1.0).pow(2).mean()


def l1_per_image(a: th.Tensor, b: th.Tensor) -> th.Tensor:
    """Mean |a - b| over (C, H, W): (B,)."""
    return (a - b).abs().flatten(1).mean(1)


def critic_loss(gen: Generator, disc: Discriminator, x: th.Tensor, c_x: th.Tensor, c_trg: th.Tensor,
                alpha: th.Tensor, *, lambda_cls: float, lambda_gp: float) -> tuple[th.Tensor, dict]:
    """L_D = -L_adv + lambda_cls L_cls^r for real images x (B, C, S, S) of domains c_x (B,),
    translated to c_trg (B,); ``alpha`` (B,) are the gradient penalty's interpolation weights.
    Returns the loss and its terms."""
    with th.no_grad():
        fake = gen(x, c_trg)
    critic_real, logits_real = disc(x)
    critic_fake, _ = disc(fake)
    wasserstein = critic_real.mean() - critic_fake.mean()
    cls_real = F.cross_entropy(logits_real.float(), c_x)
    gp = gradient_penalty(disc, x, fake, alpha)
    loss = -wasserstein + lambda_cls * cls_real + lambda_gp * gp
    acc = (logits_real.argmax(1) == c_x).float().mean()
    return loss, {"d_loss": loss, "d_wasserstein": wasserstein, "d_cls": cls_real, "d_gp": gp, "d_acc": acc}


def generator_loss(gen: Generator, disc: Discriminator, x: th.Tensor, c_x: th.Tensor, c_trg: th.Tensor, *,
                   lambda_cls: float, lambda_rec: float, lambda_id: float) -> tuple[th.Tensor, dict]:
    """L_G = L_adv + lambda_cls L_cls^f + lambda_rec L_cyc + lambda_id L_id (the critic's own
    parameters must be frozen by the caller). Returns the loss and its terms."""
    fake = gen(x, c_trg)
    critic_fake, logits_fake = disc(fake)
    adv = -critic_fake.mean()
    cls_fake = F.cross_entropy(logits_fake.float(), c_trg)
    cyc = l1_per_image(gen(fake, c_x), x).mean()
    same = (c_trg == c_x).float()
    ident = (l1_per_image(fake, x) * same).mean()  # fixed-point loss: only for c = c_x
    loss = adv + lambda_cls * cls_fake + lambda_rec * cyc + lambda_id * ident
    return loss, {"g_loss": loss, "g_adv": adv, "g_cls": cls_fake, "g_cyc": cyc, "g_id": ident}


def translate_to_healthy(gen: Generator, x: th.Tensor) -> th.Tensor:
    """x_healthy = G(x, healthy), (B, C, S, S) in [0, 1]."""
    c = th.full((x.shape[0],), HEALTHY, dtype=th.long, device=x.device)
    return gen(x, c)
