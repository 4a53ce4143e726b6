"""report.html (guided_diffusion/evaluation/report.py) looked at as a person would, in a real headless
Chromium driven over the DevTools protocol (playwright with the system's /usr/bin/chromium; no browser
is downloaded), and the panels it links to: the mask of the evaluation that produced the numbers, one
colour scale per run with its colour bar.

The run is written by hand through save_result: three patients of three 16-pixel slices whose anomaly
maps are 0 except on marked blocks, so every Otsu mask is exactly its marked block and the patients'
Dice are known: p0 marks its tumour exactly (1), p1 adds 16 false pixels (2*32 / (48 + 32) = 0.8),
p2 adds 48 (2*32 / (80 + 32) = 4/7).
"""
import csv
import importlib.util
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guided_diffusion.evaluation.report import REPORT_HTML, SUMMARY_KEYS, write_tune_report
from guided_diffusion.evaluation.results import heat_colormap, method_name, panel_title, save_result

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SIZE, TILE, GAP, TITLE, CAPTION = 16, 128, 4, 16, 12
ZOOM = TILE // SIZE
PATIENT_DICE = {"p0": 1.0, "p1": 0.8, "p2": 64 / 112}
PEAK = {"p0": 1.0, "p1": 1.5, "p2": 2.0}  # each patient's map value: the run's scale is 0..2


