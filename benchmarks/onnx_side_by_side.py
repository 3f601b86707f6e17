"""insightface's ONNX face models on torch (the pack since issue 22) against onnxruntime (before),
side by side in one process: photo -> identity tokens at 1024x1024, the recogniser, load times.

    pip install -r requirements-test.txt      # onnx builds the networks, onnxruntime is the "before"
    python benchmarks/onnx_side_by_side.py [--threads 2] [--repeats 20] [--device cpu] [--json OUT]

The real files cannot be downloaded here, so the networks are the tests' layout networks
(tests/synthetic_onnx.py, tests/recognizer_onnx.py: the real files' op sets) sized like the real
ones: SCRFD-10GF's widths and depths for det_10g, iresnet50 for w600k_r50, a ResNet of 1k3d68's
file size for the 68 points; random weights. Both variants run the same files on the same
photo (../shared/faces, resized to 1024x1024) with the same pre- and post-processing; only the
network runtime differs. "onnxruntime" is the session as faces/onnx.py made it before
(errors-only logging, no thread spinning after a run, CPU provider; CUDA when asked and present).
The detection threshold is set just under the photo's best score, so one face is found and gets
its 68 points, as with a portrait. Each round runs both variants in alternating order;
figures are medians with quartiles, ratios the median of the per-round ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import onnxruntime  # noqa: E402  (the "before"; the pack itself never imports it)
import recognizer_onnx as ro  # noqa: E402
import synthetic_onnx as om  # noqa: E402
from PIL import Image  # noqa: E402

from f2d_core.faces import onnx as faces_onnx  # noqa: E402
from f2d_core.faces.detect import FaceDetector, load_detector  # noqa: E402
from f2d_core.faces.preprocess import resize  # noqa: E402
from f2d_core.faces.recognize import ArcFaceRecognizer  # noqa: E402
from f2d_core.identity.encoder import F2DEncoder  # noqa: E402
from f2d_core.identity.pipeline import encode_images  # noqa: E402
from f2d_core.models.mapping import MappingNetwork  # noqa: E402
from f2d_core.models.msid import MSIDEncoder  # noqa: E402


class OrtGraph:
    """onnxruntime as faces/onnx.make_session ran it before issue 22 (its thread count aside)."""

    threads = 0  # 0: onnxruntime's default (a thread per core), as the pack ran it; main() sets --threads

    def __init__(self, path, device="cpu"):
        opts = onnxruntime.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = self.threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if str(device) != "cpu" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = onnxruntime.InferenceSession(str(path), sess_options=opts, providers=providers)
        self.inputs, self.outputs = self.session.get_inputs(), self.session.get_outputs()

    def run(self, *arrays, channels_last=False):  # the layout is onnxruntime's own choice
        return self.session.run(None, {i.name: a for i, a in zip(self.inputs, arrays)})


def build_files(folder: Path) -> dict:
    """Real-size layout networks: det_10g.onnx, 1k3d68.onnx and w600k_r50.onnx in a pack folder."""
    pack = folder / "buffalo_l"
    pack.mkdir()
    # SCRFD-10GF (mmdet config scrfd_10g_bnkps): ResNet-D basic blocks (3, 4, 2, 3) of widths
    # (56, 88, 88, 224), PAFPN 56 wide, heads of 3 convs 80 wide with batch norm
    # (score_gain: random weights this deep saturate the scores; smaller ones keep the best apart)
    det = om.scrfd_net(width=56, planes=(56, 88, 88, 224), blocks=(3, 4, 2, 3), neck=56, head=80, stacked=3,
                       score_gain=0.05)
    lmk = om.landmark_net(width=64, planes=(96, 192, 256), blocks=(3, 4, 3))
    rec = ro.iresnet_recognizer(width=64, planes=(64, 128, 256, 512), blocks=(3, 4, 14, 3))
    return {"det": om.save(det, pack / "det_10g.onnx"), "lmk": om.save(lmk, pack / "1k3d68.onnx"),
            "rec": ro.save(rec, pack / "w600k_r50.onnx"), "pack": str(pack)}


def photo_1024() -> np.ndarray:
    shared = Path(os.environ.get("F2D_SHARED", REPO.parent / "shared"))
    photos = sorted((shared / "faces").glob("*.jp*g"))
    rgb = (np.asarray(Image.open(photos[0]).convert("RGB")) if photos
           else np.random.default_rng(0).integers(0, 256, (900, 700, 3), dtype=np.uint8))
    return resize(rgb, 1024, 1024).copy()


def spread(values) -> dict:
    q = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2]}


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (onnxruntime then needs its CUDA provider)")
    ap.add_argument("--json", dest="json_out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    OrtGraph.threads = args.threads  # the same number of threads for both
    device = torch.device(args.device)
    result = {"threads": args.threads, "repeats": args.repeats, "device": str(device), "torch": torch.__version__,
              "onnxruntime": onnxruntime.__version__, "load_before": os.getloadavg()[0], "figures": {}}

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        files = build_files(Path(d))
        sizes = {k: os.path.getsize(files[k]) / 2 ** 20 for k in ("det", "lmk", "rec")}
        print(f"built the layout networks in {time.perf_counter() - t:.1f} s: det_10g {sizes['det']:.1f} MiB "
              f"(real 16.1), 1k3d68 {sizes['lmk']:.1f} MiB (real 136.9), w600k_r50 {sizes['rec']:.1f} MiB (real 166.3)")
        result["file MiB"] = sizes

        # --- load times: a cold read of each file (cache cleared), then the cached one
        loads = {}
        for key in ("det", "lmk", "rec"):
            cold = []
            for _ in range(3):
                faces_onnx._graph.cache_clear()
                cold.append(timed(lambda: faces_onnx.load_graph(files[key], device)))
            warm = timed(lambda: faces_onnx.load_graph(files[key], device))
            ort = min(timed(lambda: OrtGraph(files[key], device)) for _ in range(3))
            loads[key] = {"torch cold ms": min(cold), "torch cached ms": warm, "onnxruntime session ms": ort}
        faces_onnx._graph.cache_clear()
        pack_cold = timed(lambda: load_detector(files["pack"], device=device))
        pack_warm = timed(lambda: load_detector(files["pack"], device=device))
        result["load"] = {"files": loads, "detector pack (det_10g + 1k3d68) cold ms": pack_cold,
                          "detector pack cached ms": pack_warm}

        # --- one face on the photo: the threshold just under the best score
        image = photo_1024()
        probe = FaceDetector(files["det"], None, device=device, det_thresh=0.01)
        best = max(f.score for f in probe.detect(image))
        kw = dict(device=device, det_thresh=best - 1e-4)
        ours = FaceDetector(files["det"], files["lmk"], **kw)
        ort = FaceDetector(files["det"], files["lmk"], load_graph=OrtGraph, **kw)
        rec_ours = ArcFaceRecognizer(files["rec"], device=device)
        rec_ort = ArcFaceRecognizer(files["rec"], device=device, load_graph=OrtGraph)

    torch.manual_seed(0)
    encoder = F2DEncoder(MSIDEncoder().eval(), MappingNetwork().eval()).to(device)
    faces_ours, faces_ort = ours.detect(image), ort.detect(image)
    assert len(faces_ours) == len(faces_ort) == 1, (len(faces_ours), len(faces_ort))
    id_ours, id_ort = encode_images(encoder, [image], ours), encode_images(encoder, [image], ort)
    crops = [rec_ours.align(image, faces_ours[0].landmarks5)] * 8
    agree = {"box px": float(np.abs(faces_ours[0].box - faces_ort[0].box).max()),
             # from the same box: the random 1k3d68-sized network magnifies the boxes' tiny difference
             "68 points px (same box)": float(np.abs(ours._landmarks68(image, faces_ours[0].box)
                                                      - ort._landmarks68(image, faces_ours[0].box)).max()),
             "tokens": float((id_ours.s1 - id_ort.s1).abs().max()),
             "embedding cosine": float(np.sum(rec_ours.embeddings(crops[:1]) * rec_ort.embeddings(crops[:1])))}
    result["agreement"] = agree

    tasks = {
        "photo -> identity tokens": {"torch": lambda: encode_images(encoder, [image], ours),
                                     "onnxruntime": lambda: encode_images(encoder, [image], ort)},
        "detect (det_10g, 640)": {"torch": lambda: ours.net.run(ours._letterbox(image)[0], channels_last=True),
                                  "onnxruntime": lambda: ort.net.run(ort._letterbox(image)[0])},
        "68 points (1k3d68, 1 face)": {"torch": lambda: ours._landmarks68(image, faces_ours[0].box),
                                       "onnxruntime": lambda: ort._landmarks68(image, faces_ours[0].box)},
        "recognise (w600k_r50), batch 1": {"torch": lambda: rec_ours.features(crops[:1]),
                                           "onnxruntime": lambda: rec_ort.features(crops[:1])},
        "recognise (w600k_r50), batch 8": {"torch": lambda: rec_ours.features(crops),
                                           "onnxruntime": lambda: rec_ort.features(crops)},
    }
    times = {task: {"torch": [], "onnxruntime": []} for task in tasks}
    for r in range(args.repeats + 2):
        order = ["torch", "onnxruntime"] if r % 2 == 0 else ["onnxruntime", "torch"]
        for task, fns in tasks.items():
            for k in order:
                dt = timed(fns[k])
                if r >= 2:  # two warm-up rounds
                    times[task][k].append(dt)
    result["load_after"] = os.getloadavg()[0]

    print(f"{args.device}, {args.threads} threads, {args.repeats} rounds, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, load average {result['load_before']:.1f} -> {result['load_after']:.1f}")
    print(f"{'step':34s} {'torch ms':>22s} {'onnxruntime ms':>22s} {'torch/ort':>9s}")
    for task, per in times.items():
        a, b = spread(per["torch"]), spread(per["onnxruntime"])
        ratio = spread([x / y for x, y in zip(per["torch"], per["onnxruntime"])])
        result["figures"][task] = {"torch": a, "onnxruntime": b, "ratio": ratio}
        fmt = lambda s: f"{s['median']:.1f} [{s['q1']:.1f}-{s['q3']:.1f}]"  # noqa: E731
        print(f"{task:34s} {fmt(a):>22s} {fmt(b):>22s} {ratio['median']:9.2f}")
    print("load times (ms): " + "; ".join(
        f"{k}: torch cold {v['torch cold ms']:.0f}, cached {v['torch cached ms']:.3f}, onnxruntime session "
        f"{v['onnxruntime session ms']:.0f}" for k, v in loads.items()))
    print(f"detector pack (det_10g + 1k3d68): load_detector cold {pack_cold:.0f} ms, cached {pack_warm:.3f} ms")
    print("torch vs onnxruntime: " + ", ".join(f"{k} {v:.2g}" for k, v in agree.items()))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
