"""Preview prompt lines with their own seed, steps, guidance, negative prompt and size."""
from __future__ import annotations

import pytest

from transferstudio.project.config import TrainConfig
from transferstudio.project.prompt_options import parse_prompt, read_prompt_file
from transferstudio.training.previews import draw_previews, preview_prompts, preview_slots


def test_kohya_sample_prompt_lines_are_read():
    line = parse_prompt("a watercolour cat --n blurry, low quality --d 42 --s 20 --l 6.5 --w 48 --h 64")
    assert line.text == "a watercolour cat" and line.negative == "blurry, low quality"
    assert (line.seed, line.steps, line.guidance, line.width, line.height) == (42, 20, 6.5, 48, 64)
    plain = parse_prompt("a cat --not an option, just words")
    assert plain.text == "a cat --not an option, just words" and not plain.has_options


@pytest.mark.parametrize("line, said", [("a cat --x 3", "--x is not a prompt option"),
                                        ("a cat --s many", "--s wants a whole number"),
                                        ("a cat --l 500", "--l 500 is outside")])
def test_bad_options_are_named_in_the_settings_problems(line, said):
    problems = TrainConfig(preview_prompts=["fine", line]).problems()
    assert any(p.startswith("preview_prompts: line 2") and said in p for p in problems), problems


def test_a_prompts_file_in_kohyas_format(tmp_path):
    file = tmp_path / "prompts.txt"
    file.write_text("# my previews\na red barn --d 3\n\nzq, a cat --n dog --s 12\n")
    assert read_prompt_file(file) == ["a red barn --d 3", "zq, a cat --n dog --s 12"]


def test_each_line_is_one_preview_with_its_settings_over_the_runs():
    config = TrainConfig(preview_prompts=["a barn --d 9 --s 5", "a cat", "a dog --n cats --l 3", "a fox --w 16"],
                         preview_seeds=[1, 2], trigger="zq")
    lines = preview_prompts(config, [], "text")
    assert len(lines) == 4, "more prompts than seeds: every prompt is shown"
    assert lines[1] == "zq, a cat"
    slots = preview_slots(lines, [1, 2], 30, (32, 32))
    assert [s.seed for s in slots] == [9, 2, 1, 2]
    assert [s.steps for s in slots] == [5, 30, 30, 30]
    assert slots[2].negative == "cats" and slots[2].guidance == 3.0 and slots[0].guidance is None
    assert slots[3].size == (16, 32) and slots[0].size == (32, 32)
    calls = []

    def sample(**kwargs):
        calls.append(kwargs)
        return [f"{p}@{s}" for p, s in zip(kwargs["prompts"], kwargs["seeds"])]

    pictures = draw_previews(sample, slots)
    assert pictures == ["zq, a barn@9", "zq, a cat@2", "zq, a dog@1", "zq, a fox@2"], "in the lines' order"
    assert len(calls) == 4 and {"negative_prompt": "cats", "guidance": 3.0}.items() <= calls[2].items()


def test_training_draws_the_prompt_lines(tmp_path, tiny_sd1_dir):
    from tiny_ddpm import make_images

    from transferstudio.core.events import Finished, Preview
    from transferstudio.project.project import create_project
    from transferstudio.training.trainer import TrainJob, train

    images = make_images(tmp_path / "images", n=2, size=32, captions=True)
    config = TrainConfig(steps=1, batch_size=2, preview_every=0, preview_steps=2, preview_seeds=[1],
                         validation="none", rank=4, alpha=4,
                         preview_prompts=["a red square --d 5 --s 3 --n blue", "a red square --d 5"])
    project = create_project(tmp_path / "p", backbone=tiny_sd1_dir, images=images, config=config)
    events = list(train(TrainJob(project)))
    assert isinstance(events[-1], Finished), events[-1]
    first = next(e for e in events if isinstance(e, Preview))
    assert first.seeds == (5, 5) and first.prompts == ("a red square", "a red square")
    assert [p.name for p in first.paths] == ["seed-5.png", "seed-5-2.png"], "two prompts, one seed: both kept"
    assert first.images[0].tobytes() != first.images[1].tobytes(), "their own steps and negative prompt"


def test_the_settings_form_loads_and_saves_a_prompts_file(qtbot, tmp_path):
    from transferstudio.ui.settings_form import SettingsForm

    form = SettingsForm()
    qtbot.addWidget(form)
    file = tmp_path / "sample_prompts.txt"
    file.write_text("# kohya sample prompts\nzq, a barn --n blurry --d 3 --s 12\nzq, a cat\n")
    editor = form.editors["preview_prompts"]
    with qtbot.waitSignal(form.changed, timeout=5000):
        assert editor.load_file(file) is None
    assert form.config().preview_prompts == ["zq, a barn --n blurry --d 3 --s 12", "zq, a cat"]
    editor.save_file(tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text() == "zq, a barn --n blurry --d 3 --s 12\nzq, a cat\n"
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    assert "Could not read" in editor.load_file(tmp_path / "binary.txt")
    assert form.config().preview_prompts == ["zq, a barn --n blurry --d 3 --s 12", "zq, a cat"]
    form.shutdown()
