"""The layout's promises: the plugin stands alone and its pure parts are pure.

Dependencies run one way: ``studies`` -> ``fairseq_mswa`` and ``data_prep``; ``data_prep`` ->
nothing of ours but itself; ``fairseq_mswa`` -> neither. ``fairseq_mswa.schedule``, ``.cost`` and
``.taylor`` import neither torch nor fairseq (checked in a fresh interpreter)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _imported_top_levels(path: Path):
    """Top-level packages a module imports (absolute imports; relative ones stay inside)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package, forbidden", [
    ("fairseq_mswa", {"studies", "data_prep"}),
    ("data_prep", {"studies", "fairseq_mswa"}),
])
def test_dependencies_run_one_way(package, forbidden):
    bad = {str(p.relative_to(REPO)): sorted(_imported_top_levels(p) & forbidden)
           for p in sorted((REPO / package).rglob("*.py"))}
    assert not {k: v for k, v in bad.items() if v}


def test_pure_modules_import_neither_torch_nor_fairseq():
    code = ("import runpy, sys\n"
            "import fairseq_mswa.schedule, fairseq_mswa.cost, fairseq_mswa.taylor\n"
            "sys.argv = ['cost', '--table', '2']\n"
            "try:\n    runpy.run_module('fairseq_mswa.cost', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = [m for m in ('torch', 'fairseq') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "assert 'fairseq_mswa.models' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "MSWA" in proc.stdout  # the table was printed


def test_plugin_registers_where_fairseq_loads_it():
    code = ("import fairseq\n"
            "from fairseq import utils\n"
            "from argparse import Namespace\n"
            f"utils.import_user_module(Namespace(user_dir={str(REPO / 'fairseq_mswa')!r}))\n"
            "from fairseq.models import ARCH_MODEL_REGISTRY\n"
            "from fairseq.tasks import TASK_REGISTRY\n"
            "from fairseq.criterions import CRITERION_REGISTRY\n"
            "assert 'transformer_xl_mswa_tiny' in ARCH_MODEL_REGISTRY\n"
            "assert {'mswa_lm', 'recall'} <= set(TASK_REGISTRY)\n"
            "assert 'recall_cross_entropy' in CRITERION_REGISTRY\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr



def _markdown_files():
    return [REPO / "README.md", REPO / "results" / "README.md"]


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_readme_headings_unique_and_links_resolve(path):
    import re

    text = path.read_text(encoding="utf-8")
    body = re.sub(r"```.*?```", "", text, flags=re.S)  # headings and links outside code blocks
    headings = [h.strip() for h in re.findall(r"^#+ (.+)$", body, flags=re.M)]
    assert len(headings) == len(set(headings)), sorted(h for h in headings if headings.count(h) > 1)
    missing = [link for link in re.findall(r"\]\(([^)#\s]+)[^)]*\)", body)
               if not link.startswith(("http://", "https://")) and not (path.parent / link).exists()]
    assert not missing


def test_readme_is_for_users_and_short():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 250
