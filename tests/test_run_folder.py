"""Run folders: fresh / resume / overwrite rules with one-line errors, step logs cut back to the
checkpoint on resume, and experiment trackers (TensorBoard, offline wandb) through accelerate."""

from __future__ import annotations

import json
import os
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


# -- experiment trackers through accelerate -------------------------------------------------------


def tracked_run(run: Path, trackers: tuple[str, ...], start_step: int = 0) -> None:
    """Log two steps through RunLogger with ``trackers`` enabled on a CPU Accelerator."""
    from accelerate import Accelerator

    from tft2v.config import load_config
    from tft2v.train.logging import RunLogger, accelerator_kwargs

    cfg = load_config(None, [f"out_dir={run}", f"train.trackers={list(trackers)}"])
    acc = Accelerator(cpu=True, **accelerator_kwargs(cfg.train.trackers, cfg.out_dir))
    log = RunLogger(run, 10, start_step, progress=False, accelerator=acc, config=cfg)
    log.log(start_step + 1, {"loss": 0.5, "image/loss": 0.25})
    log.log(start_step + 2, {"loss": 0.4, "summary": {"steps": 2}})
    log.close()
    log.close()


def test_tensorboard_tracker_writes_events_through_accelerate(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracked_run(tmp_path / "run", ("tensorboard",))
    events = EventAccumulator(str(tmp_path / "run/tensorboard/tft2v")).Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 0.5), (2, pytest.approx(0.4))]
    assert [e.step for e in events.Scalars("image/loss")] == [1]
    assert [r["step"] for r in read_rows(tmp_path / "run/metrics.jsonl")] == [1, 2]  # JSONL is written too
    hparams = next((tmp_path / "run/tensorboard/tft2v").glob("*/hparams.yml")).read_text()
    assert "train.trackers" in hparams and "optim.lr" in hparams


def test_no_trackers_writes_only_jsonl(tmp_path):
    tracked_run(tmp_path / "run", ())
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.jsonl"]


def test_unknown_tracker_is_a_one_line_config_error(tmp_path):
    from tft2v.config import load_config

    msg = one_line_error("train.trackers must be one of", load_config, None, ["train.trackers=[tensorboard, mlflow]"])
    assert "'mlflow'" in msg


def test_wandb_not_installed_is_a_one_line_config_error(tmp_path, monkeypatch):
    import importlib.util

    from tft2v.train.logging import accelerator_kwargs

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    one_line_error("wandb package is not installed", accelerator_kwargs, ("tensorboard", "wandb"), tmp_path)


def test_legacy_tensorboard_key_still_loads(tmp_path):
    from tft2v.config import config_from_dict, load_config

    assert config_from_dict({"train": {"tensorboard": False}}).train.trackers == ()
    assert load_config(None, ["train.tensorboard=true"]).train.trackers == ("tensorboard",)
    one_line_error("replaced by train.trackers", load_config, None, ["train.tensorboard=true", "train.trackers=[]"])


def test_wandb_tracker_runs_offline_inside_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "unset")  # registered first so the test restores the original
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracked_run(tmp_path / "run", ("wandb",))
    runs = list((tmp_path / "run/wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert os.environ["WANDB_MODE"] == "offline"
    assert not (tmp_path / "run/tensorboard").exists()
    assert [r["step"] for r in read_rows(tmp_path / "run/metrics.jsonl")] == [1, 2]


def test_trainer_logs_to_tensorboard_through_accelerate(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from train_fixtures import tiny_config

    from tft2v.train import train

    train(tiny_config(tmp_path / "run", **{"train.max_steps": 2, "train.trackers": "[tensorboard]"}))
    events = EventAccumulator(str(tmp_path / "run/tensorboard/tft2v")).Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2]
    assert {"video/loss", "lr", "grad_norm"} <= set(events.Tags()["scalars"])
