"""Face2Diffusion on an SDXL-family checkpoint inside a real ComfyUI (see tiny_sdxl.py).

The exactness test holds the pack's Inject Face Token, run in ComfyUI on ComfyUI's own SDXL text
encoders (loaded from the checkpoint in fp32: te_model_options dtype, what --fp32-text-enc does),
to a reference written here on transformers alone: CLIPTextModel (clip_l) and
CLIPTextModelWithProjection (clip_g) with the same weights, the identity put in the official way
(the rows of token + position embedding at the trigger's slots overwritten by each encoder's part
of S1*, S2*), penultimate hidden states concatenated to 2048 and clip_g's projected pooled output.
The SDXL mapping is random (tests/sdxl_mapping.py) until a trained F2D-SDXL mapping exists."""
from __future__ import annotations

import re

import pytest
import torch

from sdxl_mapping import write_sdxl_mapping

from . import tiny_sdxl
from .conftest import REPO, _cache_dir

SDXL_CHECKPOINT = "tiny_sdxl.safetensors"
SDXL_MAPPING = "mapping_sdxl.safetensors"
F, L = 325, 331  # "f", "l": the trigger's ids in the CLIP vocabulary both SDXL encoders share
BOS, EOS = 49406, 49407
PAD = {"l": EOS, "g": 0}  # ComfyUI's SDXL tokenizers pad clip_l with EOS, clip_g with 0
DEMO = "a photo of f l eating bread in front of the Eiffel Tower"
# 74 one-token words, then the trigger: "f" ends the first 77-token chunk, "l" starts the second
STRADDLE = "photo " * 74 + "f l as a chef"
# transformers configs of SDXL's two text encoders, written out here (not from the engine)
CLIP_L_CONFIG = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                     layer_norm_eps=1e-5, projection_dim=768, bos_token_id=BOS, eos_token_id=EOS)
CLIP_G_CONFIG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                     num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
                     layer_norm_eps=1e-5, projection_dim=1280, bos_token_id=BOS, eos_token_id=EOS)


@pytest.fixture(scope="module")
def tiny_sdxl_checkpoint(comfy_inprocess):
    return tiny_sdxl.cached(_cache_dir())


@pytest.fixture(scope="module")
def sdxl_models_dir(f2d_models_dir, tiny_sdxl_checkpoint):
    """f2d_models_dir plus checkpoints/tiny_sdxl.safetensors and face2diffusion/mapping_sdxl.safetensors."""
    from .conftest import _link
    _link(tiny_sdxl_checkpoint, f2d_models_dir / "checkpoints" / SDXL_CHECKPOINT)
    write_sdxl_mapping(f2d_models_dir / "face2diffusion" / SDXL_MAPPING, seed=7)
    return f2d_models_dir


@pytest.fixture(scope="module")
def nodes(comfy_inprocess, sdxl_models_dir):
    return comfy_inprocess.pack_nodes()


@pytest.fixture(scope="module")
def sdxl_clip(nodes, tiny_sdxl_checkpoint):
    """ComfyUI's CLIP of the tiny SDXL checkpoint, text encoders in fp32."""
    import comfy.sd
    _, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_sdxl_checkpoint), output_vae=False,
                                                          output_model=False,
                                                          te_model_options={"dtype": torch.float32})
    return clip


@pytest.fixture(scope="module")
def sdxl_encoder(nodes):
    return nodes["LoadF2DEncoder"].execute("msid.pt", SDXL_MAPPING, "buffalo_l").result[0]


@pytest.fixture(scope="module")
def sdxl_face(f2d_pack, sdxl_encoder, parity):
    """The parity kit's face encoded with the SDXL mapping: 2048-value S1*, S2*."""
    from face2diffusion_pack.f2d_core.identity.face_file import FaceIdentity
    with sdxl_encoder.loaded() as f2d:
        feats = f2d.identity_features(parity[0]["input.pixel_values"]).cpu()
        s1, s2 = f2d.face_tokens(feats)
    return FaceIdentity(features=feats[0], s1=s1[0].cpu(), s2=s2[0].cpu(), family=f2d.family)


# --- the reference: transformers only ----------------------------------------------------------------

def transformers_text_model(cls, config: dict, weights: dict):
    """A transformers CLIP text model holding `weights` (transformers' key names) in fp32."""
    from transformers import CLIPTextConfig
    with torch.device("meta"):
        model = cls(CLIPTextConfig(**config))
    keys = set(model.state_dict())
    sd = {}
    for k, v in weights.items():
        for cand in (k, k.removeprefix("text_model."), "text_model." + k):
            if cand in keys:
                sd[cand] = v.float()
    assert keys == set(sd), f"missing {sorted(keys - set(sd))[:3]}"
    model.load_state_dict(sd, strict=True, assign=True)
    emb = getattr(model, "text_model", model).embeddings
    emb.register_buffer("position_ids", torch.arange(77)[None], persistent=False)  # not in a state dict
    return model.eval()


