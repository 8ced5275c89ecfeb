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

``--tile-sweep`` (issue 29) times instead MSWA and SWA through FlexAttention for each tile shape
(block mask ``BLOCK_SIZE`` and matching kernel blocks) and for each schedule's chosen tiles
(``cost.tiles.choose_tiles``): :func:`tile_sweep`, what ``scripts/gpu_check.sh`` runs on a GPU
(forward + backward, bf16, the paper's shape). On CPU it is a rehearsal at tiny sizes: eager
FlexAttention, forward only (no CPU backward), every score materialised, so its times say
nothing about tiles.
"""

import argparse
import os
import statistics
import sys
import time
from collections import Counter

import torch
import torch.nn.functional as F

from fairseq_mswa.kernels.window_attention import select_backend, window_attention
from studies.run_utils import commit_text, load_average, provenance, script_command, write_result
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


# --- tile sweep (issue 29) -----------------------------------------------------------------------

def flex_bwd_blocks(tile):
    """Backward kernel blocks (BLOCK_M1, BLOCK_N1, BLOCK_M2, BLOCK_N2) that divide the block mask's
    ``tile = (q_block, kv_block)`` and meet the Triton template's asserts (N1 % M1 == 0, M2 % N2
    == 0): N1 = min(kv, 128), M1 = min(q, N1, 64), M2 = min(q, 128), N2 = min(kv, M2, 64)."""
    bq, bk = tile
    n1 = min(bk, 128)
    m1 = min(bq, n1, 64)
    m2 = min(bq, 128)
    return m1, n1, m2, min(bk, m2, 64)


def flex_kernel_options(tile):
    """Kernel options whose blocks match the block mask: forward BLOCK_M x BLOCK_N = the tile, the
    backward's from :func:`flex_bwd_blocks`."""
    m1, n1, m2, n2 = flex_bwd_blocks(tile)
    return {"fwd_BLOCK_M": tile[0], "fwd_BLOCK_N": tile[1], "bwd_BLOCK_M1": m1,
            "bwd_BLOCK_N1": n1, "bwd_BLOCK_M2": m2, "bwd_BLOCK_N2": n2}


class _BwdConfigsForTiles:
    """torch 2.13's flex backward lowering (torch/_inductor/kernel/flex/flex_attention.py) keeps
    only heuristic configs whose blocks divide the block mask's sizes, BEFORE it reads the
    ``bwd_BLOCK_*`` kernel options; on sm90 (head dim 64) its one default is 64 x 128 / 128 x 64,
    so a 64-wide or smaller block mask has no backward config unless max-autotune adds some
    (never 16). This context adds the config of :func:`flex_bwd_blocks` for ``tiles`` to the
    heuristic's list (bench only; ``patched`` says whether it could)."""

    def __init__(self, tiles):
        self.tiles, self.patched, self.error, self._orig = list(tiles), False, None, None

    def __enter__(self):
        try:
            from torch._inductor.choices import InductorChoices
            from torch._inductor.template_heuristics.triton import FlexBwDConfig
        except ImportError as e:  # another torch: record it, run unpatched
            self.error = f"{type(e).__name__}: {e}"
            return self
        orig = self._orig = InductorChoices.get_flex_attention_bwd_configs
        extra = [FlexBwDConfig(*flex_bwd_blocks(t), 1, 4) for t in self.tiles]

        def configs(choices, head_dim, dtype, device_type="cuda"):
            have = list(orig(choices, head_dim, dtype, device_type))
            return have + [c for c in extra if c not in have]

        InductorChoices.get_flex_attention_bwd_configs = configs
        self.patched = True
        return self

    def __exit__(self, *exc):
        if self._orig is not None:
            from torch._inductor.choices import InductorChoices

            InductorChoices.get_flex_attention_bwd_configs = self._orig
        return False


