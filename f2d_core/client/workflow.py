"""UI-format workflows (what the ComfyUI frontend saves) -> API/prompt format (what POST /prompt runs).

A saved workflow only has `widgets_values`, a list in the order the frontend created its widgets;
which input each value belongs to comes from the server's /object_info (the inputs of
`input.required` then `input.optional`, in `input_order`). The frontend adds widgets that are not
inputs: a control value ("randomize", ...) after seed-like inputs, and one upload button after the
required inputs of nodes with an `image_upload` combo. Frontend-only nodes (Note, Reroute,
PrimitiveNode) never reach the server; muted nodes are dropped and bypassed ones pass a same-typed
input through. Subgraphs and group nodes are not expanded: unpack them in the UI first.
"""
from __future__ import annotations

import copy
import json

from ..errors import F2DError

MUTED, BYPASSED = 2, 4
NOTES = {"Note", "MarkdownNote"}
FRONTEND_ONLY = NOTES | {"Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")
UPLOAD_VALUES = {"image", "video", "upload"}


class WorkflowError(F2DError):
    """A workflow file that cannot be read, converted or filled in."""


class MissingNodeTypes(WorkflowError):
    """The workflow uses node types the server does not have."""

    def __init__(self, types: list[str], log_excerpt: str = ""):
        self.types = types
        hint = f"\n{log_excerpt}" if log_excerpt else ""
        if any("F2D" in t for t in types):
            hint = (" For the F2D nodes: install this pack into ComfyUI/custom_nodes/ and its requirements "
                    "with ComfyUI's python (see the README)." + hint)
        super().__init__(
            f"the ComfyUI server has no node type {', '.join(types)}. The node pack that provides "
            f"{'it' if len(types) == 1 else 'them'} is not installed, or it failed to import: look for "
            f"'Cannot import ... module for custom nodes' in the ComfyUI log.{hint}")


def load_workflow(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            wf = json.load(f)
    except FileNotFoundError:
        raise WorkflowError(f"{path}: workflow file not found.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkflowError(f"{path}: not a JSON workflow ({e}). Save it from ComfyUI (Workflow > Save, "
                            "or Export (API)).") from None
    if not isinstance(wf, dict) or not ("nodes" in wf or is_api_format(wf)):
        raise WorkflowError(f"{path}: neither a UI workflow (no 'nodes' list) nor an API prompt "
                            "(no nodes with 'class_type').")
    return wf


def is_api_format(wf: dict) -> bool:
    return bool(wf) and all(isinstance(v, dict) and "class_type" in v for v in wf.values())


def input_specs(info: dict):
    """(name, spec, section) of a node's required then optional inputs, in the server's order."""
    order = info.get("input_order", {})
    for section in ("required", "optional"):
        specs = info.get("input", {}).get(section) or {}
        for name in order.get(section) or list(specs):
            if name in specs:
                yield name, specs[name], section


def spec_options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def combo_options(spec) -> list | None:
    """The choices of a combo input (V1 list or V3 "COMBO"), None for other types."""
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return spec_options(spec).get("options", [])
    return None


def is_widget(spec) -> bool:
    if spec_options(spec).get("forceInput"):
        return False
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def _has_control(name: str, spec) -> bool:
    # the frontend adds "control after generate" for flagged inputs and, by name, for seeds
    return bool(spec_options(spec).get("control_after_generate")) or (
        spec[0] == "INT" and name in ("seed", "noise_seed"))


def default_value(spec):
    opts, options = spec_options(spec), combo_options(spec)
    if "default" in opts:
        return opts["default"]
    if options is not None:
        return options[0] if options else None
    return {"INT": opts.get("min", 0), "FLOAT": opts.get("min", 0.0), "STRING": "",
            "BOOLEAN": False}.get(spec[0])


def widget_layout(info: dict) -> list[tuple[str, str | None, list | None]]:
    """The slots of `widgets_values`: ("value", name, spec), ("control", ...) or ("upload", ...)."""
    slots = []
    for section in ("required", "optional"):
        upload = False
        for name, spec, sec in input_specs(info):
            if sec != section or not is_widget(spec):
                continue
            slots.append(("value", name, spec))
            if _has_control(name, spec):
                slots.append(("control", name, spec))
            upload |= section == "required" and any(spec_options(spec).get(k) for k in UPLOAD_OPTIONS)
        if upload:  # the frontend appends its upload button after the required inputs
            slots.append(("upload", None, None))
    return slots


def widget_values(node: dict, info: dict) -> dict:
    """{input name: value} for every widget of the node; missing trailing values get defaults."""
    saved = node.get("widgets_values")
    layout = [s for s in widget_layout(info) if s[0] == "value"]
    if isinstance(saved, dict):  # some packs save widgets by name
        return {name: saved.get(name, default_value(spec)) for _, name, spec in layout}
    saved, out, i = list(saved or []), {}, 0
    for kind, name, spec in widget_layout(info):
        here = saved[i] if i < len(saved) else None
        if kind == "value":
            out[name] = here if i < len(saved) else default_value(spec)
            i += 1
        elif kind == "control" and (isinstance(here, bool) or here in CONTROL_VALUES):
            i += 1
        elif kind == "upload" and i < len(saved) and (here is None or here in UPLOAD_VALUES):
            i += 1
    return out


class _Graph:
    def __init__(self, wf: dict):
        self.nodes = {str(n["id"]): n for n in wf.get("nodes", [])}
        self.links = {}
        for link in wf.get("links") or []:
            if isinstance(link, dict):  # newer schema writes links as objects
                link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"],
                        link["target_slot"], link.get("type")]
            self.links[link[0]] = (str(link[1]), link[2], link[5] if len(link) > 5 else None)

    def resolve(self, link_id, seen=frozenset()):
        """Follow a link to the node that really produces it: ("link", [id, slot]),
        ("value", v) from a PrimitiveNode, or None when nothing does (muted, unconnected)."""
        if link_id is None or link_id in seen:
            return None
        if link_id not in self.links:
            raise WorkflowError(f"the workflow is damaged: link {link_id} is used by a node but not "
                                "listed in 'links'. Re-save it from ComfyUI.")
        origin, slot, ltype = self.links[link_id]
        node, seen = self.nodes.get(origin), seen | {link_id}
        if node is None:
            raise WorkflowError(f"the workflow is damaged: link {link_id} comes from node {origin}, "
                                "which is not in the workflow. Re-save it from ComfyUI.")
        kind, inputs = node.get("type"), node.get("inputs") or []
        if kind == "PrimitiveNode":
            return ("value", (node.get("widgets_values") or [None])[0])
        if kind == "Reroute":
            return self.resolve(inputs[0].get("link") if inputs else None, seen)
        if kind in NOTES or node.get("mode") == MUTED:
            return None
        if node.get("mode") == BYPASSED:
            outputs = node.get("outputs") or []
            want = ltype or (outputs[slot].get("type") if slot < len(outputs) else None)
            types = [i.get("type") for i in inputs]
            pick = slot if slot < len(types) and types[slot] == want else (
                types.index(want) if want in types else None)
            return None if pick is None else self.resolve(inputs[pick].get("link"), seen)
        return ("link", [origin, slot])


def _check_expandable(wf: dict, object_info: dict) -> None:
    subgraphs = {s.get("id") for s in (wf.get("definitions") or {}).get("subgraphs") or []}
    for node in wf.get("nodes", []):
        t = str(node.get("type"))
        if t in subgraphs or t.startswith(("workflow>", "workflow/")):
            raise WorkflowError(f"node {node.get('id')} ({node.get('title') or t}) is a subgraph or group "
                                "node, which this converter does not expand. In ComfyUI, right-click it, "
                                "choose Unpack Subgraph (or Convert to nodes), and save the workflow again.")


def to_api(wf: dict, object_info: dict) -> dict:
    """Convert a UI workflow to the API prompt format; an API prompt is returned as a copy."""
    if is_api_format(wf):
        return copy.deepcopy(wf)
    _check_expandable(wf, object_info)
    graph = _Graph(wf)
    live = [n for n in graph.nodes.values()
            if n.get("type") not in FRONTEND_ONLY and n.get("mode") not in (MUTED, BYPASSED)]
    missing = sorted({n.get("type") for n in live if n.get("type") not in object_info})
    if missing:
        raise MissingNodeTypes(missing)
    prompt = {}
    for node in sorted(live, key=lambda n: int(n["id"]) if str(n["id"]).isdigit() else 0):
        info = object_info[node["type"]]
        values = widget_values(node, info)
        links = {}
        for inp in node.get("inputs") or []:
            name = (inp.get("widget") or {}).get("name") or inp.get("name")
            if inp.get("link") is not None:
                links[name] = inp["link"]
        inputs = {}
        for name, spec, _ in input_specs(info):
            src = graph.resolve(links.pop(name)) if name in links else None
            if src is not None:
                inputs[name] = src[1]
            elif name in values:  # a converted widget whose link leads nowhere keeps its value
                inputs[name] = values[name]
        for name, link_id in links.items():  # sockets the server did not declare (dynamic inputs)
            src = graph.resolve(link_id)
            if src is not None:
                inputs[name] = src[1]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"],
                                   "_meta": {"title": node.get("title") or info.get("display_name") or node["type"]}}
    return prompt


