"""The pack's nodes inside a real ComfyUI: in-process against ComfyUI's own CLIP, and over HTTP
with every example workflow and the broken graphs users will build (see conftest for fixtures)."""
from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import synthetic_onnx as om
from f2d_core.text import inject
from f2d_core.text import clip as text_encoder
from f2d_core.client.workflow import find_nodes, load_workflow, set_input, to_api

from .conftest import CHECKPOINT_NAME, REPO

NODE_IDS = ["LoadF2DEncoder", "F2DEncodeFace", "F2DExpressionEmbed", "F2DInjectFaceToken", "F2DSaveFace",
            "F2DLoadFace"]
DEMO = "f l eating bread in front of the Eiffel Tower"


def face_photo(cx=5, cy=5, size=256, blue=60):
    """A photo the synthetic detector sees exactly one face in (a painted stride-32 cell)."""
    img = np.zeros((size, size, 3), np.uint8)
    img[cy * 32:(cy + 1) * 32, cx * 32:(cx + 1) * 32] = (255, om.STRIDE_GREEN[32], blue)
    img[::7, ::5, 0] = 40
    return img


def faceless_photo(size=128):
    """No face for the synthetic detector (red 0 everywhere), and not blank: a blue gradient."""
    img = np.zeros((size, size, 3), np.uint8)
    img[:, :, 2] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
    return img


# --- in-process ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nodes(comfy_inprocess, f2d_models_dir):
    return comfy_inprocess.pack_nodes()


@pytest.fixture(scope="module")
def encoder(nodes):
    return nodes["LoadF2DEncoder"].execute("msid.pt", "mapping.pt", "buffalo_l").result[0]


@pytest.fixture(scope="module")
def parity_face(f2d_pack, encoder, parity):
    """The parity kit's face as an F2D_FACE, encoded by the loader node's encoder."""
    from face2diffusion_pack.f2d_core.identity.face_file import FaceIdentity
    with encoder.loaded() as f2d:
        feats = f2d.identity_features(parity[0]["input.pixel_values"]).cpu()
        s1, s2 = f2d.face_tokens(feats)
    return FaceIdentity(features=feats[0], s1=s1[0].cpu(), s2=s2[0].cpu())


def fp16_reference(recipe, recipe_clip_state_dict, prompt, s1, s2, tokenizer):
    """The official overwrite of token+position rows, in transformers, with CLIP weights rounded to
    fp16 as ComfyUI holds them on the CPU."""
    sd16 = {k: v.half().float() if v.is_floating_point() else v for k, v in recipe_clip_state_dict.items()}
    model = text_encoder.clip_text_model(sd16, recipe.CLIP_TEXT_CONFIG)
    tokens = text_encoder.tokenize(tokenizer, prompt)
    ids = torch.tensor([[t for t, _ in c] for c in tokens["l"]])
    pos = inject.find_trigger(tokens["l"], [325, 331])[0]
    rows = {pos[0]: s1, pos[1]: s2}

    def overwrite(_m, _i, out):
        out = out.clone()
        for (c, s), v in rows.items():
            out[c, s] = v
        return out

    tt = text_encoder.text_transformer(model)
    h = tt.embeddings.register_forward_hook(overwrite)
    try:
        with torch.no_grad():
            return tt(input_ids=ids).last_hidden_state.reshape(1, -1, 768)
    finally:
        h.remove()


def test_every_node_is_registered_with_a_description_and_tooltips(nodes):
    assert set(NODE_IDS) <= set(nodes)
    for node_id, cls in nodes.items():
        schema = cls.GET_SCHEMA()
        assert schema.category == "Face2Diffusion" and schema.description, node_id
        for inp in schema.inputs:
            assert inp.tooltip, f"{node_id}.{inp.id} has no tooltip"


