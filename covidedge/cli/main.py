"""The ``covidedge`` command: a thin layer over the public API.

Verbs are loaded lazily, so ``covidedge infer`` never pays for torch and ``--help`` is fast.
Errors from covidedge end a command with one ``error: ...`` line on stderr and the error's own
exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys

import click

from covidedge import __version__
from covidedge.errors import EXIT_RUNTIME, CovidEdgeError

#: verb -> (module, one-line help shown in ``covidedge --help``)
VERBS = {
    "demo": ("covidedge.cli.demo", "Run the whole pipeline end to end: data, train, engines, infer, bench."),
    "synth": ("covidedge.cli.synth", "Write a small synthetic dataset in the COVID-QU-Ex layout."),
    "data": ("covidedge.cli.data", "Inspect a COVID-QU-Ex dataset folder."),
    "train": ("covidedge.cli.train", "Train the Xception classifier or the residual U-Net segmenter."),
    "evaluate": ("covidedge.cli.evaluate", "Accuracy / Dice of a checkpoint, ONNX model or engine on a split."),
    "study": ("covidedge.cli.study", "Compare segmentation losses with the same seed and budget."),
    "export": ("covidedge.cli.export", "Export a checkpoint to ONNX in fp32, fp16 or calibrated int8."),
    "calibrate": ("covidedge.cli.calibrate", "Make an INT8 calibration set manifest from real images."),
    "parity": ("covidedge.cli.parity", "Accuracy per precision: checkpoint vs fp32 / fp16 / int8 graphs."),
    "build-engine": ("covidedge.cli.build_engine", "Build a TensorRT engine (or ONNX Runtime model) with its manifest."),
    "infer": ("covidedge.cli.infer", "Classify and segment X-ray images: class, masks, severity, overlay."),
    "dicom-node": ("covidedge.cli.dicom_node", "A DICOM node: receive X-rays by C-STORE, send SEG / SR / SC back."),
    "bench": ("covidedge.cli.bench", "Latency and throughput report for models and engines."),
    "info": ("covidedge.cli.info", "What this machine offers: backends, versions, GPU."),
    "triton-repo": ("covidedge.cli.triton_repo", "Write a Triton Inference Server model repository from engines or ONNX models."),
    "serve": ("covidedge.cli.serve", "Serve a Triton repository on this CPU machine (or print the GPU container command)."),
    "models": ("covidedge.cli.models", "The trained models covidedge ships, with their Val numbers."),
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported only when invoked (or listed by --help)."""

    def list_commands(self, ctx):
        return list(VERBS)

    def get_command(self, ctx, name):
        if name not in VERBS:
            return None
        module_name, short = VERBS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise

            @click.command(name=name, help=f"{short} (not available in this installation)")
            def missing():
                raise click.ClickException(f"'{name}' is not available in this installation")

            return missing
        cmd = module.command
        if cmd.short_help is None:
            cmd.short_help = short
        return cmd

    def format_commands(self, ctx, formatter):
        # Listed from VERBS so that --help imports no verb module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in VERBS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="covidedge")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx, debug):
    """covidedge: COVID-19 chest X-ray classification and infection segmentation, fast on the edge.

    \b
    Typical flow:
      covidedge train classifier --data COVID-QU-Ex --out runs/cls
      covidedge train segmenter --data COVID-QU-Ex --out runs/seg
      covidedge build-engine runs/cls/best.pt --precision fp16
      covidedge build-engine runs/seg/best.pt --precision fp16
      covidedge infer xray.png -c build/cls-best.fp16.trt10.3.sm87.engine \\
          -s build/seg-best.fp16.trt10.3.sm87.engine
      covidedge bench build/cls-best.fp16.trt10.3.sm87.engine --batch 1,8

    An engine's name says what it is: model, precision, and for TensorRT the release and GPU it
    runs on (here TensorRT 10.3 on a Jetson Orin, sm87; build-engine prints the name). Without
    TensorRT, engines are ONNX Runtime models (build/cls-best.fp16.ort.onnx) and everything runs
    on the CPU. With no model at all, 'covidedge build-engine' then 'covidedge infer xray.png'
    run the shipped models.

    \b
    Exit codes: 0 ok, 1 some inputs failed, 2 usage, 3 bad input,
      4 incompatible model/engine, 5 runtime failure, 6 missing dependency,
      7 bad dataset folder.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv=None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        rv = cli.main(args=argv, prog_name="covidedge", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except CovidEdgeError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if debug:
            raise
        click.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        sys.exit(EXIT_RUNTIME)
    # click returns the exit code given to ctx.exit() when not in standalone mode.
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
