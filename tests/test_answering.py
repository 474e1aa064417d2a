"""Task ``answer``: what the loss covers, generation from a read prompt (every fusion that can answer,
mmfuse's decoders and a language model), the answer prior, and the commands (train, evaluate, ask)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmfuse.config import DecodeConfig, ModelConfig
from mmfuse.data.dataset import AnswerDataset
from mmfuse.data.records import AnswerRecord
from mmfuse.data.vocab import BOS_ID, EOS_ID, IGNORE, Vocab
from mmfuse.errors import MmfuseError
from mmfuse.evaluate.reports import answer_prior
from mmfuse.generate.answers import answer_images
from mmfuse.models.answerer import LMAnswers, VocabAnswers, teacher_forced
from mmfuse.models.captioner import Captioner, build_captioner, generation_log_probs
from mmfuse.models.fusion import FUSIONS
from mmfuse.models.hub import locate
from mmfuse.models.lm_captioner import build_lm_captioner
from mmfuse.models.parts import resolve_parts
from tests.conftest import invoke, tiny_run
from tests.lm_models import save_tiny_lm
from tests.test_errors import _fails

WORDS = ["what", "color", "is", "the", "circle", "?", "how", "many", "squares", "are", "there", "red", "blue", "2"]


def _record(question: str, answers: list[str], kind: str = "", history: tuple = ()) -> AnswerRecord:
    return AnswerRecord(id=question, image=Path("x.png"), question=question, answers=tuple(answers),
                        question_tokens=tuple(question.split()), answer_tokens=tuple(tuple(a.split()) for a in answers),
                        history=tuple((q, a) for q, a in history),
                        history_tokens=tuple((tuple(q.split()), tuple(a.split())) for q, a in history),
                        question_type=kind)


def test_the_loss_covers_the_answer_tokens_only() -> None:
    vocab = Vocab.build([WORDS])
    text = VocabAnswers(vocab)
    record = _record("how many squares are there ?", ["2", "2"], history=[("what color is the circle ?", "red")])
    prompt, answer = text.prompt(record), text.answer(record, 0)
    ids = [vocab.index(w) for w in "what color is the circle ?".split()]
    assert prompt == [BOS_ID] + ids + [BOS_ID, vocab.index("red"), EOS_ID] + [vocab.index(w) for w in
                                                                              "how many squares are there ?".split()]
    assert answer == [BOS_ID, vocab.index("2"), EOS_ID]  # <bos> separates question and answer
    data = AnswerDataset([Path("x.png")], [prompt], [[answer]], 32)
    batch = data.collate([(torch.zeros(3, 32, 32), 0)])
    inputs, targets = teacher_forced(Captioner, batch["tokens"], batch["prompt_lengths"])
    assert inputs[0].tolist() == prompt + answer[:-1]
    assert targets[0].tolist() == [IGNORE] * len(prompt) + answer[1:]  # the answer word and <eos>, nothing else


def test_each_epoch_draws_one_human_answer_per_question_as_often_as_people_gave_it() -> None:
    data = AnswerDataset([Path("x.png")] * 400, [[BOS_ID]] * 400, [[[1, 5, 2]] * 7 + [[1, 6, 2]] * 3] * 400, 32)
    drawn = [row[2] for row in data.collate([(torch.zeros(3, 32, 32), i) for i in range(400)])["tokens"].tolist()]
    assert 0.6 < drawn.count(5) / 400 < 0.8 and drawn.count(5) + drawn.count(6) == 400
    data.set_epoch(1)
    again = [row[2] for row in data.collate([(torch.zeros(3, 32, 32), i) for i in range(400)])["tokens"].tolist()]
    assert again != drawn  # another epoch, other draws


def _answering_fusions() -> list[str]:
    names = []
    for name in sorted(FUSIONS):
        try:
            resolve_parts(ModelConfig(fusion=name), "answer")
            names.append(name)
        except MmfuseError:
            pass
    return names


def _greedy_agrees_with_teacher_forcing(model, text, prompts: list[list[int]], images: torch.Tensor,
                                        first_input: list[int], shift: int) -> None:
    """Generating from the read prompt gives, token for token, the argmax of the teacher-forced
    logits over the prompt and the generated answer; answering one question alone gives the same."""
    decode = DecodeConfig(max_length=6)
    together = answer_images(model, images, prompts, decode)
    for i, prompt in enumerate(prompts):
        generated = together[i][0].tokens
        alone = answer_images(model, images[i:i + 1], [prompt], decode)[0][0].tokens
        assert generated == alone, (i, generated, alone)
        ended = len(generated) < decode.max_length
        sequence = torch.tensor([prompt + first_input + generated + ([EOS_ID] if ended else [])])
        with torch.no_grad():
            logits = model(images[i:i + 1], sequence[:, :-1] if shift else sequence, torch.tensor([0]))
        predicted = generation_log_probs(logits[0]).argmax(-1).tolist() if shift else logits[0].argmax(-1).tolist()
        start = len(prompt) + len(first_input) - shift
        expected = generated + ([text_end(model)] if ended else [])
        assert predicted[start:start + len(expected)] == expected, (i, predicted, expected)


def text_end(model) -> int:
    return model.special.end


@pytest.mark.parametrize("fusion", _answering_fusions())
def test_answers_generated_after_the_question_are_what_teacher_forcing_predicts(fusion: str) -> None:
    vocab = Vocab.build([WORDS])
    torch.manual_seed(0)
    cfg = ModelConfig(fusion=fusion, image_size=32, feature_dim=16, embed_dim=16, hidden_dim=32, dropout=0.0,
                      image_tokens=4, connector_layers=1)
    model = build_captioner(resolve_parts(cfg, "answer"), len(vocab)).eval()
    text = VocabAnswers(vocab)
    questions = ["what color is the circle ?", "how many squares are there ?", "what color is the circle ?", "is red ?"]
    prompts = [text.prompt(_record(q, ["x"])) for q in questions]  # lengths 7, 7, 7, 3: two groups
    _greedy_agrees_with_teacher_forcing(model, text, prompts, torch.randn(4, 3, 32, 32), [BOS_ID], shift=1)


@pytest.mark.parametrize("fusion", ["mlp", "xattn"])
def test_a_language_model_answers_after_reading_the_question(tmp_path: Path, fusion: str) -> None:
    folder = save_tiny_lm(tmp_path / "lm", "llama")
    torch.manual_seed(0)
    cfg = ModelConfig(decoder=f"hf:{folder}", fusion=fusion, image_size=32, feature_dim=16, dropout=0.0)
    model = build_lm_captioner(resolve_parts(cfg, "answer"), locate(str(folder))).eval()
    text = LMAnswers(model.text)
    prompts = [text.prompt(_record(q, ["x"])) for q in ["a red circle", "a small red square", "two blue circles"]]
    assert text.pad == IGNORE and len({len(p) for p in prompts}) == 2
    _greedy_agrees_with_teacher_forcing(model, text, prompts, torch.randn(3, 3, 32, 32), [], shift=0)


def test_the_answer_prior_is_the_most_frequent_training_answer_of_each_question_type() -> None:
    train = [_record("q", ["2"] * 10, "how many")] * 3 + [_record("q", ["1"] * 10, "how many")] * 2 + \
        [_record("q", ["red"] * 10, "what color")]
    test = [_record("q", ["2"] * 10, "how many"), _record("q", ["1"] * 10, "how many"),
            _record("q", ["red"] * 10, "what color"), _record("q", ["2"] * 10, "new type")]
    prior = answer_prior(train, test)
    assert prior["answers"] == {"how many": "2", "what color": "red"}
    assert prior["metrics"]["vqa_accuracy"] == 0.75  # "2", "2" (wrong), "red", and "2" (overall most frequent)
    assert prior["no_question"] == {"answer": "2", "metrics": {"vqa_accuracy": 0.5, "exact_match": 0.5}}


@pytest.fixture(scope="module")
def trained_vqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace holding data set 'vqa' (shapes-vqa) and a 1-epoch answering run 'v' (read-only)."""
    return tiny_run(tmp_path_factory, "shapes-vqa", "vqa", "v", "--epochs", "1")


