"""The preparation scripts in data/ on fixtures in the public formats (tests/fixtures/data).

Parquet inputs (lmms-lab/MME, CV-Bench) are built here with pyarrow, with the public column names and the
Hugging Face image struct {bytes, path}.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mixlora.data.dataset import PromptDataset
from mixlora.data.images import ImageProcessor
from mixlora.data.tokenizer import build_tokenizer

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "data"
MME_SRC = FIXTURES / "mme" / "MME_Benchmark_release_version"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "data" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def png_bytes(color, tmp_path, name):
    path = tmp_path / name
    Image.new("RGB", (4, 4), color).save(path)
    return path.read_bytes()


# ---------------------------------------------------------------- Vision-Flan

def test_prepare_vision_flan(tmp_path, capsys):
    script = load_script("prepare_vision_flan")
    args = ["--annotations", str(FIXTURES / "vision_flan" / "annotation_191-task_1k.json"),
            "--images", str(FIXTURES / "vision_flan" / "images_191task_1k"), "--out", str(tmp_path / "out")]
    assert script.main(args) == 0
    out = tmp_path / "out"
    clean = json.loads((out / "annotations.clean.json").read_text())
    original = json.loads((FIXTURES / "vision_flan" / "annotation_191-task_1k.json").read_text())
    assert clean == [original[i] for i in (0, 1, 2, 4)]  # unchanged records, original order
    report = json.loads((out / "report.json").read_text())
    assert report["problems_by_kind"] == {"missing_image": 1, "malformed_record": 3}
    assert [(p["index"], p["kind"]) for p in report["problems"]] == [
        (3, "missing_image"), (5, "malformed_record"), (6, "malformed_record"), (7, "malformed_record")]
    tasks = json.loads((out / "task_index.json").read_text())
    assert {t: e["count"] for t, e in tasks.items()} == {
        "GTSRB+image_classification": 1, "VQA_counting": 1, "coco+image_classification_appliance": 2}
    assert tasks["GTSRB+image_classification"] == {"count": 1, "example_instruction":
                                                   "What traffic sign is shown in the image?",
                                                   "example_answer": "speed limit (30km/h)"}
    text = (out / "report.txt").read_text()
    assert "Problems by kind" in text and "coco+image_classification_appliance  2" in text
    assert "8 records -> 4 clean, 4 with problems" in capsys.readouterr().out

    # Decoding finds the corrupt file too; --strict turns problems into exit status 1.
    assert script.main(args + ["--check-images", "--strict"]) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["problems_by_kind"]["corrupt_image"] == 1 and report["clean"] == 3
    assert "cannot be decoded" in [p for p in report["problems"] if p["index"] == 4][0]["message"]


def test_prepare_vision_flan_bad_input(tmp_path):
    script = load_script("prepare_vision_flan")
    bad = tmp_path / "a.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--annotations", str(bad), "--images", str(tmp_path), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------- MME

def test_prepare_mme_release_layouts(tmp_path):
    script = load_script("prepare_mme")
    assert script.main(["--src", str(MME_SRC), "--out", str(tmp_path)]) == 0
    existence = read_jsonl(tmp_path / "existence.jsonl")  # flat layout, one jpg and one png, CRLF lines
    assert [(r["image"], r["answer"]) for r in existence] == [
        ("000000006040.jpg", "Yes"), ("000000006040.jpg", "No"),
        ("000000018921.png", "No"), ("000000018921.png", "Yes")]
    assert existence[2] == {"question_id": "existence/000000018921.png", "category": "existence",
                            "image": "000000018921.png",
                            "image_path": str((MME_SRC / "existence" / "000000018921.png").resolve()),
                            "question": "Is there a dog in this image? Please answer yes or no.", "answer": "No"}
    artwork = read_jsonl(tmp_path / "artwork.jsonl")  # images/ + questions_answers_YN/ layout
    assert [r["image_path"] for r in artwork] == [str((MME_SRC / "artwork" / "images" / "10002.jpg").resolve())] * 2
    assert [r["question"].split(" in the form of ")[1][:5] for r in artwork] == ["paint", "glass"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["subtasks"] == {"existence": {"images": 2, "questions": 4}, "artwork": {"images": 1, "questions": 2}}
    assert len(summary["missing_subtasks"]) == 12 and summary["problems"] == []


def test_prepare_mme_reports_bad_images(tmp_path):
    script = load_script("prepare_mme")
    src = tmp_path / "MME"
    shutil.copytree(MME_SRC, src)
    (src / "existence" / "000000018921.txt").write_text("Only one question? Please answer yes or no.\tYes\n")
    (src / "artwork" / "questions_answers_YN" / "99999.txt").write_text("Q1\tYes\nQ2\tNo\n")  # no image
    assert script.main(["--src", str(src), "--out", str(tmp_path / "out"), "--strict"]) == 1
    assert [r["image"] for r in read_jsonl(tmp_path / "out" / "existence.jsonl")] == ["000000006040.jpg"] * 2
    problems = json.loads((tmp_path / "out" / "summary.json").read_text())["problems"]
    assert len(problems) == 2
    assert problems[0].endswith("000000018921.txt: 1 question(s); the official scorer needs exactly 2 per image")
    assert problems[1] == (f"{src}/artwork/questions_answers_YN/99999.txt: no image 99999.jpg/.png/.jpeg in "
                           f"{src}/artwork/images")


def test_prepare_mme_parquet_keeps_pairs_consecutive(tmp_path):
    script = load_script("prepare_mme")
    red, blue = png_bytes((255, 0, 0), tmp_path, "r.png"), png_bytes((0, 0, 255), tmp_path, "b.png")
    rows = [  # the two images' questions interleaved, as a shuffled export could be
        ("code_reasoning/0020.png", red, "Q1 for red? Please answer yes or no.", "Yes", "code_reasoning"),
        ("OCR/0001.png", blue, "Q1 for blue? Please answer yes or no.", "No", "OCR"),
        ("code_reasoning/0020.png", red, "Q2 for red? Please answer yes or no.", "No", "code_reasoning"),
        ("OCR/0001.png", blue, "Q2 for blue? Please answer yes or no.", "Yes", "OCR"),
    ]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "question_id": [r[0] for r in rows],
        "image": pa.array([{"bytes": r[1], "path": None} for r in rows], type=image_type),
        "question": [r[2] for r in rows], "answer": [r[3] for r in rows], "category": [r[4] for r in rows]})
    pq.write_table(table, tmp_path / "test-00000-of-00001.parquet")
    out = tmp_path / "out"
    assert script.main(["--parquet", str(tmp_path / "test-00000-of-00001.parquet"), "--out", str(out)]) == 0
    code = read_jsonl(out / "code_reasoning.jsonl")
    assert [(r["question_id"], r["answer"]) for r in code] == [("code_reasoning/0020.png", "Yes"),
                                                               ("code_reasoning/0020.png", "No")]
    assert Path(code[0]["image_path"]).read_bytes() == red
    assert Path(code[0]["image_path"]) == (out / "images" / "code_reasoning" / "0020.png").resolve()
    ocr = read_jsonl(out / "OCR.jsonl")
    assert [r["question"][:2] for r in ocr] == ["Q1", "Q2"] and Path(ocr[1]["image_path"]).read_bytes() == blue

    # The converted file feeds the generic prompt loader (LLaVA-1.5 suffix replacement).
    tok = build_tokenizer(["Q1 for red? Answer the question using a single word or phrase."], vocab_size=300)
    ds = PromptDataset(str(out / "code_reasoning.jsonl"), tok, ImageProcessor(4), 2, prompt_field="question",
                       id_field="question_id", strip_suffix="Please answer yes or no.",
                       prompt_suffix="Answer the question using a single word or phrase.")
    assert tok.decode(ds[0]["input_ids"]).endswith(
        "USER: <image><image>\nQ1 for red?\nAnswer the question using a single word or phrase. ASSISTANT:")
    assert ds.task_name == "code_reasoning" and ds[1]["record"]["answer"] == "No"


# ---------------------------------------------------------------- CV-Bench

def test_prepare_cvbench_jsonl(tmp_path):
    script = load_script("prepare_cvbench")
    src = FIXTURES / "cvbench" / "CV-Bench"
    assert script.main(["--src", str(src), "--out", str(tmp_path)]) == 0
    records = read_jsonl(tmp_path / "cvbench.jsonl")
    originals = read_jsonl(src / "test_2d.jsonl") + read_jsonl(src / "test_3d.jsonl")
    assert [r["idx"] for r in records] == [0, 1, 2] and [r["split"] for r in records] == ["test_2d"] * 2 + ["test_3d"]
    for rec, orig in zip(records, originals):
        assert rec["image_path"] == str((src / orig["filename"]).resolve())
        assert {k: v for k, v in rec.items() if k not in ("split", "image_path")} == orig
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["by_task"] == {"Count": 1, "Relation": 1, "Depth": 1} and summary["problems"] == []


def test_prepare_cvbench_parquet_writes_embedded_images(tmp_path):
    script = load_script("prepare_cvbench")
    src = tmp_path / "CV-Bench"
    src.mkdir()
    green = png_bytes((0, 255, 0), tmp_path, "g.png")
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "idx": [5], "type": ["2D"], "task": ["Count"],
        "image": pa.array([{"bytes": green, "path": "ade20k_5.png"}], type=image_type),
        "question": ["How many chairs are in the image?"], "choices": [["1", "2"]], "answer": ["(B)"],
        "prompt": ["How many chairs are in the image? Select from the following choices.\n(A) 1\n(B) 2"],
        "filename": ["img/2D/count/ade20k_5.png"], "source": ["ADE20K"]})
    pq.write_table(table, src / "test_2d.parquet")
    out = tmp_path / "out"
    assert script.main(["--src", str(src), "--out", str(out), "--strict"]) == 0
    (record,) = read_jsonl(out / "cvbench.jsonl")
    assert record["image_path"] == str((out / "img/2D/count/ade20k_5.png").resolve())
    assert Path(record["image_path"]).read_bytes() == green
    assert "image" not in record and record["choices"] == ["1", "2"] and record["answer"] == "(B)"


def test_prepare_cvbench_missing_image_is_reported(tmp_path):
    script = load_script("prepare_cvbench")
    src = tmp_path / "CV-Bench"
    src.mkdir()
    (src / "test_2d.jsonl").write_text(json.dumps({"idx": 9, "task": "Count", "filename": "img/2D/count/x.png"}) + "\n")
    assert script.main(["--src", str(src), "--out", str(tmp_path / "out"), "--strict"]) == 1
    problems = json.loads((tmp_path / "out" / "summary.json").read_text())["problems"]
    assert problems == [f"{src / 'test_2d.jsonl'}:1 (idx 9, task 'Count'): image 'img/2D/count/x.png' not found "
                        f"under {src} and no embedded bytes"]
