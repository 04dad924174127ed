"""Prompt templates and answer parsers (stages/rubric.py, stages/prompts.py): the paper's wording is
verbatim, and messy VLM answers parse or are rejected with a reason."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from stages import prompts as P
from stages import rubric as R

SEEDS = Path(__file__).resolve().parents[3] / "shared" / "seeds"


def seed_text(prefix: str) -> str:
    """A seed paper's text; a missing folder fails in CI and skips elsewhere."""
    if not SEEDS.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SEEDS} is missing in CI")
        pytest.skip(f"{SEEDS} not present on this machine")
    (path,) = SEEDS.glob(f"{prefix}_*.txt")
    return path.read_text(encoding="utf-8")


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def lines_of(n_yes: int, n: int = 10) -> str:
    return "\n".join(f"{i}. {'Yes' if i <= n_yes else 'No'}" for i in range(1, n + 1))


# --- the rubric: wording ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["human", "animal", "object"])
def test_rubric_original_wording_is_verbatim_in_seed(name):
    text = seed_text("000")
    rubric = R.RUBRICS[name]
    assert len(rubric.questions) == 10
    assert [q.number for q in rubric.questions] == list(range(1, 11))
    assert rubric.title in text
    for q in rubric.questions:
        assert f"{q.number}. **{q.aspect}**: {q.original}" in text, (name, q.number)


@pytest.mark.parametrize("name", ["human", "animal", "object"])
def test_rubric_polarity_and_not_visible_flags(name):
    for q in R.RUBRICS[name].questions:
        asks_difference = bool(re.search(r"\bdiffer(ent|ences?)?\b", q.original.split("?")[0]))
        assert q.flipped == asks_difference, (name, q.number)
        assert (q.normalised != q.original) == q.flipped
        assert not re.search(r"\bdiffer(ent|ences?)?\b\?", q.normalised)
        # a clause the paper attaches ("return "Yes"", items in hands) survives the rewording
        if "." in q.original.split("?", 1)[1]:
            assert q.original.split("?", 1)[1].strip() in q.normalised
        excuses_occlusion = bool(re.search(r"obscured|occlusion", q.original))
        assert q.not_visible_is_consistent == excuses_occlusion, (name, q.number)
    flips = {n: [q.number for q in r.questions if q.flipped] for n, r in R.RUBRICS.items()}
    assert flips == {"human": [2, 3, 8, 10], "animal": [9, 10], "object": [9, 10]}


def test_category_mapping():
    assert R.rubric_for("object") is R.OBJECT
    assert R.rubric_for("animal") is R.ANIMAL
    assert R.rubric_for("human-real") is R.HUMAN
    assert R.rubric_for("human-anime") is R.HUMAN
    assert R.rubric_for("Human-Anime ") is R.HUMAN
    with pytest.raises(ValueError):
        R.rubric_for("vehicle")
    assert R.parse_rubric(lines_of(10), "vehicle").code == "unknown_category"


@pytest.mark.parametrize("wording", ["normalised", "original"])
def test_rubric_prompt_lists_ten_numbered_questions(wording):
    prompt = R.rubric_prompt("human-real", subject="a woman in a red coat", wording=wording)
    numbered = re.findall(r"^(\d+)\. \*\*", prompt, re.M)
    assert numbered == [str(i) for i in range(1, 11)]
    for q in R.HUMAN.questions:
        assert q.text(wording) in prompt
    assert "a woman in a red coat" in prompt and "Yes" in prompt and "No" in prompt
    assert "Human Identity Consistency Evaluation Criteria" in prompt
    if wording == "normalised":
        assert "Are the styles and patterns of the garments the same?" in prompt
    else:
        assert "Are the styles and patterns of the garments different?" in prompt
    with pytest.raises(ValueError):
        R.rubric_prompt("object", wording="flipped")


