"""The flag registry: every command-line flag, declared once, with its meaning and default.

Groups are the sections of ``--help`` and the typed configs the library takes (the machinery
is :mod:`guided_diffusion.util.flagspec`). The model, diffusion and classifier groups are the
flags of guided diffusion (their defaults are :mod:`guided_diffusion.script_util`'s defaults
dicts); the others belong to this project's scripts. A script picks the groups it needs.

Each method's own groups (the VAE's, FixedPoint-GAN's, ...) are declared in its module,
:mod:`guided_diffusion.pipeline.methods`. Choices that are the vocabulary of a layer above (data sets,
protocols, the translation scripts) are written out here as the command line spells them; their owners
define them (``datasets.common.CHANNELS``, ``evaluation.protocols.PROTOCOLS``, ``pipeline.methods.METHODS``),
and ``tests/test_flags.py`` fails when a flag's choices and its owner's names differ.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from .flagspec import REQUIRED, FlagGroup, flag

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULE_SAMPLERS = ("uniform", "loss-second-moment")
THRESHOLD_RULES = ("auto", "otsu", "best", "val", "fpr")
NOISE_TYPES = ("gaussian", "simplex")
GUIDANCE = ("classifier", "cfg", "none")
SCALE_SCHEDULES = ("constant", "linear", "cosine", "rising")  # guidance.SCALE_WEIGHTS, and constant
MAP_RESIDUALS = ("abs", "ssim", "abs+ssim")
"""The per-channel residuals of an anomaly map (guided_diffusion/maps.py)."""
MAP_NORMALISATIONS = ("none", "channel")
"""How the channels' residuals are scaled before they are summed (guided_diffusion/maps.py)."""


