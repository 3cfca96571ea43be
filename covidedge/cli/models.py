"""``covidedge models``: the shipped models with the key numbers of their model cards."""

from __future__ import annotations

import json

import click


def _headline(m) -> str:
    rows = m.summary.get("val") or []
    if m.task == "classifier":
        return "Val accuracy   " + ", ".join(f"{r['key']} {r['accuracy']:.3f}" for r in rows)
    return "Val Dice (lung/infection)   " + ", ".join(
        f"{r['key']} {r['lung_dice']:.3f}/{r['infection_dice']:.3f}" for r in rows)


@click.command(name="models")
@click.option("--json", "as_json", is_flag=True, help="Print every shipped model's card data as JSON.")
def command(as_json):
    """List the trained models covidedge ships - the defaults of 'covidedge build-engine',
    'covidedge infer' and 'covidedge bench' when no model is given - with their architecture,
    size and Val metrics per precision (checkpoint, shipped fp32, fp16, int8 in TensorRT and
    ONNX Runtime CPU form). The full model card is the .md file named in 'card'.

    \b
    Examples:
      covidedge models
      covidedge models --json | python -c "import json,sys; print(json.load(sys.stdin)[0]['card'])"
    """
    from covidedge.pretrained import shipped_models

    models = shipped_models()
    if as_json:
        click.echo(json.dumps([m.to_dict() for m in models], indent=2, sort_keys=True))
        return
    if not models:
        click.echo("this install ships no trained model")
        return
    for m in models:
        s = m.summary
        kw = ", ".join(f"{k}={v}" for k, v in (s.get("model_kwargs") or {}).items())
        size = s.get("input_size") or ["?", "?"]
        click.echo(f"{m.name}  ({m.task})")
        click.echo(f"  network     {s.get('architecture')} ({kw}), {s.get('parameters', 0) / 1e6:.1f} M parameters, "
                   f"{size[0]}x{size[1]} px")
        click.echo(f"  trained on  COVID-QU-Ex Train ({s.get('train_images')} images), selected on Val "
                   f"(epoch {s.get('epoch')})")
        click.echo(f"  {_headline(m)}")
        faithful = "faithful" if s.get("cpu_engine_precision") == "int8" else "not faithful (fp32 and bf16 only)"
        click.echo(f"  engines     int8 {faithful} on Val; bare `covidedge build-engine` keeps the fastest "
                   "faithful form on this machine (TensorRT: fp16 and int8)")
        click.echo(f"  card        {m.card_path}")