def _script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _write_run(folder: Path) -> dict:
    """The hand-made run; returns {id: (anomaly map, ground truth)}."""
    cases = {}
    false_pixels = {"p0": 0, "p1": 16, "p2": 48}
    for p, patient in enumerate(PEAK):
        for z in range(3):
            gt = np.zeros((SIZE, SIZE), np.uint8)
            amap = np.zeros((SIZE, SIZE), np.float32)
            if z:
                gt[2:6, 2:6] = 1  # 16 tumour pixels on slices 1 and 2
                amap[gt == 1] = PEAK[patient]
            if z == 1 and false_pixels[patient]:
                amap[8 : 8 + false_pixels[patient] // 8, 8:16] = PEAK[patient]  # false positives
            x = np.full((4, SIZE, SIZE), 0.5, np.float32)
            x[:, :, 0] = 0  # a background column: outside the brain
            image_id = f"{patient}_s{z}"
            save_result(folder, image_id, input=x, healthy=x, anomaly=amap, label=int(z > 0), ground_truth=gt,
                        patient=patient, slice=z)
            cases[image_id] = (amap, gt.astype(bool))
    return cases


@pytest.fixture
def run_dir(tmp_path):
    folder = tmp_path / "run"
    cases = _write_run(folder)
    return folder, cases


def _tile(panel: np.ndarray, row: int, col: int) -> np.ndarray:
    """The (TILE, TILE, 3) tile at (row, col) of a panel of 16-pixel images (layout of render_panel)."""
    top = TITLE + GAP + row * (CAPTION + TILE + GAP) + CAPTION
    left = GAP + col * (TILE + GAP)
    return panel[top : top + TILE, left : left + TILE]


def _panel(folder: Path, image_id: str) -> np.ndarray:
    with Image.open(folder / f"{image_id}.png") as im:
        return np.asarray(im.convert("RGB"))


# ------------------------------------------------------------------------------------------------ panels


def test_panels_show_the_evaluated_mask_on_one_colour_scale(run_dir):
    folder, cases = run_dir
    evaluate = _script("evaluate")
    assert evaluate([str(folder), "--protocol", "slice", "--threshold", "best"]) == 0
    threshold = json.loads((folder / "summary.json").read_text())["threshold"]
    assert 0 <= threshold < 1  # the oracle marks every block, as Otsu does
    for image_id, (amap, gt) in cases.items():
        panel = _panel(folder, image_id)
        shown = _tile(panel, 2, 2)[::ZOOM, ::ZOOM, 0] > 127  # row 3: map, colour bar, mask, ground truth
        np.testing.assert_array_equal(shown, amap > threshold, err_msg=image_id)
        # the map on the run's scale 0..2, not its own: p0's peak of 1 is the middle of the ramp
        np.testing.assert_array_equal(_tile(panel, 2, 0)[::ZOOM, ::ZOOM], heat_colormap(amap / 2.0), err_msg=image_id)
        bar = _tile(panel, 2, 1)  # the colour bar: hot at the top, cold at the bottom
        np.testing.assert_array_equal(bar[0, 0], heat_colormap(np.array([1.0]))[0])
        np.testing.assert_array_equal(bar[-1, 0], heat_colormap(np.array([0.0]))[0])
    # another evaluation redraws the panels: components under 20 pixels dropped leave only p2's 48 false pixels
    assert evaluate([str(folder), "--protocol", "slice", "--threshold", "best", "--min_component", "20"]) == 0
    threshold = json.loads((folder / "summary.json").read_text())["threshold"]
    for image_id, (amap, gt) in cases.items():
        shown = _tile(_panel(folder, image_id), 2, 2)[::ZOOM, ::ZOOM, 0] > 127
        expected = (amap > threshold) & ~gt if image_id == "p2_s1" else np.zeros_like(gt)
        np.testing.assert_array_equal(shown, expected, err_msg=image_id)
        assert image_id == "p2_s1" or not shown.any()


def test_panel_title_names_patient_slice_and_method():
    flags = {"noise_level": 500, "classifier_scale": 100.0, "use_ddim": True}
    assert method_name({"flags": flags}) == "DDIM, L=500, s=100.0"
    assert method_name({"method": "DDIM (paper)", "flags": flags}) == "DDIM (paper) (L=500, s=100.0)"
    cfg = {"noise_level": 300, "guidance": "cfg", "guidance_scale": 3.0}
    assert method_name({"method": "CFG", "flags": cfg}) == "CFG (L=300, W=3.0)"
    assert panel_title("BraTS20_001_080", 1, "BraTS20_001", 80, "CFG (L=300, W=3.0)", "paper: Dice 0.5") == (
        "BraTS20_001_080   patient BraTS20_001 slice 80   label 1   CFG (L=300, W=3.0)   paper: Dice 0.5")
    assert panel_title("a", 0) == "a   label 0"


# ------------------------------------------------------------------------------------------------ the page


def _lookup(summary, dotted):
    value = summary
    for key in dotted.split("."):
        value = value[int(key)] if isinstance(value, list) else value.get(key)
    return value


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    with sync_api.sync_playwright() as p:
        # a fresh profile per launch (playwright's temporary user-data-dir), nothing that reaches out
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()


def _open(browser, page_path: Path):
    """Open a page from disk; return (page, console errors, requested URLs)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(page_path.resolve().as_uri(), wait_until="load")
    return page, errors, requests


def _inside(urls, folder: Path) -> list[str]:
    root = folder.resolve().as_uri() + "/"
    return [u for u in urls if not u.startswith(root)]


def test_run_page_in_a_browser(run_dir, browser):
    folder, _ = run_dir
    assert _script("evaluate")([str(folder), "--protocol", "volume", "--bootstrap", "50"]) == 0
    summary = json.loads((folder / "summary.json").read_text())
    page, errors, requests = _open(browser, folder / REPORT_HTML)
    # every lazy thumbnail and plot, and a patient's slice list, really loaded
    page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
    page.mouse.wheel(0, 5000)
    page.wait_for_load_state("networkidle")
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert page.evaluate("document.images.length") == 2 + 3  # two plots, one thumbnail per patient

    cells = page.eval_on_selector_all("[data-key]", "els => els.map(e => [e.dataset.key, e.dataset.value || null, "
                                                    "e.textContent])")
    shown = {key: (value, text) for key, value, text in cells}
    assert {key for key, _ in SUMMARY_KEYS} <= set(shown)
    for key, (value, text) in shown.items():
        expected = _lookup(summary, key)
        if expected is None:
            assert text == "n/a", key
        else:
            assert float(value) == expected and text == f"{expected:.3f}", key
    assert shown["dice.mean"][1] == f"{np.mean(list(PATIENT_DICE.values())):.3f}"

    with open(folder / "metrics_volume.csv") as f:
        by_csv = {r["patient"]: float(r["dice"]) for r in csv.DictReader(f)}
    assert by_csv == pytest.approx(PATIENT_DICE)
    order = page.eval_on_selector_all("table.cases tbody td[data-case]", "els => els.map(e => e.dataset.case)")
    assert order == ["p2", "p1", "p0"]  # worst first
    page.click("table.cases th:has-text('Dice')")  # sorted ascending: worst first still
    page.click("table.cases th:has-text('Dice')")  # then descending
    assert page.eval_on_selector_all("table.cases tbody td[data-case]", "els => els.map(e => e.dataset.case)") == [
        "p0", "p1", "p2"]
    links = page.eval_on_selector_all("table.cases tbody tr:last-child a", "els => els.map(e => e.getAttribute('href'))")
    assert links == ["p2_s1.png", "p2_s0.png", "p2_s1.png", "p2_s2.png"]  # thumbnail (its largest lesion), each panel

    shot = np.asarray(Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("L"), dtype=np.float64)
    assert shot.std() > 20  # not blank
    page.close()
    assert errors == [] and _inside(requests, folder) == [], (errors, requests)
    assert all(u.startswith("file://") for u in requests)


def test_comparison_and_tuning_pages_in_a_browser(run_dir, browser, tmp_path):
    folder, cases = run_dir
    out = tmp_path / "compare"
    assert _script("evaluate")([str(folder)]) == 0  # the run's own page, which the comparison links to
    assert _script("compare")([str(folder), str(folder), "--names", "A,B", "--out", str(out)])["examples"]
    with Image.open(out / "comparison.png") as im:  # each method's map on its run's scale, 0..2, not its own
        figure = np.asarray(im.convert("RGB"))
    top, left = 20 + GAP, GAP + (TILE + GAP)  # the first example (p0_s1) under the first method
    amap = cases["p0_s1"][0]
    np.testing.assert_array_equal(figure[top : top + TILE : ZOOM, left : left + TILE : ZOOM], heat_colormap(amap / 2.0))
    bar = figure[-28 + 2, left : left + TILE]  # the colour bar row under the column: cold to hot
    np.testing.assert_array_equal(bar[[0, -1]], heat_colormap(np.array([0.0, 1.0])))
    page, errors, requests = _open(browser, out / REPORT_HTML)
    page.mouse.wheel(0, 5000)
    page.wait_for_load_state("networkidle")
    rows = page.eval_on_selector_all("table tbody tr", "els => els.map(e => e.cells[0].textContent)")
    assert rows[:2] == ["A", "B"]  # one row per method
    tiles = page.eval_on_selector_all("table.tiles tbody tr", "els => els.map(e => e.textContent)")
    dice_p0 = 1.0  # the first example (diseased first, by id): p0_s1, marked exactly
    assert len(tiles) == 4 and tiles[0].count(f"Dice {dice_p0:.3f}") == 2
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    page.close()
    assert errors == [] and _inside(requests, out) == [], (errors, requests)

    tune = tmp_path / "tune"
    grid = [(3, 10.0, 0.2), (3, 100.0, 0.7), (5, 10.0, 0.4), (5, 100.0, None)]
    rows = [{"setting": f"m_L{L}_s{s:g}", "checkpoint": "m.pt", "noise_level": str(L), "scale": s,
             "folder": str(tune / f"m_L{L}_s{s:g}"), "dice_mean": d, "auprc_pooled": 0.5} for L, s, d in grid]
    best = {"setting": "m_L3_s100", "checkpoint": "m.pt", "noise_level": [3], "scale": 100.0, "dice": 0.7}
    write_tune_report(tune, rows, best, "s")
    page, errors, requests = _open(browser, tune / REPORT_HTML)
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert "m_L3_s100 (chosen)" in page.text_content("table")
    page.close()
    assert errors == [] and _inside(requests, tune) == []
    with Image.open(tune / "report" / "tune_grid.png") as im:
        heat = np.asarray(im.convert("RGB")).astype(int)
    outline = (heat[..., 0] > 200) & (heat[..., 1] < 60) & (heat[..., 2] < 60)
    assert outline.sum() > 100  # the chosen cell outlined in red
    assert not math.isnan(heat.std()) and heat.std() > 20