def test_counting_question_is_per_subject_in_multi_subject_prompts():
    """Issue 18, 7b: a correct image of two dogs answers "exactly one animal subject" No for both
    subjects. DIP's rubric_questions sets the other subjects aside by name in question 1 (only),
    so ten Yes scores 10 for each; a single-subject prompt keeps the paper's question verbatim."""
    from stages.dip import rubric_questions

    row = rubric_questions({"subjects": ["a corgi", "a poodle"], "category": "animal"})
    first = [p.splitlines()[4] for p in row["rubric_prompts"]]
    assert first == ["1. **Single Subject**: Apart from the other subjects the prompt names (a poodle), does each "
                     "image contain exactly one animal subject (no duplicates of this animal, no further "
                     "animals/obstructions)?",
                     "1. **Single Subject**: Apart from the other subjects the prompt names (a corgi), does each "
                     "image contain exactly one animal subject (no duplicates of this animal, no further "
                     "animals/obstructions)?"]
    for p in row["rubric_prompts"]:  # questions 2-10 are the paper's
        for q in R.ANIMAL.questions[1:]:
            assert q.normalised in p
    assert R.parse_rubric(lines_of(10), "animal").value.score == 10
    single = rubric_questions({"subjects": ["a corgi"], "category": "animal"})["rubric_prompts"][0]
    assert R.ANIMAL.questions[0].original in single and "Apart from" not in single
    # the per-subject question echoed with its answer: its "(no duplicates" is not read as the verdict
    echo = "1. " + R.counting_question(R.OBJECT.questions[0], "normalised", ("a cup",))
    rest = "\n".join(f"{i}. Yes" for i in range(2, 11))
    assert R.parse_rubric(f"{echo} Yes\n{rest}", "object").value.score == 10
    assert R.parse_rubric(f"{echo} No\n{rest}", "object").value.inconsistent == (1,)
    for rubric in R.RUBRICS.values():
        assert [q.number for q in rubric.questions if q.per_subject] == [R.COUNTING]


# --- the rubric: parsing ------------------------------------------------------------------------

def test_rubric_clean_answer_scores():
    res = R.parse_rubric(lines_of(10), "object")
    assert res.ok and res.reason is None
    r = res.value
    assert (r.rubric, r.score, r.answers, r.raw, r.not_visible) == ("object", 10, ("yes",) * 10, ("yes",) * 10, ())
    value, reason = R.parse_rubric(lines_of(7), "animal")
    assert reason is None and value.score == 7 and value.inconsistent == (8, 9, 10)


def test_rubric_messy_answer():
    answer = """Sure! I compared the reference (left) with the generated image (right).

**1. Yes**
2) yes, the same.
Q3: **Yes**
4. **Hairstyle, Color**: Yes - both have a long black ponytail
5 - YES
(6) Yes.

7. Facial Features: No - the nose is narrower in the second image
8. No — the color differs on the cuffs
**9.** *Yes*
Question 10: yes

Overall the score is 7/10.
"""
    r = R.parse_rubric(answer, "human-real").value
    assert r.answers == ("yes",) * 6 + ("no", "no", "yes", "yes")
    assert r.score == 8 and r.inconsistent == (7, 8)


def test_rubric_echoed_questions_and_answer_on_next_line():
    qs = R.ANIMAL.questions
    body = []
    for q in qs:
        body.append(f"{q.number}. **{q.aspect}**: {q.normalised}")
        body.append("No." if q.number == 2 else "Yes.")
    r = R.parse_rubric("\n".join(body), "animal").value
    assert r.score == 9 and r.inconsistent == (2,)
    # echoed on the same line: the question's own "no multiple animals" / "not visible" are not read
    same_line = "\n".join(f"{q.number}. {q.normalised} Yes" for q in qs)
    r = R.parse_rubric(same_line, "animal").value
    assert r.score == 10 and r.not_visible == ()


def test_rubric_bare_lines_without_numbers():
    answer = "No problem! Here are my answers:\n" + "\n".join(["Yes"] * 8 + ["No, the tag is gone", "Yes."])
    r = R.parse_rubric(answer, "animal").value
    assert r.score == 9 and r.inconsistent == (9,)


@pytest.mark.parametrize("answer, detail", [
    (lines_of(7, n=7), "expected 10 answers, got 7"),
    (lines_of(10, n=11), "expected 10 answers, got 11"),
    ("\n".join(["Yes"] * 9), "expected 10 answers, got 9"),
    ("", "empty answer"),
    (None, "empty answer"),
    ("The two images show the same mug.", "expected 10 answers, got 0"),
    (lines_of(10).replace("4. Yes", "4. Probably"), "expected 10 answers, got 9"),
])
def test_rubric_unparsable(answer, detail):
    res = R.parse_rubric(answer, "object")
    assert not res.ok and res.value is None
    assert res.reason == f"unparsable_rubric: {detail}"
    assert res.code == "unparsable_rubric"


