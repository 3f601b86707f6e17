"""The mapping trainer for SDXL (`--base sdxl`) on tiny SDXL-shaped models and synthetic faces.

The models are built here with random weights (tiny_train.tiny_sdxl_parts: SDXL's UNet block
order, 2048-wide cross-attention, the pooled/time-id embedding; CLIP-L and bigG-wide text
encoders), and written in `sd_xl_base_1.0.safetensors`' layout to test the single-file loader.
Shown: the loader reads that layout into the same models, and names what else a file is; the
conditioning is the official overwrite of token + position embedding in both encoders at the
penultimate layer, plus bigG's pooled output; the time ids are those of each sample's real
crop; the loss falls on a fixed batch; a resumed run is bit for bit the uninterrupted one; 2
ranks train the weights of 1 process and only rank 0 writes; the exported file is the
F2D-SDXL format (read back with safetensors directly).
"""
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import tiny_train as tt
from f2d_core.errors import CheckpointError, F2DError

pytest.importorskip("diffusers")

from f2d_core.models.families import SDXL  # noqa: E402
from f2d_core.train import sd  # noqa: E402
from f2d_core.train.crops import ffhq_quad  # noqa: E402
from f2d_core.train.data import FaceDataset, FaceRecord, build_index  # noqa: E402
from f2d_core.train.mapping_trainer import Components, MappingConfig, MappingTrainer  # noqa: E402

# the same tolerance as the SD1.x 1-vs-2-ranks test (test_train_distributed.py, measured there). Measured
# here, 2 steps at lr 1e-4: 1 process vs 2 ranks differ by at most 2.4e-5 (limit LR / 2 = 5e-5) and by more
# than LR / 100 in 2.3e-5 of the elements (limit 1e-3); step 1 vs step 2: at most 1.0e-4, 99.5% of them.
from test_train_distributed import LR, MAX_DIFFERENCE, MAX_FRACTION_ABOVE, RUN_TIMEOUT_S  # noqa: E402


@pytest.fixture(scope="module")
def parts():
    return tt.tiny_sdxl_parts(seed=0)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    d = tmp_path_factory.mktemp("sdxl_faces")
    marks = tt.write_faces(d / "img", 3, 96)
    return str(d / "img"), tt.write_landmarks(d / "lm.json", marks)


def trainer(faces, out, expression=None, n=None, **kw):
    root, lm = faces
    recs = build_index(root, landmarks_file=lm)[:n]
    settings = dict(base="sdxl", data=root, out=str(out), landmarks=lm, steps=4, batch_size=2, resolution=64,
                    workers=0, lr=1e-4, save_every=2, sample_every=0, progress=False, device="cpu")
    settings.update(kw)
    ds = FaceDataset(root, recs, 64, expression_crops=expression is not None)
    return MappingTrainer(MappingConfig(**settings), Components(tt.tiny_sdxl_parts(), tt.TinyIdentity(), expression),
                          ds)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- loading ------------------------------------------------------------------------------------

def test_a_single_file_sdxl_checkpoint_loads_into_the_same_models(parts, tmp_path):
    """UNet, VAE, CLIP-L (HF names) and bigG (OpenCLIP names, fused q/k/v) of an sd_xl_base_1.0-style file."""
    path = tmp_path / "tiny-sdxl.safetensors"
    save_file(tt.sdxl_state_dict(parts), str(path))
    got = sd.load_single_file(str(path), tt.tiny_sdxl_configs(), "sdxl")
    assert got.family is SDXL and list(got.text_encoders) == ["l", "g"]
    for a, b in ((parts.unet, got.unet), (parts.vae, got.vae), (parts.text_encoder, got.text_encoder),
                 (parts.text_encoder_2, got.text_encoder_2)):
        assert _same_weights(a, b), type(a).__name__
    assert got.latent_scale == pytest.approx(0.13025) and got.prediction_type == "epsilon"


