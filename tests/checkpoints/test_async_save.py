"""Background (asynchronous) epoch checkpoints: snapshot, one write in flight, report when durable,
disk full and SIGKILL during a background write (``tune_app.checkpoints.async_save``)."""

from __future__ import annotations

import copy
import errno
import functools
import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.checkpoints.forking import kill_forked_loop
from tune_app.checkpoints import store
from tune_app.checkpoints.async_save import (
    AsyncCheckpointer,
    StateSnapshotter,
    snapshot_fits_in_memory,
    use_async_save,
)
from tune_app.checkpoints.guard import (
    prepare_epoch_save,
    save_epoch_checkpoint,
    write_epoch_checkpoint,
)
from tune_app.checkpoints.preflight import InsufficientStorageError
from tune_app.checkpoints.resume import find_resumable_checkpoint
from tune_app.checkpoints.store import (
    SavedCheckpoint,
    load_checkpoint,
    read_trainer_state,
    save_checkpoint,
    verify_checkpoint,
)
from tune_app.config import ConfigError, compose

COMPAT = {"architecture": {"encoder": "test"}, "heads": ["criteria", "evidence"]}


def _model_and_optimizer(width: int = 64) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.LayerNorm(width), torch.nn.Linear(width, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train_step(model, opt)  # AdamW state populated
    return model, opt


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    width = next(model.parameters()).shape[1]
    loss = model(torch.randn(8, width)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def _live_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {"model_state": model.state_dict(), "optimizer_state": opt.state_dict()}


def _payload_hashes(path: Path) -> dict[str, str]:
    files = json.loads((path / "manifest.json").read_text())["files"]
    return {name: entry["sha256"] for name, entry in files.items()}


def _slow_writes(monkeypatch: pytest.MonkeyPatch, delay_s: float) -> None:
    """Every write of the store sleeps ``delay_s`` first (a slow disk), so a write stays in flight."""
    real = store._raw_write

    def slow(fd: int, data: memoryview) -> int:
        time.sleep(delay_s)
        return real(fd, data)

    monkeypatch.setattr(store, "_raw_write", slow)


# --------------------------------------------------------------------------- snapshot


def test_snapshot_is_independent_of_later_training(tmp_path: Path) -> None:
    """Training on after the snapshot does not change what is written: the background checkpoint
    holds the snapshotted state, byte for byte what a synchronous save of that state writes."""
    model, opt = _model_and_optimizer()
    frozen_model, frozen_opt = copy.deepcopy(model), copy.deepcopy(opt.state_dict())
    snapshotter = StateSnapshotter()
    snapshot = snapshotter.take(_live_state(model, opt))
    for _ in range(3):
        _train_step(model, opt)  # the live tensors change in place while the snapshot is written
    trainer_state = {"epoch": 1, "metrics": {"val_macro_f1": 0.5}}
    with AsyncCheckpointer() as saver:
        saver.start(functools.partial(save_checkpoint, tmp_path / "async", **snapshot,
                                      trainer_state=trainer_state, compat=COMPAT), on_durable=lambda _s: None)
        saver.wait()
    save_checkpoint(tmp_path / "sync", model_state=frozen_model.state_dict(), optimizer_state=frozen_opt,
                    trainer_state=trainer_state, compat=COMPAT)
    assert _payload_hashes(tmp_path / "async") == _payload_hashes(tmp_path / "sync")
    live = save_checkpoint(tmp_path / "live", **_live_state(model, opt), trainer_state=trainer_state, compat=COMPAT)
    assert live.files["model.safetensors"].sha256 != _payload_hashes(tmp_path / "async")["model.safetensors"]
    loaded = load_checkpoint(tmp_path / "async")
    for name, tensor in frozen_model.state_dict().items():
        assert torch.equal(loaded.model_state[name], tensor)


def test_snapshot_reuses_its_buffers() -> None:
    """The memory cost is one copy for the whole trial: the second snapshot lands in the first's buffers."""
    model, opt = _model_and_optimizer()
    snapshotter = StateSnapshotter()
    first = snapshotter.take(_live_state(model, opt))
    ptrs = {n: t.data_ptr() for n, t in first["model_state"].items()}
    nbytes = snapshotter.nbytes
    assert nbytes == store.state_dict_nbytes(_live_state(model, opt))
    _train_step(model, opt)
    second = snapshotter.take(_live_state(model, opt))
    assert {n: t.data_ptr() for n, t in second["model_state"].items()} == ptrs
    assert snapshotter.nbytes == nbytes
    for name, tensor in model.state_dict().items():
        assert torch.equal(second["model_state"][name], tensor)
        assert second["model_state"][name].data_ptr() != tensor.data_ptr()
    snapshotter.release()
    assert snapshotter.nbytes == 0


def _forward_backward(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    width = next(model.parameters()).shape[1]
    opt.zero_grad()
    model(torch.randn(8, width)).pow(2).mean().backward()


def test_deferred_snapshot_copies_in_the_writer_before_the_next_update(tmp_path: Path) -> None:
    """Weights and optimiser state are copied by the writer (``fill``) while the next batch runs
    forward and backward; the optimiser step waits for that copy (``wait_filled``): the checkpoint
    holds the state at the snapshot, byte for byte what a synchronous save of it writes."""
    model, opt = _model_and_optimizer(256)
    snapshotter = StateSnapshotter()
    old = snapshotter.take(_live_state(model, opt))["model_state"]
    old_values = {n: t.clone() for n, t in old.items()}
    _train_step(model, opt)
    frozen_model, frozen_opt = copy.deepcopy(model), copy.deepcopy(opt.state_dict())
    params = {p.data_ptr() for p in model.parameters()}
    snapshot, fill = snapshotter.take_deferred(_live_state(model, opt),
                                               copy_now=lambda path, t: t.data_ptr() not in params
                                               and path.startswith("model_state"))
    for name, value in old_values.items():  # deferred: the buffers still hold the previous snapshot
        assert torch.equal(snapshot["model_state"][name], value)
    trainer_state = {"epoch": 2}
    with AsyncCheckpointer() as saver:
        saver.start(functools.partial(save_checkpoint, tmp_path / "async", **snapshot, trainer_state=trainer_state,
                                      compat=COMPAT), fill=lambda: (time.sleep(0.3), fill())[1],  # a slow copy
                    on_durable=lambda _s: None)
        for _ in range(3):  # the next epoch: forward/backward beside the copy, then wait, then step
            _forward_backward(model, opt)
            saver.wait_filled()
            opt.step()
            saver.poll()
        saver.wait()
    save_checkpoint(tmp_path / "sync", model_state=frozen_model.state_dict(), optimizer_state=frozen_opt,
                    trainer_state=trainer_state, compat=COMPAT)
    assert _payload_hashes(tmp_path / "async") == _payload_hashes(tmp_path / "sync")


# --------------------------------------------------------------------------- in flight, report


def test_report_happens_only_once_the_checkpoint_is_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake ``tune.report`` verifies the folder it is told about: it is complete and hashed
    every time, and it is called from the polling (training) thread, never the writer."""
    model, opt = _model_and_optimizer(256)
    _slow_writes(monkeypatch, 0.002)
    reports: list[tuple[int, bool, str]] = []
    snapshotter = StateSnapshotter()

    def fake_report(epoch: int, target: Path, saved: SavedCheckpoint) -> None:
        assert saved.path == target
        reports.append((epoch, verify_checkpoint(target).ok, threading.current_thread().name))

    polls_in_flight = 0
    with AsyncCheckpointer() as saver:
        for epoch in (1, 2, 3):
            target = tmp_path / f"checkpoint_{epoch:06d}"
            saver.start(functools.partial(save_checkpoint, target, **snapshotter.take(_live_state(model, opt)),
                                          trainer_state={"epoch": epoch}, compat=COMPAT),
                        on_durable=functools.partial(fake_report, epoch, target))
            while not saver.poll():  # the next epoch's training steps
                polls_in_flight += 1
                assert [e for e, _, _ in reports] == list(range(1, epoch))  # not reported while in flight
                _train_step(model, opt)
            assert reports[-1][0] == epoch
    assert polls_in_flight > 0, "no poll saw a write in flight: the test exercised nothing"
    assert reports == [(e, True, threading.current_thread().name) for e in (1, 2, 3)]


def test_at_most_one_save_in_flight() -> None:
    """``start`` waits for the previous write and delivers it before the next one begins."""
    lock = threading.Lock()
    running, peak, events = [0], [0], []

    def write(i: int) -> SavedCheckpoint:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        events.append(f"begin {i}")
        time.sleep(0.05)
        events.append(f"end {i}")
        with lock:
            running[0] -= 1
        return SavedCheckpoint(Path(f"c{i}"), {}, 0)

    with AsyncCheckpointer() as saver:
        for i in range(4):
            saver.start(functools.partial(write, i), on_durable=lambda s: events.append(f"report {s.path}"))
            assert saver.in_flight
        saver.wait()
        assert not saver.in_flight
    assert peak[0] == 1
    assert events == [x for i in range(4) for x in (f"begin {i}", f"end {i}", f"report c{i}")]


def test_an_error_in_training_still_reports_the_durable_checkpoint() -> None:
    """The trial fails while the previous epoch's write is in flight: leaving the saver waits for
    the write and reports that epoch (as a synchronous save had), then the error goes on."""
    reported: list[str] = []
    with pytest.raises(RuntimeError, match="training broke"), AsyncCheckpointer() as saver:
        saver.start(lambda: (time.sleep(0.1), SavedCheckpoint(Path("c1"), {}, 0))[1],
                    on_durable=lambda s: reported.append(str(s.path)))
        raise RuntimeError("training broke")
    assert reported == ["c1"]


# --------------------------------------------------------------------------- disk full


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, nbytes: int) -> None:
    real = store._raw_write
    written = [0]

    def failing(fd: int, data: memoryview) -> int:
        if written[0] > nbytes:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real(fd, data[:4096])
        written[0] += n
        return n

    monkeypatch.setattr(store, "_raw_write", failing)


def test_enospc_in_a_background_write_behaves_like_a_synchronous_save(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Same actionable error, metrics reported without a checkpoint, nothing partial, the previous
    checkpoint still the resume point, and never a report with a checkpoint."""
    study = tmp_path / "study"
    trial = study / "trial"
    model, opt = _model_and_optimizer(256)  # ~0.8 MiB of model + AdamW state: fails mid-file
    save_checkpoint(trial / "checkpoint_000001", **_live_state(model, opt), trainer_state={"epoch": 1}, compat=COMPAT)
    target = trial / "checkpoint_000002"
    state = {**_live_state(model, opt), "trainer_state": {"epoch": 2}, "compat": COMPAT}

    def outcome(run: Callable[[Callable[[], None], Callable[[Any], None]], None]) -> tuple[str, list[str]]:
        calls: list[str] = []
        _disk_full_after(monkeypatch, 200_000)
        with pytest.raises(InsufficientStorageError) as info:
            run(lambda: calls.append("metrics without checkpoint"), lambda _s: calls.append("checkpoint"))
        monkeypatch.undo()
        assert sorted(p.name for p in trial.iterdir()) == ["checkpoint_000001"]  # no tmp-*, nothing partial
        assert find_resumable_checkpoint(trial) == trial / "checkpoint_000001"
        return str(info.value), calls

    def sync(on_failure: Callable[[], None], _on_durable: Callable[[Any], None]) -> None:
        save_epoch_checkpoint(target, study, projected_bytes=1 << 20, before_save=lambda: None,
                              on_failure=on_failure, **state)

    def background(on_failure: Callable[[], None], on_durable: Callable[[Any], None]) -> None:
        prepare_epoch_save(target, study, projected_bytes=1 << 20, before_save=lambda: None)
        with AsyncCheckpointer() as saver:
            saver.start(functools.partial(write_epoch_checkpoint, target, study, projected_bytes=1 << 20,
                                          **StateSnapshotter().take(state)),
                        on_durable=on_durable, on_failure=on_failure)
            while not saver.poll():
                time.sleep(0.001)

    sync_message, sync_calls = outcome(sync)
    async_message, async_calls = outcome(background)
    assert sync_calls == async_calls == ["metrics without checkpoint"]
    assert async_message.splitlines()[0] == sync_message.splitlines()[0]
    assert "Disk full while saving checkpoint checkpoint_000002" in async_message
    assert "this epoch's metrics were kept" in async_message and "--execute" in async_message


# --------------------------------------------------------------------------- SIGKILL


def _background_epochs(trial: Path, width: int) -> Callable[[int], None]:
    """A forked child's loop: epoch i trains while checkpoint i-1 is written in the background
    (polled between steps), then snapshots and starts checkpoint i, as the trainable does."""
    model, opt = _model_and_optimizer(width)
    snapshotter = StateSnapshotter()
    saver = AsyncCheckpointer()

    def epoch(i: int) -> None:
        for _ in range(3):
            _forward_backward(model, opt)
            saver.wait_filled()
            opt.step()
            saver.poll()
        saver.wait()
        target = trial / f"checkpoint_{i + 1:06d}"
        snapshot, fill = snapshotter.take_deferred(_live_state(model, opt), copy_now=lambda _p, _t: False)
        saver.start(functools.partial(save_checkpoint, target, **snapshot, trainer_state={"epoch": i + 1},
                                      compat=COMPAT), fill=fill, on_durable=lambda _s: None)

    return epoch


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_during_a_background_write_leaves_the_previous_checkpoint(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL at random moments of training with background saves: every visible checkpoint
    verifies, a killed write leaves only a ``tmp-*`` folder, and the resume point is the newest
    valid checkpoint (the previous epoch's when the kill hit a write)."""
    monkeypatch.setenv("TUNE_APP_FAILPOINTS", "save=0.03")  # a write stays in flight for a while
    rng = random.Random(19)
    killed_mid_write = 0
    for attempt in range(8):
        trial = tmp_path / f"trial{attempt}"
        trial.mkdir()
        kill_forked_loop(_background_epochs(trial, 256), rng.uniform(0.15, 0.6))
        visible = sorted(p for p in trial.iterdir() if p.name.startswith("checkpoint_"))
        for path in visible:
            assert verify_checkpoint(path).ok, path
        killed_mid_write += any(p.name.startswith("tmp-") for p in trial.iterdir())
        resume = find_resumable_checkpoint(trial)
        if visible:
            assert resume == visible[-1]
            assert read_trainer_state(resume)["epoch"] == len(visible)  # no epoch skipped
        else:
            assert resume is None
    assert killed_mid_write > 0, "no kill landed during a background write; the test exercised nothing"


# --------------------------------------------------------------------------- settings


def test_async_save_setting_and_memory_check() -> None:
    assert compose([]).checkpoint.async_save == "auto"
    assert compose(["checkpoint.async_save=true"]).checkpoint.async_save is True
    with pytest.raises(ConfigError, match="checkpoint.async_save='yes' is not allowed; allowed values: auto"):
        compose(["checkpoint.async_save=yes"])
    assert use_async_save("auto", torch.device("cuda")) and not use_async_save("auto", torch.device("cpu"))
    assert use_async_save(True, torch.device("cpu")) and not use_async_save(False, torch.device("cuda"))
    assert snapshot_fits_in_memory(1 << 30, margin_bytes=0, available=lambda: 2 << 30)
    assert not snapshot_fits_in_memory(1 << 30, margin_bytes=1 << 30, available=lambda: (2 << 30) - 1)
    assert snapshot_fits_in_memory(1 << 40, available=lambda: None)  # unknown: no refusal


def test_a_trial_without_memory_for_the_snapshot_saves_synchronously(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The trial's preflight counts the snapshot (one copy of model + optimiser state) against free RAM."""
    from tune_app.checkpoints import async_save
    from tune_app.trainable import choose_async_save

    cpu = torch.device("cpu")
    on = compose(["checkpoint.async_save=true"])
    monkeypatch.setattr(async_save, "available_memory_bytes", lambda: 4 << 30)
    assert choose_async_save(on, cpu, 3 << 30)
    assert not choose_async_save(compose([]), cpu, 1 << 20)  # auto: CPU saves synchronously
    with caplog.at_level("WARNING", logger="tune_app.trainable"):
        assert not choose_async_save(on, cpu, 4 << 30)  # 4 GiB + the margin do not fit in 4 GiB
    assert "not enough free host memory for a 4.0 GiB snapshot" in caplog.text
