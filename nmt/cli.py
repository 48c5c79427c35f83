"""The `nmt` command. Each subcommand parses its options and calls one library function."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from nmt.errors import NmtError
from nmt.utils import lock

app = typer.Typer(
    name="nmt",
    help="Neural machine translation from YAML recipes: preprocess, train, translate, score.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Option help says "[default: ...]" in plain text; rich markup would take it for a tag.
    rich_markup_mode=None,
)
# soft_wrap: a message (a path, a command to copy) is never broken across lines by rich.
stderr = Console(stderr=True, soft_wrap=True)

RecipeArg = Annotated[Path, typer.Argument(help="The recipe: a YAML file.", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer needs Optional on Python 3.10
    typer.Option(
        "--set",
        help="Override a recipe value, e.g. --set train.lr=0.001 (repeatable); KEY=null restores "
        "the key's default.",
        show_default=False,
    ),
]


CompileOpt = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="Run a Transformer's encoder and decoding step as libraries compiled ahead of "
        "time (AOTInductor; on a GPU torch.compile). The first run builds them (30-45 s each "
        "on a 2-core CPU) into ~/.cache/nmt (NMT_CACHE_DIR); later runs load them. One "
        "sentence at a time then decodes 3.2-5.6x as fast on the Multi30k recipe's model, the "
        "same translations; batches above 128 hypotheses a step decode as without it "
        "(docs/results.md). Not with --quantize int8.",
    ),
]

ShortlistOpt = Annotated[
    bool,
    typer.Option(
        "--shortlist",
        help="Decode each batch over a lexical shortlist (the likeliest translations of its "
        "source tokens, from IBM Model 1 on the run's training data, built once into "
        "RUN/shortlist.pt): in batches about 1.25x as fast for 0.1 BLEU on the Multi30k "
        "recipe's model; one sentence at a time 0.4 BLEU (docs/results.md).",
    ),
]

ThreadsOpt = Annotated[
    int,
    typer.Option(
        help="CPU threads for decoding (0: torch's default, one per core); on a shared "
        "machine, fewer threads than cores can be much faster."
    ),
]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Mistakes a user can make end in one line on stderr and exit code 2, no traceback."""
    try:
        yield
    except NmtError as e:
        # Escaped: a message may hold brackets (paths, `nmt[plot]`) that rich would eat.
        stderr.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.callback()
def _setup(
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only print warnings and errors.")
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=stderr, show_time=False, show_path=False, markup=False)],
        force=True,
    )
    logging.getLogger("sacrebleu").setLevel(logging.WARNING)  # its progress chatter


@app.command()
def preprocess(
    recipe: RecipeArg,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="Replace existing preprocessed data.")] = False,
) -> None:
    """Train SentencePiece, filter and binarize the recipe's parallel data."""
    from nmt import config
    from nmt.data.preprocess import preprocess as run_preprocess

    with user_errors():
        cfg = config.load(recipe, set_)
        run_preprocess(cfg, force=force)
        stderr.print(f"preprocessed data written to {cfg.prepared_dir}")


