"""Save Face's names and writes, and what Load Face lists (the engine behind the two nodes).

A name is checked before anything touches the disk; the file is written through a temp file in
its own folder and renamed; temp files of killed saves are cleared; only complete files are listed."""
import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from f2d_core import F2DError
from f2d_core.weights import outputs
from f2d_core.identity import face_file
from f2d_core.identity.face_file import FaceIdentity, face_name_parts, list_faces, save_face


def small_face() -> FaceIdentity:
    return FaceIdentity(features=torch.linspace(-1, 1, 1536), s1=torch.zeros(768), s2=torch.ones(768),
                        aligned=torch.zeros(1, 112, 112, 3, dtype=torch.uint8), meta={"num_faces": 1})


@pytest.mark.parametrize("name, message", [
    ("x" * 300, r"'xxx.*\.\.\.' is not usable: it is 300 characters long; at most 150 fit .* Use a shorter name"),
    ("a/" * 2200 + "b", r"is not usable: it is 4401 characters long; at most 150"),
    ("", r"face name '' is not usable: it is empty\. Write a name such as 'anna'"),
    ("../x", r"face name '\.\./x' is not usable: it has a '\.\.' part, which would point outside the faces folder"),
    ("family/./anna", r"it has a '\.' part"),
    ("a//b", r"it has an empty folder part \('//', or '/' at the start or end\)"),
    ("/anna", r"it has an empty folder part"),
    ("family\\anna", r"it contains '\\\\' \(use '/' for subfolders\)\. Use letters, digits, spaces"),
    ("anna: 2024?", r"it contains ':' '\?'\. Use letters, digits"),
    ("a\u200bb", r"face name 'a\\u200bb' is not usable: it contains U\+200B \(ZERO WIDTH SPACE, invisible\)\. Use letters"),
    ("q\u0308", r"it contains U\+0308 \(COMBINING DIAERESIS, invisible\)\. Use letters"),  # no one-letter q-umlaut
    ("CON", r"'CON' is a device name on Windows \(CON, PRN, AUX, NUL, COM0-9, LPT0-9\) .* e\.g\. 'CON_face'"),
    ("family/nul.old", r"'nul' is a device name on Windows"),
    ("com1/anna", r"'com1' is a device name on Windows"),
    ("lpt9", r"'lpt9' is a device name"),
    ("anna.", r"the part 'anna\.' starts or ends with a space or ends with '\.', which Windows drops"),
    ("family /anna", r"the part 'family ' starts or ends with a space"),
    (".anna", r"the part '\.anna' starts with '\.', which hides it on Linux and macOS"),
    ("张" * 90, r"the part '张+'\.\.\. is 270 bytes in UTF-8; a file name holds 255 bytes, so with "
               r"\.f2d\.safetensors at most 239 are left"),
])
def test_unusable_names_are_refused_with_the_rule_they_break(name, message):
    with pytest.raises(F2DError, match=message):
        face_name_parts(name)


@pytest.mark.parametrize("name, parts", [("anna", ["anna"]), ("family/anna", ["family", "anna"]),
                                         ("Åsa Öberg_2-b.v1", ["Åsa Öberg_2-b.v1"]),
                                         (" anna.f2d.safetensors ", ["anna"]), ("console", ["console"]),
                                         ("x" * 150, ["x" * 150])])
def test_usual_names_are_accepted(name, parts):
    assert face_name_parts(name) == parts


def test_a_name_typed_in_decomposed_unicode_is_the_same_name_in_nfc(tmp_path):
    decomposed, composed = "family/Zoe\u0308", "family/Zo\u00eb"  # macOS file names paste the first
    assert face_name_parts(decomposed) == ["family", "Zo\u00eb"]
    path = save_face(small_face(), tmp_path, decomposed)
    assert path == str(tmp_path / "family" / "Zo\u00eb.f2d.safetensors")
    assert list_faces(tmp_path) == [composed + ".f2d.safetensors"]  # one file, whichever way it was typed


@pytest.mark.parametrize("name", ["x" * 300, "a/" * 2200 + "b", "family/CON/anna", "a/b/../c"])
def test_a_refused_name_creates_no_folder(tmp_path, name):
    root = tmp_path / "output" / "face2diffusion"
    with pytest.raises(F2DError, match="is not usable"):
        save_face(small_face(), root, name)
    assert list(tmp_path.iterdir()) == []  # not even the faces folder


def test_save_face_writes_through_a_hidden_temp_file_in_the_same_folder(tmp_path, monkeypatch):
    root = tmp_path / "faces"
    seen = {}
    real_save_file = face_file.save_file

    def spy(tensors, path, metadata=None):  # the real writer, observed while the write is in progress
        real_save_file(tensors, path, metadata=metadata)
        seen["temp"] = path
        seen["listed"] = list_faces(root)
        seen["in_folder"] = sorted(os.listdir(root / "family"))

    monkeypatch.setattr(face_file, "save_file", spy)
    path = save_face(small_face(), root, "family/anna")
    assert path == str(root / "family" / "anna.f2d.safetensors")
    assert os.path.dirname(seen["temp"]) == str(root / "family")
    assert os.path.basename(seen["temp"]).startswith(".f2d-partial-") and seen["temp"].endswith(".tmp")
    assert seen["listed"] == [] and seen["in_folder"] == [os.path.basename(seen["temp"])]
    assert sorted(os.listdir(root / "family")) == ["anna.f2d.safetensors"]  # renamed, nothing left
    back = FaceIdentity.load(path)
    assert torch.equal(back.features, small_face().features) and torch.equal(back.s2, small_face().s2)


