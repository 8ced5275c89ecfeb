"""Decode speed and KV-cache bytes of full attention, SWA and MSWA (the MSWA paper's Fig. 3 analogue:
its setup, our numbers; Fig. 3's values are not in our copy of the paper).

    python scripts/bench_decode.py --json results/bench/decode_cpu.json --md results/bench/decode_cpu.md
    python scripts/bench_decode.py --device cuda --json results/bench/decode_cuda.json --md ...
    python scripts/bench_decode.py --quick --json /tmp/d.json --md /tmp/d.md      # seconds (CI)

What is measured: a real ``linear_mswa`` decoder with **every layer local softmax attention** (layer
pattern ``A``; RoPE, RMSNorm, SwiGLU, random weights) decoding through fairseq's
``incremental_state`` with the per-head rolling caches of ``modules/kv_cache.py``. A decode step is
one token per sequence through all layers, the output projection included (vocabulary ``--vocab``).
The context is put into the caches directly (random keys/values, ``WindowKVCache.update``), not by
running a prompt: prefill speed is not what Fig. 3 measures and a 16k full-attention prefill would
dominate the run.

* shapes: CPU = the paper's base model (12 layers, 8 heads, d 512, head 64); ``--device cuda`` =
  Fig. 3's (32 layers, 16 heads, d 1024, context 2048, batch 8..512, float16).
* patterns: ``full``, ``swa`` (window ``--base-window``), ``mswa`` (Table 1 schedule, same base).
* sweeps: batch (context ``--batch-context``) and context (batch ``--context-batch``).
* tokens/s = batch x timed steps / time (median of ``--reps`` timings of ``--steps`` steps,
  after a warm-up step; the three patterns of a point are timed interleaved, rep by rep, the
  order alternating); a ratio of two patterns at a point is the median of their per-rep ratios
  (the spread beside it in the Markdown); KV bytes = ``nbytes()`` of the cache tensors after the
  context (per run, all sequences of the batch).
* configurations whose full-attention cache would exceed ``--max-cache-gb`` are skipped (null).

Top-level ratios: ``decode_tps_mswa_over_swa_min`` (the smallest MSWA / SWA tokens/s ratio over
the context sweep's points from 1,024 up, each the median of its per-rep ratios; target >= 1.0), ``kv_bytes_mswa_over_swa`` (largest context; 225/256 = 0.879 without sinks),
``kv_bytes_full_over_mswa_16k``, ``decode_tps_mswa_over_swa`` (batch 8, context 4096),
``decode_tps_full_over_mswa_16k`` (batch ``--context-batch``, context 16384).
"""

import argparse
import statistics
import time

import torch
from tqdm import tqdm

from fairseq_mswa.allocator import ALLOCATOR_HELP, apply_for_run
from studies.arch import DictionaryTask, build_arch_model
from studies.stats import paired_ratio
from studies.run_utils import commit_text, provenance, script_command, write_result

PATTERNS = ("full", "swa", "mswa")
SHAPES = {
    # name: (layers, heads, embed dim, ffn dim)
    "cpu": (12, 8, 512, 1536),
    "cuda": (32, 16, 1024, 2816),
    "quick": (4, 8, 64, 128),
}
DEFAULTS = {
    "cpu": dict(batches=[1, 2, 4, 8, 16, 32], contexts=[1024, 2048, 4096, 8192, 16384],
                batch_context=4096, context_batch=8, base_window=512, steps=8, reps=9),
    "cuda": dict(batches=[8, 16, 32, 64, 128, 256, 512], contexts=[2048],
                 batch_context=2048, context_batch=8, base_window=512, steps=16, reps=3),
    "quick": dict(batches=[1, 8], contexts=[64, 256], batch_context=256, context_batch=8,
                  base_window=16, steps=2, reps=1),
}


def build_model(pattern, shape, base_window, vocab, device, dtype):
    """``--arch linear_mswa`` with every layer local attention (``A``) at ``SHAPES[shape]``."""
    layers, heads, dim, ffn = SHAPES[shape]
    torch.manual_seed(0)
    model = build_arch_model("linear_mswa", DictionaryTask(vocab - 4), dict(
        decoder_layers=layers, decoder_attention_heads=heads, decoder_embed_dim=dim,
        decoder_ffn_embed_dim=ffn, layer_pattern="A", attn_pattern=pattern,
        base_window=base_window, dropout=0.0, max_target_positions=1 << 20))
    return model.to(device=device, dtype=dtype).eval()