@pytest.mark.slow
def test_evaluating_a_run_equals_scoring_its_results_file_and_prints_the_prior(trained_vqa: Path, tmp_path: Path) -> None:
    ws = str(trained_vqa)
    out = invoke("evaluate", "--run", "v", "--json", "--show", "2", "-w", ws)
    assert out.exit_code == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["task"] == "answer" and "prior: per question type" in out.stderr and "VQA accuracy" in out.stderr
    results = trained_vqa / "runs" / "v" / "results-test.json"
    assert [r["question_id"] for r in json.loads(results.read_text())] == [q["id"] for q in report["questions"]]
    again = json.loads(invoke("evaluate", "--predictions", str(results), "--references", "vqa", "--json",
                              "-w", ws).stdout)
    assert again["metrics"] == report["metrics"] and again["unanswered"] == 0
    for modality, mode in (("text", "zero"), ("text", "shuffle"), ("image", "shuffle")):
        ablated = invoke("evaluate", "--run", "v", "--ablate", modality, "--ablate-mode", mode, "--json", "-w", ws)
        assert ablated.exit_code == 0, ablated.stderr
        assert json.loads(ablated.stdout)["ablation"] == {"modality": modality, "mode": mode}
        assert (trained_vqa / "runs" / "v" / f"eval-test-ablate-{modality}-{mode}.json").is_file()