@pytest.mark.parametrize("name", ["demo", "late"])
def test_injected_conditioning_equals_the_official_prompt_embeds(nodes, parity, parity_face, comfy_clip_from_recipe,
                                                                 recipe, recipe_clip_state_dict, tokenizer, name):
    E, J = parity
    prompt = J["prompts"][name]["prompt"]
    cond = nodes["F2DInjectFaceToken"].execute(comfy_clip_from_recipe, parity_face, prompt).result[0]
    assert len(cond) == 1 and set(cond[0][1]) == {"pooled_output"}  # CLIPTextEncode's structure
    ours = cond[0][0]
    same_rounding = fp16_reference(recipe, recipe_clip_state_dict, prompt, parity_face.s1, parity_face.s2, tokenizer)
    torch.testing.assert_close(ours, same_rounding, atol=1e-3, rtol=0)
    # the only difference from the official fp32 numbers is ComfyUI's fp16 CLIP weights
    torch.testing.assert_close(ours, E[f"text.{name}.prompt_embeds"], atol=2e-2, rtol=0)


def test_tokens_recomputed_by_the_encoder_equal_the_stored_ones(nodes, encoder, parity_face, comfy_clip_from_recipe):
    inject_node = nodes["F2DInjectFaceToken"]
    stored = inject_node.execute(comfy_clip_from_recipe, parity_face, DEMO).result[0][0][0]
    neutral = nodes["F2DExpressionEmbed"].execute(encoder, "neutral").result[0]
    recomputed = inject_node.execute(comfy_clip_from_recipe, parity_face, DEMO, encoder=encoder,
                                     expression=neutral).result[0][0][0]
    assert torch.equal(stored, recomputed)


def test_identity_strength_zero_is_the_class_word_and_one_half_is_the_midpoint(nodes, parity_face,
                                                                               comfy_clip_from_recipe):
    clip = comfy_clip_from_recipe
    inject_node = nodes["F2DInjectFaceToken"]
    plain = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of person at the beach"))[0][0]
    zero = inject_node.execute(clip, parity_face, "a photo of f l at the beach", identity_strength=0.0).result[0]
    assert torch.equal(zero[0][0], plain)
    full = inject_node.execute(clip, parity_face, "a photo of f l at the beach").result[0][0][0]
    half = inject_node.execute(clip, parity_face, "a photo of f l at the beach", identity_strength=0.5).result[0]
    torch.testing.assert_close(half[0][0], (full + plain) / 2, atol=1e-6, rtol=0)


