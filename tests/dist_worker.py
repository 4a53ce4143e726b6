"""One training step of a tiny UNet or classifier in this launch's process group (torchrun, mpiexec or
none); rank 0 saves the gradients that reach the optimizer, i.e. after DDP's all-reduce.

    python tests/dist_worker.py KIND OUT --batch B [--microbatch M] [--dropout P]
    python tests/dist_worker.py KIND OUT --reference WORLD --batch B [--dropout P] [--same_masks]

KIND is unet or classifier. The data of the step is a fixed global batch of 4 images; each rank
takes its slice, as the training scripts' batch stream does. ``--reference`` computes, in one
process and without the scaffold, the average of the WORLD ranks' gradients: each rank's slice
with its slice of the global draws (timesteps, noise), its dropout masks seeded by
``dropout_seed(seed, step, rank)`` (or all alike with ``--same_masks``).
"""
import argparse
import sys
import tempfile

import torch as th
import torch.nn.functional as F
from cpu_helpers import TINY_CLASSIFIER, TINY_UNET, redraw_zero_layers

from guided_diffusion.pipeline.methods.diffusion import ClassifierTrainLoop, TrainLoop
from guided_diffusion.pipeline.train import TrainConfig, dropout_seed, step_generator
from guided_diffusion.script_util import (
    create_classifier_and_diffusion,
    create_model_and_diffusion,
)
from guided_diffusion.util import dist_util
from guided_diffusion.util.flags import RunFlags, TrainFlags

GLOBAL_BATCH = 4
SEED = 5


def networks(kind, dropout):
    th.manual_seed(0)  # the same weights in every process
    if kind == "unet":
        net, diffusion = create_model_and_diffusion(**{**TINY_UNET, "dropout": dropout})
    else:
        net, diffusion = create_classifier_and_diffusion(**TINY_CLASSIFIER)
    return redraw_zero_layers(net), diffusion


def global_batch():
    g = th.Generator().manual_seed(1000)
    return th.rand(GLOBAL_BATCH, 4, 16, 16, generator=g), th.randint(0, 2, (GLOBAL_BATCH,), generator=g)


def scaffold_gradients(kind, batch, microbatch, dropout):
    rank = dist_util.get_rank()
    net, diffusion = networks(kind, dropout)
    x, y = global_batch()

    def make_data(start):
        while True:
            yield x[rank * batch:(rank + 1) * batch], {"y": y[rank * batch:(rank + 1) * batch]}

    cfg = TrainConfig(TrainFlags(lr=1e-3, microbatch=microbatch, log_interval=10**6, save_interval=10**6),
                      RunFlags(log_dir=tempfile.mkdtemp(), seed=SEED, progress=False), batch_size=batch, total_steps=1)
    loop = (TrainLoop(net, diffusion, make_data, cfg) if kind == "unet"
            else ClassifierTrainLoop(net, diffusion, make_data, cfg))
    grads = []
    loop.opt.register_step_pre_hook(lambda opt, *_: grads.extend(p.grad.detach().clone() for p in net.parameters()))
    loop.run_loop()
    return grads


def reference_gradients(kind, world, dropout, same_masks):
    """The average of the ranks' gradients, each computed here on its own slice."""
    net, diffusion = networks(kind, dropout)
    net.train()
    x, y = global_batch()
    gen = step_generator(SEED, 0, th.device("cpu"))
    t = th.randint(0, diffusion.num_timesteps, (GLOBAL_BATCH,), generator=gen)  # the uniform sampler's draw
    noise = th.randn(x.shape, generator=gen)
    b = GLOBAL_BATCH // world
    total = [th.zeros_like(p) for p in net.parameters()]
    for rank in range(world):
        sl = slice(rank * b, (rank + 1) * b)
        th.manual_seed(dropout_seed(SEED, 0, 0 if same_masks else rank))
        if kind == "unet":
            loss = diffusion.training_losses(net, x[sl], t[sl], model_kwargs={"y": y[sl]}, noise=noise[sl])["loss"]
        else:
            loss = F.cross_entropy(net(diffusion.q_sample(x[sl], t[sl], noise=noise[sl]), t[sl]), y[sl],
                                   reduction="none")
        grads = th.autograd.grad(loss.mean(), list(net.parameters()))
        total = [acc + g / world for acc, g in zip(total, grads)]
    return total


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=("unet", "classifier"))
    p.add_argument("out")
    p.add_argument("--batch", type=int, default=GLOBAL_BATCH)
    p.add_argument("--microbatch", type=int, default=-1)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--reference", type=int, default=0)
    p.add_argument("--same_masks", action="store_true")
    args = p.parse_args()
    th.set_num_threads(1)
    if args.reference:
        th.save(reference_gradients(args.kind, args.reference, args.dropout, args.same_masks), args.out)
        return
    dist_util.setup_dist()
    try:
        grads = scaffold_gradients(args.kind, args.batch, args.microbatch, args.dropout)
        if dist_util.get_rank() == 0:
            th.save(grads, args.out)
    finally:
        dist_util.cleanup()


if __name__ == "__main__":
    sys.exit(main())