def test_rubric_duplicate_numbers():
    repeated = lines_of(10) + "\n\nSummary:\n1. Yes\n2. Yes"
    assert R.parse_rubric(repeated, "object").value.score == 10
    conflicting = lines_of(10) + "\n2. No"
    assert R.parse_rubric(conflicting, "object").reason == "unparsable_rubric: conflicting answers to question 2"


def test_polarity_flip_original_wording():
    # human questions 2, 3, 8, 10 ask about differences: "No" is the consistent answer
    answer = "\n".join(f"{i}. {'No' if i in (2, 3, 8, 10) else 'Yes'}" for i in range(1, 11))
    r = R.parse_rubric(answer, "human-anime", wording="original").value
    assert r.score == 10 and r.answers == ("yes",) * 10
    assert r.raw[1] == "no" and r.wording == "original"
    # the same answer to the normalised questions says four aspects differ
    assert R.parse_rubric(answer, "human-anime").value.score == 6
    # "Yes, the garments are different" on a flipped question is inconsistent
    yes_all = lines_of(10)
    assert R.parse_rubric(yes_all, "object", wording="original").value.inconsistent == (9, 10)


def test_not_visible_follows_the_paper():
    answer = """1. Yes
2. Yes
3. No - one clip is occluded by her hand
4. Yes
5. Not visible
6. N/A
7. No, the face is obscured in the second image
8. Yes
9. Yes
10. Not visible"""
    r = R.parse_rubric(answer, "human-real").value
    # 3, 5, 6, 7 carry the paper's "return "Yes"" clause; 10 has none, so unknown is not a match
    assert r.raw == ("yes", "yes", "no", "yes", "not_visible", "not_visible", "no", "yes", "yes", "not_visible")
    assert r.answers == ("yes",) * 9 + ("no",)
    assert r.score == 9 and r.not_visible == (3, 5, 6, 7, 10)
    # negated mentions are not occlusion
    plain = lines_of(10).replace("7. Yes", "7. No, not obscured at all; the nose differs")
    r = R.parse_rubric(plain, "human-real").value
    assert r.inconsistent == (7,) and r.not_visible == ()


def test_not_visible_on_flipped_question_original_wording():
    # human 3 in the paper's words: "Do the number ... differ? If ... due to occlusion ..., return "Yes""
    base = "\n".join(f"{i}. {'No' if i in (2, 8, 10) else 'Yes'}" for i in range(1, 11) if i != 3)
    occluded = base.replace("4. Yes", "3. Yes, but only because the bow is occluded by her arm\n4. Yes")
    differs = base.replace("4. Yes", "3. Yes, she wears two clips in one and three in the other\n4. Yes")
    assert R.parse_rubric(occluded, "human-anime", wording="original").value.score == 10
    r = R.parse_rubric(differs, "human-anime", wording="original").value
    assert r.score == 9 and r.inconsistent == (3,)


def test_score_gates():
    nine = R.parse_rubric(lines_of(9), "object").value.score
    eight = R.parse_rubric(lines_of(8), "object").value.score
    six = R.parse_rubric(lines_of(6), "object").value.score
    seven = R.parse_rubric(lines_of(7), "object").value.score
    assert (nine, eight, six, seven) == (9, 8, 6, 7)
    assert R.is_positive(nine) and R.is_positive(10) and not R.is_positive(eight)
    assert R.is_negative(six) and R.is_negative(0) and not R.is_negative(seven)
    assert not R.is_positive(seven) and not R.is_negative(eight)  # 7 and 8: excluded as ambiguous
    assert R.is_positive(8, min_score=8) and R.is_negative(7, max_score=7)


def test_unwrap_raises_reject():
    from runtime.rows import Reject

    assert R.parse_rubric(lines_of(10), "object").unwrap().score == 10
    with pytest.raises(Reject) as e:
        R.parse_rubric(lines_of(7, n=7), "object").unwrap()
    assert (e.value.reason, e.value.detail) == ("unparsable_rubric", "expected 10 answers, got 7")


# --- DIP region captions ------------------------------------------------------------------------

