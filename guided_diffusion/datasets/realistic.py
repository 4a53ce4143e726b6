"""A seeded BRATS-like set on real anatomy: the MNI152 template's tissue maps, deformed per patient.

The anatomy is the ICBM 2009a nonlinear symmetric template (1 mm) whose grey- and white-matter
probability maps and brain mask nilearn ships inside its wheel (``nilearn/datasets/data/``); nothing
is downloaded (``pip install .[realistic]``). CSF is the brain mask less grey and white matter.

Per patient (one 3-D slab of ``SLICES_PER_PATIENT`` axial slices, ``SLICE_SPACING_MM`` apart):

* anatomy: a random affine (scale, rotation, shift), a smooth random displacement field and a slab
  height drawn anew, and the template's tissue probabilities sampled through them;
* contrasts: each of t1, t1ce, t2, flair is the tissue mixture of textbook relative intensities
  (``TISSUE_CONTRAST``: WM > GM > CSF in T1, CSF > GM > WM in T2, CSF suppressed and GM above WM
  in FLAIR), each value jittered per patient;
* a tumour (in ``tumour_fraction`` of each split's patients): an irregular 3-D blob of random size
  and place in the brain that pushes the tissue around it aside (mass effect), with peritumoural
  oedema (BraTS label 2) reaching further into white matter, and in most a tumour core: an
  enhancing rim (4) around a necrotic centre (1), or a non-enhancing core (1). Lesion tissue is a
  partial blend of the tissue beneath and the compartment's intensity (``LESION_CONTRAST``), fading
  towards the oedema's edge, so its values overlap those of normal tissue in every channel;
  ``seg`` is exactly where a compartment was drawn;
* acquisition: a smooth multiplicative bias field and Gaussian noise per channel, then each
  channel divided by its brain's 99.5th percentile, clipped to [0, 1] and quantised to 1/255.

Files, names and splits are those of the cartoon generator (:mod:`.synthetic`), written by its
writers; whether a slice is diseased follows from the seg (a slab can miss part of its tumour).
Every patient draws from ``numpy.random.default_rng((seed, 2, split, patient))``: the output is a
function of the arguments alone.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from ..util.errors import UserError
from .layout import MODALITIES, TESTING, TRAINING, VALIDATION, check_no_stray_files, staged_output
from .synthetic import (
    SLICES_PER_PATIENT,
    SPLIT_ID,
    BratsItem,
    check_set_flags,
    fraction_count,
    plan_brats_leaves,
    write_brats_item,
)

TEMPLATE_PACKAGE = "nilearn"
TEMPLATE_FILES = {  # inside the package, ICBM 2009a nonlinear symmetric, 1 mm, uint8
    "brain": "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",  # skull-stripped T1: > 0 is brain
    "grey": "datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "white": "datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
FIELD_OF_VIEW_MM = 200.0  # the side of an image; the brain spans about 140 x 175 mm
SLICE_SPACING_MM = 8.0
BRAIN_CENTRE_MM = (0.0, -18.0)  # (x, y) of the template's brain centre in MNI space
SLAB_HEIGHTS_MM = (-5.0, 35.0)  # the slab's centre (MNI z): from the third ventricle to above the lateral ones

# Tissue intensities, relative (columns t1, t1ce, t2, flair), rows CSF, grey matter, white matter.
TISSUE_CONTRAST = np.array(
    [
        [0.20, 0.22, 1.00, 0.12],  # CSF: dark in T1, brightest in T2, suppressed in FLAIR
        [0.58, 0.58, 0.62, 0.62],  # grey matter
        [0.82, 0.80, 0.44, 0.52],  # white matter
    ]
)
# Healthy periventricular caps and bands: white matter beside CSF, brighter in T2 and FLAIR (same
# columns), scaled per patient by a random amount in [0, 1].
PERIVENTRICULAR_CONTRAST = np.array([-0.04, -0.04, 0.10, 0.22])
# Lesion compartments: the intensity a fully lesional voxel takes (same columns).
_OEDEMA, _NON_ENHANCING, _ENHANCING, _NECROTIC = range(4)
LESION_CONTRAST = np.array(
    [
        [0.52, 0.52, 0.82, 1.00],  # oedema: hypointense in T1, hyperintense in T2 and FLAIR
        [0.45, 0.47, 0.82, 0.74],  # non-enhancing tumour core
        [0.55, 0.95, 0.70, 0.72],  # enhancing rim: bright after contrast
        [0.28, 0.30, 0.92, 0.45],  # necrosis: fluid, dark in T1, bright in T2, partly suppressed in FLAIR
    ]
)
SEG_LABEL = np.array([2, 1, 4, 1])  # the BraTS label of each compartment: oedema 2, core 1, enhancing 4


@dataclass(frozen=True)
class Tumour:
    """One tumour in patient coordinates (mm): the oedema's radius and where its core ends."""

    centre: np.ndarray  # (3,) x, y, z in mm
    axes: np.ndarray  # (3,) relative semi-axes (mean 1)
    rotation: np.ndarray  # (3, 3)
    radius: float  # of the oedema, mm
    core: float  # core radius / oedema radius (0: oedema only)
    necrosis: float  # necrotic radius / oedema radius (0: none)
    enhancing: bool  # the core has an enhancing rim (else it is non-enhancing)
    mass_effect: float  # displaced volume / core volume
    oedema_strength: float
    core_strength: float
    contrast: np.ndarray  # (4 compartments, 4 channels), jittered LESION_CONTRAST


