#!/usr/bin/env python
"""End-to-end local benchmark: the whole pipeline on each engine vs plain single-process math-verify.

    python benchmarks/e2e_local.py [--engine beam,ray] [--rows 50000,200000] [--per-prompt 8]
                                   [--workers 1,2] [--repeat 1] [--baseline-rows 20000] [--ray-task-per-cpu]

1. Generates N synthetic rollouts (8 per prompt; GSM8K "A: N", \\boxed{}, \\(..\\) and answer-free forms like
   ../shared/data) with a precomputed RM score column, written as 10,000-row Parquet files (once per N).
2. For each N in --rows, each W in --workers and each engine in --engine (engines alternate), runs
   `run_pipeline.py --engine E --rm-backend precomputed` in a child process with W verifier workers
   (--repeat R times, the engines' order reversed each time; the median run by wall time is reported,
   every try's rows/s beside it), while sampling the memory of the
   child and all its descendants (verifier processes; Dask's workers; Ray's raylet, object store and worker
   processes) every 0.2 s: RSS, and PSS (proportional set size, which counts a shared page once across
   processes: Ray's object store is shared memory that appears in every process's RSS).
   W verifier workers means W verifying processes in all: `--verifier-workers W` on every engine (one engine
   process, Dask worker or Ray task holds a pool of W), with `--ray-num-cpus W` on Ray (a local cluster of W
   CPUs, so one verification task at a time). With --ray-task-per-cpu, Ray runs W tasks at a time instead,
   each with a one-process pool (`--verifier-workers 1`): a unit is a task, so the last units leave CPUs idle.
3. Runs the baseline in this process on the first --baseline-rows rows of the first N: for every row,
   math_verify.parse the reference (wrapped in $...$ so bare answers parse, as the pipeline does), parse the
   response, verify.
Prints one JSON line: per (engine, rows) the runs (per W: wall_s, rows_per_s, stage_s = busy seconds per stage
from the engine's counters, peak_rss_mb, peak_pss_mb) and scaling (rows/s at the largest W / at the smallest);
ratios against the first engine in the same invocation (rows/s at each W, and scaling), and per engine
the peak PSS at the largest N over that at the smallest; baseline_rows_per_s, speedup (best pipeline rows/s /
baseline rows/s), and the fraction of rows where pipeline and baseline verdicts agree. The temporary
directory is removed unless --workdir is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from pipeline.tools.demo import synthetic_rollouts  # noqa: E402


def write_inputs(directory: str, rows: int, per_prompt: int, rows_per_file: int = 10_000) -> None:
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    written = 0
    index = 0
    while written < rows:
        count = min(rows_per_file, rows - written)
        # Seed per file keeps generation memory flat; prompt ids include the seed, so groups stay distinct.
        table = synthetic_rollouts(count, responses_per_prompt=per_prompt, seed=index)
        table = table.append_column("bench_rm_score", pa.array(rng.normal(0.0, 2.0, count)))
        pq.write_table(table, os.path.join(directory, f"rollouts-{index:05d}.parquet"), row_group_size=8192)
        written += count
        index += 1


def proportional_set_size(pid: int) -> int:
    """PSS in bytes, from /proc/PID/smaps_rollup (0 where the kernel does not provide it)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # the process ended between listing and reading: it holds no memory now
        return 0
    return 0


def _process_label(member: psutil.Process) -> str:
    """A short name for a process in the per-process breakdown: pid and what it runs."""
    try:
        command = member.cmdline()
    except psutil.Error:
        return f"{member.pid}"
    if len(command) > 2 and command[1] in ("-c", "-m"):  # a pool worker (-c) or a module
        return f"{member.pid} python {command[1]} {command[2][:60]}"
    command = [w for w in command if w]  # a renamed process (Ray's "ray::verify") pads its title with empty words
    words = [w for w in command[1:] if not w.startswith("-")][:1] or command[:1] or ["?"]
    return f"{member.pid} {os.path.basename(words[0])}"


