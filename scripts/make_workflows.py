"""Writes the example workflows in workflows/ (ComfyUI UI format, drag-and-drop loadable).

Widget order, socket types and output names come from a server's /object_info, so the files
match what the frontend itself would save. Re-run after changing a node's inputs:

    python scripts/make_workflows.py --server http://127.0.0.1:8188      # ComfyUI with this pack
    python scripts/make_workflows.py --object-info object_info.json
    (scripts/workflow_screenshots.py --object-info object_info.json saves one from the checkout)

Layout: the flow runs left to right in groups (Models, The person, Prompt, Sampling, and
Expression / Second person where used), no two node boxes (title bar included) closer than GAP,
every node whose role is not obvious titled; tests/test_workflow_layout.py checks all of this and
tests/host/test_frontend_host.py checks it again as the real frontend draws it.
"""
from __future__ import annotations

import argparse
import json
import os

import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

# the file names the README tells users to use
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
MSID, MAPPING, PACK = "msid.pt", "mapping.pt", "buffalo_l"
EXPRESSION_MODEL = "epoch_20.pth"
NEGATIVE = ""  # the paper's setting: an empty negative prompt

TITLE_H = 30                  # LiteGraph's node title bar, drawn above a node's pos
GAP = 30                      # px between node boxes
GROUP_PAD, GROUP_TITLE = 16, 44  # a group's margin around its nodes, and its title bar (font 24)
GROUP_GAP = 30                # px between groups
WINDOW = (1780, 840)          # the canvas a 1920x1080 window leaves, menus and side bar off
VIEW_SCALE = (0.6, 0.85)      # the default zoom: the whole graph fitted, within these bounds
COLOURS = {"Models": "#3f789e", "The person": "#8A8", "Second person": "#8AA", "Prompt": "#b58b2a",
           "Expression": "#a1309b", "Sampling": "#88A"}
NOTE_COLOUR, NOTE_BG = "#432", "#653"


