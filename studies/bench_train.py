"""Training tokens/s (CPU; a GPU with ``--device cuda``) of ``transformer_xl_mswa`` (swa, mswa and, at
the paper's shape, full) against fairseq's own ``transformer_lm``, at the shapes the project trains,
all measured in one run.

    python scripts/bench_train.py --json results/bench/train_cpu.json --md results/bench/train_cpu.md
    python scripts/bench_train.py --shapes demo,cpu_table     # the small shapes only (a minute)
    python scripts/bench_train.py --quick          # tiny shapes: checks that it runs (seconds)

Shapes (``SHAPES``): ``demo`` (scripts/run_demo.sh's model: 4 x 4, d 128, segment 64, batch 16,
base 32), ``cpu_table`` (the CPU-scale tables: 4 x 4, d 64, segment 128, batch 8, base 32),
``paper`` (the MSWA paper's base model: 12 layers x 512, 8 heads of 64, FFN 2048, base 128,
segments 512 and 2048, batch 1). Vocabulary of 256 symbols; dropout 0.

What is timed: one training step = forward + cross-entropy + backward + ``torch.optim.Adam`` step
(+ zero_grad) on one batch of segments; tokens/s = batch x segment / step time.

* ``xl_full``: ``transformer_xl_mswa --attn-pattern full --mem-len SEG`` (Transformer-XL's
  convention: the memory is as long as the segment; keys = 2 * SEG).
* ``xl_swa``:  ``--attn-pattern swa --base-window W``, default memory (each layer keeps what its
  windows need: W - 1 states).
* ``xl_mswa``: ``--attn-pattern mswa --base-window W`` (windows W/16 .. 4W), default memory (per
  layer its largest window - 1).
* ``transformer_lm``: fairseq's ``TransformerLanguageModel`` built from its own config and
  ``transformer_lm`` architecture function, same shape, tokens_per_sample = SEG, no memory.

The XL models run consecutive segments of their streams (``StreamState`` with one key and
increasing start), so after ``--warmup`` steps the memory is at steady state. All variants of a
shape and segment length are built together and timed interleaved step by step, the order
alternating (drift from other load on the machine hits all alike). A ratio is the median of the
per-rep ratios (adjacent steps), reported with its quartiles and extremes: the spread between
repetitions. Targets (``RATIOS``, ``SMALL_TARGET``, ``ATTN_TARGET``) are checked and reported,
never asserted.
"""

import argparse
import os
import statistics
import sys
import time
from typing import List, Optional

import torch
import torch.nn.functional as F

from tqdm import tqdm

from fairseq_mswa.cost.flops import XL_PATTERN, step_flops
from fairseq_mswa.allocator import ALLOCATOR_HELP, apply_for_run
from studies.arch import DictionaryTask, build_arch_model
from fairseq_mswa.modules.xl_attention import RelMultiheadWindowAttention
from studies.stats import paired_ratio
from studies.run_utils import commit_text, load_average, provenance, script_command, write_result
from fairseq_mswa.schedule import build_schedule
from fairseq_mswa.stream import StreamState

# torch.optim.Adam implementations: on CPU the default is the per-tensor for-loop, several times
# slower than the fused kernel (which is what a CPU user should pick; the same for every variant)
ADAM_IMPL = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}
VARIANTS = ("transformer_lm", "xl_full", "xl_swa", "xl_mswa")
# The shapes the project itself trains at (name -> model shape, segment lengths, batch, variants):
#   demo       scripts/run_demo.sh (studies.demo.FULL)
#   cpu_table  the CPU-scale tables (configs/tables/setup.yaml, scales.cpu: 4 x 4, d 64, segment 128,
#              8 sequences per update)
#   paper      the MSWA paper's base model (12 x 512, 8 heads, FFN 2048), batch 1 per step
SHAPES = {
    "demo": dict(layers=4, dim=128, ffn=512, heads=4, base_window=32, segments="64", batch=16,
                 variants=("xl_swa", "xl_mswa")),
    "cpu_table": dict(layers=4, dim=64, ffn=256, heads=4, base_window=32, segments="128", batch=8,
                      variants=("xl_swa", "xl_mswa")),
    "paper": dict(layers=12, dim=512, ffn=2048, heads=8, base_window=128, segments="512,2048",
                  batch=1, variants=VARIANTS),
}
PAPER_SHAPE = SHAPES["paper"]
QUICK_SHAPE = dict(layers=4, dim=64, ffn=128, heads=4, base_window=16, segments="64,128", batch=1,
                   variants=VARIANTS)
