"""Speed and memory of one training step, with random weights (no files needed).

    python -m f2d_core.train bench-step --device cuda                  # mapping, full SD1.5 size, paper's batch 32
    python -m f2d_core.train bench-step --base sdxl --device cuda      # mapping, full SDXL size, 1024²
    python -m f2d_core.train bench-step --device cuda --micro-batch-size 8 --gradient-checkpointing
    python -m f2d_core.train bench-step --trainer msid --device cuda   # MSID, batch 1024
    python -m f2d_core.train bench-step --size tiny --device cpu       # the toy size of the tests
    python -m f2d_core.train bench-step --device cuda --world-size 8   # one of 8 GPUs: batch 32 / 8 = 4
    torchrun --nproc_per_node 8 -m f2d_core.train bench-step --device cuda   # 8 GPUs, real all-reduce

Full size is the real SD1.x architecture (UNet 860 M, VAE 84 M, CLIP-L 123 M parameters), or
with `--base sdxl` SDXL's (UNet 2.57 G, VAE 84 M, CLIP-L 123 M, OpenCLIP bigG 695 M), with
the frozen MSID, a random Deep3DFaceRecon ResNet-50 and a random BiSeNet, so the
step does all the work of a real one. Prints seconds per step, hours per 1k steps, peak
memory per rank (GPU; the process's peak RSS on the CPU) and what each rank holds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from ..errors import F2DError

from .distributed import current

# toy SD1.x-shaped models (same block types, 768-wide cross-attention, VAE factor 8)
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[32, 64],
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=64, norm_num_groups=8, layers_per_block=1,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 16, 16, 16], scaling_factor=0.18215)
TINY_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                 projection_dim=768)
# toy SDXL-shaped models: SDXL's block order, linear projections, 2048-wide cross-attention, the
# "text_time" embedding (pooled 1280 + 6 time ids x 8); both text encoders at their real widths (S*
# is 768 + 1280 wide) with 2 layers, so the penultimate layer is a real transformer layer's output
TINY_SDXL_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[32, 64],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    cross_attention_dim=2048, attention_head_dim=8, use_linear_projection=True, norm_num_groups=32,
    addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 1280)
TINY_SDXL_VAE = dict(TINY_VAE, scaling_factor=0.13025)
TINY_SDXL_TEXT = dict(TINY_TEXT, num_hidden_layers=2)
TINY_SDXL_TEXT_2 = dict(TINY_TEXT, hidden_size=1280, num_attention_heads=20, num_hidden_layers=2, hidden_act="gelu",
                        projection_dim=1280)
TINY = {"sd1": {"unet": TINY_UNET, "vae": TINY_VAE, "text_encoder": TINY_TEXT},
        "sdxl": {"unet": TINY_SDXL_UNET, "vae": TINY_SDXL_VAE, "text_encoder": TINY_SDXL_TEXT,
                 "text_encoder_2": TINY_SDXL_TEXT_2}}


def random_parts(size: str, device, base: str = "sd1"):
    """SDParts with random weights at `size` ("full": the family's architecture, "tiny": the toy configs)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from ..models.families import family
    from .sd import ARCHITECTURES, SD1_SCHEDULER, SDParts
    c = ARCHITECTURES[base] if size == "full" else TINY[base]
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(c["unet"])
        vae = AutoencoderKL.from_config(c["vae"])
        text = CLIPTextModel(CLIPTextConfig(**c["text_encoder"]))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**c["text_encoder_2"])) if "text_encoder_2" in c else None
    return SDParts(unet, vae, text, dict(SD1_SCHEDULER), family=family(base), text_encoder_2=text_2)


