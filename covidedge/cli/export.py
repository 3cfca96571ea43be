"""``covidedge export``: a checkpoint to one ONNX file in fp32, fp16 or calibrated int8."""

from __future__ import annotations

import json

import click

from covidedge.errors import BadInputError
from covidedge.spec import CALIBRATION_METHODS, PRECISIONS


def _option_names(calibration_flag: str):
    """The export API's error messages in this command's flags."""
    from covidedge.export import OptionNames

    return OptionNames({
        "calibration": calibration_flag, "calib_count": "--calib-count",
        "method": "--calib-method", "percentile": "--percentile", "method=": "--calib-method {}",
        "add": "add", "int8": "--precision int8", "choose_int8": "add --precision int8",
        "calibration_folder": "--calib-data", "calibration_manifest": "--calibration",
        "give_calibration": "pass --calib-data DIR or --calibration MANIFEST "
                            "(make one with 'covidedge calibrate')"})


@click.command(name="export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="ONNX file to write (.onnx).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="Precision written into the graph.")
@click.option("--opset", type=int, default=17, show_default=True,
              help="ONNX opset, 13..20 (TensorRT 10.3 parses up to 20).")
@click.option("--dynamic-batch/--static-batch", default=True, show_default=True,
              help="Dynamic batch axis, or a fixed batch of 1.")
@click.option("--calib-data", type=click.Path(exists=True, file_okay=False, path_type=str),
              default=None, help="int8: COVID-QU-Ex folder to draw calibration images from "
                                 "(its Train split; the manifest goes to calibration/).")
@click.option("--calibration", "manifest", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=str), help="int8: calibration manifest made by 'covidedge calibrate'.")
@click.option("--calib-count", type=int, default=None,
              help="int8 with --calib-data: number of images (default 500, or all the split has).")
@click.option("--calib-method", type=click.Choice(CALIBRATION_METHODS), default=None,
              help="int8: how activation ranges are chosen (default entropy).")
@click.option("--percentile", type=float, default=None,
              help="int8 with --calib-method percentile: percent of |x| kept (default 99.99).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file (refused otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
def command(checkpoint, out, precision, opset, dynamic_batch, calib_data, manifest, calib_count,
            calib_method, percentile, overwrite, as_json):
    """Export CHECKPOINT (a .pt from 'covidedge train') to one self-contained ONNX file with
    input "image" (N, 1, H, W) and outputs "logits" and "probabilities", carrying its spec in
    the metadata. fp16 keeps fp32 inputs/outputs and computes the softmax / sigmoid in fp32;
    int8 writes explicit symmetric Q/DQ nodes calibrated on real images (what TensorRT 10+
    builds as a strongly typed network; ONNX Runtime runs it on any CPU). The graph is checked
    with the ONNX checker and compared with the checkpoint; the comparison is printed.

    \b
    Examples:
      covidedge export runs/cls/best.pt --out build/cls-best.fp32.onnx
      covidedge export runs/seg/best.pt --out build/seg-best.fp16.onnx --precision fp16
      covidedge calibrate --data COVID-QU-Ex --count 500
      covidedge export runs/cls/best.pt --out build/cls-best.int8.onnx --precision int8 \\
          --calibration calibration/covid-qu-ex-train-500-seed0.json --calib-method entropy
    """
    from covidedge.export import check_export_options, export_model
    from covidedge.export.calibrators import DEFAULT_METHOD

    if calib_data and manifest:
        raise BadInputError("pass either --calib-data or --calibration, not both")
    names = _option_names(calibration_flag="--calib-data" if calib_data else "--calibration")
    options = {"calibration": calib_data or manifest, "method": calib_method,
               "percentile": percentile}
    if calib_count is not None:
        options["calib_count"] = calib_count
    check_export_options(precision, options, names)  # before the progress line below
    from covidedge.fileio import refuse_existing

    refuse_existing(out, what="export output", overwrite=overwrite)  # before the progress line too
    if precision == "int8":
        click.echo(f"calibrating int8 ({calib_method or DEFAULT_METHOD}) ...", err=True)
    report = export_model(checkpoint, out, precision=precision, opset=opset,
                          dynamic_batch=dynamic_batch, option_names=names, overwrite=overwrite, **options)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo("\n".join(report.summary_lines()))
        calib = report.details.get("calibration")
        if calib:
            click.echo(f"calib     {calib['count']} images, {report.details['method']}, "
                       f"manifest {calib['manifest']} (sha256 {calib['sha256'][:16]})")