def test_the_sdxl_architecture_reads_the_real_checkpoints_layout():
    """Full-size SDXL on the meta device (no memory): names and shapes every sd_xl_base_1.0 file has
    come out of our layout, and diffusers' converters read them back into our architecture."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as conv
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    with torch.device("meta"):
        full = sd.SDParts(UNet2DConditionModel.from_config(sd.SDXL_UNET), AutoencoderKL.from_config(sd.SDXL_VAE),
                          CLIPTextModel(CLIPTextConfig(**sd.SDXL["text_encoder"])), {}, family=SDXL,
                          text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**sd.SDXL["text_encoder_2"])))
    ckpt = tt.sdxl_state_dict(full)
    shapes = {"model.diffusion_model.label_emb.0.0.weight": (1280, 2816),                       # pooled + time ids
              "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
              "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
              "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
              "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
              "conditioner.embedders.1.model.text_projection": (1280, 1280)}
    for k, shape in shapes.items():
        assert tuple(ckpt[k].shape) == shape, k
    assert sd._describe_foreign(ckpt, SDXL) is None
    sd._build(UNet2DConditionModel, sd.SDXL_UNET, conv.convert_ldm_unet_checkpoint(ckpt, sd.SDXL_UNET), "UNet", "x",
              SDXL)
    width = type("M", (), {"config": type("C", (), {"hidden_size": 1280})})
    g = conv.convert_open_clip_checkpoint(width, ckpt, prefix="conditioner.embedders.1.model.")
    from f2d_core.text.clip import clip_text_model
    clip_text_model(g, sd.SDXL["text_encoder_2"], "x", projection=True)


def test_other_files_get_a_plain_error(parts, tmp_path):
    sd1 = tt.tiny_parts()
    save_file(tt.ldm_state_dict(sd1), str(tmp_path / "v1.safetensors"))
    with pytest.raises(CheckpointError, match=r"an SD1\.x checkpoint \(train it without --base sdxl\)"):
        sd.load_sd(tmp_path / "v1.safetensors", family="sdxl")
    refiner = {k: v for k, v in tt.sdxl_state_dict(parts).items() if not k.startswith("conditioner.embedders.0.")}
    save_file(refiner, str(tmp_path / "refiner.safetensors"))
    with pytest.raises(CheckpointError, match="not an SDXL base checkpoint"):
        sd.load_sd(tmp_path / "refiner.safetensors", family="sdxl")
    with pytest.raises(CheckpointError, match=r"no text_encoder_2/ inside"):
        sd.load_sd(tt.save_diffusers_folder(sd1, tmp_path / "sd1"), family="sdxl")
    with pytest.raises(CheckpointError, match=r"2048-wide.*an SDXL model: train it with --base sdxl"):
        sd.load_sd(tt.save_diffusers_folder(parts, tmp_path / "xl"), family="sd1")
    assert _same_weights(sd.load_sd(tmp_path / "xl", family="sdxl").text_encoder_2, parts.text_encoder_2)


# ---- conditioning ---------------------------------------------------------------------------------

def test_the_identity_goes_into_both_encoders_as_the_official_overwrite(parts):
    """Training conditioning = for each encoder, token + position embedding rows of "f l" overwritten by
    that encoder's part of S* (768 for CLIP-L, 1280 for bigG), the penultimate hidden states side by
    side (2048), and bigG's projected pooled output, written here on transformers alone."""
    from f2d_core.train.conditioning import PromptEncoder
    g = torch.Generator().manual_seed(0)
    s1, s2 = 0.5 * torch.randn(2, 2048, generator=g), 0.5 * torch.randn(2, 2048, generator=g)
    cond, pooled = PromptEncoder(parts.text_encoders, "a photo of f l", family=SDXL).identity(s1, s2)
    assert cond.shape == (2, 77, 2048) and pooled.shape == (2, 1280)
    ids = [320, 1125, 539, 325, 331]
    for b in range(2):
        ref = []
        for model, lo, hi, pad in ((parts.text_encoder, 0, 768, 49407), (parts.text_encoder_2, 768, 2048, 0)):
            emb = getattr(model, "text_model", model).embeddings
            row = torch.tensor([[49406] + ids + [49407] + [pad] * 70])
            handle = emb.register_forward_hook(lambda m, i, out: torch.cat(
                [out[:, :4], s1[b, lo:hi][None, None], s2[b, lo:hi][None, None], out[:, 6:]], 1))
            try:
                out = model(input_ids=row, output_hidden_states=True)
            finally:
                handle.remove()
            ref.append(out.hidden_states[-2][0])
        torch.testing.assert_close(cond[b], torch.cat(ref, -1), atol=2e-5, rtol=0)
        torch.testing.assert_close(pooled[b], out.text_embeds[0], atol=2e-5, rtol=0)