SMALL_TARGET = ">= 1.0"  # train_mswa_over_swa_<shape> of the small shapes

# ratio name (with {lo} / {hi} = the first / last segment length) -> (numerator, denominator,
# segment, target); ratios are of tokens/s
RATIOS = {
    "mswa_over_swa_{lo}": ("xl_mswa", "xl_swa", "lo", ">= 0.98"),
    "mswa_over_swa_{hi}": ("xl_mswa", "xl_swa", "hi", ">= 1.0"),
    "mswa_over_full_{hi}": ("xl_mswa", "xl_full", "hi", ">= 1.5"),
    "swa_over_transformer_lm_{lo}": ("xl_swa", "transformer_lm", "lo", ">= 0.8"),
    "full_over_transformer_lm_{hi}": ("xl_full", "transformer_lm", "hi", ">= 0.35"),
}
# time ratio of the attention layers alone: MSWA's XL attention layers over SWA's (the core: the
# window-dependent part, projections shared by both patterns taken out; the cost model's 0.879)
ATTN_TARGET = "<= 0.95"


def build_xl(variant: str, shape: dict, seg: int, task):
    """``--arch transformer_xl_mswa`` at ``shape``: full with ``--mem-len SEG``, else the
    default memory (-1: what each layer's windows need); dropout 0."""
    return build_arch_model("transformer_xl_mswa", task, dict(
        tokens_per_sample=seg, max_target_positions=seg, decoder_layers=shape["layers"],
        decoder_embed_dim=shape["dim"], decoder_ffn_embed_dim=shape["ffn"],
        decoder_attention_heads=shape["heads"], attn_pattern=XL_PATTERN[variant],
        base_window=shape["base_window"], mem_len=seg if variant == "xl_full" else -1,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0))


def build_transformer_lm(shape: dict, seg: int, task):
    """fairseq's ``--arch transformer_lm`` as fairseq-train builds it, with our shape as flags
    (flags win over the preset), tied embeddings as transformer_xl_mswa (vocab 256: negligible)."""
    return build_arch_model("transformer_lm", task, dict(
        tokens_per_sample=seg, max_target_positions=seg, add_bos_token=False, tpu=False,
        decoder_layers=shape["layers"], decoder_embed_dim=shape["dim"],
        decoder_input_dim=shape["dim"], decoder_output_dim=shape["dim"],
        decoder_ffn_embed_dim=shape["ffn"], decoder_attention_heads=shape["heads"],
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        share_decoder_input_output_embed=True))


def _sync(device):
    """Wait for queued GPU work, so that wall-clock times cover it (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Runner:
    """One model + Adam, stepping through one token stream segment by segment."""

    def __init__(self, variant, model, seg, vocab, seed, adam_impl="fused", device="cpu", batch=1):
        self.device, self.batch = device, batch
        self.variant, self.model, self.seg = variant, model.to(device).train(), seg
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4, **ADAM_IMPL[adam_impl])
        self.gen = torch.Generator().manual_seed(seed)
        self.vocab = vocab
        self.start = 0
        self.params = sum(p.numel() for p in model.parameters())

    def step(self):
        """One training step on the next segment; returns (wall seconds, process CPU seconds)."""
        tokens = torch.randint(4, self.vocab, (self.batch, self.seg + 1),
                               generator=self.gen).to(self.device)
        src, tgt = tokens[:, :-1], tokens[:, 1:].contiguous()
        _sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        if self.variant == "transformer_lm":
            logits, _ = self.model(src)
        else:
            logits, _ = self.model(src, stream=StreamState("bench", self.start))
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt.view(-1))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        _sync(self.device)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        self.start += self.seg
        return dt, dc

    def memory_lengths(self):
        if self.variant == "transformer_lm":
            return None
        mem = self.model.decoder.stream_memories.get("bench")
        if mem is None or mem.mems is None:
            return None
        return [int(m.shape[1]) for m in mem.mems[1:-1:2]]


def profile_step(runner: Runner, top: int) -> list:
    """Top ops by self CPU time in one (untimed) step: what dominates."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        runner.step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 2),
             "share": round(e.self_cpu_time_total / total, 4), "calls": e.count}
            for e in events[:top]]


