"""The FocusDPO identity-consistency rubrics (seed 000, app. B.3 and Fig. 13): ten yes/no questions
per semantic category, the prompt that asks a VLM all ten, the parser of its answer, and the score
gates of the consensus rule (B.3.1: positive >= 9, negative <= 6). Pure text; parsers follow the
`Parsed(value, reason)` convention documented in stages/prompts.py.

Polarity. Fig. 13 mixes polarities: most questions ask whether an aspect is the same ("Yes" =
consistent) but some ask whether it differs ("Are the styles and patterns of the garments
different?"). B.3 scores "based on affirmative classifications", so every question is kept here in
two forms: the paper's `original` wording, verbatim, and a `normalised` wording for which "Yes" means
consistent (`flipped` marks the questions that were reworded). The prompt asks the normalised
questions by default, and the score is the number of consistent answers out of 10.

Why normalised by default: the figure's own clauses say the excused case must "return "Yes"" even
on the flipped questions (human 3: "Do the number of hair accessories differ? If the difference in
quantity is due to occlusion ..., return "Yes""; animal/object 10: "Are there significant
differences ...? Minor pose variations ... should return "Yes""). Read literally, "Yes" would then
mean both "differs" and "excused". In the normalised wording the clauses are kept word for word and
agree with the question. `wording="original"` asks the paper's text verbatim and flips the answers
of the flipped questions; on those three clauses it inherits the paper's ambiguity, which the
parser resolves only where the answer itself mentions occlusion (see below).

Not visible. The paper's rule, per question: "If obscured or not visible, return "Yes"" (human 5-7,
animal 5, 6, 8, object 5, 6, 8), "If partially obscured, return "Yes"" (animal 4, object 4) and the
occlusion clause of human 3. So an answer that says the aspect is not visible / obscured / occluded
(whether it says Yes, No or only "Not visible") counts as consistent on exactly those questions.
On every other question the paper grants no such exemption, and a "not visible" answer counts as
not consistent: a positive pair needs nine confirmed matches, not nine unknowns. Those question
numbers are reported in `RubricResult.not_visible` either way.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from stages.prompts import Parsed, answer_lines, fail, numbered, ok

N_QUESTIONS = 10


@dataclass(frozen=True)
class RubricQuestion:
    number: int  # 1-10, as in Fig. 13
    aspect: str  # the bold label of Fig. 13, verbatim
    original: str  # the question as Fig. 13 prints it, verbatim
    normalised: str  # reworded so that "Yes" means consistent (== original when not flipped)
    flipped: bool  # the original asks about a difference: its "No" is the consistent answer
    not_visible_is_consistent: bool  # the paper says to answer "Yes" when the aspect is obscured
    # the counting question (1) of a multi-subject sample, with {others}: see COUNTING
    per_subject: str | None = None

    def text(self, wording: str = "normalised") -> str:
        return self.original if wording == "original" else self.normalised


@dataclass(frozen=True)
class Rubric:
    name: str  # human | animal | object
    title: str  # Fig. 13 heading, verbatim
    questions: tuple[RubricQuestion, ...]


def _q(number, aspect, original, normalised=None, not_visible=False, per_subject=None) -> RubricQuestion:
    return RubricQuestion(number, aspect, original, normalised or original, normalised is not None, not_visible,
                          per_subject)


_APART = "Apart from the other subjects the prompt names ({others}), does each image contain exactly one "


_NV = 'If obscured or not visible, return "Yes".'
_PARTIAL = 'If partially obscured, return "Yes".'

HUMAN = Rubric("human", "Human Identity Consistency Evaluation Criteria", (
    _q(1, "Single Subject", "Does each image contain exactly one human subject (no crowds/obstructions)?",
       per_subject=_APART + "human subject (no duplicates of this person, no crowds/obstructions)?"),
    _q(2, "Clothing - Critical Aspects", "Are the styles and patterns of the garments different?",
       "Are the styles and patterns of the garments the same?"),
    _q(3, "Hair Accessories - Critical Aspects",
       'Do the number of hair accessories differ? If the difference in quantity is due to occlusion caused by '
       'different character movements, return "Yes".',
       'Is the number of hair accessories the same? If the difference in quantity is due to occlusion caused by '
       'different character movements, return "Yes".', not_visible=True),
    _q(4, "Hairstyle, Color", "Are the hairstyle and hair color identical in both images?"),
    _q(5, "Shoes and Socks", "Are the style and color of shoes, as well as the color and length of socks, "
       f"identical? {_NV}", not_visible=True),
    _q(6, "Iris/Pupils", f"Are the pupil colors in both images similar? {_NV}", not_visible=True),
    _q(7, "Facial Features", "Are the features of eyes, nose, and mouth basically the same (ignore the influence "
       f"of facial expression)? {_NV}", not_visible=True),
    _q(8, "Clothing", "Are there differences in the garment details including length, cuff style, collar style, "
       "and decorative elements such as buttons?",
       "Are the garment details the same, including length, cuff style, collar style, and decorative elements "
       "such as buttons?"),
    _q(9, "Hair Accessories", "Are the hair characteristics consistent between both images, including hair "
       "length, hair accessory size, position, and style?"),
    _q(10, "Additional Accessories - Critical Aspects", "Do the presence or absence of accessories differ? Items "
       "held in hands (such as swords, knives, and other props) are not within the scope of evaluation.",
       "Is the presence or absence of accessories the same? Items held in hands (such as swords, knives, and "
       "other props) are not within the scope of evaluation."),
))

ANIMAL = Rubric("animal", "Animal Identity Consistency Evaluation Criteria", (
    _q(1, "Single Subject", "Does each image contain exactly one animal subject (no multiple animals/obstructions)?",
       per_subject=_APART + "animal subject (no duplicates of this animal, no further animals/obstructions)?"),
    _q(2, "Species and Breed", "Are the species and breed characteristics identical in both images?"),
    _q(3, "Fur/Coat Pattern", "Are the fur patterns, markings, and colorations consistent between both images?"),
    _q(4, "Body Proportions", "Are the body size, limb proportions, and overall physical structure similar? "
       f"{_PARTIAL}", not_visible=True),
    _q(5, "Facial Features", "Are the eye shape, nose/snout characteristics, and ear structure basically the "
       f"same? {_NV}", not_visible=True),
    _q(6, "Eye Color", f"Are the eye colors similar in both images? {_NV}", not_visible=True),
    _q(7, "Distinctive Markings", "Are unique identifying marks, spots, stripes, or patches consistent between "
       "images?"),
    _q(8, "Tail Characteristics", f"Are the tail length, shape, and fur texture identical? {_NV}",
       not_visible=True),
    _q(9, "Accessories - Critical Aspects", "Do the presence or absence of collars, tags, or other worn "
       "accessories differ?",
       "Is the presence or absence of collars, tags, or other worn accessories the same?"),
    _q(10, "Overall Appearance", "Are there significant differences in the animal's general appearance that "
       'would affect individual identification? Minor pose variations and natural movement should return "Yes".',
       "Is the animal's general appearance free of significant differences that would affect individual "
       'identification? Minor pose variations and natural movement should return "Yes".'),
))

OBJECT = Rubric("object", "Object Identity Consistency Evaluation Criteria", (
    _q(1, "Single Object", "Does each image contain exactly one target object (no multiple objects/obstructions)?",
       per_subject=_APART + "target object (no duplicates of this object, no further objects/obstructions)?"),
    _q(2, "Object Type and Category", "Are the object type and category characteristics identical in both images?"),
    _q(3, "Color and Material", "Are the colors, textures, and material properties consistent between both "
       "images?"),
    _q(4, "Size and Proportions", "Are the object dimensions, scale, and proportional relationships similar? "
       f"{_PARTIAL}", not_visible=True),
    _q(5, "Shape and Structure", "Are the overall form, geometric properties, and structural elements basically "
       f"the same? {_NV}", not_visible=True),
    _q(6, "Surface Details", "Are surface patterns, textures, and finish characteristics similar in both images? "
       f"{_NV}", not_visible=True),
    _q(7, "Distinctive Features", "Are unique identifying elements, markings, labels, or design details "
       "consistent between images?"),
    _q(8, "Component Parts", f"Are the visible components, attachments, and sub-elements identical? {_NV}",
       not_visible=True),
    _q(9, "Functional Elements - Critical Aspects", "Do the presence or absence of buttons, handles, switches, "
       "or other functional components differ?",
       "Is the presence or absence of buttons, handles, switches, or other functional components the same?"),
    _q(10, "Overall Appearance", "Are there significant differences in the object's general appearance that "
       'would affect individual identification? Minor angle variations and lighting changes should return "Yes".',
       "Is the object's general appearance free of significant differences that would affect individual "
       'identification? Minor angle variations and lighting changes should return "Yes".'),
))

RUBRICS: dict[str, Rubric] = {r.name: r for r in (HUMAN, ANIMAL, OBJECT)}

# App. B.1: "objects, animals, and humans (including real-person and anime styles)"; Fig. 13 has one
# human rubric, so both human styles use it.
CATEGORY_RUBRIC: dict[str, str] = {
    "object": "object", "animal": "animal", "human": "human", "human-real": "human", "human-anime": "human",
}

WORDINGS = ("normalised", "original")


def rubric_for(category: str) -> Rubric:
    """The Fig. 13 rubric of a DIP category (object / animal / human-real / human-anime)."""
    name = CATEGORY_RUBRIC.get(str(category).strip().lower())
    if name is None:
        raise ValueError(f"no rubric for category {category!r}; known: {sorted(CATEGORY_RUBRIC)}")
    return RUBRICS[name]


# The paper prints the criteria, not the message it sent to GPT-4o; the framing around the
# questions (first sentence and answer format) is ours.
_INTRO = ("You will be shown two images: the first is the reference image and the second is the generated "
          "image. Compare the {what} in the two images and answer each of the ten questions below with Yes or No.")
_FORMAT = ("Answer with exactly ten lines, one per question, in the form \"1. Yes\" or \"1. No\", and "
           "nothing else.")


# Question 1 of each rubric counts subjects ("exactly one animal subject"). A multi-subject sample
# asks the rubric once per subject, and a correct image of two dogs would answer it No for both:
# there the question counts this subject only, the prompt's others set aside by name (either
# wording; the verbatim one cannot be answered Yes on a correct image).
COUNTING = 1


def counting_question(q: RubricQuestion, wording: str, others: tuple[str, ...] = ()) -> str:
    """Question q's text; question `COUNTING` set to one subject of a sample whose other subjects
    are `others` when there are any."""
    if q.per_subject is None or not others:
        return q.text(wording)
    return q.per_subject.format(others=", ".join(o.strip() for o in others))


def rubric_prompt(category: str, subject: str | None = None, wording: str = "normalised",
                  others: tuple[str, ...] | list[str] = ()) -> str:
    """The prompt asking all ten questions of the category's rubric, numbered, one Yes/No per line;
    `others`: the sample's other subjects (multi-subject prompts), set aside by question 1."""
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {WORDINGS}, not {wording!r}")
    rubric = rubric_for(category)
    noun = {"human": "person", "animal": "animal", "object": "object"}[rubric.name]
    what = f"{noun} ({subject.strip()})" if subject and subject.strip() else noun
    others = tuple(o for o in others if o and o.strip())
    questions = "\n".join(f"{q.number}. **{q.aspect}**: {counting_question(q, wording, others)}"
                           for q in rubric.questions)
    return "\n\n".join([_INTRO.format(what=what), rubric.title, questions, _FORMAT])