def test_each_encoder_gets_its_tokens_padded_as_comfyui_pads_them(tokenizer):
    """One CLIP BPE for both SDXL encoders; CLIP-L pads with EOS (as SD1.x), bigG with 0; long prompts
    become 77-token chunks in both."""
    from f2d_core.text.clip import tokenize
    ids = [t for t, _ in tokenize(tokenizer, "a photo of f l", SDXL)["l"][0]]
    assert ids == [49406, 320, 1125, 539, 325, 331] + [49407] * 71
    assert [t for t, _ in tokenize(tokenizer, "a photo of f l", SDXL)["g"][0]] == ids[:7] + [0] * 70
    assert tokenize(tokenizer, "a photo of f l") == {"l": tokenize(tokenizer, "a photo of f l", SDXL)["l"]}
    long = tokenize(tokenizer, " ".join(["photo"] * 80), SDXL)
    assert [len(long[k]) for k in "lg"] == [2, 2] and long["g"][1][6] == (49407, 1.0) and long["g"][1][7] == (0, 1.0)


def test_a_plain_prompt_is_encoded_as_sdxl_encodes_it(parts, tokenizer):
    """Penultimate hidden states of both encoders side by side per 77-token chunk, and bigG's projected pooled
    output of the first chunk (ComfyUI's choice), against transformers alone."""
    from f2d_core.text.clip import encode_family, tokenize
    prompt = "a photo of a person " + " ".join(["in a garden"] * 30)
    tokens = tokenize(tokenizer, prompt, SDXL)
    cond, pooled = encode_family(parts.text_encoders, tokens, SDXL)
    assert cond.shape == (1, 154, 2048) and pooled.shape == (1, 1280)
    outs = {k: m(input_ids=torch.tensor([[t for t, _ in c] for c in tokens[k]]), output_hidden_states=True)
            for k, m in parts.text_encoders.items()}
    want = torch.cat([outs["l"].hidden_states[-2], outs["g"].hidden_states[-2]], -1).reshape(1, 154, 2048)
    torch.testing.assert_close(cond, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, outs["g"].text_embeds[:1], rtol=0, atol=1e-6)


def test_time_ids_come_from_each_samples_real_crop(tmp_path):
    """(original h, w, crop top, left, target h, w): the photo's size, where the crop's corner lies in the
    photo resized to the crop's scale, the crop size; a flipped sample measures left from the other side."""
    from PIL import Image
    img, lm = tt.face_image(0, 96)
    wide = np.zeros((96, 128, 3), np.uint8)
    wide[:, 40:] = img[:, :88]  # the face moved 40 px right, in a 128-wide photo
    Image.fromarray(wide).save(tmp_path / "a.png")
    rec = FaceRecord("a.png", lm + [40, 0])
    # --crop none: the centre square of the 96x128 photo, resized to 64: scale 2/3, 85.3 wide, 10.7 cut on the left
    none = FaceDataset(str(tmp_path), [rec], 64, crop="none")
    assert none[(0, False)]["time_ids"].tolist() == [96, 128, 0, 11, 64, 64]
    assert none[(0, True)]["time_ids"].tolist() == [96, 128, 0, 11, 64, 64]
    # FFHQ crop: the square from the landmarks (upright face), its top-left corner times the crop's scale
    q = ffhq_quad(rec.landmarks5)
    scale = 64 / np.linalg.norm(q[3] - q[0])
    top, left = (q[0][1] + 0.5) * scale, (q[0][0] + 0.5) * scale
    ffhq = FaceDataset(str(tmp_path), [rec], 64)
    assert ffhq[(0, False)]["time_ids"].tolist() == [96, 128, max(0, round(top)), max(0, round(left)), 64, 64]
    assert round(left) > 10  # (the face is off centre: the test can tell)
    flipped_left = 128 * scale - 64 - left
    assert ffhq[(0, True)]["time_ids"].tolist()[3] == max(0, round(flipped_left))


def test_the_unet_gets_the_batchs_time_ids_and_the_pooled_output(faces, tmp_path):
    tr = trainer(faces, tmp_path, loss="reconstruction")
    batch = next(tr.batches(0))
    seen = []
    handle = tr.parts.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["added_cond_kwargs"]),
                                                     with_kwargs=True)
    try:
        tr.loss(batch, step=0)
    finally:
        handle.remove()
    (added,) = seen
    torch.testing.assert_close(added["time_ids"], batch["time_ids"])
    assert added["text_embeds"].shape == (2, 1280) and added["text_embeds"].requires_grad  # S* reaches the pooled


# ---- training -------------------------------------------------------------------------------------

