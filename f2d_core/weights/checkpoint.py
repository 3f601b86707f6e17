"""Reading and checking weight files: official `.pt` pickles and `.safetensors`.

Pickles are read with `torch.load(weights_only=True)`: a file that would run code
when unpickled is refused. Every file is checked against the exact key set and shapes
of the module it is meant for, and a wrong file is described ("this is the mapping
checkpoint, not the MSID encoder") instead of failing deep inside load_state_dict.

A mapping network belongs to a base model family (models/families.py): the official
`mapping.pt` is SD1.x's (768-value words); an F2D-SDXL mapping is a .safetensors whose words
are 768 + 1280 = 2048 values, with metadata saying so (`f2d_family`, `f2d_widths`,
`f2d_trigger`, `f2d_msid_sha256`, `f2d_training`). The family is read from the shapes, and a
file whose metadata says otherwise is refused.
"""
from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from typing import Callable

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError
from ..models.families import FAMILIES, SD1, Family, family as family_named
from .outputs import check_output_path, write_atomic

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class Kind:
    name: str             # key in KINDS
    title: str            # what users call it
    file_names: tuple     # the names the README tells users to use
    module: Callable      # builds the nn.Module whose state_dict the file must match
    signature: str        # a key only this kind has


def _msid():
    from ..models.msid import MSIDEncoder
    return MSIDEncoder()


def _mapping(family: Family = SD1):
    from ..models.mapping import MappingNetwork
    return MappingNetwork(token_dim=family.token_width)


def _deep3d():
    from ..models.deep3d import ReconNet
    return ReconNet()


KINDS: dict[str, Kind] = {
    "msid": Kind("msid", "the MSID identity encoder", ("msid.pt", "msid.safetensors"), _msid,
                 "norms.layer_11.0.running_mean"),
    "mapping": Kind("mapping", "the mapping network", ("mapping.pt", "mapping.safetensors"), _mapping,
                    "i2t_first.fc_out.weight"),
    # Deep3DFaceRecon_pytorch's epoch_20.pth holds {"net_recon": state_dict, "opt_00": ..., "sched_00": ...}
    "deep3d": Kind("deep3d", "the Deep3DFaceRecon expression regressor", ("epoch_20.pth", "epoch_20.safetensors"),
                   _deep3d, "final_layers.1.weight"),
}

# Wrappers around a state_dict: {"state_dict": sd} (common), {"net_recon": sd, ...} (epoch_20.pth)
_WRAPPERS = ("state_dict", "net_recon")

# Files users mix up with ours, recognised by a key prefix, so the message can name them.
_FOREIGN = (
    ("model.diffusion_model.", "a Stable Diffusion checkpoint (it belongs in models/checkpoints)"),
    ("text_model.", "a CLIP text encoder"),
    ("cond_stage_model.", "a Stable Diffusion checkpoint (it belongs in models/checkpoints)"),
    ("lora_", "a LoRA"),
    ("net_recon.", "a Deep3DFaceRecon checkpoint (the expression regressor)"),
    ("image_proj_model.", "an IP-Adapter / InstantID model"),
    ("layer1.0.conv1.", "a bare ResNet (e.g. an ImageNet or ArcFace backbone), not a trained model this pack uses"),
)

_shape_cache: dict[str, dict[str, tuple]] = {}


def expected_shapes(kind: str, family: Family = SD1) -> dict[str, tuple]:
    """{key: shape} of the module `kind` names (a mapping: of that family), built once on the
    meta device (no memory)."""
    key = kind if kind != "mapping" or family == SD1 else f"{kind}:{family.name}"
    if key not in _shape_cache:
        with torch.device("meta"):
            module = _mapping(family) if kind == "mapping" else KINDS[kind].module()
            sd = module.state_dict()
        _shape_cache[key] = {k: tuple(v.shape) for k, v in sd.items()}
    return _shape_cache[key]


def _size(path) -> str:
    n = os.path.getsize(path)
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} bytes"


_SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.", "_codecs.encode")
# What torch.load(weights_only=True) raises for a global it refuses: pickle's UnpicklingError, taken
# from torch's own module so the shipped code imports no pickle module (bandit B403; the registry
# flags a version on any finding)
_REFUSED = torch.serialization.pickle.UnpicklingError


