"""metrics.jsonl after a resume: the rows of re-run steps replaced, not duplicated."""

import json

from fftrain.training.run_log import MetricsWriter


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_drops_the_rows_it_writes_again(tmp_path):
    writer = MetricsWriter(str(tmp_path), enabled=True, tensorboard=False)
    for step in (1, 2, 3, 4):
        writer.write(step, {"loss/cls": float(step)})
    writer.write(2, {"verification/lfw/accuracy": 0.5})  # evaluated after the checkpoint of step 2
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss')  # torn by the kill
    writer = MetricsWriter(str(tmp_path), enabled=True, tensorboard=False, resume_step=2)
    for step in (3, 4):
        writer.write(step, {"loss/cls": 10.0 + step})
    writer.close()
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [(r["step"], r.get("loss/cls")) for r in rows] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]


def test_a_fresh_run_keeps_the_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 7}\n')
    MetricsWriter(str(tmp_path), enabled=True, tensorboard=False).close()
    assert _rows(tmp_path / "metrics.jsonl") == [{"step": 7}]
