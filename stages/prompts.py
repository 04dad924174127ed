"""Prompt templates and answer parsers for every VLM use except the FocusDPO rubric (stages/rubric.py):
region captions (DIP), attribute extraction and the 0-5 identity rating (UPER), planner and judge
(IAPO), and the six captioning prompts (MultiID). Pure text in, text out: no model, no Ray, no torch.

The parser convention, shared with stages/rubric.py
---------------------------------------------------
Every parser returns a `Parsed(value, reason)` named tuple and never raises on an answer:

    parsed = parse_judge(answer)
    if parsed.ok:                       # reason is None, value holds the result
        winner = parsed.value
    value, reason = parsed              # or unpack it
    winner = parsed.unwrap()            # inside a stage: raises runtime.rows.Reject(code, detail)

`reason` is a short string "<code>: <detail>", e.g. "unparsable_rubric: expected 10 answers, got 7".
The code (before the first ": ") is what reject tables group by; the detail is for a human. Codes:
unparsable_rubric, unknown_category, unparsable_attributes, unparsable_rating,
no_matched_instances, unparsable_judge, ambiguous_judge, empty_caption, refusal, caption_too_long.

Parsers tolerate case, markdown (bold, headings, bullets, code fences), numbering ("1.", "1)",
"Q1:"), quotes, chatty preambles and sign-offs, and blank lines.

Where a paper prints the prompt, the text here is the paper's, verbatim (tests check it against the
seed files). Where it does not, the prompt is ours and says so.
"""
from __future__ import annotations

import hashlib
import re
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")


class Parsed(NamedTuple, Generic[T]):
    """A parser's result: `value` when `reason` is None, else `value` is None and `reason` says why."""

    value: T | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def code(self) -> str | None:
        """The reject code: the part of `reason` before the first ': '."""
        return None if self.reason is None else self.reason.split(": ", 1)[0]

    def unwrap(self) -> T:
        """The value, or raise runtime.rows.Reject(code, detail) so run_rows makes a reject row."""
        if self.reason is None:
            return self.value
        from runtime.rows import Reject  # lazy: this module stays importable on its own

        code, _, detail = self.reason.partition(": ")
        raise Reject(code, detail)


def ok(value: T) -> Parsed[T]:
    return Parsed(value, None)


def fail(code: str, detail: str = "") -> Parsed:
    return Parsed(None, f"{code}: {detail}" if detail else code)


# --- text clean-up shared by the parsers ---------------------------------------------------------

_FENCE = re.compile(r"^\s*```[\w-]*\s*$")
_BULLET = re.compile(r"^\s*(?:[-*+\u2022\u25cf\u25aa>]\s*)+")
# "1." "1)" "(1)" "1:" "1 - " "Q1" "Q1:" "Question 1 -"; not "2-column" or "1.5 litre"
_NUMBER = re.compile(
    r"^\s*(?:\(\s*(\d{1,2})\s*\)"
    r"|q(?:uestion)?\s*(\d{1,2})\s*[.):\-\u2013\u2014]?"
    r"|(\d{1,2})\s*(?:[.):](?!\d)|\s+[-\u2013\u2014](?=\s)))\s*",
    re.I)
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"


def strip_markdown(line: str) -> str:
    """One line without bold/italic markers, heading hashes and surrounding whitespace."""
    line = re.sub(r"^\s*#{1,6}\s*", "", line)
    line = line.replace("**", "").replace("__", "")
    line = re.sub(r"(?<!\w)\*(?!\s)|(?<!\s)\*(?!\w)", "", line)  # *italic* markers, not "a * b"
    return re.sub(r"\s+", " ", line).strip()


def answer_lines(answer: str | None) -> list[str]:
    """Non-blank lines of an answer with markdown (bold, headings, table pipes) and code fences removed."""
    if not answer:
        return []
    out = []
    for raw in str(answer).replace("\r", "\n").split("\n"):
        if _FENCE.match(raw):
            continue
        if raw.lstrip().startswith("|"):  # a markdown table row: cells become "a : b : c"
            if re.fullmatch(r"[\s|:\-]*", raw):
                continue
            raw = " : ".join(c.strip() for c in raw.strip().strip("|").split("|"))
        line = strip_markdown(raw)
        if line:
            out.append(line)
    return out


