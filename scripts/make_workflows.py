"""Writes the example workflows in workflows/ (ComfyUI UI format, drag-and-drop loadable).

Widget order, socket types and output names come from a server's /object_info, so the files
match what the frontend itself would save. Re-run after changing a node's inputs:

    python scripts/make_workflows.py --server http://127.0.0.1:8188      # ComfyUI with this pack
    python scripts/make_workflows.py --object-info object_info.json
"""
from __future__ import annotations

import argparse
import json
import os
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

# the file names the README tells users to use
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
MSID, MAPPING, PACK = "msid.pt", "mapping.pt", "buffalo_l"
EXPRESSION_MODEL = "epoch_20.pth"
NEGATIVE = ""  # the paper's setting: an empty negative prompt


class Graph:
    def __init__(self, object_info: dict):
        self.info = object_info
        self.nodes, self.links = [], []

    def _spec(self, node_type):
        if node_type not in self.info:
            raise SystemExit(f"{node_type} is not in /object_info: is the Face2Diffusion pack loaded?")
        return self.info[node_type]

    def node(self, node_type, pos, title=None, size=(320, 180), **values):
        """Add a node; `values` are widget values by name or (node, output_index) links."""
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
            is_widget = isinstance(kind, list) or kind in WIDGET_TYPES
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
                value = opts.get("default", kind[0] if isinstance(kind, list) and kind else None)
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

    def note(self, pos, text, size=(420, 260)):
        self.nodes.append({"id": len(self.nodes) + 1, "type": "Note", "pos": list(pos), "size": list(size),
                           "flags": {}, "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [],
                           "properties": {}, "widgets_values": [text], "color": "#432", "bgcolor": "#653"})

    def save(self, name):
        for n in self.nodes:
            for o in n["outputs"]:
                if not o["links"]:
                    o["links"] = None  # as the frontend saves unconnected outputs
        wf = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
              "links": self.links, "groups": [], "config": {},
              "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}
        path = os.path.join(REPO, "workflows", name)
        with open(path, "w") as f:
            json.dump(wf, f, indent=1)
            f.write("\n")
        print("wrote", path)


SETUP = (f"Models (see the pack's README):\n- models/checkpoints/{CHECKPOINT} (any SD1.x checkpoint)\n"
         f"- models/face2diffusion/{MSID} and {MAPPING}\n- models/insightface/models/{PACK}/det_10g.onnx\n")


def base(g, photo="face.jpg", x=0):
    """Checkpoint, encoder, one reference photo and its face: the part every workflow shares."""
    ckpt = g.node("CheckpointLoaderSimple", (x, 0), ckpt_name=CHECKPOINT)
    enc = g.node("LoadF2DEncoder", (x, 160), size=(320, 230), msid=MSID, mapping=MAPPING, detector=PACK)
    img = g.node("LoadImage", (x, 420), size=(320, 320), image=photo)
    face = g.node("F2DEncodeFace", (x + 360, 420), encoder=(enc, 0), image=(img, 0))
    g.node("PreviewImage", (x + 360, 640), title="What was encoded", size=(220, 250), images=(face, 1))
    return ckpt, enc, face


def sample(g, ckpt, positive, x=760):
    """The paper's sampling: Euler ancestral, 30 steps, CFG 7, 512x512, empty negative prompt."""
    neg = g.node("CLIPTextEncode", (x, 330), title="Negative prompt (empty, as in the paper)",
                 text=NEGATIVE, clip=(ckpt, 1))
    latent = g.node("EmptyLatentImage", (x, 520), width=512, height=512, batch_size=1)
    ks = g.node("KSampler", (x + 360, 0), size=(320, 262), model=(ckpt, 0), positive=positive,
                negative=(neg, 0), latent_image=(latent, 0), seed=0, steps=30, cfg=7.0,
                sampler_name="euler_ancestral", scheduler="normal", denoise=1.0)
    dec = g.node("VAEDecode", (x + 360, 300), samples=(ks, 0), vae=(ckpt, 2))
    g.node("SaveImage", (x + 720, 0), size=(420, 470), images=(dec, 0), filename_prefix="face2diffusion")


def basic(info):
    g = Graph(info)
    ckpt, enc, face = base(g)
    pos = g.node("F2DInjectFaceToken", (760, 0), size=(380, 300), clip=(ckpt, 1), face=(face, 0),
                 text="a photo of f l as a chef in a restaurant kitchen")
    sample(g, ckpt, (pos, 0), x=1180)
    g.note((0, -300), "Face2Diffusion: basic\n\n" + SETUP + "- input/face.jpg: a photo of the person "
           "(or pick any image in Load Image)\n\nWrite 'f l' in the prompt where the person goes. Sampling "
           "follows the paper: Euler ancestral, 30 steps, CFG 7, 512x512, empty negative prompt.")
    g.save("face2diffusion_basic.json")


