#!/usr/bin/env bash
# The GPU check in one call: everything a lent GPU machine measures for this project, < 8 minutes.
#
#   bash scripts/gpu_check.sh --fetch-wheels   # once, where the package index is reachable
#   bash scripts/gpu_check.sh                  # on the GPU machine (no network needed)
#   bash scripts/gpu_check.sh --rehearse       # on a CPU: the same steps at tiny sizes
#
# Steps, each with a time budget (one that fails or runs out is recorded and the next one runs):
#   1. install   the wheels of scripts/gpu_wheels.txt from .whl/ into a private --target folder
#                (only where `import fairseq` fails; a machine that has fairseq uses its own);
#   2. tests     tests/gpu: every attention backend (dense, blocked, flex, flash where importable,
#                auto) against dense in float32 and bfloat16 (flex with grad: bfloat16), outputs
#                and gradients, a compiled flex forward (also in the rehearsal: CPU inductor),
#                and fairseq-train + fairseq-eval-lm --bf16 of transformer_xl_mswa and
#                linear_mswa;
#   3. attention scripts/bench_attention.py --device cuda --dtype bfloat16
#   4. tiles     scripts/bench_attention.py --tile-sweep: MSWA and SWA forward + backward in
#                bfloat16 at the paper's shape for each tile choice (the chooser's first, then
#                128x128 down; what its budget leaves out is listed as skipped)
#   5. train     scripts/bench_train.py --device cuda (paper shape, float32)
#   6. decode    scripts/bench_decode.py --device cuda (Fig. 3's shape, float16)
# What it compiles (the budget is mostly compile time; one flex graph = one static signature,
# kernels/flex.py, ~20-40 s of Triton fwd+bwd compiling each on a GPU, estimated, not measured):
#   tests      4 flex graphs (3 cases with grad in bfloat16, 1 compiled forward); the CLI runs
#              use the models' auto backend: transformer_xl_mswa_tiny has head dim 16 at this
#              width (64 / 4), so flex: one merged call per layer, 4 layer shapes x (no memory,
#              memory, short segment): at most 8 graphs in training (with grad) and 12 in eval;
#   attention, train, decode  the benches' own (bench_*.py; flex graphs bounded by
#              kernels.flex.RECOMPILE_LIMIT, a call past it raises instead of running unfused).
# Output: results/bench/{attention,tiles,train,decode}_gpu.{json,md} (each names the GPU),
# results/bench/gpu_check_gpu.json (every step's exit status and seconds, which attention backend
# serves which inputs on this GPU and why the others do not, the commit, the machine) and
# gpu_check.log (every step's full output): under $OUT when it is set (the device tool returns
# what is under $OUT: copy its results/bench/ into the repository), else in the repository
# (the log in runs/).
# GPU_CHECK_COMMIT names the commit measured where the copy has no .git (give `git rev-parse
# HEAD` of the checkout that travels). PYTHON picks the interpreter (default python3).
#
# --fetch-wheels (here, with the package index) runs for every `NAME==VERSION` line of
# scripts/gpu_wheels.txt
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 --platform any -d .whl NAME==VERSION
# and, for a line marked `sdist` (a pure-Python package without a wheel on the index),
#   python3 -m pip wheel --no-deps --no-binary=:all: -w .whl NAME==VERSION
# then removes every other file from .whl/ (two versions of one package stop the install).
# On the device: run with carry [".whl"] and timeout_s 600: `bash scripts/gpu_check.sh`.
#
# --rehearse: the same steps on the CPU in float32 at tiny sizes (tests/gpu with
# MSWA_GPU_REHEARSAL=1, the benchmarks with --quick or short lengths); the install step installs
# .whl/ for CPython 3.12 into a temporary folder that nothing imports (it checks that the wheel
# set installs; skipped when .whl/ is absent). Everything goes to a temporary folder (or
# $GPU_CHECK_DIR) under *_rehearsal.* names: a rehearsal is never a GPU result.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
MANIFEST="scripts/gpu_wheels.txt"
WHEELS=".whl"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64 --platform any)
CP312=(--python-version 3.12 --implementation cp --only-binary=:all: "${PLATFORMS[@]}")