def test_prompt_weights_apply_to_the_identity(nodes, parity_face, comfy_clip_from_recipe):
    clip = comfy_clip_from_recipe
    plain = nodes["F2DInjectFaceToken"].execute(clip, parity_face, "a photo of f l smiling").result[0][0][0]
    weighted = nodes["F2DInjectFaceToken"].execute(clip, parity_face, "a photo of (f l:1.3) smiling").result[0][0][0]
    # ComfyUI's weighting: z = (z - z_empty) * w + z_empty on the weighted slots (f at 4, l at 5) only
    empty = clip.encode_from_tokens(clip.tokenize(""))
    torch.testing.assert_close(weighted[0, 4:6], (plain[0, 4:6] - empty[0, 4:6]) * 1.3 + empty[0, 4:6],
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(weighted[0, :4], plain[0, :4])
    torch.testing.assert_close(weighted[0, 6:], plain[0, 6:])


def test_core_conditioning_nodes_accept_the_output(nodes, parity_face, comfy_clip_from_recipe):
    import nodes as comfy_nodes
    cond = nodes["F2DInjectFaceToken"].execute(comfy_clip_from_recipe, parity_face, DEMO).result[0]
    timed = comfy_nodes.ConditioningSetTimestepRange().set_range(cond, 0.2, 1.0)[0]
    assert timed[0][1]["start_percent"] == 0.2
    combined = comfy_nodes.ConditioningCombine().combine(timed, cond)[0]
    masked = comfy_nodes.ConditioningSetMask().append(cond, torch.ones(1, 8, 8), "default", 1.0)[0]
    assert len(combined) == 2 and masked[0][1]["mask"].shape == (1, 8, 8)


def test_lora_patches_on_clip_reach_the_injected_encoding(nodes, parity_face, comfy_clip_from_recipe):
    clip = comfy_clip_from_recipe
    key = "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    patched = clip.clone()
    assert patched.add_patches({key: ("diff", (torch.full((768, 768), 0.01),))}) == [key]
    base = nodes["F2DInjectFaceToken"].execute(clip, parity_face, DEMO).result[0][0][0]
    lora = nodes["F2DInjectFaceToken"].execute(patched, parity_face, DEMO).result[0][0][0]
    assert (base - lora).abs().max() > 1e-3
    again = nodes["F2DInjectFaceToken"].execute(clip, parity_face, DEMO).result[0][0][0]
    assert torch.equal(base, again)  # the unpatched CLIP is unchanged


@pytest.mark.parametrize("family, name", [("sdxl", "SDXL"), ("sd2", "SD2.x")])
def test_non_sd1_clips_get_a_plain_message(nodes, parity_face, request, family, name):
    clip = request.getfixturevalue(f"{family}_like_clip")
    with pytest.raises(ValueError, match=rf"works with SD1\.x checkpoints .* this CLIP belongs to {re.escape(name)}"):
        nodes["F2DInjectFaceToken"].execute(clip, parity_face, DEMO)


def test_a_prompt_without_the_trigger_shows_its_tokens(nodes, parity_face, comfy_clip_from_recipe):
    with pytest.raises(ValueError, match=r"'f l' was not found in the prompt\. The prompt tokenized as: a \| "
                                         r"photo \| of \| fl \| person"):
        nodes["F2DInjectFaceToken"].execute(comfy_clip_from_recipe, parity_face, "a photo of fl person")


def test_two_people_need_different_triggers(nodes, parity_face, comfy_clip_from_recipe):
    inject_node = nodes["F2DInjectFaceToken"]
    two = inject_node.execute(comfy_clip_from_recipe, parity_face, "f l and g k", face_2=parity_face).result[0]
    assert two[0][0].shape == (1, 77, 768)
    with pytest.raises(ValueError, match="same trigger"):
        inject_node.execute(comfy_clip_from_recipe, parity_face, "f l", face_2=parity_face, trigger_2="F L")


def test_the_encoder_is_loaded_once_and_reused(nodes, encoder):
    again = nodes["LoadF2DEncoder"].execute("msid.pt", "mapping.pt", "buffalo_l").result[0]
    assert again.encoder is encoder.encoder and again.detector is encoder.detector


def test_encode_face_crops_and_save_load_round_trip(nodes, encoder):
    photos = torch.from_numpy(np.stack([face_photo(2, 2), face_photo(4, 3)])).float() / 255
    face, crops, found = nodes["F2DEncodeFace"].execute(encoder, photos).result
    assert face.num_faces == 2 and crops.shape == (2, 112, 112, 3)
    assert found.shape[0] == 1 and found.shape[3] == 3 and found.dtype == torch.float32  # one preview sheet
    out = nodes["F2DSaveFace"].execute(face, "host/anna")
    assert "saved host/anna.f2d.safetensors (2 face(s))" in out.ui.as_dict()["text"][0]
    assert "host/anna.f2d.safetensors" in nodes["F2DLoadFace"].GET_SCHEMA().inputs[0].options
    loaded, loaded_crops = nodes["F2DLoadFace"].execute("host/anna.f2d.safetensors").result
    assert torch.equal(loaded.features, face.features) and torch.equal(loaded_crops, crops)
    with pytest.raises(ValueError, match="face name '../x' is not usable"):
        nodes["F2DSaveFace"].execute(face, "../x")


def test_save_face_refuses_unusable_names_before_touching_the_disk(nodes, encoder, f2d_pack):
    root = f2d_pack.nodes.paths.identity_dir()
    face = nodes["F2DEncodeFace"].execute(encoder, torch.from_numpy(face_photo(2, 2)[None]).float() / 255).result[0]
    before = sorted(os.walk(root)) if os.path.isdir(root) else []
    with pytest.raises(ValueError, match=r"face name 'xxx.*' is not usable: it is 300 characters long; at most 150"):
        nodes["F2DSaveFace"].execute(face, "x" * 300)
    with pytest.raises(ValueError, match=r"is not usable: it is 4401 characters long"):
        nodes["F2DSaveFace"].execute(face, "a/" * 2200 + "b")
    with pytest.raises(ValueError, match=r"'NUL' is a device name on Windows"):
        nodes["F2DSaveFace"].execute(face, "family/NUL")
    assert (sorted(os.walk(root)) if os.path.isdir(root) else []) == before  # no folder, no file


def test_load_face_lists_no_file_a_save_is_still_writing(nodes, encoder, f2d_pack):
    root = f2d_pack.nodes.paths.identity_dir()
    face = nodes["F2DEncodeFace"].execute(encoder, torch.from_numpy(face_photo(3, 3)[None]).float() / 255).result[0]
    nodes["F2DSaveFace"].execute(face, "host/listed")
    partial = os.path.join(root, "host", ".f2d-partial-1-0123abcd.tmp")
    with open(partial, "wb") as f:
        f.write(b"half")
    try:
        options = nodes["F2DLoadFace"].GET_SCHEMA().inputs[0].options
        assert "host/listed.f2d.safetensors" in options and not any("partial" in o for o in options)
        loaded, _ = nodes["F2DLoadFace"].execute("host/listed.f2d.safetensors").result
        assert loaded.meta["detector"] == encoder.detector.name and loaded.meta["detector"].startswith("det_10g.onnx")
    finally:
        os.remove(partial)


def test_an_expression_vector_of_1e38_is_refused_not_turned_into_nan(nodes, encoder):
    with pytest.raises(ValueError, match=r"expression vector: holds a value of 1e\+38, far outside the range of real "
                                         r"data \(\|x\| <= 100\)"):
        nodes["F2DExpressionEmbed"].execute(encoder, "vector", 1.0, ", ".join(["1e38"] * 64))


def test_a_missing_expression_model_names_its_file_and_folder(nodes):
    with pytest.raises(ValueError, match=r"expression_model: 'deep3d\.pth' is not in .*face2diffusion .*\. Put "
                                         r"epoch_20\.pth \(Deep3DFaceRecon's expression model, optional, from .*"
                                         r"sicxu/Deep3DFaceRecon_pytorch\) in .*face2diffusion, then press R"):
        nodes["LoadF2DEncoder"].execute("msid.pt", "mapping.pt", "buffalo_l", expression_model="deep3d.pth")


def test_wrong_file_in_a_slot_names_it(nodes):
    with pytest.raises(ValueError, match=r"mapping\.pt: expected the MSID identity encoder .* this is the mapping"):
        nodes["LoadF2DEncoder"].execute("mapping.pt", "mapping.pt", "buffalo_l", device="cpu", precision="fp32")


# --- over HTTP ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def extra_models(f2d_models_dir, recipe_clip_state_dict):
    """Files only some graphs need: random Deep3DFaceRecon weights in epoch_20.pth's layout, and the
    recipe's CLIP-L as a text encoder file (CLIPLoader with type sd3 makes a non-SD1 CLIP of it)."""
    from safetensors.torch import save_file
    from f2d_core.models.deep3d import ReconNet
    g = torch.Generator().manual_seed(0)
    # BatchNorm variances must be positive: negative ones made NaN coefficients, which the
    # expression workflow then passed on silently as NaN conditioning

    def fill(k, v):
        if not v.is_floating_point():
            return v
        return torch.rand(v.shape, generator=g) + 0.5 if k.endswith("running_var") else \
            torch.randn(v.shape, generator=g) * 0.02

    sd = {k: fill(k, v) for k, v in ReconNet().state_dict().items()}
    torch.save({"net_recon": sd}, f2d_models_dir / "face2diffusion" / "epoch_20.pth")
    te = f2d_models_dir / "text_encoders"
    te.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in recipe_clip_state_dict.items()}, str(te / "clip_l_recipe.safetensors"))
    return f2d_models_dir


