"""A bad day, survived: full disks, places TransferStudio may not write to, damaged checkpoints,
runs that diverge, and kill -9 at random moments (issue 12, findings 1–4 and the kill campaign).

Every case asserts what a user would notice: one sentence instead of a traceback, the last good
checkpoint kept and used, no NaN model exported or sampled. Full disks and read-only places are
faked (the tests run as root and cannot mount a small filesystem): the save functions raise the
errors a full disk makes, `shutil.disk_usage` reports little room, writes raise EACCES/EROFS;
where `chattr +i` works, a really unwritable folder is used as well.
"""
from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from tiny_ddpm import make_images
from transferstudio.adapt import checkpoints as ckpt
from transferstudio.cli import main
from transferstudio.core.commands import Commands
from transferstudio.core.events import Checkpoint, Failed, Finished, Message, Started, Step, Stopped
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import create_project, load_project
from transferstudio.training.trainer import TrainJob, train

FAST = dict(preview_steps=2, preview_seeds=[1], batch_size=2, preview_every=0)


def _project(folder: Path, backbone: Path, images: Path | None = None, **settings):
    images = images or make_images(Path(folder) / "images", n=4)
    return create_project(folder, backbone=backbone, images=images, config=TrainConfig(**{**FAST, **settings}))


def _train(project, commands=None, **job):
    return list(train(TrainJob(load_project(project.folder), **job), commands))


def _steps_in_metrics(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _leftovers(run: Path) -> list[str]:
    folder = run / "checkpoints"
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".tmp-", ".old-"))) if folder.is_dir() else []


def _complete(run: Path) -> list[int]:
    return [c.step for c in ckpt.complete_checkpoints(run)]


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_ddpm) -> Path:
    """A LoRA project (images inside it) trained 6 steps with checkpoints at 2, 4 and 6.
    Shared: tests copy it before changing anything."""
    folder = tmp_path_factory.mktemp("trained") / "proj"
    project = _project(folder, tiny_ddpm, steps=6, checkpoint_every=2, keep_checkpoints=3)
    events = _train(project)
    assert isinstance(events[-1], Finished), events[-1]
    return folder


@pytest.fixture()
def project_copy(trained, tmp_path) -> Path:
    target = tmp_path / "proj"
    shutil.copytree(trained, target)
    return target


# --- finding 1: a full disk ---------------------------------------------------------------------

def _no_space_safetensors():
    from safetensors import SafetensorError

    return SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                           'message: "No space left on device" })')


def _no_space_torch():
    return RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 1216 vs 1110")


def _step_of_target(path) -> int:
    """The step of the checkpoint a save function is writing into (0: not a checkpoint)."""
    for part in Path(str(path)).parts:
        if part.startswith(".tmp-step-"):
            return int(part.split("-")[2])
    return 0


def _disk_fills_at(monkeypatch, step: int, method: str) -> None:
    """From checkpoint `step` on, the save function a full disk breaks first raises its error."""
    if method == "lora":
        import safetensors.torch as st

        real = st.save_file

        def save_file(tensors, filename, metadata=None):
            if _step_of_target(filename) >= step:
                Path(filename).write_bytes(b"\0" * 100)  # what a full disk leaves: a stub
                raise _no_space_safetensors()
            return real(tensors, filename, metadata=metadata)

        monkeypatch.setattr(st, "save_file", save_file)
    else:
        real = torch.save

        def save(obj, f, *args, **kwargs):
            if _step_of_target(f) >= step:
                Path(f).write_bytes(b"PK\3\4")
                raise _no_space_torch()
            return real(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_full_disk_while_saving_is_one_sentence_and_keeps_the_last_checkpoint(tmp_path, tiny_ddpm, method,
                                                                                 monkeypatch):
    project = _project(tmp_path / "proj", tiny_ddpm, steps=6, checkpoint_every=2, method=method)
    with monkeypatch.context() as m:
        _disk_fills_at(m, 4, method)
        events = _train(project)
    failed = events[-1]
    assert isinstance(failed, Failed), failed
    assert failed.message.startswith("The disk is full (needs ~") and " free)" in failed.message
    assert failed.checkpoint is not None and failed.checkpoint.name == "step-000002"
    run = events[0].run_dir
    assert _complete(run) == [2] and _leftovers(run) == []
    # Space freed: `train` continues from the last good checkpoint.
    again = _train(project)
    assert again[0].start_step == 2 and isinstance(again[-1], Finished)
    assert _steps_in_metrics(run) == list(range(1, 7))


def _fake_disk(monkeypatch, free_of) -> None:
    real = shutil.disk_usage

    def disk_usage(path):
        usage = real(path)
        return type(usage)(usage.total, usage.used, max(0, int(free_of(Path(path)))))

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)