def time_attention_layers(shape: dict, seg: int, reps: int, warmup: int, device="cpu") -> dict:
    """Forward + backward time of the XL attention layers alone (position term included), SWA
    against MSWA at the same base window, each layer fed a steady-state memory of its default
    length (largest window - 1), timed interleaved. Also times the part every pattern shares
    (the segment's Q/K/V and output projections, ``proj``): ``core = layer - proj`` is the
    window-dependent work (memory K/V, position term, attention), the part the cost model prices.
    Returns medians and the MSWA / SWA ratios."""
    layers, mems = {}, {}
    for pattern in ("swa", "mswa"):
        sched = build_schedule(shape["layers"], shape["heads"], shape["base_window"], pattern)
        torch.manual_seed(0)
        layers[pattern] = [RelMultiheadWindowAttention(shape["dim"], shape["heads"], sched.layer(i)).to(device)
                           for i in range(sched.num_layers)]
        mems[pattern] = [torch.randn(1, sched.max_window(i) - 1, shape["dim"]).to(device)
                         for i in range(sched.num_layers)]
    x = torch.randn(1, seg, shape["dim"]).to(device).requires_grad_()

    def proj_only(layer):  # the segment's projections, as the layer does them
        e = shape["dim"]
        qkv = F.linear(x, layer.qkv_proj.weight).view(1, seg, 3, e)
        return F.linear(qkv[:, :, 0] + qkv[:, :, 1] + qkv[:, :, 2], layer.out_proj.weight)

    def step(pattern):
        _sync(device)
        t0 = time.perf_counter()
        for layer, mem in zip(layers[pattern], mems[pattern]):
            if pattern == "proj":
                proj_only(layer).sum().backward()
            else:
                layer(x, mem, 0).sum().backward()
        _sync(device)
        return time.perf_counter() - t0

    layers["proj"], mems["proj"] = layers["swa"], mems["swa"]
    names = ("swa", "mswa", "proj")
    for _ in range(warmup):
        for pattern in names:
            step(pattern)
    samples = {p: [] for p in names}
    for rep in range(reps):
        for pattern in (names if rep % 2 == 0 else names[::-1]):
            samples[pattern].append(step(pattern))
    med = {p: statistics.median(v) for p, v in samples.items()}
    core = {p: med[p] - med["proj"] for p in ("swa", "mswa")}
    return {"segment": seg, "median_s": med, "samples_s": samples,
            "mswa_over_swa_time": med["mswa"] / med["swa"],
            "core_mswa_over_swa_time": core["mswa"] / core["swa"] if core["swa"] > 0 else None}


def layout_name(sizes) -> str:
    """``grouped`` (one pass per window group), ``merged`` (one pass) or e.g. ``2+1+1``."""
    if len(sizes) == 1:
        return "merged"
    return "grouped" if set(sizes) == {1} else "+".join(map(str, sizes))


def time_layouts(shape: dict, seg: int, reps: int, warmup: int, device="cpu") -> list:
    """Forward + backward time of each distinct MSWA layer of ``shape`` alone (batch
    ``shape['batch']``, steady-state memory) in every layout (every partition of its window
    groups into passes: ``grouped``, ``merged`` and those between, e.g. ``2+1+1``), timed
    interleaved; beside each the layout ``auto`` picks (``plan.best_partition``) and what the
    plan's cost model counts (passes, FLOPs): the data that calibrates the model."""
    from fairseq_mswa.kernels.plan import (best_partition, compositions, layout_seconds,
                                           pass_flops, pass_windows)
    from fairseq_mswa.kernels.common import window_groups

    sched = build_schedule(shape["layers"], shape["heads"], shape["base_window"], "mswa")
    b, e, h = shape["batch"], shape["dim"], shape["heads"]
    d = e // h
    out, seen = [], set()
    for i in range(sched.num_layers):
        windows = tuple(sched.layer(i))
        if windows in seen:
            continue
        seen.add(windows)
        mem_len = sched.max_window(i) - 1
        torch.manual_seed(0)
        layer = RelMultiheadWindowAttention(e, h, windows).to(device)
        x = torch.randn(b, seg, e, device=device, requires_grad=True)
        mem = torch.randn(b, mem_len, e, device=device)
        layouts = {layout_name(c): c for c in compositions(len(window_groups(windows)))}

        def step(sizes):
            layer.strategy = sizes
            _sync(device)
            t0 = time.perf_counter()
            layer(x, mem, 0).sum().backward()
            _sync(device)
            return time.perf_counter() - t0

        for _ in range(warmup):
            for sizes in layouts.values():
                step(sizes)
        t = {name: [] for name in layouts}
        names = list(layouts)
        for rep in range(reps):
            for name in (names if rep % 2 == 0 else names[::-1]):
                t[name].append(step(layouts[name]))
        med = {k: statistics.median(v) for k, v in t.items()}
        auto = layout_name(best_partition(windows, b, seg, mem_len, d))
        faster = min(med, key=med.get)
        out.append({
            "layer": i, "windows": list(windows), "batch": b, "segment": seg, "memory": mem_len,
            "median_s": med, "faster": faster, "auto": auto,
            "auto_over_fastest": med[auto] / med[faster],
            "passes": {k: len(c) for k, c in layouts.items()},
            "flops": {k: sum(pass_flops(p, b, seg, mem_len, d, e) for p in pass_windows(windows, c))
                      for k, c in layouts.items()},
            "model_s": {k: layout_seconds(windows, c, b, seg, mem_len, d) for k, c in layouts.items()},
        })
    return out


