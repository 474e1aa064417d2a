"""The answering sources of real data: VQA v2 files and LLaVA instruction JSON, into data sets."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from mmfuse.data.records import load_answer_split, load_manifest
from mmfuse.data.sources.shapes import SPLITS
from tests.conftest import invoke
from tests.test_errors import _fails

VQA = Path(__file__).parent / "fixtures" / "vqa"


def _coco_images(folder: Path, subtype: str, ids: list[int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        Image.new("RGB", (40, 30), (10 * i % 255, 80, 160)).save(folder / f"COCO_{subtype}_{i:012d}.jpg")
    return folder


def _train_pair(tmp_path: Path) -> tuple[Path, Path]:
    """The fixture's val2014 questions again, as a train2014 subset about other images."""
    questions = json.loads((VQA / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    annotations = json.loads((VQA / "v2_mscoco_val2014_annotations.json").read_text())
    questions["data_subtype"] = "train2014"
    for q in questions["questions"]:
        q["question_id"] += 1000
        q["image_id"] += 100
    for a in annotations["annotations"]:
        a["question_id"] += 1000
        a["image_id"] += 100
    q_path, a_path = tmp_path / "v2_OpenEnded_mscoco_train2014_questions.json", tmp_path / "v2_mscoco_train2014_annotations.json"
    q_path.write_text(json.dumps(questions))
    a_path.write_text(json.dumps(annotations))
    return q_path, a_path


def test_vqa_files_keep_ten_answers_and_types_and_split_held_out_images_whole(tmp_path: Path, workspace: Path) -> None:
    images = tmp_path / "coco"
    _coco_images(images / "val2014", "val2014", [42, 43, 44, 45])
    _coco_images(images, "train2014", [142, 143, 144, 145])
    train_q, train_a = _train_pair(tmp_path)
    res = invoke("prepare-data", "vqa", "--questions", str(train_q), "--annotations", str(train_a),
                 "--questions", str(VQA / "v2_OpenEnded_mscoco_val2014_questions.json"),
                 "--annotations", str(VQA / "v2_mscoco_val2014_annotations.json"), "--images", str(images))
    assert res.exit_code == 0, res.stderr
    root = workspace / "datasets" / "vqa"
    assert load_manifest(root)["task"] == "answer"
    records = {split: load_answer_split(root, split) for split in SPLITS}
    assert len(records["train"]) == 14 and all(r.id.startswith("2") for r in records["train"])  # ids 2000-2013
    held_out = records["val"] + records["test"]
    assert sorted(r.id for r in held_out) == [str(i) for i in range(1000, 1014)]  # VQA's question ids
    val_images, test_images = ({r.image for r in records[s]} for s in ("val", "test"))
    assert val_images and test_images and not val_images & test_images  # an image's questions stay together
    first = next(r for r in held_out if r.id == "1000")
    assert first.question == "How many dogs are there?" and first.answers == ("2",) * 10
    assert (first.question_type, first.answer_type) == ("how many", "number")
    assert first.image.name == "COCO_val2014_000000000042.jpg"
    # results name questions by VQA's numeric ids, against the data set and the official file alike
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"question_id": int(r.id), "answer": r.answers[0]} for r in records["test"]]))
    for references in ("vqa", str(VQA / "v2_mscoco_val2014_annotations.json")):
        out = invoke("evaluate", "--predictions", str(results), "--references", references, "--json")
        assert out.exit_code == 0, out.stderr
        assert json.loads(out.stdout)["num_questions"] == len(records["test"])


def test_vqa_refuses_unpaired_files_and_foreign_annotations(tmp_path: Path) -> None:
    images = _coco_images(tmp_path / "coco", "val2014", [42])
    questions = str(VQA / "v2_OpenEnded_mscoco_val2014_questions.json")
    _fails(invoke("prepare-data", "vqa", "--questions", questions, "--images", str(images)), "needs --annotations")
    train_q, train_a = _train_pair(tmp_path)
    _fails(invoke("prepare-data", "vqa", "--questions", questions, "--questions", str(train_q), "--annotations",
                  str(train_a), "--images", str(images)), "come in pairs")
    _fails(invoke("prepare-data", "vqa", "--questions", questions, "--annotations", str(train_a),
                  "--images", str(images)), "question 2000 is annotated but not in the questions file")