class RandomFaces(torch.utils.data.Dataset):
    """Random uint8 crops of the right shapes (the trainer's data contract, without files)."""

    def __init__(self, n: int, resolution: int, expression: bool):
        self.n, self.r, self.exp = n, resolution, expression

    def __len__(self):
        return self.n

    def __getitem__(self, item):
        index, flip = item if isinstance(item, tuple) else (item, False)
        g = torch.Generator().manual_seed(index)
        out = {"sd": torch.randint(0, 256, (3, self.r, self.r), generator=g, dtype=torch.uint8),
               "id": torch.randint(0, 256, (3, 112, 112), generator=g, dtype=torch.uint8),
               "mask": torch.zeros(1, self.r, self.r, dtype=torch.uint8), "index": index, "flip": bool(flip)}
        out["mask"][:, self.r // 4:3 * self.r // 4, self.r // 4:3 * self.r // 4] = 1
        out["time_ids"] = torch.tensor([self.r, self.r, 0, 0, self.r, self.r], dtype=torch.float32)
        if self.exp:
            out["exp"] = torch.randint(0, 256, (3, 224, 224), generator=g, dtype=torch.uint8)
        return out


class RandomIdentities(torch.utils.data.Dataset):
    def __init__(self, n: int, classes: int):
        self.n, self.classes = n, classes

    def __len__(self):
        return self.n

    def __getitem__(self, item):
        index = item[0] if isinstance(item, tuple) else item
        g = torch.Generator().manual_seed(index)
        return torch.randint(0, 256, (3, 112, 112), generator=g, dtype=torch.uint8), index % self.classes


def _mapping_trainer(args, out, device, batch_size):
    """device: where this rank builds the random models (the trainer resolves args.device the same way)."""
    from ..identity.expression import ExpressionRegressor
    from ..models.deep3d import ReconNet
    from ..models.msid import MSIDEncoder

    from .expression import RegressorExpression
    from .mapping_trainer import Components, MappingConfig, MappingTrainer
    from .parsing import BiSeNet, FaceParser
    from ..models.families import family
    resolution = args.resolution or (family(args.base).resolution if args.size == "full" else 64)
    cfg = MappingConfig(base=args.base, out=out, steps=10 ** 9, batch_size=batch_size,
                        micro_batch_size=args.micro_batch_size,
                        resolution=resolution, precision=args.precision, device=args.device, loss=args.loss,
                        gradient_checkpointing=args.gradient_checkpointing, workers=args.workers, progress=False,
                        sample_every=0)
    with torch.device(device):
        expression = RegressorExpression(ExpressionRegressor(ReconNet())) if args.expression else None
        parser = FaceParser(BiSeNet()) if args.parsing else None
    comps = Components(random_parts(args.size, device, args.base), MSIDEncoder(), expression, parser)
    return MappingTrainer(cfg, comps, RandomFaces(4096, resolution, args.expression))


def _msid_trainer(args, out, device, batch_size):
    from .msid_trainer import MSIDConfig, MSIDTrainer
    cfg = MSIDConfig(out=out, batch_size=batch_size, micro_batch_size=args.micro_batch_size,
                     precision=args.precision, device=args.device, workers=args.workers, progress=False)
    return MSIDTrainer(cfg, RandomIdentities(max(4096, args.batch_size * 2), args.num_classes), args.num_classes)


def _bytes(obj) -> int:
    """Bytes of the weights and buffers a frozen model holds (modules, or our wrappers around one)."""
    for attr in ("net", "regressor"):  # FaceParser.net, RegressorExpression.regressor.net
        if not isinstance(obj, torch.nn.Module) and hasattr(obj, attr):
            return _bytes(getattr(obj, attr))
    if not isinstance(obj, torch.nn.Module):
        return 0
    return sum(t.numel() * t.element_size() for t in [*obj.parameters(), *obj.buffers()])


def _dtype(obj) -> str:
    for attr in ("net", "regressor"):
        if not isinstance(obj, torch.nn.Module) and hasattr(obj, attr):
            return _dtype(getattr(obj, attr))
    return str(next(obj.parameters()).dtype).replace("torch.", "")


def held_memory(tr) -> dict:
    """What one rank holds, in GiB: each frozen model (in the dtype it is stored in), the trained
    weights, their gradients (DDP's all-reduce buckets under torchrun), the AdamW state."""
    gib = 2 ** 30
    if hasattr(tr, "parts"):
        frozen = {"unet": tr.parts.unet, "vae": tr.parts.vae, "text_encoder": tr.parts.text_encoder,
                  "text_encoder_2": tr.parts.text_encoder_2, "msid": tr.c.msid, "expression": tr.c.expression,
                  "parser": tr.c.parser}
    else:
        frozen = {}
    out = {f"frozen {k} ({_dtype(m)})": round(_bytes(m) / gib, 3) for k, m in frozen.items() if m is not None}
    trained = sum(p.numel() * p.element_size() for p in tr.params())
    state = sum(t.numel() * t.element_size() for st in tr.optimizer.state.values() for t in st.values()
                if torch.is_tensor(t))
    out.update({"trained weights (fp32)": round(trained / gib, 3), "gradients (fp32)": round(trained / gib, 3),
                "AdamW state (fp32)": round(state / gib, 3)})
    return out


def _peak_rss_gib() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)  # Linux: KiB


