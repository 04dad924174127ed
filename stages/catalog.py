"""The subject catalog and the prompts c of DIP (seed 000, section 4.1 and appendix B.1).

The paper synthesises reference / target pairs with FLUX "conditioned on identical subject prompts
c but with varied auxiliary attributes such as background and lighting", 5,000 single-subject and
5,000 multi-subject, each subset balanced over objects, animals and humans (real and anime).
`make_prompts` crosses catalog subjects with scenes, plain backgrounds and lighting:

- `prompt`: the subject prompt c of the quadruplet, which describes the target x_w (subject, scene,
  lighting); it is what a subject-driven generator is trained on;
- `ref_prompt`: the reference x_r (the subject on a plain background, studio light);
- `diptych_prompt`: both in one FLUX image in the Subjects200K style, left half x_r, right half x_w
  (the default generation mode; `ref_prompt` and `prompt` generate the halves as two images).

Decisions the paper leaves open:
- Category shares (`per_category`): objects, animals and humans a third each, humans split evenly
  between real and anime (DEFAULT_SHARES). Categories are dealt in a smooth weighted round robin,
  so every prefix of the list is as balanced as it can be and prompt i does not depend on n.
- A multi-subject prompt has 2 or 3 subjects (even odds). Its `category` is its FIRST subject's,
  never "mixed": the Fig. 13 rubric needs one of the known categories, and the first subject is the
  one drawn for the category's share. `categories` lists every subject's, for per-subject rubrics.
- Subjects in one prompt have different head nouns (last word of the class noun: "dog" vs
  "anime girl" vs "girl" clash on "girl"), so a grounding query per class noun finds one subject;
  real people and anime characters are never put in one picture.
- Randomness: every prompt draws from its own seed, derived from (seed, kind, index) by SHA-256,
  with only `random.Random.random()` (the one draw Python guarantees across versions), so the same
  seed gives the same prompts on any machine and sample keys stay stable for resume.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CATEGORIES = ("object", "animal", "human-real", "human-anime")
# appendix B.1: objects, animals, humans balanced; humans = real + anime
DEFAULT_SHARES = {"object": 2, "animal": 2, "human-real": 1, "human-anime": 1}

# Used when the catalog YAML gives no lists of its own (configs/catalogs/dip_subjects.yaml does).
SCENES = [
    "in a sunlit kitchen", "on a sandy beach at low tide", "in a snowy forest clearing",
    "on a cobblestone street in an old town", "in a cozy living room", "in a blooming flower garden",
    "in a city park in autumn", "on a mountain trail", "in a modern office", "in a quiet library",
    "on a rooftop terrace", "in a small cafe", "by a calm lake", "in a golden wheat field",
    "on a busy city sidewalk", "in a bamboo forest", "among desert sand dunes",
    "in a greenhouse full of plants", "at a night market", "on a wooden pier",
]
BACKGROUNDS = ["a plain white background", "a plain light grey background", "a seamless white studio backdrop"]
LIGHTING = [
    "soft morning light", "golden hour sunlight", "overcast daylight", "warm late-afternoon light",
    "bright midday sun", "cool blue-hour light", "neon light at night", "dappled light through leaves",
]
# attributes that read after the class noun ("a teapot with a bamboo handle")
_AFTER_NOUN = ("with ", "wearing ", "in ", "holding ", "made ", "carrying ", "that ", "on ", "from ")
_NUMBER_WORDS = {2: "two", 3: "three"}


@dataclass(frozen=True)
class Subject:
    name: str
    category: str  # one of CATEGORIES
    class_noun: str  # what grounding is asked for: "teapot", "dog", "woman", "anime girl"
    attributes: list[str] = field(default_factory=list)  # "red", "ceramic", "with a bamboo handle"

    @property
    def head_noun(self) -> str:
        return self.class_noun.split()[-1].lower()

    def describe(self, article: bool = True) -> str:
        """"a red ceramic teapot with a bamboo handle": attributes before the class noun, phrases
        starting with a preposition after it. The class noun always appears verbatim."""
        before = [a for a in self.attributes if not a.lower().startswith(_AFTER_NOUN)]
        after = [a for a in self.attributes if a.lower().startswith(_AFTER_NOUN)]
        text = " ".join([*before, self.class_noun, *after])
        if not article:
            return text
        return ("an " if text[:1].lower() in "aeiou" else "a ") + text


def load_catalog(path) -> list[Subject]:
    """Subjects of a catalog YAML ({"subjects": [{name, category, class_noun, attributes}], ...}).
    A catalog is config, not data: a bad one raises ValueError."""
    return _subjects(_read_yaml(path))


def load_lists(path) -> dict[str, list[str]]:
    """The scenes / backgrounds / lighting lists of a catalog YAML (module defaults where absent)."""
    doc = _read_yaml(path)
    return {
        "scenes": list(doc.get("scenes") or SCENES),
        "backgrounds": list(doc.get("backgrounds") or BACKGROUNDS),
        "lighting": list(doc.get("lighting") or LIGHTING),
    }


def make_prompts(catalog, n_single: int, n_multi: int, seed: int, per_category: dict | None = None,
                 *, scenes=None, backgrounds=None, lighting=None) -> list[dict]:
    """n_single single-subject then n_multi multi-subject (2-3 subjects) prompt dicts, deterministic
    from `seed`. `catalog` is a list of Subject or the path of a catalog YAML (then its lists are
    used unless given here). `per_category`: relative shares per category (counts work too; they
    are normalised); categories without subjects in the catalog are dropped."""
    if isinstance(catalog, (str, os.PathLike)):
        lists = load_lists(catalog)
        scenes, backgrounds, lighting = (scenes or lists["scenes"], backgrounds or lists["backgrounds"],
                                         lighting or lists["lighting"])
        catalog = load_catalog(catalog)
    subjects = list(catalog)
    scenes, backgrounds, lighting = list(scenes or SCENES), list(backgrounds or BACKGROUNDS), list(lighting or LIGHTING)
    by_cat = {c: [s for s in subjects if s.category == c] for c in CATEGORIES}
    shares = dict(DEFAULT_SHARES if per_category is None else per_category)
    unknown = set(shares) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories {sorted(unknown)}; known: {CATEGORIES}")
    # CATEGORIES order, so the round robin breaks ties the same way whatever order the dict had
    shares = {c: float(shares[c]) for c in CATEGORIES if shares.get(c) and shares[c] > 0 and by_cat[c]}
    if (n_single or n_multi) and not shares:
        raise ValueError("no subjects in the catalog for any requested category")
    prompts = []
    for kind, n in (("single", n_single), ("multi", n_multi)):
        for i, category in enumerate(_deal(shares, n)):
            prompt_seed = derive_seed(seed, kind, i)
            rng = random.Random(prompt_seed)
            first = _pick(rng, by_cat[category])
            chosen = [first]
            if kind == "multi":
                want = 2 + int(rng.random() < 0.5)
                for _ in range(want - 1):
                    ok = [s for s in subjects if _compatible(s, chosen)]
                    if not ok:
                        break
                    chosen.append(_pick(rng, ok))
                if len(chosen) < 2:
                    raise ValueError(f"no subject in the catalog can share a picture with {first.name}")
            prompts.append(_prompt(chosen, _pick(rng, scenes), _pick(rng, backgrounds), _pick(rng, lighting),
                                   prompt_seed))
    return prompts


def derive_seed(seed: int, kind: str, index: int) -> int:
    """A per-prompt seed (31 bits, valid for torch.Generator and numpy) from (seed, kind, index)."""
    digest = hashlib.sha256(f"{int(seed)}:{kind}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


# --- reading prompt files ----------------------------------------------------------------------

PROMPT_FIELDS = ("prompt", "ref_prompt", "diptych_prompt", "category", "categories", "subjects",
                 "class_nouns", "n_subjects", "seed")


def read_prompts(path) -> list[dict]:
    """Prompt dicts from a .parquet or .jsonl file with make_prompts' fields. Missing optional
    fields are filled: subjects <- class_nouns, n_subjects <- len(class_nouns), categories <-
    [category] * n, ref_prompt <- the class nouns on a plain white background, diptych_prompt <- ref and prompt,
    seed <- derived from the prompt text. category stays None when absent (the rubric
    then rejects the row as "unknown_category" rather than guess). Rows without prompt or
    class_nouns come back as they are, with None there: the pipeline rejects them."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    elif path.suffix in (".jsonl", ".ndjson"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rows.append(json.loads(line))
    else:
        raise ValueError(f"{path}: expected .parquet or .jsonl")
    return [fill_prompt(row) for row in rows]


