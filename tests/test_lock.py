"""One nmt process at a time in a run folder: a second `nmt train` (or a preprocess, average or
translation writing there) is refused with one line naming the other process, and a lock left
by a killed run does not block the next one."""

from __future__ import annotations

import json
import os
import signal

import pytest
from conftest import tiny_recipe, write_recipe
from test_cli import assert_user_error, nmt
from test_resume import nmt_train, step_losses, wait_for_step

from nmt import config
from nmt.data.preprocess import preprocess
from nmt.errors import NmtError
from nmt.utils import lock


def _recipe(tmp_path, small_corpus, **train):
    values = {"max_steps": 40, "valid_every": 10, "log_every": 1, "max_tokens": 512, **train}
    return write_recipe(
        tmp_path / "recipe.yaml", tiny_recipe(small_corpus, tmp_path / "run", train=values)
    )


def test_second_train_on_a_folder_in_use_is_refused_and_the_first_goes_on(tmp_path, small_corpus):
    # Far more steps than the test waits for: the first run must still be training however
    # long the second takes to start; it is stopped by SIGTERM at the end.
    recipe = _recipe(tmp_path, small_corpus, max_steps=1_000_000, valid_every=1_000_000)
    preprocess(config.load(recipe))
    run = tmp_path / "run"
    first = nmt_train(recipe)
    try:
        wait_for_step(run, 2, first)
        second = nmt_train(recipe)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        message = " ".join(err.split())
        assert message.startswith("error:")
        assert str(run) in message and f"pid {first.pid}" in message and "in use" in message
        assert "Traceback" not in err
        # The first run goes on undisturbed, then stops and saves as usual.
        wait_for_step(run, max(step_losses(run)) + 3, first)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 143, err
    kinds = [json.loads(line)["kind"] for line in (run / "log.jsonl").open()]
    assert kinds.count("start") == 1 and kinds[-2:] == ["interrupted", "end"]
    steps = sorted(step_losses(run))
    assert steps == list(range(1, steps[-1] + 1))


def test_a_lock_left_by_a_killed_run_does_not_block_the_resume(tmp_path, small_corpus):
    recipe = _recipe(tmp_path, small_corpus)
    preprocess(config.load(recipe))
    run = tmp_path / "run"
    first = nmt_train(recipe)
    wait_for_step(run, 12, first)  # last.pt was saved at step 10
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert (run / lock.LOCK_NAME).is_file()  # the file stays; its lock went with the process
    resumed = nmt_train(recipe)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    kinds = [json.loads(line)["kind"] for line in (run / "log.jsonl").open()]
    assert kinds.count("resume") == 1 and kinds[-1] == "end"


def test_preprocess_average_and_translate_into_a_folder_in_use_are_refused(tmp_path, trained_run):
    """The lock is held here by this test process (flock locks belong to an open file, so a
    second open in the same process conflicts as another process would)."""
    recipe = trained_run.parent / "tiny.yaml"
    text = tmp_path / "in.txt"
    text.write_text("The dog laughed.\n")
    with lock.hold(trained_run, "train"):
        assert_user_error(nmt("preprocess", recipe, "--force"), str(trained_run), "in use")
        assert_user_error(
            nmt(
                "average",
                trained_run / "best.pt",
                trained_run / "last.pt",
                "-o",
                trained_run / "avg.pt",
            ),
            "in use",
            f"pid {os.getpid()}",
        )
        assert_user_error(
            nmt("translate", trained_run, "-i", text, "-o", trained_run / "out.txt"), "in use"
        )
        # Output elsewhere needs no lock.
        result = nmt("translate", trained_run, "--greedy", "-i", text, "-o", tmp_path / "out.txt")
        assert result.exit_code == 0, result.output
    assert not (trained_run / "avg.pt").exists() and not (trained_run / "out.txt").exists()
    # Free again once the holder is done.
    result = nmt("translate", trained_run, "--greedy", "-i", text, "-o", trained_run / "out.txt")
    assert result.exit_code == 0, result.output


def test_a_folder_removed_under_a_failing_holder_leaves_its_error_not_a_traceback(tmp_path):
    """Seen when a script removed a run folder while `nmt preprocess` was writing into it:
    the lock's tidying-up raised FileNotFoundError over the error that explains the failure."""
    folder = tmp_path / "run"
    with pytest.raises(NmtError, match="SentencePiece"):
        with lock.hold(folder, "preprocess"):
            (folder / lock.LOCK_NAME).unlink()
            folder.rmdir()
            raise NmtError("SentencePiece training failed")
    assert not folder.exists()