def test_gradients_reach_both_parts_of_s_star_and_nothing_frozen(faces, tmp_path):
    """...and gradient checkpointing of SDXL's UNet gives the same gradients."""
    grads = []
    for ckpt in (False, True):
        tr = trainer(faces, tmp_path / str(ckpt), gradient_checkpointing=ckpt)
        tr.loss(next(tr.batches(0)), step=0).backward()
        grads.append(tr.mapping.i2t_first.fc_out.weight.grad.clone())
    out = grads[0]
    assert out.shape == (2048, 1536) and out[:768].abs().sum() > 0 and out[768:].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)
    frozen = [tr.parts.unet, tr.parts.vae, tr.parts.text_encoder, tr.parts.text_encoder_2, tr.c.msid]
    assert all(not p.requires_grad and p.grad is None for m in frozen for p in m.parameters())


def test_both_text_encoders_stay_fp32_when_unet_and_vae_are_bf16():
    frozen = tt.tiny_sdxl_parts().freeze("cpu", torch.bfloat16)
    assert {p.dtype for m in (frozen.unet, frozen.vae) for p in m.parameters()} == {torch.bfloat16}
    assert {p.dtype for m in frozen.text_encoders.values() for p in m.parameters()} == {torch.float32}


def test_one_batch_is_overfit(faces, tmp_path):
    """A fixed batch, noise and timestep: the loss must fall steadily. (lr 3e-4: measured 0.54 -> 0.30 in 9
    steps; SD1's 1e-3 overshoots on this 2048-wide S*: 0.54 -> 0.41 -> 0.51.)"""
    tr = trainer(faces, tmp_path, lr=3e-4, n=1, batch_size=1)
    tt.assert_falls_steadily(tt.overfit_losses(tr))


