"""Real-data sources (coco, karpathy, flickr8k, folder) from small fixtures in their native formats:
each prepares a data set, and a model trains and evaluates on it end to end; bad images are
skipped and listed; bad caption files fail with the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmfuse.data.images import load_rgb
from mmfuse.data.records import load_labelled_split, load_manifest, load_split
from tests.conftest import invoke

COLOURS = ["red", "green", "blue", "yellow", "white", "black", "purple", "orange", "pink", "grey"]
SMALL = ["--epochs", "1", "--batch-size", "4", "--feature-dim", "16", "--embed-dim", "8", "--hidden-dim", "16"]


def _caption(colour: str, n: int) -> str:
    """Captions with real-world punctuation: quotes, apostrophes, commas, a hyphen, an ellipsis."""
    return [f'A {colour} square, isn\'t it?', f"the {colour}-coloured \"box\" ...", f"{colour.upper()} image; plain!"][n % 3]


def _photos(root: Path, names: list[str], folder: str = "") -> list[str]:
    (root / folder).mkdir(parents=True, exist_ok=True)
    for name, colour in zip(names, COLOURS * 3):
        Image.new("RGB", (48, 36), colour).save(root / folder / name, quality=90)
    return names


def _prepare_and_train(source: str, *args: str, classify: bool = False) -> dict:
    res = invoke("prepare-data", source, "--name", "d", *args)
    assert res.exit_code == 0, res.stderr
    res = invoke("train", "--data", "d", "--run", "r", *SMALL)
    assert res.exit_code == 0, res.stderr
    res = invoke("evaluate", "--run", "r", "--no-meteor", "--json")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout[res.stdout.index("{"):])


def test_coco(tmp_path: Path, workspace: Path) -> None:
    images = tmp_path / "coco"
    files = {}
    for split, ids in (("train2017", range(1, 7)), ("val2017", range(7, 11))):
        names = _photos(images, [f"{i:012d}.jpg" for i in ids], split)
        data = {"images": [{"id": i, "file_name": n} for i, n in zip(ids, names)],
                "annotations": [{"id": 100 * i + k, "image_id": i, "caption": _caption(COLOURS[i % 10], k)}
                                for i in ids for k in range(3)]}
        files[split] = tmp_path / f"captions_{split}.json"
        files[split].write_text(json.dumps(data))
    report = _prepare_and_train("coco", "--annotations", str(files["train2017"]), "--annotations",
                                str(files["val2017"]), "--images", str(images))
    manifest = load_manifest(workspace / "datasets" / "d")
    assert [manifest["splits"][s]["images"] for s in ("train", "val", "test")] == [6, 2, 2]
    train = load_split(workspace / "datasets" / "d", "train")
    assert sorted(r.id for r in train) == [str(i) for i in range(1, 7)] and all(len(r.captions) == 3 for r in train)
    assert train[0].image == images / "train2017" / "000000000001.jpg"
    assert ["a", "green", "square", ",", "is", "n't", "it", "?"] in [list(t) for r in train for t in r.tokens]
    assert report["num_images"] == 2


def test_karpathy(tmp_path: Path, workspace: Path) -> None:
    images = tmp_path / "flickr"
    names = _photos(images, [f"{i}_abc.jpg" for i in range(9)])
    splits = ["train", "train", "restval", "train", "val", "val", "test", "test", "train"]
    data = {"dataset": "flickr8k", "images": [
        {"filename": n, "imgid": i, "split": s, "sentences": [{"raw": _caption(COLOURS[i], k), "tokens": []} for k in range(5)]}
        for i, (n, s) in enumerate(zip(names, splits))]}
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(data))
    report = _prepare_and_train("karpathy", "--json", str(tmp_path / "dataset_flickr8k.json"), "--images", str(images))
    manifest = load_manifest(workspace / "datasets" / "d")
    assert [manifest["splits"][s]["images"] for s in ("train", "val", "test")] == [5, 2, 2]  # restval trains
    assert manifest["splits"]["train"]["captions"] == 25
    assert report["num_images"] == 2


def test_karpathy_coco_filepath(tmp_path: Path, workspace: Path) -> None:
    images = tmp_path / "coco"
    _photos(images, ["a.jpg", "b.jpg"], "val2014")
    _photos(images, ["c.jpg"], "train2014")
    data = {"images": [{"filepath": f, "filename": n, "cocoid": i, "split": s, "sentences": [{"raw": "a thing"}]}
                       for i, (f, n, s) in enumerate([("val2014", "a.jpg", "val"), ("val2014", "b.jpg", "test"),
                                                       ("train2014", "c.jpg", "train")])]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    res = invoke("prepare-data", "karpathy", "--json", str(tmp_path / "dataset_coco.json"), "--images", str(images))
    assert res.exit_code == 0, res.stderr
    assert load_split(workspace / "datasets" / "karpathy", "val")[0].image == images / "val2014" / "a.jpg"


def test_flickr8k(tmp_path: Path, workspace: Path) -> None:
    images = tmp_path / "Flicker8k_Dataset"
    names = _photos(images, [f"{1000 + i}_f{i}.jpg" for i in range(8)])
    lines = [f"{n}#{k}\t{_caption(COLOURS[i], k)}" for i, n in enumerate(names) for k in range(5)]
    (tmp_path / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    splits = tmp_path / "splits"
    splits.mkdir()
    for file, chosen in (("Flickr_8k.trainImages.txt", names[:4]), ("Flickr_8k.devImages.txt", names[4:6]),
                         ("Flickr_8k.testImages.txt", names[6:])):
        (splits / file).write_text("\n".join(chosen) + "\n")
    report = _prepare_and_train("flickr8k", "--captions", str(tmp_path / "Flickr8k.token.txt"), "--images", str(images),
                                "--splits-dir", str(splits))
    train = load_split(workspace / "datasets" / "d", "train")
    assert [r.id for r in train] == ["1000_f0", "1001_f1", "1002_f2", "1003_f3"] and len(train[0].captions) == 5
    assert report["num_images"] == 2


def test_folder_csv_several_rows_per_image_and_ratio_splits(tmp_path: Path, workspace: Path) -> None:
    names = _photos(tmp_path / "photos", [f"p{i}.png" for i in range(10)], "")
    quoted = [_caption(COLOURS[i], k).replace('"', '""') for i in range(10) for k in range(2)]  # CSV escaping
    rows = ["image,caption"] + [f'{names[j // 2]},"{q}"' for j, q in enumerate(quoted)]
    (tmp_path / "caps.csv").write_text("\n".join(rows) + "\n")
    report = _prepare_and_train("folder", "--images", str(tmp_path / "photos"), "--captions", str(tmp_path / "caps.csv"),
                                "--val-ratio", "0.2", "--test-ratio", "0.2")
    root = workspace / "datasets" / "d"
    counts = [load_manifest(root)["splits"][s]["images"] for s in ("train", "val", "test")]
    assert counts == [6, 2, 2]
    captions = {c for s in ("train", "val", "test") for r in load_split(root, s) for c in r.captions}
    assert 'the red-coloured "box" ...' in captions and "A red square, isn't it?" in captions
    assert report["num_images"] == 2


def test_folder_rows_of_an_image_anywhere_in_the_file_make_one_sample_with_captions_in_file_order(tmp_path: Path) -> None:
    """The folder source streams its texts back from disk grouped by image: rows of one image may be
    anywhere in the file; samples come in order of first appearance, captions in file order."""
    from mmfuse.data.sources.folder import FolderSource

    _photos(tmp_path, ["a.png", "b.png", "c.png"])
    rows = ["image,caption,split", "b.png,b one,train", "a.png,a one,val", "b.png,b two,train", "c.png,c one,test",
            "a.png,a two,val", "b.png,b three,train", "d.png,,train"]
    (tmp_path / "caps.csv").write_text("\n".join(rows) + "\n")
    src = FolderSource(images=str(tmp_path), captions=str(tmp_path / "caps.csv"))
    got = [(s.id, s.split, s.captions) for s in src.samples()]
    assert got == [("b", "train", ["b one", "b two", "b three"]), ("a", "val", ["a one", "a two"]),
                   ("c", "test", ["c one"]), ("d", "train", [""])]
    assert [src.count(s) for s in ("train", "val", "test")] == [2, 1, 1]


def test_folder_jsonl_classification_with_splits(tmp_path: Path, workspace: Path) -> None:
    names = _photos(tmp_path / "photos", [f"q{i}.jpg" for i in range(6)], "")
    split = ["train", "train", "train", "train", "val", "test"]
    lines = [json.dumps({"image": n, "text": f"is it {c} ?", "label": "yes" if k == 0 else "no", "split": s})
             for n, c, s in zip(names, COLOURS, split) for k in range(2)]
    (tmp_path / "qa.jsonl").write_text("\n".join(lines) + "\n")
    res = invoke("prepare-data", "folder", "--images", str(tmp_path / "photos"), "--captions", str(tmp_path / "qa.jsonl"),
                 "--name", "d")
    assert res.exit_code == 0, res.stderr
    root = workspace / "datasets" / "d"
    assert load_manifest(root)["task"] == "classify" and load_manifest(root)["labels"] == ["no", "yes"]
    assert len(load_labelled_split(root, "train")) == 8 and load_labelled_split(root, "test")[0].text == "is it black ?"
    res = invoke("train", "--data", "d", "--run", "r", *SMALL)
    assert res.exit_code == 0, res.stderr
    res = invoke("evaluate", "--run", "r", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout[res.stdout.index("{"):])["num_samples"] == 2


def test_bad_images_are_skipped_listed_and_converted(tmp_path: Path, workspace: Path) -> None:
    photos = tmp_path / "photos"
    _photos(photos, ["good1.jpg", "good2.jpg", "good3.jpg"])
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(photos / "cmyk.jpg")  # red in CMYK
    Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)).save(photos / "deep.png")
    rotated = Image.new("RGB", (60, 20), "blue")
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated.save(photos / "exif.jpg", exif=exif)
    (photos / "corrupt.jpg").write_bytes((photos / "good1.jpg").read_bytes()[:150])
    (photos / "empty.png").write_bytes(b"")
    names = ["good1.jpg", "good2.jpg", "good3.jpg", "cmyk.jpg", "deep.png", "exif.jpg", "corrupt.jpg", "empty.png"]
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps({"image": n, "captions": [f"picture {n}"]}) for n in names))
    res = invoke("prepare-data", "folder", "--images", str(photos), "--captions", str(tmp_path / "caps.jsonl"),
                 "--val-ratio", "0.2", "--test-ratio", "0.2")
    assert res.exit_code == 0, res.stderr
    summary = [line for line in res.stderr.splitlines() if line.startswith("skipped")]
    assert len(summary) == 1 and summary[0].startswith("skipped 2 sample(s)")
    report = json.loads((workspace / "datasets" / "folder" / "report.json").read_text())
    assert sorted(Path(s["image"]).name for s in report["skipped"]) == ["corrupt.jpg", "empty.png"]
    kept = {r.image.name for s in ("train", "val", "test") for r in load_split(workspace / "datasets" / "folder", s)}
    assert kept == {"good1.jpg", "good2.jpg", "good3.jpg", "cmyk.jpg", "deep.png", "exif.jpg"}
    assert load_rgb(photos / "exif.jpg").size == (20, 60)  # upright
    assert load_rgb(photos / "cmyk.jpg").getpixel((5, 5))[0] > 200
    deep = np.asarray(load_rgb(photos / "deep.png"))
    assert deep.min() < 10 and 100 < deep.max() <= 255 and len(np.unique(deep)) > 50  # scaled, not clipped to white


def test_a_decompression_bomb_is_skipped_not_crashed(tmp_path: Path, workspace: Path, monkeypatch) -> None:
    photos = tmp_path / "photos"
    _photos(photos, ["a.jpg", "b.jpg", "c.jpg"])
    Image.new("RGB", (200, 200), "red").save(photos / "huge.png")  # 40,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow refuses images over twice this
    lines = [json.dumps({"image": n, "caption": "a picture"}) for n in ("a.jpg", "b.jpg", "c.jpg", "huge.png")]
    (tmp_path / "caps.jsonl").write_text("\n".join(lines))
    res = invoke("prepare-data", "folder", "--images", str(photos), "--captions", str(tmp_path / "caps.jsonl"))
    assert res.exit_code == 0, res.stderr
    skipped = json.loads((workspace / "datasets" / "folder" / "report.json").read_text())["skipped"]
    assert [Path(s["image"]).name for s in skipped] == ["huge.png"]
    assert "decompression bomb" in skipped[0]["problem"]


@pytest.mark.parametrize("args,message", [
    (["coco", "--images", "."], "source 'coco' needs --annotations"),
    (["coco", "--annotations", "x.json", "--images", ".", "--captions", "c.csv"], "source 'coco' does not take --captions"),
    (["folder", "--images", "nowhere", "--captions", "c.csv"], "--images is not a directory: nowhere"),
    (["karpathy", "--json", "missing.json", "--images", "."], "Karpathy split file not found: missing.json"),
    (["shapes", "--images", "."], "source 'shapes' does not take option(s): images"),
])
def test_wrong_options_name_the_problem(args: list[str], message: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = invoke("prepare-data", *args)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.mark.parametrize("name,content,message", [
    ("c.jsonl", '{"image": "a.jpg", "captions": ["x"]}\n{"image": "b.jpg", "captions": [\n', "c.jsonl:2: invalid JSON"),
    ("c.jsonl", '{"captions": ["x"]}\n', "c.jsonl:1: no 'image'"),
    ("c.csv", "picture,text\na.jpg,hello\n", "c.csv:1: the header must name the columns 'image' and 'caption'"),
    ("c.csv", "image,caption,split\na.jpg,hello,dev\n", "c.csv:2: split 'dev' is not one of train, val, test"),
    ("c.txt", "a.jpg hello\n", "expected a .csv or .jsonl file"),
])
def test_bad_caption_files_name_file_and_line(name: str, content: str, message: str, tmp_path: Path) -> None:
    (tmp_path / name).write_text(content)
    res = invoke("prepare-data", "folder", "--images", str(tmp_path), "--captions", str(tmp_path / name))
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_flickr_token_file_errors(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("a.jpg#0\tfine\nno tab on this line\n")
    res = invoke("prepare-data", "flickr8k", "--captions", str(tmp_path / "t.txt"), "--images", str(tmp_path))
    assert res.exit_code == 1 and f"{tmp_path / 't.txt'}:2: expected '<image>#<n>', a tab or spaces" in res.stderr
