"""The run report: its numbers against the output rows, and report.html rendered in headless Chromium."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import label, shared_file
from pipeline.report import auroc

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.parametrize("positives,negatives,expected", [
    ([3.0, 4.0], [1.0, 2.0], 1.0),  # every positive above every negative
    ([1.0, 2.0], [3.0, 4.0], 0.0),  # every positive below
    ([1.0, 2.0], [1.0, 2.0], 0.5),  # the same scores: chance
    ([2.0], [1.0, 2.0, 3.0], 0.5),  # one tie counts half: (1 + 0.5 + 0) / 3
    ([1.0], [], None),  # undefined without negatives
])
def test_auroc(positives, negatives, expected):
    assert auroc(np.array(positives), np.array(negatives)) == expected


@pytest.fixture(scope="module")
def qwen_output(tmp_path_factory):
    output = tmp_path_factory.mktemp("report") / "out"
    manifest = label(shared_file("qwen25_math_cot100.parquet"), output, rm_score_column="qwen_rm_score", pairs=True)
    return output, manifest


@pytest.mark.slow
def test_report_numbers_agree_with_the_output_rows(qwen_output):
    output, manifest = qwen_output
    report = json.loads((output / "run_report.json").read_text())
    rows = pq.read_table(output / "data").to_pylist()
    assert report["output_rows"] == len(rows) == manifest["output_rows"]
    correct = [r["rm_score"] for r in rows if r["verifier_score"] == 1.0]
    incorrect = [r["rm_score"] for r in rows if r["verifier_score"] == 0.0]
    assert report["rm_score_by_verifier_class"]["correct"]["rows"] == len(correct)
    assert report["rm_score_by_verifier_class"]["correct"]["mean"] == pytest.approx(np.mean(correct), abs=1e-5)
    assert report["rm_score_by_verifier_class"]["incorrect"]["mean"] == pytest.approx(np.mean(incorrect), abs=1e-5)
    sources = {r["data_source"] for r in rows}
    for source in sources:
        mine = [r for r in rows if r["data_source"] == source]
        assert report["verifier_pass_rate_by_source"][source]["pass_rate"] == pytest.approx(
            sum(r["verifier_score"] == 1.0 for r in mine) / len(mine), abs=1e-6)
    # AUROC recomputed by brute force over groups with both verdicts.
    groups = {}
    for r in rows:
        groups.setdefault(r["prompt_id"], []).append(r)
    per_group = []
    for members in groups.values():
        pos = [r["rm_score"] for r in members if r["verifier_score"] == 1.0]
        neg = [r["rm_score"] for r in members if r["verifier_score"] == 0.0]
        if pos and neg:
            per_group.append(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))
    assert report["rm_vs_verifier_auroc"]["mixed_groups"] == len(per_group)
    assert report["rm_vs_verifier_auroc"]["mean_per_group"] == pytest.approx(np.mean(per_group), abs=1e-6)
    assert report["sigma_bar"] == manifest["sigma_bar"]
    assert report["pairs"]["rows"] == manifest["pairs"]["rows"]


@pytest.mark.slow
def test_report_command_rebuilds_both_files(qwen_output, tmp_path):
    output, _ = qwen_output
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    (copy / "report.html").unlink()
    (copy / "run_report.json").unlink()
    finished = subprocess.run([sys.executable, "run_pipeline.py", "report", str(copy)], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert json.loads((copy / "run_report.json").read_text()) == json.loads((output / "run_report.json").read_text())
    assert (copy / "report.html").read_text() == (output / "report.html").read_text()
    missing = subprocess.run([sys.executable, "run_pipeline.py", "report", str(tmp_path / "nothing")], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no manifest.json" in missing.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),
                    reason="Debian chromium and chromium-driver are not installed (.ci/run installs them)")
def test_report_html_renders_in_headless_chromium(qwen_output, tmp_path):
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    output, _ = qwen_output
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER or "/usr/bin/chromedriver"), options=options)
    try:
        driver.get((output / "report.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        screenshot = tmp_path / "report.png"
        driver.save_screenshot(str(screenshot))
        plots = {element.get_attribute("alt"): element.screenshot_as_png
                 for element in driver.find_elements("tag name", "img")}
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert errors == []
    assert len(images) == 4 and all(complete and width > 100 and height > 100 for _, complete, width, height in images)
    with Image.open(screenshot) as picture:
        assert picture.size[0] >= 1000
        colors = picture.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 20  # plots and text, not a blank page
    # Each plot has drawn content: its own screenshot holds many colours, not a blank frame.
    assert set(plots) == {"RM score by verifier class", "hero_reward", "difficulty weight", "pass rate"}
    for name, png in plots.items():
        with Image.open(io.BytesIO(png)) as picture:
            colors = picture.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colors is not None and len(colors) > 10, name