@pytest.fixture(scope="module")
def photos(comfy_server, tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    names = {}
    for name, img in {"face": face_photo(2, 2), "face2": face_photo(4, 4, blue=120), "face3": face_photo(3, 5),
                      "blank": np.zeros((128, 128, 3), np.uint8), "faceless": faceless_photo()}.items():
        Image.fromarray(img).save(d / f"{name}.png")
        names[name] = comfy_server.upload(d / f"{name}.png")
    return names


def small(prompt: dict) -> dict:
    """64x64, 2 steps, the tiny checkpoint: the workflow's graph at test cost."""
    set_input(prompt, "CheckpointLoaderSimple", "ckpt_name", CHECKPOINT_NAME)
    set_input(prompt, "EmptyLatentImage", "width", 64)
    set_input(prompt, "EmptyLatentImage", "height", 64)
    set_input(prompt, "KSampler", "steps", 2)
    return prompt


def workflow_prompt(server, name, photos) -> dict:
    prompt = small(to_api(load_workflow(REPO / "workflows" / name), server.object_info()))
    for i, nid in enumerate(sorted(find_nodes(prompt, "LoadImage"), key=int)):
        prompt[nid]["inputs"]["image"] = photos[["face", "face2", "face3"][i]]
    return prompt


def test_object_info_lists_every_node(comfy_server):
    info = comfy_server.object_info(refresh=True)
    assert set(NODE_IDS) <= set(info)
    loader = info["LoadF2DEncoder"]["input"]["required"]
    assert {"msid.pt", "mapping.pt"} <= set(loader["msid"][1]["options"])  # models/face2diffusion is registered
    assert "buffalo_l" in loader["detector"][1]["options"]  # and insightface packs are found


# SD1.x workflows; face2diffusion_sdxl.json runs on the tiny SDXL checkpoint in test_sdxl_host.py
@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "workflows").glob("*.json") if "sdxl" not in p.name))
def test_every_example_workflow_runs_end_to_end(comfy_server, extra_models, photos, name):
    prompt = workflow_prompt(comfy_server, name, photos)
    files = comfy_server.output_files(comfy_server.queue(prompt))
    saved = [f for f in files if f.name.startswith("face2diffusion")]
    assert saved, f"{name} saved no image"
    assert all(Image.open(f).size == (64, 64) for f in saved)