def _bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_short_space_removes_older_checkpoints_before_saving(tmp_path, tiny_ddpm, monkeypatch):
    project = _project(tmp_path / "proj", tiny_ddpm, steps=4, checkpoint_every=1, keep_checkpoints=3,
                       method="full")
    run = _train(project)[0].run_dir
    assert _complete(run) == [2, 3, 4]
    one = _bytes_under(run / "checkpoints" / "step-000004")
    # A disk that has room for the next checkpoint only once two older ones are gone.
    capacity = _bytes_under(run / "checkpoints") - one // 2
    _fake_disk(monkeypatch, lambda path: capacity - _bytes_under(run / "checkpoints"))
    events = _train(project, steps=5)
    assert isinstance(events[-1], Finished), events[-1]
    assert _complete(run) == [4, 5]
    notes = [e.text for e in events if isinstance(e, Message)]
    assert any("disk" in n and "step-000002, step-000003" in n for n in notes), notes


def test_space_that_pruning_cannot_make_removes_nothing(project_copy, monkeypatch):
    run = next((project_copy / "runs").iterdir())
    for old in ("step-000002", "step-000004"):  # small: removing them would not make room
        for name in ("weights.safetensors", "optimizer.pt"):
            (run / "checkpoints" / old / name).write_bytes(b"x")
    capacity = _bytes_under(run / "checkpoints") + 1000
    _fake_disk(monkeypatch, lambda path: capacity - _bytes_under(run / "checkpoints"))
    events = _train(load_project(project_copy), steps=8)
    assert isinstance(events[-1], Failed) and "The disk is full" in events[-1].message
    assert _complete(run) == [2, 4, 6]


def test_no_room_at_all_fails_before_writing_and_keeps_the_newest_checkpoint(project_copy, monkeypatch):
    run = next((project_copy / "runs").iterdir())
    _fake_disk(monkeypatch, lambda path: 10_000)
    events = _train(load_project(project_copy), steps=8)
    failed = events[-1]
    assert isinstance(failed, Failed) and "The disk is full (needs ~" in failed.message, failed
    assert "0.0 MB free" in failed.message
    assert failed.checkpoint.name == "step-000006"
    assert 6 in _complete(run) and _leftovers(run) == []
    assert not any(isinstance(e, Checkpoint) for e in events)


def test_export_onto_a_full_disk_is_one_sentence(project_copy, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out" / "lora.safetensors"
    with monkeypatch.context() as m:
        import safetensors.torch as st

        def save_file(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"\0" * 10)
            raise _no_space_safetensors()

        m.setattr(st, "save_file", save_file)
        assert main(["export", str(project_copy), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "The disk is full (needs ~" in line
    assert list(out.parent.iterdir()) == []  # nothing half-written, no staging folder left

    with monkeypatch.context() as m:  # too little room: refused before anything is written
        _fake_disk(m, lambda path: 1000)
        assert main(["export", str(project_copy), "--out", str(out)]) == 2
    assert "The disk is full (needs ~" in _one_line(capsys.readouterr().err)
    assert list(out.parent.iterdir()) == []
    assert main(["export", str(project_copy), "--out", str(out)]) == 0


# --- finding 2: places it may not write to ------------------------------------------------------

def test_new_project_on_a_full_disk_is_one_sentence_and_leaves_no_folder(tmp_path, tiny_ddpm, capsys, monkeypatch):
    from transferstudio.project.project import Project

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.file))

    monkeypatch.setattr(Project, "save", full)
    images = make_images(tmp_path / "images", n=2)
    assert main(["new", str(tmp_path / "a" / "proj"), "--backbone", str(tiny_ddpm), "--images", str(images)]) == 2
    assert "The disk is full" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "a").exists()