def _tile_calls(schedule, segment, plan):
    """[(windows, memory, tile, count)] of one schedule's flex calls: ``plan`` a tile shape (one
    call per layer over all its heads, memory = the layer's largest window - 1) or ``"chosen"``
    (each layer's passes and tiles from ``cost.tiles.choose_tiles``); identical layers counted."""
    from fairseq_mswa.cost import tiles as T

    calls = Counter()
    for i, layer in enumerate(schedule.windows):
        mem = T.layer_memory(schedule, i, segment)
        if plan == "chosen":
            for p in T.choose_tiles(layer, segment, mem, batch=max(1, T.PAPER_TOKENS_PER_STEP // segment)).passes:
                calls[(p.windows, p.memory, p.tile)] += 1
        else:
            calls[(tuple(layer), mem, tuple(plan))] += 1
    return [(w, m, t, n) for (w, m, t), n in calls.items()]


def _flex_step(windows, memory, tile, batch, segment, device, dtype, backward, fn):
    """A closure timing one flex call (fwd, + bwd when ``backward``) over heads with ``windows``."""
    from torch.nn.attention.flex_attention import create_block_mask

    from fairseq_mswa.kernels.flex import _mask_mod, _window_tensor

    lk = segment + memory
    g = torch.Generator(device="cpu").manual_seed(segment + memory)
    h = len(windows)
    q = torch.randn(batch, h, segment, HEAD_DIM, generator=g).to(device, dtype)
    k, v = (torch.randn(batch, h, lk, HEAD_DIM, generator=g).to(device, dtype) for _ in range(2))
    if backward:
        for x in (q, k, v):
            x.requires_grad_()
    grad = torch.randn(batch, h, segment, HEAD_DIM, generator=g).to(device, dtype)
    bm = create_block_mask(_mask_mod(_window_tensor(list(windows), lk, device), memory, 0), None,
                           h, segment, lk, device=device, BLOCK_SIZE=tuple(tile))
    opts = flex_kernel_options(tile) if device == "cuda" else None

    def step():
        if backward:
            q.grad = k.grad = v.grad = None
            fn(q, k, v, block_mask=bm, kernel_options=opts).backward(grad)
        else:
            with torch.no_grad():
                fn(q, k, v, block_mask=bm, kernel_options=opts)

    return step


def _sweep_shape(device: str, quick: bool, segments):
    """(segments, base window, batch of a segment) of a tile sweep: the paper's shape on a GPU,
    a segment of 64 with base 16 and batch 1 for the rehearsal (CPU or ``quick``)."""
    from fairseq_mswa.cost import tiles as T

    if device != "cuda" or quick:
        return (64,), 16, (lambda seg: 1)
    return (tuple(segments), T.PAPER_SHAPE["base_window"],
            (lambda seg: max(1, T.PAPER_TOKENS_PER_STEP // seg)))


def _warm_sweep(configs, schedules, batch_of, device, tdtype, backward, fn, budget_s, t_start):
    """Build and warm up (block masks, compilation) every configuration (segment, schedule,
    tiles) in priority order until ``budget_s`` is spent. Returns (steps, meta, errors, skipped):
    per configuration its [(step function, count)], its calls' tile work, the kernel's refusal."""
    from fairseq_mswa.cost import tiles as T

    steps, meta, errors, skipped = {}, {}, {}, []
    for cfg in configs:
        seg, name, plan = cfg
        if budget_s is not None and time.time() - t_start > budget_s:
            skipped.append(cfg)
            continue
        calls = _tile_calls(schedules[name], seg, plan)
        try:
            fns = [(_flex_step(w, m, t, batch_of(seg), seg, device, tdtype, backward, fn), n)
                   for w, m, t, n in calls]
            for f, _ in fns:
                f()
        except Exception as e:  # a shape the kernel refuses: recorded, the sweep goes on
            errors[cfg] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            continue
        steps[cfg] = fns
        meta[cfg] = {"calls": [{"windows": list(w), "memory": m, "tile": list(t), "count": n,
                                "tile_work": T.call_tile_work(w, seg, m, t)}
                               for w, m, t, n in calls]}
    return steps, meta, errors, skipped


def _time_sweep(steps, reps: int, device: str) -> dict:
    """Seconds per 12-layer step of every warmed configuration, ``reps`` samples each, the
    order reversed on every other repetition (interleaved, so drift is shared)."""
    samples = {cfg: [] for cfg in steps}
    for rep in range(reps):
        for cfg in (list(steps) if rep % 2 == 0 else list(steps)[::-1]):
            samples[cfg].append(sum(n * timed(f, device) for f, n in steps[cfg]))
    return samples


def _sweep_label(plan) -> str:
    from fairseq_mswa.cost import tiles as T

    return plan if plan == "chosen" else T.tile_label(plan)


def _sweep_rows(configs, batch_of, samples, meta, errors) -> list:
    rows = []
    for cfg in configs:
        seg, name, plan = cfg
        row = {"segment": seg, "schedule": name, "tiles": _sweep_label(plan), "batch": batch_of(seg)}
        if cfg in samples:
            row.update(median_s=statistics.median(samples[cfg]), samples_s=samples[cfg], **meta[cfg])
            row["tile_work"] = sum(c["tile_work"] * c["count"] for c in meta[cfg]["calls"])
        else:
            row["error" if cfg in errors else "skipped"] = errors.get(cfg, "time budget spent")
        rows.append(row)
    return rows


def _sweep_summary(rows, segments, plans) -> list:
    """Per segment: MSWA / SWA at equal tiles, each schedule's fastest tiles, and MSWA at its
    fastest over SWA at its fastest."""
    by = {(r["segment"], r["schedule"], r["tiles"]): r.get("median_s") for r in rows}
    summary = []
    for seg in segments:
        m = {p: by[(seg, "mswa", _sweep_label(p))] for p in plans}
        sw = {p: by[(seg, "swa", _sweep_label(p))] for p in plans}
        done_m = {p: t for p, t in m.items() if t is not None}
        done_s = {p: t for p, t in sw.items() if t is not None}
        summary.append({
            "segment": seg,
            "mswa_over_swa_same_tiles": {_sweep_label(p): m[p] / sw[p] for p in plans
                                         if m[p] is not None and sw[p] is not None},
            "fastest_mswa": _sweep_label(min(done_m, key=done_m.get)) if done_m else None,
            "fastest_swa": _sweep_label(min(done_s, key=done_s.get)) if done_s else None,
            "mswa_fastest_over_swa_fastest": (min(done_m.values()) / min(done_s.values())
                                              if done_m and done_s else None),
        })
    return summary


def tile_sweep(device="cuda", dtype="bfloat16", segments=(512, 2048), reps=5, tiles=None,
               quick=False, budget_s=None, compiled=None) -> dict:
    """MSWA and SWA attention through FlexAttention at every tile shape and at their chosen tiles.

    GPU (``device='cuda'``): the paper's 12 x 8 model, head dim 64, base 128, batch = 16,384
    tokens / segment, forward + backward in ``dtype``, compiled flex with kernel blocks matching
    the block mask. ``quick`` / CPU rehearsal: segment 64, base 16, batch 1, forward only, eager
    flex unless ``compiled`` (the CPU's flex has no backward; eager materialises every score).
    Configurations run in priority order (chosen tiles, 128x128, then smaller) until ``budget_s``
    (seconds of warm-up / compilation) is spent; the rest are listed as skipped. Each layer's
    tile work (``cost.tiles``) is recorded beside its time, so the run can refit
    ``tile_efficiency``. Returns a JSON-ready dict; times are seconds per 12-layer step."""
    import warnings

    from torch._dynamo import config as dynamo
    from torch.nn.attention.flex_attention import flex_attention

    from fairseq_mswa.cost import tiles as T

    tiles = [tuple(t) for t in (tiles or T.GPU_TILES)]
    cpu = device != "cuda"
    segments, base, batch_of = _sweep_shape(device, quick, segments)
    backward = not cpu
    compiled = (not cpu) if compiled is None else compiled
    # every (shape, tile) is its own graph: past the default limit of 8 recompiles flex would run
    # unfused (every score materialised) and the sweep would time that
    limits = (dynamo.recompile_limit, dynamo.accumulated_recompile_limit)
    dynamo.recompile_limit = dynamo.accumulated_recompile_limit = 4096
    fn = torch.compile(flex_attention, dynamic=False) if compiled else flex_attention
    schedules = {name: build_schedule(LAYERS, HEADS, base, name) for name in ("mswa", "swa")}
    plans = ["chosen"] + tiles
    configs = [(seg, name, plan) for seg in segments for plan in plans for name in ("mswa", "swa")]
    with _BwdConfigsForTiles(tiles) as patch, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        try:
            steps, meta, errors, _ = _warm_sweep(configs, schedules, batch_of, device,
                                                 getattr(torch, dtype), backward, fn, budget_s,
                                                 time.time())
            samples = _time_sweep(steps, reps, device)
        finally:
            dynamo.recompile_limit, dynamo.accumulated_recompile_limit = limits
    rows = _sweep_rows(configs, batch_of, samples, meta, errors)
    return {"device": device, "dtype": dtype, "backward": backward, "compiled": compiled,
            "segments": list(segments), "base_window": base, "reps": reps,
            "bwd_configs_patched": patch.patched, "bwd_patch_error": patch.error,
            "rehearsal": cpu,
            "note": ("CPU rehearsal: eager FlexAttention forward only, every score materialised: "
                     "the times say nothing about tiles" if cpu and not compiled else
                     "CPU rehearsal: compiled FlexAttention forward only (C++ template)" if cpu
                     else "attention kernel only (no position term), forward + backward"),
            "rows": rows, "summary": _sweep_summary(rows, segments, plans)}


def _label_order(label: str):
    """'chosen' first, then tile shapes from the largest (area, then query block)."""
    if label == "chosen":
        return (0, 0, 0)
    bq, bk = (int(x) for x in label.split("x"))
    return (1, -bq * bk, -bq)


def tile_markdown(result) -> str:
    s = result["sweep"]
    m = result["machine"]
    lines = ["# MSWA / SWA through FlexAttention per tile shape (issue 29)", "",
             f"Machine: {m['cpu_model']} ({m['cpu_count']} cores), {m['platform']}, torch "
             f"{m['torch']}, device {m['device']}" + (f" ({m['gpu']})" if "gpu" in m else "")
             + f", dtype {s['dtype']}, {'forward + backward' if s['backward'] else 'forward only'}"
             f", {'compiled' if s['compiled'] else 'eager'} flex.",
             f"Command: `{result['command']}` (commit {commit_text(result)}, {result.get('date')})",
             "", f"**{s['note']}**", "",
             "| segment | tiles | MSWA s | SWA s | MSWA / SWA | MSWA tile work / SWA's |",
             "|---|---|---|---|---|---|"]
    rows = {(r["segment"], r["schedule"], r["tiles"]): r for r in s["rows"]}
    for seg in s["segments"]:
        labels = {r["tiles"] for r in s["rows"]}
        for label in sorted(labels, key=_label_order):
            a, b = rows[(seg, "mswa", label)], rows[(seg, "swa", label)]
            ta, tb = a.get("median_s"), b.get("median_s")
            cell = lambda r, t: f"{t:.4f}" if t is not None else r.get("error", r.get("skipped", ""))[:60]  # noqa: E731
            ratio = f"{ta / tb:.3f}" if ta and tb else "-"
            work = (f"{a['tile_work'] / b['tile_work']:.3f}" if "tile_work" in a and "tile_work" in b
                    else "-")
            lines.append(f"| {seg} | {label} | {cell(a, ta)} | {cell(b, tb)} | {ratio} | {work} |")
    lines.append("")
    for x in s["summary"]:
        ratio = x["mswa_fastest_over_swa_fastest"]
        lines.append(f"Segment {x['segment']}: fastest MSWA {x['fastest_mswa']}, fastest SWA "
                     f"{x['fastest_swa']}, MSWA fastest / SWA fastest "
                     + ("-" if ratio is None else f"{ratio:.3f}") + ".")
    return "\n".join(lines) + "\n"


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
    p.add_argument("--tile-sweep", action="store_true",
                   help="time MSWA and SWA through FlexAttention per tile shape and at their chosen "
                        "tiles (issue 29; a CPU runs the tiny forward-only rehearsal)")
    p.add_argument("--segments", default="512,2048", help="--tile-sweep: segment lengths (GPU)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="--tile-sweep: stop adding configurations after this many seconds of "
                        "warm-up / compilation (the rest are listed as skipped)")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--md", default=None, help="write the markdown table here")
    args = p.parse_args(argv)
    if 1 not in [int(x) for x in args.batches.split(",")]:
        p.error("--batches must include 1 (the ratios use batch 1)")
    torch.set_num_threads(args.threads)
    prov = provenance(script_command("bench_attention.py", argv), args.device, torch.get_num_threads())
    if args.tile_sweep:
        return tile_main(args, prov)
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
    write_result(result, args.json, args.md, markdown(result))
    return result


def tile_main(args, prov) -> dict:
    """``--tile-sweep``: run :func:`tile_sweep`, print its Markdown, write --json / --md."""
    t0 = time.time()
    sweep = tile_sweep(args.device, args.dtype, [int(x) for x in args.segments.split(",")],
                       args.reps, quick=args.device != "cuda", budget_s=args.budget_s)
    prov["machine"]["load_average_at_end"] = load_average()
    result = {**prov, "wall_s": round(time.time() - t0, 1), "sweep": sweep}
    write_result(result, args.json, args.md, tile_markdown(result))
    return result


if __name__ == "__main__":
    main()
