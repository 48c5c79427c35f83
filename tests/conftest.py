"""Shared fixtures: the embedded toy corpus, recipe files, and a small trained run."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _load_make_toy():
    spec = importlib.util.spec_from_file_location("make_toy", ROOT / "data" / "make_toy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_toy"] = module
    spec.loader.exec_module(module)
    return module


make_toy = _load_make_toy()


def pytest_configure(config) -> None:
    """Under pytest-xdist (the suite runs `-n auto`: one worker per core), each worker gets its
    share of the cores, and so do the processes it starts: more threads than cores would
    oversubscribe them, and OpenMP threads that wait for each other lose most."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory) -> Path:
    """Libraries that `--compile` builds (nmt.models.compiled) go to a folder of the session's,
    not the user's cache."""
    folder = tmp_path_factory.mktemp("nmt-cache")
    os.environ["NMT_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> Path:
    """The embedded corpus as `data/make_toy.py` writes it (10k training pairs)."""
    out = tmp_path_factory.mktemp("toy")
    make_toy.write_corpus(out)
    return out


@pytest.fixture(scope="session")
def toy_prepared(tmp_path_factory, toy_corpus) -> Path:
    """The toy corpus preprocessed once (160-piece vocabulary); learning tests train on it."""
    from nmt import config
    from nmt.data.preprocess import preprocess

    folder = tmp_path_factory.mktemp("toy_prepared")
    recipe = config.from_dict(
        tiny_recipe(toy_corpus, folder / "base", tokenizer={"vocab_size": 160})
    )
    preprocess(recipe)
    return recipe.prepared_dir


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A 1,500-pair slice of the toy task, for tests that only need the pipeline to run."""
    out = tmp_path_factory.mktemp("toy_small")
    make_toy.write_corpus(out, n_train=1500, n_valid=40, n_test=40)
    return out


def tiny_recipe(corpus: Path, run_dir: Path, **sections: dict) -> dict:
    """A recipe mapping for a very small model on `corpus`; `sections` override its parts."""
    recipe = {
        "name": "tiny",
        "run_dir": str(run_dir),
        "seed": 1,
        "data": {
            "src_lang": "en",
            "tgt_lang": "de",
            "train": str(corpus / "train"),
            "valid": str(corpus / "valid"),
            "test": str(corpus / "test"),
        },
        "tokenizer": {"type": "unigram", "joint": True, "vocab_size": 120},
        "filter": {"max_len": 64, "max_ratio": 3.0},
        "model": {
            "d_model": 32,
            "heads": 2,
            "ff_dim": 64,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "dropout": 0.0,
        },
        "train": {
            "max_tokens": 1024,
            "lr": 0.003,
            "warmup_steps": 10,
            "max_steps": 20,
            "valid_every": 10,
            "log_every": 5,
            "patience": 0,
        },
        "decode": {"method": "beam", "beam_size": 3},
    }
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def recipe_file(tmp_path, small_corpus) -> Path:
    """A recipe file for a tiny model on the small corpus; its run folder is under tmp_path."""
    return write_recipe(tmp_path / "tiny.yaml", tiny_recipe(small_corpus, tmp_path / "run"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_corpus) -> Path:
    """A run folder with a briefly trained tiny model (best.pt, last.pt, log.jsonl)."""
    from nmt import config
    from nmt.data.preprocess import preprocess
    from nmt.training import loop as train

    folder = tmp_path_factory.mktemp("trained")
    path = write_recipe(folder / "tiny.yaml", tiny_recipe(small_corpus, folder / "run"))
    recipe = config.load(path)
    preprocess(recipe)
    train.train(recipe, progress=False)
    return folder / "run"


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Recipes with train.threads set torch's thread count for the whole process; put it back
    so one test does not slow down the next."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def default_sigint() -> None:
    """For `preexec_fn`: the child handles SIGINT by default (Python turns it into
    KeyboardInterrupt), even when the suite itself was started with SIGINT ignored, as a shell
    starts background jobs (`nohup`, `cmd &`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def translate_process(run: Path, stderr=subprocess.PIPE) -> subprocess.Popen:
    """`nmt translate RUN --greedy` in a child process reading a stdin pipe (binary pipes)."""
    return subprocess.Popen(
        [sys.executable, "-m", "nmt", "translate", str(run), "--greedy"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=default_sigint,
    )


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory, small_corpus) -> Path:
    """A run folder whose tiny model has learned the toy task a little (300 updates on one
    thread, about 20 s): outputs are words, not noise."""
    import torch

    from nmt import config
    from nmt.data.preprocess import preprocess
    from nmt.training import loop as train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy machine slows a two-thread run far more
    folder = tmp_path_factory.mktemp("learned")
    recipe = tiny_recipe(
        small_corpus,
        folder / "run",
        train={"max_steps": 300, "lr": 0.01, "warmup_steps": 10, "valid_every": 300},
        decode={"beam_size": 5},
    )
    cfg = config.load(write_recipe(folder / "tiny.yaml", recipe))
    preprocess(cfg)
    try:
        train.train(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return folder / "run"