def _refuse_writes(monkeypatch, root: Path, code: int) -> None:
    """Writes under `root` fail as on a read-only filesystem (EROFS) or without permission
    (EACCES); reading still works."""
    root = Path(root).resolve()

    def inside(path) -> bool:
        try:
            return Path(os.fspath(path)).resolve().is_relative_to(root)
        except (TypeError, ValueError):
            return False

    def refuse(path):
        raise OSError(code, os.strerror(code), os.fspath(path))

    real_open, real_mkdir, real_mkstemp = builtins.open, pathlib.Path.mkdir, tempfile.mkstemp

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def mkdir(self, *args, **kwargs):
        if inside(self) and not self.is_dir():
            refuse(self)
        return real_mkdir(self, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and inside(dir):
            refuse(Path(dir) / "tmp")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("case", ["first run", "fresh", "continue"])
def test_training_where_it_may_not_write_is_one_sentence(project_copy, capsys, monkeypatch, code, case):
    argv = {"first run": ["train", str(project_copy)], "fresh": ["train", str(project_copy), "--fresh"],
            "continue": ["train", str(project_copy), "--steps", "8"]}[case]
    if case == "first run":
        shutil.rmtree(project_copy / "runs")
    before = sorted(str(p) for p in project_copy.rglob("*"))
    with monkeypatch.context() as m:
        _refuse_writes(m, project_copy, code)
        assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert "may not write" in line and "a folder you can write to" in line
    assert sorted(str(p) for p in project_copy.rglob("*")) == before


def test_new_project_where_it_may_not_write_is_one_sentence(tmp_path, tiny_ddpm, capsys, monkeypatch):
    images = make_images(tmp_path / "images", n=2)
    parent = tmp_path / "locked"
    parent.mkdir()
    with monkeypatch.context() as m:
        _refuse_writes(m, parent, errno.EROFS)
        assert main(["new", str(parent / "p" / "proj"), "--backbone", str(tiny_ddpm), "--images", str(images)]) == 2
    assert "may not write to" in _one_line(capsys.readouterr().err)
    assert list(parent.iterdir()) == []


@pytest.fixture()
def immutable(tmp_path):
    """Make folders really unwritable, for root too (`chattr +i`); skipped where that is refused."""
    made: list[Path] = []

    def lock(path: Path) -> None:
        if os.geteuid() != 0:
            for p in [path, *path.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o555)
            made.append(path)
            return
        result = subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True)
        if result.returncode != 0:
            pytest.skip("chattr +i is not available here")
        made.append(path)

    yield lock
    for path in made:
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
        for p in [path, *path.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)


def test_a_really_unwritable_project_and_parent(project_copy, tmp_path, tiny_ddpm, immutable, capsys):
    images = make_images(tmp_path / "images", n=2)
    immutable(project_copy)
    for argv in (["train", str(project_copy), "--steps", "8"], ["train", str(project_copy), "--fresh"],
                 ["new", str(project_copy / "sub"), "--backbone", str(tiny_ddpm), "--images", str(images)]):
        assert main(argv) == 2, argv
        assert "may not write" in _one_line(capsys.readouterr().err)
    assert not (project_copy / "sub").exists()


# --- finding 3: damaged checkpoints ---------------------------------------------------------------

