"""Photo -> identity tokens at 1024x1024: the pack's numpy preprocessing against the OpenCV calls it
replaced (issue 15), side by side in one process.

    pip install -r requirements-test.txt      # OpenCV is a test dependency (the oracle)
    python benchmarks/opencv_side_by_side.py [--threads 2] [--repeats 30] [--json OUT]

Both variants run the same detector session, MSID and mapping network; only the three OpenCV
calls of the earlier code differ: the detector's letterbox resize (cv2.resize, INTER_AREA when
shrinking), the 68-point model's crop and the ArcFace alignment (cv2.warpAffine, bilinear, black
border). "opencv" re-creates exactly those calls (as in git history before the numpy rewrite).
The detector is the tests' synthetic SCRFD-format model with a 68-point model (real insightface
files cannot be downloaded here; their networks add the same time to both variants), the photo a
real face photo from ../shared/faces resized to 1024x1024 with one synthetic face painted in for
that detector (the photo's green channel darkened so it finds only that one), the networks random (the speed of real ones). Each round runs both variants in
alternating order; figures are medians with quartiles.
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

import cv2  # noqa: E402  (the oracle; the pack itself never imports it)
import synthetic_onnx as om  # noqa: E402  (the tests' detector builder)
from PIL import Image  # noqa: E402

from f2d_core.faces import align, detect  # noqa: E402
from f2d_core.faces.preprocess import resize  # noqa: E402
from f2d_core.identity.pipeline import encode_images  # noqa: E402
from f2d_core.models.mapping import MappingNetwork  # noqa: E402
from f2d_core.models.msid import MSIDEncoder  # noqa: E402
from f2d_core.identity.encoder import F2DEncoder  # noqa: E402


class OpenCVDetector(detect.FaceDetector):
    """The detector as it was with OpenCV: cv2.resize letterbox and cv2.warpAffine crop."""

    def _letterbox(self, rgb):
        in_h, in_w = self.input_hw
        new_h, new_w, det_scale = self.letterbox_size(rgb.shape)
        interp = cv2.INTER_AREA if new_h < rgb.shape[0] else cv2.INTER_LINEAR
        canvas = np.zeros((in_h, in_w, 3), np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(rgb, (new_w, new_h), interpolation=interp)
        blob = canvas.transpose(2, 0, 1)[None].astype(np.float32)
        blob -= 127.5
        blob *= 1.0 / 128.0
        return blob, det_scale


def cv2_warp(image, matrix, size=align.ALIGNED_SIZE):
    m = np.asarray(matrix, np.float64)[:2]
    return cv2.warpAffine(np.asarray(image), m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def photo_1024() -> np.ndarray:
    shared = Path(os.environ.get("F2D_SHARED", REPO.parent / "shared"))
    photos = sorted((shared / "faces").glob("*.jp*g")) + sorted((shared / "faces").glob("*.png"))
    if photos:
        rgb = np.asarray(Image.open(photos[0]).convert("RGB"))
    else:  # no shared folder: a textured stand-in, the timing is the same
        rgb = np.random.default_rng(0).integers(0, 256, (900, 700, 3), dtype=np.uint8)
    rgb = resize(rgb, 1024, 1024).copy()
    rgb[..., 1] //= 4  # the synthetic detector reads faces from green levels: keep the photo's away from them
    return om.paint_face(rgb, 32, 9, 8, blue=60, scale=640 / 1024)  # one face for that detector


def spread(values) -> dict:
    q = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", dest="json_out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as d:
        det_path = om.save(om.scrfd_model(), Path(d) / "det_10g.onnx")
        lmk_path = om.save(om.landmark68_model(), Path(d) / "1k3d68.onnx")
        ours_det = detect.FaceDetector(det_path, lmk_path, device="cpu")
        cv_det = OpenCVDetector(det_path, lmk_path, device="cpu")
    torch.manual_seed(0)
    encoder = F2DEncoder(MSIDEncoder().eval(), MappingNetwork().eval())
    image = photo_1024()
    if len(ours_det.detect(image)) != 1:
        sys.exit("error: the synthetic detector did not find the painted face")

    def with_warp(fn):  # the variant's warp for the 68-point crop and the alignment
        def run():
            saved = (detect.warp, align.warp)
            if fn is not None:
                detect.warp = align.warp = fn
            try:
                return encode_images(encoder, [image], det)
            finally:
                detect.warp, align.warp = saved
        return run

    variants = {}
    for name, det, fn in (("numpy (ours)", ours_det, None), ("opencv", cv_det, cv2_warp)):
        variants[name] = (det, with_warp(fn))
    steps = {
        "letterbox + blob": {"numpy (ours)": lambda: ours_det._letterbox(image),
                             "opencv": lambda: cv_det._letterbox(image)},
        "alignment warp": {"numpy (ours)": lambda: align.warp(image, M),
                           "opencv": lambda: cv2_warp(image, M)},
    }
    face = ours_det.detect(image)[0]
    M = align.similarity_matrix(face.alignment_points())

    ours_id = variants["numpy (ours)"][1]()
    cv_id = variants["opencv"][1]()
    token_diff = float((ours_id.s1 - cv_id.s1).abs().max())
    crop_diff = int(np.abs(ours_id.aligned.numpy().astype(int) - cv_id.aligned.numpy().astype(int)).max())

    times: dict = {"photo -> identity tokens": {k: [] for k in variants}}
    for s in steps:
        times[s] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.repeats + 3):
        order = names if r % 2 == 0 else names[::-1]
        for k in order:
            t = time.perf_counter()
            variants[k][1]()
            dt = time.perf_counter() - t
            if r >= 3:
                times["photo -> identity tokens"][k].append(dt * 1e3)
            for s, fns in steps.items():
                t = time.perf_counter()
                fns[k]()
                if r >= 3:
                    times[s][k].append((time.perf_counter() - t) * 1e3)

    result = {"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
              "opencv": cv2.__version__, "numpy": np.__version__, "load": os.getloadavg()[0],
              "max |token difference|": token_diff, "max crop difference (levels)": crop_diff, "figures": {}}
    print(f"photo 1024x1024, {args.threads} threads, {args.repeats} rounds, torch {torch.__version__}, "
          f"OpenCV {cv2.__version__}, load {result['load']:.2f}")
    print(f"{'step':28s} {'numpy (ours) ms':>16s} {'opencv ms':>12s} {'ratio':>7s}")
    for s, per in times.items():
        a, b = spread(per["numpy (ours)"]), spread(per["opencv"])
        ratio = statistics.median(x / y for x, y in zip(per["numpy (ours)"], per["opencv"]))
        result["figures"][s] = {"numpy": a, "opencv": b, "ratio": ratio}
        print(f"{s:28s} {a['median']:16.2f} {b['median']:12.2f} {ratio:7.2f}")
    print(f"aligned crops differ by at most {crop_diff} level(s); identity tokens by {token_diff:.1e}")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
