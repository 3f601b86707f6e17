r"""Our MSID side by side with the official code's, in one process (the figures of issue 11).

    python benchmarks/compare_official.py [--threads 2] [--batches 1,8] [--repeats 40] [--json OUT]

It needs timm 0.9.16 (the official code's ViT), which needs torchvision; neither is a requirement of
this project, so use a separate venv:

    python -m venv /tmp/bench-venv && . /tmp/bench-venv/bin/activate
    pip install torch==2.13.0 torchvision==0.28.0 timm==0.9.16 numpy
    # Only where torch is a CPU-only build that torchvision's compiled ops do not match (the import
    # fails with "operator torchvision::nms does not exist"): register its two fake ops only when
    # those ops loaded. Nothing here uses them.
    f=/tmp/bench-venv/lib/python3.11/site-packages/torchvision/_meta_registrations.py
    sed -i 's/^@torch.library.register_fake(\(.*nms.*\))$/@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda f: f))/' $f

"The official code" is timm's VisionTransformer configured as Face2Diffusion's `src/msid.py`
builds it (img 112, patch 8, dim 384, depth 12, 12 heads, qkv_bias, LayerNorm eps 1e-6, no
head) with its `extract_mlfeat` loop (CLS taps after blocks 2, 5, 8, 11, each through a
BatchNorm1d + LayerNorm neck), written here from ../shared/docs/f2d-official-spec.md §1.6.
Both load the same weights (the parity recipe's `make_state_dict("msid", 1)`, else seeded
random ones) and must agree to 1e-4 before anything is timed.

Timed, fp32 under torch.inference_mode, in rotating order within each round so that drifting
machine load hits all alike:
  official   timm + extract_mlfeat
  ours       f2d_core.models.msid.MSIDEncoder as shipped
  ours+onednn  ours with each linear layer (and fc1's GELU) done by oneDNN's fused linear,
             torch.ops.mkldnn._linear_pointwise, a private op the kernel torch.compile uses on
             CPUs: what that op would buy (MSIDEncoder no longer uses it)
  ours-gelu    ours with fc1's GELU out of place (F.gelu, as timm), i.e. what the in-place GELU
             buys: one (B*197, 1536) buffer less per block, hence fewer page faults
  ours-allrows ours with the last tapped block run for all 197 rows instead of the CLS row
             alone (Block.forward_cls), i.e. what that shortcut buys
  floor      the official MSID's 48 linear layers alone (F.linear on inputs of their shapes):
             no attention, norms, GELU or adds
Ratios are medians of the per-round ratios, with their quartiles and range; wall time is what
users feel, process CPU time is steadier when other processes share the cores.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from f2d_core.models import msid  # noqa: E402  (after the path set-up)

try:
    from timm.models.vision_transformer import VisionTransformer
except ImportError:
    sys.exit("error: this comparison needs timm 0.9.16 (the official code's ViT) and torchvision: "
             "see the top of benchmarks/compare_official.py for a venv with them")

TAPS = (2, 5, 8, 11)
DEFAULT_RECIPE = REPO.parent / "shared" / "parity" / "recipe.py"
VARIANTS = ("official", "ours", "ours+onednn", "ours-gelu", "ours-allrows", "floor")
# (numerator, denominator, the limit on the wall-time median, the batches it applies to)
RATIOS = (("ours", "official", 1.0, (1, 8)), ("ours", "floor", 1.15, (8,)), ("ours+onednn", "ours", None, ()),
          ("ours", "ours-gelu", None, ()), ("ours", "ours-allrows", None, ()), ("official", "floor", None, ()))


class OfficialMSID(VisionTransformer):
    """msid_base_patch8_112(ext_depthes=[2, 5, 8, 11]) of the official src/msid.py (spec §1.6)."""

    def __init__(self):
        super().__init__(img_size=112, patch_size=8, embed_dim=384, depth=12, num_heads=12, mlp_ratio=4,
                         qkv_bias=True, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6), num_classes=0)
        self.norms = nn.ModuleDict({f"layer_{i}": nn.Sequential(nn.BatchNorm1d(384), nn.LayerNorm(384))
                                    for i in TAPS})

    def extract_mlfeat(self, x, ext_depthes=TAPS):
        x = self._pos_embed(self.patch_embed(x))
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in ext_depthes:
                feats.append(self.norms[f"layer_{i}"](x[:, 0]))
        return torch.cat(feats, dim=1)


def msid_weights(recipe_path: Path) -> tuple[dict, str]:
    if recipe_path.is_file():
        spec = importlib.util.spec_from_file_location("f2d_parity_recipe", recipe_path)
        recipe = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(recipe)
        return recipe.make_state_dict("msid", 1), f"parity recipe {recipe_path}, seed 1"
    torch.manual_seed(1)
    return msid.MSIDEncoder().state_dict(), "seeded random weights (no parity recipe found)"


def linears_alone(model: OfficialMSID, batch: int):
    inputs = {n: torch.randn(batch, 197, n) for n in (384, 1536)}
    layers = [layer for b in model.blocks for layer in (b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2)]

    def run():
        for layer in layers:
            F.linear(inputs[layer.in_features], layer.weight, layer.bias)
    return run


def onednn_linear(x, layer, gelu=False):
    # the algorithm "none" selects the exact (erf) GELU
    return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "gelu" if gelu else "none", [],
                                              "none" if gelu else "")


def patched(model: msid.MSIDEncoder, how: str):
    """model's forward with its blocks' linears (how="onednn") or GELU (how="gelu") done otherwise."""
    def run(x):
        for b in model.blocks:
            mlp = b.mlp
            if how == "onednn":
                for layer in (b.attn.qkv, b.attn.proj):
                    layer.forward = functools.partial(onednn_linear, layer=layer)
                mlp.forward = lambda h, m=mlp: onednn_linear(onednn_linear(h, m.fc1, gelu=True), m.fc2)
            else:
                mlp.forward = lambda h, m=mlp: m.fc2(F.gelu(m.fc1(h)))
        try:
            return model(x)
        finally:
            for b in model.blocks:
                for module in (b.attn.qkv, b.attn.proj, b.mlp):
                    module.__dict__.pop("forward", None)
    return run


def all_rows(model: msid.MSIDEncoder, x):
    """model(x) with every tapped block run for all rows (no Block.forward_cls shortcut)."""
    t, taps = model.tokens(x), []
    for i, block in enumerate(model.blocks[: TAPS[-1] + 1]):
        t = block(t)
        if i in TAPS:
            taps.append(model.norms[f"layer_{i}"](t[:, 0]))
    return torch.cat(taps, dim=1)


def minor_faults() -> int:
    """This process's minor page faults so far: fresh memory from the OS, zeroed page by page."""
    try:
        import resource  # Unix only
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def others_cpu_seconds() -> float | None:
    """CPU seconds all processes have used (Linux), for the share other processes took."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def spread(values) -> dict:
    s = sorted(values)
    n = len(s)
    return {"median": statistics.median(s), "q1": s[n // 4], "q3": s[(3 * n) // 4], "min": s[0], "max": s[-1]}


def compare(batch: int, repeats: int, official: OfficialMSID, ours: msid.MSIDEncoder) -> dict:
    x = torch.randn(batch, 3, 112, 112, generator=torch.Generator().manual_seed(batch)).clamp(-1, 1)
    fns = {"official": lambda: official.extract_mlfeat(x), "ours": lambda: ours(x),
           "ours+onednn": functools.partial(patched(ours, "onednn"), x),
           "ours-gelu": functools.partial(patched(ours, "gelu"), x), "ours-allrows": lambda: all_rows(ours, x),
           "floor": linears_alone(official, batch)}
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        print("note: this torch has no torch.ops.mkldnn._linear_pointwise; ours+onednn is left out")
        del fns["ours+onednn"]
    variants = [k for k in VARIANTS if k in fns]
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    faults = {k: [] for k in fns}
    with torch.inference_mode():
        want = official.extract_mlfeat(x)
        diffs = {k: float((fns[k]() - want).abs().max()) for k in variants[1:-1]}
        for k, d in diffs.items():
            if not d <= 1e-4:
                sys.exit(f"error: {k} and the official code disagree by {d:.2e} at batch {batch}")
        diff = diffs["ours"]
        for fn in fns.values():
            fn()
        load0 = os.getloadavg()[0]
        busy0, t0, own0 = others_cpu_seconds(), time.perf_counter(), time.process_time()
        for r in range(repeats):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for k in order:
                f, c, t = minor_faults(), time.process_time(), time.perf_counter()
                fns[k]()
                wall[k].append(time.perf_counter() - t)
                cpu[k].append(time.process_time() - c)
                faults[k].append(minor_faults() - f)
        busy1, elapsed, own = others_cpu_seconds(), time.perf_counter() - t0, time.process_time() - own0
    out = {"batch": batch, "repeats": repeats, "max_abs_diff": diff, "max_abs_diffs": diffs,
           "loadavg_1min": [load0, os.getloadavg()[0]], "ms_per_face": {}, "ratios": {},
           "page_faults_per_call": {k: statistics.median(v) for k, v in faults.items()}}
    for clock, times in (("wall", wall), ("cpu", cpu)):
        out["ms_per_face"][clock] = {k: statistics.median(v) * 1e3 / batch for k, v in times.items()}
        out["ratios"][clock] = {f"{a}/{b}": spread([p / q for p, q in zip(times[a], times[b])])
                                for a, b, *_ in RATIOS if a in times and b in times}
    if busy0 is not None:
        out["others_cpu_share"] = max(0.0, (busy1 - busy0) - own) / (elapsed * (os.cpu_count() or 1))
    return out


def report(result: dict) -> None:
    b = result["batch"]
    busy = result.get("others_cpu_share")
    diffs = ", ".join(f"{k} {d:.1e}" for k, d in result["max_abs_diffs"].items())
    load = result["loadavg_1min"]
    print(f"\nbatch {b}: {result['repeats']} rounds; max |diff| from the official output: {diffs}; 1-min load "
          f"{load[0]:.2f} -> {load[1]:.2f}"
          + (f"; other processes took {busy:.0%} of the CPUs meanwhile" if busy is not None else ""))
    for clock in ("wall", "cpu"):
        ms = result["ms_per_face"][clock]
        print(f"  {clock:4s} ms/face (median): " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items()))
    print("  minor page faults per call (median): "
          + ", ".join(f"{k} {v:.0f}" for k, v in result["page_faults_per_call"].items()))
    for a, c, limit, batches in RATIOS:
        for clock in ("wall", "cpu"):
            r = result["ratios"][clock].get(f"{a}/{c}")
            if r is None:
                continue
            judged = "" if b not in batches or clock == "cpu" else \
                (f"  <= {limit:g} " + ("met" if r["median"] <= limit else "MISSED"))
            print(f"  {a + '/' + c:25s} {clock:4s} {r['median']:.3f}  [quartiles {r['q1']:.3f}-{r['q3']:.3f}, "
                  f"range {r['min']:.3f}-{r['max']:.3f}]{judged}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    ap.add_argument("--repeats", type=int, default=40, help="rounds of all the variants per batch (default 40)")
    ap.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help="the parity kit's recipe.py")
    ap.add_argument("--json", dest="json_out", type=Path, help="also write the figures to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    state_dict, source = msid_weights(args.recipe)
    official = OfficialMSID()
    official.load_state_dict(state_dict, strict=True)
    ours = msid.MSIDEncoder()
    ours.load_state_dict(state_dict, strict=True)
    official.eval(), ours.eval()
    import timm
    print(f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} threads, fp32; weights: {source}; "
          f"timm fused attention: {official.blocks[0].attn.fused_attn}")
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        results.append(compare(batch, args.repeats, official, ours))
        report(results[-1])
    if args.json_out:
        args.json_out.write_text(json.dumps({"torch": torch.__version__, "timm": timm.__version__,
                                             "threads": args.threads, "weights": source, "results": results},
                                            indent=2))
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
