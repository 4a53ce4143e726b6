"""Model bundles (export_bundle.py) and detection on whole volumes (detect.py), with tiny untrained networks.

The geometry of detect.py's NIfTI output is read back with a second, independent reader (SimpleITK);
the maps are compared bit for bit with prepare_brats.py followed by the translation script.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch as th
from cpu_helpers import TINY_CLASSIFIER, TINY_UNET, one_thread  # noqa: F401  (one_thread is autouse)

from guided_diffusion.datasets.synthetic import generate_volumes
from guided_diffusion.evaluation.results import load_result
from guided_diffusion.pipeline.bundle import BY_SCRIPT, load_bundle
from guided_diffusion.pipeline.methods.dae import create_dae
from guided_diffusion.pipeline.methods.fpgan import create_fpgan
from guided_diffusion.pipeline.methods.vae import create_vae
from guided_diffusion.pipeline.networks import create_classifier_net, create_unet_and_diffusion
from guided_diffusion.util import checkpoint as ckpt
from guided_diffusion.util.flagspec import from_dict, to_argv

REPO = Path(__file__).resolve().parents[1]
SIZE = 16


def _main(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


export_main, detect_main = _main("export_bundle"), _main("detect")

_UNET = {**TINY_UNET, **TINY_CLASSIFIER, "image_size": SIZE, "learn_sigma": True, "noise_level": [3],
         "classifier_scale": 10.0, "progress": False}
METHODS = {  # name: (script, flags, networks to save as checkpoints)
    "ddim": ("classifier_sample_known", {**_UNET, "use_ddim": True}, ("model", "classifier")),
    "ddpm": ("classifier_sample_known", {**_UNET, "use_ddim": False}, ("model", "classifier")),
    "cfg": ("classifier_sample_known", {**_UNET, "use_ddim": True, "guidance": "cfg", "guidance_scale": 2.0},
            ("model",)),
    "simplex": ("classifier_sample_known", {**_UNET, "guidance": "none", "noise_type": "simplex",
                                            "simplex_octaves": 2}, ("model",)),
    "vae": ("vae_translate", {"image_size": SIZE, "vae_width": 4, "vae_depth": 2, "latent_dim": 8,
                              "latent_disc_width": 8}, ("model",)),
    "fpgan": ("fpgan_translate", {"image_size": SIZE, "fpgan_width": 4, "fpgan_res_blocks": 1, "fpgan_d_width": 4,
                                  "fpgan_d_depth": 2}, ("model",)),
    "dae": ("dae_translate", {k: v for k, v in {**TINY_UNET, "image_size": SIZE, "class_cond": False}.items()
                              if k in ("image_size", "num_channels", "num_res_blocks", "channel_mult",
                                       "attention_resolutions", "num_heads", "class_cond")}, ("model",)),
    "intensity": ("intensity_translate", {"image_size": SIZE, "channel": "flair"}, ()),
}


def _config(script: str, flags: dict):
    cls = BY_SCRIPT[script].config
    return from_dict(cls, {k: v for k, v in flags.items() if k in _flag_names(cls)})


def _flag_names(cls) -> set[str]:
    from guided_diffusion.util.flagspec import _collect
    return set(_collect(cls))


def _save_networks(name: str, folder: Path) -> dict:
    """Tiny untrained networks of method ``name`` saved as checkpoints: {flag: path}."""
    script, flags, nets = METHODS[name]
    cfg = _config(script, flags)
    folder.mkdir(parents=True, exist_ok=True)
    th.manual_seed(0)
    paths = {}
    if "model" in nets:
        if script == "classifier_sample_known":
            model, _ = create_unet_and_diffusion(cfg.data, cfg.model, cfg.diffusion,
                                                 uncond_label=cfg.sampling.guidance == "cfg")
        elif script == "vae_translate":
            model = create_vae(cfg.data, cfg.vae)[0]
        elif script == "fpgan_translate":
            model = create_fpgan(cfg.data, cfg.fpgan)[0]
        else:
            model = create_dae(cfg.data, cfg.model)
        paths["model_path"] = [str(folder / "ema_0.9999_000000.pt")]
        ckpt.save(model.state_dict(), paths["model_path"][0])
    if "classifier" in nets:
        classifier, _ = create_classifier_net(cfg.data, cfg.classifier, cfg.diffusion)
        paths["classifier_path"] = str(folder / "model000000.pt")
        ckpt.save(classifier.state_dict(), paths["classifier_path"])
    return paths


def _export(name: str, tmp: Path, *extra: str, **overrides) -> Path:
    script, flags, _ = METHODS[name]
    cfg = _config(script, {**flags, **_save_networks(name, tmp / f"{name}_ckpt"), **overrides})
    out = tmp / f"{name}_bundle"
    assert export_main(["--out", str(out), "--method", script, *to_argv(cfg), *extra]) == 0
    return out


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), lines
    return lines[-1]


# ------------------------------------------------------------------------------------------ bundles


@pytest.mark.parametrize("name", list(METHODS))
def test_every_translating_method_can_be_bundled_and_loaded(name, tmp_path):
    bundle = _export(name, tmp_path, "--threshold", "0.25")
    record = json.loads((bundle / "bundle.json").read_text())
    script, flags, nets = METHODS[name]
    assert record["method"]["script"] == script and record["dataset"] == "brats"
    files = {"model": "model.pt", "classifier": "classifier.pt"}
    assert sorted(record["files"]) == sorted(files[n] for n in nets)
    assert sorted(os.listdir(bundle)) == sorted(["bundle.json", *record["files"]])
    for file, digest in record["files"].items():  # the hash of the copied bytes, the bytes of the source
        import hashlib
        assert digest == hashlib.sha256((bundle / file).read_bytes()).hexdigest()
        source = record["weights"][file[:-3]]["source"]
        assert (bundle / file).read_bytes() == Path(source).read_bytes()
    if "model" in nets:
        assert record["weights"]["model"]["weights"] == "ema" and record["weights"]["model"]["ema_rate"] == "0.9999"
    if "classifier" in nets:
        assert record["weights"]["classifier"]["weights"] == "raw"
    assert record["threshold"]["rule"] == "fixed" and record["threshold"]["value"] == 0.25
    assert record["preprocessing"]["slice_range"] == [80, 128] and record["preprocessing"]["image_size"] == SIZE
    # every flag comes back, the checkpoints pointing into the bundle
    loaded = load_bundle(str(bundle))
    expected = _config(script, {**flags, **{k: v for k, v in {
        "model_path": [str(bundle / "model.pt")] if "model" in nets else None,
        "classifier_path": str(bundle / "classifier.pt") if "classifier" in nets else None}.items() if v},
        "threshold": "0.25"})
    assert loaded.config == expected
    method = loaded.build_translator(th.device("cpu"))  # weights load (weights_only) into the networks
    x = th.rand(2, 4, SIZE, SIZE)
    out = method(x, ["000001", "000002"], None)
    healthy = out[0] if isinstance(out, tuple) else out
    assert healthy.shape == x.shape and th.isfinite(healthy).all()
    assert record["method"]["map"] == {}  # the paper's map
    if name == "ddim":
        assert record["method"]["sampler"] == "DDIM" and record["method"]["classifier_scale"] == 10.0
        assert record["method"]["noise_level"] == [3] and record["method"]["levers"] == {}


def test_the_bundles_method_names_the_levers_and_the_map_that_are_on(tmp_path):
    bundle = _export("ddim", tmp_path, "--threshold", "0.25", autoddpm=True, autoddpm_quantile=0.9,
                     scale_schedule="linear", map_residual="ssim")
    method = json.loads((bundle / "bundle.json").read_text())["method"]
    assert method["levers"] == {"autoddpm": True, "autoddpm_quantile": 0.9, "scale_schedule": "linear"}
    assert method["map"] == {"map_residual": "ssim"}


def test_export_takes_the_network_flags_from_the_checkpoints(tmp_path):
    """Data, checkpoints, L and s are enough: the rest comes from the flags saved beside each
    checkpoint, as for the translation script itself."""
    from guided_diffusion.pipeline.methods.diffusion import ClassifierTrainConfig, ImageTrainConfig
    from guided_diffusion.util.flagspec import flag_dict
    script, flags, _ = METHODS["ddim"]
    paths = _save_networks("ddim", tmp_path / "ckpt")
    for config_cls, name in ((ImageTrainConfig, "image_train"), (ClassifierTrainConfig, "classifier_train")):
        saved = flag_dict(from_dict(config_cls, {k: v for k, v in flags.items() if k in _flag_names(config_cls)}))
        (tmp_path / "ckpt" / f"flags_{name}.json").write_text(json.dumps(saved))
    out = tmp_path / "bundle"
    assert export_main(["--out", str(out), "--method", script, "--model_path", *paths["model_path"],
                        "--classifier_path", paths["classifier_path"], "--noise_level", "3", "--use_ddim", "True",
                        "--classifier_scale", "10", "--threshold", "0.25"]) == 0
    loaded, full = load_bundle(str(out)).config, _config(script, flags)
    assert loaded.model == full.model and loaded.classifier == full.classifier and loaded.diffusion == full.diffusion
    assert loaded.data.image_size == SIZE


def test_a_changed_bundle_file_is_refused(tmp_path, capsys):
    bundle = _export("vae", tmp_path, "--threshold", "0.5")
    with open(bundle / "model.pt", "ab") as f:
        f.write(b"\0")
    assert detect_main(["--bundle", str(bundle), "-i", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    line = _error(capsys)
    assert str(bundle / "model.pt") in line and "SHA-256" in line


def test_export_refuses_a_rule_without_its_number_and_an_existing_folder(tmp_path, capsys):
    assert export_main(["--out", str(tmp_path / "b"), "--method", "intensity_translate", "--image_size", "16"]) == 2
    assert "--threshold auto" in _error(capsys)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    assert export_main(["--out", str(tmp_path / "full"), "--method", "intensity_translate", "--threshold",
                        "otsu"]) == 2
    assert "--out" in _error(capsys) and (tmp_path / "full" / "x").read_text() == "keep"


# ------------------------------------------------------------------------------------------ detection


def test_detect_equals_prepare_brats_then_translation_bit_for_bit(tmp_path):
    """A raw 2020 patient (its seg named like patient 355's) through detect.py gives the very maps of
    prepare_brats.py followed by classifier_sample_known.py (guided DDIM, tiny untrained networks)."""
    folders = generate_volumes(str(tmp_path / "raw"), release="2020", n_patients=1, size=SIZE, seed=3)
    patient = Path(folders[0])
    seg = patient / f"{patient.name}_seg.nii.gz"
    seg.rename(patient / "W39_1998.09.19_Segm.nii.gz")
    prepare = _main("prepare_brats")
    assert prepare(["--src", str(patient.parent), "--out", str(tmp_path / "prep"), "--slice_range", "100,104",
                    "--test_fraction", "1", "--val_fraction", "0", "--progress", "False"]) == 0
    script, flags, _ = METHODS["ddim"]
    paths = _save_networks("ddim", tmp_path / "ckpt")
    cfg = _config(script, {**flags, **paths, "batch_size": 2, "data_dir": str(tmp_path / "prep" / "testing"),
                           "output_dir": str(tmp_path / "translated")})
    translate = _main("classifier_sample_known")
    translate([*to_argv(cfg), "--log_dir", str(tmp_path / "log")])  # main returns the summary
    bundle = tmp_path / "bundle"
    assert export_main(["--out", str(bundle), "--method", script, *to_argv(cfg), "--threshold", "0.7"]) == 0
    assert json.loads((bundle / "bundle.json").read_text())["preprocessing"]["slice_range"] == [100, 104]
    assert detect_main(["--bundle", str(bundle), "--input", str(patient), "--output", str(tmp_path / "out"),
                        "--batch_size", "2", "--progress", "False"]) == 0
    maps = nib.load(tmp_path / "out" / f"{patient.name}_anomaly.nii.gz").get_fdata(dtype=np.float32)
    mask = np.asarray(nib.load(tmp_path / "out" / f"{patient.name}_mask.nii.gz").dataobj)
    results = [load_result(p) for p in sorted((tmp_path / "translated").glob("*.npz"))]
    assert [int(r["slice"]) for r in results] == list(range(100, 105))
    for r in results:
        z = int(r["slice"])
        assert np.array_equal(maps[:, :, z], r["anomaly"]), z  # bit for bit
        assert np.array_equal(mask[:, :, z], (r["anomaly"] > np.float32(0.7)).astype(np.uint8))
    outside = np.ones(maps.shape[2], bool)
    outside[100:105] = False
    assert not maps[:, :, outside].any() and not mask[:, :, outside].any()
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert rows[0]["patient"] == patient.name and rows[0]["dice_3d"] != ""  # the Segm file is its seg


def _write_volume(path: Path, array: np.ndarray, affine: np.ndarray, code: int = 1) -> None:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=code)
    image.set_sform(affine, code=code)
    nib.save(image, path)


SHAPE = (13, 11, 20)  # in-plane smaller than --image_size 16: padded, and cut back
TUMOUR = (slice(4, 7), slice(3, 6), slice(8, 12))  # 3 x 3 x 4 = 36 voxels inside the slice range 5..14
OUTSIDE = (slice(4, 6), slice(3, 5), slice(17, 18))  # tumour outside the range: never in the mask


def _affine() -> np.ndarray:
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 1.1, 2.5])
    affine[:3, 3] = (-40.0, 12.5, 7.0)
    return affine


def _write_patient(folder: Path, names: dict[str, str], affine: np.ndarray | None = None, **broken) -> dict:
    """A synthetic 3-D patient: brain 300 (FLAIR), tumour 900 at TUMOUR and OUTSIDE; seg 1 there."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = _affine() if affine is None else affine
    brain = np.zeros(SHAPE, np.int16)
    brain[1:-1, 1:-1, 2:-2] = 300
    paths = {}
    for seq, name in names.items():
        volume = brain.copy()
        if seq == "flair":
            volume[TUMOUR] = 900
            volume[OUTSIDE] = 900
        if seq == "seg":
            volume = np.zeros(SHAPE, np.uint8)
            volume[TUMOUR] = 2
            volume[OUTSIDE] = 2
        paths[seq] = folder / name
        kind = broken.get(seq)
        if kind == "shape":
            volume = volume[:-1]
        if kind == "2d":
            volume = volume[:, :, 0]
        _write_volume(paths[seq], volume, affine + (np.diag([0, 0, 0.5, 0]) if kind == "affine" else 0))
    return paths


def _names(patient: str, sep: str = "_", words=("t1", "t1ce", "t2", "flair", "seg")) -> dict[str, str]:
    return {seq: f"{patient}{sep}{word}.nii.gz" for seq, word in zip(("t1", "t1ce", "t2", "flair", "seg"), words)}


@pytest.fixture(scope="module")
def intensity_bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("intensity")
    return _export("intensity", tmp, "--threshold", "0.5", "--slice_range", "5,14")


def test_detect_writes_the_input_space_and_the_tumour_voxels(intensity_bundle, tmp_path):
    """The FLAIR intensity baseline's map is the normalised FLAIR: a tumour at known voxels of a synthetic
    patient (rotated, anisotropic voxels, 13 x 11 slices padded to 16) lands at the same voxels of the
    mask, read back by SimpleITK, whose origin, spacing and direction are those of the input."""
    import SimpleITK as sitk

    src = tmp_path / "release"
    p2021 = _write_patient(src / "BraTS2021_00007", _names("BraTS2021_00007"))
    _write_patient(src / "BraTS-GLI-00002-001", _names("BraTS-GLI-00002-001", "-", ("t1n", "t1c", "t2w", "t2f", "seg")))
    out = tmp_path / "out"
    assert detect_main(["--bundle", str(intensity_bundle), "-i", str(src), "-o", str(out), "--overlay", "True",
                        "--progress", "False"]) == 0
    expected = np.zeros(SHAPE, np.uint8)
    expected[TUMOUR] = 1
    reference = sitk.ReadImage(str(p2021["flair"]))
    for name in ("BraTS2021_00007", "BraTS-GLI-00002-001"):
        for kind in ("mask", "anomaly"):
            image = sitk.ReadImage(str(out / f"{name}_{kind}.nii.gz"))
            assert np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
            assert np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-5)
            assert np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-5)
            assert image.GetSize() == reference.GetSize()
        mask = np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{name}_mask.nii.gz"))), (2, 1, 0))
        assert mask.dtype == np.uint8 and np.array_equal(mask, expected)
        written = nib.load(out / f"{name}_anomaly.nii.gz")
        assert written.get_data_dtype() == np.float32
        assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 1
        amap = written.get_fdata(dtype=np.float32)
        assert amap[5, 4, 9] == 1.0 and amap[2, 2, 9] == np.float32(300 / 900) and amap[5, 4, 17] == 0.0
        assert (out / f"{name}_overlay.png").stat().st_size > 0
    rows = {r["patient"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert sorted(rows) == ["BraTS-GLI-00002-001", "BraTS2021_00007"]
    row = rows["BraTS2021_00007"]
    assert float(row["lesion_ml"]) == pytest.approx(36 * 0.9 * 1.1 * 2.5 / 1000, rel=1e-5)
    assert int(row["lesion_voxels"]) == 36 and int(row["positive_slices"]) == 4
    assert float(row["dice_3d"]) == pytest.approx(2 * 36 / (36 + 40), rel=1e-5)  # 4 seg voxels out of range
    assert float(row["image_score"]) == pytest.approx(1.0)

    # a rerun skips both finished patients: nothing is rewritten
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    assert detect_main(["--bundle", str(intensity_bundle), "-i", str(src), "-o", str(out),
                        "--progress", "False"]) == 0
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}


def test_detect_makes_the_map_with_the_bundles_map_flags(intensity_bundle, tmp_path):
    """A bundle exported with --map_smooth 1 smooths each padded slice's map before it is cut back."""
    from scipy import ndimage

    from guided_diffusion.datasets.common import crop_from_size, pad_to_size
    _write_patient(tmp_path / "release" / "BraTS2021_00007", _names("BraTS2021_00007"))
    smooth = _export("intensity", tmp_path, "--threshold", "0.5", "--slice_range", "5,14", map_smooth=1.0)
    record = json.loads((smooth / "bundle.json").read_text())
    assert record["flags"]["map_smooth"] == 1.0 and record["method"]["map"] == {"map_smooth": 1.0}
    assert "levers" not in record["method"]  # a diffusion translation's
    maps = {}
    for name, bundle in (("plain", intensity_bundle), ("smooth", smooth)):
        assert detect_main(["--bundle", str(bundle), "-i", str(tmp_path / "release"), "-o", str(tmp_path / name),
                            "--progress", "False"]) == 0
        maps[name] = nib.load(tmp_path / name / "BraTS2021_00007_anomaly.nii.gz").get_fdata(dtype=np.float32)
    height, width = SHAPE[:2]
    for k in range(5, 15):  # the slice range; the plain map is the FLAIR, 0 in the padding
        expected = crop_from_size(ndimage.gaussian_filter(pad_to_size(maps["plain"][:, :, k], SIZE), 1.0), height, width)
        np.testing.assert_allclose(maps["smooth"][:, :, k], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(maps["smooth"], maps["plain"])


def test_detect_reads_four_files_given_by_modality(intensity_bundle, tmp_path, capsys):
    paths = _write_patient(tmp_path / "scans", _names("case7"))
    out = tmp_path / "out"
    argv = ["--bundle", str(intensity_bundle), "-i", *(f"{seq}={paths[seq]}" for seq in ("t1", "t1ce", "t2", "flair")),
            "-o", str(out), "--progress", "False"]
    assert detect_main(argv) == 0
    mask = np.asarray(nib.load(out / "case7_mask.nii.gz").dataobj)
    assert mask[TUMOUR].all() and int(mask.sum()) == 36
    assert next(csv.DictReader(open(out / "summary.csv")))["dice_3d"] == ""  # no seg given
    # another bundle's rerun into the same folder would skip this patient and mix the rows: refused
    other = _export("intensity", tmp_path, "--threshold", "0.7", "--slice_range", "5,14")
    before = (out / "case7_mask.nii.gz").read_bytes()
    assert detect_main([*argv[:1], str(other), *argv[2:]]) == 2
    assert "another bundle" in _error(capsys) and (out / "case7_mask.nii.gz").read_bytes() == before


@pytest.mark.parametrize("problem", ["missing", "shape", "affine", "2d"])
def test_detect_names_the_bad_file(problem, intensity_bundle, tmp_path, capsys):
    names = _names("BraTS2021_00001")
    broken = {"shape": {"t2": "shape"}, "affine": {"t1ce": "affine"}, "2d": {"t1": "2d"}}.get(problem, {})
    paths = _write_patient(tmp_path / "BraTS2021_00001", names, **broken)
    if problem == "missing":
        paths["flair"].unlink()
    out = tmp_path / "out"
    assert detect_main(["--bundle", str(intensity_bundle), "-i", str(tmp_path / "BraTS2021_00001"), "-o", str(out),
                        "--progress", "False"]) == 2
    line = _error(capsys)
    bad = {"missing": "flair", "shape": "t2", "affine": "t1ce", "2d": "t1"}[problem]
    assert str(paths[bad]) in line, line
    assert not out.exists() or not any(out.glob("*.nii.gz"))


def test_detect_refuses_a_bundle_for_another_dataset(tmp_path, capsys):
    bundle = _export("intensity", tmp_path, "--threshold", "0.5", dataset="chexpert", channel="xray")
    assert detect_main(["--bundle", str(bundle), "-i", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    line = _error(capsys)
    assert str(bundle / "bundle.json") in line and "chexpert" in line


def test_torchrun_shares_the_patients_and_writes_what_one_process_writes(intensity_bundle, tmp_path):
    """Two processes (torchrun, gloo on the CPU): rank 0 takes patients 0 and 2, rank 1 patient 1; the files
    are byte for byte those of one process, and summary.csv holds every patient once."""
    import subprocess
    import sys

    from guided_diffusion.util.dist_util import _free_port

    src = tmp_path / "release"
    for k in range(3):
        _write_patient(src / f"BraTS2021_0000{k}", _names(f"BraTS2021_0000{k}"))
    script = str(REPO / "scripts" / "detect.py")

    def argv(out):
        return [script, "--bundle", str(intensity_bundle), "-i", str(src), "-o", str(out), "--progress", "False"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert detect_main(argv(tmp_path / "one")[1:]) == 0
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(_free_port()), *argv(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    assert "rank 0: 2 of 3 patients" in two.stdout and "rank 1: 1 of 3 patients" in two.stdout
    names = sorted(p.name for p in (tmp_path / "one").iterdir() if p.is_file())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir() if p.is_file())
    assert len(names) == 7  # 3 x (anomaly, mask) and summary.csv
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
