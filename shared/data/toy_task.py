"""A synthetic translation task, generated in code, that a tiny Transformer learns in ~1 min on CPU.

Two made-up languages, "xa" and "xb", with a one-to-one word dictionary (36 words each) and one
reordering rule: xa puts the adjective before the noun (`ta bim blor`), xb after it (`lo eka soru`).
A sentence is `NP VERB`, `NP VERB NP`, `NP VERB [NP] PREP NP` or
`NP VERB NP CONJ NP`, where NP is `DET [ADJ] NOUN`, 3 to 10 words long. Either language can be
the source; the splits hold distinct sentences.
"""

from __future__ import annotations

import functools
import random

LANGS = ("xa", "xb")
SPLIT_SIZES = {"train": 4000, "val": 200, "test": 200}
SPLITS = tuple(SPLIT_SIZES)
DEFAULT_SEED = 0
MIN_WORDS, MAX_WORDS = 3, 10

# Word-class lists: xa word -> xb word. Readable, pronounceable, no overlap between the languages
# so a model cannot get credit for copying the source.
DETERMINERS = {"ta": "lo", "ka": "mi"}
ADJECTIVES = {
    "bim": "soru",
    "dap": "nelu",
    "fip": "kari",
    "gom": "tuvi",
    "hul": "peso",
    "jev": "rami",
    "kot": "lune",
    "zup": "wadi",
}
NOUNS = {
    "blor": "eka",
    "dran": "ifo",
    "frel": "oma",
    "glim": "uzi",
    "krat": "abe",
    "plon": "ile",
    "snib": "oru",
    "trop": "ena",
    "vosk": "ipa",
    "wuld": "ode",
    "yarn": "uni",
    "zelt": "ave",
}
VERBS = {
    "mek": "dosa",
    "nup": "fale",
    "rik": "gomi",
    "sut": "havo",
    "tev": "jino",
    "vox": "kelu",
    "wim": "lapo",
    "yub": "moti",
}
PREPOSITIONS = {"ul": "sen", "ob": "tir", "ip": "vek", "es": "pon"}
CONJUNCTIONS = {"nu": "e", "po": "o"}  # join two clauses' objects: "... NP nu NP"
DICTIONARY = {**DETERMINERS, **ADJECTIVES, **NOUNS, **VERBS, **PREPOSITIONS, **CONJUNCTIONS}


def _noun_phrase(rng: random.Random) -> tuple[list[str], list[str]]:
    """One noun phrase in both languages: xa `DET [ADJ] NOUN`, xb `DET NOUN [ADJ]`."""
    det = rng.choice(sorted(DETERMINERS))
    noun = rng.choice(sorted(NOUNS))
    if rng.random() < 0.5:
        return [det, noun], [DICTIONARY[det], DICTIONARY[noun]]
    adj = rng.choice(sorted(ADJECTIVES))
    # The reordering rule: the adjective follows the noun in xb.
    return [det, adj, noun], [DICTIONARY[det], DICTIONARY[noun], DICTIONARY[adj]]


def _sentence(rng: random.Random) -> tuple[str, str]:
    """One random (xa, xb) sentence pair of 3 to 11 words."""
    xa, xb = _noun_phrase(rng)
    verb = rng.choice(sorted(VERBS))
    xa, xb = xa + [verb], xb + [DICTIONARY[verb]]
    shape = rng.choice(("intransitive", "object", "object_prep", "prep", "object_conj"))
    if shape in ("object", "object_prep", "object_conj"):
        a, b = _noun_phrase(rng)
        xa, xb = xa + a, xb + b
    if shape == "object_conj":
        conj = rng.choice(sorted(CONJUNCTIONS))
        a, b = _noun_phrase(rng)
        xa, xb = xa + [conj] + a, xb + [DICTIONARY[conj]] + b
    if shape in ("object_prep", "prep"):
        prep = rng.choice(sorted(PREPOSITIONS))
        a, b = _noun_phrase(rng)
        xa, xb = xa + [prep] + a, xb + [DICTIONARY[prep]] + b
    return " ".join(xa), " ".join(xb)


@functools.lru_cache(maxsize=4)
def _generate(seed: int) -> dict[str, tuple[tuple[str, str], ...]]:
    """All splits for one seed: distinct sentences, so val/test never repeat a training sentence."""
    rng = random.Random(seed)  # random.Random's stream is stable across Python versions
    total = sum(SPLIT_SIZES.values())
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    while len(pairs) < total:
        pair = _sentence(rng)
        # Three noun phrases with adjectives make 11 words: drop those rather than bias the grammar.
        if len(pair[0].split()) > MAX_WORDS:
            continue
        if pair[0] not in seen:
            seen.add(pair[0])
            pairs.append(pair)
    out, start = {}, 0
    for split, size in SPLIT_SIZES.items():
        out[split] = tuple(pairs[start : start + size])
        start += size
    return out


def load_toy(
    split: str, src_lang: str = "xa", tgt_lang: str = "xb", seed: int = DEFAULT_SEED
) -> list[tuple[str, str]]:
    """(source, target) pairs of one split of the synthetic task, deterministic from seed."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown toy split {split!r}; choose one of {', '.join(SPLITS)}")
    if {src_lang, tgt_lang} != set(LANGS):
        raise ValueError(
            f"the toy task translates between {LANGS[0]!r} and {LANGS[1]!r} (either direction); "
            f"got src_lang={src_lang!r}, tgt_lang={tgt_lang!r}"
        )
    pairs = _generate(seed)[split]
    if src_lang == "xa":
        return list(pairs)
    return [(b, a) for a, b in pairs]
