"""Forward+backward time of the attention op over a whole 12-layer, 8-head, head-dim-64
schedule (sum over layers) for full attention, SWA (w=128) and MSWA (base 128).

    python scripts/bench_attention.py --json results/bench/attention_cpu.json \
        --md results/bench/attention_cpu.md

* full: ``scaled_dot_product_attention(is_causal=True)`` (the fair dense baseline);
  swa / mswa: ``window_attention(..., backend=--backend)`` (default: what ``auto`` picks).
* One layer = q, k, v of (batch, 8, L, 64) -> attention -> backward of a fixed random
  gradient. Layers with the same windows cost the same: each distinct layer is timed and
  multiplied by its number of layers (mswa has 4 distinct layers, swa and full 1).
* All configurations are measured in one run, interleaved rep by rep (so drift from other
  load hits all alike); the table shows the best of ``--reps`` (and the median in the JSON).
* Ratios (batch 1): mswa_over_swa and full_over_mswa_4096 at L=4096, scaling_* =
  t(8192) / t(1024). Theory: MSWA/SWA = 10800/12288 = 0.879; linear scaling = 8.
"""

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter

import torch
import torch.nn.functional as F

from fairseq_mswa.kernels.window_attention import select_backend, window_attention
from studies.run_utils import commit_text, load_average, provenance, script_command, write_text_atomic
from fairseq_mswa.schedule import build_schedule

LAYERS, HEADS, HEAD_DIM, BASE = 12, 8, 64, 128


def layer_groups(pattern: str):
    """[(windows of one layer, number of layers with them)] for the 12 x 8 schedule."""
    sched = build_schedule(LAYERS, HEADS, None if pattern == "full" else BASE, pattern)
    return list(Counter(sched.windows).items())