def test_an_unchanged_encode_is_not_run_again(comfy_server, photos):
    """ComfyUI's cache must skip an unchanged encode when only the prompt text changes."""
    prompt = workflow_prompt(comfy_server, "face2diffusion_basic.json", photos)
    comfy_server.queue(prompt)
    set_input(prompt, "F2DInjectFaceToken", "text", "a photo of f l in the rain")
    entry = comfy_server.run(prompt)
    cached = next(d["nodes"] for e, d in entry["status"]["messages"] if e == "execution_cached")
    encode = find_nodes(prompt, "F2DEncodeFace")[0]
    assert encode in cached and find_nodes(prompt, "LoadF2DEncoder")[0] in cached
    assert find_nodes(prompt, "F2DInjectFaceToken")[0] not in cached


def expect_error(server, prompt, pattern):
    from .comfy_server import PromptError
    with pytest.raises(PromptError) as e:
        server.queue(prompt)
    assert e.value.kind == "execution", e.value
    assert re.search(pattern, str(e.value)), str(e.value)


def test_no_face_in_the_photo(comfy_server, photos):
    prompt = workflow_prompt(comfy_server, "face2diffusion_basic.json", photos)
    set_input(prompt, "LoadImage", "image", photos["faceless"])
    expect_error(comfy_server, prompt, r"F2DEncodeFace .*face2diffusion\.NoFaceError: No face found in image 1 of 1\. Use a "
                                       r"clearer photo")


def test_a_blank_photo_is_named_as_blank(comfy_server, photos):
    prompt = workflow_prompt(comfy_server, "face2diffusion_basic.json", photos)
    set_input(prompt, "LoadImage", "image", photos["blank"])
    expect_error(comfy_server, prompt, r"F2DEncodeFace .*face2diffusion\.NoFaceError: image 1 of 1 is blank: the whole "
                                       r"image is one flat colour RGB\(0, 0, 0\)")


def test_missing_trigger(comfy_server, photos):
    prompt = workflow_prompt(comfy_server, "face2diffusion_basic.json", photos)
    set_input(prompt, "F2DInjectFaceToken", "text", "a photo of a chef")
    expect_error(comfy_server, prompt, r"F2DInjectFaceToken .* the trigger 'f l' was not found in the prompt\. "
                                       r"The prompt tokenized as: a \| photo \| of \| a \| chef")


def test_wrong_checkpoint_in_a_slot(comfy_server, photos):
    prompt = workflow_prompt(comfy_server, "face2diffusion_basic.json", photos)
    set_input(prompt, "LoadF2DEncoder", "msid", "mapping.pt")
    expect_error(comfy_server, prompt, r"LoadF2DEncoder .*face2diffusion\.CheckpointError: .*mapping\.pt: expected the MSID "
                                       r"identity encoder \(msid\.pt or msid\.safetensors\), but this is the mapping")


