"""``covidedge serve``: run a covidedge Triton repository on the bundled Triton server."""

from __future__ import annotations

import signal
import sys
import time

import click

from covidedge.errors import RuntimeFailure
from covidedge.serve.server import DEFAULT_PORTS


@click.command(name="serve")
@click.argument("repository", type=click.Path(file_okay=False))
@click.option("--http-port", type=click.IntRange(1, 65535), default=DEFAULT_PORTS["http"], show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=DEFAULT_PORTS["grpc"], show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=DEFAULT_PORTS["metrics"], show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address to listen on (also the one the printed docker command publishes on); "
                   "0.0.0.0 serves other machines: the server has no authentication, so put it behind "
                   "an authenticating proxy first (docs/security.md).")
@click.option("--log", "log_file", type=click.Path(dir_okay=False), default=None,
              help="Write the server's full log here.")
@click.option("--ready-timeout", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="Seconds to wait for every model to be ready.")
@click.option("--verbose", "-v", is_flag=True, help="Show every server log line (GPU noise aside).")
def command(repository, http_port, grpc_port, metrics_port, address, log_file, ready_timeout, verbose):
    """Serve a repository written by 'covidedge triton-repo'.

    A --target cpu repository runs on the tritonserver that the serve extra bundles
    (pip install 'covidedge[serve]'): this waits until every model is ready, prints the
    endpoints and runs until Ctrl-C, then shuts the server down. For a --target gpu repository it
    prints the 'docker run' command of the NVIDIA Triton container whose TensorRT matches the
    engines instead.

    \b
    Examples:
      covidedge serve triton-repo
      covidedge infer xray.png --server http://127.0.0.1:8000
    """
    from covidedge.serve.check import check_repository_labels
    from covidedge.serve.repository import read_repository
    from covidedge.serve.server import TritonServer, docker_command, find_bundled_server

    facts = read_repository(repository)
    check_repository_labels(repository)  # every place labels travel agrees with the served models
    if facts.get("target") == "gpu":
        d = docker_command(repository, facts, http_port=http_port, grpc_port=grpc_port,
                           metrics_port=metrics_port, address=address)
        click.echo(f"{repository} targets GPUs; serve it with NVIDIA's Triton container:", err=True)
        click.echo(d["command"])
        for note in d["notes"]:
            click.echo(f"note: {note}", err=True)
        return

    find_bundled_server()  # exit 6 with the install command when the extra is absent

    def show(line: str) -> None:
        if verbose or line[:1] in ("E", "W"):
            click.echo(f"tritonserver: {line}", err=True)

    server = TritonServer(repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          address=address, log_file=log_file, on_line=show)
    def interrupt(signum, frame):  # a service manager's SIGTERM stops the server like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    t0 = time.perf_counter()
    server.start()
    try:
        server.wait_ready(ready_timeout)
        ep = server.endpoints
        click.echo(f"ready in {time.perf_counter() - t0:.1f} s: {', '.join(sorted(facts.get('models', {})))} "
                   f"as ensemble '{facts.get('ensemble')}'", err=True)
        click.echo(f"http    {ep['http']}\ngrpc    {ep['grpc']}\nmetrics {ep['metrics']}")
        click.echo(f"try: covidedge infer IMAGE --server {ep['http']}   (Ctrl-C stops the server)", err=True)
        sys.stdout.flush()
        while server.is_running():
            time.sleep(0.5)
        code = server.stop()
        raise RuntimeFailure(f"tritonserver exited with code {code}: {server.last_error()}",
                             path=repository, hint="run with --log FILE for the full log")
    except KeyboardInterrupt:
        click.echo("stopping tritonserver ...", err=True)
    finally:
        code = server.stop()
    click.echo(f"stopped (exit code {code})", err=True)
