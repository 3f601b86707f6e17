"""The face preview: every detected face boxed where the detector put it, numbered by the index
Encode Face's `index` takes (0 = largest), the encoded one highlighted."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

import synthetic_onnx as om
from conftest import FACES
from f2d_core.faces import preview
from f2d_core.faces.detect import Face, FaceDetector, select_face
from f2d_core.identity.pipeline import encode_images

# three synthetic faces (stride, cell x, cell y, score, blue = box size): the detector reports them
# by score, which is not the order of their sizes
PAINTED = [(32, 3, 3, 0.60, 200), (16, 20, 4, 0.95, 120), (8, 40, 50, 0.80, 255)]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return FaceDetector(om.save(om.scrfd_model(), tmp_path_factory.mktemp("det") / "det_10g.onnx"), device="cpu")


def group_photo():
    img = np.full((640, 640, 3), 40, np.uint8)
    for stride, cx, cy, score, blue in PAINTED:
        om.paint_face(img, stride, cx, cy, red=round(255 * score), blue=blue)
    return img


def sheet_box(box, scale, x_offset=0):
    return [round(box[0] * scale) + x_offset, round(box[1] * scale), round(box[2] * scale) + x_offset,
            round(box[3] * scale)]


def edge_colours(sheet, box):
    """The colours 1 px inside the outline along the left, right and bottom edges and the right
    half of the top edge (the number's tag sits on the top-left corner)."""
    x1, y1, x2, y2 = box
    ys, xs = np.linspace(y1 + 4, y2 - 4, 6).round().astype(int), np.linspace(x1 + 4, x2 - 4, 6).round().astype(int)
    right_half = np.linspace((x1 + x2) // 2, x2 - 4, 4).round().astype(int)
    points = ([(x1 + 1, y) for y in ys] + [(x2 - 1, y) for y in ys] + [(x, y2 - 1) for x in xs]
              + [(x, y1 + 1) for x in right_half])
    return {tuple(int(c) for c in sheet[y, x]) for x, y in points}


def ink(img: np.ndarray) -> np.ndarray:
    """The dark glyph pixels of a tag, cropped to their bounding box, as a 24x32 boolean mask."""
    dark = img.astype(int).sum(axis=2) < 150
    ys, xs = np.nonzero(dark)
    crop = dark[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return np.asarray(Image.fromarray(crop.astype(np.uint8) * 255).resize((24, 32))) > 127


def read_number(sheet, box, candidates) -> int:
    """Which of `candidates` the tag on `box` shows: the digit rendered here (PIL, black on white)
    whose glyph overlaps the tag's glyph best."""
    x1, y1, x2, y2 = preview.label_box(box, "0", preview.font())
    tag = ink(sheet[y1:y2, x1:x2])
    fnt = preview.font()

    def rendered(n):
        img = Image.new("RGB", (80, 80), (255, 255, 255))
        ImageDraw.Draw(img).text((10, 10), str(n), fill=(0, 0, 0), font=fnt)
        return ink(np.asarray(img))

    overlap = {n: (tag & rendered(n)).sum() / (tag | rendered(n)).sum() for n in candidates}
    return max(overlap, key=overlap.get)


def test_the_synthetic_photo_has_three_faces_whose_score_order_is_not_their_size_order(detector):
    found = detector.detect(group_photo())
    assert len(found) == 3
    areas = [f.area for f in found]  # highest score first
    assert areas != sorted(areas, reverse=True)


@pytest.mark.parametrize("policy", ["largest", "confident", 1, 2])
def test_faces_are_boxed_where_the_detector_found_them_numbered_largest_first(detector, policy):
    photo = group_photo()
    found = detector.detect(photo)
    chosen = select_face(found, policy)
    record = preview.face_record(found, chosen)
    by_size = sorted(found, key=lambda f: f.area, reverse=True)  # what "index" means: 0 = largest
    assert record["boxes"] == [[round(float(v), 1) for v in f.box] for f in by_size]
    assert record["chosen"] == next(i for i, f in enumerate(by_size) if f is chosen)

    sheet = preview.preview_sheet([photo], [record])
    scale = preview.HEIGHT / photo.shape[0]
    for i, face in enumerate(by_size):
        box = sheet_box(face.box, scale)
        colour = preview.CHOSEN_COLOUR if face is chosen else preview.FACE_COLOUR
        assert edge_colours(sheet, box) == {colour}, f"face {i} at {box}"
        assert read_number(sheet, box, range(len(found))) == i


def test_real_faces_pasted_at_three_scales_are_numbered_by_size(tmp_path):
    if not FACES.is_dir():
        pytest.skip(f"the demo faces are not at {FACES}: put the project's shared folder beside the repo")
    canvas = np.full((700, 1100, 3), 90, np.uint8)
    placed = []  # (x, y, side, score): pasted photos, the face box the middle of each
    for i, (x, y, side, score) in enumerate([(40, 300, 160, 0.99), (300, 40, 440, 0.70), (820, 260, 240, 0.85)]):
        face = Image.open(FACES / f"f2d_input_{i}.jpg").convert("RGB").resize((side, side))
        canvas[y:y + side, x:x + side] = np.asarray(face)
        placed.append(Face(np.array([x + side * .2, y + side * .15, x + side * .8, y + side * .9], np.float32),
                           score, np.zeros((5, 2), np.float32)))
    record = preview.face_record(placed, select_face(placed, 1))  # detector order: as listed
    sheet = preview.preview_sheet([canvas], [record])
    scale = preview.HEIGHT / canvas.shape[0]
    expected_order = [1, 2, 0]  # the 440 px photo, the 240 px one, the 160 px one
    for index, which in enumerate(expected_order):
        box = sheet_box(placed[which].box, scale)
        colour = preview.CHOSEN_COLOUR if index == 1 else preview.FACE_COLOUR
        assert edge_colours(sheet, box) == {colour}, f"index {index}"
        assert read_number(sheet, box, range(3)) == index
    Image.fromarray(sheet).save(tmp_path / "preview.png")  # for a look when it fails


def test_photos_of_different_sizes_share_one_sheet_height_side_by_side(detector):
    small = group_photo()[:320]  # 640x320: the top half keeps the two upper faces
    photos = [group_photo(), small]
    records = [preview.face_record(found := detector.detect(p), select_face(found, "largest")) for p in photos]
    sheet = preview.preview_sheet(photos, records, names=["a.png", "b.png"])
    widths = [round(p.shape[1] * preview.HEIGHT / p.shape[0]) for p in photos]
    assert sheet.shape[1] == sum(widths) + preview.GAP and sheet.shape[0] > preview.HEIGHT
    scale = preview.HEIGHT / small.shape[0]
    box = sheet_box(records[1]["boxes"][0], scale, x_offset=widths[0] + preview.GAP)
    assert edge_colours(sheet, box) == {preview.CHOSEN_COLOUR}
    assert sheet.flags.writeable  # the node hands it to torch.from_numpy, which warns on read-only arrays


def test_captions_say_how_many_faces_and_which_was_encoded():
    two = {"boxes": [[0, 0, 10, 10], [20, 20, 25, 25]], "scores": [0.9, 0.8], "chosen": 1}
    assert preview.caption("me.jpg", two) == "me.jpg: 2 faces, encoded #1"
    assert preview.caption("me.jpg", dict(two, chosen=None)) == "me.jpg: 2 faces, none encoded (skipped)"
    assert preview.caption("empty.png", {"boxes": [], "scores": [], "chosen": None}) == "empty.png: no face found"


def test_a_photo_without_faces_has_no_box_drawn():
    photo = np.full((200, 300, 3), 128, np.uint8)
    sheet = preview.preview_sheet([photo], [{"boxes": [], "scores": [], "chosen": None}])
    picture = sheet[:preview.HEIGHT].reshape(-1, 3)
    for colour in (preview.FACE_COLOUR, preview.CHOSEN_COLOUR):
        assert not (picture == colour).all(axis=1).any()


def test_the_pipeline_records_every_photos_faces_in_index_order(encoder, detector):
    """What Encode Face draws its preview from: meta["detections"], one record per photo, also for
    photos that were skipped (their faces shown, none highlighted)."""
    one_face = np.full((640, 640, 3), 40, np.uint8)
    om.paint_face(one_face, 16, 10, 10, red=230, blue=60)
    photos = [group_photo(), one_face, np.zeros((64, 64, 3), np.uint8)]
    ident = encode_images(encoder, photos, detector, policy=2, on_no_face="skip", names=["a", "b", "c"])
    by_size = sorted(detector.detect(group_photo()), key=lambda f: f.area, reverse=True)
    a, b, c = ident.meta["detections"]
    assert (a["image"], a["chosen"]) == ("a", 2)
    assert a["boxes"] == [[round(float(v), 1) for v in f.box] for f in by_size]
    assert (b["image"], len(b["boxes"]), b["chosen"]) == ("b", 1, None)  # index 2 of one face: skipped
    assert c == {"image": "c", "boxes": [], "scores": [], "chosen": None}
    assert ident.num_faces == 1