class Graph:
    def __init__(self, object_info: dict):
        self.info = object_info
        self.nodes, self.links, self.groups = [], [], []

    def _spec(self, node_type):
        if node_type not in self.info:
            raise SystemExit(f"{node_type} is not in /object_info: is the Face2Diffusion pack loaded?")
        return self.info[node_type]

    def inputs_of_type(self, node_type, kind) -> list[str]:
        spec = self._spec(node_type)["input"]
        return [n for part in ("required", "optional") for n, s in spec.get(part, {}).items() if s[0] == kind]

    def node(self, node_type, pos, size, title=None, **values):
        """Add a node at `pos` (its body's top-left; the title bar is above) of `size` (its body);
        `values` are widget values by name or (node, output_index) links."""
        spec = self._spec(node_type)
        order = spec.get("input_order", {})
        declared = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        names = order.get("required", list(spec["input"].get("required", {}))) + \
            order.get("optional", list(spec["input"].get("optional", {})))
        node = {"id": len(self.nodes) + 1, "type": node_type, "pos": list(pos), "size": list(size), "flags": {},
                "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [],
                "properties": {"Node name for S&R": node_type}, "widgets_values": []}
        for name in names:
            kind, opts = declared[name][0], (declared[name][1] if len(declared[name]) > 1 else {})
            is_widget = isinstance(kind, list) or kind in WIDGET_TYPES or kind == "COMBO"
            value = values.pop(name, None)
            if isinstance(value, tuple):  # a link from (node, output slot)
                src, slot = value
                link_id = len(self.links) + 1
                out_type = src["outputs"][slot]["type"]
                self.links.append([link_id, src["id"], slot, node["id"], len(node["inputs"]), out_type])
                src["outputs"][slot]["links"].append(link_id)
                entry = {"name": name, "type": "COMBO" if isinstance(kind, list) else kind, "link": link_id}
                if is_widget:
                    entry["widget"] = {"name": name}
                    node["widgets_values"].append(opts.get("default"))
                node["inputs"].append(entry)
                continue
            if not is_widget:
                node["inputs"].append({"name": name, "type": kind, "link": None})
                continue
            if value is None:
                options = kind if isinstance(kind, list) else opts.get("options", [])
                value = opts.get("default", options[0] if options else None)
            node["inputs"].append({"name": name, "type": "COMBO" if isinstance(kind, list) else kind,
                                   "widget": {"name": name}, "link": None})
            node["widgets_values"].append(value)
            if opts.get("control_after_generate"):
                node["widgets_values"].append("fixed")  # the frontend's value-control widget
            if opts.get("image_upload"):
                node["widgets_values"].append("image")  # the frontend's upload widget
        if values:
            raise SystemExit(f"{node_type}: unknown inputs {sorted(values)}")
        for i, (t, n) in enumerate(zip(spec["output"], spec["output_name"])):
            node["outputs"].append({"name": n, "type": t, "links": [], "slot_index": i})
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def note(self, pos, text, size, title="Read me"):
        """A MarkdownNote: its headings are the only text the frontend draws larger than 10 px."""
        node = {"id": len(self.nodes) + 1, "type": "MarkdownNote", "pos": list(pos), "size": list(size),
                "flags": {}, "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [],
                "properties": {}, "widgets_values": [text], "color": NOTE_COLOUR, "bgcolor": NOTE_BG,
                "title": title}
        self.nodes.append(node)
        return node

    def group(self, title, members):
        """A group around `members`, GROUP_PAD from their boxes, its title bar above them."""
        boxes = [box(n) for n in members]
        x0, y0 = min(b[0] for b in boxes) - GROUP_PAD, min(b[1] for b in boxes) - GROUP_PAD - GROUP_TITLE
        x1, y1 = max(b[0] + b[2] for b in boxes) + GROUP_PAD, max(b[1] + b[3] for b in boxes) + GROUP_PAD
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                            "color": COLOURS[title], "font_size": 24, "flags": {}})

    def default_view(self) -> dict:
        """The whole graph fitted into WINDOW (zoom within VIEW_SCALE), a margin left and top for the
        frontend's side bar and menus."""
        boxes = [box(n) for n in self.nodes] + [g["bounding"] for g in self.groups]
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
        scale = max(VIEW_SCALE[0], min(VIEW_SCALE[1], WINDOW[0] / (x1 - x0), WINDOW[1] / (y1 - y0)))
        return {"scale": round(scale, 3), "offset": [round(60 / scale - x0, 1), round(100 / scale - y0, 1)]}

    def save(self, name):
        for n in self.nodes:
            for o in n["outputs"]:
                if not o["links"]:
                    o["links"] = None  # as the frontend saves unconnected outputs
        wf = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
              "links": self.links, "groups": self.groups, "config": {},
              "extra": {"ds": self.default_view()}, "version": 0.4}
        path = os.path.join(REPO, "workflows", name)
        with open(path, "w") as f:
            json.dump(wf, f, indent=1)
            f.write("\n")
        print("wrote", path)


def box(node) -> list:
    """x, y, width, height of a node as drawn: its body and the title bar above it."""
    return [node["pos"][0], node["pos"][1] - TITLE_H, node["size"][0], node["size"][1] + TITLE_H]


def below(node, gap=GAP) -> float:
    """The y of a node body placed under `node`, `gap` px between their boxes."""
    return node["pos"][1] + node["size"][1] + gap + TITLE_H


def right_of(node, gap=GAP) -> float:
    return node["pos"][0] + node["size"][0] + gap


def first_row(group_top) -> float:
    """The y of the first node body in a group whose box starts at group_top."""
    return group_top + GROUP_TITLE + GROUP_PAD + TITLE_H


def next_group_x(*nodes) -> float:
    """The x of the first node of a group to the right of the groups holding `nodes`."""
    return max(n["pos"][0] + n["size"][0] for n in nodes) + 2 * GROUP_PAD + GROUP_GAP


# --- the parts the workflows share --------------------------------------------------------------------
# Columns, left to right: the note and Models | the person (and Expression / Second person) |
# Prompt | Sampling. Every link runs rightwards or straight down. Sizes are at least what both
# frontends (1.27 and 1.58) compute for a node's widgets and sockets, so none is grown on loading
# (tests/host/test_frontend_host.py measures it): Encode Face needs 210 px, LoadImage 326.

COLUMN0 = 380                  # width of the note and the Models nodes
ENCODE_FACE = (300, 220)       # 6 sockets and 4 widgets
PERSON_H = 420                 # the person row: Encode Face, the aligned crops under it, the photo beside
ROW_GAP = 80                   # px more between Models and the person column when it has two rows
FOUND_W = 340                  # the Preview Image of the faces found: its title in full in both frontends
HALF = (280, 170)              # Conditioning (Set Area with Percentage): 5 widgets
FILES = (f"### Files, in ComfyUI/models:\n"
         f"### checkpoints/ any SD1.x model\n"
         f"### face2diffusion/ {MSID}, {MAPPING}\n"
         f"### insightface/models/{PACK}/ det_10g.onnx\n")