def _foreign_globals(path: str, error: Exception) -> set[str]:
    """Names a pickle would import beyond torch's own (best effort, for the error message): torch's
    static scan of a torch.save zip (torch >= 2.5), and the GLOBAL its refusal names."""
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    try:
        scanned = scan(path) if scan is not None and zipfile.is_zipfile(path) else []
    except Exception:  # a damaged archive: a message helper must never mask the real error
        scanned = []
    names = set(scanned) | set(re.findall(r"GLOBAL ([\w.]+)", str(error)))
    return {n for n in names if not n.startswith(_SAFE_GLOBAL_PREFIXES)}


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """All tensors of a `.pt`/`.pth`/`.bin`/`.ckpt` or `.safetensors` file, on the CPU.

    A leading `module.` (DataParallel) is stripped and a `{"state_dict": ...}` or
    `{"net_recon": ...}` wrapper is unwrapped (its other entries, such as optimizer state,
    are dropped). Raises CheckpointError with an actionable message otherwise.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: file not found.")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); the download did not finish. Download it again.")
    with open(path, "rb") as f:
        head = f.read(8)
    if path.lower().endswith(SAFETENSORS_SUFFIX):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            sd = load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({e}). It is {_size(path)}; it is probably truncated "
                "or corrupt. Download it again, or convert the official .pt with "
                "`python -m f2d_core convert IN.pt OUT.safetensors`.") from None
    elif path.lower().endswith(".onnx"):
        raise CheckpointError(f"{path}: this is an ONNX model (a face detector or recogniser), not a PyTorch weight "
                              "file. insightface models belong in models/insightface/models/<pack>/.")
    else:
        if not head.startswith(b"PK") and head[:1] != b"\x80":  # zip (torch.save) or raw pickle
            hint = " (it starts like an HTML page: a download link that returned a web page)" \
                if head.lstrip().startswith(b"<") else ""
            raise CheckpointError(f"{path}: not a PyTorch checkpoint at all{hint}. It is {_size(path)}. "
                                  "Download the file again from the official link in the README.")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except _REFUSED as e:
            found = _foreign_globals(path, e)
            what = f" (it would import {', '.join(sorted(found)[:3])})" if found else ""
            raise CheckpointError(
                f"{path}: refused to load. It is not a plain tensor checkpoint: it holds Python objects that "
                f"could run code when unpickled{what}, and weight files are only read with "
                "torch.load(weights_only=True). The official msid.pt and mapping.pt are plain state_dicts and "
                "load safely; download them again from the official links in the README.") from None
        except (RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
            raise CheckpointError(
                f"{path}: could not be read as a PyTorch checkpoint ({type(e).__name__}); it is probably truncated "
                f"or corrupt. It is {_size(path)}. Download the file again.") from None
    wrapper = next((k for k in _WRAPPERS if isinstance(sd, dict) and isinstance(sd.get(k), dict)), None)
    if wrapper:
        sd = sd[wrapper]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a state_dict (a mapping of names to tensors), found "
                              f"{type(sd).__name__}. {name} is not a weight file this pack can use.")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_metadata(path: str) -> dict[str, str]:
    """The string metadata of a .safetensors file ({} for pickles, which have none)."""
    path = os.fspath(path)
    if not path.lower().endswith(SAFETENSORS_SUFFIX):
        return {}
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: its safetensors header cannot be read ({e}); download the file "
                              "again.") from None


def mapping_family(sd: dict, metadata: dict, path: str) -> Family:
    """The base model family of a mapping network's weights: from the width of its words
    (i2t_first.fc_out.weight rows), checked against the metadata's f2d_family and f2d_widths."""
    shape = tuple(sd["i2t_first.fc_out.weight"].shape)
    by_shape = next((f for f in FAMILIES.values() if f.token_width == shape[0]), None)
    known = ", ".join(f"{f.label} {f.token_width}" for f in FAMILIES.values())
    if by_shape is None:
        raise CheckpointError(
            f"{path}: a mapping network whose words have {shape[0]} values (i2t_first.fc_out.weight {shape}); no "
            f"base model this pack knows has that width ({known}). Use the official mapping.pt (SD1.x) or an "
            "F2D-SDXL mapping exported by `python -m f2d_core.train`.")
    named = (metadata or {}).get("f2d_family")
    if named:
        try:
            declared = family_named(named)
        except ValueError:
            raise CheckpointError(
                f"{path}: its metadata names the base model family f2d_family={named!r}, which this version of "
                f"the pack does not know ({', '.join(FAMILIES)}). Update the pack.") from None
        if declared != by_shape:
            raise CheckpointError(
                f"{path}: its metadata says it is a {declared.label} mapping (f2d_family={named!r}), but its weights "
                f"are {by_shape.label}'s ({shape[0]}-value words, i2t_first.fc_out.weight {shape}). The file is "
                "inconsistent: export it again from its training run.")
    widths = (metadata or {}).get("f2d_widths")
    want = ",".join(str(s.width) for s in by_shape.streams)
    if widths and widths.replace(" ", "") != want:
        raise CheckpointError(
            f"{path}: its metadata gives the text encoder widths f2d_widths={widths!r}, but {by_shape.label}'s are "
            f"{want!r} (and its weights are {by_shape.label}'s). Export it again from its training run.")
    return by_shape


