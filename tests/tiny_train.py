"""Tiny models and synthetic faces for the training tests (everything built here, nothing downloaded).

- SD1.x-shaped diffusers models a few hundred kB big (same block types as SD1.5, 768-wide
  cross-attention, VAE with SD's factor 8), seeded random weights;
- SDXL-shaped ones (`tiny_sdxl_parts`: SDXL's block order, 2048-wide cross-attention, the
  pooled/time-id embedding, CLIP-L and bigG-wide text encoders of 2 layers);
- `ldm_state_dict` / `sdxl_state_dict`: those weights renamed to the original single-file
  layouts (the inverse of the renaming diffusers applies when it reads such a file; for SDXL's
  bigG, OpenCLIP's names with fused q/k/v), to test our single-file loader on a file that
  looks like a real SD1.x or SDXL checkpoint;
- synthetic face photos with known landmarks, and random MSID / mapping checkpoints.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from f2d_core.train.__main__ import main as train_main
from f2d_core.train.bench import TINY, TINY_TEXT, TINY_UNET, TINY_VAE  # noqa: E402  (the benchmark's toy size)


def tiny_configs():
    from f2d_core.train.sd import SD1_SCHEDULER
    return {"unet": TINY_UNET, "vae": TINY_VAE, "text_encoder": TINY_TEXT, "scheduler": dict(SD1_SCHEDULER)}


def _seeded(module, seed):
    """Deterministic random weights, independent of the global RNG."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g) if name.endswith("weight")
                        else 0.02 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(np.prod(p.shape[1:])))
    return module


_BUILT: dict = {}


def tiny_parts(seed=0, tokenizer=None):
    """A fresh copy of the tiny SD parts for `seed` (built once per session: drawing the 38 M
    values of CLIP's token table takes seconds, copying them does not)."""
    import copy
    if seed not in _BUILT:
        _BUILT[seed] = _build_tiny_parts(seed)
    parts = copy.deepcopy(_BUILT[seed])
    parts.tokenizer = tokenizer
    return parts


def _build_tiny_parts(seed, tokenizer=None):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from f2d_core.train.sd import SDParts
    cfg = tiny_configs()
    unet = _seeded(UNet2DConditionModel(**TINY_UNET), seed)
    vae = _seeded(AutoencoderKL(**TINY_VAE), seed + 1)
    text = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    _seeded(text, seed + 2)
    with torch.no_grad():  # CLIP-like embedding scale, so S* (std ~0.5) and words are comparable
        emb = getattr(text, "text_model", text).embeddings
        emb.token_embedding.weight.mul_(0.02 / emb.token_embedding.weight.std())
        emb.position_embedding.weight.mul_(0.01 / emb.position_embedding.weight.std())
    return SDParts(unet.eval(), vae.eval(), text.eval(), dict(cfg["scheduler"]), tokenizer, configs=cfg)


def tiny_sdxl_configs():
    from f2d_core.train.sd import SD1_SCHEDULER
    return {**TINY["sdxl"], "scheduler": dict(SD1_SCHEDULER)}


def tiny_sdxl_parts(seed=0, tokenizer=None):
    """A fresh copy of the tiny SDXL-shaped parts for `seed` (built once per session)."""
    import copy
    key = ("sdxl", seed)
    if key not in _BUILT:
        _BUILT[key] = _build_tiny_sdxl_parts(seed)
    parts = copy.deepcopy(_BUILT[key])
    parts.tokenizer = tokenizer
    return parts