@pytest.fixture(scope="module")
def reference_models(tiny_sdxl_checkpoint):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    weights = tiny_sdxl.text_encoder_weights()
    return {"l": transformers_text_model(CLIPTextModel, CLIP_L_CONFIG, weights.pop("l")),
            "g": transformers_text_model(CLIPTextModelWithProjection, CLIP_G_CONFIG, weights.pop("g"))}


def reference_chunks(tokenizer, prompt: str, pad: int) -> list[list[int]]:
    """BOS + 75 prompt tokens + EOS, padded to 77 (every word here is one token, so ComfyUI's
    word-keeping chunking is this plain split)."""
    ids = [t for t in tokenizer(prompt)["input_ids"] if t not in (BOS, EOS)]
    out = []
    for i in range(0, len(ids), 75):
        body = [BOS] + ids[i:i + 75] + [EOS]
        out.append(body + [pad] * (77 - len(body)))
    return out


def official_overwrite(model, chunks, rows: dict, layer: int = -2):
    """Hidden state `layer` (no final norm) of every chunk, (1, 77k, W), and the projected pooled output
    of the first chunk (CLIPTextModelWithProjection only), with embedding rows (chunk, slot) replaced."""
    tm = getattr(model, "text_model", model)

    def overwrite(_m, _i, out):
        out = out.clone()
        for (c, s), v in rows.items():
            out[c, s] = v
        return out

    h = tm.embeddings.register_forward_hook(overwrite)
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor(chunks), output_hidden_states=True)
    finally:
        h.remove()
    hidden = out.hidden_states[layer]
    pooled = out.text_embeds[:1] if hasattr(out, "text_embeds") else None
    return hidden.reshape(1, -1, hidden.shape[-1]), pooled


def reference(models, tokenizer, prompt: str, s1: torch.Tensor, s2: torch.Tensor, layer: int = -2):
    """(prompt_embeds (1, 77k, 2048), pooled (1, 1280)) of SDXL's text side with the identity in."""
    parts = {"l": (s1[:768], s2[:768]), "g": (s1[768:], s2[768:])}
    out = {}
    for key in ("l", "g"):
        chunks = reference_chunks(tokenizer, prompt, PAD[key])
        flat = [(c, s) for c, ch in enumerate(chunks) for s in range(1, 76) if ch[s] not in (BOS, EOS, PAD[key])]
        at = next(i for i in range(len(flat) - 1) if chunks[flat[i][0]][flat[i][1]] == F
                  and chunks[flat[i + 1][0]][flat[i + 1][1]] == L)
        rows = {flat[at]: parts[key][0], flat[at + 1]: parts[key][1]}
        out[key] = official_overwrite(models[key], chunks, rows, layer)
    return torch.cat([out["l"][0], out["g"][0]], dim=-1), out["g"][1]


# --- exactness ---------------------------------------------------------------------------------------

def test_the_tiny_checkpoint_is_detected_as_an_sdxl_family_model(tiny_sdxl_checkpoint, sdxl_clip):
    import comfy.model_detection
    import comfy.model_base
    import comfy.utils
    sd = comfy.utils.load_torch_file(str(tiny_sdxl_checkpoint))
    config = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    assert type(config).__name__ == tiny_sdxl.DETECTED_AS
    assert isinstance(config.get_model({}, device="meta"), comfy.model_base.SDXL)
    assert set(sdxl_clip.tokenize("f l")) == {"g", "l"}
    # ComfyUI's text encoders hold exactly the weights the reference gets
    weights = tiny_sdxl.text_encoder_weights()
    for key in ("l", "g"):
        held = getattr(sdxl_clip.cond_stage_model, f"clip_{key}").transformer.state_dict()
        assert all(torch.equal(held[k], v.float()) for k, v in weights[key].items()), key
        assert next(iter(held.values())).dtype == torch.float32


