"""Generate the embedded toy corpus: a small synthetic English-like -> German-like task.

The corpus is meant to be learned by a tiny Transformer in a couple of minutes on a CPU,
so the grammar is small, but it is a real translation task rather than a copy task:

Source ("en"), SVO order::

    S      -> CLAUSE "."
    CLAUSE -> NP VERB_INTR [PP] [CONJ CLAUSE']
            | NP VERB_TR NP [PP] [CONJ CLAUSE']
    NP     -> DET [ADJ] NOUN          DET is "the" or "a" ("an" before a vowel)
    PP     -> PREP NP
    (CLAUSE' is a clause without its own subordinate clause: nesting depth 1. Subjects
    are animate nouns, PP nouns inanimate ones, objects any noun.)

Target ("de"), the same tree realised with different pseudo-words and three changes:

* every clause is verb-final: subject, object, prepositional phrase, then the verb;
* the adjective follows its noun ("the red ball" -> "lor ballo rotto");
* the determiner agrees with the noun's grammatical gender (m/f/n), so "the" and "a"
  each have three translations and the mapping is not word-by-word.

Example::

    The red dog chased a cat under the table because the boy laughed.
    Lor brakko rotto aine mieze unto lia tafla jaukte weilo lor knabo lachte.

Both sides have a capitalised first word and a final period attached to the last word,
so detokenised BLEU (sacrebleu) is meaningful. Each source sentence has exactly one
correct translation, given by ``translate_sentence``, which the generator itself uses.
Source and target have the same number of words (3 to 15).

Only the standard library is used; the same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

# --- Lexicon: each source word has exactly one target word. --------------------------------

# noun -> (target noun, gender). Genders are spread over m/f/n so that determiner agreement
# has to be learned per noun rather than guessed from a majority class.
NOUNS: dict[str, tuple[str, str]] = {
    "dog": ("brakko", "m"),
    "bird": ("vogulo", "m"),
    "boy": ("knabo", "m"),
    "man": ("mannek", "m"),
    "teacher": ("lehrik", "m"),
    "farmer": ("bauro", "m"),
    "king": ("könik", "m"),
    "garden": ("gartol", "m"),
    "tree": ("baumel", "m"),
    "ball": ("ballo", "m"),
    "cat": ("mieze", "f"),
    "woman": ("frauke", "f"),
    "queen": ("herscha", "f"),
    "door": ("türa", "f"),
    "flower": ("blumi", "f"),
    "table": ("tafla", "f"),
    "river": ("flussa", "f"),
    "horse": ("rossel", "n"),
    "girl": ("mädel", "n"),
    "child": ("kindel", "n"),
    "house": ("hauso", "n"),
    "book": ("buchel", "n"),
    "window": ("fenstra", "n"),
    "car": ("autel", "n"),
    "apple": ("apfol", "n"),
}
# Subjects are animate nouns and prepositional phrases use inanimate ones, so the sentences
# read less absurdly; objects can be any noun.
ANIMATE: tuple[str, ...] = (
    "dog", "bird", "boy", "man", "teacher", "farmer", "king",
    "cat", "woman", "queen", "horse", "girl", "child",
)  # fmt: skip
INANIMATE: tuple[str, ...] = tuple(n for n in NOUNS if n not in ANIMATE)

# Transitive verbs always take an object, intransitive ones never do, so the parser in
# translate_sentence needs no look-ahead beyond the verb itself.
VERBS_TR: dict[str, str] = {
    "saw": "sikte",
    "chased": "jaukte",
    "found": "fundete",
    "followed": "folkte",
    "heard": "hürte",
    "liked": "mogte",
    "painted": "malkte",
    "carried": "trugte",
    "pushed": "schubte",
    "visited": "besukte",
}
VERBS_INTR: dict[str, str] = {
    "slept": "schlafte",
    "laughed": "lachte",
    "ran": "rennte",
    "waited": "warkte",
    "sang": "sangte",
}
ADJECTIVES: dict[str, str] = {
    "big": "grosk",
    "small": "klenn",
    "red": "rotto",
    "blue": "blaul",
    "old": "altik",
    "young": "junki",
    "happy": "frohl",
    "quiet": "stillo",
    "green": "grünel",
    "tired": "müdel",
    "brave": "tapfo",
    "clever": "klugo",
}
PREPOSITIONS: dict[str, str] = {
    "with": "mitto",
    "near": "nahbe",
    "under": "unto",
    "behind": "hinto",
    "in": "inno",
    "on": "auffo",
}
CONJUNCTIONS: dict[str, str] = {
    "because": "weilo",
    "while": "währen",
    "when": "wenno",
}
# determiner -> gender -> target determiner (the agreement that breaks word-by-word mapping).
DETERMINERS: dict[str, dict[str, str]] = {
    "the": {"m": "lor", "f": "lia", "n": "les"},
    "a": {"m": "ain", "f": "aine", "n": "ainu"},
}

MIN_WORDS = 3
MAX_WORDS = 15

# Sampling probabilities: chosen so that the average sentence has ~8 words and every
# construction occurs thousands of times in 10k training pairs.
P_ADJECTIVE = 0.35
P_TRANSITIVE = 0.75
P_PP = 0.35
P_SUBCLAUSE = 0.3


def _check_lexicon() -> None:
    # The "exactly one correct target" promise (in both directions) needs distinct words.
    src = [*NOUNS, *VERBS_TR, *VERBS_INTR, *ADJECTIVES, *PREPOSITIONS, *CONJUNCTIONS]
    src += [*DETERMINERS, "an"]
    tgt = [t for t, _ in NOUNS.values()]
    tgt += [*VERBS_TR.values(), *VERBS_INTR.values(), *ADJECTIVES.values()]
    tgt += [*PREPOSITIONS.values(), *CONJUNCTIONS.values()]
    tgt += [w for forms in DETERMINERS.values() for w in forms.values()]
    assert len(set(src)) == len(src), "duplicate source word"
    assert len(set(tgt)) == len(tgt), "duplicate target word"
    assert not set(src) & set(tgt), "a word is shared by source and target"
    assert set(ANIMATE) <= set(NOUNS), "an animate noun is missing from NOUNS"


_check_lexicon()


# --- Syntax trees ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NounPhrase:
    det: str  # "the" or "a"
    adj: str | None
    noun: str


@dataclass(frozen=True)
class Clause:
    subj: NounPhrase
    verb: str
    obj: NounPhrase | None  # present iff the verb is transitive
    pp: tuple[str, NounPhrase] | None  # (preposition, noun phrase)
    sub: tuple[str, Clause] | None  # (conjunction, subordinate clause)


def _sample_np(rng: random.Random, nouns: list[str] | tuple[str, ...]) -> NounPhrase:
    det = rng.choice(sorted(DETERMINERS))
    adj = rng.choice(list(ADJECTIVES)) if rng.random() < P_ADJECTIVE else None
    return NounPhrase(det, adj, rng.choice(nouns))


def _sample_clause(rng: random.Random, allow_sub: bool) -> Clause:
    subj = _sample_np(rng, ANIMATE)
    if rng.random() < P_TRANSITIVE:
        verb, obj = rng.choice(list(VERBS_TR)), _sample_np(rng, list(NOUNS))
    else:
        verb, obj = rng.choice(list(VERBS_INTR)), None
    pp = (
        (rng.choice(list(PREPOSITIONS)), _sample_np(rng, INANIMATE))
        if rng.random() < P_PP
        else None
    )
    sub = None
    if allow_sub and rng.random() < P_SUBCLAUSE:
        sub = (rng.choice(list(CONJUNCTIONS)), _sample_clause(rng, allow_sub=False))
    return Clause(subj, verb, obj, pp, sub)


# --- Realisation ----------------------------------------------------------------------------


def _np_source(np_: NounPhrase) -> list[str]:
    rest = [*([np_.adj] if np_.adj else []), np_.noun]
    # English "a" becomes "an" before a vowel; the target ignores this (it is source-only).
    det = "an" if np_.det == "a" and rest[0][0] in "aeiou" else np_.det
    return [det, *rest]


def _np_target(np_: NounPhrase) -> list[str]:
    noun, gender = NOUNS[np_.noun]
    words = [DETERMINERS[np_.det][gender], noun]
    if np_.adj:
        words.append(ADJECTIVES[np_.adj])  # adjective after the noun
    return words


def _clause_source(c: Clause) -> list[str]:
    words = _np_source(c.subj) + [c.verb]
    if c.obj:
        words += _np_source(c.obj)
    if c.pp:
        words += [c.pp[0], *_np_source(c.pp[1])]
    if c.sub:
        words += [c.sub[0], *_clause_source(c.sub[1])]
    return words


def _clause_target(c: Clause) -> list[str]:
    words = _np_target(c.subj)
    if c.obj:
        words += _np_target(c.obj)
    if c.pp:
        words += [PREPOSITIONS[c.pp[0]], *_np_target(c.pp[1])]
    words.append(VERBS_TR.get(c.verb) or VERBS_INTR[c.verb])  # verb-final
    if c.sub:
        words += [CONJUNCTIONS[c.sub[0]], *_clause_target(c.sub[1])]
    return words


def _sentence(words: list[str]) -> str:
    # Capitalise only the first letter (not str.capitalize, which would lowercase the rest).
    return words[0][:1].upper() + words[0][1:] + "".join(" " + w for w in words[1:]) + "."


# --- Parsing the source (so the mapping is a function of the source string) -----------------


class _Parser:
    def __init__(self, words: list[str], sentence: str) -> None:
        self.words, self.pos, self.sentence = words, 0, sentence

    def _next(self, what: str) -> str:
        if self.pos >= len(self.words):
            raise ValueError(f"expected {what} at the end of {self.sentence!r}")
        word = self.words[self.pos]
        self.pos += 1
        return word

    def _peek(self) -> str | None:
        return self.words[self.pos] if self.pos < len(self.words) else None

    def noun_phrase(self) -> NounPhrase:
        det = self._next("a determiner")
        if det not in DETERMINERS and det != "an":
            raise ValueError(f"expected a determiner, got {det!r} in {self.sentence!r}")
        word = self._next("a noun")
        if (det in ("a", "an")) and (det == "an") != (word[:1] != "" and word[0] in "aeiou"):
            raise ValueError(f"wrong a/an before {word!r} in {self.sentence!r}")
        det = "a" if det == "an" else det
        adj = None
        if word in ADJECTIVES:
            adj, word = word, self._next("a noun")
        if word not in NOUNS:
            raise ValueError(f"expected a noun, got {word!r} in {self.sentence!r}")
        return NounPhrase(det, adj, word)

    def clause(self, allow_sub: bool) -> Clause:
        subj = self.noun_phrase()
        verb = self._next("a verb")
        if verb not in VERBS_TR and verb not in VERBS_INTR:
            raise ValueError(f"expected a verb, got {verb!r} in {self.sentence!r}")
        obj = self.noun_phrase() if verb in VERBS_TR else None
        pp = None
        if self._peek() in PREPOSITIONS:
            pp = (self._next("a preposition"), self.noun_phrase())
        sub = None
        if allow_sub and self._peek() in CONJUNCTIONS:
            sub = (self._next("a conjunction"), self.clause(allow_sub=False))
        return Clause(subj, verb, obj, pp, sub)


def parse_source(sentence: str) -> Clause:
    """Parse a source sentence of the toy grammar; raise ValueError if it is not one."""
    if not sentence.endswith(".") or sentence != sentence.strip():
        raise ValueError(f"a sentence must end with '.' and have no outer spaces: {sentence!r}")
    words = sentence[:-1].split(" ")
    if not words[0][:1].isupper():
        raise ValueError(f"the first word must be capitalised: {sentence!r}")
    words[0] = words[0][:1].lower() + words[0][1:]
    parser = _Parser(words, sentence)
    clause = parser.clause(allow_sub=True)
    if parser.pos != len(words):
        raise ValueError(f"unexpected {words[parser.pos]!r} in {sentence!r}")
    return clause


def translate_sentence(sentence: str) -> str:
    """Return the one correct target translation of a source sentence of the toy grammar."""
    return _sentence(_clause_target(parse_source(sentence)))


def sample_sentence(rng: random.Random) -> str:
    """Draw one source sentence of 3-15 words."""
    while True:  # rejection keeps the length bound simple; rarely more than one retry
        words = _clause_source(_sample_clause(rng, allow_sub=True))
        if MIN_WORDS <= len(words) <= MAX_WORDS:
            return _sentence(words)


def generate_pairs(n: int, seed: int = 1) -> list[tuple[str, str]]:
    """Return n (source, target) pairs with pairwise distinct source sentences."""
    rng = random.Random(seed)
    seen: set[str] = set()  # membership only; order comes from the list (hash-seed safe)
    sources: list[str] = []
    attempts = 0
    while len(sources) < n:
        attempts += 1
        if attempts > 50 * n + 10_000:
            raise ValueError(f"could not draw {n} distinct sentences; ask for fewer")
        src = sample_sentence(rng)
        if src not in seen:
            seen.add(src)
            sources.append(src)
    # Dedup rejects short sentences more often late in the stream; shuffling before the
    # split gives train/valid/test the same length distribution.
    rng.shuffle(sources)
    return [(src, translate_sentence(src)) for src in sources]


def write_corpus(
    out_dir: Path,
    n_train: int = 10000,
    n_valid: int = 200,
    n_test: int = 200,
    seed: int = 1,
) -> dict[str, Path]:
    """Write train/valid/test .en/.de files into out_dir; return paths keyed like "train.en".

    All source sentences are distinct, so valid and test never overlap train (or each other).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = generate_pairs(n_train + n_valid + n_test, seed)
    splits = {
        "valid": pairs[:n_valid],
        "test": pairs[n_valid : n_valid + n_test],
        "train": pairs[n_valid + n_test :],
    }
    paths: dict[str, Path] = {}
    for split in ("train", "valid", "test"):
        for side, lang in ((0, "en"), (1, "de")):
            path = out_dir / f"{split}.{lang}"
            # newline="\n" keeps the files byte-identical across platforms.
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.writelines(pair[side] + "\n" for pair in splits[split])
            paths[f"{split}.{lang}"] = path
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "toy")
    parser.add_argument("--train", type=int, default=10000, help="training pairs")
    parser.add_argument("--valid", type=int, default=200, help="validation pairs")
    parser.add_argument("--test", type=int, default=200, help="test pairs")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if min(args.train, args.valid, args.test) < 0:
        parser.error("sizes must be >= 0")
    try:
        write_corpus(args.out, args.train, args.valid, args.test, args.seed)
    except ValueError as e:
        parser.error(str(e))
    print(
        f"wrote {args.train}/{args.valid}/{args.test} train/valid/test pairs (seed {args.seed})"
        f" to {args.out}: {{train,valid,test}}.{{en,de}}"
    )


if __name__ == "__main__":
    main()