def sample_peak_memory(process: psutil.Process, stop: threading.Event, result: dict) -> None:
    """Samples every 0.2 s until `stop`: the driver's RSS, the tree's RSS and PSS (PSS counts shared pages
    once), each process's own peak PSS (the six largest go in result["peak_pss_by_process_mb"]), and every
    process's PSS at the moment the tree's PSS peaked (result["pss_at_peak_by_process_mb"]: what adds up to
    the peak, so what grows when the total does)."""
    peak_tree = peak_driver = peak_pss = 0
    per_process: dict[str, int] = {}
    at_peak: dict[str, int] = {}
    while not stop.is_set():
        try:
            tree = [process, *process.children(recursive=True)]
            driver = process.memory_info().rss
        except psutil.Error:
            break
        rss = pss = 0
        now: dict[str, int] = {}
        for member in tree:
            try:
                rss += member.memory_info().rss
            except psutil.Error:
                continue  # ended since listed
            own = proportional_set_size(member.pid)
            pss += own
            label = _process_label(member)
            now[label] = own
            per_process[label] = max(per_process.get(label, 0), own)
        if pss > peak_pss:
            at_peak = now
        peak_driver, peak_tree, peak_pss = max(peak_driver, driver), max(peak_tree, rss), max(peak_pss, pss)
        stop.wait(0.2)
    largest = sorted(per_process.items(), key=lambda item: -item[1])[:6]
    result.update(peak_driver_rss_mb=round(peak_driver / 2**20, 1), peak_rss_mb=round(peak_tree / 2**20, 1),
                  peak_pss_mb=round(peak_pss / 2**20, 1),
                  peak_pss_by_process_mb={label: round(value / 2**20, 1) for label, value in largest},
                  pss_at_peak_by_process_mb={label: round(value / 2**20, 1) for label, value in
                                             sorted(at_peak.items(), key=lambda item: -item[1]) if value})


def worker_flags(engine: str, workers: int, ray_task_per_cpu: bool = False) -> list[str]:
    """W verifying processes in all: a pool of W on every engine, on Ray in a local cluster of W CPUs (or W
    tasks with a one-process pool each)."""
    if engine == "ray":
        return ["--ray-num-cpus", str(workers), "--verifier-workers", "1" if ray_task_per_cpu else str(workers)]
    return ["--verifier-workers", str(workers)]


def run_sampled(command: list[str], what: str) -> tuple[float, dict]:
    """Runs `command` in a child process while sampling its memory (and its descendants'); returns the wall
    seconds and the peaks. Exits with the child's stderr when it fails."""
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_peak_memory, args=(psutil.Process(child.pid), stop, memory))
    sampler.start()
    _, err = child.communicate()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"{what} failed ({child.returncode}):\n{err[-4000:]}")
    return wall, memory


def run_pipeline(input_dir: str, output_dir: str, engine: str, workers: int, extra: list[str],
                 ray_task_per_cpu: bool = False) -> tuple[float, dict, dict]:
    command = [sys.executable, os.path.join(REPO, "run_pipeline.py"), "--input", input_dir, "--output", output_dir,
               "--rm-backend", "precomputed", "--rm-score-column", "bench_rm_score", "--progress", "off",
               "--engine", engine, *worker_flags(engine, workers, ray_task_per_cpu), "--overwrite", *extra]
    wall, memory = run_sampled(command, "pipeline")
    with open(os.path.join(output_dir, "manifest.json")) as handle:
        manifest = json.load(handle)
    return wall, memory, manifest


def run_baseline(input_dir: str, limit: int | None) -> tuple[float, int, dict]:
    """Plain single-process math-verify; returns (rows/s, rows judged, {(prompt_id, sample_index): verdict})."""
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    table = pq.read_table(input_dir, columns=["prompt_id", "sample_index", "reference", "response"])
    if limit:
        table = table.slice(0, limit)
    rows = table.to_pylist()
    verdicts = {}
    started = time.perf_counter()
    for row in rows:
        gold = parse(f"${row['reference']}$")
        predicted = parse(row["response"])
        verdicts[(row["prompt_id"], row["sample_index"])] = float(verify(gold, predicted))
    elapsed = time.perf_counter() - started
    return len(rows) / elapsed, len(rows), verdicts


def comma_list(text: str, kind=str) -> list:
    return [kind(item.strip()) for item in text.split(",") if item.strip()]


