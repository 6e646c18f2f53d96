"""Several reward models in one run: the score stage with two models against one, same rows, one invocation.

    python benchmarks/rm_signals.py                    # CPU: two random Qwen2 RMs, hidden 256, 4 layers
    python benchmarks/rm_signals.py --shape qwen2-7b   # GPU: two random 7B-shaped RMs in bf16

Two models of the same shape (seeds 0 and 1) are saved to a temporary directory and loaded by the score
stage as a run loads them (pipeline/stages/score.py). The same rollouts as benchmarks/rm_throughput.py
(prompts of 60-300 tokens, responses lognormal around 750 tokens) go through the stage in units of
--unit-rows, timed from text to scores:
- one: model a alone (a run with one RM);
- two resident: a and b, both kept on the device;
- two, one resident: --rm-max-resident 1, so the models take turns on the device (a parked model waits in
  host memory; the stage switches once per unit). On a CPU parking moves nothing (host memory is the
  device), so there the switch costs only the bookkeeping; on a GPU it is the weights' trip over PCIe.
Each configuration runs --repeats times, interleaved, and the fastest is reported. Prints one JSON line:
seconds per configuration, ratio_resident and ratio_one_resident (two models' time / one model's; the
target is <= 2.1), switches and switch seconds, and whether every signal's scores equal model a's and b's
single-model scores byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rm_throughput import SHAPES, build_model, build_tokenizer, log, make_rollouts, sync  # noqa: E402
from pipeline.stages.base import CounterSink, WorkerContext  # noqa: E402
from pipeline.stages.score import ScoreStage  # noqa: E402
from transforms.rm import RewardModelConfig  # noqa: E402
from transforms.rm.signals import RewardSignal, SignalSet  # noqa: E402


def time_stage(stage: ScoreStage, table: pa.Table, unit_rows: int, device: str) -> tuple[float, pa.Table, dict]:
    sink = CounterSink()
    sync(device)
    started = time.perf_counter()
    parts = [stage.process(table.slice(start, unit_rows), sink) for start in range(0, table.num_rows, unit_rows)]
    sync(device)
    return time.perf_counter() - started, pa.concat_tables(parts), sink.counts


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=192)
    parser.add_argument("--unit-rows", type=int, default=64, help="rows per unit of work (a stage call)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(os.path.join(tmp, "tokenizer"))
        prompts, responses = make_rollouts(tokenizer, args.rows, args.seed)
        table = pa.table({"prompt": prompts, "response": responses})
        paths = {}
        for name, seed in (("a", 0), ("b", 1)):
            paths[name] = os.path.join(tmp, name)
            build_model(args.shape, len(tokenizer), "cpu", dtype, seed).save_pretrained(paths[name])
            tokenizer.save_pretrained(paths[name])
        configs = {n: RewardModelConfig(backend="transformers", model=p, device=device, dtype=dtype, max_batch_size=4096)
                   for n, p in paths.items()}
        signals = tuple(RewardSignal(n, c) for n, c in configs.items())
        stages = {"one": ScoreStage(configs["a"]), "b_alone": ScoreStage(configs["b"]),
                  "two_resident": ScoreStage(SignalSet(signals, "a")),
                  "two_one_resident": ScoreStage(SignalSet(signals, "a", max_resident=1))}
        for name, stage in stages.items():
            stage.setup(WorkerContext())
            stage.process(table.slice(0, 4), CounterSink())  # warm-up (kernels, allocator, first switch)
        log(f"models built: 2 x {args.shape} on {device} ({dtype}); {args.rows} rows in units of {args.unit_rows}")
        best: dict[str, float] = {}
        outputs, counts = {}, {}
        for _ in range(args.repeats):
            for name in ("one", "two_resident", "two_one_resident"):
                seconds, outputs[name], counts[name] = time_stage(stages[name], table, args.unit_rows, device)
                best[name] = min(best.get(name, float("inf")), seconds)
                log(f"{name}: {seconds:.2f} s")
        _, outputs["b_alone"], _ = time_stage(stages["b_alone"], table, args.unit_rows, device)
        for stage in stages.values():
            stage.close()

    def raw(name: str, column: str) -> bytes:
        return outputs[name].column(column).combine_chunks().to_numpy(zero_copy_only=False).tobytes()

    same = all(raw(config, "rm_score__a") == raw("one", "rm_score") and
               raw(config, "rm_score__b") == raw("b_alone", "rm_score")
               for config in ("two_resident", "two_one_resident"))
    result = {
        "rows": args.rows, "unit_rows": args.unit_rows, "shape": args.shape, "device": device, "dtype": dtype,
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "ratio_resident": round(best["two_resident"] / best["one"], 3),
        "ratio_one_resident": round(best["two_one_resident"] / best["one"], 3),
        "switches_per_pass": counts["two_one_resident"].get("rm_switches", 0),
        "switch_s_per_pass": round(counts["two_one_resident"].get("rm_switch_ms", 0) / 1000, 3),
        "scores_equal_single_model_runs": same,
    }
    if device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