def test_resume_continues_exactly(faces, tmp_path):
    """2 steps straight == 1 step, stop, resume, 1 more: the same weights bit for bit. With gradient
    accumulation (2 micro-batches of 1) and expression dropout. The family is a setting of the run."""
    kw = dict(micro_batch_size=1, expression_dropout=0.5, steps=2, save_every=2)
    trainer(faces, tmp_path / "a", tt.TinyExpression(), **kw).run()
    trainer(faces, tmp_path / "b", tt.TinyExpression(), **{**kw, "steps": 1}).run()
    with pytest.raises(F2DError, match=r"base 'sdxl' -> 'sd1'"):
        MappingTrainer(MappingConfig(**{**dict(data=faces[0], out=str(tmp_path / "b"), landmarks=faces[1],
                                                resolution=64, workers=0, progress=False, device="cpu",
                                                batch_size=2, sample_every=0), **kw}),
                       Components(tt.tiny_parts(), tt.TinyIdentity(), tt.TinyExpression()),
                       FaceDataset(faces[0], build_index(faces[0], landmarks_file=faces[1]), 64, True)
                       ).run(resume=True)
    trainer(faces, tmp_path / "b", tt.TinyExpression(), **kw).run(resume=True)
    a, b = load_file(tmp_path / "a" / "mapping_sdxl.safetensors"), load_file(tmp_path / "b" / "mapping_sdxl.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_exported_file_is_the_f2d_sdxl_format(faces, tmp_path):
    from f2d_core.weights.checkpoint import expected_shapes
    msid = tt.random_msid(tmp_path / "msid.pt")
    tr = trainer(faces, tmp_path / "run", steps=1, msid=msid, sd="/models/sd_xl_base_1.0.safetensors")
    tr.run()
    path = tmp_path / "run" / "mapping_sdxl.safetensors"
    with safe_open(str(path), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
        tensors = {k: f.get_tensor(k) for k in keys}
    assert not (tmp_path / "run" / "mapping.pt").exists()
    assert set(keys) == set(expected_shapes("mapping")) and len(keys) == 13  # the official SD1 mapping.pt keys
    assert tensors["i2t_first.fc_out.weight"].shape == tensors["i2t_last.fc_out.weight"].shape == (2048, 1536)
    assert tensors["null_exp"].shape == (64,) and all(v.dtype == torch.float32 for v in tensors.values())
    assert {k: meta[k] for k in ("f2d_kind", "f2d_family", "f2d_widths", "f2d_trigger")} == \
        {"f2d_kind": "mapping", "f2d_family": "sdxl", "f2d_widths": "768,1280", "f2d_trigger": "f l"}
    assert meta["f2d_msid_sha256"] == hashlib.sha256(open(msid, "rb").read()).hexdigest()
    training = json.loads(meta["f2d_training"])
    assert (training["base_checkpoint"], training["resolution"], training["lr"], training["batch_size"],
            training["expression_dropout"], training["loss"], training["step"]) == \
        ("sd_xl_base_1.0.safetensors", 64, 1e-4, 2, 0.2, "cgdr", 1)
    with torch.no_grad():  # the file holds the trained weights
        torch.testing.assert_close(tensors["i2t_last.fc_out.weight"], tr.mapping.i2t_last.fc_out.weight,
                                   rtol=0, atol=0)
    # --init-mapping takes it back; an SD1.x mapping is refused with the reason
    again = trainer(faces, tmp_path / "again", steps=1, init_mapping=str(path))
    assert torch.equal(again.mapping.i2t_last.fc_out.weight, tensors["i2t_last.fc_out.weight"])
    save_file({k: v[:768] if "fc_out" in k else v for k, v in tensors.items()}, str(tmp_path / "sd1.safetensors"))
    with pytest.raises(CheckpointError, match=r"this mapping is for SD1\.x checkpoints, not SDXL\. Give a mapping trained with --base sdxl"):
        trainer(faces, tmp_path / "again2", steps=1, init_mapping=str(tmp_path / "sd1.safetensors"))


# ---- the command line, 1 process and 2 ranks --------------------------------------------------------

def _argv(files, out, steps, *extra):
    return ["mapping", "--base", "sdxl", "--data", files["data"], "--landmarks", files["landmarks"],
            "--sd", files["sd"], "--msid", files["msid"], "--out", str(out), "--steps", str(steps), "--batch-size",
            "2", "--resolution", "64", "--workers", "0", "--device", "cpu", "--lr", str(LR), "--save-every", "1",
            "--sample-every", "0", "--no-progress", *extra]


def _differences(a, b):
    a, b = load_file(a), load_file(b)
    d = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    return float(d.max()), float((d > LR / 100).float().mean())


def _same(a, b):
    most, fraction = _differences(a, b)
    return most < MAX_DIFFERENCE and fraction < MAX_FRACTION_ABOVE


def test_two_ranks_train_the_weights_of_one_process_and_only_rank_0_writes(faces, tmp_path):
    """`python -m f2d_core.train mapping --base sdxl` on a diffusers SDXL folder: 1 process with batch 2, and
    2 ranks (gloo) of 1 sample each with the same seed: the same weights after 2 steps (the SD1.x
    tolerance), which tells step 1 from step 2; rank 1 writes nothing. (The 1-process run samples
    images after its last step, past the weights compared.)"""
    from f2d_core.train.__main__ import main
    files = {"data": faces[0], "landmarks": faces[1], "msid": tt.random_msid(tmp_path / "msid.pt"),
             "sd": str(tt.save_diffusers_folder(tt.tiny_sdxl_parts(), tmp_path / "sdxl"))}
    one, two = tmp_path / "one", tmp_path / "two"
    ranks = tt.RankProcesses(2, _argv(files, two, 2), tmp_path / "ranks", watch=two)
    # (meanwhile the ranks start) the 1-process run also samples: SDXL's pooled output and time ids at inference
    assert main(_argv(files, one, 2, "--snapshot-every", "1", "--sample-every", "2", "--sample-steps", "1")) == 0
    from PIL import Image
    assert np.asarray(Image.open(one / "samples" / "step0000002.png")).shape == (2 * 64, 3 * 64, 3)
    codes = ranks.wait(RUN_TIMEOUT_S)
    assert codes == [0, 0], (codes, ranks.text(0), ranks.text(1))
    assert _same(one / "mapping_sdxl.safetensors", two / "mapping_sdxl.safetensors"), \
        _differences(one / "mapping_sdxl.safetensors", two / "mapping_sdxl.safetensors")
    assert not _same(one / "checkpoints" / "mapping_step0000001.safetensors", two / "mapping_sdxl.safetensors")
    assert ranks.writes(1) == [] and ranks.text(1, "out") == ""
    assert {"os.rename mapping_sdxl.safetensors", "os.rename last.pt"} <= set(ranks.writes(0))
    assert "mapping_sdxl.safetensors (an F2D-SDXL mapping" in ranks.text(0, "out")
    assert json.loads(safe_open(str(two / "mapping_sdxl.safetensors"), "pt").metadata()["f2d_training"])["world_size"] == 2
    assert not os.path.exists(two / "mapping.pt")
