"""Progress within an epoch: a bar on a terminal, plain periodic lines in a batch job's log."""

from __future__ import annotations

import io

import torch

from harness import config as C
from harness.run.lifecycle import TrialRun, train_trials
from harness.train import progress as P


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_say_images_done_rate_and_time_left():
    out = io.StringIO()
    bar = P.EpochProgress(1000, "epoch 3/90", stream=out, every=0.0)
    bar.update(250)
    bar.update(250)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("epoch 3/90: 500 of 1,000 images (50%), ")
    assert "img/s, about " in lines[1] and lines[1].endswith(" left in the epoch")


def test_no_plain_line_before_the_interval():
    out = io.StringIO()
    bar = P.EpochProgress(1000, "epoch 1/2", stream=out, every=3600.0)
    bar.update(1000)
    assert out.getvalue() == ""


def test_a_terminal_gets_a_live_line_that_is_gone_at_the_end():
    term = Terminal()
    bar = P.EpochProgress(1000, "epoch 1/2", stream=term)
    bar.update(500)
    bar.close()
    text = term.getvalue()
    assert text.startswith("\repoch 1/2:"), "the line a person watches starts with the epoch"
    assert text.endswith("\r") and text.rstrip("\r").endswith(" "), "and is wiped when the epoch ends"


def test_clock():
    assert P.clock(65) == "1m 05s" and P.clock(3723) == "1h 02m 03s" and P.clock(float("inf")) == "?"


def test_a_trial_shows_its_progress_in_the_log_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(P, "PLAIN_EVERY_S", 0.0)
    cfg = C.build_config(
        {}, {"optim.epochs": 1, "optim.batch_size": 64, "data.train_subset": 20, "run.device": "cpu"}
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_trials([TrialRun(cfg, tmp_path / "run", log=lambda _: None)], progress=True)
        assert "epoch 1/1: 64 of 192 images (33%)" in capsys.readouterr().out  # 200 images: 3 full batches
        train_trials([TrialRun(cfg, tmp_path / "quiet", log=lambda _: None)])
        assert "images (" not in capsys.readouterr().out  # not asked (a Ray trial): nothing
    finally:
        torch.set_num_threads(threads)
