"""Training speed: fp32 against covidedge's fast mixed-precision path, in one run.

For named model variants (``covidedge.models.registry.VARIANTS``; by default the full-size
Xception classifier and residual U-Net segmenter) it times full training steps (forward, loss
in fp32, backward, AdamW step) on the same random batch, with the same step code the trainer
uses (``covidedge.train.amp.resolve_amp``), for:

* ``fp32``          - plain fp32, NCHW (what ``--amp off`` did before channels_last);
* ``fp32+cl``       - fp32 with channels_last memory (``--amp off`` on a CPU today);
* ``fast``          - what ``--amp auto`` picks on this machine: bf16 autocast + channels_last on a
                      CPU with native bf16, fp16 autocast + grad scaler on CUDA.

It prints images/s per mode and the ratio to fp32. Nothing here is a test; the numbers belong to
the machine it runs on.

Usage:
    python benchmarks/train_speed.py                                  # xception256, resunet256
    python benchmarks/train_speed.py --variants xception256 --steps 3 --batch 16
    python benchmarks/train_speed.py --variants xception128-small,resunet128-small --json
    python benchmarks/train_speed.py --compile                        # adds torch.compile runs
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

from covidedge.models.registry import DEFAULT_VARIANTS, VARIANTS, get_variant


def _step_fn(model, opt, crit, x, y, plan, scaler):
    import torch

    def step():
        opt.zero_grad(set_to_none=True)
        xx = x.contiguous(memory_format=torch.channels_last) if plan.channels_last else x
        with plan.autocast():
            out = model(xx)
        loss = crit(out.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return float(loss.detach())
    return step


def time_mode(variant, mode: str, args, device: str, compile_model: bool = False) -> dict:
    import torch

    from covidedge.models.registry import create_model
    from covidedge.train.amp import AmpPlan, resolve_amp

    torch.manual_seed(0)
    size = args.image_size or variant.input_size
    model = create_model(variant.model, **variant.model_kwargs)
    if variant.task == "classifier":
        y = torch.randint(0, 3, (args.batch,), device=device)
        crit = torch.nn.CrossEntropyLoss()
    else:
        from covidedge.train.losses import get_loss
        y = (torch.rand(args.batch, 2, size, size, device=device) > 0.7).float()
        crit = get_loss("bce_dice")
    x = torch.rand(args.batch, 1, size, size, device=device)
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    if mode == "fast":
        plan = resolve_amp("auto", device)
    else:
        plan = AmpPlan(mode="off", dtype="fp32", device_type=dev_type,
                       channels_last=(mode == "fp32+cl"), grad_scaler=False)
    model = model.to(device)
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    if compile_model:
        model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=plan.grad_scaler)
    step = _step_fn(model, opt, crit, x, y, plan, scaler)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    if dev_type == "cuda":
        torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        if dev_type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"variant": variant.name, "task": variant.task, "image_size": size,
            "mode": mode + ("+compile" if compile_model else ""),
            "dtype": plan.dtype, "channels_last": plan.channels_last,
            "step_s_median": med, "step_s_all": times, "warmup_s": warm_s,
            "images_per_s": args.batch / med}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS.values()),
                   help=f"comma-separated model variants, of: {', '.join(VARIANTS)}")
    p.add_argument("--image-size", type=int, default=None, help="input size in px (default: the variant's)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="timed steps per mode (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of each mode")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    variants = [get_variant(n.strip()) for n in args.variants.split(",") if n.strip()]

    import torch

    from covidedge.train.amp import cpu_has_bf16, resolve_amp, resolve_device

    device = resolve_device(args.device)
    fast = resolve_amp("auto", device)
    rows = []
    for variant in variants:
        modes = ["fp32", "fp32+cl"] + (["fast"] if fast.enabled else [])
        for mode in modes:
            for comp in ([False, True] if args.compile else [False]):
                r = time_mode(variant, mode, args, device, compile_model=comp)
                rows.append(r)
                if not args.json:
                    print(f"  {variant.name:18s} {r['mode']:18s} {r['step_s_median']:7.3f} s/step  "
                          f"{r['images_per_s']:7.2f} img/s", file=sys.stderr, flush=True)
    base = {r["variant"]: r["images_per_s"] for r in rows if r["mode"] == "fp32"}
    for r in rows:
        r["ratio_vs_fp32"] = r["images_per_s"] / base[r["variant"]]
    info = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_native_bf16": cpu_has_bf16(), "fast_path": fast.to_dict(),
            "machine": platform.processor() or platform.machine(),
            "variants": [v.to_dict() for v in variants], "image_size": args.image_size,
            "batch": args.batch, "results": rows}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"training speed on {device} ({info['cpu_capability']}, {info['threads']} threads, "
          f"native bf16: {info['cpu_native_bf16']}), batch {args.batch}")
    if not fast.enabled:
        print("  this machine has no fast path (no CUDA, no native bf16): fp32 only")
    print("| variant | px | mode | s/step | images/s | × fp32 |\n|---|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['image_size']} | {r['mode']} | {r['step_s_median']:.3f} | {r['images_per_s']:.2f} | "
              f"{r['ratio_vs_fp32']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