def _refit_sentence(refit: Optional[dict]) -> str:
    if not refit:
        return ""
    return (f" Refit on this run's layers (plan.fit_constants): {1e3 * refit['call_seconds']:.2f} ms "
            f"per pass, {refit['flops_per_second'] / 1e9:.0f} GFLOP/s, picking the faster in "
            f"{refit['refit_picks_faster']} of {refit['layers']} (shipped constants "
            f"{1e3 * refit['shipped']['call_seconds']:.2f} ms, "
            f"{refit['shipped']['flops_per_second'] / 1e9:.0f} GFLOP/s).")


def _refit(layouts: dict) -> Optional[dict]:
    """The plan's two constants as this run's layouts would fit them (``plan.fit_constants``),
    with how many layers the refit and the shipped constants each pick right."""
    from fairseq_mswa.kernels import plan

    layers = [x for v in layouts.values() for x in v]
    fit = plan.fit_constants(layers)
    if fit is None:
        return None
    return {"call_seconds": fit[0], "flops_per_second": fit[1], "layers": len(layers),
            "refit_picks_faster": plan.picks_faster(layers, *fit),
            "shipped": {"call_seconds": plan.CALL_SECONDS, "flops_per_second": plan.FLOPS_PER_SECOND,
                        "picks_faster": plan.picks_faster(layers, plan.CALL_SECONDS,
                                                          plan.FLOPS_PER_SECOND)}}


def attention_layer_flops(pattern: str, shape: dict, seg: int) -> float:
    """Needed forward FLOPs of the XL attention layers alone (segment projections included),
    as ``step_flops`` counts them: their MSWA / SWA ratio is what the layer time can reach."""
    ffn_free = dict(shape, ffn=0)
    return (step_flops("xl_" + pattern, ffn_free, seg, 0)) / 3


def run_shape(args, name: str, shape: dict) -> dict:
    """Every variant of ``shape`` at each of its segment lengths, built together and timed
    interleaved step by step (order alternating). Rows carry the shape's name."""
    task = DictionaryTask(args.vocab - 4)  # args.vocab symbols, fairseq's 4 specials included
    d = task.source_dictionary
    segments = [int(x) for x in shape["segments"].split(",")]
    rows, profiles = [], {}
    for seg in segments:
        runners = []
        for i, variant in enumerate(shape["variants"]):
            torch.manual_seed(args.seed)
            model = (build_transformer_lm(shape, seg, task) if variant == "transformer_lm"
                     else build_xl(variant, shape, seg, task))
            runners.append(Runner(variant, model, seg, len(d), args.seed + i, args.adam, args.device,
                                  shape["batch"]))
        for r in runners:  # warm-up: allocations, then the memory reaches its steady length
            for _ in range(args.warmup):
                r.step()
        samples = {r.variant: [] for r in runners}
        cpu = {r.variant: [] for r in runners}
        for rep in tqdm(range(args.reps), desc=f"{name} segment {seg}", unit="rep", file=sys.stderr):
            order = runners if rep % 2 == 0 else runners[::-1]  # no variant always first
            for r in order:
                wall, proc = r.step()
                samples[r.variant].append(wall)
                cpu[r.variant].append(proc)
        for r in runners:
            med = statistics.median(samples[r.variant])
            rows.append({
                "shape": name, "variant": r.variant, "segment": seg, "batch": shape["batch"],
                "tokens_per_s": shape["batch"] * seg / med, "median_step_s": med,
                "min_step_s": min(samples[r.variant]), "samples_s": samples[r.variant],
                "process_cpu_s": cpu[r.variant],  # CPU seconds of all threads; ~threads x wall when not contended
                "params": r.params, "memory_lengths": r.memory_lengths(),
            })
            if args.profile:
                profiles[f"{name}:{r.variant}@{seg}"] = profile_step(r, args.profile)
        del runners
    return {"rows": rows, "profiles": profiles, "segments": segments}


