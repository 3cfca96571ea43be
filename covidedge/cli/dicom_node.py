"""``covidedge dicom-node``: a DICOM node that receives X-rays, infers and sends results back."""

from __future__ import annotations

import json
import time

import click

from covidedge.spec import RUNNER_BACKEND_CHOICES


def _log(line: str) -> None:
    click.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", err=True)


@click.command(name="dicom-node")
@click.option("--work", type=click.Path(file_okay=False, path_type=str),
              help="Work folder: the on-disk queue of received instances and results (required to run).")
@click.option("--status", "status_of", metavar="WORK", type=click.Path(file_okay=False, path_type=str),
              help="Print the queue of the node using WORK and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --status: print JSON.")
@click.option("--forward", multiple=True, metavar="AE@HOST:PORT",
              help="Send results by C-STORE to this DICOM node (the PACS); repeat for several.")
@click.option("--dicom-out", type=click.Path(file_okay=False, path_type=str),
              help="Also (or instead) write results into this folder.")
@click.option("--classifier", "-c", metavar="MODEL", help="Classifier: engine, .onnx or .pt.")
@click.option("--segmenter", "-s", metavar="MODEL", help="Lungs + infection segmenter: engine, .onnx or .pt.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=None,
              help="Mask probability threshold of the segmenter (default: the model's).")
@click.option("--backend", type=click.Choice(RUNNER_BACKEND_CHOICES), default="auto", show_default=True)
@click.option("--ae-title", default="COVIDEDGE", show_default=True, help="This node's AE title.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; then give --allow / --allow-host).")
@click.option("--port", type=click.IntRange(0, 65535), default=11112, show_default=True,
              help="TCP port (0: any free port, printed at start).")
@click.option("--allow", "allow_ae", multiple=True, metavar="AE[,AE...]",
              help="Calling AE titles accepted; others are rejected. Without --allow and --allow-host "
                   "only callers on loopback are accepted.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="IP[,IP...]",
              help="Caller addresses or networks (10.0.0.0/24) accepted.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), help="PEM certificate: listen with TLS.")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), help="PEM private key of --tls-cert.")
@click.option("--tls-ca", type=click.Path(dir_okay=False, exists=True),
              help="PEM CA certificates: require callers to present a certificate they sign.")
@click.option("--accept", type=click.Choice(["xray", "xray+sc", "any"]), default="xray", show_default=True,
              help="Storage SOP classes accepted: CR and DX; also Secondary Capture; or every storage "
                   "class (non-radiographs are acknowledged and reported, not run).")
@click.option("--modality", default="CR,DX", show_default=True,
              help="Modality values to run on (comma-separated, or 'any'), as infer --dicom-out.")
@click.option("--view-position", default="PA,AP", show_default=True,
              help="ViewPosition values to run on (comma-separated, or 'any').")
@click.option("--body-part", default=None, help="BodyPartExamined values to run on, e.g. CHEST (default: any).")
@click.option("--no-overlay", is_flag=True, help="Send SEG and SR but no Secondary Capture overlay.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Inference workers, each with its own copy of the models.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Most waiting instances one worker runs at once.")
@click.option("--max-queue", type=click.IntRange(1), default=1000, show_default=True,
              help="Instances waiting (for inference or delivery) above which C-STORE is answered "
                   "'out of resources'.")
@click.option("--min-free-mb", type=click.FloatRange(0), default=1024, show_default=True,
              help="Free space in the work folder below which C-STORE is answered 'out of resources'.")
@click.option("--retry-max", type=click.FloatRange(0.1), default=60.0, show_default=True,
              help="Longest wait (s) between delivery attempts while a destination is down.")
@click.pass_context
def command(ctx, work, status_of, as_json, forward, dicom_out, classifier, segmenter, threshold, backend,
            ae_title, host, port, allow_ae, allow_hosts, tls_cert, tls_key, tls_ca, accept, modality,
            view_position, body_part, no_overlay, workers, batch_size, max_queue, min_free_mb, retry_max):
    """Run a DICOM node: receive chest X-rays by C-STORE, classify and segment them, and send a
    Segmentation, a TID 1500 SR and a Secondary Capture overlay per image back to the PACS.

    Each received instance is written to the --work folder before it is acknowledged; results
    wait there until every destination took them (retried with backoff while one is down), so
    a restart loses nothing and a SOP instance is never run twice. Without -c / -s the default
    models run, as 'covidedge infer' picks them. SIGTERM or Ctrl-C stops it cleanly. Patient
    identifiers never appear in the log. Needs the dicom extra (pydicom, highdicom, pynetdicom).

    \b
    Examples:
      covidedge dicom-node --work /var/lib/covidedge-node --forward PACS@127.0.0.1:4242
      covidedge dicom-node --work w --host 0.0.0.0 --port 104 --allow MODALITY1,PACS \\
          --forward PACS@10.0.0.5:104 -c build/cls-best.fp32.ort.onnx -s build/seg-best.fp32.ort.onnx \\
          --workers 2
      covidedge dicom-node --status /var/lib/covidedge-node
      python -m pynetdicom storescu 127.0.0.1 11112 xray.dcm -aec COVIDEDGE

    \b
    Exit codes: 0 stopped cleanly, 2 options that cannot be used together, 3 a bad option value
      (port in use, certificate), 4 a model that does not fit, 6 the dicom extra is missing.
    """
    from covidedge.errors import UsageError
    from covidedge.node import DicomNode, NodeOptions, node_status, status_lines

    if status_of:
        status = node_status(status_of)
        click.echo(json.dumps(status, indent=1) if as_json else "\n".join(status_lines(status)))
        return
    if not work:
        raise UsageError("give --work FOLDER (the node's queue), or --status WORK to look at one")
    from covidedge.dicom import SeriesFilter

    options = NodeOptions(
        work=work, forward=forward, dicom_out=dicom_out, classifier=classifier, segmenter=segmenter,
        threshold=threshold, backend=backend, ae_title=ae_title, host=host, port=port, allow_ae=allow_ae,
        allow_hosts=allow_hosts, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca, accept=accept,
        series_filter=SeriesFilter.parse(modality, view_position, body_part), overlay=not no_overlay,
        workers=workers, batch_size=batch_size, max_queue=max_queue, min_free_mb=min_free_mb,
        retry_max_s=retry_max)
    DicomNode(options, on_log=_log).run()