@dataclass
class Patient:
    """One rendered slab: ``channels`` (4, K, S, S) and ``lesion_free`` (the same without the lesion's
    intensities) as floats before normalisation, ``seg`` (K, S, S) of BraTS labels, ``brain`` (K, S, S)."""

    channels: np.ndarray
    lesion_free: np.ndarray
    seg: np.ndarray
    brain: np.ndarray


def generate_realistic(
    out: str,
    *,
    size: int = 64,
    n_train: int = 48,
    n_test: int = 16,
    n_val: int = 16,
    tumour_fraction: float = 0.5,
    seed: int = 0,
) -> dict:
    """Write ``out/brats/{training,testing,validation}/`` and ``out/brats/test_labels/`` like
    :func:`guided_diffusion.datasets.synthetic.generate` does; ``n_*`` count slices (4 per patient),
    ``tumour_fraction`` of each split's patients (rounded half up) has a tumour. Returns
    ``{"brats": slices written, "diseased": slices with tumour}``."""
    check_set_flags(size, n_train, n_test, n_val, tumour_fraction)
    sizes = {TRAINING: n_train, TESTING: n_test, VALIDATION: n_val}
    items = plan_brats_leaves(sizes)
    check_no_stray_files(out, [path for item in items for path in item.files()], ["brats"])
    template = load_template(_blur_mm(size))
    patients: dict[tuple[str, int], list[BratsItem]] = {}
    for item in items:
        patients.setdefault((item.split, item.patient_index), []).append(item)
    diseased = 0
    with staged_output(out) as staging:
        for split, n in sizes.items():
            n_patients = -(-n // SLICES_PER_PATIENT)
            order = np.random.default_rng([seed, 2, SPLIT_ID[split]]).permutation(n_patients)
            with_tumour = set(order[: fraction_count(n_patients, tumour_fraction)].tolist())
            for index in range(n_patients):
                rng = np.random.default_rng([seed, 2, SPLIT_ID[split], index])
                patient = render_patient(rng, template, size, tumour=index in with_tumour)
                images = to_unit_range(patient)
                for k, item in enumerate(patients[(split, index)]):
                    channels = {seq: images[c, k] for c, seq in enumerate(MODALITIES)}
                    write_brats_item(staging, item, channels, patient.seg[k].astype(np.float64))
                    diseased += bool(patient.seg[k].any())
    return {"brats": len(items), "diseased": diseased}


# ---------------------------------------------------------------------------
# The template.


@dataclass(frozen=True)
class Template:
    """Tissue probabilities (CSF, grey, white) and the periventricular weight (white matter within a few mm
    of CSF), (4, X, Y, Z) float32 in [0, 1], and the brain mask (X, Y, Z), blurred alike; ``origin``: MNI
    mm of voxel (0, 0, 0), 1 mm voxels."""

    tissues: np.ndarray
    brain: np.ndarray
    origin: np.ndarray


def template_path(name: str) -> str:
    """The path of one of ``TEMPLATE_FILES`` inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(TEMPLATE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the realistic set reads the MNI152 template that the {TEMPLATE_PACKAGE} package ships: "
                        f"expected it installed, found none (pip install '.[realistic]' or pip install nilearn)")
    path = os.path.join(list(spec.submodule_search_locations)[0], TEMPLATE_FILES[name])
    if not os.path.isfile(path):
        raise UserError(f"{path}: expected the MNI152 {name} map inside the {TEMPLATE_PACKAGE} package, found no file "
                        "(a nilearn release without its bundled template?)")
    return path


@functools.lru_cache(maxsize=2)
def load_template(blur_mm: float) -> Template:
    """The template's tissue maps, each blurred by a Gaussian of ``blur_mm`` (anti-aliasing for the
    coarser output grid) and cropped to the slab heights this generator samples."""
    volumes = {}
    for name in TEMPLATE_FILES:
        image = nib.load(template_path(name))
        data = np.asarray(image.dataobj)
        if name == "brain":
            origin = image.affine[:3, 3].astype(np.float64)
            z_lo = int(SLAB_HEIGHTS_MM[0] - 45.0 - origin[2])
            z_hi = int(SLAB_HEIGHTS_MM[1] + 45.0 - origin[2])
        volumes[name] = data
    crop = slice(max(z_lo, 0), z_hi)
    brain = (volumes["brain"][:, :, crop] > 0).astype(np.float32)
    grey = volumes["grey"][:, :, crop].astype(np.float32) / 255.0
    white = volumes["white"][:, :, crop].astype(np.float32) / 255.0
    csf = np.clip(brain - grey - white, 0.0, 1.0)
    periventricular = np.clip(2.0 * gaussian_filter(csf, 2.0) * white, 0.0, 1.0)
    maps = [gaussian_filter(m, blur_mm) if blur_mm > 0 else m for m in (csf, grey, white, periventricular, brain)]
    origin = origin + np.array([0.0, 0.0, crop.start])
    return Template(np.stack(maps[:4]), maps[4], origin)


def _blur_mm(size: int) -> float:
    """Anti-aliasing sigma for pixels of FIELD_OF_VIEW_MM / size mm (none at 1 mm or finer)."""
    spacing = FIELD_OF_VIEW_MM / size
    return 0.0 if spacing <= 1.0 else 0.42 * float(np.sqrt(spacing**2 - 1.0))


# ---------------------------------------------------------------------------
# One patient.


def patient_grid(size: int) -> np.ndarray:
    """Voxel centres of a slab in patient mm, (3, K, S, S): x along columns, y up the image (row 0 is
    anterior), z between slices, all centred on 0."""
    spacing = FIELD_OF_VIEW_MM / size
    u = (np.arange(size) - (size - 1) / 2.0) * spacing
    w = (np.arange(SLICES_PER_PATIENT) - (SLICES_PER_PATIENT - 1) / 2.0) * SLICE_SPACING_MM
    z, y, x = np.meshgrid(w, -u, u, indexing="ij")
    return np.stack([x, y, z])


def render_patient(rng: np.random.Generator, template: Template, size: int, tumour: bool) -> Patient:
    """Draw one patient's slab (see the module docstring); every random number comes from ``rng``."""
    grid = patient_grid(size)  # (3, K, S, S) mm
    to_template = _random_transform(rng, grid)
    tissues, brain = _sample(template, to_template(grid))
    contrast = np.concatenate([TISSUE_CONTRAST * rng.uniform(0.92, 1.08, size=TISSUE_CONTRAST.shape),
                               PERIVENTRICULAR_CONTRAST[None] * rng.uniform()])  # (4 maps, 4 channels)
    seg = np.zeros(grid.shape[1:], dtype=np.int64)
    lesion_free = np.einsum("tkij,tc->ckij", tissues, contrast)  # (4, K, S, S)
    channels = lesion_free.copy()
    if tumour:
        t = _random_tumour(rng, grid, tissues, brain)
        tissues, brain = _sample(template, to_template(_mass_effect(grid, t)))
        lesion_free = np.einsum("tkij,tc->ckij", tissues, contrast)
        seg, strength, compartment = _draw_tumour(rng, t, grid, tissues[2], brain, size)
        lesion = t.contrast[compartment].transpose(3, 0, 1, 2)  # (4, K, S, S)
        channels = lesion_free * (1.0 - strength) + lesion * strength
    # acquisition: the same bias field and noise for the image and its lesion-free twin
    bias = np.stack([np.exp(rng.uniform(0.05, 0.15) * _smooth_noise(rng, grid.shape[1:], size / 4.0))
                     for _ in MODALITIES])
    noise = rng.normal(0.0, 1.0, size=channels.shape) * rng.uniform(0.015, 0.03, size=(len(MODALITIES), 1, 1, 1))
    inside = brain > 0.5
    channels = np.where(inside, channels * bias + noise, 0.0)
    lesion_free = np.where(inside, lesion_free * bias + noise, 0.0)
    return Patient(channels, lesion_free, np.where(inside, seg, 0), inside)