def _row(rows, shape, variant, seg):
    return next((r for r in rows if (r["shape"], r["variant"], r["segment"]) == (shape, variant, seg)),
                None)


def ratios(rows, name: str, shape: dict):
    """{ratio name: paired_ratio dict or None}, {ratio name: target} of one shape: the paper
    shape's RATIOS by segment length, a small shape's ``train_mswa_over_swa_<name>``."""
    segments = [int(x) for x in shape["segments"].split(",")]
    if name in ("paper", "quick"):
        ends = {"lo": segments[0], "hi": segments[-1]}
        wanted = [(n.format(**ends), num, den, ends[end], t) for n, (num, den, end, t) in RATIOS.items()]
    else:
        wanted = [(f"train_mswa_over_swa_{name}", "xl_mswa", "xl_swa", segments[-1], SMALL_TARGET)]
    values, targets = {}, {}
    for key, num, den, seg, target in wanted:
        a, b = _row(rows, name, num, seg), _row(rows, name, den, seg)
        values[key] = None if a is None or b is None else paired_ratio(a["samples_s"], b["samples_s"])
        targets[key] = target
    return values, targets


def check(value, target):
    if value is None or target is None:
        return None
    op, bound = target.split()
    return value >= float(bound) if op == ">=" else value <= float(bound)


def _spread(r) -> str:
    return f"{r['median']:.3f} ({r['q1']:.3f}..{r['q3']:.3f}; {r['min']:.3f}..{r['max']:.3f})"


def _md_header(result) -> List[str]:
    """Title, machine, command and what one step is."""
    m = result["machine"]
    lines = [
        f"# Training throughput on {m['device'].upper()}: transformer_xl_mswa (full / swa / mswa) "
        "vs fairseq transformer_lm, at the shapes the project trains",
        "",
        f"Machine: {m['cpu_model']} ({m['cpu_count']} cores, torch threads {m['torch_threads']}), "
        + (f"GPU {m['gpu']}, " if "gpu" in m else "") +
        f"{m['platform']}, torch {m['torch']}, fairseq {m['fairseq']}; load average (1, 5, 15 min) "
        f"at start {m['load_average_at_start']}, at end {m['load_average_at_end']}.",
        f"Command: `{result['command']}` ({result['wall_s']} s), {result['date']}, commit "
        f"{commit_text(result)}.",
        "",
        f"One step = forward + backward + {result['optimizer']} on one batch of segments; XL "
        f"variants continue one stream per row with memory ({result['warmup']} warm-up steps "
        f"first); vocab {result['vocab']}, dropout 0, float32. Per shape and segment length the "
        f"variants are timed interleaved, {result['reps']} reps; tokens/s from the median step; "
        "each ratio is the median of the per-rep ratios, with quartiles and extremes beside it. "
        f"All numbers measured in this one run. CPU allocator: {result.get('allocator', 'not recorded')}.",
        "",
    ]
    if result["quick"]:
        lines += ["**--quick: tiny shapes, a check that the script runs; the targets are for the "
                  "real shapes and mean nothing here.**", ""]
    return lines


def _md_variant(result, name: str, variant: str, segs: List[int]) -> str:
    cells, mem = [], "-"
    for n in segs:
        row = _row(result["rows"], name, variant, n)
        cells.append("-" if row is None else
                     f"{row['tokens_per_s']:.0f} ({row['median_step_s']:.3f} s)")
        if row is not None and row["memory_lengths"] is not None:
            ml = row["memory_lengths"]
            mem_n = f"{min(ml)}" if min(ml) == max(ml) else f"{min(ml)}..{max(ml)}"
            mem = mem_n if mem == "-" else f"{mem} / {mem_n}"
    return f"| {variant} | {mem} | " + " | ".join(cells) + " |"


def _md_shapes(result) -> List[str]:
    """Per shape: tokens/s of every variant at every segment length."""
    lines = []
    for name, shape in result["shapes"].items():
        segs = [int(x) for x in shape["segments"].split(",")]
        lines += [f"## {name}: {shape['layers']} layers x {shape['dim']}, {shape['heads']} heads, "
                  f"FFN {shape['ffn']}, base window {shape['base_window']}, batch {shape['batch']}", "",
                  "| variant | memory per layer | " + " | ".join(f"tokens/s @ {n} (step)" for n in segs)
                  + " |", "|---|---|" + "---|" * len(segs)]
        lines += [_md_variant(result, name, v, segs) for v in shape["variants"]] + [""]
    return lines


