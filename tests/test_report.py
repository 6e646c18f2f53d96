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
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.outputs.report as report_module
import pipeline.outputs.report_stats as report_stats
from conftest import label, shared_file
from pipeline.outputs.agreement import auroc
from pipeline.outputs.report import write_report
from pipeline.outputs.report_stats import Moments

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
    assert set(plots) == {"RM score by verifier class", "hero_reward by verifier class", "difficulty weight", "pass rate"}
    for name, png in plots.items():
        with Image.open(io.BytesIO(png)) as picture:
            colors = picture.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colors is not None and len(colors) > 10, name


# ------------------------------------------------------------------------------------------------
# verifier_rule: verdicts per rule x data_source and refusals against label_correct, on tables built here.
# ------------------------------------------------------------------------------------------------

def _shard(rows: list[tuple], label_type=pa.bool_(), rule: bool = True) -> pa.Table:
    """rows: (prompt_id, data_source, status, score, rule, label, extracted, reference)."""
    columns = list(zip(*rows))
    table = pa.table({
        "prompt_id": pa.array(columns[0], pa.string()), "prompt": pa.array([f"q {p}" for p in columns[0]]),
        "response": pa.array(["r"] * len(rows)), "reference": pa.array(columns[7], pa.string()),
        "data_source": pa.array(columns[1], pa.string()),
        "verifier_score": pa.array(columns[3], pa.float32()), "verifier_status": pa.array(columns[2], pa.string()),
        "extracted_answer": pa.array(columns[6], pa.string()), "verifier_rule": pa.array(columns[4], pa.string()),
        "rm_score": pa.array([0.5] * len(rows), pa.float32()), "hero_reward": pa.array([0.1] * len(rows)),
        "difficulty_weight": pa.array([1.0] * len(rows)), "group_rm_std": pa.array([0.2] * len(rows)),
    })
    if label_type is not None:
        table = table.append_column("label_correct", pa.array(columns[5], label_type))
    return table if rule else table.drop_columns(["verifier_rule"])


SHARD_A = [  # prompt_id, data_source, status, score, rule, label, extracted, reference
    ("a1", "gsm8k", "ok", 1.0, "math_verify", True, "18", "18"),
    ("a1", "gsm8k", "ok", 0.0, "refused:unsolved_equation", True, "2x = 10", "10"),
    ("a2", "gsm8k", "no_answer", 0.0, "extraction", False, None, "7"),
    ("a3", "gsm8k", "timeout", None, None, True, None, "3"),  # no verdict: not counted
    ("a4", "math", "ok", 0.0, "refused:set_vs_tuple", False, "{1, 2}", "(1, 2)"),
]
SHARD_B = [
    ("b1", "math", "ok", 1.0, "extraction", True, "\\frac{1}{2}", "0.5"),
    ("b1", "math", "ok", 0.0, "refused:unsolved_equation", True, "y = 3", "3"),
    ("b2", None, "ok", 1.0, "exact", None, "yes", "yes"),
    ("b3", "mmlu", "ok", 0.0, "refused:set_vs_tuple", None, "{3}", "(3)"),
]


def _output(tmp_path, *shards: pa.Table) -> Path:
    output = tmp_path / "out"
    (output / "data").mkdir(parents=True)
    for i, shard in enumerate(shards):
        pq.write_table(shard, output / "data" / f"part-{i:05d}-of-{len(shards):05d}.parquet")
    return output


def _written_report(output: Path) -> tuple[dict, str]:
    report = write_report(str(output), {"input_rows": 9, "output_rows": 9, "error_rows": 0})
    assert json.loads((output / "run_report.json").read_text()) == json.loads(json.dumps(report))
    return report, (output / "report.html").read_text()


def test_report_counts_verdicts_per_rule_and_data_source(tmp_path):
    report, page = _written_report(_output(tmp_path, _shard(SHARD_A), _shard(SHARD_B)))
    assert report["verdicts_by_rule_and_source"] == {
        "exact": {"(none)": 1},
        "extraction": {"gsm8k": 1, "math": 1},
        "math_verify": {"gsm8k": 1},
        "refused:set_vs_tuple": {"math": 1, "mmlu": 1},
        "refused:unsolved_equation": {"gsm8k": 1, "math": 1},
    }
    # The HTML table: one column per data_source, zeros filled in, totals per rule and per source.
    assert "<tr><th>rule</th><th>(none)</th><th>gsm8k</th><th>math</th><th>mmlu</th><th>total</th></tr>" in page
    assert "<tr><th>refused:set_vs_tuple</th><td>0</td><td>0</td><td>1</td><td>1</td><td>2</td></tr>" in page
    assert "<tr><th>total</th><td>1</td><td>3</td><td>3</td><td>1</td><td>8</td></tr>" in page


def test_report_lists_refusals_on_rows_labelled_correct(tmp_path):
    report, page = _written_report(_output(tmp_path, _shard(SHARD_A), _shard(SHARD_B)))
    refusals = report["refusals_on_labelled_correct"]
    assert refusals["label_column"] == "label_correct" and refusals["total"] == 2
    assert refusals["rows"] == [
        {"prompt_id": "a1", "data_source": "gsm8k", "rule": "refused:unsolved_equation", "extracted_answer": "2x = 10",
         "reference": "10"},
        {"prompt_id": "b1", "data_source": "math", "rule": "refused:unsolved_equation", "extracted_answer": "y = 3",
         "reference": "3"},
    ]
    assert refusals["by_rule"] == {
        "refused:set_vs_tuple": {"labelled_correct": 0, "labelled_incorrect": 1, "unlabelled": 1},
        "refused:unsolved_equation": {"labelled_correct": 2, "labelled_incorrect": 0, "unlabelled": 0},
    }
    assert "2 refusals fired on rows label_correct calls correct." in page
    assert "<tr><td>a1</td><td>gsm8k</td><td>refused:unsolved_equation</td><td>2x = 10</td><td>10</td></tr>" in page


