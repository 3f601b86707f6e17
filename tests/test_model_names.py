"""Names a node input may give for a model file or pack: only places inside the registered folder
(issue 21: a combo value arrives from any API client, and ComfyUI 0.3.x does not check it)."""
import os

import pytest

from f2d_core.weights.files import inside, name_problem


@pytest.mark.parametrize("name", [
    "../../../x.onnx", "a/../../x.pt", "sub/../msid.pt", "..", "..\\..\\x.pt", "sub\\..\\..\\x.pt",
])
def test_a_name_with_a_dot_dot_part_is_refused(name):
    assert name_problem(name) == "it climbs out of the folder with '..'"


@pytest.mark.parametrize("name", [
    "/etc/passwd", "/home/u/ComfyUI/input/det_10g.onnx", "C:\\models\\msid.pt", "C:msid.pt", "c:/x.pt",
    "\\\\server\\share\\msid.pt", "//server/share/msid.pt", "\\msid.pt",
])
def test_an_absolute_path_drive_or_share_is_refused_on_every_os(name):
    assert name_problem(name) == "it is an absolute path"


@pytest.mark.parametrize("name, why", [("", "it is empty"), ("  ", "it is empty"), (None, "it is empty"),
                                       (3, "it is empty"), ("msid\0.pt", "it holds a NUL character")])
def test_empty_and_non_text_names_are_refused(name, why):
    assert name_problem(name) == why


@pytest.mark.parametrize("name", ["msid.pt", "sub/msid.pt", "sub\\msid.pt", "...pt", "..hidden.pt",
                                  "a..b.safetensors", "~backup.pt", "buffalo_l", "Zoë.f2d.safetensors"])
def test_plain_names_and_subfolders_as_comfyui_lists_them_pass(name):
    assert name_problem(name) is None


def test_inside_joins_a_plain_name_under_the_folder(tmp_path):
    assert inside(str(tmp_path), "sub\\msid.pt") == os.path.join(str(tmp_path), "sub", "msid.pt")
    with pytest.raises(ValueError, match="climbs out"):
        inside(str(tmp_path), "../msid.pt")


def test_a_symlink_the_user_put_inside_the_folder_still_resolves(tmp_path):
    """Models on another disk: the check is on the name, so a link inside the folder keeps working."""
    other = tmp_path / "other_disk"
    other.mkdir()
    (other / "msid.pt").write_bytes(b"x")
    folder = tmp_path / "models" / "face2diffusion"
    folder.mkdir(parents=True)
    (folder / "linked").symlink_to(other, target_is_directory=True)
    assert name_problem("linked/msid.pt") is None
    assert os.path.isfile(inside(str(folder), "linked/msid.pt"))