@pytest.mark.slow
def test_ask_answers_in_input_order_from_arguments_stdin_and_pairs(trained_vqa: Path, tmp_path: Path) -> None:
    ws = str(trained_vqa)
    images = sorted((trained_vqa / "datasets" / "vqa" / "images" / "test").glob("*.png"))[:3]
    out = invoke("ask", *map(str, images), "--question", "what color is the circle ?", "--run", "v", "-w", ws)
    assert out.exit_code == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert [r[0] for r in rows] == list(map(str, images)) and all(r[1] == "what color is the circle ?" for r in rows)
    piped = invoke("ask", "-", "--question", "what color is the circle ?", "--run", "v", "-w", ws,
                   input="\n".join(map(str, images)) + "\n")
    assert piped.stdout == out.stdout
    pairs = "\n".join(json.dumps({"image": str(p), "question": q}) for p, q in
                      zip(images, ["what color is the circle ?", "how many circles are there ?", "is there a red circle ?"]))
    lines = invoke("ask", "--pairs", "-", "--run", "v", "--format", "jsonl", "--beam-size", "2", "-w", ws, input=pairs)
    assert lines.exit_code == 0, lines.stderr
    answered = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [a["question"] for a in answered] == ["what color is the circle ?", "how many circles are there ?",
                                                 "is there a red circle ?"]
    assert all(a["answer"] == a["answers"][0] and a["decoding"]["beam_size"] == 2 for a in answered)
    unknown = invoke("ask", str(images[0]), str(images[1]), "--question", "what colour is the zebra ?", "--run", "v",
                     "-w", ws)
    assert unknown.exit_code == 0 and unknown.stderr.count("'colour', 'zebra' in 'what colour is the zebra ?': not "
                                                           "in the model's vocabulary") == 1, unknown.stderr
    missing = invoke("ask", str(images[0]), str(tmp_path / "nope.png"), "--question", "is there a red circle ?",
                     "--run", "v", "-w", ws)
    assert missing.exit_code == 1 and len(missing.stdout.splitlines()) == 1 and "nope.png" in missing.stderr