def test_refusal_listing_is_capped_and_the_total_always_given(tmp_path, monkeypatch):
    monkeypatch.setattr(report_module, "REFUSALS_LISTED", 3)
    monkeypatch.setattr(report_module, "REFUSALS_SHOWN", 2)
    refused = [(f"p{i}", "gsm8k", "ok", 0.0, "refused:unsolved_equation", True, f"x = {i}", str(i)) for i in range(5)]
    report, page = _written_report(_output(tmp_path, _shard(refused[:2]), _shard(refused[2:])))
    refusals = report["refusals_on_labelled_correct"]
    assert refusals["total"] == 5 and [r["prompt_id"] for r in refusals["rows"]] == ["p0", "p1", "p2"]
    assert "5 refusals fired on rows label_correct calls correct; the first 2 are listed" in page
    assert "<td>p1</td>" in page and "<td>p2</td>" not in page
    assert "&quot;p1&quot;" in page and "&quot;p2&quot;" not in page  # the page's JSON dump is cut the same way


@pytest.mark.parametrize("label_type", [None, pa.int64()])  # no label column; a label that is not boolean
def test_refusals_without_a_boolean_label_column(tmp_path, label_type):
    rows = [(p, s, st, sc, r, None if label_type is None else int(bool(lab)), e, ref)
            for p, s, st, sc, r, lab, e, ref in SHARD_A]
    report, page = _written_report(_output(tmp_path, _shard(rows, label_type=label_type)))
    assert report["refusals_on_labelled_correct"] == {"label_column": None, "total": None, "by_rule": {}, "rows": []}
    assert report["verdicts_by_rule_and_source"]["refused:unsolved_equation"] == {"gsm8k": 1}
    assert "The output has no boolean label_correct column" in page


def test_report_of_an_output_written_before_verifier_rule(tmp_path):
    report, page = _written_report(_output(tmp_path, _shard(SHARD_A, rule=False), _shard(SHARD_B, rule=False)))
    assert report["verdicts_by_rule_and_source"] is None and report["refusals_on_labelled_correct"] is None
    assert "No shard of this output has a verifier_rule column" in page
    # The other sections are unaffected.
    assert report["verifier_pass_rate_by_source"]["gsm8k"] == {"rows": 4, "verified": 3,
                                                               "pass_rate": pytest.approx(1 / 3, abs=1e-6)}
    assert report["rm_score_by_verifier_class"]["correct"]["rows"] == 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(-1e6, 1e6) | st.just(float("nan")), max_size=30), min_size=1, max_size=8))
def test_moments_merged_chunk_by_chunk_equal_numpy_over_all_values(chunks):
    moments = Moments()
    for chunk in chunks:
        moments.add(np.array(chunk, dtype=float))
    values = np.array([v for chunk in chunks for v in chunk], dtype=float)
    values = values[~np.isnan(values)]
    summary = moments.summary(values)
    assert summary["rows"] == len(values)
    if len(values):
        assert summary["mean"] == pytest.approx(round(float(values.mean()), 6), abs=1e-6 * (1 + abs(values).max()))
        assert summary["std"] == pytest.approx(round(float(values.std()), 6), abs=1e-6 * (1 + abs(values).max()))
        assert (summary["min"], summary["max"]) == (round(values.min(), 6), round(values.max(), 6))


@pytest.mark.slow
def test_a_large_output_is_reported_from_whole_sampled_groups_with_exact_counts(qwen_output, monkeypatch):
    # Past SAMPLE_ROWS the rows kept are whole prompt groups (the same on every rebuild), while counts, pass
    # rates and moments still cover every row: here 300 of the file's 800 rows stand for a 10M-row output.
    output, manifest = qwen_output
    full, _, _ = report_module.build_report(str(output), manifest)
    monkeypatch.setattr(report_stats, "SAMPLE_ROWS", 300)
    sampled, table, _ = report_module.build_report(str(output), manifest)
    again, _, _ = report_module.build_report(str(output), manifest)
    assert sampled == again and sampled["sample"]["fraction"] == round(300 / manifest["output_rows"], 6)
    assert 0 < table.num_rows < manifest["output_rows"] == full["sample"]["rows"]
    sizes = pq.read_table(output / "data", columns=["prompt_id"]).column("prompt_id").value_counts()
    whole = {s["values"]: s["counts"] for s in sizes.to_pylist()}
    kept = table.column("prompt_id").value_counts().to_pylist()
    assert all(whole[k["values"]] == k["counts"] for k in kept) and len(kept) == sampled["sample"]["groups"]
    assert sampled["verifier_pass_rate_by_source"] == full["verifier_pass_rate_by_source"]
    for c in ("correct", "incorrect", "unverified"):
        exact = {k: v for k, v in full["rm_score_by_verifier_class"][c].items() if k != "median"}
        assert {k: v for k, v in sampled["rm_score_by_verifier_class"][c].items() if k != "median"} == exact
    assert sampled["rm_vs_verifier_auroc"]["mixed_groups"] < full["rm_vs_verifier_auroc"]["mixed_groups"]