def identify(keys) -> str | None:
    """The kind in KINDS whose signature key is present, else None."""
    keys = set(keys)
    return next((k for k, spec in KINDS.items() if spec.signature in keys), None)


def describe(keys) -> str:
    """What a state_dict looks like, for error messages."""
    kind = identify(keys)
    if kind:
        return f"this is {KINDS[kind].title} checkpoint ({'/'.join(KINDS[kind].file_names)})"
    for prefix, what in _FOREIGN:
        if any(k.startswith(prefix) for k in keys):
            return f"this looks like {what}"
    sample = ", ".join(sorted(keys)[:3])
    return f"unrecognised contents ({len(keys)} tensors, e.g. {sample})"


def _list(keys, n=5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def validate(sd: dict, kind: str, path: str, metadata: dict | None = None) -> Family:
    """Raise CheckpointError unless `sd` has exactly the keys and shapes of `kind` (a mapping: of
    the family its shapes and metadata agree on, see mapping_family); returns that family (SD1.x
    for every other kind)."""
    spec = KINDS[kind]
    found = identify(sd.keys())
    if found != kind:
        raise CheckpointError(
            f"{path}: expected {spec.title} ({' or '.join(spec.file_names)}), but {describe(sd.keys())}. "
            "Check which file is selected in each slot.")
    family = mapping_family(sd, metadata or {}, path) if kind == "mapping" else SD1
    want = expected_shapes(kind, family)
    missing, unexpected = want.keys() - sd.keys(), sd.keys() - want.keys()
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {want[k]})" for k in sorted(want.keys() & sd.keys())
             if tuple(sd[k].shape) != want[k]]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_list(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes: {_list(wrong, 3)}")
        fix = f"use the official {spec.file_names[0]}" if family == SD1 else "export it again from its training run"
        layout = "official" if family == SD1 else family.label
        raise CheckpointError(
            f"{path}: looks like {spec.title} but does not match the {layout} layout ({'; '.join(parts)}). "
            f"The file may be from another version or incomplete; {fix}.")
    return family


def load_checkpoint(path: str, kind: str) -> dict[str, torch.Tensor]:
    """Read and validate a checkpoint of `kind` ("msid", "mapping" or "deep3d")."""
    sd = read_state_dict(path)
    validate(sd, kind, os.fspath(path), read_metadata(path))
    return sd


@dataclass(frozen=True)
class MappingFile:
    state_dict: dict
    family: Family   # the base model whose text encoders its words are for
    metadata: dict   # safetensors metadata ({} for the official .pt): f2d_trigger, f2d_training, ...

    @property
    def trigger(self) -> str | None:
        return self.metadata.get("f2d_trigger") or None


def load_mapping(path: str) -> MappingFile:
    """Read and validate a mapping network file of any family: the official SD1.x mapping.pt (or its
    .safetensors) or an F2D-SDXL .safetensors."""
    path = os.fspath(path)
    sd = read_state_dict(path)
    metadata = read_metadata(path)
    return MappingFile(sd, validate(sd, "mapping", path, metadata), metadata)


def convert(src: str, dst: str) -> str:
    """Rewrite an official `.pt` as `.safetensors` (kind detected from the keys); returns the kind.
    The output is checked before the input is read, and written atomically."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not dst.lower().endswith(SAFETENSORS_SUFFIX):
        raise CheckpointError(f"{dst}: the output name must end in .safetensors")
    check_output_path(dst, "output")
    sd = read_state_dict(src)
    kind = identify(sd.keys())
    if kind is None:
        raise CheckpointError(f"{src}: {describe(sd.keys())}; only Face2Diffusion checkpoints "
                              f"({', '.join(n for s in KINDS.values() for n in s.file_names[:1])}) can be converted.")
    metadata = read_metadata(src)
    validate(sd, kind, src, metadata)
    tensors = {k: v.contiguous() for k, v in sd.items()}
    write_atomic(dst, lambda tmp: save_file(tensors, tmp, metadata={**metadata, "f2d_kind": kind}), "output")
    return kind