@pytest.mark.parametrize("prompt", [DEMO, STRADDLE], ids=["demo", "straddling-chunks"])
def test_injected_sdxl_conditioning_equals_the_official_overwrite_in_transformers(
        nodes, sdxl_clip, sdxl_face, reference_models, tokenizer, prompt):
    cond = nodes["F2DInjectFaceToken"].execute(sdxl_clip, sdxl_face, prompt).result[0]
    assert len(cond) == 1 and set(cond[0][1]) == {"pooled_output"}  # CLIPTextEncode's structure
    ours, pooled = cond[0][0], cond[0][1]["pooled_output"]
    want, want_pooled = reference(reference_models, tokenizer, prompt, sdxl_face.s1, sdxl_face.s2)
    assert ours.shape == want.shape == (1, 77 * (2 if prompt is STRADDLE else 1), 2048)
    assert pooled.shape == want_pooled.shape == (1, 1280)
    d_cond, d_pooled = (ours - want).abs().max().item(), (pooled - want_pooled).abs().max().item()
    print(f"\nSDXL exactness [{prompt[:20]}...]: max|d| prompt_embeds {d_cond:.2e} (max |x| "
          f"{want.abs().max():.1f}), pooled {d_pooled:.2e}")
    assert d_cond <= 1e-4 and d_pooled <= 1e-4
    # and the identity is what made it: the plain prompt differs at the trigger
    plain = sdxl_clip.encode_from_tokens_scheduled(sdxl_clip.tokenize(prompt))[0][0]
    assert (plain - ours).abs().max() > 1e-2


def test_clip_skip_applies_to_both_encoders_as_comfyui_sets_it(nodes, sdxl_clip, sdxl_face, reference_models,
                                                                 tokenizer):
    skipped = sdxl_clip.clone()
    skipped.clip_layer(-3)  # what CLIP Set Last Layer -3 does
    ours = nodes["F2DInjectFaceToken"].execute(skipped, sdxl_face, DEMO).result[0][0][0]
    want, _ = reference(reference_models, tokenizer, DEMO, sdxl_face.s1, sdxl_face.s2, layer=-3)
    assert (ours - want).abs().max() <= 1e-4


# --- the rest of Inject Face Token on SDXL ----------------------------------------------------------