def test_region_caption_prompt_and_parse():
    prompt = P.region_caption_prompt("a corgi wearing a blue collar", max_words=50)
    assert "a corgi wearing a blue collar" in prompt and "50 words" in prompt
    assert "{" not in prompt
    answer = ('Sure! Here is a detailed description:\n\n"A fluffy corgi with a tan and white coat, pointed ears '
              'and a blue nylon collar."\n\nLet me know if you need more detail!')
    assert P.parse_region_caption(answer).value == (
        "A fluffy corgi with a tan and white coat, pointed ears and a blue nylon collar.")
    assert P.parse_region_caption("   \n\n").code == "empty_caption"
    assert P.parse_region_caption("one two three four", max_words=3).reason == "caption_too_long: 4 words > 3"


# --- UPER ---------------------------------------------------------------------------------------

def test_uper_prompts_quote_the_paper():
    text = flat(seed_text("001"))
    prompt = P.rating_prompt("bookshelf", ["light-colored wood", "2-column by 5-row cubby structure"])
    first, scale = prompt.split("\n\n")[:2]
    assert first == "Are the bookshelves in the two pictures below identical?"
    assert first in text and scale in text
    assert "- 2-column by 5-row cubby structure" in prompt and "Rating: <0-5>" in prompt
    for example in ('“Eames Lounge Chair,”', '“black leather,”', '“wood shell”'):
        assert example in text  # the examples the attribute prompt quotes are the paper's
    assert '"Eames Lounge Chair", "black leather", "wood shell"' in P.attributes_prompt("chair")
    assert P.attributes_prompt("owl plush").startswith("This is a reference image of an owl plush")


@pytest.mark.parametrize("noun, expected", [
    ("bookshelf", "bookshelves"), ("chair", "chairs"), ("leather boots", "leather boots"),
    ("glass", "glasses"), ("puppy", "puppies"), ("toy", "toys"), ("knife", "knives"),
    ("giraffe", "giraffes"), ("red backpack", "red backpacks"), ("box", "boxes"), ("person", "people"),
])
def test_plural(noun, expected):
    assert P.plural(noun) == expected


def test_parse_attributes():
    answer = """Sure! Here are the key visual attributes of the chair:

1. **Eames Lounge Chair**
2) black leather upholstery
- wood shell (rosewood veneer).
* Black Leather Upholstery
- 2-column stitched cushions

These attributes define its identity."""
    assert P.parse_attributes(answer).value == [
        "Eames Lounge Chair", "black leather upholstery", "wood shell (rosewood veneer)", "2-column stitched cushions"]
    assert P.parse_attributes(answer, max_attributes=2).value == ["Eames Lounge Chair", "black leather upholstery"]
    assert P.parse_attributes('Key attributes:\n"purple backpack", "two zippers", and "white logo patch".').value == [
        "purple backpack", "two zippers", "white logo patch"]
    assert P.parse_attributes("red ceramic bowl\nBon Appétit script").value == [
        "red ceramic bowl", "Bon Appétit script"]
    for bad in ("", None, "Here are the attributes:\n\n"):
        assert P.parse_attributes(bad).reason == "unparsable_attributes: no attributes found"


def test_parse_rating():
    paper = ("While they share the same basic design (a light-colored wood, 2-column by 5-row cubby structure), "
             "there are numerous differences in their construction, the items they hold, and even the wood grain "
             "itself. **They are definitely two different objects. Therefore, the pair will be rates as 0.**")
    rating, verdicts = P.parse_rating(paper).value
    assert (rating, verdicts) == (0, [])
    answer = """Let me check each attribute.

- **light-colored wood**: Yes
- 2-column by 5-row cubby structure: No - the target has 3 columns
3. wood grain: no
- items on shelves — present

Rating: **4**"""
    res = P.parse_rating(answer)
    assert res.ok and res.value.rating == 4
    assert res.value.verdicts == [("light-colored wood", True), ("2-column by 5-row cubby structure", False),
                                  ("wood grain", False), ("items on shelves", True)]
    assert P.parse_rating("I would rate this pair a 3 out of 5.").value.rating == 3
    assert P.parse_rating("Score: 5/5").value.rating == 5
    assert P.parse_rating("5").value.rating == 5
    second_thoughts = "First impression: rating 2. On closer look the logo matches.\nFinal rating: 4"
    assert P.parse_rating(second_thoughts).value.rating == 4
    # an echoed scale is not a rating
    echoed = "Rate this pair. 0 indicates they are definitely not the same object.\nRating: 1"
    assert P.parse_rating(echoed).value.rating == 1