def multi_reference(info):
    g = Graph(info)
    ckpt = g.node("CheckpointLoaderSimple", (0, 0), ckpt_name=CHECKPOINT)
    enc = g.node("LoadF2DEncoder", (0, 160), size=(320, 230), msid=MSID, mapping=MAPPING, detector=PACK)
    imgs = [g.node("LoadImage", (0, 420 + 340 * i), size=(320, 320), image=f"face{i + 1}.jpg") for i in range(3)]
    b1 = g.node("ImageBatch", (360, 420), image1=(imgs[0], 0), image2=(imgs[1], 0))
    b2 = g.node("ImageBatch", (360, 560), image1=(b1, 0), image2=(imgs[2], 0))
    face = g.node("F2DEncodeFace", (360, 700), encoder=(enc, 0), image=(b2, 0), on_no_face="skip")
    g.node("PreviewImage", (360, 930), title="What was encoded", size=(260, 250), images=(face, 1))
    pos = g.node("F2DInjectFaceToken", (760, 0), size=(380, 300), clip=(ckpt, 1), face=(face, 0),
                 text="a photo of f l hiking in the mountains")
    sample(g, ckpt, (pos, 0), x=1180)
    g.note((0, -300), "Face2Diffusion: several photos of one person\n\n" + SETUP + "- input/face1.jpg, "
           "face2.jpg, face3.jpg: photos of the SAME person\n\nThe identity is the mean of the photos' MSID "
           "features, which is steadier than one photo. Photos without a face are skipped (on_no_face). Add "
           "more photos with more Batch Images nodes. Batch Images scales every photo to the first one's size "
           "and centre-crops it, so use photos of similar framing (or crop them alike).")
    g.save("face2diffusion_multi_reference.json")


def delayed_subject(info):
    g = Graph(info)
    ckpt, enc, face = base(g)
    cls = g.node("CLIPTextEncode", (760, 0), title="Class prompt (early steps)",
                 text="a photo of a person as an astronaut on the moon", clip=(ckpt, 1))
    ident = g.node("F2DInjectFaceToken", (760, 200), size=(380, 300), clip=(ckpt, 1), face=(face, 0),
                   text="a photo of f l as an astronaut on the moon")
    early = g.node("ConditioningSetTimestepRange", (1180, 0), conditioning=(cls, 0), start=0.0, end=0.2)
    late = g.node("ConditioningSetTimestepRange", (1180, 150), conditioning=(ident, 0), start=0.2, end=1.0)
    both = g.node("ConditioningCombine", (1180, 300), conditioning_1=(early, 0), conditioning_2=(late, 0))
    sample(g, ckpt, (both, 0), x=1560)
    g.note((0, -300), "Face2Diffusion: delayed subject conditioning\n\n" + SETUP + "- input/face.jpg\n\n"
           "The variant the paper compares against (DSC): the class prompt ('a person') conditions the "
           "first 20% of the steps, so the layout follows the text; the identity takes over after. Keep "
           "both prompts the same apart from 'a person' / 'f l'. Move the 0.2 in both range nodes to trade "
           "identity for editability.")
    g.save("face2diffusion_delayed_subject.json")


def two_people(info):
    g = Graph(info)
    ckpt, enc, face = base(g, photo="face.jpg")
    img2 = g.node("LoadImage", (0, 760), size=(320, 320), image="face_2.jpg")
    face2 = g.node("F2DEncodeFace", (360, 900), encoder=(enc, 0), image=(img2, 0))
    pos = g.node("F2DInjectFaceToken", (760, 0), size=(380, 340), clip=(ckpt, 1), face=(face, 0),
                 face_2=(face2, 0), text="a photo of f l and g k having coffee together in a cafe",
                 trigger_2="g k")
    sample(g, ckpt, (pos, 0), x=1180)
    g.note((0, -300), "Face2Diffusion: two people\n\n" + SETUP + "- input/face.jpg and input/face_2.jpg: "
           "one photo of each person\n\nThe first face goes where 'f l' is written, the second where 'g k' "
           "is (trigger_2). Face2Diffusion was trained with one person per image, so two identities can mix; "
           "generate a few seeds.")
    g.save("face2diffusion_two_people.json")


def expression(info):
    g = Graph(info)
    ckpt = g.node("CheckpointLoaderSimple", (0, 0), ckpt_name=CHECKPOINT)
    enc = g.node("LoadF2DEncoder", (0, 160), size=(320, 260), msid=MSID, mapping=MAPPING, detector=PACK,
                 expression_model=EXPRESSION_MODEL)
    img = g.node("LoadImage", (0, 450), size=(320, 320), image="face.jpg")
    face = g.node("F2DEncodeFace", (360, 450), encoder=(enc, 0), image=(img, 0))
    ref = g.node("LoadImage", (0, 800), size=(320, 320), image="expression.jpg", title="Expression reference")
    expr = g.node("F2DExpressionEmbed", (360, 800), size=(320, 200), encoder=(enc, 0), reference=(ref, 0),
                  mode="from reference image(s)", strength=1.0)
    pos = g.node("F2DInjectFaceToken", (760, 0), size=(380, 340), clip=(ckpt, 1), face=(face, 0),
                 encoder=(enc, 0), expression=(expr, 0), text="a close-up photo of f l in a park")
    sample(g, ckpt, (pos, 0), x=1180)
    g.note((0, -300), "Face2Diffusion: expression from a reference photo (experimental)\n\n" + SETUP +
           f"- models/face2diffusion/{EXPRESSION_MODEL}: Deep3DFaceRecon weights (see the README)\n"
           "- input/face.jpg: the person; input/expression.jpg: a photo with the expression to copy (anyone)"
           "\n\nstrength 0 = the learned neutral expression (the prompt decides), 1 = the reference's "
           "expression, up to 2 exaggerates. The authors did not publish how they normalised these "
           "coefficients, so results are experimental: lower strength if faces distort.")
    g.save("face2diffusion_expression.json")


WORKFLOWS = [basic, multi_reference, delayed_subject, two_people, expression]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--server")
    src.add_argument("--object-info")
    args = ap.parse_args()
    if args.server:
        with urllib.request.urlopen(args.server.rstrip("/") + "/object_info") as r:
            info = json.load(r)
    else:
        with open(args.object_info) as f:
            info = json.load(f)
    os.makedirs(os.path.join(REPO, "workflows"), exist_ok=True)
    for make in WORKFLOWS:
        make(info)


if __name__ == "__main__":
    main()