def bottom(group) -> float:
    return group["bounding"][1] + group["bounding"][3]


def read_me(g, text, height):
    """The workflow's note, top left: the first thing read."""
    return g.note((0, TITLE_H), text, (COLUMN0, height))


def models(g, top, expression_model="none", second_row=None, checkpoint=CHECKPOINT, mapping=MAPPING):
    """Models group: the checkpoint and the Face2Diffusion encoder, under the note. With a
    `second_row` (the top of the group under The person), the encoder level with that row's first
    nodes: its wires run straight into the row, and up to the first row left of its group (see
    ROW_GAP), never through a group's title."""
    if second_row is not None:
        top = max(top, first_row(second_row) - (first_row(0) + 100 + GAP + TITLE_H))
    y = first_row(top)
    ckpt = g.node("CheckpointLoaderSimple", (0, y), (COLUMN0, 100), ckpt_name=checkpoint)
    title = "Encoder (+ epoch_20.pth: expressions)" if expression_model != "none" else None
    enc = g.node("LoadF2DEncoder", (0, below(ckpt)), (COLUMN0, 210), title=title, msid=MSID, mapping=mapping,
                 detector=PACK, expression_model=expression_model)
    g.group("Models", [ckpt, enc])
    return ckpt, enc


def person(g, enc, x, top, photo="face.jpg", group="The person", label="the person", who=None):
    """A photo, Encode Face, and what it found and encoded, their bottoms level. `who` names the
    person in titles when the workflow has two."""
    y = first_row(top)
    img = g.node("LoadImage", (x, y), (260, PERSON_H), title=f"Photo of {label}", image=photo)
    face = g.node("F2DEncodeFace", (right_of(img, 40), y), ENCODE_FACE, encoder=(enc, 0), image=(img, 0),
                  title=f"Encode {who}" if who else None)
    g.group(group, [img, face, *preview_faces(g, face, who)])
    return face


def preview_faces(g, face, who=None):
    """What was encoded under Encode Face, every face found (numbered as `index` counts) beside it."""
    of = f", {who}" if who else ""
    y = below(face)
    aligned = g.node("PreviewImage", (face["pos"][0], y), (face["size"][0], face["pos"][1] + PERSON_H - y),
                     title=f"Encoded face{of} (aligned)", images=(face, 1))
    found = g.node("PreviewImage", (right_of(face, 40), face["pos"][1]), (FOUND_W, PERSON_H),
                   title=f"Faces found{of} (index numbers)", images=(face, 2))
    return [aligned, found]


def prompt(g, ckpt, x, **inject):
    """Prompt group: the prompt with the face token(s), and the negative prompt under it."""
    pos = g.node("F2DInjectFaceToken", (x, first_row(0)), (400, 340 if "face_2" in inject else 300),
                 clip=(ckpt, 1), **inject)
    neg = negative_prompt(g, ckpt, (x, below(pos)))
    g.group("Prompt", [pos, neg])
    return pos, neg


def negative_prompt(g, ckpt, pos, width=400):
    return g.node("CLIPTextEncode", pos, (width, 110), title="Negative prompt (empty, as in the paper)",
                  text=NEGATIVE, clip=(ckpt, 1))


def sampling(g, ckpt, positive, negative, x, width=512, height=512, prefix="face2diffusion"):
    """The paper's sampling: Euler ancestral, 30 steps, CFG 7, 512x512, empty negative prompt."""
    latent = g.node("EmptyLatentImage", (x, first_row(0)), (340, 110), width=width, height=height, batch_size=1)
    ks = g.node("KSampler", (x, below(latent)), (340, 270), model=(ckpt, 0), positive=positive,
                negative=negative, latent_image=(latent, 0), seed=0, steps=30, cfg=7.0,
                sampler_name="euler_ancestral", scheduler="normal", denoise=1.0)
    dec = g.node("VAEDecode", (x, below(ks)), (340, 50), samples=(ks, 0), vae=(ckpt, 2))
    save = g.node("SaveImage", (x, below(dec)), (340, 330), images=(dec, 0), filename_prefix=prefix)
    g.group("Sampling", [latent, ks, dec, save])