@pytest.mark.slow
def test_ask_tokenizes_each_question_text_once(trained_vqa: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmfuse.generate import inference

    inference._question_tokens.cache_clear()
    seen: list[str] = []
    monkeypatch.setattr(inference, "tokenize", lambda text: seen.append(text) or text.split())
    images = sorted((trained_vqa / "datasets" / "vqa" / "images" / "test").glob("*.png"))[:5]
    out = invoke("ask", *map(str, images), "--question", "what color is the zebra ?", "--batch-size", "2", "--run", "v",
                 "-w", str(trained_vqa))
    assert out.exit_code == 0 and len(out.stdout.splitlines()) == 5, out.stderr
    assert seen == ["what color is the zebra ?"] and "'zebra'" in out.stderr  # read once: warning and 3 batches


@pytest.mark.slow
def test_ask_and_caption_refuse_each_others_runs_and_bad_input(trained_vqa: Path, trained: Path, tmp_path: Path) -> None:
    image = str(next((trained_vqa / "datasets" / "vqa" / "images" / "test").glob("*.png")))
    _fails(invoke("ask", image, "--run", "v", "-w", str(trained_vqa)), "give --question")
    _fails(invoke("ask", image, "--question", "is it ?", "--run", "r", "-w", str(trained)), "is a captioner",
           "mmfuse caption")
    _fails(invoke("caption", image, "--run", "v", "-w", str(trained_vqa)), "answers questions", "mmfuse ask")
    _fails(invoke("predict", image, "--text", "is it ?", "--run", "v", "-w", str(trained_vqa)), "mmfuse ask")
    _fails(invoke("ask", "--pairs", "-", "--run", "v", "-w", str(trained_vqa), input='{"image": "a.png"}\n'),
           "standard input:1", "\"question\"")


@pytest.mark.slow
def test_compare_ranks_answering_fusions_beside_the_answer_prior_with_ablations(workspace: Path) -> None:
    from tests.conftest import TINY

    assert invoke("prepare-data", "shapes-vqa", "--name", "vqa", *TINY).exit_code == 0
    out = invoke("compare", "--data", "vqa", "--fusion", "concat,prefix", "--epochs", "1", "--batch-size", "16",
                 "--feature-dim", "32", "--embed-dim", "16", "--hidden-dim", "32", "--ablate", "image,text", "--json")
    assert out.exit_code == 0, out.stderr
    board = json.loads(out.stdout)
    assert board["task"] == "answer" and board["ranked_by"] == "vqa_accuracy"
    assert [r["vqa_accuracy"] for r in board["rows"]] == sorted((r["vqa_accuracy"] for r in board["rows"]), reverse=True)
    row = board["rows"][0]
    assert {"answer_prior", "vqa_accuracy_without_image", "vqa_accuracy_without_text", "group:how many"} <= set(row)
    report = json.loads((workspace / "runs" / row["run"] / "eval-test.json").read_text())
    assert row["vqa_accuracy"] == report["metrics"]["vqa_accuracy"] and row["answer_prior"] == \
        report["prior"]["metrics"]["vqa_accuracy"]


@pytest.mark.slow
def test_ls_pipe_into_ask_into_head(trained_vqa: Path) -> None:
    """The README's pipeline, for real: ls | mmfuse ask - | head; head closing the pipe early is fine."""
    import os
    import subprocess
    import sys

    folder = trained_vqa / "datasets" / "vqa" / "images"
    script = (f"set -o pipefail; ls {folder}/*/*.png | {sys.executable} -m mmfuse ask - --question "
              f"'how many circles are there ?' --run v -w {trained_vqa} --format jsonl --batch-size 4 | head -n 2")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MMFUSE_WORKSPACE": str(trained_vqa)})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    answered = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answered) == 2 and all(a["question"] == "how many circles are there ?" for a in answered)
