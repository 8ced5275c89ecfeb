#!/usr/bin/env bash
# Triton's interpreter on the CPU, for tests/test_fla_interpreter.py: fla-core's Triton kernels
# (the ones kernels/linear_attention.fla_parallel_based calls on a GPU) run on CPU tensors with
# numpy under TRITON_INTERPRET=1. Installed into a folder of its own (never the project's venv:
# triton is ~190 MB and the CPU suite does not need it):
#
#   bash scripts/install_triton_interpreter.sh [DIR]
#
# DIR defaults to $MSWA_TRITON_INTERPRETER_DIR, else ~/.cache/fairseq_mswa/triton-interpreter;
# the test looks in the same place. Pinned: triton 3.6.0 (the GPU image's), fla-core 0.6.0 (no
# `head_first`: (B, T, H, K)), einops (fla-core imports it) into DIR/site, and fla-core 0.5.2
# (with `head_first`) alone into DIR/fla-0.5.2 (put first on PYTHONPATH to test that layout).
# About 650 MB installed (triton's wheel ~190 MB), one to two minutes from a package mirror.
#
# One fix to triton 3.6.0's interpreter (runtime/interpreter.py, `_patch_lang_tensor`): it makes a
# Python int of a Triton scalar with `int(self.handle.data)`, but `tl.program_id(0).to(tl.int64)`
# holds a 1-element *1-D* numpy array there, and numpy >= 2 refuses int() of a 1-D array
# ("only 0-dimensional arrays can be converted to Python scalars", raised inside fla's
# parallel_based kernels); `.item()` takes the one element of either shape. The script applies it
# (a text replace) and fails if the line is not there (another triton version: check it again).
# PYTHON picks the interpreter whose wheels are fetched (default: python3).
set -euo pipefail

DIR="${1:-${MSWA_TRITON_INTERPRETER_DIR:-$HOME/.cache/fairseq_mswa/triton-interpreter}}"
PY="${PYTHON:-python3}"
PINS=(triton==3.6.0 fla-core==0.6.0 einops==0.8.2)

mkdir -p "$DIR/wheels"
"$PY" -m pip download -q --no-deps -d "$DIR/wheels" "${PINS[@]}"
rm -rf "$DIR/site"
"$PY" -m pip install -q --no-deps --no-compile --target "$DIR/site" "$DIR"/wheels/*.whl
INTERP="$DIR/site/triton/runtime/interpreter.py"
"$PY" - "$INTERP" <<'PYEOF'
import sys
path = sys.argv[1]
old, new = "lambda self: int(self.handle.data))", "lambda self: int(self.handle.data.item()))"
text = open(path).read()
if new not in text:
    if text.count(old) != 1:
        sys.exit(f"install_triton_interpreter.sh: {old!r} not found once in {path} (not triton 3.6.0?)")
    open(path, "w").write(text.replace(old, new))
PYEOF
rm -rf "$DIR/fla-0.5.2"
"$PY" -m pip download -q --no-deps -d "$DIR/wheels-0.5.2" fla-core==0.5.2
"$PY" -m pip install -q --no-deps --no-compile --target "$DIR/fla-0.5.2" "$DIR"/wheels-0.5.2/fla_core-0.5.2-*.whl
echo "ok" > "$DIR/site/.mswa_interpreter_fixed"
echo "installed ${PINS[*]} into $DIR/site ($(du -sm "$DIR/site" | cut -f1) MB), interpreter fixed"
echo "use: TRITON_INTERPRET=1 PYTHONPATH=$DIR/site:\$PYTHONPATH"