@app.command()
def train(
    recipe: RecipeArg,
    set_: SetOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Train from scratch, replacing the run folder's checkpoints "
            "[default: resume from its last.pt if it has one]."
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a model from a recipe (or resume its run); checkpoints and logs go to run_dir.

    SIGINT (Ctrl-C) or SIGTERM saves last.pt after the current update and stops; the same
    command then resumes exactly where it stopped.
    """
    from nmt import config
    from nmt.training.loop import train as run_training

    with user_errors():
        cfg = config.load(recipe, set_)
        result = run_training(cfg, force=force, progress=progress)
        if result.interrupted:
            stderr.print(
                f"stopped by {result.interrupted} at step {result.steps}; saved "
                f"{cfg.run_dir}/last.pt; run the same command to resume",
                soft_wrap=True,
            )
            raise typer.Exit(130 if result.interrupted == "SIGINT" else 143)
        stderr.print(
            f"trained {result.steps} steps ({result.epochs} epochs) in {result.seconds:.0f}s, "
            f"{result.tokens_per_second:.0f} target tokens/s; best valid BLEU "
            f"{result.best_bleu:.2f}; checkpoints in {cfg.run_dir}"
        )


@app.command()
def translate(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            help="A checkpoint file, or a run folder (uses best.pt); several make an ensemble "
            "(their log-probabilities are averaged at each step).",
            show_default=False,
        ),
    ],
    input: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--input", "-i", help="Input file, one sentence per line [default: stdin]."),
    ] = None,
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", "-o", help="Output file [default: stdout]."),
    ] = None,
    beam_size: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Beam size [default: the recipe's decode.beam_size]."),
    ] = None,
    greedy: Annotated[
        bool, typer.Option("--greedy", help="Greedy search instead of beam.")
    ] = False,
    sample: Annotated[
        bool,
        typer.Option("--sample", help="Sample each token (see --temperature, --top-k, --top-p)."),
    ] = False,
    temperature: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="Sampling temperature [default: 1]."),
    ] = None,
    top_k: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Sample from the K most likely tokens only (0: all) [default: 0]."),
    ] = None,
    top_p: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            help="Nucleus sampling: the smallest set reaching this probability [default: 1]."
        ),
    ] = None,
    seed: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Seed for --sample [default: 1]."),
    ] = None,
    min_len: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="No end of sentence before this many tokens [default: recipe's]."),
    ] = None,
    no_repeat_ngram: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Never repeat an n-gram of this size (0: off) [default: recipe's]."),
    ] = None,
    length_penalty: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="GNMT length penalty alpha (0 disables) [default: recipe's]."),
    ] = None,
    max_len_a: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="Output length limit a*source_length+b: a [default: recipe's]."),
    ] = None,
    max_len_b: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Output length limit a*source_length+b: b [default: recipe's]."),
    ] = None,
    batch_tokens: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Source tokens per batch [default: recipe's]."),
    ] = None,
    batch_size: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="At most this many sentences per batch, 0: no limit [default: recipe's]."
        ),
    ] = None,
    nbest: Annotated[
        int, typer.Option(help="Translations per input line (beam search keeps at least as many).")
    ] = 1,
    output_format: Annotated[
        str,
        typer.Option(
            help="text: one line per input line (with --nbest N: N lines 'index<TAB>score<TAB>"
            "translation'); jsonl: one JSON object per input line with the source and the "
            "n-best translations and scores."
        ),
    ] = "text",
    alignment: Annotated[
        bool,
        typer.Option(
            "--alignment",
            help="With --output-format jsonl: for each target subword, the source subword it "
            "attends to most (last decoder layer's cross-attention, mean over heads).",
        ),
    ] = False,
    plot_attention: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Write one heatmap per input line (best translation's cross-attention) into "
            "this folder, as 000001.png, ... (needs matplotlib: pip install 'nmt[plot]').",
            show_default=False,
        ),
    ] = None,
    input_format: Annotated[
        str,
        typer.Option(
            help='text: one sentence per line; jsonl: one {"source": ..., "prefix": ..., '
            '"constraints": [...]} object per line.'
        ),
    ] = "text",
    prefix: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="A target prefix per input line (an empty line for none): each translation "
            "continues it.",
            show_default=False,
        ),
    ] = None,
    constraints: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help='Target phrases per input line, as a JSON list (["roter Hund"], [] for none): '
            "each must appear in the translation (beam search).",
            show_default=False,
        ),
    ] = None,
    score_reference: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Instead of translating, print the model's log-probability of each line of "
            "this file as the translation of its input line: sum<TAB>per token.",
            show_default=False,
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16 or fp16.")
    ] = "auto",
    quantize: Annotated[
        str,
        typer.Option(
            help="none, or int8: dynamic int8 quantization of the linear layers (CPU only; a "
            "small BLEU change; on a model as small as the Multi30k recipe's only 1.2x fp32 "
            "in batches and 1.1x one sentence at a time: docs/results.md)."
        ),
    ] = "none",
    compile: CompileOpt = False,
    shortlist: ShortlistOpt = False,
    threads: ThreadsOpt = 0,
) -> None:
    """Translate lines of text (a file or stdin), one output line per input line. CHECKPOINTS
    may also be one folder written by `nmt export`, decoded with CTranslate2."""
    from nmt.decoding import lines
    from nmt.decoding.translator import Translator, reference_scores
    from nmt.utils.files import read_lines

    with user_errors():
        # Every flag is checked before a model is loaded.
        _set_threads(threads)
        _require_files(
            input=input, prefix=prefix, constraints=constraints, score_reference=score_reference
        )
        if input_format not in ("text", "jsonl"):
            raise NmtError(f"unknown --input-format '{input_format}'; use text or jsonl")
        if input_format == "jsonl" and (prefix or constraints):
            raise NmtError("with --input-format jsonl, prefixes and constraints come in the input")
        if score_reference is not None:
            search_flags = {
                "--prefix": prefix, "--constraints": constraints, "--nbest": nbest > 1,
                "--alignment": alignment, "--greedy": greedy, "--sample": sample,
                "--beam-size": beam_size, "--length-penalty": length_penalty,
                "--min-len": min_len, "--no-repeat-ngram": no_repeat_ngram,
                "--max-len-a": max_len_a, "--max-len-b": max_len_b,
                "--temperature": temperature, "--top-k": top_k, "--top-p": top_p, "--seed": seed,
            }  # fmt: skip
            given = [flag for flag, value in search_flags.items() if value not in (None, False)]
            if given:
                raise NmtError(
                    f"--score-reference scores given translations; it takes no search options "
                    f"(got {', '.join(given)})"
                )
        if output is not None and not output.parent.is_dir():
            raise NmtError(f"output folder does not exist: {output.parent}")
        if output_format not in ("text", "jsonl"):
            raise NmtError(f"unknown --output-format '{output_format}'; use text or jsonl")
        if nbest < 1:
            raise NmtError("--nbest must be at least 1")
        if alignment and output_format != "jsonl":
            raise NmtError("--alignment needs --output-format jsonl")
        if greedy and sample:
            raise NmtError("--greedy and --sample exclude each other; give one")
        if plot_attention is not None:
            _prepare_plot_folder(plot_attention)
        decoding = {
            "method": "sample" if sample else "greedy" if greedy else None,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "sampling_seed": seed,
            "min_len": min_len,
            "no_repeat_ngram": no_repeat_ngram,
            "beam_size": beam_size,
            "length_penalty": length_penalty,
            "max_len_a": max_len_a,
            "max_len_b": max_len_b,
            "batch_tokens": batch_tokens,
            "batch_size": batch_size,
        }
        held = contextlib.nullcontext()
        if output is not None:
            held = lock.hold_if_run_folder(output.parent, "write a translation")
        with held:
            translator = Translator.load(
                checkpoints,
                device=device,
                precision=precision,
                quantize=quantize,
                compile=compile,
                shortlist=shortlist,
                **decoding,
            )
            if input is not None:
                sources = read_lines(input)
            else:
                sources = read_lines(sys.stdin.buffer, "standard input")
            if score_reference is not None:
                scored = reference_scores(translator, sources, read_lines(score_reference))
                lines.emit(lines.reference_score_lines(scored, output_format), output)
                return
            items = lines.requests(
                sources,
                read_lines(prefix) if prefix is not None else None,
                read_lines(constraints) if constraints is not None else None,
                jsonl=input_format == "jsonl",
            )
            records = translator.stream_nbest(
                items, nbest, alignment=alignment, attention=plot_attention is not None
            )
            source_pieces = translator.src_tok.pieces
            if plot_attention is not None:
                records = lines.with_attention_plots(records, plot_attention, source_pieces)
            if output_format == "jsonl":
                formatted = lines.jsonl_lines(records, source_pieces if alignment else None)
            else:
                formatted = lines.text_lines(records, nbest)
            lines.emit(formatted, output)


def _set_threads(threads: int) -> None:
    """--threads: torch's intra-op threads (and CTranslate2's, which follows torch's)."""
    if threads < 0:
        raise NmtError(f"--threads must be 0 (torch's default) or more, not {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)


def _require_files(**flags: Path | None) -> None:
    """Each file given to these options can be read: a file, or a pipe such as /dev/stdin or
    <(command); the first that cannot is named by its flag."""
    for name, path in flags.items():
        flag = "input" if name == "input" else "--" + name.replace("_", "-")
        if path is None:
            continue
        if path.is_dir():
            raise NmtError(f"{flag}: expected a text file, found a folder: {path}")
        if not path.exists():
            raise NmtError(f"{flag} file not found: {path}")


def _prepare_plot_folder(folder: Path) -> None:
    """--plot-attention's folder, created now, and matplotlib present, before a model loads."""
    from nmt.utils import plot

    plot.check_available()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NmtError(f"cannot create {folder}: {e.strerror}") from None


def _numbers(text: str, kind: type, option: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise NmtError(f"{option} expects comma-separated numbers, got '{text}'") from None


@app.command()
def tune(
    run_dir: Annotated[Path, typer.Argument(help="A trained run folder.", show_default=False)],
    members: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Argument(
            help="More run folders or checkpoints: tune the ensemble that `nmt translate "
            "RUN_DIR MEMBER...` decodes (its settings go into RUN_DIR).",
            show_default=False,
        ),
    ] = None,
    beam_size: Annotated[
        str, typer.Option("--beam-size", "--beam", help="Beam sizes to try, comma-separated.")
    ] = "4,5,8",
    length_penalty: Annotated[
        str, typer.Option(help="GNMT length penalties (alpha) to try, comma-separated.")
    ] = "0.6,0.8,1.0,1.2,1.4,1.6",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    write: Annotated[
        bool, typer.Option(help="Write the best settings into RUN_DIR/recipe.yaml.")
    ] = True,
) -> None:
    """Choose beam size and length penalty on the validation set (never the test set); the
    best go into RUN_DIR/recipe.yaml, which `nmt translate RUN_DIR` decodes with."""
    from nmt.training.tune import tune as run_tuning

    with user_errors():
        beams = _numbers(beam_size, int, "--beam-size")
        alphas = _numbers(length_penalty, float, "--length-penalty")
        result = run_tuning(
            run_dir, beams, alphas, device=device, write=write, members=members or []
        )
    print("beam\tlength_penalty\tvalid_bleu\tseconds")
    for t in result.trials:
        mark = "\t<- chosen" if t == result.best else ""
        print(f"{t.beam_size}\t{t.length_penalty}\t{t.bleu:.2f}\t{t.seconds:.1f}{mark}")
    where = f"written to {run_dir / 'recipe.yaml'}" if write else "not written (--no-write)"
    stderr.print(
        f"best on the validation set: beam {result.best.beam_size}, length penalty "
        f"{result.best.length_penalty} (BLEU {result.best.bleu:.2f}, before "
        f"{result.before.bleu:.2f}); {where}",
        soft_wrap=True,
    )


@app.command()
def average(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            help="Checkpoint files, or one run folder (with --last).", show_default=False
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The averaged checkpoint.")],
    last: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Average the run folder's last N step_<N>.pt (see train.keep_last)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Average the weights of several checkpoints of one model into one checkpoint."""
    from nmt import checkpoint as ckpt

    with user_errors():
        paths = list(checkpoints)
        if last is not None:
            if len(paths) != 1 or not paths[0].is_dir():
                raise NmtError("--last N takes one run folder")
            found = ckpt.step_checkpoints(paths[0])
            if len(found) < last:
                raise NmtError(
                    f"{paths[0]} has {len(found)} step checkpoints, fewer than --last {last}; "
                    "keep more with train.keep_last"
                )
            paths = found[-last:]
        else:
            for path in paths:
                if path.is_dir():
                    raise NmtError(
                        f"{path} is a run folder: average its last N step checkpoints with "
                        "--last N, or name checkpoint files"
                    )
            if len(paths) < 2:
                raise NmtError(
                    "averaging takes two or more checkpoints (or a run folder and --last N)"
                )
        if output.exists() and not force:
            raise NmtError(f"{output} exists; use --force to replace it")
        if not output.parent.is_dir():
            raise NmtError(f"output folder does not exist: {output.parent}")
        with lock.hold_if_run_folder(output.parent, "write an averaged checkpoint"):
            ckpt.save(ckpt.average(paths), output)
        stderr.print(f"averaged {len(paths)} checkpoints into {output}")


@app.command()
def export(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A run folder (uses the checkpoint nmt translate would) or a checkpoint file.",
            show_default=False,
        ),
    ],
    out_dir: Annotated[Path, typer.Argument(help="The folder to write.", show_default=False)],
    to: Annotated[
        str,
        typer.Option("--to", help="The format: ctranslate2 or huggingface.", show_default=False),
    ],
    quantization: Annotated[
        str,
        typer.Option(
            help="How CTranslate2 stores the weights: none (float32), int8, int8_float32, "
            "int8_float16, int8_bfloat16, float16 or bfloat16."
        ),
    ] = "none",
    force: Annotated[bool, typer.Option(help="Replace an existing OUT_DIR.")] = False,
) -> None:
    """Export a trained model: for CTranslate2, with its SentencePiece models and decoding
    defaults (needs pip install 'nmt[ctranslate2]'; `nmt translate OUT_DIR` decodes it), or as
    a Hugging Face MarianMT folder (needs pip install 'nmt[hf]'; post-norm Transformers only)."""
    with user_errors():
        with lock.hold_if_run_folder(out_dir.parent, "write an exported model"):
            if to == "huggingface":
                from nmt.export.huggingface import export_marian

                if quantization != "none":
                    raise NmtError("--quantization applies to --to ctranslate2 only")
                folder = export_marian(run_dir, out_dir, force)
                hint = "load it with transformers' MarianMTModel.from_pretrained"
            else:
                from nmt.export.ctranslate2 import export as export_model

                folder = export_model(run_dir, out_dir, to, quantization, force)
                hint = f"translate with: nmt translate {folder}"
        stderr.print(escape(f"exported to {folder}; {hint}"))


@app.command("import")
def import_(
    folder: Annotated[
        Path,
        typer.Argument(
            help="A Hugging Face MarianMT folder (config.json, weights, source.spm, "
            "target.spm, vocab.json), e.g. an OPUS-MT model.",
            show_default=False,
        ),
    ],
    run_dir: Annotated[Path, typer.Argument(help="The run folder to write.", show_default=False)],
    source_format: Annotated[
        str, typer.Option("--from", help="The format: huggingface.", show_default=False)
    ],
    src_lang: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Source language, where tokenizer_config.json does not say it."),
    ] = None,
    tgt_lang: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Target language, where tokenizer_config.json does not say it."),
    ] = None,
) -> None:
    """Import a pretrained model into a run folder that translate, serve, export and a recipe's
    train.init_from take as a trained run (needs pip install 'nmt[hf]')."""
    from nmt.export.huggingface import import_marian

    with user_errors():
        if source_format != "huggingface":
            raise NmtError(f"unknown import format '{source_format}'; choose from huggingface")
        with lock.hold_if_run_folder(run_dir.parent, "write an imported model"):
            folder = import_marian(folder, run_dir, src_lang, tgt_lang)
        stderr.print(escape(f"imported into {folder}; translate with: nmt translate {folder}"))


