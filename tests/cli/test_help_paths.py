"""The files CLI help names are files the commands write: every model file (.onnx, .engine) in
any verb's help and examples is named the way the builders name their outputs
(covidedge.engine.paths.default_engine_path and each backend's engine_name), and every
build/*.json is one they write. (The help named build/cls-fp16.engine, build/seg.engine and
build/cls.onnx, which nothing in covidedge makes.)"""

from __future__ import annotations

import importlib
import re

import click
import pytest

from covidedge.backends import engine_backends
from covidedge.cli.main import VERBS, cli
from covidedge.engine.autotune import RECORD_FILE as AUTOTUNE_FILE
from covidedge.engine.paths import DEFAULT_BUILD_DIR, default_engine_path
from covidedge.formats.manifest import MANIFEST_SUFFIX
from covidedge.runtime.defaults import RECORD_FILE as DEFAULTS_FILE
from covidedge.spec import PRECISIONS

#: A model file or anything under build/ in running text (a sentence's full stop is not part of it).
PATH = re.compile(r"(?<![\w./<>-])(\w[\w./-]*\.(?:onnx|engine)|build/[\w./-]*)(?![\w-])")
CHECKPOINT = re.compile(r"(?<![\w./-])(runs/[\w-]+/\w+\.pt)\b")
TENSORRT_TARGET = re.compile(r"\.trt(\d+\.\d+)(?:\.sm(\d+))?\.")


def help_texts():
    """(where, text) of the top-level help and every verb's (and sub-command's) help and options."""
    out = [("covidedge", cli.help)]

    def add(name, cmd):
        out.append((name, cmd.help or ""))
        out.extend((f"{name} {p.opts[0]}", p.help or "") for p in cmd.params if isinstance(p, click.Option))
        for sub in getattr(cmd, "commands", {}).values():
            add(f"{name} {sub.name}", sub)

    for verb, (module, _) in VERBS.items():
        add(verb, importlib.import_module(module).command)
    return out


def named_paths(texts):
    return [(where, m.rstrip(".")) for where, text in texts for m in PATH.findall(text)]


def builder_stems(texts):
    """The stems the builders give the checkpoints the help names (runs/cls/best.pt -> cls-best)."""
    ckpts = {m for _, text in texts for m in CHECKPOINT.findall(text)}
    return {default_engine_path(c, "fp32", engine_backends()[0].name).name.split(".")[0] for c in ckpts}


def builds_this_name(name: str, stems) -> bool:
    """Whether ``name`` is <stem>.<form>.onnx (an export or precision graph, as
    covidedge.engine.autotune.shipped_graph names them) or a backend's engine_name for a stem of
    ``stems``, a precision or autotune form, and (TensorRT) the release and GPU it names."""
    forms = set(PRECISIONS) | {f for b in engine_backends() for f in b.autotune_forms}
    target = TENSORRT_TARGET.search(name)
    version, gpu = (target.group(1), target.group(2)) if target else (None, None)
    made = {f"{stem}.{form}.onnx" for stem in stems for form in forms}
    made |= {b.engine_name(stem, form, version=version, compute_capability=gpu)
             for b in engine_backends() for stem in stems for form in forms}
    return name in made


def test_every_model_file_in_cli_help_is_named_as_the_builders_name_it():
    texts = help_texts()
    stems = builder_stems(texts)
    assert stems  # the examples start from a training run's checkpoint
    wrong = [f"{where}: {path}" for where, path in named_paths(texts)
             if path.endswith((".onnx", ".engine")) and not builds_this_name(path.rsplit("/", 1)[-1], stems)]
    assert wrong == []


def test_every_model_file_in_cli_help_is_in_the_build_folder():
    models = [(w, p) for w, p in named_paths(help_texts()) if p.endswith((".onnx", ".engine"))]
    assert models and [f"{w}: {p}" for w, p in models if not p.startswith(f"{DEFAULT_BUILD_DIR}/")] == []


def test_every_build_json_in_cli_help_is_one_the_builders_write():
    written = {AUTOTUNE_FILE, DEFAULTS_FILE}
    wrong = [f"{w}: {p}" for w, p in named_paths(help_texts()) if p.endswith(".json")
             and p.rsplit("/", 1)[-1] not in written and not p.endswith(MANIFEST_SUFFIX)]
    assert wrong == []


@pytest.mark.parametrize("name", ["cls-fp16.engine", "seg.engine", "cls.onnx", "cls.engine", "seg-int8.onnx",
                                  "cls-best.fp16.engine", "cls-best.fp16.trt10.3.sm87.ort.onnx",
                                  "other-best.fp32.ort.onnx", "cls-best.fp64.onnx"])
def test_the_check_refuses_names_nothing_builds(name):
    assert not builds_this_name(name, {"cls-best", "seg-best"})


@pytest.mark.parametrize("name", ["cls-best.fp16.trt10.3.sm87.engine", "cls-best.int8.trt8.6.engine",
                                  "cls-best.fp32.ort.onnx", "seg-best.int8-u8.ort.onnx", "cls-best.bf16.ov.onnx",
                                  "seg-best.fp16.onnx"])
def test_the_check_accepts_what_the_builders_write(name):
    assert builds_this_name(name, {"cls-best", "seg-best"})