def test_a_model_file_that_is_not_there(comfy_server, photos):
    prompt = workflow_prompt(comfy_server, "face2diffusion_basic.json", photos)
    set_input(prompt, "LoadF2DEncoder", "msid", "msid_v2.pt")
    expect_error(comfy_server, prompt, r"msid: 'msid_v2\.pt' is not in .*face2diffusion.* \(found: .*msid\.pt")


def test_a_non_sd1_clip(comfy_server, extra_models, photos):
    prompt = workflow_prompt(comfy_server, "face2diffusion_basic.json", photos)
    prompt["90"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip_l_recipe.safetensors", "type": "sd3"}}
    prompt[find_nodes(prompt, "F2DInjectFaceToken")[0]]["inputs"]["clip"] = ["90", 0]
    expect_error(comfy_server, prompt, r"Face2Diffusion works with SD1\.x checkpoints .* this CLIP belongs to SD3")


def test_expression_reference_without_a_face(comfy_server, extra_models, photos):
    prompt = workflow_prompt(comfy_server, "face2diffusion_expression.json", photos)
    loads = sorted(find_nodes(prompt, "LoadImage"), key=int)
    prompt[loads[1]]["inputs"]["image"] = photos["faceless"]
    expect_error(comfy_server, prompt, r"F2DExpressionEmbed .* Expression reference: No face found")


def test_a_blank_expression_reference_is_named_as_blank_as_encode_face_names_it(comfy_server, extra_models, photos):
    prompt = workflow_prompt(comfy_server, "face2diffusion_expression.json", photos)
    loads = sorted(find_nodes(prompt, "LoadImage"), key=int)
    prompt[loads[1]]["inputs"]["image"] = photos["blank"]
    expect_error(comfy_server, prompt, r"F2DExpressionEmbed .*face2diffusion\.NoFaceError: Expression reference: "
                                       r"expression image 1 of 1 is blank: the whole image is one flat colour "
                                       r"RGB\(0, 0, 0\)")


# --- photos as ComfyUI's own LoadImage gives them (issue 10 item 5) -----------------------------

def load_image(comfy_inprocess, name: str, image: Image.Image, **save):
    """Save `image` into ComfyUI's input folder and load it with core LoadImage."""
    import nodes as comfy_nodes
    image.save(comfy_inprocess.dirs["input"] / name, **save)
    return comfy_nodes.LoadImage().load_image(name)[0]


def test_an_exif_rotated_phone_photo_gives_load_image_and_the_cli_reader_the_same_crop(nodes, encoder,
                                                                                       comfy_inprocess, f2d_pack):
    from face2diffusion_pack.f2d_core.faces.images import read_image
    from face2diffusion_pack.f2d_core.identity.pipeline import encode_images
    upright = np.zeros((256, 384, 3), np.uint8)  # 384 wide: the face only fits where the EXIF turn puts it
    upright[:, :, 1] = np.linspace(0, 200, 384, dtype=np.uint8)[None, :]
    upright[2 * 32:3 * 32, 9 * 32:10 * 32] = (255, om.STRIDE_GREEN[32], 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter to the left, shown upright
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright)))
    image = load_image(comfy_inprocess, "phone.jpg", stored, format="JPEG", quality=95, exif=exif)
    assert tuple(image.shape) == (1, 256, 384, 3)
    node_crops = nodes["F2DEncodeFace"].execute(encoder, image).result[1]
    with encoder.loaded() as f2d:
        cli = encode_images(f2d, [read_image(comfy_inprocess.dirs["input"] / "phone.jpg")], encoder.detector)
    assert torch.equal(node_crops, cli.aligned.float() / 255.0)


def test_a_16_bit_grayscale_png_from_load_image_is_refused_as_saturated(nodes, encoder, comfy_inprocess):
    levels = np.linspace(0, 65535, 256 * 256).astype(np.uint16).reshape(256, 256)
    image = load_image(comfy_inprocess, "gray16.png", Image.fromarray(levels))
    assert float((image == 1.0).all(dim=-1).float().mean()) > 0.99  # LoadImage clips it white
    with pytest.raises(ValueError, match=r"image 1 of 1 is saturated: 99\.6% of its pixels are pure white\. ComfyUI's "
                                         r"Load Image does this to 16-bit grayscale PNGs"):
        nodes["F2DEncodeFace"].execute(encoder, image)