def test_checkpoint_files_are_listed_with_hashes_and_fsynced_before_the_rename(tmp_path, tiny_ddpm, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def fsync(fd):
        try:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    project = _project(tmp_path / "proj", tiny_ddpm, steps=2, checkpoint_every=2)
    run = _train(project)[0].run_dir
    folder = run / "checkpoints" / "step-000002"
    manifest = json.loads((folder / ckpt.MANIFEST).read_text())
    names = {p.name for p in folder.iterdir()} - {ckpt.MANIFEST, ckpt.MARKER}
    assert set(manifest["files"]) == names >= {"weights.safetensors", "optimizer.pt", "rng.pt", "state.json"}
    for name, entry in manifest["files"].items():
        data = (folder / name).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    # Every file was flushed to the disk while still in the temporary folder, before the rename.
    in_tmp = {Path(p).name for p in synced if "/.tmp-step-000002-" in p}
    assert in_tmp >= names | {ckpt.MANIFEST}


def _latest(project: Path) -> Path:
    run = next((project / "runs").iterdir())
    return run / "checkpoints" / "step-000006"


def _damage(folder: Path, how: str, manifest: bool) -> None:
    if how == "truncated weights":
        file = folder / ckpt.WEIGHTS
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    elif how == "garbage optimizer":
        (folder / "optimizer.pt").write_bytes(os.urandom(64 * 1024))
    elif how == "same size, other bytes":
        file = folder / ckpt.WEIGHTS
        data = bytearray(file.read_bytes())
        data[-8:] = b"\x7f" * 8
        file.write_bytes(bytes(data))
    if not manifest:  # a checkpoint written before manifests existed
        (folder / ckpt.MANIFEST).unlink(missing_ok=True)


DAMAGE = [("truncated weights", True), ("garbage optimizer", True), ("same size, other bytes", True),
          ("truncated weights", False), ("garbage optimizer", False)]


@pytest.mark.parametrize("how, manifest", DAMAGE)
def test_train_sets_a_damaged_checkpoint_aside_and_continues_from_the_one_before(project_copy, how, manifest):
    _damage(_latest(project_copy), how, manifest)
    events = _train(load_project(project_copy), steps=8)
    assert isinstance(events[-1], Finished), events[-1]
    started = next(e for e in events if isinstance(e, Started))
    assert started.start_step == 4
    notes = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert any("step-000006" in n and "damaged" in n for n in notes), notes
    run = started.run_dir
    assert _steps_in_metrics(run) == list(range(1, 9))
    assert _complete(run)[-1] == 8
    assert "step-000006" in (run / "log.txt").read_text()


@pytest.mark.parametrize("how, manifest", DAMAGE[:2] + DAMAGE[3:])
def test_export_and_sample_fall_back_to_the_previous_checkpoint(project_copy, tmp_path, capsys, how, manifest):
    _damage(_latest(project_copy), how, manifest)
    out = tmp_path / "lora.safetensors"
    assert main(["export", str(project_copy), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "from step 4" in captured.out and "step-000006" in captured.err and "damaged" in captured.err
    assert "Traceback" not in captured.err
    assert main(["sample", str(project_copy), "--out", str(tmp_path / "a.png"), "--steps", "2"]) == 0
    assert "step-000006" in capsys.readouterr().err


def test_every_checkpoint_damaged_is_one_sentence(project_copy, tmp_path, capsys):
    run = next((project_copy / "runs").iterdir())
    for folder in (run / "checkpoints").iterdir():
        _damage(folder, "truncated weights", True)
    assert main(["export", str(project_copy), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "damaged" in _one_line(capsys.readouterr().err)
    assert main(["train", str(project_copy), "--steps", "8"]) == 2
    assert "damaged" in _one_line(capsys.readouterr().err)


# --- finding 4: the NaN trap ----------------------------------------------------------------------

@pytest.mark.parametrize("value", [3e38, float("nan")])
def test_a_diverged_model_is_never_saved_as_complete(tmp_path, tiny_ddpm, monkeypatch, value):
    """3e38 is a finite weight whose output overflows to NaN; NaN is a NaN weight."""
    calls = {"n": 0}
    real = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # the update of step 4 diverges; its loss was still a number
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(value)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    project = _project(tmp_path / "proj", tiny_ddpm, steps=6, checkpoint_every=2)
    events = _train(project)
    failed = events[-1]
    assert isinstance(failed, Failed), failed
    assert "not a number" in failed.message
    assert "--fresh" in failed.advice and "learning rate" in failed.advice
    assert _complete(events[0].run_dir) == [2]
    assert not any(isinstance(e, Checkpoint) and e.step > 2 for e in events)


def test_a_non_finite_loss_says_start_fresh_and_nothing_is_saved_after_it(tmp_path, tiny_ddpm, monkeypatch):
    from transferstudio.backbones.diffusion import DiffusionObjective

    commands = Commands()
    real = DiffusionObjective.loss

    def loss(self, phase, batch, ctx):
        value = real(self, phase, batch, ctx)
        if ctx.step == 3:
            commands.stop()  # the user pressed Stop while the step that diverges runs
            return value * float("nan")
        return value

    monkeypatch.setattr(DiffusionObjective, "loss", loss)
    project = _project(tmp_path / "proj", tiny_ddpm, steps=6, checkpoint_every=2)
    events = _train(project, commands)
    failed = events[-1]
    assert isinstance(failed, Failed) and not any(isinstance(e, Stopped) for e in events)
    assert "--fresh" in failed.advice and "learning rate" in failed.advice
    assert _complete(events[0].run_dir) == [2]


def _rewrite_weights(folder: Path, value: float) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(folder / ckpt.WEIGHTS), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    first = sorted(k for k in tensors if "lora_A" in k)[0]
    tensors[first] = torch.full_like(tensors[first], value)
    save_file(tensors, str(folder / ckpt.WEIGHTS), metadata=meta)
    (folder / ckpt.MANIFEST).unlink(missing_ok=True)  # as an older version would have left it


def test_sample_refuses_a_model_whose_output_is_not_a_number(project_copy, tmp_path, capsys):
    _rewrite_weights(_latest(project_copy), 3e38)  # finite weights, NaN pictures
    out = tmp_path / "a.png"
    assert main(["sample", str(project_copy), "--out", str(out), "--steps", "2"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "not a number" in line and "--fresh" in line
    assert not out.exists()


def test_non_finite_weights_are_passed_over_by_export_and_sample(project_copy, tmp_path, capsys):
    _rewrite_weights(_latest(project_copy), float("nan"))
    assert main(["export", str(project_copy), "--out", str(tmp_path / "x.safetensors")]) == 0
    captured = capsys.readouterr()
    assert "from step 4" in captured.out and "step-000006" in captured.err
    assert main(["sample", str(project_copy), "--out", str(tmp_path / "a.png"), "--steps", "2"]) == 0


# --- the kill -9 campaign -------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_campaign_resumes_every_run_from_its_last_complete_checkpoint(tmp_path, capsys):
    from transferstudio.devtools.kill_campaign import main as campaign

    assert campaign(["--trials", "4", "--workdir", str(tmp_path), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "4 trials" in out and "4 resumed ok" in out and "0 orphans" in out


def test_optimizer_bytes_that_trip_the_unpickler_are_damage_not_a_crash(tmp_path):
    """Damaged bytes can make torch's weights-only unpickler raise IndexError and the like, not only
    UnpicklingError (a random garbage test once hit it): still one sentence."""
    from transferstudio.adapt import checkpoints as ck
    from transferstudio.core.errors import UserError

    (tmp_path / "optimizer.pt").write_bytes(b"\x80\x02Q.")  # BINPERSID on an empty stack
    with pytest.raises(UserError, match="its data is not what TransferStudio writes"):
        ck.read_torch(tmp_path, "optimizer.pt")
    (tmp_path / ck.WEIGHTS).write_bytes(b"")
    assert ck._problem_without_manifest(tmp_path) == \
        "optimizer.pt cannot be read: its data is not what TransferStudio writes"