def _llava(tmp_path: Path) -> Path:
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "red.png")
    Image.new("RGB", (32, 32), (10, 10, 200)).save(tmp_path / "blue.png")
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "green.png")
    data = [
        {"id": "a", "image": "red.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is this?"}, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Is it bright?"}, {"from": "gpt", "value": "Yes, quite bright."}]},
        {"id": "b", "image": "blue.png", "conversations": [
            {"from": "human", "value": "What color is the square?\n<image>"}, {"from": "gpt", "value": "Blue."}]},
        {"id": "c", "image": "green.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "A green square."}]},
        {"id": "d", "conversations": [{"from": "human", "value": "Tell a joke."}, {"from": "gpt", "value": "No."}]},
    ]
    path = tmp_path / "instruct.json"
    path.write_text(json.dumps(data))
    return path


def test_llava_conversations_become_questions_with_their_history(tmp_path: Path, workspace: Path) -> None:
    path = _llava(tmp_path)
    res = invoke("prepare-data", "llava", "--json", str(path), "--images", str(tmp_path))
    assert res.exit_code == 0, res.stderr
    root = workspace / "datasets" / "llava"
    records = {r.id: r for split in SPLITS for r in load_answer_split(root, split)}
    assert sorted(records) == ["a-t0", "a-t1", "b-t0", "c-t0"]  # the text-only entry is left out
    assert records["a-t0"].question == "What color is this?" and records["a-t0"].answers == ("Red.",)
    assert records["a-t1"].history == (("What color is this?", "Red."),)
    assert records["a-t1"].history_tokens == ((("what", "color", "is", "this", "?"), ("red", ".")),)
    assert records["b-t0"].question == "What color is the square?"  # the placeholder goes, wherever it is
    split_of = {r.id: split for split in SPLITS for r in load_answer_split(root, split)}
    assert split_of["a-t0"] == split_of["a-t1"]  # an image's conversation stays in one split
    assert load_manifest(root)["options"]["text_only_left_out"] == 1


def test_llava_names_a_bad_turn(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"image": "x.png", "conversations": [{"from": "robot", "value": "hi"}]}]))
    _fails(invoke("prepare-data", "llava", "--json", str(path), "--images", str(tmp_path)), "entry 0",
           "human or gpt")


def test_a_folder_with_questions_and_answers(tmp_path: Path, workspace: Path) -> None:
    for name, colour in (("a.png", (200, 0, 0)), ("b.png", (0, 0, 200)), ("c.png", (0, 200, 0))):
        Image.new("RGB", (32, 32), colour).save(tmp_path / name)
    csv = tmp_path / "qa.csv"
    csv.write_text('image,question,answers,question_type,split\n'
                   'a.png,what color is it?,"[""red"", ""dark red""]",what color,train\n'
                   'a.png,is it red?,"[""yes""]",is it,train\n'
                   'b.png,what color is it?,"[""blue""]",what color,val\n'
                   'c.png,what color is it?,"[""green""]",what color,test\n')
    res = invoke("prepare-data", "folder", "--images", str(tmp_path), "--captions", str(csv), "--name", "qa")
    assert res.exit_code == 0, res.stderr
    train = load_answer_split(workspace / "datasets" / "qa", "train")
    assert [(r.question, r.answers, r.question_type) for r in train] == [
        ("what color is it?", ("red", "dark red"), "what color"), ("is it red?", ("yes",), "is it")]
    lines = tmp_path / "qa.jsonl"
    lines.write_text("\n".join(json.dumps(row) for row in [
        {"image": "a.png", "question": "what is it?", "answer": "a red square", "split": "train"},
        {"image": "b.png", "question": "what is it?", "answer": "a blue square", "split": "val"},
        {"image": "c.png", "question": "what is it?", "answer": "a green square", "split": "test"}]) + "\n")
    res = invoke("prepare-data", "folder", "--images", str(tmp_path), "--captions", str(lines), "--name", "qa2")
    assert res.exit_code == 0, res.stderr
    assert load_answer_split(workspace / "datasets" / "qa2", "val")[0].answers == ("a blue square",)


def test_a_folder_file_mixing_questions_with_captions_or_lacking_answers_is_refused(tmp_path: Path) -> None:
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"image": "a.png", "caption": "a square"}\n{"image": "a.png", "question": "is it?", "answer": "yes"}\n')
    _fails(invoke("prepare-data", "folder", "--images", str(tmp_path), "--captions", str(mixed)),
           "mixed.jsonl:2", "task 'answer'", "one kind of row")
    bad = tmp_path / "bad.csv"
    bad.write_text('image,question,answers\na.png,is it?,"yes"\n')
    _fails(invoke("prepare-data", "folder", "--images", str(tmp_path), "--captions", str(bad)),
           "bad.csv:2", "JSON list of strings")
    bad.write_text('image,question\na.png,is it?\n')
    _fails(invoke("prepare-data", "folder", "--images", str(tmp_path), "--captions", str(bad)), "needs 'answer'")