@pytest.mark.parametrize("answer, reason", [
    ("They look alike.", "unparsable_rating: no rating found"),
    ("Rating: 7", "unparsable_rating: rating 7 outside 0-5"),
    ("Rating: 4.5", "unparsable_rating: non-integer rating 4.5"),
    ("", "unparsable_rating: empty answer"),
])
def test_parse_rating_rejects(answer, reason):
    assert P.parse_rating(answer).reason == reason


# --- IAPO ---------------------------------------------------------------------------------------

def test_iapo_prompts_are_verbatim():
    text = seed_text("003")
    for prompt in (P.planner_prompt(), P.judge_prompt()):
        for line in prompt.splitlines():
            if line.strip():
                assert line in text, line
    assert P.planner_prompt().startswith("You are an object detection system.")
    assert P.judge_prompt().endswith("Quality Comparison Result: {Image A / Image B} is better")
    assert P.judge_prompt("eagle").endswith("Matched Instance: [eagle]")


def test_parse_planner():
    answer = """Sure, here is the list of matched instances:

Matched Instance: [Eagle]
**Matched Instance:** [tree branch]
matched instance: dog
- Matched Instance: "Dog".
2. Matched instance: [ moon ]
Matched Instance: [Instance Category 3]
Matched Instance: [man], [woman]
Matched Instance: []
Matched Instance: (tree branch)
"""
    assert P.parse_planner(answer).value == ["Eagle", "tree branch", "dog", "moon", "man", "woman"]
    assert P.parse_planner(answer, max_instances=3).value == ["Eagle", "tree branch", "dog"]
    assert P.parse_planner("Matched Instance: [Eagle]").value == ["Eagle"]  # the paper's example


@pytest.mark.parametrize("answer", ["", None, "There are no matching instances in these images.",
                                    "Matched Instance: [Instance Category 1]\nMatched Instance: []"])
def test_parse_planner_rejects(answer):
    res = P.parse_planner(answer)
    assert res.value is None and res.code == "no_matched_instances"


@pytest.mark.parametrize("answer, winner", [
    ("Quality Comparison Result: Image B is better", "B"),  # the paper's example
    ("Image A is better.", "A"),
    ("I think image b is better", "B"),
    ("**Quality Comparison Result:** Image A is better than Image B.", "A"),
    ("Quality Comparison Result: {Image A / Image B} is better\nImage B is better", "B"),
    ("Quality Comparison Result: Image A", "A"),
    ("B", "B"),
    ("Image A is not better; Image B is better.", "B"),
    ("Image B is better.\nQuality Comparison Result: Image B is better", "B"),
])
def test_parse_judge(answer, winner):
    assert P.parse_judge(answer) == (winner, None)


@pytest.mark.parametrize("answer, code", [
    ("Image A is better in structure, but Image B is better in aesthetics.", "ambiguous_judge"),
    ("Both images are equally good.", "unparsable_judge"),
    ("Neither image is better.", "unparsable_judge"),
    ("", "unparsable_judge"),
])
def test_parse_judge_rejects(answer, code):
    res = P.parse_judge(answer)
    assert res.value is None and res.code == code


# --- MultiID captions ---------------------------------------------------------------------------

def test_caption_prompts_are_verbatim():
    text = seed_text("002")
    assert len(P.CAPTION_PROMPTS) == 6
    assert f"System Prompt: {P.CAPTION_SYSTEM_PROMPT}" in text
    for i, prompt in enumerate(P.CAPTION_PROMPTS, start=1):
        head, *rules = prompt.splitlines()
        assert f"Prompt {i}: {head}" in text
        assert len(rules) == 4 and "77 words" in rules[2] and "'This image shows'" in rules[3]
        start = text.index(f"Prompt {i}: ")
        for rule in rules:
            assert rule in text[start:start + 800], (i, rule)


def test_caption_prompt_choice_is_stable():
    picks = [P.caption_prompt_index(f"key{i}") for i in range(600)]
    assert picks == [P.caption_prompt_index(f"key{i}") for i in range(600)]
    assert set(picks) == set(range(6)) and min(picks.count(i) for i in range(6)) > 60
    assert [P.caption_prompt_index(f"key{i}", seed=1) for i in range(600)] != picks
    i, system, user = P.caption_prompt("abc")
    assert system == P.CAPTION_SYSTEM_PROMPT and user == P.CAPTION_PROMPTS[i]