@dataclass(frozen=True)
class RubricResult:
    rubric: str  # human | animal | object
    score: int  # consistent answers out of 10
    answers: tuple[str, ...]  # per question: "yes" = consistent, "no" = not (polarity already applied)
    raw: tuple[str, ...]  # per question, what the VLM said: "yes" / "no" / "not_visible"
    not_visible: tuple[int, ...]  # question numbers whose answer says the aspect is not visible
    wording: str = "normalised"

    @property
    def inconsistent(self) -> tuple[int, ...]:
        """Question numbers answered not consistent."""
        return tuple(i + 1 for i, a in enumerate(self.answers) if a == "no")


def is_positive(score: int, min_score: int = 9) -> bool:
    """B.3.1: positive samples score >= 9 of 10."""
    return score >= min_score


def is_negative(score: int, max_score: int = 6) -> bool:
    """B.3.1: negative samples score <= 6 of 10."""
    return score <= max_score


_NV_WORDS = (r"not\s+(?:clearly\s+)?visible|not\s+applicable|n/a|obscured|occluded|hidden|invisible|unclear|"
             r"unknown|cannot\s+(?:be\s+)?(?:determined|determine|seen|see|tell)|can'?t\s+(?:be\s+)?"
             r"(?:determined|determine|seen|see|tell)|unable\s+to\s+(?:determine|see|tell)")