def make_step(pattern, windows, batch, length, device, dtype, backend):
    """A closure running forward+backward of one attention layer on fresh leaf tensors."""
    g = torch.Generator(device="cpu").manual_seed(length)
    shape = (batch, HEADS, length, HEAD_DIM)
    q, k, v = (torch.randn(shape, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
    grad = torch.randn(shape, generator=g).to(device, dtype)
    if pattern == "full":
        def fwd():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        used = "sdpa_causal"
    else:
        used = backend or select_backend(q, k, v, list(windows))

        def fwd():
            return window_attention(q, k, v, list(windows), backend=used)

    def step():
        q.grad = k.grad = v.grad = None
        fwd().backward(grad)

    return step, used


def timed(step, device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run(args) -> dict:
    device, dtype = args.device, getattr(torch, args.dtype)
    patterns = args.patterns.split(",")
    lengths = [int(x) for x in args.lengths.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    configs = []  # (pattern, batch, length, layer windows, count)
    for pattern in patterns:
        for batch in batches:
            for length in lengths:
                if pattern == "full" and batch * length > args.max_full_tokens:
                    continue
                for windows, count in layer_groups(pattern):
                    configs.append((pattern, batch, length, windows, count))
    steps, used = {}, {}
    for cfg in configs:
        pattern, batch, length, windows, _ = cfg
        steps[cfg], used[(pattern, batch, length)] = make_step(
            pattern, windows, batch, length, device, dtype, args.backend
        )
        steps[cfg]()  # warm-up (allocations, caches, compilation)
    samples = {cfg: [] for cfg in configs}
    for rep in range(args.reps):
        for cfg in configs:
            samples[cfg].append(timed(steps[cfg], device))
        print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)

    rows = {}
    for cfg in configs:
        pattern, batch, length, windows, count = cfg
        row = rows.setdefault(
            (pattern, batch, length),
            {"pattern": pattern, "batch": batch, "length": length, "best_s": 0.0,
             "median_s": 0.0, "backend": used[(pattern, batch, length)], "layers": []},
        )
        best, med = min(samples[cfg]), statistics.median(samples[cfg])
        row["best_s"] += count * best
        row["median_s"] += count * med
        row["layers"].append({"windows": list(windows), "count": count, "best_s": best,
                              "samples_s": samples[cfg]})
    return rows


def tiny(reps: int, device: str) -> list:
    """dense vs blocked fwd+bwd at tiny lengths (8 heads, mswa-h windows 2..16, batch 1):
    where ``auto`` should switch from dense to blocked on this device."""
    windows = list(build_schedule(1, HEADS, 8, "mswa-h").layer(0))
    out = []
    for length in (16, 32, 64, 96, 128, 192, 256):
        row = {"length": length, "windows": windows}
        steps = {}
        for backend in ("dense", "blocked"):
            g = torch.Generator().manual_seed(length)
            shape = (1, HEADS, length, HEAD_DIM)
            q, k, v = (torch.randn(shape, generator=g).to(device).requires_grad_() for _ in range(3))
            grad = torch.randn(shape, generator=g).to(device)
            steps[backend] = (lambda q=q, k=k, v=v, grad=grad, backend=backend:
                              window_attention(q, k, v, windows, backend=backend).backward(grad))
            steps[backend]()
        times = {b: [] for b in steps}
        for _ in range(reps):
            for b, step in steps.items():
                times[b].append(timed(step, device))
        row.update({f"{b}_best_s": min(ts) for b, ts in times.items()})
        out.append(row)
    return out


def ratio(rows, a, b, length, batch=1):
    ra, rb = rows.get((a, batch, length)), rows.get((b, batch, length))
    return None if ra is None or rb is None else ra["best_s"] / rb["best_s"]


def scaling(rows, pattern, batch=1, lo=1024, hi=8192):
    ra, rb = rows.get((pattern, batch, hi)), rows.get((pattern, batch, lo))
    return None if ra is None or rb is None else ra["best_s"] / rb["best_s"]


def markdown(result) -> str:
    m = result["machine"]
    lines = [
        "# Attention op: forward+backward time, 12 layers x 8 heads x head-dim 64 (sum over layers)",
        "",
        f"Machine: {m['cpu_model']} ({m['cpu_count']} cores, torch threads {m['torch_threads']}), "
        f"{m['platform']}, torch {m['torch']}, device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else "") + f", dtype {result['dtype']}.",
        f"Command: `{result['command']}` (commit {commit_text(result)}, {result.get('date', 'date not recorded')})",
        "",
        "All times measured in one run, interleaved; best of "
        f"{result['reps']} reps, seconds per 12-layer forward+backward.",
        "",
        "| pattern | backend | batch | " + " | ".join(f"L={n}" for n in result["lengths"]) + " |",
        "|---|---|---|" + "---|" * len(result["lengths"]),
    ]
    table = {}
    for r in result["rows"]:
        table.setdefault((r["pattern"], r["backend"], r["batch"]), {})[r["length"]] = r["best_s"]
    for (pattern, backend, batch), times in table.items():
        cells = [f"{times[n]:.3f}" if n in times else "-" for n in result["lengths"]]
        lines.append(f"| {pattern} | {backend} | {batch} | " + " | ".join(cells) + " |")
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    lines += [
        "",
        "| ratio (batch 1) | measured | theory / target |",
        "|---|---|---|",
        f"| MSWA / SWA at 4096 | {fmt(result['mswa_over_swa'])} | 0.879 / <= 0.95 |",
        f"| SWA t(8192) / t(1024) | {fmt(result['scaling_swa'])} | 8 (linear) / <= 10 |",
        f"| MSWA t(8192) / t(1024) | {fmt(result['scaling_mswa'])} | 8 (linear) / <= 10 |",
        f"| full / MSWA at 4096 | {fmt(result['full_over_mswa_4096'])} | >= 3 |",
        "",
        "MSWA / SWA by length: "
        + ", ".join(f"{n}: {fmt(x)}" for n, x in result["mswa_over_swa_by_length"].items()),
        "",
    ]
    if "tiny_dense_vs_blocked" in result:
        lines += [
            "Tiny sizes, one layer fwd+bwd in ms (8 heads, windows "
            f"{result['tiny_dense_vs_blocked'][0]['windows']}): where `auto` switches to blocked.",
            "",
            "| L | dense | blocked |",
            "|---|---|---|",
        ]
        lines += [f"| {r['length']} | {r['dense_best_s'] * 1e3:.2f} | {r['blocked_best_s'] * 1e3:.2f} |"
                  for r in result["tiny_dense_vs_blocked"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="512,1024,2048,4096,8192")
    p.add_argument("--batches", default="1", help="comma list; ratios use batch 1")
    p.add_argument("--patterns", default="full,swa,mswa")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--backend", default=None, help="window backend for swa/mswa (default: auto's pick)")
    p.add_argument("--max-full-tokens", type=int, default=1 << 30,
                   help="skip full attention when batch * length exceeds this")
    p.add_argument("--tiny", action="store_true",
                   help="also time dense vs blocked at tiny lengths (auto's dense threshold)")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--md", default=None, help="write the markdown table here")
    args = p.parse_args(argv)
    if 1 not in [int(x) for x in args.batches.split(",")]:
        p.error("--batches must include 1 (the ratios use batch 1)")
    torch.set_num_threads(args.threads)
    prov = provenance(script_command("bench_attention.py", argv), args.device, torch.get_num_threads())
    info = prov["machine"]
    t0 = time.time()
    rows = run(args)
    lengths = [int(x) for x in args.lengths.split(",")]
    info["load_average_at_end"] = load_average()
    result = {
        **prov,  # command, git_commit, git_dirty, date, machine (with the load at the end)
        "dtype": args.dtype,
        "reps": args.reps,
        "lengths": lengths,
        "wall_s": round(time.time() - t0, 1),
        "note": "all times and ratios measured in this one run (interleaved reps, best of reps); "
                "layers with identical windows are timed once and multiplied by their count",
        "mswa_over_swa": ratio(rows, "mswa", "swa", 4096),
        "scaling_swa": scaling(rows, "swa"),
        "scaling_mswa": scaling(rows, "mswa"),
        "full_over_mswa_4096": ratio(rows, "full", "mswa", 4096),
        "mswa_over_swa_by_length": {n: ratio(rows, "mswa", "swa", n) for n in lengths},
        "full_over_mswa_by_length": {n: ratio(rows, "full", "mswa", n) for n in lengths},
        "theory": {"mswa_over_swa": 10800 / 12288, "linear_scaling": 8.0, "quadratic_scaling": 64.0},
        "targets": {"mswa_over_swa": "<= 0.95", "scaling_swa": "<= 10", "scaling_mswa": "<= 10",
                    "full_over_mswa_4096": ">= 3"},
        "rows": list(rows.values()),
    }
    if args.tiny:
        result["tiny_dense_vs_blocked"] = tiny(max(args.reps, 10), args.device)
    md = markdown(result)
    print(md)
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    if args.md:
        write_text_atomic(args.md, md)
    return result


if __name__ == "__main__":
    main()