@app.command()
def score(
    hypothesis: Annotated[Path, typer.Argument(help="System output, one sentence per line.")],
    reference: Annotated[
        list[Path], typer.Option("--reference", "-r", help="Reference file (repeatable).")
    ],
    metrics: Annotated[
        str, typer.Option("--metrics", "-m", help="Comma-separated: bleu, chrf, ter.")
    ] = "bleu",
    lowercase: Annotated[
        bool, typer.Option("--lowercase", "-lc", help="Case-insensitive.")
    ] = False,
    tokenize: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="BLEU tokenizer (sacrebleu's --tokenize) [default: 13a]."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    compare: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option(
            help="Another system to test against HYPOTHESIS, the baseline (repeatable): "
            "scores with 95% confidence intervals and p-values.",
            show_default=False,
        ),
    ] = None,
    test: Annotated[
        str,
        typer.Option(help="With --compare: bs (paired bootstrap) or ar (approx. randomization)."),
    ] = "bs",
    samples: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Resamples for --compare [default: 1000 for bs, 10000 for ar]."),
    ] = None,
) -> None:
    """Score a hypothesis file against references with sacrebleu (BLEU, chrF, chrF++, TER)."""
    from nmt.score import METRICS, compare_files, score_files

    with user_errors():
        names = [m.strip().lower() for m in metrics.split(",") if m.strip()]
        for name in names:
            if name not in METRICS:
                raise NmtError(f"unknown metric '{name}'; choose from {', '.join(METRICS)}")
        if compare:
            rows, signatures = compare_files(
                hypothesis, compare, reference, names, test, samples, lowercase, tokenize
            )
            if as_json:
                print(
                    json.dumps(
                        {"results": [r.as_dict() for r in rows], "signatures": signatures}, indent=2
                    )
                )
                return
            for r in rows:
                p = (
                    "baseline"
                    if r.p_value is None
                    else f"p = {r.p_value:.4f}" + ("*" if r.p_value < 0.05 else "")
                )
                ci = f" ({r.mean:.2f} ± {r.ci:.2f})" if r.ci is not None else ""
                print(f"{r.metric}\t{r.score:.2f}{ci}\t{p}\t{r.system}")
            for metric_name, signature in signatures.items():
                print(f"{metric_name}: {signature}")
            return
        results = score_files(hypothesis, reference, names, lowercase, tokenize)
        if as_json:
            print(json.dumps([r.as_dict() for r in results], indent=2))
        else:
            for r in results:
                print(r.text)