def to_unit_range(patient: Patient) -> np.ndarray:
    """The written images (4, K, S, S): each channel over its brain's 99.9th percentile, in [0, 1],
    quantised to steps of 1/255 (an 8-bit scan)."""
    out = np.zeros_like(patient.channels)
    for c in range(out.shape[0]):
        values = patient.channels[c][patient.brain]
        scale = np.percentile(values, 99.9) if values.size else 1.0
        out[c] = np.clip(patient.channels[c] / max(scale, 1e-6), 0.0, 1.0)
    return np.round(out * 255.0) / 255.0


def _random_transform(rng: np.random.Generator, grid: np.ndarray):
    """Patient mm -> template (MNI) mm: scale, rotation and shift, plus a smooth displacement field."""
    scale = np.diag(rng.uniform(0.9, 1.1, size=3))
    rotation = _rotation(rng.uniform(-0.07, 0.07), rng.uniform(-0.07, 0.07), rng.uniform(-0.15, 0.15))
    matrix = rotation @ scale
    shift = np.array([BRAIN_CENTRE_MM[0] + rng.uniform(-3.0, 3.0), BRAIN_CENTRE_MM[1] + rng.uniform(-3.0, 3.0),
                      rng.uniform(*SLAB_HEIGHTS_MM)])
    lattice = rng.normal(0.0, rng.uniform(2.0, 5.0), size=(3, 4, 6, 6))  # mm, on a coarse lattice over the slab
    extent = np.abs(grid).reshape(3, -1).max(axis=1) + 1e-6

    def transform(points: np.ndarray) -> np.ndarray:  # (3, ...) -> (3, ...)
        flat = points.reshape(3, -1)
        where = [(flat[a] / extent[a] + 1.0) / 2.0 * (lattice.shape[1 + a] - 1) for a in (2, 1, 0)]
        displacement = np.stack([map_coordinates(lattice[a], where, order=3, mode="nearest") for a in range(3)])
        return (matrix @ flat + shift[:, None] + displacement).reshape(points.shape)
    return transform


