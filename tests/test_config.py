"""Recipes: YAML -> validated dataclasses, overrides, clear one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nmt import config
from nmt.config import AttentionSites
from nmt.errors import NmtError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = "data: {train: corpus/train, valid: corpus/valid}\n"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_shipped_recipes_load(name):
    recipe = config.load(ROOT / "recipes" / name)
    assert recipe.model.d_model % recipe.model.heads == 0


def test_relative_paths_resolve_against_recipe_folder(tmp_path, monkeypatch):
    sub = tmp_path / "exp"
    sub.mkdir()
    path = write(sub, MINIMAL + "run_dir: out\n")
    monkeypatch.chdir(tmp_path.parent)
    recipe = config.load(path)
    assert recipe.data.train == str((sub / "corpus/train").resolve())
    assert recipe.run_dir == str((sub / "out").resolve())
    assert recipe.prepared_dir == (sub / "out" / "prepared").resolve()


def test_overrides_are_typed_and_paths_relative_to_cwd(tmp_path, monkeypatch):
    path = write(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)
    recipe = config.load(
        path,
        ["train.lr=1e-3", "model.attention=luong", "run_dir=elsewhere", "train.betas=[0.8, 0.9]"],
    )
    assert recipe.train.lr == 0.001 and isinstance(recipe.train.lr, float)
    assert recipe.model.attention == "luong"
    assert recipe.run_dir == str((tmp_path / "elsewhere").resolve())
    assert recipe.train.betas == (0.8, 0.9)


def test_attention_per_site_mapping(tmp_path):
    path = write(
        tmp_path,
        MINIMAL + "model:\n  attention: {encoder: multihead, decoder: luong, cross: bahdanau}\n",
    )
    recipe = config.load(path)
    assert recipe.model.attention == AttentionSites("multihead", "luong", "bahdanau")
    assert [recipe.model.attention_at(s) for s in ("encoder", "decoder", "cross")] == [
        "multihead",
        "luong",
        "bahdanau",
    ]


def test_dump_then_load_round_trips(tmp_path):
    path = write(tmp_path, MINIMAL + "model: {attention: {cross: bahdanau}, luong_score: dot}\n")
    recipe = config.load(path)
    out = tmp_path / "resolved.yaml"
    config.dump(recipe, out)
    assert config.load(out) == recipe


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "modle: {}\n", "unknown recipe key 'modle' (did you mean 'model'?)"),
        (
            MINIMAL + "train: {lr_rate: 1}\n",
            "unknown recipe key 'train.lr_rate' (did you mean 'train.lr'?)",
        ),
        (MINIMAL + "train: {max_steps: many}\n", "recipe key 'train.max_steps' must be an integer"),
        (MINIMAL + "train: {lr: true}\n", "recipe key 'train.lr' must be a number"),
        (
            MINIMAL + "model: {d_model: 100, heads: 3}\n",
            "recipe key 'model.d_model' (100) must be divisible",
        ),
        (MINIMAL + "model: {ff_dim: -4}\n", "recipe key 'model.ff_dim' must be >= 1"),
        (MINIMAL + "train: {warmup_steps: 0}\n", "recipe key 'train.warmup_steps' must be >= 1"),
        (
            MINIMAL + "train: {subword_alpha: 1.5}\n",
            "recipe key 'train.subword_alpha' must be in [0, 1]",
        ),
        (MINIMAL + "train: {subword_nbest: 1}\n", "recipe key 'train.subword_nbest' must be -1"),
        (MINIMAL + "model: {attention: bahdanu}\n", "did you mean 'bahdanau'?"),
        (
            MINIMAL + "model: {attention: {cross: additive}}\n",
            "recipe key 'model.attention.cross' must be one of",
        ),
        (
            MINIMAL + "model: {attention: {crosss: luong}}\n",
            "did you mean 'model.attention.cross'?",
        ),
        (MINIMAL + "tokenizer: {type: wordpiece}\n", "recipe key 'tokenizer.type' must be one of"),
        ("data: {train: a, valid: b, src_lang: en, tgt_lang: en}\n", "'data.tgt_lang' must differ"),
        ("model: {d_model: 64}\n", "recipe key 'data.train' is required"),
        ("- a\n- b\n", "must be a mapping of sections"),
    ],
)
def test_bad_recipes_give_one_clear_line(tmp_path, text, message):
    with pytest.raises(NmtError) as err:
        config.load(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_invalid_yaml_names_line_and_column(tmp_path):
    path = write(tmp_path, MINIMAL + "model:\n  d_model: [256\n  heads: 4\n")
    with pytest.raises(NmtError, match=r"invalid YAML in .*r\.yaml at line \d+, column \d+"):
        config.load(path)


def test_python_object_tags_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = write(
        tmp_path,
        MINIMAL + f"name: !!python/object/apply:os.system ['touch {marker}']\n",
    )
    with pytest.raises(NmtError, match="invalid YAML"):
        config.load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr", "--set expects key=value"),
        ("train.lr=-1", "recipe key 'train.lr' must be > 0"),
        ("train.nope=1", "unknown recipe key 'train.nope'"),
        ("run_dir.x=1", "recipe key 'run_dir' must be a string"),
    ],
)
def test_bad_overrides(tmp_path, override, message):
    with pytest.raises(NmtError, match=message.replace(".", r"\.").replace("'", "'")):
        config.load(write(tmp_path, MINIMAL + "run_dir: out\n"), [override])


def test_missing_recipe(tmp_path):
    with pytest.raises(NmtError, match="recipe not found"):
        config.load(tmp_path / "nope.yaml")


def test_from_dict_matches_yaml(tmp_path):
    text = MINIMAL + "run_dir: out\n"
    assert config.from_dict(yaml.safe_load(text), tmp_path) == config.load(write(tmp_path, text))


def test_default_run_dir_is_under_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = config.load(write(tmp_path, MINIMAL + "name: exp1\n"))
    assert recipe.run_dir == str(tmp_path / "runs" / "exp1")


def test_set_null_restores_a_default_so_a_recipe_can_switch_architecture():
    quickstart = ROOT / "recipes" / "quickstart.yaml"
    with pytest.raises(NmtError, match=r"--set model.ff_dim=null"):
        config.load(quickstart, ["model.arch=rnn", "model.attention=luong"])
    recipe = config.load(
        quickstart, ["model.arch=rnn", "model.attention=luong", "model.ff_dim=null"]
    )
    assert recipe.model.arch == "rnn"
    assert recipe.model.ff_dim == config.ModelConfig().ff_dim
    assert recipe.model.d_model == 128  # the recipe's other keys stay
    assert (
        config.load(quickstart, ["train.max_time=2h", "train.max_time=null"]).train.max_time is None
    )


@pytest.mark.parametrize("written", ["1e3", "1000.0", "1.0e3"])
def test_whole_numbers_written_as_floats_are_integers(written):
    recipe = config.load(ROOT / "recipes" / "quickstart.yaml", [f"train.max_steps={written}"])
    assert recipe.train.max_steps == 1000 and isinstance(recipe.train.max_steps, int)
    with pytest.raises(NmtError, match=r"'train.max_steps' must be an integer, got 1.5"):
        config.load(ROOT / "recipes" / "quickstart.yaml", ["train.max_steps=1.5"])


def test_an_rnn_attention_mapping_is_reported_as_written():
    with pytest.raises(NmtError) as error:
        config.load(
            ROOT / "recipes" / "quickstart.yaml",
            ["model.arch=rnn", "model.attention={cross: luong}", "model.ff_dim=null"],
        )
    assert "{encoder: multihead, decoder: multihead, cross: luong}" in str(error.value)
    assert "AttentionSites" not in str(error.value)