def column1(g, rows=1) -> float:
    """The x of the person column; with two rows further from Models (ROW_GAP), so that the
    encoder's wire up to the first row climbs before it reaches the second row's title."""
    return next_group_x(g.nodes[0]) + (ROW_GAP if rows > 1 else 0)


def second_row() -> float:
    """The top of the group under The person (Second person, Expression)."""
    return first_row(0) + PERSON_H + GROUP_PAD + GROUP_GAP


# --- the workflows --------------------------------------------------------------------------------

def basic(info):
    g = Graph(info)
    note = read_me(g, "## Face2Diffusion: one photo\n"
                   "## Write **f l** in the prompt where the person goes.\n" + FILES +
                   "### Several faces in the photo? *Faces found* numbers them: set face = index "
                   "and the number.", 250)
    ckpt, enc = models(g, below(note, GROUP_GAP) - TITLE_H)
    face = person(g, enc, column1(g), 0)
    pos, neg = prompt(g, ckpt, next_group_x(*g.nodes), title="Prompt with the face (write f l)",
                      face=(face, 0), text="a photo of f l as a chef in a restaurant kitchen")
    sampling(g, ckpt, (pos, 0), (neg, 0), next_group_x(*g.nodes))
    g.save("face2diffusion_basic.json")


def multi_reference(info):
    """Photos into Encode Face's own image inputs (image, image_2, ...): each encoded at its own
    size, where core Batch Images would crop them to the first one's."""
    g = Graph(info)
    slots = g.inputs_of_type("F2DEncodeFace", "IMAGE")
    if len(slots) < 3:
        raise SystemExit(f"F2DEncodeFace has image inputs {slots}: this workflow needs image, image_2, image_3")
    note = read_me(g, "## Face2Diffusion: several photos\n"
                   f"## Photos of the SAME person, up to {len(slots)}: their identities are averaged.\n"
                   "### Any sizes: each photo is encoded as it is. A photo without a face is skipped "
                   "(on_no_face).\n" + FILES, 250)
    ckpt, enc = models(g, below(note, GROUP_GAP) - TITLE_H)
    x, y = column1(g), first_row(0)
    imgs = []
    for i in range(3):
        imgs.append(g.node("LoadImage", (x, below(imgs[-1]) if imgs else y), (240, 330),
                           title=f"Photo {i + 1} of the person", image=f"face{i + 1}.jpg"))
    face = g.node("F2DEncodeFace", (right_of(imgs[0], 40), y), ENCODE_FACE, encoder=(enc, 0),
                  on_no_face="skip", **{s: (img, 0) for s, img in zip(slots, imgs)})
    # the crops beside Encode Face, and under both the photos side by side, every face numbered
    aligned = g.node("PreviewImage", (right_of(face, 40), y), (300, ENCODE_FACE[1]),
                     title="Encoded faces (aligned)", images=(face, 1))
    top = below(face)
    found = g.node("PreviewImage", (face["pos"][0], top), (aligned["pos"][0] + 300 - face["pos"][0],
                                                           imgs[-1]["pos"][1] + imgs[-1]["size"][1] - top),
                   title="Faces found in each photo (index numbers)", images=(face, 2))
    g.group("The person", imgs + [face, aligned, found])
    pos, neg = prompt(g, ckpt, next_group_x(*g.nodes), title="Prompt with the face (write f l)",
                      face=(face, 0), text="a photo of f l hiking in the mountains")
    sampling(g, ckpt, (pos, 0), (neg, 0), next_group_x(*g.nodes))
    g.save("face2diffusion_multi_reference.json")