def fill_prompt(row: dict) -> dict:
    row = dict(row)
    for k in PROMPT_FIELDS:
        row.setdefault(k, None)
    nouns = row["class_nouns"]
    if isinstance(nouns, str):
        nouns = row["class_nouns"] = [nouns]
    if nouns is not None:
        nouns = row["class_nouns"] = [str(n) for n in nouns]
        if row["subjects"] is None:
            row["subjects"] = list(nouns)
        if row["n_subjects"] is None:
            row["n_subjects"] = len(nouns)
        if row["ref_prompt"] is None and nouns:
            row["ref_prompt"] = f"{_join(['a ' + n for n in nouns])}, on {BACKGROUNDS[0]}, studio light"
        if row["diptych_prompt"] is None and nouns and row["prompt"]:
            row["diptych_prompt"] = diptych_prompt(_join(nouns), _join([f"the {n}" for n in nouns]),
                                                   f"on {BACKGROUNDS[0]}, studio light", str(row["prompt"]))
    if row["categories"] is None and row["category"] is not None and row["n_subjects"]:
        row["categories"] = [row["category"]] * int(row["n_subjects"])
    if row["seed"] is None and row["prompt"] is not None:
        row["seed"] = int.from_bytes(hashlib.sha256(str(row["prompt"]).encode()).digest()[:4], "big") & 0x7FFFFFFF
    return row