die() { echo "gpu_check.sh: $*" >&2; exit 2; }

# manifest lines "NAME==VERSION [sdist]", comments and blank lines dropped
manifest() {
    sed -e 's/#.*//' "$MANIFEST" | awk 'NF' | while read -r spec kind rest; do
        [[ "$spec" =~ ^[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+$ ]] || die "$MANIFEST: '$spec' is not NAME==VERSION"
        [[ -z "${kind}${rest}" || ( ( "$kind" == sdist || "$kind" == gpu ) && -z "$rest" ) ]] \
            || die "$MANIFEST: '$spec $kind $rest': only the word 'sdist' or 'gpu' may follow NAME==VERSION"
        echo "$spec ${kind:-wheel}"
    done
}

# the wheel file of NAME==VERSION in .whl/ (wheel names normalise '-' and '.' to '_')
wheel_of() {
    local name="${1%%==*}" version="${1##*==}"
    ls "$WHEELS"/"$(echo "$name" | tr -- '-.' '__')"-"$version"-*.whl 2>/dev/null | head -n 1
}

fetch_wheels() {
    manifest >/dev/null || exit 2
    mkdir -p "$WHEELS"
    local keep=() spec kind
    while read -r spec kind; do
        if [[ "$kind" == sdist ]]; then
            "$PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$WHEELS" "$spec" \
                || die "pip could not build the wheel of $spec"
        else
            "$PY" -m pip download -q --no-deps "${CP312[@]}" -d "$WHEELS" "$spec" \
                || die "pip could not download a CPython 3.12 wheel of $spec"
        fi
        local f; f="$(wheel_of "$spec")"
        [[ -n "$f" ]] || die "no wheel of $spec in $WHEELS/ after the download"
        keep+=("$(basename "$f")")
    done < <(manifest)
    local f
    for f in "$WHEELS"/*; do
        [[ " ${keep[*]} " == *" $(basename "$f") "* ]] || { echo "removing $f (not in $MANIFEST)"; rm -f "$f"; }
    done
    ls -l "$WHEELS"
    echo "$(du -sk "$WHEELS" | cut -f1) KiB in $WHEELS/ (the device call carries at most 64 MiB)"
}

MODE=gpu
case "${1:-}" in
    "") ;;
    --fetch-wheels) fetch_wheels; exit 0 ;;
    --rehearse) MODE=rehearse ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1': use --rehearse, --fetch-wheels or no option (on a GPU machine)" ;;
esac
[[ $# -le 1 ]] || die "one option at most"

if [[ $MODE == rehearse ]]; then
    DEST="${GPU_CHECK_DIR:-$(mktemp -d -t gpu_check_rehearsal.XXXXXX)}"
    TAG=rehearsal
    DEVICE=cpu
    # step budgets in seconds (generous: a rehearsal checks that every step runs, not its speed)
    B_INSTALL=60 B_TESTS=180 B_ATTN=90 B_TILES=60 B_TRAIN=90 B_DECODE=90
    export MSWA_GPU_REHEARSAL=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    ATTN_ARGS=(--device cpu --lengths 128,256 --reps 1 --threads 1)
    TILES_ARGS=(--tile-sweep --device cpu --reps 1 --threads 1)
    TRAIN_ARGS=(--device cpu --quick --reps 1 --warmup 1 --threads 1)
    DECODE_ARGS=(--device cpu --quick --threads 1)
else
    DEST="${OUT:-$ROOT}"
    TAG=gpu
    DEVICE=cuda
    # step budgets in seconds: 470 in all, under the 8 minutes one device call may spend here
    B_INSTALL=40 B_TESTS=150 B_ATTN=50 B_TILES=90 B_TRAIN=80 B_DECODE=60
    unset MSWA_GPU_REHEARSAL
    ATTN_ARGS=(--device cuda --dtype bfloat16 --reps 5)
    TILES_ARGS=(--tile-sweep --device cuda --dtype bfloat16 --segments 512 --reps 5 --budget-s 80)
    TRAIN_ARGS=(--device cuda --reps 5 --warmup 2)
    DECODE_ARGS=(--device cuda)
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
        || die "no CUDA device here: on a CPU run 'bash scripts/gpu_check.sh --rehearse'"
fi
BENCH="$DEST/results/bench"
LOG="$DEST/gpu_check.log"
[[ $DEST == "$ROOT" ]] && LOG="$ROOT/runs/gpu_check.log"
mkdir -p "$BENCH" "$(dirname "$LOG")" || die "cannot create $BENCH"
: >"$LOG"
STEPS="$(mktemp -t gpu_check_steps.XXXXXX)"
trap 'rm -f "$STEPS"' EXIT
TOTAL=$((B_INSTALL + B_TESTS + B_ATTN + B_TRAIN + B_DECODE))
N=0
START=$SECONDS
echo "gpu_check ($MODE): 5 steps, at most $TOTAL s; full output in $LOG"
{ echo "gpu_check.sh $MODE, $(date -u '+%Y-%m-%d %H:%M UTC')"; command -v nvidia-smi >/dev/null && nvidia-smi -L; } >>"$LOG" 2>&1

begin() {  # begin NAME BUDGET
    N=$((N + 1))
    local left=$((TOTAL - (SECONDS - START)))
    echo "[$N/5] $1 (budget $2 s; $((SECONDS - START)) s elapsed, at most $left s to go) ..."
    echo "===== [$N/5] $1 (budget $2 s)" >>"$LOG"
    T0=$SECONDS
}

end() {  # end NAME BUDGET RC
    local dt=$((SECONDS - T0)) status
    case "$3" in 0) status=ok ;; 124|137) status="out of time" ;; *) status="failed (exit $3)" ;; esac
    printf '%s\t%s\t%s\t%s\n' "$1" "$3" "$dt" "$2" >>"$STEPS"
    echo "      $status in $dt s"
    echo "===== $1: $status in $dt s" >>"$LOG"
}

run_step() {  # run_step NAME BUDGET COMMAND...
    local name=$1 budget=$2; shift 2
    begin "$name" "$budget"
    echo "\$ $*" >>"$LOG"
    timeout --kill-after=10 "$budget" "$@" >>"$LOG" 2>&1
    end "$name" "$budget" $?
}

install_step() {
    begin install "$B_INSTALL"
    local rc=0 spec kind f files=()
    if ! manifest >/dev/null; then
        rc=2
    elif [[ $MODE == gpu ]] && "$PY" -c "import fairseq, fla" >/dev/null 2>&1; then
        echo "fairseq and fla are importable here: nothing to install" >>"$LOG"
    elif [[ $MODE == rehearse && ! -d $WHEELS ]]; then
        echo "no $WHEELS/ here (bash scripts/gpu_check.sh --fetch-wheels makes it): install skipped" >>"$LOG"
    else
        while read -r spec kind; do
            f="$(wheel_of "$spec")"
            if [[ -z "$f" ]]; then
                echo "$WHEELS/ lacks $spec: run 'bash scripts/gpu_check.sh --fetch-wheels' where pip works, then carry $WHEELS" >>"$LOG"
                rc=3
            fi
            files+=("$f")
        done < <(manifest)
        if [[ $rc == 0 ]]; then
            local site=/tmp/gpu_check_site extra=()
            [[ $MODE == rehearse ]] && { site="$(mktemp -d -t gpu_check_site.XXXXXX)"; extra=("${CP312[@]}"); }
            echo "\$ pip install --no-index --no-deps --target $site ${files[*]}" >>"$LOG"
            timeout "$B_INSTALL" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --upgrade --target "$site" "${extra[@]}" "${files[@]}" >>"$LOG" 2>&1 || rc=$?
            if [[ $MODE == gpu && $rc == 0 ]]; then
                export PYTHONPATH="$site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
                "$PY" -c "import fairseq, fairseq_mswa; print('fairseq', fairseq.__version__, 'from', fairseq.__file__)" >>"$LOG" 2>&1 || rc=4
            elif [[ $MODE == rehearse ]]; then
                ls "$site" >>"$LOG"; rm -rf "$site"
            fi
        fi
    fi
    end install "$B_INSTALL" "$rc"
}

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
install_step
run_step tests "$B_TESTS" "$PY" -m pytest tests/gpu -v -rs -s -p no:cacheprovider
run_step attention "$B_ATTN" "$PY" scripts/bench_attention.py "${ATTN_ARGS[@]}" \
    --json "$BENCH/attention_$TAG.json" --md "$BENCH/attention_$TAG.md"
run_step tiles "$B_TILES" "$PY" scripts/bench_attention.py "${TILES_ARGS[@]}" \
    --json "$BENCH/tiles_$TAG.json" --md "$BENCH/tiles_$TAG.md"
run_step train "$B_TRAIN" "$PY" scripts/bench_train.py "${TRAIN_ARGS[@]}" \
    --json "$BENCH/train_$TAG.json" --md "$BENCH/train_$TAG.md"
run_step decode "$B_DECODE" "$PY" scripts/bench_decode.py "${DECODE_ARGS[@]}" \
    --json "$BENCH/decode_$TAG.json" --md "$BENCH/decode_$TAG.md"

COMMIT="${GPU_CHECK_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
"$PY" - "$MODE" "$DEVICE" "$STEPS" "$BENCH/gpu_check_$TAG.json" "$COMMIT" "$((SECONDS - START))" \
    "$TOTAL" <<'EOF' 2>>"$LOG"
"""Summary of the check: steps, the backends this device serves, machine, commit."""
import json
import sys
import time

import torch

from fairseq_mswa.kernels.window_attention import select_backend, unsupported_reason
from studies.run_utils import machine_info, write_json_atomic

mode, device, steps_file, out, commit, wall, budget = sys.argv[1:]
steps = []
for line in open(steps_file):
    name, rc, seconds, step_budget = line.rstrip("\n").split("\t")
    steps.append({"step": name, "exit": int(rc), "seconds": int(seconds),
                  "budget_s": int(step_budget), "ok": rc == "0"})
# which backend can serve the attention the models run here (8 heads of 64, windows 16..256)
backends = {}
dtypes = (torch.float32, torch.bfloat16) if device == "cuda" else (torch.float32,)
for dtype in dtypes:
    q = torch.randn(1, 8, 128, 64, device=device, dtype=dtype, requires_grad=True)
    windows = [16, 16, 32, 32, 64, 64, 128, 256]
    for label, pos in (("plain", None), ("xl_position_term",
                                         torch.randn(1, 8, 128, 256, device=device, dtype=dtype))):
        key = f"{str(dtype).replace('torch.', '')}_{label}"
        backends[key] = {b: unsupported_reason(b, q, q, q, windows, 0, pos) or "ok"
                         for b in ("dense", "blocked", "flex", "flash")}
        backends[key]["auto picks"] = select_backend(q, q, q, windows, 0, pos)
summary = {
    "rehearsal": mode == "rehearse",
    "note": ("CPU rehearsal at tiny sizes: checks that every step runs; no GPU result"
             if mode == "rehearse" else "measured on the GPU named in machine.gpu"),
    "command": "bash scripts/gpu_check.sh" + (" --rehearse" if mode == "rehearse" else ""),
    "commit": commit,
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "machine": machine_info(device),
    "wall_s": int(wall),
    "budget_s": int(budget),
    "steps": steps,
    "all_ok": all(s["ok"] for s in steps),
    "attention_backends": backends,
}
write_json_atomic(out, summary)
print(f"{'step':10s} {'result':18s} {'seconds':>7s} {'budget':>6s}")
for s in steps:
    result = "ok" if s["ok"] else ("out of time" if s["exit"] in (124, 137) else f"failed (exit {s['exit']})")
    print(f"{s['step']:10s} {result:18s} {s['seconds']:7d} {s['budget_s']:6d}")
for key, row in backends.items():
    print(f"backends ({key}): auto picks {row['auto picks']}; "
          + "; ".join(f"{b}: {r}" for b, r in row.items() if b != "auto picks"))
print(f"{int(wall)} s in all (budget {budget} s); summary {out}")
sys.exit(0 if summary["all_ok"] else 1)
EOF
rc=$?
echo "results: $BENCH ($(ls "$BENCH" | tr '\n' ' '))"
exit $rc