def bench(args) -> dict:
    """Time and memory of this rank's training steps. Under torchrun every rank runs its share of
    --batch-size with the real gradient all-reduce; one process with --world-size N runs the share
    of one of N ranks (batch / N) without the all-reduce."""
    ranks = current()
    world = args.world_size or ranks.world
    if ranks.distributed and world != ranks.world:
        raise F2DError(f"--world-size {world}, but torchrun started {ranks.world} processes: leave --world-size out "
                       "under torchrun (it is the number of processes).")
    if world < 1 or args.batch_size % world:
        raise F2DError(f"--batch-size {args.batch_size} cannot be split evenly over --world-size {world}.")
    simulated = world > ranks.world
    device = str(ranks.device(args.device))
    cuda = device.startswith("cuda")
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        batch = args.batch_size // world if simulated else args.batch_size
        tr = (_mapping_trainer if args.trainer == "mapping" else _msid_trainer)(args, out, device, batch)
        setup = time.perf_counter() - t0
        batches = tr.batches(0)
        for _ in range(args.warmup):
            tr.train_step(batches)
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        losses = [tr.train_step(batches)["loss"] for _ in range(args.steps)]
        if cuda:
            torch.cuda.synchronize(device)
        per_step = (time.perf_counter() - t0) / args.steps
    res = {"trainer": args.trainer, "size": args.size, "device": device,
           "gpu": torch.cuda.get_device_name(device) if cuda else None, "precision": tr.precision,
           "batch_size": args.batch_size, "world_size": world,
           "world_size_simulated": simulated, "per_rank_batch": tr.per_rank_batch, "micro_batch_size": tr.micro,
           "gradient_checkpointing": bool(getattr(args, "gradient_checkpointing", False)),
           "seconds_per_step": round(per_step, 4), "hours_per_1k_steps": round(per_step * 1000 / 3600, 3),
           "setup_seconds": round(setup, 1), "loss": round(losses[-1], 5), "torch": torch.__version__}
    if args.trainer == "mapping":
        res.update(base=args.base, loss_kind=args.loss, resolution=tr.cfg.resolution, expression=args.expression,
                   parsing=args.parsing)
    mem = {"rank": ranks.rank, "seconds_per_step": res["seconds_per_step"], "peak_process_rss_gib": _peak_rss_gib()}
    if cuda:
        mem["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
        mem["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2 ** 30, 2)
    res["holds_per_rank_gib"] = held_memory(tr)
    res["ranks"] = ranks.gather(mem)
    return res


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("--trainer", choices=("mapping", "msid"), default="mapping")
    p.add_argument("--base", choices=("sd1", "sdxl"), default="sd1",
                   help="mapping: the base model family whose architecture is timed (default sd1)")
    p.add_argument("--size", choices=("full", "tiny"), default="full",
                   help="full: the real architecture of --base (default); tiny: the toy models of the tests")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--batch-size", type=int, default=None, help="default: the paper's (mapping 32, msid 1024)")
    p.add_argument("--micro-batch-size", type=int, default=None, help="samples per forward pass on each rank")
    p.add_argument("--world-size", type=int, default=None,
                   help="without torchrun: time one rank of a run on this many GPUs (its share of --batch-size, "
                        "without the gradient all-reduce); under torchrun: the number of processes")
    p.add_argument("--resolution", type=int, default=None,
                   help="mapping: SD crop size (default: the family's, sd1 512, sdxl 1024; tiny 64)")
    p.add_argument("--loss", default="cgdr", choices=("cgdr", "reconstruction", "masked"))
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--no-expression", dest="expression", action="store_false",
                   help="leave out the (random) expression regressor")
    p.add_argument("--no-parsing", dest="parsing", action="store_false", help="leave out the (random) BiSeNet")
    p.add_argument("--num-classes", type=int, default=85742, help="msid: identities of the head (MS1M-ArcFace: 85742)")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--json", default=None, help="also write the result to this file")


def main(args) -> int:
    if args.batch_size is None:
        args.batch_size = 32 if args.trainer == "mapping" else 1024
    res = bench(args)
    if not current().is_main:
        return 0
    for k, v in res.items():
        if k == "holds_per_rank_gib":
            print(f"{'each rank holds (GiB)':>24}:")
            for name, gib in v.items():
                print(f"{'':>26}{name}: {gib}")
        elif k == "ranks":
            print(f"{'per rank':>24}:")
            for r in v:
                print(f"{'':>26}" + ", ".join(f"{a} {b}" for a, b in r.items()))
        else:
            print(f"{k:>24}: {v}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    sys.stdout.flush()
    return 0