def delayed_subject(info):
    g = Graph(info)
    note = read_me(g, "## Face2Diffusion: delayed subject\n"
                   "## 'a person' lays the picture out for the first 20 % of the steps, then **f l** "
                   "takes over.\n"
                   "### Keep the two prompts equal but for 'a person' / 'f l'. A later switch (0.2 in "
                   "both range nodes) follows the prompt more, the face less.\n" + FILES, 290)
    ckpt, enc = models(g, below(note, GROUP_GAP) - TITLE_H)
    face = person(g, enc, column1(g), 0)
    x, y = next_group_x(*g.nodes), first_row(0)
    cls = g.node("CLIPTextEncode", (x, y), (340, 120), title="Class prompt (early steps)",
                 text="a photo of a person as an astronaut on the moon", clip=(ckpt, 1))
    ident = g.node("F2DInjectFaceToken", (x, below(cls)), (340, 300), title="Identity prompt (later steps)",
                   clip=(ckpt, 1), face=(face, 0), text="a photo of f l as an astronaut on the moon")
    neg = negative_prompt(g, ckpt, (x, below(ident)), width=340)
    x2 = right_of(cls, 40)
    early = g.node("ConditioningSetTimestepRange", (x2, y), (270, 82), title="Class prompt until step 20%",
                   conditioning=(cls, 0), start=0.0, end=0.2)
    late = g.node("ConditioningSetTimestepRange", (x2, below(early)), (270, 82), title="Identity from step 20%",
                  conditioning=(ident, 0), start=0.2, end=1.0)
    both = g.node("ConditioningCombine", (x2, below(late)), (270, 50), title="Both, each in its steps",
                  conditioning_1=(early, 0), conditioning_2=(late, 0))
    g.group("Prompt", [cls, ident, neg, early, late, both])
    sampling(g, ckpt, (both, 0), (neg, 0), next_group_x(*g.nodes))
    g.save("face2diffusion_delayed_subject.json")


def two_people(info):
    g = Graph(info)
    note = read_me(g, "## Face2Diffusion: two people\n"
                   "## The first face goes where **f l** is written, the second where **g k** is.\n"
                   "### Trained on one person per image, the two can mix: try a few seeds.\n" + FILES, 270)
    ckpt, enc = models(g, below(note, GROUP_GAP) - TITLE_H, second_row=second_row())
    face = person(g, enc, column1(g, rows=2), 0, label="person 1 (f l)", who="person 1")
    face2 = person(g, enc, column1(g, rows=2), second_row(), photo="face_2.jpg",
                   group="Second person", label="person 2 (g k)", who="person 2")
    pos, neg = prompt(g, ckpt, next_group_x(*g.nodes), title="Prompt with both faces (f l, g k)",
                      face=(face, 0), face_2=(face2, 0),
                      text="a photo of f l and g k having coffee together in a cafe", trigger_2="g k")
    sampling(g, ckpt, (pos, 0), (neg, 0), next_group_x(*g.nodes))
    g.save("face2diffusion_two_people.json")


def two_people_regional(info):
    """Each person from their own prompt, drawn in their own half (core Conditioning (Set Area with
    Percentage) + Combine): every half's conditioning carries one identity, so the two cannot mix.
    Percentages keep the halves right at any image size; the image is wider than the paper's 512
    so that each half is a 384x512 portrait, a size SD1.x draws a person at."""
    g = Graph(info)
    note = read_me(g, "## Face2Diffusion: two people, each in their own half\n"
                   "## Person 1 is drawn in the left half from the first prompt, person 2 in the right half "
                   "from the second; write **f l** in both.\n"
                   "### The two faces are never in one prompt, so they do not mix. Describe the same scene "
                   "in both prompts.\n" + FILES, 290)
    ckpt, enc = models(g, below(note, GROUP_GAP) - TITLE_H, second_row=second_row())
    face = person(g, enc, column1(g, rows=2), 0, label="person 1 (left)", who="person 1")
    face2 = person(g, enc, column1(g, rows=2), second_row(), photo="face_2.jpg",
                   group="Second person", label="person 2 (right)", who="person 2")
    x, y, y2 = next_group_x(*g.nodes), first_row(0), first_row(second_row())
    # each prompt level with its person's row, the negative prompt between them
    left = g.node("F2DInjectFaceToken", (x, y), (340, 300), title="Prompt of person 1 (left, write f l)",
                  clip=(ckpt, 1), face=(face, 0), text="a photo of f l sitting in a cafe, smiling")
    right = g.node("F2DInjectFaceToken", (x, y2), (340, 300), title="Prompt of person 2 (right, write f l)",
                   clip=(ckpt, 1), face=(face2, 0), text="a photo of f l sitting in a cafe, laughing")
    neg = negative_prompt(g, ckpt, (x, below(left)), width=340)
    x2 = right_of(left, 40)
    # stacked beside the first prompt, as the range nodes of delayed_subject
    half1 = g.node("ConditioningSetAreaPercentage", (x2, y), HALF, title="Person 1: left half",
                   conditioning=(left, 0), width=0.5, height=1.0, x=0.0, y=0.0, strength=1.0)
    half2 = g.node("ConditioningSetAreaPercentage", (x2, below(half1)), HALF, title="Person 2: right half",
                   conditioning=(right, 0), width=0.5, height=1.0, x=0.5, y=0.0, strength=1.0)
    both = g.node("ConditioningCombine", (x2, below(half2)), (HALF[0], 50), title="Both halves",
                  conditioning_1=(half1, 0), conditioning_2=(half2, 0))
    g.group("Prompt", [left, right, neg, half1, half2, both])
    sampling(g, ckpt, (both, 0), (neg, 0), next_group_x(*g.nodes), width=768)
    g.save("face2diffusion_two_people_regional.json")


