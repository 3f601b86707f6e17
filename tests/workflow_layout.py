"""How an example workflow is laid out, as a person looking at it would judge it.

Used on the files (tests/test_workflow_layout.py) and on the boxes the real frontend draws
(tests/host/test_frontend_host.py). A node's box is its pos/size plus the title bar above it.
"""
from __future__ import annotations

from collections import Counter

TITLE_H = 30          # LiteGraph's NODE_TITLE_HEIGHT: drawn above a node's pos
GROUP_TITLE_H = 34    # a group's title bar at font size 24 (LiteGraph: font_size * 1.4)
MARGIN = 10           # px that must stay free between two node boxes
NOTES = {"Note", "MarkdownNote"}
BASE_GROUPS = ("Models", "The person", "Prompt", "Sampling")
# core nodes whose type says nothing about their role in the graph: always titled
GENERIC = {"LoadImage", "PreviewImage", "CLIPTextEncode", "ConditioningSetTimestepRange", "ImageBatch"}
MIN_VIEW_SCALE = 0.65  # below this the default view's text is too small to read
WINDOW = (1860, 960)   # the canvas of a 1920x1080 window, less the frontend's menus
NOTE_MAX_CHARS = 450   # a note longer than this is a manual, not a note


def node_box(node: dict) -> list:
    return [node["pos"][0], node["pos"][1] - TITLE_H, node["size"][0], node["size"][1] + TITLE_H]


def from_workflow(wf: dict) -> dict:
    """{"nodes": [{id, type, title, box}], "groups": [{title, box}], "links": [(src, dst)], "view"}."""
    return {"nodes": [{"id": n["id"], "type": n["type"], "title": n.get("title"), "box": node_box(n)}
                      for n in wf["nodes"]],
            "groups": [{"title": g.get("title"), "box": list(g["bounding"])} for g in wf.get("groups", [])],
            "links": [(link[1], link[3]) for link in wf.get("links", [])],
            "view": (wf.get("extra") or {}).get("ds")}


def overlap(a, b, margin=0.0) -> bool:
    """Do boxes a and b (x, y, w, h) come closer than `margin`?"""
    return (a[0] < b[0] + b[2] + margin and b[0] < a[0] + a[2] + margin
            and a[1] < b[1] + b[3] + margin and b[1] < a[1] + a[3] + margin)


def inside(inner, outer) -> bool:
    return (inner[0] >= outer[0] and inner[1] >= outer[1] and inner[0] + inner[2] <= outer[0] + outer[2]
            and inner[1] + inner[3] <= outer[1] + outer[3])


def required_groups(layout: dict) -> list[str]:
    types = Counter(n["type"] for n in layout["nodes"])
    extra = (["Expression"] if types["F2DExpressionEmbed"] else []) + \
        (["Second person"] if types["F2DEncodeFace"] >= 2 else [])
    return list(BASE_GROUPS) + extra


def name(n: dict) -> str:
    return f"node {n['id']} ({n['title'] or n['type']})"


def overlap_problems(layout: dict, margin: float = MARGIN) -> list[str]:
    """Node boxes (title bars included) closer than `margin`, and groups that overlap."""
    out = []
    nodes, groups = layout["nodes"], layout["groups"]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            if overlap(a["box"], b["box"], margin):
                out.append(f"{name(a)} and {name(b)} overlap or are closer than {margin} px: {a['box']} / {b['box']}")
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            if overlap(a["box"], b["box"], margin):
                out.append(f"groups {a['title']!r} and {b['title']!r} overlap or are closer than {margin} px: "
                           f"{a['box']} / {b['box']}")
    return out


def membership_problems(layout: dict) -> list[str]:
    """Nodes outside every group (notes may be, if clear of all groups), in two, or under a group's title."""
    out = []
    nodes, groups = layout["nodes"], layout["groups"]
    for n in nodes:
        holders = [g for g in groups if inside(n["box"], g["box"])]
        if n["type"] not in NOTES and len(holders) != 1:
            out.append(f"{name(n)} is inside {len(holders)} groups, not one")
        elif not holders and any(overlap(n["box"], g["box"]) for g in groups):
            out.append(f"{name(n)} lies across a group's border")
        for g in holders:
            if n["box"][1] < g["box"][1] + GROUP_TITLE_H:
                out.append(f"{name(n)} covers the title of group {g['title']!r}")
    return out


