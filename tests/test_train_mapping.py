"""The mapping-network trainer on tiny random models and synthetic faces."""
import csv
import importlib.util
import os

import numpy as np
import pytest
import torch

import tiny_train as tt
from f2d_core.errors import F2DError

pytest.importorskip("diffusers")

from f2d_core.train.data import FaceDataset, build_index  # noqa: E402
from f2d_core.train.mapping_trainer import Components, MappingConfig, MappingTrainer  # noqa: E402


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_faces")
    marks = tt.write_faces(d / "img", 3, 96)
    return str(d / "img"), tt.write_landmarks(d / "lm.json", marks)


def trainer(faces, out, expression=None, n=None, **kw):
    root, lm = faces
    recs = build_index(root, landmarks_file=lm)[:n]
    settings = dict(data=root, out=str(out), landmarks=lm, steps=4, batch_size=2, resolution=64, workers=0,
                    lr=1e-4, save_every=2, sample_every=0, progress=False, device="cpu")
    settings.update(kw)
    cfg = MappingConfig(**settings)
    ds = FaceDataset(root, recs, 64, expression_crops=expression is not None)
    return MappingTrainer(cfg, Components(tt.tiny_parts(), tt.TinyIdentity(), expression), ds)


def test_gradients_reach_only_the_mapping(faces, tmp_path):
    tr = trainer(faces, tmp_path)
    tr.loss(next(tr.batches(0)), step=0).backward()
    for name, p in tr.mapping.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name  # null_exp too: no expression model
    frozen = [tr.parts.unet, tr.parts.vae, tr.parts.text_encoder, tr.c.msid]
    assert all(not p.requires_grad and p.grad is None for m in frozen for p in m.parameters())


def test_the_expression_reaches_the_mapping_unless_dropped(faces, tmp_path):
    tr = trainer(faces, tmp_path, expression=tt.TinyExpression(), expression_dropout=0.0)
    tr.loss(next(tr.batches(0)), step=0).backward()
    first = tr.mapping.i2t_first.layers[0][0].weight.grad
    assert first[:, 1536:].abs().sum() > 0          # the 64 expression inputs get gradient
    assert tr.mapping.null_exp.grad.abs().sum() == 0  # nothing was dropped, null_exp unused


def test_one_batch_is_overfit(faces, tmp_path):
    """A fixed batch, noise and timestep (same step seed every time): the loss must fall steadily."""
    tr = trainer(faces, tmp_path, lr=1e-3, n=1, batch_size=1)
    tt.assert_falls_steadily(tt.overfit_losses(tr))


def test_gradient_checkpointing_gives_the_same_gradients(faces, tmp_path):
    grads = []
    for ckpt in (False, True):
        tr = trainer(faces, tmp_path / str(ckpt), gradient_checkpointing=ckpt)
        tr.loss(next(tr.batches(0)), step=0).backward()
        grads.append(tr.mapping.i2t_last.fc_out.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _losses(out):
    with open(os.path.join(out, "loss.csv")) as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f)]


def test_resume_continues_exactly(faces, tmp_path):
    """3 steps straight == 1 step, stop, resume, 2 more: the same weights bit for bit, the same losses.
    With gradient accumulation (2 micro-batches of 1) and expression dropout."""
    kw = dict(micro_batch_size=1, expression_dropout=0.5, steps=3, save_every=3)  # saves at 1 (end of b) and 3
    trainer(faces, tmp_path / "a", tt.TinyExpression(), **kw).run()
    trainer(faces, tmp_path / "b", tt.TinyExpression(), **{**kw, "steps": 1}).run()
    trainer(faces, tmp_path / "b", tt.TinyExpression(), **kw).run(resume=True)
    a, b = _weights(tmp_path / "a" / "mapping.pt"), _weights(tmp_path / "b" / "mapping.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b") and len(_losses(tmp_path / "a")) == 3


def test_a_run_folder_is_not_overwritten_and_resume_keeps_the_settings(faces, tmp_path):
    trainer(faces, tmp_path, steps=1).run()
    with pytest.raises(F2DError, match="pass --resume"):
        trainer(faces, tmp_path, steps=4).run()
    with pytest.raises(F2DError, match="batch_size 2 -> 1"):
        trainer(faces, tmp_path, steps=4, batch_size=1).run(resume=True)
    with pytest.raises(F2DError, match="no run to continue"):
        trainer(faces, tmp_path / "new").run(resume=True)


def test_checkpoint_round_trips_into_load_encoder(faces, tmp_path):
    from safetensors import safe_open

    from f2d_core import load_encoder
    from f2d_core.weights.checkpoint import expected_shapes
    tr = trainer(faces, tmp_path, steps=1)
    tr.run()
    out = tmp_path
    sd = _weights(out / "mapping.pt")
    assert list(sd) == list(expected_shapes("mapping")) and len(sd) == 13  # the official keys, in order
    assert all(v.dtype == torch.float32 for v in sd.values())
    with safe_open(str(out / "mapping.safetensors"), "pt") as f:
        assert f.metadata()["f2d_kind"] == "mapping"
    msid = tt.random_msid(tmp_path / "msid.pt")
    feats = torch.randn(3, 1536, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = tr.mapping.eval()(feats)
    for name in ("mapping.pt", "mapping.safetensors"):
        s1, s2 = load_encoder(msid, out / name).face_tokens(feats)
        assert torch.equal(s1, want[0]) and torch.equal(s2, want[1]), name


def test_the_command_line_trains_end_to_end(faces, tmp_path):
    """python -m f2d_core.train mapping with every optional part: real MSID architecture, an expression
    regressor and a face parser (random weights in the official files' layouts), a diffusers folder."""
    from PIL import Image

    from f2d_core import load_encoder
    from f2d_core.models.deep3d import ReconNet
    from f2d_core.train.__main__ import main
    from f2d_core.train.parsing import BiSeNet
    root, lm = faces
    torch.manual_seed(0)
    torch.save({"net_recon": ReconNet().state_dict()}, tmp_path / "epoch_20.pth")
    torch.save(BiSeNet().state_dict(), tmp_path / "79999_iter.pth")
    msid = tt.random_msid(tmp_path / "msid.pt")
    model = tt.save_diffusers_folder(tt.tiny_parts(), tmp_path / "sd")
    out = tmp_path / "run"
    rc = main(["mapping", "--data", root, "--landmarks", lm, "--sd", str(model), "--msid", msid,
               "--expression", str(tmp_path / "epoch_20.pth"), "--parsing", str(tmp_path / "79999_iter.pth"),
               "--out", str(out), "--steps", "2", "--batch-size", "2", "--resolution", "64", "--workers", "0",
               "--device", "cpu", "--save-every", "2", "--sample-every", "2", "--sample-steps", "2",
               "--sample-prompt", "a photo of f l wearing sunglasses", "--no-progress"])
    assert rc == 0
    for f in ("mapping.pt", "mapping.safetensors", "last.pt", "loss.csv", "samples/step0000002.png"):
        assert (out / f).is_file(), f
    assert (out / "loss.png").is_file() or importlib.util.find_spec("matplotlib") is None
    assert [s for s, _ in _losses(out)] == ["1", "2"]
    grid = np.asarray(Image.open(out / "samples" / "step0000002.png"))
    assert grid.shape == (2 * 64, 2 * 64, 3)  # 2 faces x (input crop + 1 prompt)
    enc = load_encoder(msid, out / "mapping.pt")
    assert enc.face_tokens(torch.zeros(1, 1536))[0].shape == (1, 768)
