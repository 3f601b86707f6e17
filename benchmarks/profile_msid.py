r"""Where our MSID's time goes, op by op (torch.profiler), beside the linears-alone floor.

    python benchmarks/profile_msid.py [--batch 8] [--threads 2] [--calls 10]

Prints each side's top ops by self CPU time, then the split that decides the floor ratio of
benchmarks/RESULTS.md: the linear layers (addmm, with the copy that broadcasts their bias),
attention (scaled_dot_product_attention), and everything else (GELU, LayerNorm, adds, the
patch conv). Random weights: the speed is that of the real ones. No timm needed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from f2d_core.models import msid  # noqa: E402  (after the path set-up)

def profiled(fn, calls: int):
    with torch.inference_mode():
        for _ in range(3):
            fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                fn()
    return prof.key_averages()


def split(events) -> dict:
    """Self CPU microseconds per group; a copy_ run inside addmm counts with the linears."""
    out = {"linears": 0.0, "attention": 0.0, "other": 0.0}
    for e in events:
        if e.key in ("aten::addmm", "aten::mm"):
            out["linears"] += e.cpu_time_total  # includes its bias copy_
        elif e.key.startswith("aten::_scaled_dot_product"):
            out["attention"] += e.self_cpu_time_total
    total = sum(e.self_cpu_time_total for e in events)
    out["other"] = total - out["linears"] - out["attention"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=10)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = msid.MSIDEncoder().eval()
    x = torch.randn(args.batch, 3, msid.IMAGE_SIZE, msid.IMAGE_SIZE)
    rows = (msid.IMAGE_SIZE // msid.PATCH_SIZE) ** 2 + 1
    inputs = {n: torch.randn(args.batch, rows, n) for n in (msid.WIDTH, msid.MLP_HIDDEN)}
    layers = [m for b in model.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2)]

    def floor():  # the 48 linear layers alone, as benchmarks/compare_official.py times them
        for layer in layers:
            F.linear(inputs[layer.in_features], layer.weight, layer.bias)

    sides = {"ours": profiled(lambda: model(x), args.calls), "floor": profiled(floor, args.calls)}
    for name, events in sides.items():
        print(f"== {name}, batch {args.batch}, {args.threads} threads, {args.calls} calls")
        print(events.table(sort_by="self_cpu_time_total", row_limit=10))
    base = sum(e.self_cpu_time_total for e in sides["floor"])
    print(f"split, as a fraction of the floor's time (batch {args.batch}):")
    for name, events in sides.items():
        parts = split(events)
        print(f"  {name:5s} " + "  ".join(f"{k} {v / base:.3f}" for k, v in parts.items())
              + f"  total {sum(parts.values()) / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