def parse_levels(text: str) -> tuple[int, ...]:
    """``L`` or ``L1,L2,...``: noise levels (their range, 1..T, is checked against the process)."""
    try:
        return tuple(int(part) for part in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, found {text!r}") from None


def parse_level_sets(text: str) -> tuple[tuple[int, ...], ...]:
    """``L1,L2,...`` where each item is a level or an ensemble of levels joined by ``+`` (``20,10+20+30``)."""
    try:
        return tuple(tuple(int(level) for level in item.split("+")) for item in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas (an ensemble joined by +), "
                                         f"found {text!r}") from None
def threshold_problem(text: str) -> str | None:
    """What is wrong with a ``--threshold``: it must be a rule of ``THRESHOLD_RULES`` or a finite
    number written as text (a fixed global threshold); None when it is one."""
    if text in THRESHOLD_RULES:
        return None
    try:
        value = float(text)
    except ValueError:
        return f"expected one of {', '.join(THRESHOLD_RULES)} or a number"
    return None if math.isfinite(value) else "expected a finite number"


def _fraction_problem(value: float) -> str | None:
    return None if 0.0 < value <= 1.0 else "expected 0 < q <= 1"


def _non_negative_problem(value: int) -> str | None:
    return None if value >= 0 else "expected 0 or more"


BRATS_RELEASES = ("auto", "2020", "2021", "2023")
NORMALISATIONS = ("percentile", "brainminmax")


@dataclass(frozen=True)
class RunFlags(FlagGroup):
    NAME = "run"
    ABOUT = "where the run writes, how it is seeded, what it runs on"
    log_dir: str = flag("", "folder for log.txt, progress.csv, saved flags and checkpoints "
                            "(none: a translation's --output_dir, else $OPENAI_LOGDIR, else "
                            "results/<script>-<timestamp>)", metavar="DIR")
    seed: int = flag(0, "seeds everything random: initial weights, data order, timesteps and noise, the "
                        "evaluation's bootstrap")
    device: str = flag("", "cpu, cuda or cuda:N (none: this process's GPU when there is one, else the CPU)")
    progress: bool = flag(True, "show a progress bar")


@dataclass(frozen=True)
class DataFlags(FlagGroup):
    NAME = "data"
    ABOUT = "the images and how they are batched"
    data_dir: str = flag("", "the data folder (BRATS leaf folders, or CheXpert healthy/ and diseased/)",
                         metavar="DIR")
    label_dir: str = flag("", "BRATS ground truths <leaf>-label.nii.gz for leaves without a seg file",
                          metavar="DIR")
    dataset: str = flag("brats", "brats: 4 channels t1, t1ce, t2, flair; chexpert: 1 channel",
                        choices=("brats", "chexpert"))
    image_size: int = flag(64, "side of the square network input in pixels; smaller images are "
                               "zero-padded evenly to it, larger ones are an error")
    batch_size: int = flag(1, "images per batch and process")
    num_workers: int = flag(-1, "data-loading worker processes (0: load in the main process; -1: min(4, CPUs - 2))")
    cache_dir: str = flag("", "where the slice store of a data folder that cannot be written goes (none: "
                              "$XDG_CACHE_HOME/guided_diffusion, else ~/.cache/guided_diffusion)", metavar="DIR")


@dataclass(frozen=True)
class MonitorFlags(FlagGroup):
    NAME = "monitoring"
    ABOUT = "live curves and images in Visdom (python -m guided_diffusion.util.visdom_server)"
    visdom: bool = flag(False, "send training curves and translation images to a Visdom server")
    visdom_server: str = flag("http://127.0.0.1", "the Visdom server's address", metavar="URL")
    visdom_port: int = flag(8850, "the Visdom server's port (the original used 8850)")
    visdom_every: int = flag(50, "translation: show the intermediate sample every N steps")


@dataclass(frozen=True)
class VisdomServerFlags(FlagGroup):
    NAME = "Visdom server"
    ABOUT = "python -m guided_diffusion.util.visdom_server: a local server without visdom's download step"
    port: int = flag(MonitorFlags.visdom_port, "port to serve on")
    env_path: str = flag("~/.visdom", "folder where Visdom keeps saved environments", metavar="DIR")
    bind_all: bool = flag(False, "listen on every network interface instead of 127.0.0.1 only (anyone who "
                                 "reaches the port can write)")
    download_assets: bool = flag(False, "first fetch the page's JavaScript/CSS from the internet (once per "
                                        "visdom install)")
    logging_level: str = flag("WARNING", "server log level; INFO logs every request",
                              choices=("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass(frozen=True)
class ModelFlags(FlagGroup):
    NAME = "model"
    ABOUT = "the diffusion UNet (guided diffusion's flags)"
    num_channels: int = flag(128, "channels of the first UNet level (its width)")
    num_res_blocks: int = flag(2, "residual blocks per UNet level")
    num_heads: int = flag(4, "attention heads (when --num_head_channels is -1)")
    num_heads_upsample: int = flag(-1, "attention heads in the decoder half (-1: --num_heads)")
    num_head_channels: int = flag(-1, "channels per attention head (-1: use --num_heads)")
    attention_resolutions: str = flag("16,8", "feature-map sides with self-attention, comma-separated",
                                      metavar="R1,R2")
    channel_mult: str = flag("", "width multiplier of each level, comma-separated (none: guided diffusion's "
                                 "choice for --image_size)", metavar="M1,M2")
    dropout: float = flag(0.0, "dropout probability in the residual blocks")
    class_cond: bool = flag(False, "condition on the class label (0 healthy, 1 diseased); the method needs it")
    use_checkpoint: bool = flag(False, "gradient checkpointing: less memory, more compute")
    use_scale_shift_norm: bool = flag(True, "FiLM-like timestep conditioning in the residual blocks")
    resblock_updown: bool = flag(False, "residual blocks for up- and downsampling")
    use_fp16: bool = flag(False, "run the UNet in float16 (same as --precision fp16 for the UNet)")
    use_new_attention_order: bool = flag(False, "split q, k, v before the heads (guided diffusion's newer order)")


@dataclass(frozen=True)
class DiffusionFlags(FlagGroup):
    NAME = "diffusion"
    ABOUT = "the diffusion process (guided diffusion's flags)"
    learn_sigma: bool = flag(False, "the UNet also predicts the variance (2 x C output channels, hybrid loss)")
    diffusion_steps: int = flag(1000, "T, the steps of the diffusion process")
    noise_schedule: str = flag("linear", "beta schedule", choices=("linear", "cosine"))
    timestep_respacing: str = flag("", "sample on a subset of the T steps: ddimN or N1,N2,... section counts "
                                       "(none: all T); --noise_level counts these steps", metavar="RESPACING")
    use_kl: bool = flag(False, "train on the variational bound alone")
    predict_xstart: bool = flag(False, "the UNet predicts x_0 instead of the noise")
    rescale_timesteps: bool = flag(False, "hand the networks t * 1000 / T")
    rescale_learned_sigmas: bool = flag(False, "rescale the variational-bound term to T = 1000")


@dataclass(frozen=True)
class ClassifierFlags(FlagGroup):
    NAME = "classifier"
    ABOUT = "the noise-aware healthy/diseased classifier (guided diffusion's flags)"
    classifier_use_fp16: bool = flag(False, "run the classifier in float16")
    classifier_width: int = flag(128, "channels of the first classifier level")
    classifier_depth: int = flag(2, "residual blocks per classifier level")
    classifier_attention_resolutions: str = flag("32,16,8", "feature-map sides with self-attention",
                                                 metavar="R1,R2")
    classifier_use_scale_shift_norm: bool = flag(True, "FiLM-like timestep conditioning")
    classifier_resblock_updown: bool = flag(True, "residual blocks for downsampling")
    classifier_pool: str = flag("attention", "how the last feature map becomes two logits",
                                choices=("adaptive", "attention", "spatial", "spatial_v2"))
    classifier_channel_mult: str = flag("", "width multiplier of each level (none: the choice for --image_size)",
                                        metavar="M1,M2")
    classifier_num_head_channels: int = flag(64, "channels per attention head")


@dataclass(frozen=True)
class SpeedFlags(FlagGroup):
    NAME = "speed"
    ABOUT = "how fast the networks run (fp32 eager is exactly the original's numbers)"
    precision: str = flag("fp32", "autocast precision of the networks", choices=PRECISIONS)
    compile: bool = flag(False, "torch.compile the networks (static shapes; first steps are slow)")
    channels_last: bool = flag(False, "channels-last memory layout for the networks")


@dataclass(frozen=True)
class TrainFlags(FlagGroup):
    NAME = "training"
    ABOUT = "the optimisation (AdamW), logging and checkpoints"
    lr: float = flag(1e-4, "learning rate")
    weight_decay: float = flag(0.0, "AdamW weight decay")
    microbatch: int = flag(-1, "accumulate gradients over micro-batches of this size (-1: the whole batch)")
    log_interval: int = flag(10, "average and log the loss terms every N steps")
    save_interval: int = flag(10000, "write a checkpoint every N steps (and at the end)")
    resume_checkpoint: str = flag("", "continue from this checkpoint file (any file of a checkpoint), or "
                                      "auto: the newest complete checkpoint in --log_dir", metavar="PATH")


@dataclass(frozen=True)
class TimestepFlags(FlagGroup):
    NAME = "timesteps"
    ABOUT = "which diffusion timesteps training sees"
    schedule_sampler: str = flag("uniform", "uniform, or importance sampling by the loss history "
                                            "(Nichol & Dhariwal 2021)", choices=SCHEDULE_SAMPLERS)


@dataclass(frozen=True)
class DiffusionTrainFlags(FlagGroup):
    NAME = "diffusion training"
    ABOUT = "image_train.py: length and weight averaging"
    lr_anneal_steps: int = flag(0, "stop after N steps, the learning rate decaying linearly to 0 "
                                   "(0: run until stopped)")
    ema_rate: str = flag("0.9999", "EMA rates of the weights, comma-separated (one ema_<rate>_NNNNNN.pt each)",
                         metavar="R1,R2")
    p_uncond: float = flag(0.0, "classifier-free guidance: replace each training label by an extra 'no class' "
                                "label with this probability (0: the paper's model, no extra label)")
    healthy_only: bool = flag(False, "train on the healthy images (label 0) only (AnoDDPM's unconditional model)")


@dataclass(frozen=True)
class NoiseFlags(FlagGroup):
    NAME = "noise"
    ABOUT = "the noise of the diffusion process: Gaussian, or AnoDDPM's simplex noise (Wyatt et al. 2022)"
    noise_type: str = flag("gaussian", "gaussian: the paper's; simplex: multi-octave simplex noise, each image "
                                       "and channel normalised to zero mean and unit variance", choices=NOISE_TYPES)
    simplex_octaves: int = flag(6, "simplex noise: octaves (AnoDDPM: 6)")
    simplex_persistence: float = flag(0.8, "simplex noise: amplitude factor from one octave to the next (AnoDDPM: "
                                           "0.8)")
    simplex_frequency: float = flag(64.0, "simplex noise: period of the coarsest octave in pixels, halved at each "
                                          "octave (AnoDDPM: 64 at 256 x 256)")


@dataclass(frozen=True)
class LengthFlags(FlagGroup):
    NAME = "length"
    ABOUT = "how long training runs"
    iterations: int = flag(0, "stop after N steps (0: use --epochs)")
    epochs: float = flag(0.0, "with --iterations 0: passes over the training images (global batches)")


@dataclass(frozen=True)
class ClassifierTrainFlags(FlagGroup):
    NAME = "classifier training"
    ABOUT = "classifier_train.py: noise, learning rate and held-out accuracy"
    noised: bool = flag(True, "train on noised images q(x_t | x_0) at random t (the noise-aware classifier)")
    anneal_lr: bool = flag(False, "decay the learning rate linearly to 0 at the last step")
    eval_interval: int = flag(100, "held-out loss and accuracy every N steps (0: never)")
    val_data_dir: str = flag("", "held-out folder for the accuracy (none: --val_fraction of --data_dir)",
                             metavar="DIR")
    val_label_dir: str = flag("", "the --label_dir of --val_data_dir", metavar="DIR")
    classifier_max_t: int = flag(0, "train (and evaluate) at timesteps t < T only, where translation with "
                                    "--noise_level L asks the classifier (0: all timesteps, the paper)")
    balance_classes: bool = flag(False, "draw healthy and diseased training images about equally often: each "
                                        "image of the smaller class repeats round(larger / smaller) times per epoch, "
                                        "so the classifier cannot settle on the class prior (False: as they come, "
                                        "the paper)")


@dataclass(frozen=True)
class TranslateFlags(FlagGroup):
    NAME = "translation"
    ABOUT = "which network translates which images, and where the results go"
    model_path: tuple = flag((), "the checkpoint of the translating network (model/ema/G file; tune.py: one or "
                                 "more to compare)", metavar="PATH", nargs="+", parse=str)
    output_dir: str = flag("", "folder for <id>.npz, <id>.png, metrics.csv and summary.json "
                               "(none: <log_dir>/samples)", metavar="DIR")
    num_samples: int = flag(-1, "translate the first N images of --data_dir (-1: all)")


@dataclass(frozen=True)
class SamplingFlags(FlagGroup):
    NAME = "sampling"
    ABOUT = "the diffusion translation: encoding depth L, guidance scale s, sampler"
    classifier_path: str = flag("", "the classifier checkpoint (classifier_train.py's modelNNNNNN.pt)",
                                metavar="PATH")
    classifier_scale: float = flag(100.0, "s, the scale of the classifier gradient (paper: 100)")
    noise_level: tuple = flag((500,), "L, how far the image is encoded, in steps of the (respaced) process "
                                      "1..T (with ddim1000, 500 is half way); several levels (5,10,20): the "
                                      "anomaly maps of the translations at each level are averaged",
                              metavar="L[,L2,...]", parse=parse_levels)
    use_ddim: bool = flag(False, "True: DDIM encoding and guided DDIM decoding (the method); "
                                 "False: noise to L and guided DDPM sampling")
    clip_denoised: bool = flag(True, "clip the predicted x_0 to [-1, 1] at every step")
    guidance: str = flag("classifier", "classifier: the paper's classifier guidance (--classifier_path, "
                                       "--classifier_scale); cfg: classifier-free guidance (a model trained with "
                                       "--p_uncond > 0, --guidance_scale); none: unguided", choices=GUIDANCE)
    guidance_scale: float = flag(3.0, "W of classifier-free guidance: eps = (1 + W) eps(x, healthy) - W eps(x, "
                                      "no class)")
    scale_schedule: str = flag("constant", "the classifier scale over the decoding steps, tau = t / (first decoding "
                                           "step's t): constant s (the paper); linear s * tau and cosine s * sin^2(pi "
                                           "tau / 2) fade from s to 0 at t = 0; rising s * (1 - tau) grows from 0 to s",
                               choices=SCALE_SCHEDULES)
    autoddpm: bool = flag(False, "AutoDDPM (Bercea et al. 2023): mask where the first translation's anomaly map is "
                                 "high, stitch that translation into the input there, resample the stitched image at "
                                 "--autoddpm_level with the input kept outside the mask")
    autoddpm_quantile: float = flag(0.95, "AutoDDPM: the mask is the anomaly map above this quantile of the image's "
                                          "map, 0 < q <= 1 (1: an empty mask)", check=_fraction_problem)
    autoddpm_level: int = flag(0, "AutoDDPM: the resampling level L2 in steps of the (respaced) process (0: L / 4, "
                                  "AutoDDPM's 200 then 50 of 1000)", check=_non_negative_problem)
    autoddpm_dilation: int = flag(1, "AutoDDPM: dilate the mask by this many pixels (a 2d+1 square; AutoDDPM: 3 x 3)",
                                  check=_non_negative_problem)


@dataclass(frozen=True)
class PatchFlags(FlagGroup):
    NAME = "patches"
    ABOUT = "pDDPM's patch-wise noising (Behrendt et al. 2023), in training and translation"
    patch_size: int = flag(0, "side P of the patches (0: off; P divides --image_size): image_train.py noises one "
                              "patch of the P x P grid per image, its loss on that patch; translation noises and "
                              "reconstructs each patch of the grid from the clean image around it and tiles them",
                           check=_non_negative_problem)


def sigma_problem(value: float) -> str | None:
    """What is wrong with a filter's sigma in pixels: it must be finite and 0 (off) or more."""
    return None if math.isfinite(value) and value >= 0 else "expected a sigma of 0 (off) or more pixels"


@dataclass(frozen=True)
class MapFlags(FlagGroup):
    NAME = "anomaly map"
    ABOUT = ("how the anomaly map is made of an image and its healthy translation (guided_diffusion/maps.py; the "
             "defaults are the paper's sum over channels of |x - healthy|)")
    map_residual: str = flag("abs", "each channel's residual: abs, |x - healthy| (the paper); ssim, 1 - local SSIM "
                                    "(7 x 7 window); abs+ssim, their product", choices=MAP_RESIDUALS)
    map_normalise: str = flag("none", "none: sum the channels' residuals as they are; channel: first divide each "
                                      "channel's residual by its median over the image's brain (pixels above 0 in "
                                      "any channel)", choices=MAP_NORMALISATIONS)
    map_smooth: float = flag(0.0, "sigma in pixels of a Gaussian filter on the summed map (0: off)",
                             check=sigma_problem)


def parse_floats(text: str) -> tuple[float, ...]:
    """``X`` or ``X1,X2,...``."""
    try:
        return tuple(float(part) for part in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, found {text!r}") from None


@dataclass(frozen=True)
class TuneFlags(FlagGroup):
    NAME = "tuning"
    ABOUT = "tune.py: the grid translated on the validation folder (--data_dir), one setting per point"
    noise_levels: tuple = flag(((20,), (30,), (40,)), "noise levels L to try; an ensemble of levels joined by + "
                                                       "(20,10+20+30: L=20, then the ensemble of 10, 20 and 30)",
                               metavar="L1,L2,...", parse=parse_level_sets)
    classifier_scales: tuple = flag((50.0, 100.0, 200.0), "classifier scales s to try (--guidance classifier)",
                                    metavar="S1,S2,...", parse=parse_floats)
    guidance_scales: tuple = flag((1.0, 3.0), "classifier-free guidance scales W to try (--guidance cfg)",
                                  metavar="W1,W2,...", parse=parse_floats)
    grid: tuple = flag((), "further levers to try, each NAME=V1,V2,...: an on/off, choice or number flag of "
                           "classifier_sample_known.py and its values (map_residual=abs,ssim map_smooth=0,1); every "
                           "combination is tried with every L and scale; repeatable", metavar="NAME=V1,V2,...",
                       nargs="+", parse=str, repeat=True)
    test_dir: str = flag("", "then translate this test folder with the chosen setting and score it as evaluate.py "
                             "would (none: only print the command lines)", metavar="DIR")
    test_label_dir: str = flag("", "the --label_dir of --test_dir", metavar="DIR")
    test_output_dir: str = flag("", "where the translation of --test_dir goes", metavar="DIR")


@dataclass(frozen=True)
class EvaluationFlags(FlagGroup):
    NAME = "evaluation"
    ABOUT = ("how the anomaly maps are scored (guided_diffusion/evaluation/protocols.py); post-processing is "
             "off by default")
    protocol: str = flag("paper", "paper: the 2022 paper's (Dice over diseased slices, AUROC/AUPRC over slices with "
                                  "more than 20 tumour pixels); slice: every slice with ground truth, healthy ones "
                                  "included; volume: each patient's slices stacked, Dice per patient (needs the "
                                  "files' patient and slice keys); all: the old name of slice",
                          choices=("paper", "slice", "volume", "all"))
    threshold: str = flag("auto", "otsu: per slice (the paper); best: the one global threshold with the best mean "
                                  "Dice on this set (an oracle, labelled so); val: the one best on --val_dir, applied "
                                  "unchanged; fpr: the one marking --fpr of --val_dir's healthy brain pixels; auto: "
                                  "otsu for paper, val for slice and volume when --val_dir is given, else otsu; a "
                                  "number T: that global threshold (a pixel is positive above T)",
                          metavar="|".join(THRESHOLD_RULES) + "|T", check=threshold_problem)
    val_dir: str = flag("", "the same method's translated, labelled validation folder, for --threshold val|fpr "
                            "(compare.py: one per RUN_DIR, comma-separated)", metavar="DIR")
    fpr: float = flag(0.01, "--threshold fpr: the fraction of --val_dir's healthy brain pixels marked positive")
    brain_mask: bool = flag(False, "pixels where every input channel is 0 are never positive (and 0 in the map)")
    median: int = flag(0, "median filter of the map before thresholding, odd window side (2-D per slice; 3-D for "
                          "volume; 0: off)", metavar="K")
    min_component: int = flag(0, "drop connected components of the mask smaller than N pixels (voxels for volume; "
                                 "0: off)")
    bootstrap: int = flag(0, "95-percent intervals of the mean Dice and auprc_pooled from N resamples of the patients "
                             "(images when the files name none), seeded by --seed (0: none)")


@dataclass(frozen=True)
class ResultsFlags(FlagGroup):
    NAME = "results"
    ABOUT = "the translation output folder to score"
    run_dir: str = flag(REQUIRED, "a translation output folder (<id>.npz files)", metavar="OUTPUT_DIR",
                        positional=True)


@dataclass(frozen=True)
class CompareFlags(FlagGroup):
    NAME = "comparison"
    ABOUT = "the table and figure over several methods' output folders"
    run_dirs: str = flag(REQUIRED, "translation output folders, one per method", metavar="RUN_DIR",
                         nargs="+", positional=True)
    names: str = flag("", "comma-separated method names, one per RUN_DIR (none: each summary's method, or "
                          "the folder name)")
    examples: int = flag(4, "example slices in comparison.png (ids common to all runs, diseased first; 0: none)")


@dataclass(frozen=True)
class OutputFlags(FlagGroup):
    NAME = "output"
    ABOUT = "where the script writes"
    out: str = flag(REQUIRED, "output folder", metavar="DIR")


@dataclass(frozen=True)
class SplitFlags(FlagGroup):
    NAME = "split"
    ABOUT = "patient-level splits: no patient's slices on two sides"
    test_fraction: float = flag(0.2, "fraction of the patients written to testing/")
    val_fraction: float = flag(0.1, "fraction of the patients held out as a validation split (prepare_*.py: written "
                                    "to validation/; classifier_train.py: of --data_dir, when there is no "
                                    "--val_data_dir)")


def parse_slice_range(text: str) -> tuple[int, int]:
    """Parse ``FIRST,LAST`` (inclusive, 0-based axial slice indices)."""
    parts = text.split(",")
    try:
        first, last = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST,LAST (two integers), found {text!r}") from None
    if not 0 <= first <= last:
        raise argparse.ArgumentTypeError(f"expected 0 <= FIRST <= LAST, found {text!r}")
    return first, last


DEFAULT_SLICE_RANGE = (80, 128)
"""First and last axial slice kept (inclusive): 49 of 155, the lowest 80 and the
topmost 26 removed as in Wolleb et al. 2022."""


@dataclass(frozen=True)
class PrepareBratsFlags(FlagGroup):
    NAME = "BraTS release"
    ABOUT = "prepare_brats.py: the release folder and what is kept"
    src: str = flag(REQUIRED, "folder of the release's patient folders (BraTS20_Training_XXX/, BraTS2021_XXXXX/ or "
                              "BraTS-GLI-XXXXX-XXX/)", metavar="DIR")
    release: str = flag("auto", "which release's file names to read (auto: told by the patient folders' names)",
                        choices=BRATS_RELEASES)
    normalise: str = flag("percentile", "per volume and modality to [0, 1]: percentile (clip at the 99.5th "
                                        "percentile of the brain) or brainminmax (min-max of the non-zero voxels)",
                          choices=NORMALISATIONS)
    slice_range: tuple = flag(DEFAULT_SLICE_RANGE, "axial slices kept, 0-based, both ends included (80,128 = 49 "
                                                   "slices)", metavar="FIRST,LAST", parse=parse_slice_range)
    write_label_dir: bool = flag(False, "also write OUT/test_labels/<leaf>-label.nii.gz, the original's test "
                                        "label layout")


@dataclass(frozen=True)
class PrepareChexpertFlags(FlagGroup):
    NAME = "CheXpert release"
    ABOUT = "prepare_chexpert.py: the CSV and the images it points to"
    csv: str = flag(REQUIRED, "CheXpert CSV, e.g. CheXpert-v1.0-small/train.csv", metavar="FILE")
    image_root: str = flag(REQUIRED, "folder the CSV's Path column is relative to (the one holding "
                                     "CheXpert-v1.0-small/)", metavar="DIR")
    keep_uncertain: bool = flag(False, "count uncertain (-1) pleural effusion as diseased instead of dropping "
                                       "the row")


@dataclass(frozen=True)
class SyntheticFlags(FlagGroup):
    NAME = "synthetic data"
    ABOUT = "the generator of the example set in data/"
    size: int = flag(240, "side of the square images in pixels")
    n_train: int = flag(48, "training slices (BRATS) / images (CheXpert)")
    n_test: int = flag(8, "test slices (BRATS) / images (CheXpert)")
    n_val: int = flag(0, "validation slices (BRATS, with seg like training) / images (CheXpert)")
    tumour_fraction: float = flag(0.5, "fraction of each split with a tumour (BRATS) or effusion (CheXpert)")
    datasets: str = flag("brats,chexpert", "which sets to write, comma-separated", metavar="NAMES")
    n_volumes: int = flag(0, "also write N whole raw BraTS patients (155 slices) in --release's layout (auto: "
                             "2021) under OUT/brats_raw/, for detect.py")


@dataclass(frozen=True)
class DriverFlags(FlagGroup):
    NAME = "example runs"
    ABOUT = "demo.py: the plan and the training lengths of its tiny networks"
    plan: str = flag("demo", "demo: the paper's method; compare: every method, scored alike",
                     choices=("demo", "compare"))
    classifier_steps: int = flag(300, "training steps of each classifier")
    model_steps: int = flag(600, "training steps of each diffusion model")
    vae_steps: int = flag(600, "training steps of the VAE (compare)")
    fpgan_steps: int = flag(500, "training steps of FixedPoint-GAN (compare)")
    dae_steps: int = flag(300, "training steps of the denoising autoencoder (compare)")
    ensemble_levels: tuple = flag(((5, 10, 15), (10, 15, 20)), "the noise-level ensembles the ensemble lever's "
                                                               "tuning tries (compare)", metavar="L1+L2+...,...",
                                  parse=parse_level_sets)
    jobs: int = flag(1, "stages run side by side, each with an equal share of the cores (on 2 cores two "
                        "1-thread stages ran only 1.1x faster than one after the other)")
    resume: bool = flag(False, "go on with an interrupted run in --out: a stage that finished with the same "
                               "command line is not run again; every other stage runs, and its script goes on "
                               "from what it finds (training from its newest complete checkpoint, translation "
                               "skipping finished images) or refuses a folder made with other flags")


TRANSLATORS = ("classifier_sample_known", "dae_translate", "vae_translate", "fpgan_translate", "intensity_translate")
"""The scripts that translate images to healthy ones: what a bundle can hold (the translation scripts of
``pipeline.methods.METHODS``, which util cannot import; a test checks that the two agree)."""


@dataclass(frozen=True)
class BundleFlags(FlagGroup):
    NAME = "bundle"
    ABOUT = ("export_bundle.py: what goes into the bundle; without --tune_dir the flags of the --method "
             "script follow, with --threshold T")
    tune_dir: str = flag("", "tune.py's --out: bundle the setting of its best.json (no further flags)",
                         metavar="DIR")
    method: str = flag("classifier_sample_known", "the translation script whose flags follow (without --tune_dir)",
                       choices=TRANSLATORS)


@dataclass(frozen=True)
class DetectFlags(FlagGroup):
    NAME = "detection"
    ABOUT = "detect.py: a bundle applied to whole BraTS volumes"
    bundle: str = flag(REQUIRED, "the bundle folder (export_bundle.py --out)", metavar="DIR")
    input: tuple = flag(REQUIRED, "a patient folder of any BraTS release, a folder of patient folders, or the "
                                  "four volumes as t1=FILE t1ce=FILE t2=FILE flair=FILE [seg=FILE]", metavar="IN",
                        nargs="+", parse=str, short="i")
    output: str = flag(REQUIRED, "folder for <patient>_anomaly.nii.gz, <patient>_mask.nii.gz and summary.csv",
                       metavar="OUT", short="o")
    overlay: bool = flag(False, "also write <patient>_overlay.png: the FLAIR slices with the mask's contour")


REGISTRY: tuple[type[FlagGroup], ...] = (
    RunFlags, DataFlags, MonitorFlags, VisdomServerFlags, ModelFlags, DiffusionFlags, ClassifierFlags, SpeedFlags,
    TrainFlags, TimestepFlags, DiffusionTrainFlags, NoiseFlags, LengthFlags, ClassifierTrainFlags, TranslateFlags,
    SamplingFlags, PatchFlags, MapFlags, TuneFlags, EvaluationFlags, ResultsFlags, CompareFlags, OutputFlags,
    SplitFlags, PrepareBratsFlags,
    PrepareChexpertFlags, SyntheticFlags, DriverFlags, BundleFlags, DetectFlags,
)
"""Every group shared by several scripts (a method's own groups are in its module, :mod:`pipeline.methods`);
a test checks that no flag name is declared twice among these and every group a script's config holds."""