def cache_gb(model, batch, context, dtype) -> float:
    """Bytes the caches of ``model`` will hold after ``context`` tokens (from the schedule)."""
    size = torch.tensor([], dtype=dtype).element_size()
    head_dim = model.decoder.cfg.decoder_embed_dim // model.decoder.cfg.decoder_attention_heads
    keys = sum(min(w, context) if w is not None else context
               for layer in model.schedule.windows for w in layer)
    return batch * keys * 2 * head_dim * size / 1e9


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def prepare(model, batch, context, total, device, dtype, vocab):
    """Caches holding ``context`` random keys/values, and tokens for ``total`` steps; returns a
    step function (one decode step of every sequence) and the cache bytes."""
    dec = model.decoder
    heads = dec.cfg.decoder_attention_heads
    head_dim = dec.cfg.decoder_embed_dim // heads
    gen = torch.Generator(device=device).manual_seed(0)
    kv = torch.randn(batch, heads, context, head_dim, device=device, dtype=dtype, generator=gen)
    state = {}
    caches = dec.init_caches()
    for cache in caches:
        cache.reserve(context + total)  # full heads: one allocation, no copy while timing
        cache.update(kv, kv)
    dec.set_caches(state, caches)
    del kv
    tokens = torch.randint(4, vocab, (batch, context + total), device=device, generator=gen)
    position = [context]

    @torch.no_grad()
    def step():
        t = position[0]
        logits = dec(tokens[:, : t + 1], incremental_state=state)[0]
        assert logits.shape == (batch, 1, vocab)
        position[0] = t + 1

    return step, dec.cache_nbytes(state)


def measure_point(models, batch, context, args, device, dtype):
    """{pattern: (tokens/s, cache bytes, per-rep seconds)}: the patterns are timed interleaved,
    rep by rep, the order alternating, so that load from elsewhere hits them alike; tokens/s is
    from the median of ``reps`` timings of ``steps`` steps (ratios: :func:`paired`)."""
    total = 1 + args.steps * args.reps
    runs = {p: prepare(m, batch, context, total, device, dtype, args.vocab)
            for p, m in models.items()}
    times = {p: [] for p in runs}
    for step, _ in runs.values():
        step()  # warm-up
    order = list(runs)
    for rep in range(args.reps):
        for p in (order if rep % 2 == 0 else order[::-1]):
            step = runs[p][0]
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(device)
            times[p].append(time.perf_counter() - start)
    return {p: (batch * args.steps / statistics.median(times[p]), runs[p][1], times[p])
            for p in runs}


def run(args):
    device = args.device
    dtype = torch.float16 if device == "cuda" else torch.float32
    models = {p: build_model(p, args.shape, args.base_window, args.vocab, device, dtype)
              for p in PATTERNS}
    configs = [("batch", b, args.batch_context) for b in args.batches]
    configs += [("context", args.context_batch, c) for c in args.contexts]
    rows = []
    for sweep, batch, context in tqdm(configs, desc="decode", unit="point"):
        skipped = {p: f"cache {cache_gb(m, batch, context, dtype):.1f} GB > --max-cache-gb "
                      f"{args.max_cache_gb}"
                   for p, m in models.items() if cache_gb(m, batch, context, dtype) > args.max_cache_gb}
        measured = measure_point({p: m for p, m in models.items() if p not in skipped},
                                 batch, context, args, device, dtype)
        for pattern in PATTERNS:
            tps, nbytes, reps = measured.get(pattern, (None, None, None))
            rows.append(dict(sweep=sweep, pattern=pattern, batch=batch, context=context,
                             tokens_per_s=tps, kv_bytes=nbytes, rep_s=reps,
                             skipped=skipped.get(pattern)))
    return rows


def _get(rows, pattern, batch, context, key):
    for r in rows:
        if (r["pattern"], r["batch"], r["context"]) == (pattern, batch, context) and r[key]:
            return r[key]
    return None


def _ratio(a, b):
    return None if a is None or b is None else a / b


def paired(rows, num, den, batch, context, sweep=None):
    """Tokens/s ratio of pattern ``num`` over ``den`` at one point: the median of the per-rep
    ratios of their interleaved timings, with its spread (``stats.paired_ratio``); None
    when either was not measured."""
    pick = [r for r in rows if sweep is None or r["sweep"] == sweep]
    a, b = (_get(pick, p, batch, context, "rep_s") for p in (num, den))
    return None if a is None or b is None else paired_ratio(a, b)