def flow_problems(layout: dict) -> list[str]:
    """Links that run backwards (right to left): the flow reads left to right, or straight down."""
    by_id = {n["id"]: n for n in layout["nodes"]}
    return [f"the link {name(by_id[s])} -> {name(by_id[d])} runs right to left"
            for s, d in layout["links"] if by_id[d]["box"][0] < by_id[s]["box"][0]]


def title_problems(layout: dict) -> list[str]:
    """Untitled nodes whose role a newcomer cannot tell: a type used twice, or a generic core node."""
    out = []
    counts = Counter(n["type"] for n in layout["nodes"] if n["type"] not in NOTES)
    for n in layout["nodes"]:
        if n["type"] in NOTES:
            continue
        if not n["title"] and (counts[n["type"]] > 1 or n["type"] in GENERIC):
            why = f"{counts[n['type']]} nodes are {n['type']}" if counts[n["type"]] > 1 else "its type is generic"
            out.append(f"node {n['id']} ({n['type']}) has no title, and {why}")
    titles = Counter((n["type"], n["title"]) for n in layout["nodes"] if n["title"] and n["type"] not in NOTES)
    out += [f"{count} {t} nodes share the title {title!r}" for (t, title), count in titles.items() if count > 1]
    return out


def group_problems(layout: dict) -> list[str]:
    titles = [g["title"] for g in layout["groups"]]
    out = [f"no group {t!r}" for t in required_groups(layout) if t not in titles]
    return out + [f"two groups are titled {t!r}" for t, c in Counter(titles).items() if c > 1]


def preview_problems(wf: dict) -> list[str]:
    """Every Encode Face shows what it did: its `faces` output (every face found, numbered as
    `index` counts) wired to a Preview Image titled "Faces found ...", its `aligned` output too."""
    out = []
    by_id = {n["id"]: n for n in wf["nodes"]}
    for n in wf["nodes"]:
        if n["type"] != "F2DEncodeFace":
            continue
        slots = {s["name"]: s for s in n.get("outputs", [])}
        for wanted in ("aligned", "faces"):
            slot = slots.get(wanted)
            if slot is None:
                out.append(f"{name(layout_node(n))} has no {wanted} output: regenerate the workflow")
                continue
            ends = [by_id[link[3]] for link in wf.get("links", []) if link[0] in (slot["links"] or [])]
            previews = [e for e in ends if e["type"] == "PreviewImage"]
            if not previews:
                out.append(f"{name(layout_node(n))}: its {slot['name']} output goes to no Preview Image")
            elif slot["name"] == "faces" and not any((e.get("title") or "").startswith("Faces found")
                                                     for e in previews):
                out.append(f"{name(layout_node(n))}: the Preview Image of its faces is not titled 'Faces found ...'")
    return out


def batch_problems(wf: dict) -> list[str]:
    """Photos reach Encode Face on its own image inputs: core Batch Images crops photos of other sizes."""
    return [f"{name(layout_node(n))} batches photos: wire them to Encode Face's image_2.. instead"
            for n in wf["nodes"] if n["type"] in ("ImageBatch", "ImageBatchMulti")]


def layout_node(n: dict) -> dict:
    return {"id": n["id"], "type": n["type"], "title": n.get("title")}


def note_problems(wf: dict, max_chars: int = NOTE_MAX_CHARS) -> list[str]:
    """Notes are short: read at a glance, never a manual."""
    return [f"{name(layout_node(n))} has {len(n['widgets_values'][0])} characters, more than {max_chars}"
            for n in wf["nodes"] if n["type"] in NOTES and len(n["widgets_values"][0]) > max_chars]


def view_problems(layout: dict, window=WINDOW) -> list[str]:
    """The stored view (extra.ds): readable, and the whole graph in a 1920x1080 window."""
    view = layout["view"]
    if not view or "scale" not in view:
        return ["no default view (extra.ds)"]
    s, (ox, oy) = view["scale"], view["offset"]
    out = [] if s >= MIN_VIEW_SCALE else [f"the default zoom {s} is below {MIN_VIEW_SCALE}: text is unreadable"]
    for item in layout["nodes"] + layout["groups"]:
        x, y, w, h = item["box"]
        if (x + ox) * s < 0 or (y + oy) * s < 0 or (x + w + ox) * s > window[0] or (y + h + oy) * s > window[1]:
            out.append(f"{name(item) if 'id' in item else 'group ' + repr(item['title'])} is outside the default view")
    return out


def geometry_problems(layout: dict) -> list[str]:
    """What the frontend's drawing can get wrong: overlaps and group membership."""
    return overlap_problems(layout) + membership_problems(layout)
