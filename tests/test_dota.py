"""DOTA labelTxt reading/writing, class lists and folder listing."""

from pathlib import Path

import pytest
from PIL import Image

from elastic_lab.data.dota import (
    DOTA_V1_CLASSES,
    DOTA_V2_CLASSES,
    DOTA_V15_CLASSES,
    DotaLabel,
    DotaObject,
    dota_classes,
    format_label_txt,
    list_dota_images,
    load_dota_folder,
    parse_label_txt,
    read_label_txt,
    write_label_txt,
)


def test_class_lists_per_version():
    assert len(DOTA_V1_CLASSES) == 15 and DOTA_V1_CLASSES[0] == "plane"
    assert DOTA_V1_CLASSES[-1] == "helicopter"
    assert DOTA_V15_CLASSES == DOTA_V1_CLASSES + ("container-crane",)
    assert DOTA_V2_CLASSES == DOTA_V15_CLASSES + ("airport", "helipad")
    assert dota_classes("1.5") == DOTA_V15_CLASSES and dota_classes("2.0") == DOTA_V2_CLASSES
    with pytest.raises(ValueError, match="3.0"):
        dota_classes("3.0")


def test_write_read_round_trip(tmp_path: Path):
    label = DotaLabel(
        objects=[
            DotaObject((10, 20, 50, 20, 50, 40, 10, 40), "small-vehicle", 0),
            DotaObject((100.25, 3.5, 140.75, 9.125, 133.0, 60.0, 95.5, 52.0), "plane", 1),
            DotaObject((0.1, 0.2, 0.30000000000000004, 0.2, 0.3, 0.4, 0.1, 0.4), "ship", 0),
        ],
        image_source="GoogleEarth", gsd=0.146343590398,
    )
    path = tmp_path / "labelTxt" / "P0001.txt"
    write_label_txt(path, label)
    text = path.read_text()
    assert text.splitlines()[:3] == [
        "imagesource:GoogleEarth", "gsd:0.146343590398", "10 20 50 20 50 40 10 40 small-vehicle 0"]
    back = read_label_txt(path)
    assert back == label  # floats survive exactly, headers too
    assert back.objects[1].hbox == (95.5, 3.5, 140.75, 60.0)


def test_headers_optional_and_missing_difficult():
    text = (
        "\ufeffimagesource:GoogleEarth\r\n"
        "gsd:null\r\n"
        "\r\n"
        "1 2 3 2 3 4 1 4 storage-tank\r\n"      # 9 fields: difficult defaults to 0
        "5 6 7 6 7 8 5 8 harbor 1\r\n"
    )
    label = parse_label_txt(text)
    assert label.image_source == "GoogleEarth" and label.gsd is None
    assert [(o.category, o.difficult) for o in label.objects] == [
        ("storage-tank", 0), ("harbor", 1)]
    no_header = parse_label_txt("1 2 3 2 3 4 1 4 plane 0\n")
    assert no_header.image_source is None and no_header.gsd is None
    assert len(no_header.objects) == 1
    assert parse_label_txt("gsd:0.5\n").gsd == 0.5


@pytest.mark.parametrize(
    "line, message",
    [
        ("1 2 3 2 3 4 1 plane 0", "coordinate y4 is not a number: 'plane'"),  # one missing
        ("1 2 3 2 3 4 1 4 plane 0 extra", "got 11 fields"),
        ("1 2 3 2 3 4 1 plane", "got 8 fields"),
        ("1 2 3 abc 3 4 1 4 plane 0", "coordinate y2 is not a number: 'abc'"),
        ("1 2 3 2 3 4 1 nan plane 0", "coordinate y4 is not finite"),
        ("1 2 3 2 3 4 1 4 plane 2", "field 'difficult' must be 0 or 1, got '2'"),
        ("1 2 3 2 3 4 1 4 plane x", "field 'difficult' must be 0 or 1"),
        ("1 2 3 2 3 4 1 4 car 0", "unknown class 'car'"),
        ("1 2 3 2 3 4 1 4 container-crane 0", "unknown class 'container-crane' for DOTA v1.0"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, message: str):
    path = tmp_path / "P0007.txt"
    path.write_text(f"imagesource:x\ngsd:1\n{line}\n5 6 7 6 7 8 5 8 ship 0\n")
    with pytest.raises(ValueError) as info:
        read_label_txt(path)
    text = str(info.value)
    assert f"{path}, line 3" in text
    assert message in text


def test_bad_gsd_and_version_specific_classes(tmp_path: Path):
    path = tmp_path / "a.txt"
    path.write_text("imagesource:x\ngsd:abc\n")
    with pytest.raises(ValueError, match=r"a\.txt, line 2: field 'gsd'"):
        read_label_txt(path)
    path.write_text("1 2 3 2 3 4 1 4 container-crane 0\n1 2 3 2 3 4 1 4 helipad 0\n")
    with pytest.raises(ValueError, match="line 2: unknown class 'helipad' for DOTA v1.5"):
        read_label_txt(path, version="1.5")
    assert [o.category for o in read_label_txt(path, version="2.0").objects] == [
        "container-crane", "helipad"]


def test_dota_object_validation():
    with pytest.raises(ValueError, match="8 numbers"):
        DotaObject((1, 2, 3), "plane")
    with pytest.raises(ValueError, match="difficult"):
        DotaObject((0,) * 8, "plane", 2)
    assert "plane 1" in format_label_txt(DotaLabel([DotaObject((0,) * 8, "plane", 1)]))


def _folder(root: Path, stems: list[str], labels: list[str]) -> None:
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir(parents=True)
    for stem in stems:
        Image.new("RGB", (8, 8)).save(root / "images" / f"{stem}.png")
    for stem in labels:
        (root / "labelTxt" / f"{stem}.txt").write_text("0 0 4 0 4 4 0 4 plane 0\n")


def test_list_folder_pairs(tmp_path: Path):
    _folder(tmp_path, ["P2", "P1"], ["P1", "P2"])
    items = list_dota_images(tmp_path)
    assert [i.stem for i in items] == ["P1", "P2"]
    assert items[0].image_path == tmp_path / "images" / "P1.png"
    assert items[0].label_path == tmp_path / "labelTxt" / "P1.txt"
    loaded = load_dota_folder(tmp_path)
    assert [len(label.objects) for _, label in loaded] == [1, 1]


def test_missing_label_or_image_is_named(tmp_path: Path):
    _folder(tmp_path / "a", ["P1", "P2"], ["P1"])
    with pytest.raises(FileNotFoundError, match=r"P2\.png: no label file .*P2\.txt"):
        list_dota_images(tmp_path / "a")
    items = list_dota_images(tmp_path / "a", require_labels=False)
    assert items[1].label_path is None and items[1].read_label().objects == []
    _folder(tmp_path / "b", ["P1"], ["P1", "P9"])
    with pytest.raises(FileNotFoundError, match=r"P9\.txt: label file has no image"):
        list_dota_images(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="missing images/"):
        list_dota_images(tmp_path / "nothing")
