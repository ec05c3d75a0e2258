"""The bad-input corpus: things a user types or suffers, each ending in one clear sentence.

Every case runs the command line in-process on a small world (a tiny DDPM, two pictures and a
valid project) after damaging one thing, and asserts what a user would see: exit status 2, one
line that names the problem, no traceback, and nothing in the folders created, removed or changed.
Add a case for every new finding. Nothing here trains: each case is refused before a model loads.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from tiny_ddpm import make_images
from transferstudio.cli import main
from transferstudio.core.errors import ProjectError, UserError
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import create_project

RUN = "20240101-000000"


@dataclass
class World:
    tmp: Path
    project: Path
    images: Path
    model: Path

    @property
    def project_file(self) -> Path:
        return self.project / "project.json"

    @property
    def run(self) -> Path:
        return self.project / "runs" / RUN

    def fmt(self, arg: str) -> str:
        return arg.format(tmp=self.tmp, proj=self.project, images=self.images, model=self.model)


@pytest.fixture
def world(tmp_path, tiny_ddpm) -> World:
    images = make_images(tmp_path / "images", n=2)
    project = tmp_path / "proj"
    create_project(project, backbone=tiny_ddpm, images=images,
                   config=TrainConfig(steps=4, preview_every=0, checkpoint_every=2))
    return World(tmp=tmp_path, project=project, images=images, model=tiny_ddpm)


def _snapshot(root: Path) -> dict[str, Any]:
    """Every folder and file under root, with each file's content hash and modification time."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for d in dirnames:
            out[(here / d).relative_to(root).as_posix() + "/"] = "dir"
        for f in filenames:
            path = here / f
            out[path.relative_to(root).as_posix()] = (
                hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return out


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refusals
        code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _message_lines(err: str) -> list[str]:
    """stderr without argparse's usage block (a `usage:` line and its indented continuation)."""
    lines, in_usage = [], False
    for line in err.splitlines():
        if line.startswith("usage:"):
            in_usage = True
            continue
        if in_usage and (line.startswith(" ") or not line.strip()):
            continue
        in_usage = False
        if line.strip():
            lines.append(line)
    return lines


# --- project.json edits -------------------------------------------------------------------------
def _edit(change: Callable[[dict], Any]) -> Callable[[World], None]:
    def prepare(w: World) -> None:
        data = json.loads(w.project_file.read_text(encoding="utf-8"))
        result = change(data)
        w.project_file.write_text(json.dumps(data if result is None else result), encoding="utf-8")
    return prepare


def _setting(name: str, value: Any) -> Callable[[World], None]:
    return _edit(lambda d: d["config"].__setitem__(name, value))


def _top(name: str, value: Any) -> Callable[[World], None]:
    return _edit(lambda d: d.__setitem__(name, value))


def _drop(name: str) -> Callable[[World], None]:
    return _edit(lambda d: d.pop(name) and None)


def _raw(text: str | bytes) -> Callable[[World], None]:
    def prepare(w: World) -> None:
        if isinstance(text, bytes):
            w.project_file.write_bytes(text)
        else:
            w.project_file.write_text(text, encoding="utf-8")
    return prepare


def _raw_setting(name: str, literal: str) -> Callable[[World], None]:
    """Write a JSON literal json.dumps would not (NaN, Infinity) as the value of a setting."""
    def prepare(w: World) -> None:
        data = json.loads(w.project_file.read_text(encoding="utf-8"))
        data["config"][name] = "@@VALUE@@"
        w.project_file.write_text(json.dumps(data).replace('"@@VALUE@@"', literal), encoding="utf-8")
    return prepare


# --- run files ------------------------------------------------------------------------------------
def _run_folder(config_text: str | None) -> Callable[[World], None]:
    """A run with a complete checkpoint at step 2 (no weights: every case fails before reading them)."""
    def prepare(w: World) -> None:
        ckpt = w.run / "checkpoints" / "step-000002"
        ckpt.mkdir(parents=True)
        (ckpt / "state.json").write_text(json.dumps({"step": 2, "epoch": 0, "batch_index": 2}))
        (ckpt / "COMPLETE").write_text("")
        if config_text is not None:
            (w.run / "config.json").write_text(config_text, encoding="utf-8")
    return prepare


def _run_config(change: Callable[[dict], Any]) -> str:
    data = {"app_version": "0", "backbone": "/m", "images": "/i", "prediction_type": "",
            "config": TrainConfig(steps=4).to_dict()}
    result = change(data)
    return json.dumps(data if result is None else result)


# --- image folders --------------------------------------------------------------------------------
def _make_file(name: str, content: bytes = b"hello") -> Callable[[World], None]:
    def prepare(w: World) -> None:
        (w.tmp / name).write_bytes(content)
    return prepare


def _make_dir(name: str, files: dict[str, bytes] | None = None) -> Callable[[World], None]:
    def prepare(w: World) -> None:
        (w.tmp / name).mkdir()
        for fname, content in (files or {}).items():
            (w.tmp / name / fname).write_bytes(content)
    return prepare


def _huge_png_cut_short(name: str) -> Callable[[World], None]:
    """A folder whose only picture is 81 MP with valid chunks but almost no pixel data."""
    def prepare(w: World) -> None:
        from data_helpers import raw_png

        raw_png(w.tmp / name / "huge.png", 9000, 9000, 1, 0, None)
    return prepare


class _Evil:
    """Unpickling this would make a folder (a stand-in for any command)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def _evil_pickle(name: str) -> Callable[[World], None]:
    def prepare(w: World) -> None:
        import torch

        torch.save({"state_dict": {"w": torch.ones(2)}, "x": _Evil(str(w.tmp / "pwned"))}, w.tmp / name)
    return prepare


@dataclass
class Case:
    id: str
    argv: list[str]
    words: list[str]  # each must appear (case-insensitive) in the message line
    prepare: Callable[[World], None] | None = None
    marks: list = field(default_factory=list)

    def param(self) -> Any:
        return pytest.param(self, id=self.id, marks=self.marks)


TRAIN = ["train", "{proj}"]
EXPORT = ["export", "{proj}", "--out", "{tmp}/out.safetensors"]
SAMPLE = ["sample", "{proj}", "--out", "{tmp}/out.png"]
NEW = ["new", "{tmp}/newproj", "--backbone", "{model}", "--images", "{images}"]

CASES = [
    # project.json: the settings block
    Case("config-string", TRAIN, ["config"], _top("config", "fast please")),
    Case("config-list", TRAIN, ["config"], _top("config", [1, 2, 3])),
    Case("config-null", TRAIN, ["config"], _top("config", None)),
    Case("config-number", EXPORT, ["config"], _top("config", 7)),
    Case("config-string-sample", SAMPLE, ["config"], _top("config", "x")),
    Case("preview_seeds-null", TRAIN, ["preview_seeds"], _setting("preview_seeds", None)),
    Case("preview_seeds-empty", TRAIN, ["preview_seeds"], _setting("preview_seeds", [])),
    Case("preview_seeds-strings", TRAIN, ["preview_seeds"], _setting("preview_seeds", ["a", "b"])),
    Case("preview_seeds-negative", TRAIN, ["preview_seeds"], _setting("preview_seeds", [-1])),
    Case("preview_seeds-text", TRAIN, ["preview_seeds"], _setting("preview_seeds", "1,2")),
    Case("preview_prompts-number", TRAIN, ["preview_prompts"], _setting("preview_prompts", 5)),
    Case("learning_rate-NaN", TRAIN, ["learning_rate"], _raw_setting("learning_rate", "NaN")),
    Case("learning_rate-Infinity", TRAIN, ["learning_rate"], _raw_setting("learning_rate", "Infinity")),
    Case("learning_rate-NaN-export", EXPORT, ["learning_rate"], _raw_setting("learning_rate", "NaN")),
    Case("learning_rate-negative", TRAIN, ["learning_rate"], _setting("learning_rate", -1)),
    Case("learning_rate-string", TRAIN, ["learning_rate"], _setting("learning_rate", "fast")),
    Case("alpha-NaN", TRAIN, ["alpha"], _raw_setting("alpha", "NaN")),
    Case("steps-fraction", TRAIN, ["steps"], _setting("steps", 2.5)),
    Case("steps-text", TRAIN, ["steps"], _setting("steps", "many")),
    Case("steps-zero", TRAIN, ["steps"], _setting("steps", 0)),
    Case("steps-true", TRAIN, ["steps"], _setting("steps", True)),
    Case("rank-zero", TRAIN, ["rank"], _setting("rank", 0)),
    Case("method-unknown", TRAIN, ["method"], _setting("method", "magic")),
    Case("flip-text", TRAIN, ["flip"], _setting("flip", "yes")),
    Case("trigger-number", TRAIN, ["trigger"], _setting("trigger", 5)),
    Case("trigger-newline", TRAIN, ["trigger"], _setting("trigger", "my\nstyle")),
    Case("resolution-huge", TRAIN, ["resolution"], _setting("resolution", 100000)),
    Case("seed-null", TRAIN, ["seed"], _setting("seed", None)),
    # project.json: the file itself
    Case("schema_version-string", TRAIN, ["schema_version"], _top("schema_version", "1")),
    Case("schema_version-future", TRAIN, ["newer"], _top("schema_version", 99)),
    Case("schema_version-negative", TRAIN, ["schema_version"], _top("schema_version", -1)),
    Case("schema_version-bool", TRAIN, ["schema_version"], _top("schema_version", True)),
    Case("backbone-missing", TRAIN, ["backbone"], _drop("backbone")),
    Case("backbone-null", TRAIN, ["backbone"], _top("backbone", None)),
    Case("backbone-empty", EXPORT, ["backbone"], _top("backbone", "")),
    Case("images-number", TRAIN, ["images"], _top("images", 5)),
    Case("name-list", TRAIN, ["name"], _top("name", ["a"])),
    Case("prediction_type-unknown", TRAIN, ["prediction_type"], _top("prediction_type", "guess")),
    Case("not-json", TRAIN, ["damaged"], _raw("{ not json")),
    Case("empty-file", TRAIN, ["damaged"], _raw("")),
    Case("not-utf8", TRAIN, ["damaged"], _raw(b"\xff\xfe\x00garbage\x9c")),
    Case("json-list", TRAIN, ["not a project"], _raw("[1, 2, 3]")),
    Case("json-string", EXPORT, ["not a project"], _raw('"project"')),
    # run files
    Case("run-config-damaged", TRAIN, ["config.json"], _run_folder("{ half")),
    Case("run-config-list", TRAIN, ["config.json"], _run_folder("[]")),
    Case("run-config-settings-string", TRAIN, ["config.json"],
         _run_folder(_run_config(lambda d: d.__setitem__("config", "x")))),
    Case("run-config-nan", TRAIN, ["learning_rate"],
         _run_folder(_run_config(lambda d: d["config"].__setitem__("learning_rate", float("nan"))))),
    Case("run-config-damaged-export", EXPORT, ["config.json"], _run_folder("{ half")),
    Case("run-config-no-settings-export", EXPORT, ["config.json"],
         _run_folder(_run_config(lambda d: d.pop("config")))),
    # flags at `new`
    Case("new-lr-nan", NEW + ["--lr", "nan"], ["learning_rate"]),
    Case("new-lr-inf", NEW + ["--lr", "inf"], ["learning_rate"]),
    Case("new-lr-negative", NEW + ["--lr", "-1"], ["learning_rate"]),
    Case("new-alpha-nan", NEW + ["--alpha", "nan"], ["alpha"]),
    Case("new-resolution-7", NEW + ["--resolution", "7"], ["resolution"]),
    Case("new-resolution-100000", NEW + ["--resolution", "100000"], ["resolution"]),
    Case("new-resolution-too-small", NEW + ["--resolution", "2"], ["resolution"]),
    Case("new-dora-full", NEW + ["--dora", "--method", "full"], ["dora"]),
    Case("new-ema-lora", NEW + ["--ema"], ["ema"]),
    Case("new-trigger-newline", NEW + ["--trigger", "my\nstyle"], ["trigger"]),
    Case("new-trigger-tab", NEW + ["--trigger", "my\tstyle"], ["trigger"]),
    Case("new-steps-zero", NEW + ["--steps", "0"], ["steps"]),
    Case("new-batch-size-zero", NEW + ["--batch-size", "0"], ["batch_size"]),
    Case("new-method-unknown", NEW + ["--method", "magic"], ["method"]),
    Case("new-images-missing", ["new", "{tmp}/newproj", "--backbone", "{model}", "--images", "{tmp}/nope"],
         ["not found"]),
    Case("new-images-file", ["new", "{tmp}/newproj", "--backbone", "{model}", "--images", "{tmp}/a.png"],
         ["not a folder"], _make_file("a.png")),
    Case("new-images-empty", ["new", "{tmp}/newproj", "--backbone", "{model}", "--images", "{tmp}/empty"],
         ["no images"], _make_dir("empty")),
    Case("new-images-unusable", ["new", "{tmp}/newproj", "--backbone", "{model}", "--images", "{tmp}/bad"],
         ["no usable images"], _make_dir("bad", {"broken.png": b"not a png"})),
    Case("new-backbone-missing", ["new", "{tmp}/newproj", "--backbone", "{tmp}/nomodel", "--images", "{images}"],
         ["nothing exists"]),
    Case("new-backbone-not-a-model", ["new", "{tmp}/newproj", "--backbone", "{images}", "--images", "{images}"],
         ["does not recognise"]),
    Case("new-over-existing-project", ["new", "{proj}", "--backbone", "{model}", "--images", "{images}"],
         ["already exists"]),
    Case("new-into-existing-folder-bad-lr",
         ["new", "{tmp}/here", "--backbone", "{model}", "--images", "{images}", "--lr", "nan"],
         ["learning_rate"], _make_dir("here")),
    Case("new-images-only-a-huge-png-cut-short",
         ["new", "{tmp}/newproj", "--backbone", "{model}", "--images", "{tmp}/huge"],
         ["no usable images", "truncated"], _huge_png_cut_short("huge")),
    # pickles
    Case("convert-pickle-malicious", ["convert-pickle", "{tmp}/evil.ckpt"], ["refused", "posix.mkdir"],
         _evil_pickle("evil.ckpt")),
    Case("convert-pickle-not-a-checkpoint", ["convert-pickle", "{tmp}/notes.ckpt"], ["could not be read"],
         _make_file("notes.ckpt", b"just text")),
    Case("convert-pickle-missing", ["convert-pickle", "{tmp}/gone.ckpt"], ["does not exist"]),
    # flags at `train`
    Case("train-steps-zero", TRAIN + ["--steps", "0"], ["--steps"]),
    Case("train-steps-negative", TRAIN + ["--steps", "-5"], ["--steps"]),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_input_ends_in_one_sentence_and_changes_nothing(case: Case, world: World, capsys):
    if case.prepare is not None:
        case.prepare(world)
    before = _snapshot(world.tmp)
    code, out, err = _run([world.fmt(a) for a in case.argv], capsys)
    assert "Traceback" not in out + err
    lines = _message_lines(err)
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and "error:" in lines[0], err
    for word in case.words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    assert "weights_only" not in err  # torch's advice to load pickles unsafely is never passed on
    assert out.strip() == ""
    assert _snapshot(world.tmp) == before


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40


# --- the same checks through the Python API (the window calls these) ----------------------------
@pytest.mark.parametrize("name", ["learning_rate", "alpha", "dropout", "ema_decay", "noise_offset",
                                  "min_snr_gamma"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused_for_every_float_setting(name, value):
    cfg = TrainConfig(**{name: value})
    assert any(p.startswith(name) for p in cfg.problems()), cfg.problems()


def test_problems_name_conflicting_settings():
    assert any(p.startswith("dora") for p in TrainConfig(method="full", dora=True).problems())
    assert any(p.startswith("ema") for p in TrainConfig(method="lora", ema=True).problems())
    assert TrainConfig(method="full", ema=True).problems() == []
    assert TrainConfig(method="lora", dora=True).problems() == []


def test_coerce_does_not_invent_values():
    cfg = TrainConfig.from_dict({"preview_seeds": "12", "flip": "false", "steps": 2.5, "seed": True})
    problems = " ".join(cfg.problems())
    for name in ("preview_seeds", "flip", "steps", "seed"):
        assert name in problems
    ok = TrainConfig.from_dict({"steps": 300.0, "learning_rate": 1, "preview_seeds": (3, 4), "rank": "8"})
    assert ok.problems() == [] and ok.steps == 300 and isinstance(ok.steps, int)
    assert ok.learning_rate == 1.0 and isinstance(ok.learning_rate, float) and ok.preview_seeds == [3, 4]
    assert ok.rank == 8


def test_from_dict_refuses_what_is_not_a_settings_object():
    for bad in ("x", [1], None, 3):
        with pytest.raises(ProjectError, match="settings"):
            TrainConfig.from_dict(bad)  # type: ignore[arg-type]


def test_model_dependent_problems(tiny_ddpm):
    from transferstudio.backbones.base import Capabilities
    from transferstudio.backbones.registry import inspect_backbone

    caps = inspect_backbone(tiny_ddpm).caps
    assert caps is not None and caps.native_resolution == 16 and caps.resolution_multiple == 2
    assert TrainConfig().problems_for(caps) == []
    assert TrainConfig(resolution=32).problems_for(caps) == []
    for bad in (7, 2, 15, 4096):
        problems = TrainConfig(resolution=bad).problems_for(caps)
        assert len(problems) == 1 and problems[0].startswith("resolution"), (bad, problems)
    sdxl_like = Capabilities(conditioning="text", native_resolution=1024, resolution_multiple=64,
                             supports_full_finetune=False, text_encoders=2, prediction_type="epsilon",
                             latent=True)
    assert TrainConfig(resolution=768).problems_for(sdxl_like) == []
    assert TrainConfig(resolution=800).problems_for(sdxl_like)[0].startswith("resolution")
    assert TrainConfig(method="full").problems_for(sdxl_like)[0].startswith("method")
    if "methods" in Capabilities.__dataclass_fields__:  # families may offer fewer methods
        from dataclasses import replace

        lora_only = replace(caps, methods=("lora",))
        assert TrainConfig(method="full").problems_for(lora_only) == [
            "method: this model trains with lora only, not full"]
        assert TrainConfig(method="lora").problems_for(lora_only) == []
    unknown_native = Capabilities(conditioning="none", native_resolution=0, resolution_multiple=8,
                                  supports_full_finetune=True, text_encoders=0, prediction_type="epsilon",
                                  latent=False)
    assert TrainConfig(resolution=64).problems_for(unknown_native) == []
    assert TrainConfig(resolution=60).problems_for(unknown_native)


def test_rejected_create_project_leaves_no_folder(tmp_path, image_folder):
    target = tmp_path / "a" / "b" / "proj"
    with pytest.raises(UserError):
        create_project(target, backbone=tmp_path, images=image_folder, config=TrainConfig(steps=0))
    with pytest.raises(UserError, match="not found"):
        create_project(target, backbone=tmp_path, images=tmp_path / "nope")
    assert not (tmp_path / "a").exists()


def test_a_failed_write_of_a_new_project_leaves_no_folder(tmp_path, image_folder, monkeypatch):
    from transferstudio.project.project import Project

    def full_disk(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Project, "save", full_disk)
    (tmp_path / "mine").mkdir()
    for target in (tmp_path / "a" / "b" / "proj", tmp_path / "mine"):
        with pytest.raises(OSError):
            create_project(target, backbone=tmp_path, images=image_folder)
    assert not (tmp_path / "a").exists()
    assert (tmp_path / "mine").is_dir()  # a folder that was there before stays


def test_run_settings_are_read_with_one_sentence(tmp_path):
    from transferstudio.project.run import read_run_settings

    run = tmp_path / "runs" / RUN
    run.mkdir(parents=True)
    with pytest.raises(ProjectError, match="config.json") as missing:
        read_run_settings(run)
    assert "\n" not in str(missing.value)
    for text, words in [("{ half", "damaged"), ("[]", "config.json"), ('{"config": "x"}', "config"),
                        (_run_config(lambda d: d["config"].__setitem__("steps", -3)), "steps"),
                        (_run_config(lambda d: d["config"].__setitem__("learning_rate", float("nan"))),
                         "learning_rate"),
                        (_run_config(lambda d: d["config"].__setitem__("preview_seeds", None)),
                         "preview_seeds"),
                        ("\udcff", "damaged")]:
        (run / "config.json").write_text(text, encoding="utf-8", errors="surrogateescape")
        with pytest.raises(ProjectError, match=words) as bad:
            read_run_settings(run)
        assert "\n" not in str(bad.value) and str(run / "config.json") in str(bad.value)


def test_an_old_run_with_settings_now_refused_stays_readable(tmp_path):
    from transferstudio.project.run import read_run_settings

    run = tmp_path / RUN
    run.mkdir()
    old = TrainConfig(steps=7, method="full", dora=True)
    (run / "config.json").write_text(json.dumps({"config": old.to_dict()}))
    assert read_run_settings(run)[1] == old
