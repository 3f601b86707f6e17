"""Command line: `python -m f2d_core.train {mapping,msid,msid-eval,bench-step} ...` (see docs/training.md).

mapping, msid and bench-step also run under `torchrun --nproc_per_node N -m f2d_core.train ...`
(one process per GPU, DistributedDataParallel; distributed.py)."""
from __future__ import annotations

import argparse
import logging
import sys

from ..cli import run_command

from .distributed import DEFAULT_TIMEOUT_S, launch


def _common(p, steps_default, batch_default, lr_default, workers_default):
    p.add_argument("--out", required=True, help="run folder: weights, last.pt (resume state), loss.csv/png")
    p.add_argument("--steps", type=int, default=steps_default, help=f"optimizer steps (default {steps_default})")
    p.add_argument("--batch-size", type=int, default=batch_default,
                   help=f"samples per step over all GPUs (default {batch_default}); torchrun splits it over the ranks")
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="samples per forward pass on each rank; smaller than its share of --batch-size = gradient "
                        "accumulation (small GPUs)")
    p.add_argument("--lr", type=float, default=lr_default, help=f"learning rate (default {lr_default:g})")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: bf16 (or fp16) mixed precision on a GPU, fp32 on the CPU")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:1, ... (under torchrun: auto/cuda = the GPU of each rank's LOCAL_RANK)")
    _dist_timeout(p)
    p.add_argument("--workers", type=int, default=workers_default, help="data loader processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=1000, help="write weights and the resume state every N steps")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="no horizontal flips")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved step")
    p.add_argument("--detector", default=None,
                   help="insightface pack folder for face detection (e.g. ComfyUI/models/insightface/models/buffalo_l)")
    p.add_argument("--landmarks", default=None,
                   help='JSON {"relative/path.jpg": [[x, y], ... 5 or 68 points]} instead of detection')
    p.add_argument("--no-progress", dest="progress", action="store_false")


def _dist_timeout(p):
    p.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"under torchrun: seconds a rank waits for the others before the run fails "
                        f"(default {DEFAULT_TIMEOUT_S})")


def _parser():
    ap = argparse.ArgumentParser(prog="python -m f2d_core.train",
                                 description="Train Face2Diffusion's mapping network or MSID encoder "
                                             "(needs requirements-train.txt).")
    sub = ap.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("mapping", help="train the mapping network (paper §3.3-3.4), writes mapping.pt (SD1.x) or "
                                       "mapping_sdxl.safetensors (SDXL)")
    m.add_argument("--data", required=True, help="folder of face photos (subfolders are searched too)")
    m.add_argument("--base", default="sd1", choices=("sd1", "sdxl"),
                   help="the base model family: sd1 (SD 1.4/1.5, default) or sdxl (SDXL base 1.0 and its fine-tunes)")
    m.add_argument("--sd", required=True, help="checkpoint of --base (.safetensors / .ckpt, e.g. "
                                               "sd_xl_base_1.0.safetensors) or diffusers folder")
    m.add_argument("--msid", required=True, help="MSID encoder (msid.pt or .safetensors), frozen")
    m.add_argument("--expression", default=None,
                   help="Deep3DFaceRecon epoch_20.pth for the expression input; without it every sample uses null_exp")
    m.add_argument("--parsing", default=None,
                   help="BiSeNet face parsing 79999_iter.pth for the face masks; without it: landmark masks")
    m.add_argument("--tokenizer", default=None, help="CLIP tokenizer folder (only for prompts not built in)")
    m.add_argument("--init-mapping", default=None,
                   help="start from these mapping weights (e.g. the official mapping.pt)")
    _common(m, 100_000, 32, 1e-5, 4)
    m.add_argument("--loss", default="cgdr", choices=("cgdr", "reconstruction", "masked"),
                   help="cgdr: the paper's Eq. 7 (default); reconstruction: Eq. 1; masked: Eq. 8")
    m.add_argument("--expression-dropout", type=float, default=0.2, help="probability of null_exp (Eq. 4)")
    m.add_argument("--resolution", type=int, default=None,
                   help="SD crop size (default: sd1 512, sdxl 1024; 512 or 768 make SDXL runs cheaper)")
    m.add_argument("--crop", default="ffhq", choices=("ffhq", "none"),
                   help="ffhq: FFHQ alignment from the landmarks (default); none: photos are already such crops")
    m.add_argument("--prompt", default="a photo of f l")
    m.add_argument("--class-prompt", default="a photo of a person")
    m.add_argument("--mask-classes", default=None,
                   help="BiSeNet classes counted as face, comma-separated (default 1-8,10-13: skin..lips, no hair)")
    m.add_argument("--weight-decay", type=float, default=0.0)
    m.add_argument("--warmup-steps", type=int, default=0)
    m.add_argument("--max-grad-norm", type=float, default=0.0, help="clip gradients (0: off, the paper's setting)")
    m.add_argument("--gradient-checkpointing", action="store_true", help="less GPU memory, ~30%% slower")
    m.add_argument("--snapshot-every", type=int, default=10_000, help="keep checkpoints/mapping_stepN every N steps")
    m.add_argument("--sample-every", type=int, default=1000, help="sample images every N steps (0: never)")
    m.add_argument("--sample-prompt", action="append", default=None,
                   help="prompt for the samples (repeat; default 'a photo of f l', 'a painting of f l in a garden')")
    m.add_argument("--sample-faces", type=int, default=2)
    m.add_argument("--sample-steps", type=int, default=30)
    m.add_argument("--sample-cfg", type=float, default=7.0)
    m.set_defaults(fn=cmd_mapping)

    s = sub.add_parser("msid", help="pre-train the MSID encoder (paper §3.2, Eq. 3), writes msid.pt")
    s.add_argument("--data", required=True, help="one subfolder of aligned 112x112 faces per person")
    s.add_argument("--init", default=None, help="start from these MSID weights")
    _common(s, 100_000, 1024, 1e-3, 8)
    s.add_argument("--weight-decay", type=float, default=0.1)
    s.add_argument("--warmup-steps", type=int, default=2000)
    s.add_argument("--schedule", default="cosine", choices=("cosine", "constant"))
    s.add_argument("--max-grad-norm", type=float, default=5.0)
    s.add_argument("--scale", type=float, default=64.0, help="ArcFace scale s")
    s.add_argument("--margin", type=float, default=0.5, help="ArcFace angular margin m")
    s.set_defaults(fn=cmd_msid)

    e = sub.add_parser("msid-eval", help="AUC per MSID depth on anchor/positive/negative triplets (Fig. 4)")
    e.add_argument("--data", required=True, help="one subfolder of aligned 112x112 faces per person")
    e.add_argument("--msid", required=True)
    e.add_argument("--triplets", default=None, help="CSV anchor,positive,negative (paths inside --data)")
    e.add_argument("--count", type=int, default=2000, help="random triplets when no --triplets file")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--out", default=None, help="write the result as JSON")
    e.set_defaults(fn=cmd_msid_eval)

    from .bench import add_arguments
    b = sub.add_parser("bench-step", help="time and memory of training steps with random weights")
    add_arguments(b)
    _dist_timeout(b)
    b.set_defaults(fn=cmd_bench)
    return ap