def _build_tiny_sdxl_parts(seed):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from f2d_core.models.families import SDXL
    from f2d_core.train.sd import SDParts
    cfg = tiny_sdxl_configs()
    unet = _seeded(UNet2DConditionModel(**cfg["unet"]), seed)
    vae = _seeded(AutoencoderKL(**cfg["vae"]), seed + 1)
    text = _seeded(CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])), seed + 2)
    text_2 = _seeded(CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"])), seed + 3)
    with torch.no_grad():  # CLIP-like embedding scale, so S* (std ~0.5) and words are comparable
        for t in (text, text_2):
            emb = getattr(t, "text_model", t).embeddings
            emb.token_embedding.weight.mul_(0.02 / emb.token_embedding.weight.std())
            emb.position_embedding.weight.mul_(0.01 / emb.position_embedding.weight.std())
    return SDParts(unet.eval(), vae.eval(), text.eval(), dict(cfg["scheduler"]), configs=cfg, family=SDXL,
                   text_encoder_2=text_2.eval())


def save_diffusers_folder(parts, path):
    parts.unet.save_pretrained(os.path.join(path, "unet"))
    parts.vae.save_pretrained(os.path.join(path, "vae"))
    parts.text_encoder.save_pretrained(os.path.join(path, "text_encoder"))
    if parts.text_encoder_2 is not None:
        parts.text_encoder_2.save_pretrained(os.path.join(path, "text_encoder_2"))
    os.makedirs(os.path.join(path, "scheduler"), exist_ok=True)
    with open(os.path.join(path, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "PNDMScheduler", **parts.scheduler_config}, f)
    return path


# ---- diffusers -> LDM names (the original SD single-file layout) ------------------------------

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def _unet_key(k: str, per_level: int) -> str:
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for a, b in top.items():
        if k.startswith(a + "."):
            return b + k[len(a):]

    def res(rest):
        for a, b in _RESNET:
            if rest.startswith(a + "."):
                return b + rest[len(a):]
        return rest

    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        n = 1 + i * (per_level + 1) + j
        return f"input_blocks.{n}.0.{res(rest)}" if kind == "resnets" else f"input_blocks.{n}.1.{rest}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (per_level + 1)}.0.op.{m[2]}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", k)
    if m:
        return f"middle_block.{2 * int(m[2])}.{res(m[3])}" if m[1] == "resnets" else f"middle_block.1.{m[3]}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        n = i * (per_level + 1) + j
        return f"output_blocks.{n}.0.{res(rest)}" if kind == "resnets" else f"output_blocks.{n}.1.{rest}"
    raise KeyError(k)


def _unet_upsampler_keys(unet_sd, per_level, up_types):
    out = {}
    for k, v in unet_sd.items():
        m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k)
        if m:
            i = int(m[1])
            slot = 2 if up_types[i].startswith("CrossAttn") else 1
            out[f"output_blocks.{i * (per_level + 1) + per_level}.{slot}.conv.{m[2]}"] = v
    return out


def _vae_key(k: str, n_blocks: int) -> str:
    k = k.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    m = re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
    m = re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k)
    if m:
        return f"decoder.up.{n_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k)
    if m:
        return f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", k)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", k)
    if m:
        names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
        for a, b in names.items():
            if m[2].startswith(a + "."):
                return f"{m[1]}.mid.attn_1.{b}{m[2][len(a):]}"
    return k


def ldm_state_dict(parts, text_prefix="text_model.") -> dict:
    """The parts' weights under the names of an original SD1.x single-file checkpoint."""
    out = _ldm_unet_vae(parts)
    for k, v in parts.text_encoder.state_dict().items():
        k = k if k.startswith("text_model.") else text_prefix + k
        out["cond_stage_model.transformer." + k] = v
    return {k: v.contiguous() for k, v in out.items()}