def expression(info):
    g = Graph(info)
    note = read_me(g, "## Face2Diffusion: expression\n"
                   "## The face from one photo, the expression from another (experimental).\n" + FILES +
                   f"### face2diffusion/ {EXPRESSION_MODEL}: for this mode\n", 250)
    ckpt, enc = models(g, below(note, GROUP_GAP) - TITLE_H, expression_model=EXPRESSION_MODEL,
                       second_row=second_row())
    face = person(g, enc, column1(g, rows=2), 0)
    x, y = column1(g, rows=2), first_row(second_row())
    ref = g.node("LoadImage", (x, y), (260, 330), title="Expression reference (anyone)", image="expression.jpg")
    expr = g.node("F2DExpressionEmbed", (right_of(ref, 40), y), (300, 200), encoder=(enc, 0), reference=(ref, 0),
                  mode="from reference image(s)", strength=1.0)
    need = g.note((right_of(expr, 40), y), "## Needs epoch_20.pth\n"
                  "### Optional: Deep3DFaceRecon's epoch_20.pth in models/face2diffusion/ (see the README), "
                  "picked as expression_model in the loader.\n"
                  "### strength 0: the prompt decides; 1: the reference's expression. Lower it if faces "
                  "distort.", (320, 330), title="Expression: optional")
    g.group("Expression", [ref, expr, need])
    pos, neg = prompt(g, ckpt, next_group_x(*g.nodes), title="Prompt with the face (write f l)",
                      face=(face, 0), encoder=(enc, 0), expression=(expr, 0), text="a close-up photo of f l in a park")
    sampling(g, ckpt, (pos, 0), (neg, 0), next_group_x(*g.nodes))
    g.save("face2diffusion_expression.json")


# --- SDXL: the same graph on an SDXL-family checkpoint with an F2D-SDXL mapping --------------------------

SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
SDXL_MAPPING = "mapping_sdxl.safetensors"  # the file name docs/training.md and the README give the export


def sdxl(info):
    """basic() on SDXL: the mapping must be trained first (no official F2D-SDXL weights exist)."""
    g = Graph(info)
    note = read_me(g, "## Face2Diffusion on SDXL\n"
                   "## Needs an F2D-SDXL mapping: train it first (no official one exists).\n"
                   "### `python -m f2d_core.train mapping --base sdxl ...` (docs/training.md), then put "
                   f"{SDXL_MAPPING} in models/face2diffusion.\n"
                   f"### checkpoints/ an SDXL-family model (SDXL, SSD-1B, Vega, Pony, Illustrious)\n"
                   f"### face2diffusion/ {MSID}, {SDXL_MAPPING}\n"
                   f"### insightface/models/{PACK}/ det_10g.onnx\n", 290)
    ckpt, enc = models(g, below(note, GROUP_GAP) - TITLE_H, checkpoint=SDXL_CHECKPOINT, mapping=SDXL_MAPPING)
    face = person(g, enc, column1(g), 0)
    pos, neg = prompt(g, ckpt, next_group_x(*g.nodes), title="Prompt with the face (write f l)",
                      face=(face, 0), text="a photo of f l as a chef in a restaurant kitchen")
    sampling(g, ckpt, (pos, 0), (neg, 0), next_group_x(*g.nodes), width=1024, height=1024, prefix="face2diffusion_sdxl")
    g.save("face2diffusion_sdxl.json")


WORKFLOWS = [basic, multi_reference, delayed_subject, two_people, two_people_regional, expression, sdxl]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--server")
    src.add_argument("--object-info")
    args = ap.parse_args()
    if args.server:
        r = requests.get(args.server.rstrip("/") + "/object_info", timeout=60)
        r.raise_for_status()
        info = r.json()
    else:
        with open(args.object_info) as f:
            info = json.load(f)
    os.makedirs(os.path.join(REPO, "workflows"), exist_ok=True)
    for make in WORKFLOWS:
        make(info)


if __name__ == "__main__":
    main()
