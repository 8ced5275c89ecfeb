"""``fla_parallel_based`` passes fla-core the layout it takes, checked on the CPU under Triton's
interpreter against ``linear_attention_chunked`` (forward and the gradients of q, k, v).

fla-core 0.6.0 has no ``head_first`` and takes (B, T, H, K); 0.5.2 has ``head_first`` (the code
passes (B, H, T, K) with head_first=True). Needs triton 3.6.0 + fla-core in a folder of their own
(``bash scripts/install_triton_interpreter.sh``, ~650 MB, not installed by CI: the suite skips
this test where the folder is absent). Each check runs in a subprocess (TRITON_INTERPRET=1 and the
folder on PYTHONPATH must not reach the test process: torch changes behaviour when triton
imports). One check costs ~5 s.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIR = Path(os.environ.get("MSWA_TRITON_INTERPRETER_DIR",
                          Path.home() / ".cache" / "fairseq_mswa" / "triton-interpreter"))
SITE = DIR / "site"

CHECK = r"""
import json, torch
import fla
from fairseq_mswa.kernels.linear_attention import (fla_layout, fla_parallel_based,
                                                   linear_attention_chunked)
from fla.ops.based import parallel_based
g = torch.Generator().manual_seed(0)
B, H, L, d, D = 2, 2, 48, 16, 8
q, k = (0.5 * torch.randn(B, H, L, d, generator=g) for _ in range(2))
v = torch.randn(B, H, L, D, generator=g)
up = torch.randn(B, H, L, D, generator=g)
leaves = [t.clone().requires_grad_() for t in (q, k, v)]
ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
out = fla_parallel_based(*leaves)
ref = linear_attention_chunked(*ref_leaves, chunk_size=16)[0]
grads = torch.autograd.grad(out, leaves, up)
ref_grads = torch.autograd.grad(ref, ref_leaves, up)
err = {"out": (out - ref).abs().max().item()}
err.update({f"grad_{n}": (a - b).abs().max().item() for n, a, b in zip("qkv", grads, ref_grads)})
with torch.no_grad():  # the layout the code passed before issue 28 (B, H, L, .) to fla 0.6
    wrong = parallel_based(q, k, v, scale=d ** -0.5, use_norm=True)
print(json.dumps({"fla": fla.__version__, "layout": fla_layout(parallel_based), "err": err,
                  "scale": ref.abs().max().item(),
                  "wrong_layout_err": (wrong - ref).abs().max().item()
                  if fla_layout(parallel_based) == "time_first" else None}))
"""


def _check(extra_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([*extra_path, str(SITE), str(REPO)])}
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                          env=env, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not (SITE / ".mswa_interpreter_fixed").exists(), reason=(
    f"no Triton interpreter install in {DIR} (bash scripts/install_triton_interpreter.sh; "
    "MSWA_TRITON_INTERPRETER_DIR picks another folder)"))
@pytest.mark.parametrize("version,layout", [("0.6.0", "time_first"), ("0.5.2", "head_first")])
def test_fla_parallel_based_equals_chunked_under_the_interpreter(version, layout):
    extra = [] if version == "0.6.0" else [str(DIR / f"fla-{version}")]
    if extra and not Path(extra[0]).is_dir():
        pytest.skip(f"fla-core {version} is not in {extra[0]} (install_triton_interpreter.sh)")
    res = _check(extra)
    print(res)
    assert res["fla"] == version and res["layout"] == layout, res
    for name, e in res["err"].items():
        assert e <= 1e-4, (name, res)
    if res["wrong_layout_err"] is not None:  # the check can tell a wrong layout
        assert res["wrong_layout_err"] > 1e-2, res