def _md_ratios(result) -> List[str]:
    """The ratios with their spread against their targets."""
    lines = ["| ratio (tokens/s) | median (quartiles; extremes) | target | met |", "|---|---|---|---|"]
    for key, value in result["ratios"].items():
        target = result["targets"].get(key) or "-"
        ok = result["pass"].get(key)
        if isinstance(value, dict):
            shown = _spread(value)
        else:
            shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(f"| {key} | {shown} | {target} | "
                     f"{'n/a' if ok is None else ('yes' if ok else 'NO')} |")
    return lines + [""]


def _md_attention_layers(a) -> List[str]:
    return [f"Attention layers alone (every XL attention layer of the {a['shape']} shape, "
            f"position term included, forward + backward, segment {a['segment']}, "
            f"steady-state memory): SWA {a['median_s']['swa']:.3f} s, MSWA "
            f"{a['median_s']['mswa']:.3f} s, shared projections {a['median_s']['proj']:.3f} s "
            f"-> attn_layers_mswa_over_swa_time = {a['mswa_over_swa_time']:.3f}, "
            f"attn_core_mswa_over_swa_time = {a['core_mswa_over_swa_time']:.3f} (cost model: "
            "225/256 = 0.879).", ""]


def _md_layouts(result) -> List[str]:
    """Each distinct MSWA layer's layouts timed against the plan's pick."""
    hit, total = result["layouts_auto_picks_faster"]
    lines = [f"Layouts of each distinct MSWA layer alone (forward + backward; every partition "
             "of its window groups into passes timed interleaved: grouped = one pass per "
             "group, merged = one pass, 2+1+1 = the two smallest windows' groups together; "
             f"`auto` = the plan's pick, kernels/plan.py): auto picks the fastest in {hit} of "
             f"{total} layers; summed over them its layouts take "
             f"{result['layouts_auto_over_fastest']:.3f}x the fastest's time."
             + _refit_sentence(result.get("layouts_refit")), "",
             "| shape @ segment | windows | grouped ms | merged ms | fastest (ms) | auto (ms) "
             "| auto / fastest |",
             "|---|---|---|---|---|---|---|"]
    for key, layers in result["layouts"].items():
        for x in layers:
            t = x["median_s"]
            lines.append(f"| {key} | {x['windows'][0]}..{x['windows'][-1]} | "
                         f"{1e3 * t['grouped']:.2f} | {1e3 * t['merged']:.2f} | "
                         f"{x['faster']} ({1e3 * t[x['faster']]:.2f}) | "
                         f"{x['auto']} ({1e3 * t[x['auto']]:.2f}) | {x['auto_over_fastest']:.3f} |")
    return lines + [""]


def _md_profiles(profiles) -> List[str]:
    lines = ["Top ops by self CPU time in one profiled step (share of the step):", ""]
    for key, ops in profiles.items():
        lines.append(f"- {key}: " + ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in ops[:6]))
    return lines + [""]


def markdown(result) -> str:
    """train_cpu.md / train_gpu.md: header, per-shape throughput, ratios against targets, then
    whichever of attention layers, layouts, GFLOPs and profiles the run measured."""
    lines = _md_header(result) + _md_shapes(result) + _md_ratios(result)
    if result.get("attention_layers"):
        lines += _md_attention_layers(result["attention_layers"])
    if result.get("layouts"):
        lines += _md_layouts(result)
    if result.get("step_gflops"):
        lines += ["Needed GFLOPs per step (`step_flops`, times the batch): " + ", ".join(
            f"{k} {v}" for k, v in result["step_gflops"].items()), ""]
    if result.get("profiles"):
        lines += _md_profiles(result["profiles"])
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python scripts/bench_train.py``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 reps: checks that it runs")
    p.add_argument("--shapes", default=None,
                   help="comma list of " + ", ".join(SHAPES) + " (default: all on CPU, paper on CUDA)")
    p.add_argument("--segments", default=None, help="comma list of segment lengths of the paper "
                   "shape (default 512,2048); its ratios use the first and the last")
    p.add_argument("--layers", type=int, default=None, help="override of the paper shape")
    p.add_argument("--dim", type=int, default=None, help="override of the paper shape")
    p.add_argument("--ffn", type=int, default=None, help="override of the paper shape")
    p.add_argument("--heads", type=int, default=None, help="override of the paper shape")
    p.add_argument("--base-window", type=int, default=None, help="override of the paper shape")
    p.add_argument("--vocab", type=int, default=256, help="dictionary size (with fairseq's 4 specials)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma list of " + ", ".join(VARIANTS) + " (paper shape)")
    p.add_argument("--reps", type=int, default=None, help="timed steps per variant (default 5, quick 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed segments first (memory fills up)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--release-freed-memory", action="store_true", help=ALLOCATOR_HELP)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, profile one step per variant and keep the top N ops")
    p.add_argument("--adam", default="fused", choices=list(ADAM_IMPL),
                   help="torch.optim.Adam implementation (default fused: the fastest on CPU)")
    p.add_argument("--no-attn-layers", action="store_true",
                   help="skip timing the XL attention layers alone (SWA vs MSWA)")
    p.add_argument("--no-layouts", action="store_true",
                   help="skip timing each MSWA layer alone, grouped vs merged (the plan's data)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the models train (cuda: the first GPU; timings synchronise it)")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--md", default=None, help="write the markdown table here")
    return p