@app.command()
def curves(
    runs: Annotated[
        list[str],
        typer.Argument(
            help="Run folders or log.jsonl files, each optionally labelled: NAME=PATH.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--output",
            "-o",
            help="Also draw the curves into this PNG: validation BLEU against training "
            "minutes and against updates (needs matplotlib: pip install 'nmt[plot]').",
            show_default=False,
        ),
    ] = None,
    at_step: Annotated[
        str, typer.Option(help="Comma-separated updates: a column of BLEU at each.")
    ] = "",
    at_minutes: Annotated[
        str, typer.Option(help="Comma-separated minutes of training: a column of BLEU at each.")
    ] = "",
    title: Annotated[str, typer.Option(help="The picture's title.")] = "",
) -> None:
    """Learning curves of runs: a table of validation BLEU (at given updates or minutes, the
    best, the averaged checkpoint's, the last), and with -o a picture of them."""
    from nmt.training import curves as learning

    with user_errors():
        steps = _numbers(at_step, int, "--at-step")
        minutes = _numbers(at_minutes, float, "--at-minutes")
        if output is not None:
            from nmt.utils.plot import check_available

            check_available("nmt curves -o")
        read = [learning.read_curve(spec) for spec in runs]
        print(learning.table(read, steps, minutes))
        if output is not None:
            learning.plot(read, output, title)
            stderr.print(f"wrote {output}")


