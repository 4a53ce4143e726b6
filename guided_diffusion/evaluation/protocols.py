"""Scoring protocols (``--protocol``) and the one scoring loop every protocol and rule goes through.

``paper`` (Wolleb et al. 2022, SPEC 1; unchanged)
    Dice averaged over the diseased slices (``label`` 1) with ground truth; pixel AUROC and
    AUPRC averaged over the slices with more than 20 tumour pixels (``MIN_TUMOUR_PIXELS``).
``slice`` (``all`` is its old name)
    Every slice with ground truth, healthy ones included: a healthy slice scores Dice 1 when
    nothing is marked and 0 otherwise (AnoFPDM reports healthy slices included apart from
    diseased ones); AUROC/AUPRC for every slice where both classes occur.
``volume``
    Each patient's slices stacked by ``slice`` into a (D, H, W) volume: Dice, AUROC and AUPRC
    per patient, mean ± std over patients (Behrendt et al.); the median filter and component
    removal work in 3-D. Needs the ``patient`` and ``slice`` keys.

The loop (:func:`prepare_units`, :func:`fit_threshold`, :func:`score_units`; the folder-level
driver is :func:`guided_diffusion.evaluation.results.score_folder`): stack slices
into units (a slice, or a patient's volume), post-process the maps
(:mod:`~guided_diffusion.evaluation.postprocess`), choose the threshold
(:mod:`~guided_diffusion.evaluation.thresholds`), threshold and post-process the masks, then
score. A protocol only decides what a unit is and which units and slices each metric scores.

Every protocol also reports: ``auroc_pooled``/``auprc_pooled``, one ROC/PR curve over all
pixels of the slices with ground truth (MOOD, Baur et al. 2021, Lagogiannis et al. 2024;
``pixel_auroc_pooled``/``pixel_auprc_pooled`` are the same numbers under their old names);
``image_auroc`` of ``image_score`` per slice against ``label``; ``dice_by_size``, the mean Dice
per quartile of lesion size (THOR) over the Dice-scored units with tumour; ``healthy_fp_rate``,
the fraction of healthy slices (no tumour pixel, or no ground truth and label 0) with any
positive pixel after thresholding and post-processing; and, with ``--bootstrap N``, 95 %
percentile intervals of the mean Dice and of ``auprc_pooled`` over N resamples of the patients
(of the images, for files without ``patient``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..anomaly import IMAGE_SCORE_PERCENTILE, dice, image_score, pixel_auprc, pixel_auroc
from ..util.errors import UserError
from ..util.flags import THRESHOLD_RULES
from .bootstrap import percentile_interval, resample_weights, resampled_means
from .postprocess import PostProcessing, process_map, process_mask
from .ranking import Ranking, ranking_scores
from .thresholds import SearchResult, best_threshold, fpr_threshold, otsu_masks

PROTOCOLS = ("paper", "slice", "volume", "all")
"""The values of ``--protocol`` (above; ``all`` is the old name of ``slice``)."""
# Paper protocol: AUROC/AUPRC only for slices with more than this many tumour pixels.
MIN_TUMOUR_PIXELS = 20
METRICS = ("dice", "auroc", "auprc")
PATIENT_COLUMNS = ("patient", "n_slices", "lesion_voxels", "dice", "auroc", "auprc")

_SLICE = (
    "Dice averaged over all slices with ground truth (1.0 when mask and ground truth are both "
    "empty); pixel AUROC and AUPRC over all slices with ground truth where defined (both classes present)"
)
PROTOCOL_DESCRIPTIONS = {
    "paper": (
        "Dice averaged over diseased images (label 1) with ground truth; pixel AUROC and "
        f"AUPRC averaged over images with more than {MIN_TUMOUR_PIXELS} ground-truth pixels"
    ),
    "slice": _SLICE,
    "all": "the old name of slice: " + _SLICE,
    "volume": (
        "each patient's slices stacked into a volume; Dice, AUROC and AUPRC per patient, "
        "averaged over patients (1.0 Dice for a patient without tumour and nothing marked)"
    ),
}


@dataclass(frozen=True)
class Scoring:
    """How a folder is scored: the evaluation flags (:class:`~guided_diffusion.util.flags.EvaluationFlags`
    and ``--seed``). ``threshold="auto"`` is the protocol's default (:attr:`rule`)."""

    protocol: str = "paper"
    threshold: str = "auto"
    val_dir: str = ""
    fpr: float = 0.01
    brain_mask: bool = False
    median: int = 0
    min_component: int = 0
    bootstrap: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise UserError(f"protocol {self.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        if self.threshold not in THRESHOLD_RULES and fixed_threshold(self.threshold) is None:
            raise UserError(f"--threshold {self.threshold!r}: expected one of {', '.join(THRESHOLD_RULES)} "
                            "or a number")
        if not 0 <= self.fpr < 1:
            raise UserError(f"--fpr {self.fpr}: expected a fraction, 0 <= fpr < 1")
        if self.bootstrap < 0:
            raise UserError(f"--bootstrap {self.bootstrap}: expected 0 (none) or a number of resamples")
        PostProcessing(self.brain_mask, self.median, self.min_component)  # checks --median, --min_component
        if self.rule in ("val", "fpr") and not self.val_dir:
            raise UserError(f"--threshold {self.rule}: needs --val_dir DIR, a translated, labelled "
                            "validation folder of the same method")
        if self.val_dir and self.rule not in ("val", "fpr"):
            raise UserError(f"--val_dir {self.val_dir}: only --threshold val or fpr use it "
                            f"(the rule here is {self.rule})")

    @property
    def rule(self) -> str:
        """The threshold rule: ``auto`` is otsu for paper (the paper's), and val for slice and
        volume when ``val_dir`` is given (Behrendt et al.), else otsu."""
        if fixed_threshold(self.threshold) is not None:
            return "fixed"
        if self.threshold != "auto":
            return self.threshold
        return "val" if self.val_dir and self.protocol != "paper" else "otsu"

    @property
    def postprocessing(self) -> PostProcessing:
        return PostProcessing(self.brain_mask, self.median, self.min_component)

    @property
    def volumetric(self) -> bool:
        """3-D neighbourhoods (the volume protocol) or 2-D within each slice."""
        return self.protocol == "volume"

    def describe_rule(self) -> str:
        """One line for tables: the rule and where its threshold came from; "oracle" for best."""
        if self.rule == "fixed":
            return f"the global threshold {float(self.threshold):g}, given"
        return describe_rule(self.rule, f"the validation run {self.val_dir}", self.fpr)


def fixed_threshold(text: str) -> float | None:
    """The number of a ``--threshold T`` (a fixed global threshold), None for a rule's name."""
    if text in THRESHOLD_RULES:
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def describe_rule(rule: str, validation: str, fpr: float) -> str:
    """The threshold rule in words; ``validation`` names the folder val and fpr read."""
    return {
        "otsu": "Otsu threshold per slice (Wolleb et al. 2022)",
        "best": "oracle: the one global threshold with the best mean Dice on the set it scores",
        "val": f"the global threshold with the best mean Dice on {validation}",
        "fpr": f"the global threshold marking {fpr:g} of the healthy brain pixels of {validation}",
    }[rule]


@dataclass
class SliceResult:
    """What the scoring reads of one result file."""

    path: Path
    id: str
    label: int
    anomaly: np.ndarray | None  # (H, W) float32
    ground_truth: np.ndarray | None  # (H, W) bool
    patient: str | None = None
    slice: int | None = None
    brain: np.ndarray | None = None  # (H, W) bool, when the brain mask is needed


@dataclass
class Unit:
    """What one Dice is computed on: a slice (D = 1) or a patient's stacked slices."""

    name: str
    members: list[SliceResult]  # in stacking order
    maps: np.ndarray  # (D, H, W) float32, post-processed by prepare_units
    gt: np.ndarray | None  # (D, H, W) bool, None when no slice has ground truth
    brain: np.ndarray | None  # (D, H, W) bool, when needed
    masks: np.ndarray | None = None  # (D, H, W) bool, set by score_units

    def scoreable(self, post: PostProcessing) -> np.ndarray | None:
        """The pixels that may be positive (the brain with --brain_mask), or None for all."""
        return self.brain if post.brain_mask else None


@dataclass
class Scores:
    """What :func:`score_units` returns: metrics.csv rows, per-patient rows (volume), the summary."""

    rows: list[dict[str, Any]]
    patients: list[dict[str, Any]] | None
    summary: dict[str, Any] = field(default_factory=dict)
    units: list[Unit] = field(default_factory=list)  # the scored units: post-processed maps and evaluated masks


# ---------------------------------------------------------------------------------- units


def _volumes(slices: list[SliceResult], where: str) -> list[Unit]:
    missing = next((s for s in slices if s.patient is None or s.slice is None), None)
    if missing is not None:
        raise UserError(f"--protocol volume: {missing.path} has no patient and slice keys (a file written "
                        "before they were stored); score this folder with --protocol slice or paper")
    by_patient: dict[str, list[SliceResult]] = {}
    for s in slices:
        by_patient.setdefault(s.patient, []).append(s)
    units = []
    for patient in sorted(by_patient):
        members = sorted(by_patient[patient], key=lambda s: s.slice)
        for a, b in zip(members, members[1:]):
            if a.slice == b.slice:
                raise UserError(f"--protocol volume: patient {patient} in {where} has two files for slice "
                                f"{a.slice}: {a.path.name} and {b.path.name}")
            if a.anomaly.shape != b.anomaly.shape:
                raise UserError(f"--protocol volume: patient {patient}: slices of different shapes "
                                f"({a.path.name}: {a.anomaly.shape}, {b.path.name}: {b.anomaly.shape})")
        with_gt = [s.ground_truth is not None for s in members]
        if any(with_gt) and not all(with_gt):
            lacking = members[with_gt.index(False)]
            raise UserError(f"--protocol volume: patient {patient}: {lacking.path.name} has no ground_truth "
                            "but other slices of the patient have one")
        maps = np.stack([s.anomaly for s in members])  # (D, H, W)
        gt = np.stack([s.ground_truth for s in members]) if all(with_gt) else None
        brain = np.stack([s.brain for s in members]) if members[0].brain is not None else None
        for s in members:  # the volume holds the pixels from here on
            s.anomaly = s.ground_truth = s.brain = None
        units.append(Unit(patient, members, maps, gt, brain))
    return units


def _stack_of_one(plane: np.ndarray | None) -> np.ndarray | None:
    return None if plane is None else plane[None]  # (H, W) -> (1, H, W), a view


def prepare_units(slices: list[SliceResult], scoring: Scoring, where: str) -> list[Unit]:
    """The protocol's units of a folder's slices, their maps post-processed (median, brain mask).

    :param where: the folder, for error messages.
    """
    if scoring.protocol == "volume":
        units = _volumes(slices, where)
    else:
        units = []
        for s in slices:
            units.append(Unit(s.id, [s], _stack_of_one(s.anomaly), _stack_of_one(s.ground_truth),
                              _stack_of_one(s.brain)))
            s.anomaly = s.ground_truth = s.brain = None
    post = scoring.postprocessing
    for unit in units:
        unit.maps = process_map(unit.maps, unit.brain, post, scoring.volumetric)
    return units


def _scores_dice(protocol: str, unit: Unit) -> bool:
    return unit.gt is not None and (protocol != "paper" or unit.members[0].label == 1)


def _dice_units(units: list[Unit], protocol: str) -> list[Unit]:
    return [u for u in units if _scores_dice(protocol, u)]


# ---------------------------------------------------------------------------------- thresholds


def _healthy_brain_values(units: list[Unit]) -> np.ndarray:
    """Map values of the healthy pixels inside the brain: ground truth 0, or every pixel of a
    slice without ground truth and label 0."""
    values = []
    for unit in units:
        for z, member in enumerate(unit.members):
            if unit.gt is not None:
                healthy = ~unit.gt[z] & unit.brain[z]
            elif member.label == 0:
                healthy = unit.brain[z]
            else:
                continue
            values.append(unit.maps[z][healthy])
    return np.concatenate(values) if values else np.zeros(0, np.float32)


def fit_threshold(units: list[Unit], scoring: Scoring) -> SearchResult | None:
    """The global threshold of ``scoring.rule`` chosen on ``units`` (the test set for best, the
    validation set for val and fpr); None for otsu. fpr needs the units' brain masks."""
    rule = scoring.rule
    if rule == "otsu":
        return None
    if rule == "fixed":
        return SearchResult(float(scoring.threshold))
    if rule == "fpr":
        return fpr_threshold(_healthy_brain_values(units), scoring.fpr)
    post = scoring.postprocessing
    return best_threshold([(u.maps, u.gt, u.scoreable(post)) for u in _dice_units(units, scoring.protocol)])


# ---------------------------------------------------------------------------------- scoring


def _stats(values: list[float]) -> dict[str, Any]:
    finite = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


def _two_class_score(metric, labels: np.ndarray, scores: np.ndarray) -> float | None:
    if labels.size == 0 or labels.all() or not labels.any():
        return None
    return float(metric(labels, scores))


def dice_by_size(sizes: list[int], dices: list[float]) -> dict[str, Any]:
    """Mean Dice per quartile of lesion size (THOR): ``edges`` are the 0, 25, 50, 75 and 100th
    percentiles of the sizes (pixels, or voxels), quartile i holds the sizes in
    (edges[i], edges[i + 1]] (the first includes its lower edge); ``mean`` is None for an empty
    quartile."""
    if not sizes:
        return {"edges": None, "mean": [None] * 4, "n": [0] * 4}
    size_np, dice_np = np.asarray(sizes, dtype=np.float64), np.asarray(dices, dtype=np.float64)
    edges = np.percentile(size_np, [0, 25, 50, 75, 100])
    quartile = np.searchsorted(edges[1:4], size_np, side="left")  # 0..3
    means, counts = [], []
    for q in range(4):
        chosen = dice_np[quartile == q]
        counts.append(int(chosen.size))
        means.append(float(chosen.mean()) if chosen.size else None)
    return {"edges": [float(e) for e in edges], "mean": means, "n": counts}


def _masks(unit: Unit, fit: SearchResult | None, scoring: Scoring) -> np.ndarray:
    post = scoring.postprocessing
    if fit is None:
        masks = otsu_masks(unit.maps, unit.scoreable(post))
    else:
        masks = unit.maps > fit.threshold
    return process_mask(masks, unit.brain, post, scoring.volumetric)


def _slice_rows(units: list[Unit], protocol: str) -> list[dict[str, Any]]:
    rows = []
    for unit in units:
        for z, member in enumerate(unit.members):
            row = {"id": member.id, "label": member.label, **{m: math.nan for m in METRICS},
                   "patient": member.patient, "slice": member.slice}
            if unit.gt is not None:
                gt, amap = unit.gt[z], unit.maps[z]
                if protocol != "paper" or member.label == 1:
                    row["dice"] = dice(unit.masks[z], gt)
                # Under volume AUROC/AUPRC are per patient; under paper only for large lesions.
                if protocol in ("slice", "all") or (protocol == "paper" and int(gt.sum()) > MIN_TUMOUR_PIXELS):
                    row["auroc"] = pixel_auroc(amap, gt)
                    row["auprc"] = pixel_auprc(amap, gt)
            rows.append(row)
    return sorted(rows, key=lambda row: row["id"])


def _clusters(units: list[Unit], scoring: Scoring) -> tuple[list[str], str]:
    """The cluster of each unit with ground truth: what the bootstrap resamples and what the pooled
    ranking keeps apart. Patients (volume, or when every file names one), else images."""
    scored = [u for u in units if u.gt is not None]
    if scoring.volumetric:
        return [u.name for u in scored], "patient"
    if all(u.members[0].patient is not None for u in units):
        return [u.members[0].patient for u in scored], "patient"
    return [u.name for u in scored], "image"


def _gather(units: list[Unit], tumour: bool) -> np.ndarray:
    """The map values of the units' tumour (or other) pixels in one float32 array, written into
    place so that the pixels of a whole test split are held once."""
    picks = [u.gt if tumour else ~u.gt for u in units]
    out = np.empty(sum(int(p.sum()) for p in picks), dtype=np.float32)
    start = 0
    for unit, pick in zip(units, picks):
        values = unit.maps[pick]
        out[start : start + values.size] = values
        start += values.size
    return out


@dataclass
class _Pooled:
    """The pooled ranking of the units with ground truth and how they were grouped into clusters."""

    scored: list[Unit]  # the units with ground truth
    cluster: list[int]  # each scored unit's cluster
    n_clusters: int
    unit_name: str  # "patient" or "image"
    weights: np.ndarray | None  # (B, K) bootstrap counts
    ranking: Ranking


def _pooled(units: list[Unit], scoring: Scoring) -> _Pooled:
    """Pooled AUROC/AP over the pixels of the units with ground truth; the pixels are kept apart by
    patient (or image) when the bootstrap or the per-patient values need it."""
    scored = [u for u in units if u.gt is not None]
    names, unit_name = _clusters(units, scoring)
    if scoring.bootstrap or scoring.volumetric:
        index = {key: i for i, key in enumerate(sorted(set(names)))}
        cluster = [index[name] for name in names]
    else:
        index, cluster = {"all": 0}, [0] * len(scored)
    groups: list[list[Unit]] = [[] for _ in index]
    for unit, c in zip(scored, cluster):
        groups[c].append(unit)
    weights = resample_weights(len(index), scoring.bootstrap, scoring.seed) if scoring.bootstrap and scored else None
    ranking = ranking_scores([_gather(g, tumour=True) for g in groups], [_gather(g, tumour=False) for g in groups],
                             weights)
    return _Pooled(scored, cluster, len(index), unit_name, weights, ranking)


def _patient_rows(units: list[Unit], pooled: _Pooled, unit_dice: dict[int, float]) -> list[dict[str, Any]]:
    """metrics_volume.csv: one row per patient (volume protocol; the clusters are the patients)."""
    cluster_of = {u.name: c for u, c in zip(pooled.scored, pooled.cluster)}
    rows = []
    for u in units:
        c = cluster_of.get(u.name)
        rows.append({"patient": u.name, "n_slices": len(u.members),
                     "lesion_voxels": int(u.gt.sum()) if u.gt is not None else math.nan,
                     "dice": unit_dice.get(id(u), math.nan),
                     "auroc": math.nan if c is None else float(pooled.ranking.cluster_auroc[c]),
                     "auprc": math.nan if c is None else float(pooled.ranking.cluster_auprc[c])})
    return rows


def _dice_interval(pooled: _Pooled, unit_dice: dict[int, float]) -> list[float] | None:
    """95 % interval of the mean Dice over the Dice-scored units of the resampled clusters."""
    sums, counts = np.zeros(pooled.n_clusters), np.zeros(pooled.n_clusters)
    for unit, c in zip(pooled.scored, pooled.cluster):
        if id(unit) in unit_dice:
            sums[c] += unit_dice[id(unit)]
            counts[c] += 1
    return percentile_interval(resampled_means(pooled.weights, sums, counts))


def _threshold_fit(fit: SearchResult | None, scoring: Scoring) -> dict[str, Any] | None:
    if fit is None or scoring.rule == "fixed":
        return None
    return {"set": "this test set" if scoring.rule == "best" else scoring.val_dir,
            **({"fpr": scoring.fpr} if scoring.rule == "fpr" else {}),
            **{k: v for k, v in vars(fit).items() if k != "threshold" and v is not None}}


def score_units(units: list[Unit], scoring: Scoring, fit: SearchResult | None) -> Scores:
    """Threshold, post-process and score prepared units; ``fit`` is :func:`fit_threshold`'s
    threshold (None for otsu)."""
    from sklearn.metrics import roc_auc_score  # loaded on first use: it adds ~0.6 s to every process's start

    protocol = scoring.protocol
    for unit in units:
        unit.masks = _masks(unit, fit, scoring)
    rows = _slice_rows(units, protocol)
    members = [(unit, z, m) for unit in units for z, m in enumerate(unit.members)]
    labels = np.array([m.label for _, _, m in members])
    image_scores = np.array([image_score(unit.maps[z]) for unit, z, _ in members])
    healthy = [unit.masks[z].any() for unit, z, m in members
               if (unit.gt is not None and not unit.gt[z].any()) or (unit.gt is None and m.label == 0)]
    dice_units = _dice_units(units, protocol)
    unit_dice = {id(u): dice(u.masks, u.gt) for u in dice_units}
    with_lesion = [u for u in dice_units if u.gt.any()]
    pooled = _pooled(units, scoring)

    patients = _patient_rows(units, pooled, unit_dice) if scoring.volumetric else None
    per_item = patients if patients is not None else rows  # what the means are over
    dice_stats = _stats([item["dice"] for item in per_item])
    auprc_ci = None
    if pooled.weights is not None:
        dice_stats["ci95"] = _dice_interval(pooled, unit_dice)
        auprc_ci = percentile_interval(pooled.ranking.auprc_resampled)
    patient_names = {m.patient for _, _, m in members}
    summary: dict[str, Any] = {
        "protocol": protocol,
        "protocol_description": PROTOCOL_DESCRIPTIONS[protocol],
        "n_images": len(members),
        "n_healthy": int((labels == 0).sum()),
        "n_diseased": int((labels == 1).sum()),
        "n_ground_truth": sum(len(unit.members) for unit in units if unit.gt is not None),
        "dice": dice_stats,
        **{m: _stats([item[m] for item in per_item]) for m in ("auroc", "auprc")},
        "pixel_auroc_pooled": pooled.ranking.auroc,
        "pixel_auprc_pooled": pooled.ranking.auprc,
        "image_auroc": _two_class_score(roc_auc_score, labels == 1, image_scores),
        "image_score": f"{IMAGE_SCORE_PERCENTILE:g}th percentile of the anomaly map",
        "threshold_rule": scoring.rule,
        "threshold": None if fit is None else fit.threshold,
        "threshold_description": scoring.describe_rule(),
        "threshold_fit": _threshold_fit(fit, scoring),
        "postprocessing": scoring.postprocessing.as_dict(scoring.volumetric),
        "auroc_pooled": pooled.ranking.auroc,
        "auprc_pooled": pooled.ranking.auprc,
        "auprc_pooled_ci95": auprc_ci,
        "dice_by_size": {"unit": "voxels" if scoring.volumetric else "pixels",
                         **dice_by_size([int(u.gt.sum()) for u in with_lesion],
                                        [unit_dice[id(u)] for u in with_lesion])},
        "healthy_fp_rate": float(np.mean(healthy)) if healthy else None,
        "n_healthy_slices": len(healthy),
        "n_patients": None if None in patient_names else len(patient_names),
        "bootstrap": {"n": scoring.bootstrap, "seed": scoring.seed, "unit": pooled.unit_name,
                      "units": pooled.n_clusters if pooled.weights is not None else None},
    }
    return Scores(rows, patients, summary, units)