def test_stale_temp_files_of_killed_saves_are_removed_and_nothing_else(tmp_path):
    root = tmp_path / "faces"
    root.mkdir()
    hour_ago = time.time() - outputs.STALE_AFTER_S - 60
    names = {"old_ours": ".f2d-partial-4242-0123abcd.tmp", "old_legacy": "anna.f2d.safetensors.tmp4242",
             "fresh_ours": ".f2d-partial-4343-89abcdef.tmp",  # another save may be writing it right now
             "old_other": "notes.tmp", "old_similar": ".f2d-partial-mine.tmp", "old_face": "bob.f2d.safetensors"}
    for key, name in names.items():
        (root / name).write_bytes(b"x" * 10)
        if key.startswith("old"):
            os.utime(root / name, (hour_ago, hour_ago))
    save_face(small_face(), root, "anna")
    left = set(os.listdir(root))
    assert names["old_ours"] not in left and names["old_legacy"] not in left
    assert {names[k] for k in ("fresh_ours", "old_other", "old_similar", "old_face")} <= left
    assert "anna.f2d.safetensors" in left


def killed_save(folder) -> str:
    """Start a real save of a 26 MB identity in another python, SIGKILL it while safetensors is writing
    its own temp file, and return that file's name: what a user's kill or crash leaves."""
    script = ("import sys, torch\n"
              "from f2d_core.identity.face_file import FaceIdentity, save_face\n"
              "face = FaceIdentity(features=torch.zeros(1536), s1=torch.zeros(768), s2=torch.zeros(768),\n"
              "                    aligned=torch.zeros(700, 112, 112, 3, dtype=torch.uint8))\n"
              "for _ in range(50):\n"
              "    save_face(face, sys.argv[1], 'anna')\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(folder)], cwd=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            temps = [n for n in os.listdir(folder) if n.startswith(".tmp")]
            if temps and os.path.getsize(os.path.join(folder, temps[0])) > 1 << 20:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return temps[0]
        raise AssertionError("no safetensors temp file was seen while saving")
    finally:
        proc.kill()
        proc.wait()


def test_the_temp_file_of_a_save_killed_inside_safetensors_is_removed_and_no_one_elses(tmp_path):
    from safetensors.torch import save_file
    root = tmp_path / "faces"
    root.mkdir()
    left_by_kill = killed_save(root)
    assert re.fullmatch(r"\.tmp[A-Za-z0-9]{6}", left_by_kill)  # the name safetensors' save_file writes first
    others = {".tmpOther1": {"format": "someone.else"}, ".tmpNoMeta": None}  # other programs' safetensors
    for name, meta in others.items():
        save_file({"x": torch.zeros(4)}, str(root / name), metadata=meta)
    (root / ".tmpNotes1").write_text("a user's own hidden file")
    (root / ".tmpAbcdefg").write_bytes((root / left_by_kill).read_bytes()[:4096])  # 7 letters: not the pattern
    hour_ago = time.time() - outputs.STALE_AFTER_S - 60
    for name in os.listdir(root):
        os.utime(root / name, (hour_ago, hour_ago))
    fresh = ".tmpFresh1"  # a save in progress in another process right now
    (root / fresh).write_bytes((root / left_by_kill).read_bytes()[:4096])
    save_face(small_face(), root, "bob")
    left = set(os.listdir(root))
    assert left_by_kill not in left
    assert {".tmpOther1", ".tmpNoMeta", ".tmpNotes1", ".tmpAbcdefg", fresh, "bob.f2d.safetensors"} <= left


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_saved_face_gets_the_mode_the_umask_gives_any_new_file(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = save_face(small_face(), tmp_path, "family/anna")
    finally:
        os.umask(old)
    assert oct(os.stat(path).st_mode & 0o777) == oct(mode)  # safetensors alone writes 0600


def test_a_failed_write_leaves_no_temp_file_and_removes_the_folders_it_made(tmp_path, monkeypatch):
    root = tmp_path / "faces"
    root.mkdir()

    def disk_full(tensors, path, metadata=None):  # stands in for a full disk, which this machine cannot have
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(face_file, "save_file", disk_full)
    with pytest.raises(F2DError, match=r"identity file .*anna\.f2d\.safetensors: could not be written \(No space "
                                       r"left on device\)\. Check the free space and the permissions"):
        save_face(small_face(), root, "family/kids/anna")
    assert os.listdir(root) == []


def test_a_file_in_the_way_of_a_folder_is_explained(tmp_path):
    root = tmp_path / "faces"
    root.mkdir()
    (root / "family").write_text("not a folder")
    with pytest.raises(F2DError, match=r"face name 'family/anna': could not create the folder .*family \(File exists; "
                                       r"a file of that name may be in the way\)"):
        save_face(small_face(), root, "family/anna")


def test_load_face_lists_only_complete_files(tmp_path):
    root = tmp_path / "faces"
    (root / "family").mkdir(parents=True)
    (root / ".trash").mkdir()
    for rel in ("anna.f2d.safetensors", "family/bob.f2d.safetensors", "anna (1).f2d.safetensors",
                ".f2d-partial-1-0123abcd.tmp", "anna.f2d.safetensors.tmp99", ".cat.f2d.safetensors",
                ".trash/old.f2d.safetensors", "notes.txt"):
        (root / rel).write_bytes(b"x")
    assert list_faces(root) == ["anna (1).f2d.safetensors", "anna.f2d.safetensors", "family/bob.f2d.safetensors"]
    assert list_faces(tmp_path / "none yet") == []