def sdxl_state_dict(parts) -> dict:
    """The parts' weights under the names of `sd_xl_base_1.0.safetensors`: UNet and VAE as in SD1.x
    (plus `label_emb`, the pooled/time-id embedding), CLIP-L in transformers' names under
    conditioner.embedders.0.transformer., bigG in OpenCLIP's under conditioner.embedders.1.model."""
    out = _ldm_unet_vae(parts)
    for k, v in parts.text_encoder.state_dict().items():
        out["conditioner.embedders.0.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    g = {k.removeprefix("text_model."): v for k, v in parts.text_encoder_2.state_dict().items()}
    pre = "conditioner.embedders.1.model."
    out[pre + "token_embedding.weight"] = g.pop("embeddings.token_embedding.weight")
    out[pre + "positional_embedding"] = g.pop("embeddings.position_embedding.weight")
    out[pre + "ln_final.weight"] = g.pop("final_layer_norm.weight")
    out[pre + "ln_final.bias"] = g.pop("final_layer_norm.bias")
    out[pre + "text_projection"] = g.pop("text_projection.weight").T  # OpenCLIP: x @ text_projection
    out[pre + "logit_scale"] = torch.tensor(4.6052)  # in the real file, unused by the text side
    for i in range(parts.text_encoder_2.config.num_hidden_layers):
        a, b = f"encoder.layers.{i}.", f"{pre}transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[b + "attn.in_proj_" + p] = torch.cat([g.pop(f"{a}self_attn.{n}_proj.{p}") for n in "qkv"])
            out[b + "attn.out_proj." + p] = g.pop(f"{a}self_attn.out_proj.{p}")
            out[b + "ln_1." + p] = g.pop(f"{a}layer_norm1.{p}")
            out[b + "ln_2." + p] = g.pop(f"{a}layer_norm2.{p}")
            out[b + "mlp.c_fc." + p] = g.pop(f"{a}mlp.fc1.{p}")
            out[b + "mlp.c_proj." + p] = g.pop(f"{a}mlp.fc2.{p}")
    assert not g, sorted(g)  # every bigG weight has its OpenCLIP name
    return {k: v.contiguous() for k, v in out.items()}


def _ldm_unet_vae(parts) -> dict:
    per = parts.unet.config.layers_per_block
    unet_sd = parts.unet.state_dict()
    out = {}
    for k, v in unet_sd.items():
        if ".upsamplers." not in k:
            out["model.diffusion_model." + _unet_key(k, per)] = v
    for k, v in _unet_upsampler_keys(unet_sd, per, parts.unet.config.up_block_types).items():
        out["model.diffusion_model." + k] = v
    nb = len(parts.vae.config.block_out_channels)
    for k, v in parts.vae.state_dict().items():
        name = _vae_key(k, nb)
        if ".mid.attn_1." in name and name.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out["first_stage_model." + name] = v
    return out


# ---- synthetic faces -------------------------------------------------------------------------

def face_image(seed: int, size: int = 96, face: float = 0.4):
    """A face-like RGB picture (skin ellipse, eyes, nose, mouth; colours and placement vary with
    the seed) and its 5 landmarks."""
    import cv2
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = rng.integers(20, 235, 3)
    img[::4, :, 1] = rng.integers(0, 255)  # background texture
    cx, cy = size / 2 + rng.uniform(-0.08, 0.08) * size, size / 2 + rng.uniform(-0.05, 0.05) * size
    w = face * size * rng.uniform(0.9, 1.1)
    skin = tuple(int(c) for c in rng.integers(90, 250, 3))
    cv2.ellipse(img, (int(cx), int(cy)), (int(w * 0.5), int(w * 0.65)), 0, 0, 360, skin, -1)
    eyes = np.array([[cx - 0.2 * w, cy - 0.12 * w], [cx + 0.2 * w, cy - 0.12 * w]])
    nose = np.array([cx, cy + 0.08 * w])
    mouth = np.array([[cx - 0.16 * w, cy + 0.28 * w], [cx + 0.16 * w, cy + 0.28 * w]])
    eye_colour = tuple(int(c) for c in rng.integers(0, 120, 3))
    for e in eyes:
        cv2.circle(img, tuple(int(v) for v in e), max(1, int(0.06 * w)), eye_colour, -1)
    cv2.circle(img, tuple(int(v) for v in nose), max(1, int(0.04 * w)), (120, 60, 60), -1)
    cv2.line(img, tuple(int(v) for v in mouth[0]), tuple(int(v) for v in mouth[1]), (150, 20, 30),
             max(1, int(0.04 * w)))
    return img, np.vstack([eyes, nose, mouth]).astype(np.float32)


def write_faces(folder, n: int, size: int = 96, seed: int = 0, subdir: str = "") -> dict:
    """n synthetic faces as PNGs in folder[/subdir] plus their landmarks; returns {relpath: landmarks5}."""
    from PIL import Image
    os.makedirs(os.path.join(folder, subdir), exist_ok=True)
    marks = {}
    for i in range(n):
        img, lm = face_image(seed + i, size)
        rel = f"{subdir}/face{i:03d}.png" if subdir else f"face{i:03d}.png"
        Image.fromarray(img).save(os.path.join(folder, rel))
        marks[rel] = lm.tolist()
    return marks


def write_landmarks(path, marks: dict):
    with open(path, "w") as f:
        json.dump(marks, f)
    return str(path)


def random_msid(path, seed=0):
    """A random MSID encoder in the official msid.pt layout (BN statistics included)."""
    from f2d_core.models.msid import MSIDEncoder
    torch.manual_seed(seed)
    m = MSIDEncoder()
    with torch.no_grad():
        m.cls_token.normal_(std=0.02)
        m.pos_embed.normal_(std=0.02)
    torch.save(m.state_dict(), path)
    return str(path)


class TinyIdentity(torch.nn.Module):
    """A cheap stand-in for the frozen MSID where the trainer's mechanics are tested:
    (B, 3, 112, 112) -> (B, 1536) from 8x8-pooled pixels."""

    def __init__(self, seed=0):
        super().__init__()
        self.proj = _seeded(torch.nn.Linear(3 * 8 * 8, 1536), seed)

    def forward(self, x):
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1))


class TinyExpression:
    """A stand-in expression encoder: (B, 3, 224, 224) uint8 -> (B, 64)."""

    def __init__(self, seed=0):
        self.proj = _seeded(torch.nn.Linear(3 * 4 * 4, 64), seed)

    def __call__(self, crops):
        with torch.no_grad():
            return self.proj(torch.nn.functional.adaptive_avg_pool2d(crops.float() / 255, 4).flatten(1))


