"""MSID pre-training (multi-scale ArcFace) and the per-depth AUC evaluation, on toy identities."""
import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from f2d_core.train.msid_eval import TAP_NAMES, evaluate, make_triplets
from f2d_core.train.msid_trainer import MSIDConfig, MSIDTrainer


def write_identities(root, people=3, per_person=2, seed=0):
    """Aligned 112x112 'faces': each person a colour and a stripe pattern, each photo a bit of noise."""
    rng = np.random.default_rng(seed)
    for p in range(people):
        base = np.zeros((112, 112, 3), np.uint8)
        base[:] = rng.integers(0, 256, 3)
        base[(p * 13) % 50::(p + 3), :, p % 3] = 255
        (root / f"person{p}").mkdir(parents=True, exist_ok=True)
        for i in range(per_person):
            img = np.clip(base.astype(int) + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"person{p}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    return write_identities(tmp_path_factory.mktemp("ids") / "people")


def msid_trainer(people, out, **kw):
    settings = dict(data=str(people), out=str(out), steps=5, batch_size=4, lr=1e-3, warmup_steps=0,
                    schedule="constant", workers=0, progress=False, device="cpu", save_every=5)
    settings.update(kw)
    return MSIDTrainer(MSIDConfig(**settings))


def test_msid_loss_decreases_on_separable_identities(people, tmp_path):
    tr = msid_trainer(people, tmp_path, steps=3, save_every=3)
    batch = next(tr.batches(0))
    with torch.no_grad():
        before = tr.loss(batch, 0).item()
    tr.run()
    with torch.no_grad():
        after = tr.loss(batch, 0).item()
    assert after < 0.7 * before, (before, after)


def test_msid_checkpoint_has_the_official_layout_and_loads(people, tmp_path):
    from f2d_core import load_encoder
    from f2d_core.weights.checkpoint import expected_shapes
    from f2d_core.models.mapping import MappingNetwork
    tr = msid_trainer(people, tmp_path, steps=1, save_every=1)
    tr.run()
    sd = torch.load(tmp_path / "msid.pt", map_location="cpu", weights_only=True)
    assert list(sd) == list(expected_shapes("msid")) and len(sd) == 178
    assert sd["norms.layer_11.0.num_batches_tracked"].item() == 1  # BN statistics were trained too
    torch.save(MappingNetwork().state_dict(), tmp_path / "mapping.pt")
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    tr.msid.eval()
    with torch.no_grad():
        want = tr.msid(x)
    for name in ("msid.pt", "msid.safetensors"):
        got = load_encoder(tmp_path / name, tmp_path / "mapping.pt").identity_features(x)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=name)  # (inference_mode may pick other kernels)


class _Stub(torch.nn.Module):
    """Tap 0 noise, tap 3 the person's colour: the AUC must tell them apart."""

    def forward(self, x):
        g = torch.Generator().manual_seed(int(x.sum().item() * 1000) % 2 ** 31)
        colour = x.mean((2, 3))
        taps = [torch.randn(x.shape[0], 384, generator=g), torch.randn(x.shape[0], 384, generator=g),
                torch.randn(x.shape[0], 384, generator=g), colour.repeat(1, 128) - colour.mean(1, keepdim=True)]
        return torch.cat(taps, 1)


def test_eval_reports_auc_per_depth(people):
    from f2d_core.train.data import AlignedFaceDataset, FaceRecord, identity_folders
    paths, labels, _ = identity_folders(str(people))
    ds = AlignedFaceDataset(str(people), [FaceRecord(p, None, None, labels[p]) for p in paths])
    trips = make_triplets([labels[p] for p in paths], 200, seed=0)
    assert all(labels[paths[a]] == labels[paths[p]] != labels[paths[n]] for a, p, n in trips)
    res = evaluate(_Stub(), ds, trips)
    assert list(res) == list(TAP_NAMES)
    assert res["block12"] == 1.0 and abs(res["block3"] - 0.5) < 0.2


def test_the_command_line_trains_and_evaluates(people, tmp_path, capsys):
    from f2d_core.train.__main__ import main
    out = tmp_path / "run"
    assert main(["msid", "--data", str(people), "--out", str(out), "--steps", "1", "--batch-size", "2",
                 "--workers", "0", "--device", "cpu", "--no-progress", "--warmup-steps", "1"]) == 0
    assert (out / "msid.pt").is_file() and (out / "loss.csv").is_file()
    assert (out / "loss.png").is_file() or importlib.util.find_spec("matplotlib") is None
    assert main(["msid-eval", "--data", str(people), "--msid", str(out / "msid.pt"), "--count", "50",
                 "--device", "cpu", "--out", str(tmp_path / "auc.json")]) == 0
    printed = capsys.readouterr().out
    assert "block3" in printed and "concat" in printed
    auc = json.load(open(tmp_path / "auc.json"))["auc"]
    assert set(auc) == set(TAP_NAMES) and all(0 <= v <= 1 for v in auc.values())


def test_identity_folders_need_two_people(tmp_path):
    from f2d_core.errors import F2DError
    write_identities(tmp_path / "one", people=1)
    with pytest.raises(F2DError, match="one subfolder of face images per person"):
        msid_trainer(tmp_path / "one", tmp_path / "out")


def test_a_missing_triplets_file_is_named(tmp_path):
    from f2d_core.errors import F2DError
    from f2d_core.train.msid_eval import read_triplets
    with pytest.raises(F2DError, match=r"--triplets .*nope\.csv: file not found"):
        read_triplets(str(tmp_path / "nope.csv"), [])
