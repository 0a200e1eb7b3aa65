"""GPU smoke check: every preset trains a few steps under bf16 and fp16 autocast, then engine_speed.py runs on the GPU.

Per preset and dtype it trains a small timm ViT on one fixed random batch (so the loss must fall) with AdamW, under
`torch.autocast(device, dtype)` (fp16 with a GradScaler), and checks: every loss finite, every adapter gradient
finite, ΔW built in float32, the 16-bit output close to the float32 one, and the loss lower after the last step
than before the first (when at least 5 steps run). Then `benchmarks/engine_speed.py --quick --device DEVICE`
times training steps against PEFT on the same device. Writes OUT (markdown) and OUT with a .json suffix.

    python scripts/gpu_smoke.py --out benchmarks/results/gpu_smoke.md          # needs CUDA; a few minutes
    python scripts/gpu_smoke.py --device cpu --tiny --steps 1 --out /tmp/s.md   # self-check of the script on a CPU

Exit status: 0 all checks passed, 1 a check failed, 2 no CUDA device (with --device cuda).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402

import superlora  # noqa: E402
from superlora import PRESETS, get_superlora_model, preset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MIN_STEPS_FOR_DECREASE = 5


def small_vit(tiny: bool) -> torch.nn.Module:
    """ViT with embed 192, depth 6, 3 heads at 32 px (patch 4); --tiny: embed 24, depth 2 at 16 px."""
    if tiny:
        return timm.models.vision_transformer.VisionTransformer(
            img_size=16, patch_size=8, embed_dim=24, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=10)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3, num_classes=10)


def train_case(name: str, dtype_name: str, device: torch.device, steps: int, tiny: bool, batch: int) -> dict:
    """Train one preset under one autocast dtype; returns the measurements and the list of failed checks."""
    torch.manual_seed(0)
    model = get_superlora_model(small_vit(tiny), preset(name, rank=4)).to(device)
    with torch.no_grad():  # start from a non-zero update so the 16-bit comparison exercises ΔW
        for param in model.adapter.parameters():
            param.normal_(0.0, 0.1)
    size = 16 if tiny else 32
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    dtype = DTYPES[dtype_name]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    failures: list[str] = []
    with torch.no_grad():
        reference = model(images).float()
        with torch.autocast(device.type, dtype=dtype):
            half = model(images).float()
            if any(d.dtype != torch.float32 for d in model.adapter.delta_weights().values()):
                failures.append("ΔW not float32 under autocast")
    output_error = float((half - reference).norm() / reference.norm())
    losses, grads_finite = [], True
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device.type, dtype=dtype):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grads_finite &= all(torch.isfinite(p.grad).all().item() for p in model.adapter.parameters()
                            if p.grad is not None)
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / max(1, steps)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
        final = float(torch.nn.functional.cross_entropy(model(images), labels))
    if not all(math.isfinite(v) for v in [*losses, final]):
        failures.append("non-finite loss")
    if not grads_finite:
        failures.append("non-finite adapter gradient")
    if not output_error < 0.1:
        failures.append(f"16-bit output differs from float32 by {output_error:.3g}")
    decreased = bool(losses) and final < losses[0]
    if steps >= MIN_STEPS_FOR_DECREASE and not decreased:
        failures.append("loss did not decrease")
    return {"preset": name, "dtype": dtype_name, "first_loss": losses[0] if losses else None, "final_loss": final,
            "decreased": decreased, "grads_finite": grads_finite, "output_rel_error": output_error,
            "seconds_per_step": seconds, "failures": failures}


def engine_speed(device: torch.device, timeout: int) -> dict:
    """benchmarks/engine_speed.py --quick on the device, in a subprocess; its stdout tail and exit status."""
    command = [sys.executable, str(ROOT / "benchmarks" / "engine_speed.py"), "--quick", "--device", str(device)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"command": " ".join(command[1:]), "returncode": None, "output": f"timed out after {timeout} s"}
    output = (done.stdout + done.stderr).strip().splitlines()
    return {"command": " ".join(command[1:]), "returncode": done.returncode, "output": "\n".join(output[-12:])}


def markdown(report: dict) -> str:
    lines = ["# GPU smoke check", "", f"Command: `{report['command']}`  ",
             f"Device: {report['device_name']}; torch {report['torch']}; superlora {report['superlora']}; "
             f"{report['date']}.", "",
             "| preset | dtype | first loss | final loss | fell | grads finite | 16-bit vs fp32 output | s/step | ok |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report["cases"]:
        first = "–" if row["first_loss"] is None else f"{row['first_loss']:.4f}"
        lines.append(f"| {row['preset']} | {row['dtype']} | {first} | {row['final_loss']:.4f} | "
                     f"{'yes' if row['decreased'] else 'no'} | {'yes' if row['grads_finite'] else 'NO'} | "
                     f"{row['output_rel_error']:.2e} | {row['seconds_per_step']:.3f} | "
                     f"{'yes' if not row['failures'] else 'NO: ' + '; '.join(row['failures'])} |")
    speed = report.get("engine_speed")
    if speed:
        lines += ["", f"`{speed['command']}` (exit status {speed['returncode']}):", "", "```", speed["output"], "```"]
    lines += ["", f"Result: {'PASS' if report['passed'] else 'FAIL'}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="markdown summary path; the JSON goes beside it (.json)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a self-check")
    parser.add_argument("--steps", type=int, default=20, help="training steps per preset and dtype (20)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tiny", action="store_true", help="a 2-block ViT at 16 px instead of 6 blocks at 32 px")
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS), default=list(PRESETS))
    parser.add_argument("--speed", choices=("auto", "yes", "no"), default="auto",
                        help="run engine_speed.py --quick on the device (auto: on CUDA only)")
    parser.add_argument("--speed-timeout", type=int, default=300, help="seconds allowed for engine_speed.py")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here; run it on a GPU machine, or use --device cpu for a self-check",
              file=sys.stderr)
        return 2
    cases = []
    for name in args.presets:
        for dtype_name in DTYPES:
            try:
                row = train_case(name, dtype_name, device, args.steps, args.tiny, args.batch_size)
            except Exception as err:  # a crash is a failed check, reported with the others
                row = {"preset": name, "dtype": dtype_name, "first_loss": None, "final_loss": float("nan"),
                       "decreased": False, "grads_finite": False, "output_rel_error": float("nan"),
                       "seconds_per_step": float("nan"), "failures": [f"{type(err).__name__}: {err}"]}
            print(f"{name:>13} {dtype_name}: final loss {row['final_loss']:.4f} "
                  f"{'ok' if not row['failures'] else 'FAILED ' + '; '.join(row['failures'])}", flush=True)
            cases.append(row)
    speed = None
    if args.speed == "yes" or (args.speed == "auto" and device.type == "cuda"):
        speed = engine_speed(device, args.speed_timeout)
        print(speed["output"], flush=True)
    passed = all(not row["failures"] for row in cases) and (speed is None or speed["returncode"] == 0)
    report = {
        "command": " ".join(["python scripts/gpu_smoke.py", *(argv if argv is not None else sys.argv[1:])]),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})",
        "torch": torch.__version__, "superlora": superlora.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
        "steps": args.steps, "cases": cases, "engine_speed": speed, "passed": passed,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(report))
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'PASS' if passed else 'FAIL'}: summary in {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
