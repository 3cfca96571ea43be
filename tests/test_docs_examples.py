"""The examples of README.md and docs/*.md run as written.

Each ```bash / ```python block (and each ``$ `` line of a ```console block) runs in a fresh folder
holding a synthetic ``xray.png`` and ``scans/`` (PNG images in a class subfolder and, where pydicom
is installed, a DICOM radiograph), after the README's Quick start has built the default engines,
so a renamed file, verb or flag fails here instead of for a reader. Tiny hand-made graphs stand in
for the shipped models (``COVIDEDGE_MODELS_DIR``) so the whole page set runs in seconds;
``COVIDEDGE_DOCS_REAL_MODELS=1`` runs the same examples on the shipped models (minutes on a CPU).

A block preceded by ``<!-- example: REASON -->`` is skipped with that reason (a dataset, a training
run, a GPU, a server that runs until stopped), except the labels ``quickstart`` (the README's set-up
block: its clone, venv, ``cd`` and install lines are what this environment already did) and
``commands`` (runs). ``pip install`` lines are never run: the suite runs in the installed
environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- example: (?P<what>.+?) -->$")
FENCE = re.compile(r"^```(?P<lang>[A-Za-z0-9_+-]*)\s*$")
RUN_LABELS = {"quickstart", "commands"}
#: Lines of the Quick start that set up what this environment already is.
SETUP = re.compile(r"^(git clone |cd |python3 -m venv |\. \.venv/|(python3 -m )?pip install )")
PIP = re.compile(r"^(python3? -m )?pip install ")
REAL_MODELS = os.environ.get("COVIDEDGE_DOCS_REAL_MODELS") == "1"


@dataclass
class Example:
    page: Path
    line: int
    lang: str  # "bash" or "python"
    code: str
    label: Optional[str]

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT).as_posix()}:{self.line}"


def extract(page: Path) -> List[Example]:
    """The runnable examples of ``page``: bash and python blocks, ``$`` lines of console blocks."""
    out: List[Example] = []
    lines = page.read_text().splitlines()
    i, label = 0, None
    while i < len(lines):
        m = MARKER.match(lines[i].strip())
        if m:
            label = m.group("what")
            i += 1
            continue
        f = FENCE.match(lines[i])
        if not f:
            if lines[i].strip():
                label = None
            i += 1
            continue
        lang, start, body = f.group("lang").lower(), i + 1, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        if lang in ("bash", "sh", "shell"):
            out.append(Example(page, start, "bash", _joined(body), label))
        elif lang == "python":
            out.append(Example(page, start, "python", "\n".join(body) + "\n", label))
        elif lang == "console":
            cmds = [ln[2:] for ln in _continued(body) if ln.startswith("$ ")]
            if cmds:
                out.append(Example(page, start, "bash", "\n".join(cmds) + "\n", label))
        label = None
    return out


def _continued(lines: List[str]) -> List[str]:
    """Lines with backslash continuations joined."""
    out, cur = [], ""
    for ln in lines:
        if ln.rstrip().endswith("\\"):
            cur += ln.rstrip()[:-1] + " "
        else:
            out.append(cur + ln)
            cur = ""
    if cur:
        out.append(cur)
    return out


def _joined(lines: List[str]) -> str:
    return "\n".join(_continued(lines)) + "\n"


def script_of(ex: Example) -> str:
    """The bash lines this environment runs (set-up and pip install lines dropped)."""
    keep = []
    for ln in ex.code.splitlines():
        s = ln.strip()
        if PIP.match(s) or (ex.label == "quickstart" and SETUP.match(s)):
            continue
        keep.append(ln)
    return "\n".join(keep) + "\n"


EXAMPLES = [ex for page in PAGES for ex in extract(page)]


# -- the folder every example runs in ----------------------------------------------------------
def _tiny_models_dir(folder: Path) -> Path:
    """A models folder laid out like covidedge/pretrained, with tiny hand-made graphs (fp32 CPU
    engines, so no calibration), their summaries copied from the shipped ones."""
    from covidedge.fileio import sha256_file
    from covidedge.pretrained import PACKAGE_DIR, pack_compact, restore_compact
    from tests.graphs import SIZE, tiny_classifier_onnx, tiny_segmenter_onnx

    folder.mkdir(parents=True)
    shipped = {r["task"]: r for r in json.loads((PACKAGE_DIR / "models.json").read_text())["models"]}
    rows = []
    for task, make in (("classifier", tiny_classifier_onnx), ("segmenter", tiny_segmenter_onnx)):
        name = f"tiny-{task}"
        raw = folder / f"{name}.raw.onnx"
        make(raw, size=SIZE)
        pack_compact(raw, folder / f"{name}.compact.onnx")
        restored = restore_compact(folder / f"{name}.compact.onnx", folder / f"{name}.restored.onnx")
        summary = dict(shipped.get(task, {}).get("summary") or {}, cpu_engine_precision="fp32",
                       input_size=[SIZE, SIZE])
        (folder / f"{name}.md").write_text(f"# Model card: {name}\n\nA stand-in for the docs examples.\n")
        rows.append({"name": name, "task": task, "compact": f"{name}.compact.onnx", "card": f"{name}.md",
                     "calibration_cache": None, "fp32_sha256": sha256_file(restored), "summary": summary})
        raw.unlink()
        restored.unlink()
    (folder / "models.json").write_text(json.dumps({"models": rows}, indent=1))
    return folder


@pytest.fixture(scope="module")
def docs_env(tmp_path_factory):
    """Environment variables and a template folder (xray.png, scans/) shared by every example."""
    root = tmp_path_factory.mktemp("docs-examples")
    from PIL import Image

    from covidedge.data.synth import render_chest

    tpl = root / "template"
    (tpl / "scans" / "COVID-19").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, label in (("xray.png", "COVID-19"), ("scans/COVID-19/xray.png", "COVID-19"),
                        ("scans/normal.png", "Normal"), ("scans/xray.png", "Non-COVID")):
        img, _, _ = render_chest(rng, label, size=128)
        Image.fromarray(img).save(tpl / name)
    try:
        from tests.dicom.builders import radiograph

        radiograph(tpl / "scans" / "cr.dcm", modality="CR", shape=(96, 80))
    except ImportError:  # no dicom extra: DICOM examples still run on the PNGs (one note each)
        pass
    bindir = root / "bin"
    bindir.mkdir()
    for exe in ("python", "python3"):
        (bindir / exe).symlink_to(sys.executable)
    shim = bindir / "covidedge"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m covidedge "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVIDEDGE_")}
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(REPO_ROOT),
               COVIDEDGE_ENGINES=str(root / "engines"), PYTHONDONTWRITEBYTECODE="1")
    if not REAL_MODELS:
        env["COVIDEDGE_MODELS_DIR"] = str(_tiny_models_dir(root / "models"))
        env["COVIDEDGE_CACHE"] = str(root / "cache")
    return {"env": env, "template": tpl, "root": root}


def _run(ex: Example, docs_env, tmp_path) -> subprocess.CompletedProcess:
    work = tmp_path / "work"
    shutil.copytree(docs_env["template"], work)
    if ex.lang == "python":
        argv = [sys.executable, "-"]
        stdin = ex.code
    else:
        argv = ["bash", "-euo", "pipefail", "-s"]
        stdin = script_of(ex)
    return subprocess.run(argv, input=stdin, cwd=work, env=docs_env["env"], capture_output=True, text=True,
                          timeout=600 if REAL_MODELS else 120)


@pytest.mark.parametrize("ex", EXAMPLES, ids=[ex.id for ex in EXAMPLES])
def test_example_runs_as_written(ex, docs_env, tmp_path):
    if ex.label and ex.label not in RUN_LABELS:
        pytest.skip(f"{ex.id}: {ex.label}")
    if ex.lang == "bash" and not script_of(ex).strip():
        pytest.skip(f"{ex.id}: only installs packages")
    proc = _run(ex, docs_env, tmp_path)
    assert proc.returncode == 0, (f"{ex.id} failed (exit {proc.returncode}):\n--- example\n"
                                  f"{script_of(ex) if ex.lang == 'bash' else ex.code}--- stdout\n"
                                  f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")


def test_the_quick_start_is_one_block_that_builds_infers_and_benches():
    quick = [ex for ex in EXAMPLES if ex.label == "quickstart"]
    assert len(quick) == 1 and quick[0].page.name == "README.md"
    script = script_of(quick[0])
    for step in ("covidedge build-engine", "covidedge infer xray.png", "covidedge bench"):
        assert step in script
    for step in ("git clone", "python3 -m venv", "pip install -e '.[all,serve]'", "cd "):
        assert step in quick[0].code
    # Python run in the folder holding xray.png would import a clone named "covidedge" (a namespace
    # package without the API) instead of the installed package
    assert not re.search(r"git clone \S+ covidedge(\s|$)", quick[0].code)


def test_every_skipped_example_says_what_it_needs():
    for ex in EXAMPLES:
        if ex.label and ex.label not in RUN_LABELS:
            assert len(ex.label) > 10, f"{ex.id}: marker {ex.label!r} does not say what the example needs"


def test_links_between_pages_point_at_files_that_exist():
    missing = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(REPO_ROOT)}: {target}")
    assert not missing, "links to missing files:\n" + "\n".join(missing)


def test_the_readme_is_short():
    n = len((REPO_ROOT / "README.md").read_text().splitlines())
    assert n < 200, f"README.md has {n} lines; move reference detail into docs/"