# --- helpers -----------------------------------------------------------------------------------

def _read_yaml(path) -> dict:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping with 'subjects'")
    return doc


def _subjects(doc: dict) -> list[Subject]:
    subjects, seen = [], set()
    for i, s in enumerate(doc.get("subjects") or []):
        name, category, noun = s.get("name"), s.get("category"), s.get("class_noun")
        if not name or not noun:
            raise ValueError(f"subject {i}: name and class_noun are required, got {s}")
        if category not in CATEGORIES:
            raise ValueError(f"subject {name}: category {category!r} not in {CATEGORIES}")
        if name in seen:
            raise ValueError(f"subject {name} listed twice")
        seen.add(name)
        attrs = s.get("attributes") or []
        subjects.append(Subject(str(name), category, str(noun), [str(a) for a in attrs]))
    if not subjects:
        raise ValueError("catalog has no subjects")
    return subjects


def _deal(shares: dict[str, float], n: int) -> list[str]:
    """Smooth weighted round robin: n categories in proportion to shares, balanced in every prefix."""
    total = sum(shares.values())
    current = dict.fromkeys(shares, 0.0)
    out = []
    for _ in range(n):
        for c in shares:
            current[c] += shares[c]
        best = max(shares, key=lambda c: current[c])  # ties: first in CATEGORIES order
        current[best] -= total
        out.append(best)
    return out


def _pick(rng: random.Random, items: list):
    return items[min(int(rng.random() * len(items)), len(items) - 1)]


def _compatible(s: Subject, chosen: list[Subject]) -> bool:
    humans = {c.category for c in chosen} | {s.category}
    return (all(s.name != c.name and s.head_noun != c.head_noun for c in chosen)
            and not {"human-real", "human-anime"} <= humans)


def _join(parts: list[str]) -> str:
    """"a", "a and b", "a, b, and c"; "a with x and y, and b" when a part has its own "and"."""
    if len(parts) == 1:
        return parts[0]
    comma = "," if len(parts) > 2 or any(" and " in p for p in parts[:-1]) else ""
    return ", ".join(parts[:-1]) + f"{comma} and " + parts[-1]


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def diptych_prompt(what: str, short: str, left: str, right: str) -> str:
    """One FLUX prompt for reference (left half) and target (right half), Subjects200K style."""
    return f"Two side-by-side images of the same {what}: on the left, {short} {left}; on the right, {right}"


def _prompt(subjects: list[Subject], scene: str, background: str, light: str, seed: int) -> dict:
    n = len(subjects)
    described = _join([s.describe() for s in subjects])
    short = _join([f"the {s.class_noun}" for s in subjects])
    if n == 1:
        what = subjects[0].describe(article=False)
        ref = f"{_capitalise(described)} on {background}, studio light"
        target = f"{_capitalise(described)} {scene}, {light}"
    else:
        what = f"{_NUMBER_WORDS.get(n, n)} subjects, {described}"
        short = f"{short} together"
        ref = f"{_capitalise(described)}, together on {background}, studio light"
        target = f"{_capitalise(described)}, together {scene}, {light}"
    return {
        "prompt": target,
        "ref_prompt": ref,
        "diptych_prompt": diptych_prompt(what, short, f"on {background}, studio light", f"{short} {scene}, {light}"),
        "category": subjects[0].category,
        "categories": [s.category for s in subjects],
        "subjects": [s.name for s in subjects],
        "class_nouns": [s.class_noun for s in subjects],
        "n_subjects": n,
        "seed": seed,
    }
