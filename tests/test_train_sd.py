"""Stable Diffusion 1.x for training, from local files only; prompts with S* injected as at inference."""
import sys

import pytest
import torch
from safetensors.torch import save_file

import tiny_train as tt
from f2d_core.errors import CheckpointError, F2DError
from f2d_core.train import sd

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def parts():
    return tt.tiny_parts(seed=0)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_single_file_ldm_checkpoint_loads_into_the_same_models(parts, tmp_path):
    path = tmp_path / "tiny-sd.safetensors"
    save_file(tt.ldm_state_dict(parts), str(path))
    got = sd.load_single_file(str(path), configs=tt.tiny_configs())
    for a, b in ((parts.unet, got.unet), (parts.vae, got.vae), (parts.text_encoder, got.text_encoder)):
        assert _same_weights(a, b), type(a).__name__
    z, c = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 768)
    with torch.no_grad():
        torch.testing.assert_close(got.unet(z, 10, c).sample, parts.unet(z, 10, c).sample, rtol=0, atol=1e-5)
    assert got.prediction_type == "epsilon" and got.latent_scale == pytest.approx(0.18215)


def test_the_sd1_architecture_has_the_real_checkpoints_layout():
    """SD1.5 files hold 686 UNet and 248 VAE tensors; ours must read every one of them (on meta, no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as conv
    from transformers import CLIPTextConfig, CLIPTextModel
    with torch.device("meta"):
        full = sd.SDParts(UNet2DConditionModel.from_config(sd.SD1_UNET), AutoencoderKL.from_config(sd.SD1_VAE),
                          CLIPTextModel(CLIPTextConfig(**sd.SD1_TEXT)), {})
    ldm = tt.ldm_state_dict(full)
    assert sum(k.startswith("model.diffusion_model.") for k in ldm) == 686
    assert sum(k.startswith("first_stage_model.") for k in ldm) == 248
    for k in ("model.diffusion_model.output_blocks.2.1.conv.weight", "model.diffusion_model.input_blocks.3.0.op.weight",
              "model.diffusion_model.middle_block.1.proj_in.weight", "first_stage_model.encoder.mid.attn_1.q.weight"):
        assert k in ldm  # names every SD1.5 checkpoint has
    sd._build(UNet2DConditionModel, sd.SD1_UNET, conv.convert_ldm_unet_checkpoint(ldm, sd.SD1_UNET), "UNet", "x")
    sd._build(AutoencoderKL, sd.SD1_VAE, conv.convert_ldm_vae_checkpoint(ldm, sd.SD1_VAE), "VAE", "x")


def test_a_diffusers_folder_loads_too(parts, tmp_path):
    got = sd.load_sd(tt.save_diffusers_folder(parts, tmp_path / "model"))
    assert _same_weights(parts.unet, got.unet) and _same_weights(parts.text_encoder, got.text_encoder)
    assert got.scheduler_config["beta_schedule"] == "scaled_linear"


def test_other_model_families_get_a_plain_error(parts, tmp_path):
    ldm = tt.ldm_state_dict(parts)
    cases = {"xl.safetensors": {**ldm, "conditioner.embedders.1.model.ln_final.weight": torch.ones(2)},
             "sd2.safetensors": {"cond_stage_model.model.ln_final.weight": torch.ones(2),
                                 "model.diffusion_model.out.2.weight": torch.ones(2)},
             "lora.safetensors": {"lora_unet_down.alpha": torch.ones(1)}}
    msgs = {"xl": "SDXL", "sd2": "SD 2.x", "lora": "not a Stable Diffusion checkpoint"}
    for name, content in cases.items():
        save_file(content, str(tmp_path / name))
        with pytest.raises(CheckpointError, match=msgs[name.split(".")[0]]):
            sd.load_sd(tmp_path / name)
    save_file(ldm, str(tmp_path / "tiny.safetensors"))  # a real layout, but not SD1.x-sized
    with pytest.raises(CheckpointError, match="does not match the SD1.x architecture"):
        sd.load_sd(tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        sd.load_sd(tmp_path / "missing.safetensors")


def test_missing_diffusers_says_to_install_the_training_requirements(monkeypatch, tmp_path, capsys):
    from f2d_core.train.__main__ import main
    from f2d_core.train.deps import require
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(F2DError, match="requirements-train.txt"):
        require("diffusers", "Training")
    rc = main(["mapping", "--data", str(tmp_path), "--sd", "x.safetensors", "--msid", "m.pt", "--out", str(tmp_path)])
    assert rc == 2 and "pip install -r requirements-train.txt" in capsys.readouterr().err


def test_built_in_prompt_ids_are_the_sd1_tokenizers(tokenizer):
    from f2d_core.train.conditioning import KNOWN_TOKEN_IDS, prompt_ids
    for prompt, ids in KNOWN_TOKEN_IDS.items():
        assert prompt_ids(prompt, tokenizer) == ids, prompt
    with pytest.raises(F2DError, match="--tokenizer"):
        prompt_ids("f l as an astronaut")


def test_training_injection_is_the_inference_injection(parts):
    """Batched training conditioning = the engine's inject_face + encode_token_chunks per sample, and
    = the official form: the token+position embedding rows of "f l" overwritten by S* (spec §1.9)."""
    from f2d_core.text import inject
    from f2d_core.text.clip import encode_token_chunks, position_embedding, text_transformer
    from f2d_core.train.conditioning import PromptEncoder, token_chunk
    text = parts.text_encoder
    g = torch.Generator().manual_seed(0)
    s1, s2 = 0.5 * torch.randn(3, 768, generator=g), 0.5 * torch.randn(3, 768, generator=g)
    got = PromptEncoder(text, "a photo of f l").with_identity(s1, s2)
    ids = [320, 1125, 539, 325, 331]
    for b in range(3):
        tokens = inject.inject_face({"l": [token_chunk(ids)]}, [325, 331], s1[b], s2[b], position_embedding(text))
        torch.testing.assert_close(got[b], encode_token_chunks(text, tokens["l"])[0], rtol=0, atol=0)
        # official: hidden_states = embeddings(ids); rows pos_id, pos_id+1 = S*; run the encoder on them
        emb = text_transformer(text).embeddings
        row = torch.tensor([[49406] + ids + [49407] * 71])
        handle = emb.register_forward_hook(lambda m, i, out: torch.cat([out[:, :4], s1[b][None, None],
                                                                         s2[b][None, None], out[:, 6:]], 1))
        try:
            official = text_transformer(text)(input_ids=row).last_hidden_state[0]
        finally:
            handle.remove()
        torch.testing.assert_close(got[b], official, atol=2e-5, rtol=0)


def test_gradients_flow_through_the_frozen_text_encoder_into_s_star(parts):
    from f2d_core.train.conditioning import PromptEncoder
    s1 = torch.randn(2, 768, requires_grad=True)
    s2 = torch.randn(2, 768, requires_grad=True)
    cond = PromptEncoder(parts.text_encoder.requires_grad_(False), "a photo of f l").with_identity(s1, s2)
    cond.pow(2).mean().backward()
    assert s1.grad is not None and s1.grad.abs().sum() > 0 and s2.grad.abs().sum() > 0
    assert all(p.grad is None for p in parts.text_encoder.parameters())


def test_frozen_parts_are_stored_in_the_precision_they_need():
    """UNet and VAE in the 16-bit autocast dtype (cast before they move to the device), the text encoder
    in fp32 (S* is written into its embeddings), nothing with gradients."""
    frozen = tt.tiny_parts(seed=0).freeze("cpu", torch.bfloat16)
    assert {p.dtype for m in (frozen.unet, frozen.vae) for p in m.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in frozen.text_encoder.parameters()} == {torch.float32}
    assert not any(p.requires_grad for m in (frozen.unet, frozen.vae, frozen.text_encoder) for p in m.parameters())
