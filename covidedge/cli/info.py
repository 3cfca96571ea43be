"""``covidedge info``: which backends this machine can use, and what it is."""

from __future__ import annotations

import json

import click

from covidedge.backends.available import available_backends


@click.command(name="info")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON on stdout.")
def command(as_json):
    """Show the backends covidedge can use here (TensorRT, ONNX Runtime providers, torch), their
    versions, and the machine (CPU, GPU, Jetson release). Nothing heavy is loaded.

    \b
    Example:
      covidedge info --json
    """
    facts = available_backends()
    try:
        from covidedge.machine import probe_machine

        facts["machine"] = probe_machine()
    except ImportError:
        pass
    if as_json:
        click.echo(json.dumps(facts, indent=2, sort_keys=True))
        return
    for name, b in facts["backends"].items():
        state = f"yes, {b['version']}" if b["available"] else f"no ({b['reason']})"
        click.echo(f"{name:<12} {state}")
    click.echo(f"default      {facts['default_backend']}")
    shown = set(facts["backends"])  # versions already listed above
    for k, v in sorted(facts.get("machine", {}).items()):
        if v not in (None, "", []) and k not in shown:
            click.echo(f"{k:<12} {v}")