def cmd_mapping(a) -> int:
    from .deps import require
    require("diffusers", "Training the mapping network")
    from .mapping_trainer import MappingConfig, MappingTrainer
    from .parsing import FACE_CLASSES
    classes = FACE_CLASSES if not a.mask_classes else tuple(int(c) for c in a.mask_classes.split(","))
    cfg = MappingConfig(
        data=a.data, sd=a.sd, msid=a.msid, out=a.out, expression=a.expression, parsing=a.parsing,
        detector=a.detector, landmarks=a.landmarks, tokenizer=a.tokenizer, init_mapping=a.init_mapping,
        steps=a.steps, batch_size=a.batch_size, micro_batch_size=a.micro_batch_size, lr=a.lr,
        weight_decay=a.weight_decay, warmup_steps=a.warmup_steps, max_grad_norm=a.max_grad_norm, loss=a.loss,
        expression_dropout=a.expression_dropout, base=a.base, resolution=a.resolution, crop=a.crop, flip=a.flip,
        prompt=a.prompt, class_prompt=a.class_prompt, mask_classes=classes, precision=a.precision,
        device=a.device, gradient_checkpointing=a.gradient_checkpointing, workers=a.workers, seed=a.seed,
        save_every=a.save_every, snapshot_every=a.snapshot_every, sample_every=a.sample_every,
        sample_prompts=tuple(a.sample_prompt or MappingConfig.sample_prompts), sample_faces=a.sample_faces,
        sample_steps=a.sample_steps, sample_cfg=a.sample_cfg, progress=a.progress)
    with launch(a.device, a.dist_timeout) as ranks:
        out = MappingTrainer(cfg).run(resume=a.resume)
    if ranks.is_main:
        if a.base == "sd1":
            print(f"wrote {out}/mapping.pt and mapping.safetensors (load them like the official mapping.pt)")
        else:
            print(f"wrote {out}/mapping_{a.base}.safetensors (an F2D-{a.base.upper()} mapping: put it in models/face2diffusion and load it with Load Face2Diffusion "
                  "Encoder like the SD1 ones)")
    return 0


def cmd_msid(a) -> int:
    from .msid_trainer import MSIDConfig, MSIDTrainer
    cfg = MSIDConfig(data=a.data, out=a.out, detector=a.detector, landmarks=a.landmarks, init=a.init, steps=a.steps,
                     batch_size=a.batch_size, micro_batch_size=a.micro_batch_size, lr=a.lr,
                     weight_decay=a.weight_decay, warmup_steps=a.warmup_steps, schedule=a.schedule,
                     max_grad_norm=a.max_grad_norm, scale=a.scale, margin=a.margin, flip=a.flip,
                     precision=a.precision, device=a.device, workers=a.workers, seed=a.seed,
                     save_every=a.save_every, progress=a.progress)
    with launch(a.device, a.dist_timeout) as ranks:
        out = MSIDTrainer(cfg).run(resume=a.resume)
    if ranks.is_main:
        print(f"wrote {out}/msid.pt and msid.safetensors (load them like the official msid.pt)")
    return 0


def cmd_msid_eval(a) -> int:
    from .msid_eval import run_eval
    from .runtime import resolve_device
    res = run_eval(a.data, a.msid, a.out, a.triplets, a.count, a.seed, str(resolve_device(a.device)), a.batch_size)
    print(f"{res['msid']}: AUC over {res['triplets']} triplets (anchor-positive vs anchor-negative cosine)")
    for tap, v in res["auc"].items():
        print(f"  {tap:>8}: {v:.4f}")
    return 0


def cmd_bench(a) -> int:
    from .bench import main
    from .deps import require
    if a.trainer == "mapping":
        require("diffusers", "The mapping benchmark")
    with launch(a.device, a.dist_timeout):
        return main(a)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("diffusers", "transformers", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run_command(args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