def main() -> None:
    from pipeline.config import ENGINES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="beam", help=f"engines, comma-separated, of {', '.join(ENGINES)} "
                        "(default beam); ratios are against the first")
    parser.add_argument("--rows", default="100000", help="input sizes, comma-separated (default 100000)")
    parser.add_argument("--per-prompt", type=int, default=8)
    parser.add_argument("--workers", default="1,2", help="verifier workers per run, comma-separated (default 1,2)")
    parser.add_argument("--baseline-rows", type=int, default=20_000,
                        help="judge only the first N rows in the baseline (default 20000; 0 = all rows)")
    parser.add_argument("--ray-task-per-cpu", action="store_true",
                        help="on Ray, W tasks with a one-process pool each instead of one task with a pool of W")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per (engine, W), the engines' order reversed each time; the median by wall time "
                        "counts (of an even number, the faster middle one; default 1)")
    parser.add_argument("--workdir", default=None, help="keep inputs/outputs here (default: a temporary directory)")
    args, extra = parser.parse_known_args()  # anything else goes to run_pipeline.py (e.g. --batch-rows 4096)
    engines, sizes = comma_list(args.engine), comma_list(args.rows, int)
    worker_counts = comma_list(args.workers, int)
    unknown = [e for e in engines if e not in ENGINES]
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    if unknown or not engines:
        parser.error(f"--engine: {unknown or engines} not among {tuple(ENGINES)}")

    workdir = args.workdir or tempfile.mkdtemp(prefix="herolabel-bench-")
    results = []
    try:
        for rows in sizes:
            input_dir = os.path.join(workdir, f"input-{rows}")
            write_inputs(input_dir, rows, args.per_prompt)
            # Engines alternate within each worker count (beam 1w, ray 1w, beam 2w, ray 2w), so a machine
            # that drifts over the invocation skews every engine's scaling alike, not the last engine's most.
            runs: dict[str, list[dict]] = {engine: [] for engine in engines}
            for workers in worker_counts:
                tries: dict[str, list[dict]] = {engine: [] for engine in engines}
                for attempt in range(args.repeat):  # the first engine first, then last, ... (drift cancels)
                    for engine in (engines if attempt % 2 == 0 else engines[::-1]):
                        output_dir = os.path.join(workdir, f"output-{engine}-{rows}")
                        wall, memory, manifest = run_pipeline(input_dir, output_dir, engine, workers, extra,
                                                              args.ray_task_per_cpu)
                        counters = manifest["engine"]["counters"]
                        tries[engine].append({"verifier_workers": workers, "wall_s": round(wall, 2),
                                              "rows_per_s": round(rows / wall, 1),
                                              "stage_s": {k[:-3]: round(v / 1000, 2) for k, v in counters.items()
                                                          if k.endswith("_ms")},
                                              **memory, "output_rows": manifest["output_rows"],
                                              "error_rows": manifest["error_rows"]})
                        print(json.dumps({"engine": engine, "rows": rows, **tries[engine][-1]}), file=sys.stderr,
                              flush=True)
                for engine in engines:  # the median try by wall time (with --repeat 1, the only one)
                    ranked = sorted(tries[engine], key=lambda run: run["wall_s"])
                    median = dict(ranked[(len(ranked) - 1) // 2])
                    if args.repeat > 1:
                        median["tries_rows_per_s"] = [run["rows_per_s"] for run in tries[engine]]
                    runs[engine].append(median)
            for engine in engines:
                mine = runs[engine]
                results.append({"engine": engine, "rows": rows, "runs": mine,
                                "scaling": round(mine[-1]["rows_per_s"] / mine[0]["rows_per_s"], 3)})
        first_input = os.path.join(workdir, f"input-{sizes[0]}")
        baseline_rate, baseline_rows, verdicts = run_baseline(first_input, args.baseline_rows or None)
        labelled = pq.read_table(os.path.join(workdir, f"output-{engines[0]}-{sizes[0]}", "data"),
                                 columns=["prompt_id", "sample_index", "verifier_score"])
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    agree = sum(
        1 for pid, index, score in zip(*(labelled.column(c).to_pylist() for c in labelled.column_names))
        if (pid, index) in verdicts and (score or 0.0) == verdicts[(pid, index)]
    )
    by_key = {(r["engine"], r["rows"]): r for r in results}
    reference = engines[0]
    ratios = {}
    for engine in engines[1:]:
        for rows in sizes:
            ours, theirs = by_key[(engine, rows)], by_key[(reference, rows)]
            ratios[f"{engine}_vs_{reference}@{rows}"] = {
                **{f"rows_per_s@{mine['verifier_workers']}w": round(mine["rows_per_s"] / base["rows_per_s"], 3)
                   for mine, base in zip(ours["runs"], theirs["runs"])},
                "scaling": round(ours["scaling"] / theirs["scaling"], 3)}
    memory_growth = {engine: round(max(r["peak_pss_mb"] for r in by_key[(engine, sizes[-1])]["runs"])
                                   / max(r["peak_pss_mb"] for r in by_key[(engine, sizes[0])]["runs"]), 3)
                     for engine in engines} if len(sizes) > 1 else {}
    best = max(run["rows_per_s"] for r in results for run in r["runs"])
    print(json.dumps({
        "engines": engines,
        "pipeline_flags": extra,
        "ray_layout": "a task per CPU" if args.ray_task_per_cpu else "a pool of W per task",
        "results": results,
        "ratios": ratios,
        f"peak_pss_{sizes[-1]}_over_{sizes[0]}": memory_growth,
        "baseline_rows": baseline_rows,
        "baseline_rows_per_s": round(baseline_rate, 1),
        "speedup": round(best / baseline_rate, 2),
        "verdict_agreement_with_baseline": round(agree / baseline_rows, 5),
        "cpu_count": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