@app.command()
def serve(
    models: Annotated[
        list[str],
        typer.Argument(
            help="Run folders or checkpoint files, each served as a model named after its "
            "folder (or file), or NAME=PATH.",
            show_default=False,
        ),
    ],
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 lets other machines in.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one).")] = 8000,
    max_lines: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Lines per request [default: 256].", show_default=False),
    ] = None,
    max_line_chars: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Characters per line [default: 2000].", show_default=False),
    ] = None,
    max_request_chars: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="Characters per request, all lines [default: 100000].", show_default=False
        ),
    ] = None,
    max_body_bytes: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Bytes per request body [default: 1048576].", show_default=False),
    ] = None,
    timeout: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            help="Seconds a request may take before it is answered 504 (a request may ask for "
            "less) [default: 120].",
            show_default=False,
        ),
    ] = None,
    max_beam_size: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="Largest beam_size and nbest a request may ask for [default: 16].",
            show_default=False,
        ),
    ] = None,
    batching: Annotated[
        bool,
        typer.Option(help="Decode lines of concurrent requests together (--no-batching: apart)."),
    ] = True,
    max_wait_ms: Annotated[
        float, typer.Option(help="How long a batch waits for more requests, in milliseconds.")
    ] = 5.0,
    batch_tokens: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Source tokens per batch [default: the model's decode.batch_tokens]."),
    ] = None,
    short_tokens: Annotated[
        int,
        typer.Option(
            help="Requests of at most this many source tokens are decoded between the steps "
            "of longer ones (0: never)."
        ),
    ] = 256,
    max_queue_lines: Annotated[
        int,
        typer.Option(help="Lines that may wait; more are answered 503 with Retry-After."),
    ] = 4096,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16 or fp16.")
    ] = "auto",
    quantize: Annotated[str, typer.Option(help="none, or int8 (CPU only).")] = "none",
    compile: CompileOpt = False,
    shortlist: ShortlistOpt = False,
    threads: ThreadsOpt = 0,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
    api_keys: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Require one of the keys in this file (one per line) on /translate and "
            "/models: 'Authorization: Bearer KEY' or 'X-API-Key: KEY'.",
            show_default=False,
        ),
    ] = None,
    rate_limit: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help="Requests a minute per key (per client address without keys); over it, 429.",
            show_default=False,
        ),
    ] = None,
    cors_origin: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            help="A web origin whose pages may call the server, e.g. https://example.org "
            "(repeatable; * for any).",
            show_default=False,
        ),
    ] = None,
    metrics: Annotated[
        bool,
        typer.Option(help="GET /metrics for Prometheus (needs pip install 'nmt[metrics]')."),
    ] = False,
) -> None:
    """Serve models over HTTP (needs `pip install 'nmt[serve]'`): POST /translate, GET /health,
    GET /ready, GET /models, API docs at /docs. SIGTERM or Ctrl-C stops it after the requests in
    flight."""
    with user_errors():
        _set_threads(threads)
        from nmt.serving.access import Access, KeyRing, RateLimiter
        from nmt.serving.app import Limits
        from nmt.serving.app import serve as run_server
        from nmt.serving.batcher import Batching

        access = Access(
            KeyRing.from_file(api_keys) if api_keys is not None else None,
            RateLimiter(rate_limit) if rate_limit is not None else None,
        )

        given = {
            "max_lines": max_lines,
            "max_line_chars": max_line_chars,
            "max_request_chars": max_request_chars,
            "max_body_bytes": max_body_bytes,
            "max_beam_size": max_beam_size,
            "timeout": timeout,
        }
        run_server(
            models,
            host,
            port,
            limits=Limits(**{k: v for k, v in given.items() if v is not None}),
            batching=Batching(batching, max_wait_ms, batch_tokens, short_tokens, max_queue_lines),
            device=device,
            precision=precision,
            quantize=quantize,
            compile=compile,
            shortlist=shortlist,
            access_log=access_log,
            access=access,
            cors_origins=cors_origin or (),
            metrics=metrics,
        )


def main() -> None:
    try:
        app(prog_name="nmt")
    except KeyboardInterrupt:
        # Ctrl-C outside training: lines already printed are whole, -o files untouched.
        stderr.print("interrupted")
        raise SystemExit(130) from None