_VERDICT = re.compile(rf"^[\W_]*(yes|no|y|n|{_NV_WORDS})(?![\w/])", re.I)
_SPACE_NUMBERED = re.compile(rf"^\s*(\d{{1,2}})\s+(?=(?:yes|no|{_NV_WORDS})(?![\w/]))", re.I)  # "1 Yes"
# a mention of occlusion anywhere in the answer line, unless negated ("not occluded", "no occlusion")
_NV_MENTION = re.compile(r"(?<!not )(?<!n't )(?<!no )(?<!without )\b(?:not\s+(?:clearly\s+)?visible|obscured|"
                         r"occluded|occlusion|hidden|invisible|out\s+of\s+(?:frame|view)|cannot\s+be\s+seen|"
                         r"can'?t\s+(?:see|tell))\b", re.I)
_ANSWER_LABEL = re.compile(r"^\s*(?:answer|a)\s*[:\-]\s*", re.I)
_CLAUSE = re.compile(r"if\s+(?:partially\s+)?obscured(?:\s+or\s+not\s+visible)?,?\s+return\s+\W*yes\W*", re.I)
_SEPARATORS = re.compile(r"\?|:|\s[-\u2013\u2014]\s|^[-\u2013\u2014]\s")


def _strip_echo(text: str, q: RubricQuestion) -> str:
    """Remove an echoed aspect label or question (either wording) so their words are not read as the
    answer ("no crowds", "not visible")."""
    for echo in (q.original, q.normalised, q.aspect):
        i = text.lower().find(echo.lower())
        if i >= 0:
            text = text[:i] + " : " + text[i + len(echo):]
    if q.per_subject:  # the per-subject form, whatever it named: its "(no duplicates ...)" is not an answer
        head, tail = q.per_subject.split("{others}")
        text = re.sub(re.escape(head) + ".*?" + re.escape(tail), " : ", text, flags=re.I)
    return _CLAUSE.sub(" ", text)