def _rotation(about_x: float, about_y: float, about_z: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(about_x), np.sin(about_x), np.cos(about_y), np.sin(about_y), \
        np.cos(about_z), np.sin(about_z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _sample(template: Template, mni: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tissue maps (4, ...) and brain mask (...) at MNI mm points (3, ...), linearly interpolated."""
    index = mni.reshape(3, -1) - template.origin[:, None]
    tissues = np.stack([map_coordinates(m, index, order=1, mode="constant") for m in template.tissues])
    brain = map_coordinates(template.brain, index, order=1, mode="constant")
    return tissues.reshape((len(template.tissues),) + mni.shape[1:]), brain.reshape(mni.shape[1:])


def _random_tumour(rng: np.random.Generator, grid: np.ndarray, tissues: np.ndarray, brain: np.ndarray) -> Tumour:
    """Size, shape, place and make-up of a tumour; its centre lies in the brain, mostly in white matter."""
    radius = float(np.exp(rng.uniform(np.log(10.0), np.log(30.0))))
    weights = np.where(brain > 0.9, tissues[2] + 0.3 * tissues[1], 0.0).ravel()
    centre = grid.reshape(3, -1)[:, rng.choice(weights.size, p=weights / weights.sum())]
    # the slab holds part of the tumour: its centre anywhere from below the slab to above it
    half = (SLICES_PER_PATIENT - 1) / 2.0 * SLICE_SPACING_MM
    centre[2] = rng.uniform(-half - 0.9 * radius, half + 0.9 * radius)
    kind = rng.uniform()
    core = 0.0 if kind < 0.15 else rng.uniform(0.3, 0.7)  # 15 %: oedema only
    enhancing = kind >= 0.35  # 20 % a non-enhancing core, 65 % an enhancing rim
    necrosis = core * rng.uniform(0.3, 0.75) if enhancing and rng.uniform() < 0.8 else 0.0
    return Tumour(
        centre=centre,
        axes=np.exp(rng.normal(0.0, 0.15, size=3)),
        rotation=_rotation(*rng.uniform(-np.pi, np.pi, size=3)),
        radius=radius,
        core=core,
        necrosis=necrosis,
        enhancing=enhancing,
        mass_effect=rng.uniform(0.2, 1.0),
        oedema_strength=rng.uniform(0.6, 0.95),
        core_strength=rng.uniform(0.6, 0.95),
        contrast=LESION_CONTRAST * rng.uniform(0.88, 1.12, size=LESION_CONTRAST.shape),
    )


def _mass_effect(grid: np.ndarray, t: Tumour) -> np.ndarray:
    """Where each voxel's tissue came from: the tumour core pushes tissue outwards, keeping volume
    (a sphere of ``mass_effect`` times the core's volume inserted at the centre)."""
    if t.core == 0.0:
        return grid
    d = grid - t.centre.reshape(3, 1, 1, 1)
    r = np.sqrt((d**2).sum(axis=0)) + 1e-9
    inserted = t.mass_effect * (t.core * t.radius) ** 3
    source = np.cbrt(np.maximum(r**3 - inserted, 0.0))
    return t.centre.reshape(3, 1, 1, 1) + d * (source / r)


def _draw_tumour(rng: np.random.Generator, t: Tumour, grid: np.ndarray, white: np.ndarray, brain: np.ndarray,
                 size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """seg (K, S, S), the blend strength in [0, 1) and the compartment index of every voxel."""
    d = np.einsum("ab,bkij->akij", t.rotation.T, grid - t.centre.reshape(3, 1, 1, 1)) / t.axes.reshape(3, 1, 1, 1)
    rho = np.sqrt((d**2).sum(axis=0)) / t.radius  # 1 on the mean oedema boundary
    irregular = 1.0 + 0.18 * _smooth_noise(rng, grid.shape[1:], max(1.0, 0.3 * t.radius * size / FIELD_OF_VIEW_MM))
    rho = rho / irregular
    oedema_reach = rho / (1.0 + 0.25 * (white - 0.5))  # oedema spreads along white matter
    inside = brain > 0.5
    compartment = np.full(rho.shape, _OEDEMA)
    lesion = (oedema_reach <= 1.0) & inside
    core = (rho <= t.core) & inside
    compartment[core] = _ENHANCING if t.enhancing else _NON_ENHANCING
    compartment[(rho <= t.necrosis) & inside] = _NECROTIC
    seg = np.where(lesion | core, SEG_LABEL[compartment], 0)
    texture = 1.0 + 0.25 * _smooth_noise(rng, grid.shape[1:], 1.0)
    fade = np.clip((1.0 - oedema_reach) / 0.3, 0.35, 1.0)  # fainter towards the oedema's edge
    strength = np.where(compartment == _OEDEMA, t.oedema_strength * fade, t.core_strength) * texture
    strength = np.where(seg > 0, np.clip(strength, 0.05, 0.98), 0.0)
    return seg, strength, compartment


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation over a slab (K, S, S), smoothed in
    plane by ``sigma_px`` pixels and across slices as far as the slice spacing allows."""
    spacing = FIELD_OF_VIEW_MM / shape[-1]
    sigma = (sigma_px * spacing / SLICE_SPACING_MM, sigma_px, sigma_px)
    noise = gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return noise / (noise.std() + 1e-12)