def test_prompt_weights_apply_to_the_identity_in_both_encoders(nodes, sdxl_clip, sdxl_face):
    inject = nodes["F2DInjectFaceToken"]
    plain = inject.execute(sdxl_clip, sdxl_face, "a photo of f l smiling").result[0][0][0]
    weighted = inject.execute(sdxl_clip, sdxl_face, "a photo of (f l:1.3) smiling").result[0][0][0]
    empty = sdxl_clip.encode_from_tokens(sdxl_clip.tokenize(""))  # ComfyUI's z_empty, both encoders
    torch.testing.assert_close(weighted[0, 4:6], (plain[0, 4:6] - empty[0, 4:6]) * 1.3 + empty[0, 4:6],
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(weighted[0, :4], plain[0, :4])


def test_identity_strength_zero_is_the_class_word_and_one_half_the_midpoint(nodes, sdxl_clip, sdxl_face):
    inject = nodes["F2DInjectFaceToken"]
    plain = sdxl_clip.encode_from_tokens_scheduled(sdxl_clip.tokenize("a photo of person at the beach"))[0]
    zero = inject.execute(sdxl_clip, sdxl_face, "a photo of f l at the beach", identity_strength=0.0).result[0][0]
    assert torch.equal(zero[0], plain[0]) and torch.equal(zero[1]["pooled_output"], plain[1]["pooled_output"])
    full = inject.execute(sdxl_clip, sdxl_face, "a photo of f l at the beach").result[0][0]
    half = inject.execute(sdxl_clip, sdxl_face, "a photo of f l at the beach", identity_strength=0.5).result[0][0]
    torch.testing.assert_close(half[0], (full[0] + plain[0]) / 2, atol=1e-6, rtol=0)
    torch.testing.assert_close(half[1]["pooled_output"], (full[1]["pooled_output"] + plain[1]["pooled_output"]) / 2,
                               atol=1e-6, rtol=0)


def test_two_people_and_a_lora_on_clip_g(nodes, sdxl_clip, sdxl_face):
    inject = nodes["F2DInjectFaceToken"]
    two = inject.execute(sdxl_clip, sdxl_face, "f l and g k", face_2=sdxl_face).result[0][0][0]
    assert two.shape == (1, 77, 2048)
    key = "clip_g.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    patched = sdxl_clip.clone()
    # random, not constant: a constant shift of q is a no-op after a LayerNorm of unit weight and zero bias
    diff = torch.randn(1280, 1280, generator=torch.Generator().manual_seed(0)) * 0.05
    assert patched.add_patches({key: ("diff", (diff,))}) == [key]
    base = inject.execute(sdxl_clip, sdxl_face, DEMO).result[0][0][0]
    lora = inject.execute(patched, sdxl_face, DEMO).result[0][0][0]
    assert (base - lora)[..., 768:].abs().max() > 1e-3 and torch.equal(base[..., :768], lora[..., :768])


def test_a_saved_sdxl_face_loads_back_and_injects_the_same(nodes, sdxl_clip, sdxl_face, sdxl_encoder):
    nodes["F2DSaveFace"].execute(sdxl_face, "host/sdxl_anna")
    loaded = nodes["F2DLoadFace"].execute("host/sdxl_anna.f2d.safetensors").result[0]
    assert loaded.family.name == "sdxl"
    inject = nodes["F2DInjectFaceToken"]
    assert torch.equal(inject.execute(sdxl_clip, loaded, DEMO).result[0][0][0],
                       inject.execute(sdxl_clip, sdxl_face, DEMO).result[0][0][0])
    # the encoder input recomputes the tokens from the stored features with the same mapping
    again = inject.execute(sdxl_clip, loaded, DEMO, encoder=sdxl_encoder).result[0][0][0]
    torch.testing.assert_close(again, inject.execute(sdxl_clip, sdxl_face, DEMO).result[0][0][0], atol=1e-5, rtol=0)


def test_mapping_and_clip_of_different_families_name_both(nodes, sdxl_clip, sdxl_face, comfy_clip_from_recipe,
                                                          encoder_sd1):
    inject = nodes["F2DInjectFaceToken"]
    with pytest.raises(ValueError, match=r"face: its identity tokens were made by an SDXL mapping network, which "
                                         r"works with SDXL checkpoints only, but this CLIP belongs to SD1\.x"):
        inject.execute(comfy_clip_from_recipe, sdxl_face, DEMO)
    with pytest.raises(ValueError, match=r"made by an SD1\.x mapping network, which works with SD1\.x checkpoints "
                                         r"only, but this CLIP belongs to SDXL"):
        inject.execute(sdxl_clip, sdxl_face, DEMO, encoder=encoder_sd1)


@pytest.fixture(scope="module")
def encoder_sd1(nodes):
    return nodes["LoadF2DEncoder"].execute("msid.pt", "mapping.pt", "buffalo_l").result[0]


def test_the_loader_lists_the_sdxl_mapping_and_says_its_family(nodes, sdxl_encoder):
    options = nodes["LoadF2DEncoder"].GET_SCHEMA().inputs[1].options
    assert SDXL_MAPPING in options and "mapping.pt" in options
    assert sdxl_encoder.encoder.family.name == "sdxl"


# --- the whole graph over HTTP ------------------------------------------------------------------------

def test_the_sdxl_workflow_runs_end_to_end_on_the_tiny_sdxl_checkpoint(sdxl_models_dir, comfy_server):
    from PIL import Image
    from f2d_core.client.workflow import find_nodes, load_workflow, set_input, to_api
    from .test_nodes_host import face_photo
    import numpy as np
    prompt = to_api(load_workflow(REPO / "workflows" / "face2diffusion_sdxl.json"), comfy_server.object_info())
    assert prompt[find_nodes(prompt, "LoadF2DEncoder")[0]]["inputs"]["mapping"] == SDXL_MAPPING
    set_input(prompt, "CheckpointLoaderSimple", "ckpt_name", SDXL_CHECKPOINT)
    set_input(prompt, "EmptyLatentImage", "width", 64)
    set_input(prompt, "EmptyLatentImage", "height", 64)
    set_input(prompt, "KSampler", "steps", 2)
    photo = sdxl_models_dir.parent / "sdxl_face.png"
    Image.fromarray(face_photo(2, 2)).save(photo)
    set_input(prompt, "LoadImage", "image", comfy_server.upload(photo))
    files = comfy_server.output_files(comfy_server.queue(prompt))
    saved = [f for f in files if f.name.startswith("face2diffusion_sdxl")]
    assert saved and Image.open(saved[0]).size == (64, 64)
    assert np.asarray(Image.open(saved[0])).std() > 0  # an image, not a blank


def test_an_sd1_checkpoint_with_the_sdxl_mapping_is_refused_over_http(sdxl_models_dir, comfy_server):
    from f2d_core.client.workflow import load_workflow, set_input, to_api
    from .comfy_server import PromptError
    from .conftest import CHECKPOINT_NAME
    from .test_nodes_host import face_photo
    from PIL import Image
    prompt = to_api(load_workflow(REPO / "workflows" / "face2diffusion_sdxl.json"), comfy_server.object_info())
    set_input(prompt, "CheckpointLoaderSimple", "ckpt_name", CHECKPOINT_NAME)
    set_input(prompt, "KSampler", "steps", 1)
    photo = sdxl_models_dir.parent / "sdxl_face.png"
    Image.fromarray(face_photo(2, 2)).save(photo)
    set_input(prompt, "LoadImage", "image", comfy_server.upload(photo))
    with pytest.raises(PromptError) as e:
        comfy_server.queue(prompt)
    assert re.search(r"made by an SDXL mapping network, .* this CLIP belongs to SD1\.x", str(e.value)), str(e.value)