def resolve_shapes(p: argparse.ArgumentParser, args) -> dict:
    """{shape name: shape} to time, from --quick / --shapes (default: every shape on CPU, the
    paper's on CUDA), the paper (or quick) shape with the command line's overrides and
    --variants; checks the options (``p.error`` names a bad one) and sets --reps' default."""
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variants {bad}: use some of {', '.join(VARIANTS)}")
    if args.quick:
        names = ["quick"]
    else:
        names = [n for n in (args.shapes or ("paper" if args.device == "cuda" else ",".join(SHAPES)))
                 .split(",") if n]
        unknown = [n for n in names if n not in SHAPES]
        if unknown:
            p.error(f"unknown shapes {unknown}: use some of {', '.join(SHAPES)}")
    shapes = {n: dict(QUICK_SHAPE if n == "quick" else SHAPES[n]) for n in names}
    for n, shape in shapes.items():
        if n in ("paper", "quick"):
            for key in ("layers", "dim", "ffn", "heads", "base_window", "segments"):
                if getattr(args, key) is not None:
                    shape[key] = getattr(args, key)
            shape["variants"] = tuple(variants)
        if shape["dim"] % shape["heads"]:
            p.error(f"--dim {shape['dim']} is not divisible by --heads {shape['heads']}")
    if args.reps is None:
        args.reps = 2 if args.quick else 5
    if args.reps < 1 or args.warmup < 1:
        p.error("--reps and --warmup must be >= 1 (the first step allocates; memory needs one segment)")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (drop the flag to run on CPU)")
    return shapes


def measure_shape(args, name: str, shape: dict, m: dict) -> None:
    """Time one shape into the run's measurements ``m`` (rows, profiles, ratios, targets, flops,
    layouts, attn): every variant and segment (:func:`run_shape`), its ratios and needed FLOPs,
    its MSWA layers' layouts (unless --no-layouts), and for the paper (or quick) shape the FLOPs
    ratios and the attention layers alone (:func:`measure_attention`)."""
    measured = run_shape(args, name, shape)
    m["rows"] += measured["rows"]
    m["profiles"].update(measured["profiles"])
    values, tg = ratios(measured["rows"], name, shape)
    m["ratios"].update(values)
    m["targets"].update(tg)
    segments = measured["segments"]
    flops, rat, targets = m["flops"], m["ratios"], m["targets"]
    flops.update({f"{name}:{v}@{n}": shape["batch"] * step_flops(v, shape, n, args.vocab)
                  for v in shape["variants"] for n in segments})
    hi = segments[-1]
    if not args.no_layouts:
        for seg in segments:
            print(f"layouts of {name}'s MSWA layers, segment {seg} ...", file=sys.stderr)
            m["layouts"][f"{name}@{seg}"] = time_layouts(shape, seg, args.reps, args.warmup, args.device)
    if f"{name}:xl_full@{hi}" in flops and f"{name}:transformer_lm@{hi}" in flops:
        rat[f"full_over_transformer_lm_{hi}_inherent"] = (flops[f"{name}:transformer_lm@{hi}"]
                                                          / flops[f"{name}:xl_full@{hi}"])
        targets[f"full_over_transformer_lm_{hi}_inherent"] = None
    if name in ("paper", "quick") and {"xl_swa", "xl_mswa"} <= set(shape["variants"]):
        for seg in segments:
            rat[f"mswa_over_swa_{seg}_flops"] = (flops[f"{name}:xl_swa@{seg}"]
                                                 / flops[f"{name}:xl_mswa@{seg}"])
            targets[f"mswa_over_swa_{seg}_flops"] = None
        if not args.no_attn_layers:
            measure_attention(args, name, shape, hi, m)