def _median(spread):
    return None if spread is None else spread["median"]


# target of decode_tps_mswa_over_swa_min: MSWA's smaller cache decodes at least as fast as SWA's
MIN_TARGET = ">= 1.0"
MIN_FROM_CONTEXT = 1024  # the context sweep's points from here up count for the minimum


def context_sweep_min(rows, args):
    """(smallest MSWA / SWA tokens/s ratio over the context sweep's points with context >=
    MIN_FROM_CONTEXT (every point when none is that long: --quick), its context)."""
    contexts = [c for c in args.contexts if c >= MIN_FROM_CONTEXT] or list(args.contexts)
    # (a batch-sweep point may repeat one of the context sweep's)
    pairs = [(_median(paired(rows, "mswa", "swa", args.context_batch, c, "context")), c)
             for c in contexts]
    pairs = [(r, c) for r, c in pairs if r is not None]
    return min(pairs) if pairs else (None, None)


def summary(rows, args):
    top_ctx = max(args.contexts)
    cb = args.context_batch
    ctx16 = 16384 if 16384 in args.contexts else top_ctx
    tps_batch, tps_ctx = (8, 4096) if (8 in args.batches and args.batch_context == 4096) else (
        max(args.batches), args.batch_context)
    low, low_ctx = context_sweep_min(rows, args)
    return {
        "decode_tps_mswa_over_swa_min": low,
        "decode_tps_mswa_over_swa_min_target": MIN_TARGET,
        "decode_tps_mswa_over_swa_min_pass": None if low is None else low >= float(MIN_TARGET.split()[1]),
        "kv_bytes_mswa_over_swa": _ratio(_get(rows, "mswa", cb, top_ctx, "kv_bytes"),
                                         _get(rows, "swa", cb, top_ctx, "kv_bytes")),
        "kv_bytes_full_over_mswa_16k": _ratio(_get(rows, "full", cb, ctx16, "kv_bytes"),
                                              _get(rows, "mswa", cb, ctx16, "kv_bytes")),
        "decode_tps_mswa_over_swa": _median(paired(rows, "mswa", "swa", tps_batch, tps_ctx)),
        "decode_tps_full_over_mswa_16k": _median(paired(rows, "full", "mswa", cb, ctx16)),
        "ratio_points": {
            "decode_tps_mswa_over_swa_min": dict(batch=cb, context=low_ctx),
            "kv_bytes_mswa_over_swa": dict(batch=cb, context=top_ctx),
            "kv_bytes_full_over_mswa_16k": dict(batch=cb, context=ctx16),
            "decode_tps_mswa_over_swa": dict(batch=tps_batch, context=tps_ctx),
            "decode_tps_full_over_mswa_16k": dict(batch=cb, context=ctx16),
        },
    }


def _fmt(x, spec):
    return "skipped" if x is None else format(x, spec)


