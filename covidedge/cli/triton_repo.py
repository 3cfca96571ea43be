"""``covidedge triton-repo``: write a Triton model repository from covidedge engines or ONNX models."""

from __future__ import annotations

import json

import click

from covidedge.spec import MASK_THRESHOLD
from covidedge.serve.repository import DEFAULT_MAX_BATCH, DEFAULT_QUEUE_DELAY_US, TARGETS


@click.command(name="triton-repo")
@click.option("--classifier", "-c", metavar="MODEL", help="Classifier: engine (with its manifest) or .onnx.")
@click.option("--segmenter", "-s", metavar="MODEL", help="Lungs + infection segmenter: engine or .onnx.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Repository folder to write; it must not exist yet (or be empty).")
@click.option("--target", type=click.Choice(TARGETS), default="cpu", show_default=True,
              help="cpu: python models on covidedge's runtime, for 'covidedge serve'. gpu: TensorRT "
                   "plans and ONNX models for NVIDIA's Triton containers.")
@click.option("--max-batch", type=click.IntRange(min=1), default=DEFAULT_MAX_BATCH, show_default=True,
              help="max_batch_size for ONNX graphs with a dynamic batch (engines bring their own).")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Instances of each model (instance_group count).")
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=DEFAULT_QUEUE_DELAY_US, show_default=True,
              help="Dynamic batching: how long (µs) a request may wait for others to join its batch.")
@click.option("--no-dynamic-batching", is_flag=True, help="Run each request on its own.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=MASK_THRESHOLD,
              show_default=True, help="Mask probability threshold the server applies.")
@click.option("--backend", type=click.Choice(("onnxruntime", "openvino")), default=None,
              help="cpu target: the runtime of plain ONNX graphs (default onnxruntime).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="cpu target: threads per network instance (default: the runtime's).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def command(classifier, segmenter, out, target, max_batch, instances, queue_delay_us, no_dynamic_batching,
            threshold, backend, threads, as_json):
    """Write a Triton Inference Server model repository that answers what 'covidedge infer'
    answers: an ensemble 'covidedge' takes encoded PNG / JPEG / DICOM bytes (IMAGE) and returns
    LABEL, PROBABILITIES, LUNG_MASK, INFECTION_MASK, LUNG_FRACTION and INFECTED_FRACTION.
    Every config.pbtxt is checked against Triton's ModelConfig schema before it is written.

    \b
    Examples:
      covidedge triton-repo -c build/cls-best.fp32.onnx -s build/seg-best.fp32.onnx --out triton-repo
      covidedge serve triton-repo
      covidedge triton-repo -c build/cls-best.fp16.trt10.3.sm87.engine --target gpu --out repo-gpu

    Needs the serve extra: pip install 'covidedge[serve]'.
    """
    from covidedge.serve.config import model_config_schema
    from covidedge.serve.repository import RepositoryOptions, write_repository

    model_config_schema()  # the serve extra first: exit 6 with the install command
    options = RepositoryOptions(target=target, max_batch=max_batch, dynamic_batching=not no_dynamic_batching,
                                queue_delay_us=queue_delay_us, instances=instances, threshold=threshold,
                                threads=threads, backend=backend)
    repo = write_repository(out, classifier or None, segmenter or None, options=options)
    if as_json:
        click.echo(json.dumps({"repository": str(repo.path), **repo.facts}, indent=2))
        return
    click.echo(f"wrote Triton repository {repo.path} (target {target}): "
               + ", ".join(sorted(repo.configs)))
    for task, m in repo.facts["models"].items():
        click.echo(f"  {task}: {m['source']} ({m['backend']} {m['precision']}, max_batch_size {m['max_batch']})")
    click.echo(f"serve it with: covidedge serve {repo.path}")