def find_nodes(prompt: dict, class_type: str, title: str | None = None) -> list[str]:
    return [nid for nid, n in prompt.items() if n.get("class_type") == class_type
            and (title is None or n.get("_meta", {}).get("title") == title)]


def _describe(prompt: dict, ids: list[str]) -> str:
    return ", ".join(f"{i} '{prompt[i].get('_meta', {}).get('title', '')}'" for i in ids)


def find_node(prompt: dict, class_type: str, title: str | None = None) -> str:
    """The id of the one node of that type (and title); an error when there is none or several."""
    ids = find_nodes(prompt, class_type, title)
    if len(ids) == 1:
        return ids[0]
    every = find_nodes(prompt, class_type)
    if not ids:
        found = f"; its {class_type} nodes are {_describe(prompt, every)}" if every else ""
        what = f"{class_type} node titled {title!r}" if title else f"{class_type} node"
        raise WorkflowError(f"the workflow has no {what}{found}. Use a workflow that has one.")
    raise WorkflowError(f"the workflow has {len(ids)} {class_type} nodes ({_describe(prompt, ids)}); "
                        "give the title of the one to use, or keep only one.")


def get_input(prompt: dict, class_type: str, name: str, title: str | None = None) -> tuple[str, object]:
    """(node id, value) of `name` on the one `class_type` node (chosen by title when there are several)."""
    nid = find_node(prompt, class_type, title)
    inputs = prompt[nid]["inputs"]
    if name not in inputs:
        raise WorkflowError(f"{class_type} node {nid} has no input {name!r} (it has: {', '.join(inputs)}). "
                            "The node pack may be a different version than this workflow expects.")
    return nid, inputs[name]


def set_input(prompt: dict, class_type: str, name: str, value, title: str | None = None) -> str:
    """Set `name` on the one `class_type` node (chosen by title when there are several); a link
    there is replaced by the value. Returns the node id."""
    nid, _ = get_input(prompt, class_type, name, title)
    prompt[nid]["inputs"][name] = value
    return nid


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)