def _verdict(text: str) -> str | None:
    """yes / no / not_visible from the start of the answer or of any part after '?', ':' or ' - '."""
    parts = [text] + [text[m.end():] for m in _SEPARATORS.finditer(text)]
    for part in parts:
        m = _VERDICT.match(part)
        if m:
            word = m.group(1).lower()
            word = {"y": "yes", "n": "no"}.get(word, word)
            return word if word in ("yes", "no") else "not_visible"
    return None


def _judge(raw: str, mentions_nv: bool, q: RubricQuestion, wording: str) -> str:
    if (raw == "not_visible" or mentions_nv) and q.not_visible_is_consistent:
        return "yes"  # the paper: "If obscured or not visible, return "Yes"" on this question
    if raw == "not_visible":
        return "no"  # no exemption in the paper for this question: unknown is not a match
    consistent = (raw == "yes") != (q.flipped and wording == "original")
    return "yes" if consistent else "no"


def parse_rubric(answer: str | None, category: str, wording: str = "normalised") -> Parsed[RubricResult]:
    """A VLM answer to rubric_prompt(category, wording=...) -> RubricResult with the score out of 10.

    Numbered lines ("1. Yes", "**1. Yes**", "1) yes, the same.", "Q1: No - the color differs",
    "3. **Hair Accessories**: No") are read by number; without any numbered answer, ten bare
    "Yes"/"No" lines in order. A question may be written on one line and answered on the next.
    Anything but exactly one verdict for each of the ten questions is rejected."""
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {WORDINGS}, not {wording!r}")
    try:
        rubric = rubric_for(category)
    except ValueError:
        return fail("unknown_category", str(category))
    lines = answer_lines(answer)
    if not lines:
        return fail("unparsable_rubric", "empty answer")

    by_number: dict[int, list[tuple[str, bool]]] = {}
    numbered_seen: set[int] = set()
    bare: list[tuple[str, bool]] = []
    pending: int | None = None  # a numbered line without a verdict, waiting for its answer line
    for line in lines:
        m = _SPACE_NUMBERED.match(line)
        n, rest = (int(m.group(1)), line[m.end():]) if m else numbered(line)
        if n is not None:
            numbered_seen.add(n)
            q = rubric.questions[n - 1] if 1 <= n <= N_QUESTIONS else None
            text = _strip_echo(rest, q) if q else rest
            v = _verdict(text)
            pending = None
            if v is None:
                pending = n
                continue
            by_number.setdefault(n, []).append((v, bool(_NV_MENTION.search(text))))
            continue
        # an unnumbered line counts only when it starts with its verdict ("Yes.", "Answer: No - ..."),
        # so "Note: no accessories are visible" or "No problem! Here are ..." stay chatter
        line = _ANSWER_LABEL.sub("", line, count=1)
        m = _VERDICT.match(line)
        if not m or re.match(r"^[\W_]*(?:yes|no)\s+\w", line, re.I):
            continue
        v = _verdict(line)
        entry = (v, bool(_NV_MENTION.search(line)))
        if pending is not None:
            by_number.setdefault(pending, []).append(entry)
            pending = None
        else:
            bare.append(entry)

    if by_number or numbered_seen:
        numbers = set(by_number) | {n for n in numbered_seen if n > N_QUESTIONS}
        if len(numbers) != N_QUESTIONS or numbers != set(range(1, N_QUESTIONS + 1)):
            missing = sorted(set(range(1, N_QUESTIONS + 1)) - numbers)
            detail = f"expected {N_QUESTIONS} answers, got {len(numbers)}"
            if missing and len(numbers) >= N_QUESTIONS:
                detail += f" (none for {', '.join(map(str, missing))})"
            return fail("unparsable_rubric", detail)
        entries = []
        for n in range(1, N_QUESTIONS + 1):
            verdicts = {v for v, _ in by_number[n]}
            if len(verdicts) > 1:
                return fail("unparsable_rubric", f"conflicting answers to question {n}")
            entries.append((verdicts.pop(), any(nv for _, nv in by_number[n])))
    else:
        if len(bare) != N_QUESTIONS:
            return fail("unparsable_rubric", f"expected {N_QUESTIONS} answers, got {len(bare)}")
        entries = bare

    raw = tuple(v for v, _ in entries)
    answers = tuple(_judge(v, nv, q, wording) for (v, nv), q in zip(entries, rubric.questions))
    not_visible = tuple(q.number for (v, nv), q in zip(entries, rubric.questions) if v == "not_visible" or nv)
    return ok(RubricResult(rubric.name, sum(a == "yes" for a in answers), answers, raw, not_visible, wording))


__all__ = ["ANIMAL", "CATEGORY_RUBRIC", "COUNTING", "HUMAN", "N_QUESTIONS", "OBJECT", "RUBRICS", "Rubric", "RubricQuestion",
           "RubricResult", "counting_question", "is_negative", "is_positive", "parse_rubric", "rubric_for",
           "rubric_prompt"]