def markdown(result):
    s, a = result["summary"], result["setup"]
    lines = [
        "# Decode speed and KV-cache bytes: full vs SWA vs MSWA (Fig. 3 analogue)",
        "",
        f"Command: `{result['command']}` (commit {commit_text(result)})  ",
        f"Date: {result['date']}; machine: {result['machine']['cpu_model']}, "
        f"{result['machine']['torch_threads']} threads, torch {result['machine']['torch']}, "
        f"device {result['machine']['device']}" + (f" ({result['machine'].get('gpu')})"
                                                     if result['machine'].get('gpu') else ""),
        "",
        f"Model: linear_mswa with every layer local attention, {a['layers']} layers x "
        f"{a['heads']} heads, d {a['embed_dim']}, head {a['head_dim']}, vocab {a['vocab']}, "
        f"{a['dtype']}; base window {a['base_window']} (MSWA: Table 1 schedule). The paper's "
        "Fig. 3 values are not in our copy: only the setup is the paper's. Tokens/s: median of "
        f"{a['reps']} interleaved timings of {a['steps']} steps; ratios: median of the per-rep "
        f"ratios. CPU allocator: {result.get('allocator', 'not recorded')}.",
        "",
        "| ratio | value | at |",
        "|---|---|---|",
    ]
    for key in ("decode_tps_mswa_over_swa_min", "kv_bytes_mswa_over_swa",
                "kv_bytes_full_over_mswa_16k", "decode_tps_mswa_over_swa",
                "decode_tps_full_over_mswa_16k"):
        at = s["ratio_points"][key]
        where = f"batch {at['batch']}, context {at['context']}"
        if key == "decode_tps_mswa_over_swa_min":
            ok = s["decode_tps_mswa_over_swa_min_pass"]
            where = (f"smallest over the context sweep from {MIN_FROM_CONTEXT} (at {where}); target "
                     f"{MIN_TARGET}: {'n/a' if ok is None else ('met' if ok else 'MISSED')}")
        lines.append(f"| {key} | {_fmt(s[key], '.3f')} | {where} |")
    for sweep, title in (("batch", "against batch size"), ("context", "against context length")):
        rows = [r for r in result["rows"] if r["sweep"] == sweep]
        if not rows:
            continue
        lines += ["", f"## {title}", "",
                  "| batch | context | " + " | ".join(f"{p} tok/s" for p in PATTERNS) + " | "
                  + " | ".join(f"{p} KV MB" for p in PATTERNS) + " | mswa / swa tok/s (q1..q3) |",
                  "|---" * (3 + 2 * len(PATTERNS)) + "|"]
        points = sorted({(r["batch"], r["context"]) for r in rows})
        for b, c in points:
            tps = [_get(rows, p, b, c, "tokens_per_s") for p in PATTERNS]
            mb = [_get(rows, p, b, c, "kv_bytes") for p in PATTERNS]
            r = paired(rows, "mswa", "swa", b, c)
            spread = "-" if r is None else f"{r['median']:.3f} ({r['q1']:.3f}..{r['q3']:.3f})"
            lines.append(f"| {b} | {c} | " + " | ".join(_fmt(x, ".1f") for x in tps) + " | "
                         + " | ".join(_fmt(None if x is None else x / 1e6, ".1f") for x in mb)
                         + f" | {spread} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="output JSON file")
    p.add_argument("--md", required=True, help="output Markdown file")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny shapes, seconds (CI)")
    p.add_argument("--batches", type=int, nargs="+", help="batch sweep (default per device)")
    p.add_argument("--contexts", type=int, nargs="+", help="context sweep (default per device)")
    p.add_argument("--batch-context", type=int, help="context of the batch sweep")
    p.add_argument("--context-batch", type=int, help="batch of the context sweep")
    p.add_argument("--base-window", type=int, help="SWA window / MSWA base window")
    p.add_argument("--steps", type=int, help="decode steps per timing")
    p.add_argument("--reps", type=int, help="timings per configuration (median kept; ratios: median of per-rep ratios)")
    p.add_argument("--vocab", type=int, default=1024, help="vocabulary of the output projection")
    p.add_argument("--max-cache-gb", type=float, default=7.0,
                   help="skip configurations whose cache would be larger")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as set)")
    p.add_argument("--release-freed-memory", action="store_true", help=ALLOCATOR_HELP)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (drop the flag to run on CPU)")
    args.shape = "quick" if args.quick else args.device
    for key, value in DEFAULTS[args.shape].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    prov = provenance(script_command("bench_decode.py", argv), args.device, torch.get_num_threads())
    allocator = apply_for_run(args.release_freed_memory)
    started = time.time()
    rows = run(args)
    layers, heads, dim, _ = SHAPES[args.shape]
    result = {
        **summary(rows, args),
        **prov,  # command, git_commit, git_dirty, date, machine
        "setup": dict(model="linear_mswa, layer pattern A (all local attention)", layers=layers,
                      heads=heads, embed_dim=dim, head_dim=dim // heads, vocab=args.vocab,
                      dtype="float16" if args.device == "cuda" else "float32",
                      base_window=args.base_window, steps=args.steps, reps=args.reps,
                      batches=args.batches, contexts=args.contexts,
                      batch_context=args.batch_context, context_batch=args.context_batch,
                      context="random keys/values put into the caches (no prefill)"),
        "allocator": allocator,
        "wall_s": round(time.time() - started, 1),
        "rows": rows,
    }
    result["summary"] = {k: result[k] for k in ("decode_tps_mswa_over_swa_min",
                                                "decode_tps_mswa_over_swa_min_target",
                                                "decode_tps_mswa_over_swa_min_pass",
                                                "kv_bytes_mswa_over_swa", "kv_bytes_full_over_mswa_16k",
                                                "decode_tps_mswa_over_swa",
                                                "decode_tps_full_over_mswa_16k", "ratio_points")}
    md = markdown(result)
    write_result(result, args.json, args.md, md, echo=False)
    print(md)
    return result


if __name__ == "__main__":
    main()