def measure_attention(args, name: str, shape: dict, hi: int, m: dict) -> None:
    """The XL attention layers of ``shape`` alone at segment ``hi``
    (:func:`time_attention_layers`) into ``m['attn']``, with their time and FLOPs ratios."""
    print(f"attention layers alone ({name}), segment {hi} ...", file=sys.stderr)
    attn = time_attention_layers(shape, hi, args.reps, args.warmup, args.device)
    attn["shape"] = name
    m["attn"] = attn
    rat, targets = m["ratios"], m["targets"]
    rat["attn_layers_mswa_over_swa_time"] = attn["mswa_over_swa_time"]
    targets["attn_layers_mswa_over_swa_time"] = None
    rat["attn_core_mswa_over_swa_time"] = attn["core_mswa_over_swa_time"]
    targets["attn_core_mswa_over_swa_time"] = ATTN_TARGET
    rat["attn_layers_mswa_over_swa_flops"] = (attention_layer_flops("mswa", shape, hi)
                                             / attention_layer_flops("swa", shape, hi))
    targets["attn_layers_mswa_over_swa_flops"] = None


def result_record(args, prov: dict, shapes: dict, allocator, wall_s: float, m: dict) -> dict:
    """The run's record: provenance, setup, every ratio (with its spread, target and pass) and
    at the top level its median, the rows, attention layers, layouts (with the plan's refit)
    and the needed GFLOPs per step."""
    rat, targets, layouts, flops = m["ratios"], m["targets"], m["layouts"], m["flops"]
    top = {k: (v["median"] if isinstance(v, dict) else v) for k, v in rat.items()}
    result = {
        **prov,  # command, git_commit, git_dirty, date, machine (with the load at the end)
        "quick": args.quick,
        "shapes": shapes,
        "vocab": args.vocab,
        "optimizer": f"torch.optim.Adam(lr=1e-4, {args.adam})",
        "dtype": "float32",
        "reps": args.reps,
        "warmup": args.warmup,
        "allocator": allocator,
        "wall_s": wall_s,
        "note": "all tokens/s and ratios measured in this one run: per shape and segment length "
                "the variants are timed interleaved step by step (order alternating); a step is "
                "forward + backward + Adam on one batch of segments",
        "ratios": rat,
        "ratio_definition": "tokens/s of the first variant over tokens/s of the second: the median "
                            "of the per-rep ratios (the two variants' steps of one rep are "
                            "adjacent), with quartiles q1 / q3 and extremes; {lo}/{hi} = the paper "
                            "shape's first / last segment length; *_flops = the needed-FLOPs "
                            "ratio (step_flops), what the time ratio could reach at equal hardware "
                            "efficiency",
        "targets": targets,
        "pass": {k: check(top[k], targets[k]) for k in rat},
        "rows": m["rows"],
        "attention_layers": m["attn"],
        "layouts": layouts,
        "layouts_auto_picks_faster": (sum(x["auto"] == x["faster"] for v in layouts.values() for x in v),
                                      sum(len(v) for v in layouts.values())),
        "layouts_refit": _refit(layouts),
        # time of auto's layouts over the fastest measured, summed over every layer timed
        "layouts_auto_over_fastest": (
            sum(x["median_s"][x["auto"]] for v in layouts.values() for x in v)
            / sum(x["median_s"][x["faster"]] for v in layouts.values() for x in v)
            if layouts else None),
        "step_gflops": {k: round(v / 1e9, 3) for k, v in flops.items()},
    }
    # every ratio at the top level too (its median), one key each
    for name, value in top.items():
        result.setdefault(name, value)
    if m["profiles"]:
        result["profiles"] = m["profiles"]
    return result


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    shapes = resolve_shapes(p, args)
    torch.set_num_threads(args.threads)
    prov = provenance(script_command("bench_train.py", argv), args.device, torch.get_num_threads())
    allocator = apply_for_run(args.release_freed_memory)
    t0 = time.time()
    m = {"rows": [], "profiles": {}, "ratios": {}, "targets": {}, "flops": {}, "layouts": {},
         "attn": None}
    for name, shape in shapes.items():
        measure_shape(args, name, shape, m)
    prov["machine"]["load_average_at_end"] = load_average()
    result = result_record(args, prov, shapes, allocator, round(time.time() - t0, 1), m)
    write_result(result, args.json, args.md, markdown(result))
    return result


if __name__ == "__main__":
    main()