# ---- several ranks on this machine (tests of torchrun-style runs) --------------------------------

class RankProcesses:
    """`world` processes, each running `python -m f2d_core.train ARGV` as one rank with the
    environment torchrun gives a worker (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE).
    Test-only differences from torchrun, both so that nothing listens beyond this process
    tree: the process group is joined through a file store (torchrun's TCP store listens on
    every interface), and gloo talks over the loopback interface only. Each rank's
    stdout/stderr go to files, and an audit hook (sys.addaudithook) lists every file the rank
    creates, writes, renames or deletes inside `watch`."""

    def __init__(self, world: int, argv: list, folder, watch=None, timeout_s: float = 60):
        self.folder = str(folder)
        os.makedirs(self.folder, exist_ok=True)
        store = os.path.join(self.folder, "store")
        here = os.path.dirname(os.path.abspath(__file__))
        code = ("import sys; sys.path[:0] = [%r, %r]; import tiny_train; tiny_train._rank_main()"
                % (here, os.path.dirname(here)))
        self.procs, self.logs = [], []
        for rank in range(world):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                       LOCAL_WORLD_SIZE=str(world), GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
                       F2D_TEST_STORE=store, F2D_TEST_TIMEOUT=str(timeout_s),
                       F2D_TEST_ARGV=json.dumps([str(a) for a in argv]),
                       F2D_TEST_WATCH=str(watch or ""), F2D_TEST_AUDIT=self.path(rank, "writes"))
            out, err = open(self.path(rank, "out"), "w"), open(self.path(rank, "err"), "w")
            self.procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out, stderr=err))
            self.logs += [out, err]

    def path(self, rank, what):
        return os.path.join(self.folder, f"rank{rank}.{what}")

    def wait(self, timeout_s: float) -> list:
        """Exit codes; processes still running after `timeout_s` are killed and give None."""
        deadline, codes = time.monotonic() + timeout_s, []
        for p in self.procs:
            try:
                codes.append(p.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in self.logs:
            f.close()
        return codes

    def text(self, rank, what="err") -> str:
        with open(self.path(rank, what)) as f:
            return f.read()

    def writes(self, rank) -> list:
        p = self.path(rank, "writes")
        return open(p).read().split("\n")[:-1] if os.path.isfile(p) else []


def _audit_writes(watch: str, record: str):
    """Record every creation, write, rename or removal of a path inside `watch` (one line each)."""
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    watch = os.path.realpath(watch)
    writing_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and flags & writing_flags)
            paths = [path] if writing else []
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir"):
            paths = list(args[:2]) if event == "os.rename" else [args[0]]  # rename: source and target
        else:
            return
        for path in paths:
            if isinstance(path, (str, bytes, os.PathLike)):
                full = os.path.realpath(os.fsdecode(path))
                if full == watch or full.startswith(watch + os.sep):
                    os.write(fd, f"{event} {os.path.relpath(full, watch)}\n".encode())

    sys.addaudithook(hook)


def _rank_main():
    """One rank of RankProcesses: join the group through the file store, run the command line, exit
    with its code."""
    if os.environ["F2D_TEST_WATCH"]:
        _audit_writes(os.environ["F2D_TEST_WATCH"], os.environ["F2D_TEST_AUDIT"])
    dist.init_process_group("gloo", init_method="file://" + os.environ["F2D_TEST_STORE"],
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                            timeout=datetime.timedelta(seconds=float(os.environ["F2D_TEST_TIMEOUT"])))
    try:
        code = train_main(json.loads(os.environ["F2D_TEST_ARGV"]))
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip the interpreter's teardown of the loaded models (seconds, nothing to check)


def overfit_losses(trainer, steps: int = 9) -> list:
    """The losses of `steps` optimizer steps on the trainer's first batch with a fixed step seed (the
    same noise and timestep each time), the mapping network learning alone."""
    batch = next(trainer.batches(0))
    losses = []
    for _ in range(steps):
        loss = trainer.loss(batch, step=7)
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def assert_falls_steadily(losses: list, window: int = 3) -> None:
    """Each window's mean below the previous one, and the last loss under 80% of the first."""
    import numpy as np
    means = [np.mean(losses[i:i + window]) for i in range(0, len(losses), window)]
    assert all(a > b for a, b in zip(means, means[1:])), losses
    assert losses[-1] < 0.8 * losses[0], losses