def test_a_16_bit_photo_load_image_leaves_white_but_for_a_few_dark_pixels_gets_the_16_bit_hint(nodes, encoder,
                                                                                                   comfy_inprocess):
    levels = np.full((256, 256), 30000, np.uint16)
    levels[::61, ::53] = 100  # its darkest pixels, the only ones under 255 of 65535
    image = load_image(comfy_inprocess, "scan16.png", Image.fromarray(levels))
    with pytest.raises(ValueError, match=r"image 1 of 1 is saturated: all but 25 of its 65536 pixels are pure white\. "
                                         r"ComfyUI's Load Image does this to 16-bit grayscale PNGs"):
        nodes["F2DEncodeFace"].execute(encoder, image)


def test_a_photo_load_image_filled_in_from_a_truncated_file_is_refused_with_the_cause(nodes, encoder,
                                                                                      comfy_inprocess):
    import nodes as comfy_nodes
    buf = io.BytesIO()
    Image.fromarray(face_photo(2, 2)).save(buf, "JPEG", quality=95)  # the face near the top
    (comfy_inprocess.dirs["input"] / "cut.jpg").write_bytes(buf.getvalue()[:len(buf.getvalue()) * 2 // 3])
    image = comfy_nodes.LoadImage().load_image("cut.jpg")[0]  # decodes it anyway, the rest grey
    assert tuple(image.shape) == (1, 256, 256, 3) and bool((image[0, -1] == 128 / 255).all())
    with pytest.raises(ValueError, match=r"image 1 of 1 looks cut off: its lower \d+ of 256 rows \(from y=\d+ down\) "
                                         r"are exactly one flat grey RGB\(128, 128, 128\), which is what ComfyUI's Load "
                                         r"Image fills in for the missing part of a truncated file"):
        nodes["F2DEncodeFace"].execute(encoder, image)


def test_a_face_below_min_face_px_is_refused_naming_its_input_unless_allowed(nodes, encoder):
    small = face_photo(2, 2)
    small[:, :] = faceless_photo(256)
    om.paint_face(small, 8, 20, 20, scale=640 / 256)  # a 16 px box at detector scale: 7 px in this photo
    as_image = lambda a: torch.from_numpy(a[None]).float() / 255
    with pytest.raises(ValueError, match=r"image_2: the face is only 7x7 pixels .* set min_face_px to 0"):
        nodes["F2DEncodeFace"].execute(encoder, as_image(face_photo(2, 2)), image_2=as_image(small))
    face = nodes["F2DEncodeFace"].execute(encoder, as_image(face_photo(2, 2)), image_2=as_image(small),
                                          min_face_px=0).result[0]
    assert face.num_faces == 2


def test_photos_of_other_sizes_on_image_2_are_encoded_whole_where_batch_images_crops_the_face_off(
        nodes, encoder, comfy_inprocess):
    import nodes as comfy_nodes
    first = torch.from_numpy(face_photo(2, 2)[None]).float() / 255  # 256 x 256
    tall = np.zeros((640, 256, 3), np.uint8)
    tall[:, :, 2] = np.linspace(0, 255, 640, dtype=np.uint8)[:, None]
    tall[18 * 32:19 * 32, 3 * 32:4 * 32] = (255, om.STRIDE_GREEN[32], 60)  # the face at the bottom
    tall = torch.from_numpy(tall[None]).float() / 255
    batched = comfy_nodes.ImageBatch().batch(first, tall)[0]  # core Batch Images: tall is cut to 256 x 256
    assert tuple(batched.shape) == (2, 256, 256, 3)
    with pytest.raises(ValueError, match=r"No face found in image 2 of 2\..* image 2 of 2 came after the first image of "
                                         r"one batch: core Batch Images resizes and centre-crops every later image to "
                                         r"the first one's size.* \(image_2\.\.image_4 of Encode Face\)"):
        nodes["F2DEncodeFace"].execute(encoder, batched)
    face, crops = nodes["F2DEncodeFace"].execute(encoder, first, image_2=tall).result[:2]
    assert face.num_faces == 2 and [f["image"] for f in face.meta["faces"]] == ["image", "image_2"]
    alone = nodes["F2DEncodeFace"].execute(encoder, tall).result[1]
    assert torch.equal(crops[1], alone[0])  # image_2 was encoded as it is, not resized to the first