def numbered(line: str) -> tuple[int | None, str]:
    """(item number, rest) for "1. ...", "1) ...", "(1) ...", "Q1: ...", "Question 1 - ..."; else (None, line)."""
    m = _NUMBER.match(line)
    if not m:
        return None, line
    return int(next(g for g in m.groups() if g)), line[m.end():].strip()


def split_item(line: str) -> tuple[bool, str]:
    """(is a list item, text without its bullet or number) for one cleaned line."""
    m = _BULLET.match(line)
    if m:
        return True, line[m.end():].strip()
    m = _NUMBER.match(line)
    if m and m.end() < len(line):
        return True, line[m.end():].strip()
    return False, line


def strip_quotes(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


_CHATTER_START = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|absolutely|great|alright|no problem|here(?:'s| is| are)|"
    r"below (?:is|are)|the following|i (?:have|will|would|can|'ll|'ve)|let me|based on"
    r"|after (?:analy|review|compar)\w*)\b",
    re.I)
_CHATTER_END = re.compile(
    r"^(?:let me know|i hope|hope this|feel free|if you (?:need|want|would|have)|is there anything|"
    r"please let me|these (?:attributes|features) (?:define|capture|make))\b"
    r"|^\(?(?:word count\b|\d+ words\b)", re.I)


def _is_chatter(line: str) -> bool:
    return bool(_CHATTER_START.match(line) or _CHATTER_END.match(line))


# --- DIP: region captions (seed 000) ------------------------------------------------------------
# Sec. 4.1: "we utilize GPT-4o to generate fine-grained captions for the segmented areas, providing
# detailed semantic descriptions. These captions are fed into the inpainting model". The paper
# prints no prompt for this, so the wording below is ours. The caption becomes the FLUX Fill prompt
# for the masked region, so it must describe only what the region holds, in words an inpainting
# model can draw, without mentioning the crop, mask or highlight.

REGION_CAPTION_PROMPT = (
    "The image shows one subject, {subject}, cropped from a larger picture. "
    "Describe this subject in fine detail in one paragraph: its kind, colors, materials, textures, "
    "shape, patterns, markings, any text on it, and what it wears or carries. "
    "Describe only the subject itself, not the background, and do not mention the crop, the image "
    "or the picture. Use at most {max_words} words and reply with the description only."
)


def region_caption_prompt(subject: str, max_words: int = 60) -> str:
    """Prompt for a fine-grained caption of one segmented subject region (our wording; see above)."""
    subject = (subject or "").strip() or "the subject"
    return REGION_CAPTION_PROMPT.format(subject=subject, max_words=int(max_words))


def parse_region_caption(answer: str | None, max_words: int | None = None) -> Parsed[str]:
    return parse_caption(answer, max_words=max_words)


# --- UPER: attribute extraction and the 0-5 identity rating (seed 001, sec. 3.2.1, app. B.4) ---------
# Sec. 3.2.1: "the VLM first identifies key visual attributes from the now-cleaned reference image
# (e.g., "Eames Lounge Chair," "black leather," "wood shell"). It then verifies whether these
# essential attributes are accurately present in the corresponding target image." The paper prints
# no prompt for the first turn; ours below quotes its examples. The second turn starts with the
# question and rating scale of Fig. 8, verbatim (with the subject in place of "bookshelves"), then
# asks for the per-attribute check and a final rating line so both can be parsed.

ATTRIBUTE_EXAMPLES = ('"Eames Lounge Chair"', '"black leather"', '"wood shell"')  # sec. 3.2.1

ATTRIBUTES_PROMPT = (
    "This is a reference image of {article} {subject} on a white background. "
    "Identify the key visual attributes that define the identity of this {subject} "
    "(e.g., {examples}): its exact kind or model, colors, materials, shape, parts, patterns, and "
    "any text or logos. List at most {max_attributes} attributes, one per line, each a short "
    "noun phrase, with no other text."
)

RATING_QUESTION = "Are the {subjects} in the two pictures below identical?"  # Fig. 8, "bookshelves"
RATING_SCALE = ("Rate this pair. 0 indicates they are definitely not the same object, "
                "while 5 indicates they are certainly the same object.")  # Fig. 8, verbatim

RATING_CHECK = (
    "The first picture is the reference, the second is the target. For each key attribute of the "
    "reference listed below, check whether it is accurately present in the target, one line per "
    "attribute in the form `<attribute>: Yes` or `<attribute>: No`:\n{attributes}\n"
    "Then give your rating on the last line in the form `Rating: <0-5>`."
)


def plural(noun: str) -> str:
    """English plural of a noun phrase's last word, for the paper's "Are the bookshelves ...?"."""
    words = noun.strip().split()
    if not words:
        return "objects"
    w = words[-1]
    low = w.lower()
    irregular = {"person": "people", "man": "men", "woman": "women", "child": "children",
                 "mouse": "mice", "goose": "geese", "foot": "feet", "tooth": "teeth"}
    if low in irregular:
        p = irregular[low]
    elif low.endswith(("ss", "sh", "ch", "x", "z")):
        p = w + "es"
    elif low.endswith("s"):  # already plural ("boots", "glasses")
        p = w
    elif low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        p = w[:-1] + "ies"
    elif low.endswith("ife"):  # knife, wife; not giraffe
        p = w[:-2] + "ves"
    elif low.endswith("lf") or low.endswith("elf"):
        p = w[:-1] + "ves"
    else:
        p = w + "s"
    return " ".join(words[:-1] + [p])


def attributes_prompt(subject: str = "object", max_attributes: int = 8) -> str:
    """Turn (a): list the key visual attributes of the cleaned reference (our wording, the paper's
    examples)."""
    subject = (subject or "").strip() or "object"
    article = "an" if subject[0].lower() in "aeiou" else "a"
    return ATTRIBUTES_PROMPT.format(article=article, subject=subject, examples=", ".join(ATTRIBUTE_EXAMPLES),
                                    max_attributes=int(max_attributes))


def rating_prompt(subject: str, attributes: list[str] | tuple[str, ...]) -> str:
    """Turn (b): the paper's question and 0-5 scale (Fig. 8), then the attribute check."""
    subjects = plural(subject) if (subject or "").strip() else "objects"
    listed = "\n".join(f"- {a}" for a in attributes) if attributes else "- (none listed)"
    return "\n\n".join([RATING_QUESTION.format(subjects=subjects), RATING_SCALE,
                        RATING_CHECK.format(attributes=listed)])


_LEAD_IN = re.compile(r"^[^:]*\b(?:attributes?|features?|here|these are|they are)\b[^:]*:\s*", re.I)


def parse_attributes(answer: str | None, max_attributes: int | None = None) -> Parsed[list[str]]:
    """Turn (a) answer -> attribute phrases, in order, deduplicated case-insensitively.

    List items (bullets or numbers) are taken when there are any; otherwise every line that is not
    chatter; a single comma- or semicolon-separated line is split."""
    lines = answer_lines(answer)
    items, plain = [], []
    for line in lines:
        is_item, text = split_item(line)
        (items if is_item else plain).append(text)
    if not items:
        plain = [_LEAD_IN.sub("", ln, count=1) for ln in plain]
        plain = [ln for ln in plain if ln and not _is_chatter(ln) and not ln.endswith(":")]
        if len(plain) == 1 and re.search(r"[,;]", plain[0]):
            plain = re.split(r"\s*[;,]\s*(?:and\s+)?", plain[0])
        items = plain
    out, seen = [], set()
    for text in items:
        text = strip_quotes(text.strip().rstrip(".;,").strip())
        text = re.sub(r"^(?:and|or)\s+", "", text, flags=re.I)
        key = text.casefold()
        if not text or key in seen or text.endswith(":"):
            continue
        seen.add(key)
        out.append(text)
    if max_attributes is not None:
        out = out[:max_attributes]
    if not out:
        return fail("unparsable_attributes", "no attributes found")
    return ok(out)


class Rating(NamedTuple):
    rating: int  # 0 = definitely not the same object ... 5 = certainly the same object
    verdicts: list[tuple[str, bool]]  # (attribute, present in the target) in answer order


_RATING_WORD = re.compile(
    r"\b(?:rating|rated|rates|rate|score|scored)\b[^0-9\n]{0,24}?(\d+(?:\.\d+)?)(?!\s*(?:indicates|means))", re.I)
_OUT_OF_5 = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*(?:/\s*5|out of 5)\b", re.I)
_VERDICT_LINE = re.compile(
    r"^(.+?)\s*(?::|\s[-\u2013\u2014]\s)\s*(yes|no|present|absent|missing|not present|matches|match|"
    r"consistent|inconsistent|different|differs|same|\u2713|\u2714|\u2717|\u2718)\b",
    re.I)
_PRESENT = {"yes", "present", "matches", "match", "consistent", "same", "\u2713", "\u2714"}


def parse_rating(answer: str | None) -> Parsed[Rating]:
    """Turn (b) answer -> Rating(rating 0..5, per-attribute verdicts).

    The rating is the last "Rating: N" / "rated as N" (the paper's own example reads "the pair will
    be rates as 0") / "N/5" in the answer, or a bare number on the last line; verdicts are the
    "<attribute>: Yes/No" lines, which are optional (the rating decides)."""
    text = "\n".join(answer_lines(answer))
    if not text:
        return fail("unparsable_rating", "empty answer")
    hits = [(m.start(), m.group(1)) for m in _RATING_WORD.finditer(text)]
    hits += [(m.start(), m.group(1)) for m in _OUT_OF_5.finditer(text)]
    if not hits:
        last = strip_quotes(text.splitlines()[-1]).rstrip(".")
        if re.fullmatch(r"\d+(?:\.\d+)?", last):
            hits = [(0, last)]
    if not hits:
        return fail("unparsable_rating", "no rating found")
    raw = max(hits)[1]
    if "." in raw:
        return fail("unparsable_rating", f"non-integer rating {raw}")
    rating = int(raw)
    if not 0 <= rating <= 5:
        return fail("unparsable_rating", f"rating {rating} outside 0-5")
    verdicts = []
    for line in text.splitlines():
        _, item = split_item(line)
        m = _VERDICT_LINE.match(item)
        if m and not re.match(r"(?:rating|score)\b", m.group(1), re.I):
            verdicts.append((strip_quotes(m.group(1)), m.group(2).lower() in _PRESENT))
    return ok(Rating(rating, verdicts))


# --- IAPO: planner and judge (seed 003, Fig. II), verbatim -------------------------------------

PLANNER_PROMPT = "\n\n".join([
    "You are an object detection system. Your task is as follows:",
    "You will be provided with two images simultaneously. Your goals are:",
    "Detect significant, identical object instances that are present in both images. "
    "(e.g., man, woman, dog, moon, landmark building)",
    "You must follow these instructions:",
    "Instance Matching: Carefully analyze both images to identify prominent and recognizable similar "
    "object instances to the greatest extent possible. The matching should follow these principles:",
    "Priority for Identical Instances: First, seek to identify instances confirmed to be the same entity "
    "(e.g., the same person, the same specific pet, the same landmark building).",
    "Relaxed Similarity Standards: If truly identical instances cannot be found, identify highly similar "
    "object instances, allowing for:",
    "1. Minor variations in viewpoint, pose, or size.\n"
    "2. Similar but not perfectly identical object categories (e.g., generic categories like \"person\", "
    "\"car\", \"building\").",
    "Your output must be a clear list and strictly adhere to the following format:",
    "Matched Instance: [Instance Category 1]",
    "Matched Instance: [Instance Category 2]",
    "Matched Instance: [Instance Category 3]",
])

JUDGE_PROMPT = "\n\n".join([
    "You are an object comparison system. Your task is as follows:",
    "You will be provided with two cropped images simultaneously. Your goals are:",
    "For each instance, evaluate and select the better-performing instance from the two images based "
    "on three dimensions.",
    "Quality Comparison: For each matched instance, evaluate the instance's performance in both images "
    "based on the following three dimensions and select the better one:",
    "1. Anatomical/Structural Correctness: Are the object's proportions and structure correct and natural?\n"
    "2. Naturalness & Artifacts: Does the object exhibit obvious AI-generated artifacts, blurriness, "
    "strange textures, or an unrealistic appearance?\n"
    "3. Aesthetic Quality: Is the object visually appealing? Is the composition, color scheme, and "
    "overall concept harmonious and interesting?",
    "Provide the final selection (Image A or Image B) without any detailed reason analysis.",
    "Your output must be a clear list and strictly adhere to the following format:",
    "Quality Comparison Result: {Image A / Image B} is better",
])


def planner_prompt() -> str:
    """Fig. II planner prompt; the two images are attached by the caller, A first."""
    return PLANNER_PROMPT


def judge_prompt(instance: str | None = None) -> str:
    """Fig. II judge prompt, verbatim; the two crops of one instance are attached, A first. The paper
    names no instance in the prompt; `instance` (ours) appends it in the planner's own format."""
    if instance:
        return f"{JUDGE_PROMPT}\n\nMatched Instance: [{instance}]"
    return JUDGE_PROMPT


_MATCHED = re.compile(r"matched\s+instances?\s*(?:\d+\s*)?[:\uff1a=\-\u2013]\s*(.*)", re.I)
_PLACEHOLDER = re.compile(r"^instance\s+category(?:\s*\d+)?$", re.I)
_EDGE_PUNCT = "[](){}<>" + _QUOTES + ".,;:!?*-_ \t"


def _instance_name(text: str) -> str:
    text = text.strip(_EDGE_PUNCT)
    return re.sub(r"\s+", " ", text)


def parse_planner(answer: str | None, max_instances: int = 8) -> Parsed[list[str]]:
    """Every "Matched Instance: [X]" line -> X, in order, deduplicated case-insensitively (first
    spelling kept), brackets, quotes and edge punctuation stripped, the template's own
    "[Instance Category N]" dropped, at most `max_instances`. A line naming several ("[man], [woman]"
    or "man, woman") gives each. No instance -> no_matched_instances."""
    names, seen = [], set()
    for line in answer_lines(answer):
        _, line = split_item(line)
        m = _MATCHED.search(line)
        if not m:
            continue
        value = m.group(1)
        groups = re.findall(r"\[([^\[\]]*)\]", value) or re.split(r"\s*[,;]\s*", value)
        for raw in groups:
            name = _instance_name(raw)
            key = name.casefold()
            if not name or _PLACEHOLDER.match(name) or key in {"none", "n/a", "no matched instances"}:
                continue
            if key not in seen:
                seen.add(key)
                names.append(name)
    if not names:
        return fail("no_matched_instances", "no 'Matched Instance: [X]' line")
    return ok(names[: max(int(max_instances), 0)] if max_instances is not None else names)


_BETTER = re.compile(
    r"\bimage\s*[\[(]?\s*([ab])\s*[\])]?\s*(?:is|was|looks|seems|performs|does)\s+(?:(?!not\b)\w+\s+)?better\b"
    r"|\bbetter\s+(?:one|image|instance)\s+is\s+image\s*([ab])\b", re.I)
_RESULT = re.compile(r"(?:quality\s+comparison\s+)?result\s*[:\uff1a]\s*(?:image\s*)?[\[(]?\s*([ab])\b", re.I)
_BARE = re.compile(r"^(?:image\s*)?[\[(]?\s*([ab])\s*[\])]?[.!]?$", re.I)


def parse_judge(answer: str | None) -> Parsed[str]:
    """"Image A is better" / "I think image b is better." -> "A" / "B". An answer naming both as better,
    or neither, is rejected; "Image A is better than Image B" names only A."""
    text = "\n".join(answer_lines(answer))
    text = re.sub(r"\{\s*image\s*a\s*/\s*image\s*b\s*\}", " ", text, flags=re.I)  # echoed template
    if not text.strip():
        return fail("unparsable_judge", "empty answer")
    found = {(m.group(1) or m.group(2)).upper() for m in _BETTER.finditer(text)}
    if not found:
        found = {m.group(1).upper() for m in _RESULT.finditer(text)}
    if not found:
        lines = text.splitlines()
        found = {m.group(1).upper() for ln in lines if (m := _BARE.match(strip_quotes(ln)))}
    if len(found) > 1:
        return fail("ambiguous_judge", "both Image A and Image B named better")
    if not found:
        return fail("unparsable_judge", "no 'Image A/B is better'")
    return ok(found.pop())


# --- MultiID: the six captioning prompts (seed 002, app. I.1), verbatim ------------------------------

CAPTION_SYSTEM_PROMPT = ("You are an advanced vision-language model tasked with generating accurate and "
                         "comprehensive captions for images.")
CAPTION_PREFIX = "This image shows"

CAPTION_PROMPTS: tuple[str, ...] = (
    "Please provide a brief description of the image based on these guidelines:\n"
    "1. Describe the clothing, accessories, or jewelry worn by the people in detail.\n"
    "2. Describe the genders, actions, and posture of the individual in detail, focusing on what they are doing.\n"
    "3. The description should be concise, with a maximum of 77 words.\n"
    "4. Start with 'This image shows'",

    "Offer a short description of the image according to these rules:\n"
    "1. Focus on details about clothing, accessories, or jewelry.\n"
    "2. Focus on the gender, activity, and pose, and explain what the people is doing.\n"
    "3. Keep the description within 77 words.\n"
    "4. Begin the description with 'This image shows'",

    "Please describe the image briefly, following these instructions:\n"
    "1. Provide a detailed description of the clothing or jewelry the person may be wearing.\n"
    "2. Provide a detailed description of the two persons' gender, actions, and body position.\n"
    "3. Limit the description to no more than 77 words.\n"
    "4. Begin your description with 'This image shows'",

    "Describe the picture briefly according to these rules:\n"
    "1. Provide a detailed description of the clothing, jewelry, or accessories of the individuals.\n"
    "2. Focus on the two persons' gender, what they are doing, and their posture.\n"
    "3. Keep the description concise, within a limit of 77 words.\n"
    "4. Start your description with 'This image shows'",

    "Provide a short and precise description of the image based on the following guidelines:\n"
    "1. Describe what the person is wearing or any accessories.\n"
    "2. Focus on the gender, activities, and body posture of the person.\n"
    "3. Ensure the description is no longer than 77 words.\n"
    "4. Begin with 'This image shows'",

    "Briefly describe the image according to these instructions:\n"
    "1. Provide a precise description of the clothing, jewelry, or other adornments of the people.\n"
    "2. Focus on the person's gender, what they are doing, and their posture.\n"
    "3. The description should not exceed 77 words.\n"
    "4. Start with the phrase 'This image shows'",
)
CAPTION_MAX_WORDS = 77  # the limit every one of the six prompts states


def caption_prompt_index(key: str, seed: int = 0) -> int:
    """App. I.1: "1 prompt is randomly selected for each image". The draw is a hash of the sample key
    (and the pipeline seed) so a re-run picks the same prompt and keeps the same sample key."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % len(CAPTION_PROMPTS)


def caption_prompt(key: str, seed: int = 0) -> tuple[int, str, str]:
    """(prompt index 0-5, system prompt, user prompt) for one image."""
    i = caption_prompt_index(key, seed)
    return i, CAPTION_SYSTEM_PROMPT, CAPTION_PROMPTS[i]


_REFUSAL = re.compile(r"^(?:i'?m sorry|sorry,|i am sorry|i cannot|i can'?t|i am unable|i'?m unable|"
                      r"as an ai|unfortunately,? i)\b", re.I)
_INLINE_CHATTER = re.compile(
    r"^(?:(?:sure|certainly|of course|okay|ok|absolutely|great|alright)\b[!.,]?\s*)?"
    r"(?:(?:here(?:'s| is)|below is)\b[^:\n]{0,60}:\s*)?", re.I)
_LABEL = re.compile(r"^(?:caption|description|image caption|final caption)\s*[:\-]\s*", re.I)


def parse_caption(answer: str | None, *, max_words: int | None = None,
                  start_at: str | None = None) -> Parsed[str]:
    """A caption without chatter ("Sure! Here is the caption:", "Let me know if ..."), labels
    ("Caption:"), markdown and surrounding quotes, as one line. `start_at` (e.g. CAPTION_PREFIX)
    drops anything before its first occurrence; `max_words` rejects a longer caption."""
    lines = [strip_quotes(ln) for ln in answer_lines(answer)]
    lines = [ln for ln in lines if ln]
    if lines and _REFUSAL.match(lines[0]):
        return fail("refusal", lines[0][:80])
    while lines and (_CHATTER_END.match(lines[-1])):
        lines.pop()
    while len(lines) > 1 and (_is_chatter(lines[0]) or lines[0].endswith(":")) and \
            (lines[0].endswith(":") or len(lines[0].split()) <= 12):
        lines.pop(0)
    if not lines:
        return fail("empty_caption", "nothing left after removing chatter")
    lines[0] = _LABEL.sub("", _INLINE_CHATTER.sub("", lines[0], count=1), count=1)
    text = " ".join(strip_quotes(_LABEL.sub("", ln)) for ln in lines)
    text = re.sub(r"\s+", " ", text).strip()
    if start_at:
        i = text.lower().find(start_at.lower())
        if i > 0:
            text = text[i:]
    text = strip_quotes(text)
    if not re.search(r"\w", text):
        return fail("empty_caption", "no text")
    if max_words is not None and len(text.split()) > max_words:
        return fail("caption_too_long", f"{len(text.split())} words > {max_words}")
    return ok(text)
