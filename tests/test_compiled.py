"""The compiled decoding functions (nmt.models.compiled): libraries built ahead of time with
AOTInductor give the eager steps' log-probabilities and the full forward pass's, through a
beam's expand, reorders, a cache that grows past its first block and a shortlist; they are kept
on disk and loaded again; a compiler that fails warns once and decoding goes on eagerly."""

from __future__ import annotations

import torch
from test_model import ATOL, log_probs, make_model, random_batch, target_in

from nmt.models import compiled, incremental

VOCAB_LIST = torch.tensor([3, 5, 6, 8, 11])  # EOS and four words


def _steps(model, sentences, tgt, vocab=None):
    """Beam-style decoding of `tgt` (3 rows a sentence): the rows' log-probabilities at every
    position, and the rows as reordered on the way (at 3, and past the cache's first block)."""
    expand = torch.tensor([0, 0, 0, 1, 1, 1])
    within = torch.tensor([1, 0, 0, 3, 5, 5])
    rows, out = tgt, []
    with torch.no_grad():
        state = model.start(sentences, vocab)
        model.reorder(state, expand, expand)
        for t in range(rows.shape[1]):
            if t in (3, incremental.BLOCK + 2):
                model.reorder(state, within)
                rows, out = rows[within], [s[within] for s in out]
            out.append(model.step(state, rows[:, t : t + 1])[:, None])
    return torch.cat(out, dim=1), rows


def test_compiled_steps_equal_the_eager_steps_and_the_full_forward(caplog):
    model = make_model("luong_general", "post", seed=12, decoder_layers=2)
    torch.manual_seed(12)
    sentences = random_batch([5, 3])
    tgt = target_in(6, incremental.BLOCK + 5)
    eager, rows = _steps(model, sentences, tgt)
    eager_short, _ = _steps(model, sentences, tgt, VOCAB_LIST)

    assert model.compile_decoding()
    with caplog.at_level("INFO", logger="nmt"):
        steps, _ = _steps(model, sentences, tgt)
        short, _ = _steps(model, sentences, tgt, VOCAB_LIST)
    assert not model.compiled_decoder.failed
    # the files a new process would look for (compiling must not change what the key reads)
    for name, group in (("source", 1), ("step", 3), ("step-shortlist", 3)):
        key = compiled.CompiledDecoding(model)._key(name, group)
        assert (compiled.cache_dir() / f"{name}-{group}-{key}.pt2").exists()
    assert sum("compiling the decoding step" in r.message for r in caplog.records) >= 3
    torch.testing.assert_close(steps, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        steps,
        log_probs(model, sentences[torch.tensor([0, 0, 0, 1, 1, 1])], rows),
        atol=ATOL,
        rtol=1e-5,
    )
    torch.testing.assert_close(short, eager_short, atol=1e-5, rtol=1e-5)
    assert torch.isinf(short[..., [4, 7, 9, 10, 12]]).all()


def test_libraries_are_loaded_from_disk_and_keyed_by_the_weights(monkeypatch):
    model = make_model("multihead", "pre", seed=3)
    sentences = random_batch([4, 2])
    model.compile_decoding()
    with torch.no_grad():
        first = model.start(sentences).cross_kv
    assert not model.compiled_decoder.failed

    def no_compiler(*args):
        raise AssertionError("compiled again")

    monkeypatch.setattr(compiled.CompiledDecoding, "_compile", no_compiler)
    model.compile_decoding()  # as a new process would
    with torch.no_grad():
        again = model.start(sentences).cross_kv
    assert not model.compiled_decoder.failed
    for a, b in zip(again, first):
        torch.testing.assert_close(a, b, atol=0, rtol=0)

    key = model.compiled_decoder._key("source", 1)
    with torch.no_grad():
        model.decoder_layers[0].ff.fc1.weight[0, 0] += 1.0
    model.compile_decoding()
    assert model.compiled_decoder._key("source", 1) != key


def test_a_compiler_that_fails_warns_once_and_decoding_goes_on_eagerly(caplog, monkeypatch):
    model = make_model("bahdanau", "pre", seed=5)
    sentences, tgt = random_batch([4, 2]), target_in(6, 5)
    eager, _ = _steps(model, sentences, tgt)

    def broken(*args):
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(compiled.CompiledDecoding, "_build", broken)
    model.compile_decoding()
    with caplog.at_level("WARNING", logger="nmt"):
        fallback, _ = _steps(model, sentences, tgt)
        _steps(model, sentences, tgt)
    warnings = [r.message for r in caplog.records if "compiling" in r.message]
    assert warnings == ["compiling the decoding step failed, decoding eagerly (no compiler here)"]
    assert model.compiled_decoder.failed
    torch.testing.assert_close(fallback, eager, atol=0, rtol=0)


def test_batches_larger_than_the_libraries_are_tuned_for_decode_eagerly(monkeypatch):
    model = make_model("multihead", "pre", seed=6)

    def no_compiler(*args):
        raise AssertionError("a large batch went to the compiler")

    monkeypatch.setattr(compiled.CompiledDecoding, "_build", no_compiler)
    model.compile_decoding()
    limit = compiled.CompiledDecoding.STEP_ROWS
    sentences = random_batch([4] * (compiled.CompiledDecoding.SOURCE_TOKENS // 4 + 1))
    tgt = target_in(limit + 1, 3)
    with torch.no_grad():
        state = model.start(sentences)
        rows = torch.arange(limit + 1) % sentences.shape[0]
        model.reorder(state, rows, rows)
        for t in range(3):
            model.step(state, tgt[:, t : t + 1])
    assert not model.compiled_decoder.failed