@pytest.mark.parametrize("answer, caption", [
    ("Sure! Here is the caption: This image shows two women in red dresses laughing.",
     "This image shows two women in red dresses laughing."),
    ('Here is the caption:\n\n"This image shows a man in a navy suit shaking hands."\n\nI hope this helps!',
     "This image shows a man in a navy suit shaking hands."),
    ("**Caption:** “This image shows a woman with pearl earrings, seated.”",
     "This image shows a woman with pearl earrings, seated."),
    ("This image shows a man in a grey hoodie\nholding a guitar.",
     "This image shows a man in a grey hoodie holding a guitar."),
    ("Certainly. This image shows two men in tuxedos.", "This image shows two men in tuxedos."),
])
def test_parse_caption(answer, caption):
    assert P.parse_caption(answer, start_at=P.CAPTION_PREFIX, max_words=P.CAPTION_MAX_WORDS).value == caption


def test_parse_caption_rejects():
    assert P.parse_caption("").code == "empty_caption"
    assert P.parse_caption('""').code == "empty_caption"
    assert P.parse_caption("Sure! Here is the caption:").code == "empty_caption"
    assert P.parse_caption("I'm sorry, but I can't help with identifying people.").code == "refusal"
    long = "This image shows " + "a " * 80
    assert P.parse_caption(long, max_words=77).code == "caption_too_long"
    assert P.parse_caption(long).ok


def test_caption_drops_word_count_and_planner_splits_lists():
    assert P.parse_caption("This image shows a man in a grey hoodie.\n(9 words)").value == (
        "This image shows a man in a grey hoodie.")
    assert P.parse_caption("This image shows a man.\nWord count: 5").value == "This image shows a man."
    assert P.parse_planner("Matched Instance: dog, cat; Dog").value == ["dog", "cat"]


def test_rubric_markdown_table_and_code_fence():
    table = "| # | Aspect | Answer |\n|---|---|---|\n" + "\n".join(
        f"| {q.number} | {q.aspect} | {'No' if q.number == 4 else 'Yes'} |" for q in R.OBJECT.questions)
    r = R.parse_rubric(f"Here is the table:\n```markdown\n{table}\n```", "object").value
    assert r.score == 9 and r.inconsistent == (4,)


def test_more_answer_shapes():
    spaced = "\n".join(f"{i} {'No' if i == 10 else 'Yes'}" for i in range(1, 11))
    assert R.parse_rubric(spaced, "object").value.inconsistent == (10,)
    letters = "\n".join(f"{i}. {'n' if i == 4 else 'y'}" for i in range(1, 11))
    assert R.parse_rubric(letters, "object").value.inconsistent == (4,)
    assert P.parse_judge("Result: Image B") == ("B", None)
    assert P.parse_judge("The better one is Image A.") == ("A", None)
    assert P.parse_judge("Image A is not better than Image B.").code == "unparsable_judge"
    assert P.parse_attributes("The key visual attributes are: black leather, wood shell, chrome base.").value == [
        "black leather", "wood shell", "chrome base"]


def test_missing_seeds_fail_in_ci_and_skip_elsewhere(monkeypatch, tmp_path):
    monkeypatch.setitem(globals(), "SEEDS", tmp_path / "absent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        seed_text("000")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        seed_text("000")


def test_modules_are_pure():
    import subprocess
    import sys

    code = ("import sys, stages.rubric, stages.prompts; "
            "print(sorted(m for m in ('ray', 'torch', 'pyarrow', 'numpy', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_rubric_ignores_unnumbered_chatter():
    noisy = lines_of(9).replace("3. Yes", "3. Yes\nNote: no accessories are visible in either image.")
    assert R.parse_rubric(noisy, "object").value.score == 9
    qa = "\n".join(f"{q.number}. {q.aspect}\nAnswer: {'No' if q.number == 5 else 'Yes'}" for q in R.OBJECT.questions)
    assert R.parse_rubric(qa, "object").value.inconsistent == (5,)
    bare = "Note: no hidden parts.\n" + "\n".join(["Yes"] * 10)
    assert R.parse_rubric(bare, "object").value.score == 10
