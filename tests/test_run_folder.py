"""Run folders: fresh / resume / overwrite rules with one-line errors, step logs cut back to the
checkpoint on resume, and experiment trackers (TensorBoard, offline wandb) through accelerate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tft2v.errors import TFT2VError
from tft2v.train.run_folder import (
    RUN_ARTEFACTS,
    continue_jsonl,
    continue_run_logs,
    prepare_run_folder,
    remove_run,
    run_artefacts,
)


def fake_checkpoint(run: Path, step: int) -> Path:
    """A folder that resolve_resume / list_checkpoints accept as the checkpoint of ``step``."""
    path = run / "checkpoints" / f"step-{step:08d}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"step": step, "world_size": 1}))
    return path


def write_rows(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def read_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def one_line_error(match: str, fn, *args, **kw) -> str:
    with pytest.raises(TFT2VError, match=match) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


# -- prepare_run_folder ---------------------------------------------------------------------------


def test_fresh_folder_new_or_empty_is_fine(tmp_path):
    assert prepare_run_folder(tmp_path / "new", None, False, True) is None
    (tmp_path / "empty/tensorboard").mkdir(parents=True)  # an empty artefact folder holds no run
    (tmp_path / "empty/notes.txt").write_text("mine")  # nor do the user's own files
    (tmp_path / "empty/train.log").write_text("")  # opened by whoever captures our console output
    assert prepare_run_folder(tmp_path / "empty", None, False, True) is None


@pytest.mark.parametrize("artefact", ["config.yaml", "metrics.jsonl", "samples.jsonl", "tensorboard/events.x",
                                      "checkpoints/step-00000002/trainer_state.json"])
def test_existing_run_without_resume_is_an_error(tmp_path, artefact):
    (tmp_path / artefact).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / artefact).write_text("{}")
    msg = one_line_error("already holds a run", prepare_run_folder, tmp_path, None, False, True)
    assert str(tmp_path) in msg and "--resume auto" in msg and "--overwrite" in msg


def test_resume_auto_without_checkpoint_is_an_error(tmp_path):
    msg = one_line_error("no checkpoint in", prepare_run_folder, tmp_path / "run", "auto", False, True)
    assert "auto-or-new" in msg and str(tmp_path / "run" / "checkpoints") in msg


def test_auto_or_new_starts_fresh_and_says_so_once(tmp_path):
    said = []
    assert prepare_run_folder(tmp_path / "run", "auto-or-new", False, True, notify=said.append) is None
    assert said == [f"no checkpoint in {tmp_path / 'run' / 'checkpoints'}: starting a new run"]
    assert prepare_run_folder(tmp_path / "run", "auto-or-new", False, False, notify=said.append) is None
    assert len(said) == 1  # other ranks stay quiet
    fake_checkpoint(tmp_path / "run", 3)
    assert prepare_run_folder(tmp_path / "run", "auto-or-new", False, True).name == "step-00000003"
    assert prepare_run_folder(tmp_path / "run", "auto", False, True).name == "step-00000003"


def test_resume_from_another_run_folder(tmp_path):
    old = fake_checkpoint(tmp_path / "old", 4)
    assert prepare_run_folder(tmp_path / "new", str(old), False, True) == old
    assert prepare_run_folder(tmp_path / "new", str(tmp_path / "old"), False, True) == old


def test_resume_older_checkpoint_beside_newer_ones_is_an_error(tmp_path):
    run = tmp_path / "run"
    older = fake_checkpoint(run, 2)
    fake_checkpoint(run, 5)
    msg = one_line_error("after step 2", prepare_run_folder, run, str(older), False, True)
    assert "step-00000005" in msg and "new --out" in msg
    assert prepare_run_folder(tmp_path / "branch", str(older), False, True) == older  # branching off is fine


def test_overwrite_with_resume_is_an_error(tmp_path):
    one_line_error("--overwrite and --resume auto", prepare_run_folder, tmp_path, "auto", True, True)


def test_overwrite_removes_only_known_artefacts(tmp_path):
    run = tmp_path / "run"
    fake_checkpoint(run, 1)
    for name in ("metrics.jsonl", "samples.jsonl", "config.yaml", "notes.txt", "train.log"):
        (run / name).write_text("x")
    for name in ("tensorboard", "validation", "model", "wandb", "my_analysis"):
        (run / name).mkdir()
        (run / name / "f").write_text("x")
    said = []
    one_line_error("already holds a run", prepare_run_folder, run, None, False, False)  # every rank checks
    assert prepare_run_folder(run, None, True, False) is None  # not main: checks only, removes nothing
    assert run_artefacts(run) == list(RUN_ARTEFACTS)
    assert prepare_run_folder(run, None, True, True, notify=said.append) is None
    assert sorted(p.name for p in run.iterdir()) == ["my_analysis", "notes.txt", "train.log"]
    assert len(said) == 1 and "checkpoints, metrics.jsonl" in said[0]
    assert prepare_run_folder(run, None, False, True) is None  # now it is a fresh folder
    assert remove_run(tmp_path / "absent") == []


# -- continue_jsonl -------------------------------------------------------------------------------


def test_continue_jsonl_keeps_rows_up_to_the_checkpoint(tmp_path):
    log = tmp_path / "metrics.jsonl"
    write_rows(log, [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9}, {"step": 2, "summary": {"steps": 2}},
                     {"note": "no step"}, {"step": 3, "loss": 0.8}, {"step": 4, "loss": 0.7}])
    log.write_text(log.read_text() + '{"step": 5, "lo')  # torn last write of a killed process
    continue_jsonl(log, 2)
    assert read_rows(log) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9},
                              {"step": 2, "summary": {"steps": 2}}, {"note": "no step"}]
    assert not list(tmp_path.glob(".tmp-*"))
    continue_jsonl(tmp_path / "absent.jsonl", 2)  # nothing to continue: nothing written
    assert not (tmp_path / "absent.jsonl").exists()


def test_continue_jsonl_seeds_a_new_run_folder_from_the_source(tmp_path):
    src = tmp_path / "old/samples.jsonl"
    rows = [{"step": s, "rank": r} for s in (1, 2, 3) for r in (0, 1)]
    write_rows(src, rows)
    continue_jsonl(tmp_path / "new/samples.jsonl", 2, source=src)
    assert read_rows(tmp_path / "new/samples.jsonl") == rows[:4]
    assert read_rows(src) == rows  # the old run is left as it was
    write_rows(tmp_path / "new/samples.jsonl", [{"step": 1, "rank": 0}, {"step": 7, "rank": 0}])
    continue_jsonl(tmp_path / "new/samples.jsonl", 2, source=src)  # its own log wins over the source
    assert read_rows(tmp_path / "new/samples.jsonl") == [{"step": 1, "rank": 0}]


def test_continue_run_logs_branch_off_and_in_place(tmp_path):
    old = fake_checkpoint(tmp_path / "old", 2)
    write_rows(tmp_path / "old/metrics.jsonl", [{"step": s} for s in (1, 2, 3)])
    continue_run_logs(tmp_path / "new", old, 2)
    assert read_rows(tmp_path / "new/metrics.jsonl") == [{"step": 1}, {"step": 2}]
    assert not (tmp_path / "new/samples.jsonl").exists()
    continue_run_logs(tmp_path / "old", old, 2)  # resuming in place cuts the run's own log
    assert read_rows(tmp_path / "old/metrics.jsonl") == [{"step": 1}, {"step": 2}]
    continue_run_logs(tmp_path / "old", None, 0)  # auto-or-new without checkpoint: the rows are redone
    assert (tmp_path / "old/metrics.jsonl").read_text() == ""
