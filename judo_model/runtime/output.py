"""The JUDO output contract: one writer (:func:`format_target`), one reader (:func:`parse_output`).

Training targets, GRPO rewards, inference and the MMAD answerer all go through this
module, so what the model is taught to write and what is read back cannot drift.

The model writes, in this order::

    <think>short comparison of the query with the normal reference</think>
    <defect>no</defect>                      or  <defect>yes: <defect type></defect>
    <region>[[x1, y1, x2, y2], ...]</region>     boxes in 0-1000 normalized coordinates, [] if normal
    <answer>content</answer>                     one per question, in question order

An answer is *content* (the option text, ``yes``/``no``, a defect type), never a bare
option letter; :func:`choose_option` maps content back to a letter.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

#: Normalized coordinate range of region boxes (Qwen2-VL grounding convention).
COORDINATE_SCALE = 1000
#: Written boxes are rounded outwards to this grid (fewer distinct numbers to learn).
BOX_STEP = 25

Box = tuple[int, int, int, int]

SINGLE_TAGS = ("think", "defect", "region")
ANSWER_TAG = "answer"
ALL_TAGS = (*SINGLE_TAGS, ANSWER_TAG)
ANSWER_OPEN, ANSWER_CLOSE = f"<{ANSWER_TAG}>", f"</{ANSWER_TAG}>"

#: Structure checks, in the order their failures are reported.
STRUCTURE_CHECKS = ("tags", "order", "region", "boxes", "consistent")

CONTRACT_INSTRUCTIONS = (
    "Reply with <think>how the query differs from the reference</think>, "
    "<defect>no</defect> or <defect>yes: defect type</defect>, "
    f"<region>[[x1, y1, x2, y2], ...]</region> (0 to {COORDINATE_SCALE}, [] if normal), "
    "then <answer>the chosen option's text</answer> per question."
)

_TAG_PATTERN = re.compile(r"<(/?)(think|defect|region|answer)>", re.IGNORECASE)
_CUT_TAG_PATTERN = re.compile(r"</?[A-Za-z]{0,6}$")
_QUADRUPLE_PATTERN = re.compile(r"\[\s*" + r"\s*,\s*".join([r"(-?\d+(?:\.\d+)?)"] * 4) + r"\s*\]")
_NEGATIVE_VERDICTS = {"no", "none", "normal", "good", "false", "ok", "defect-free", "no defect"}
_POSITIVE_PREFIX = re.compile(r"^\s*(yes|true|defective|anomalous)\b[\s:,\-–]*", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedOutput:
    """What one model output says; ``parse_error`` is None only if it follows the contract.

    Fields are filled as far as the text allows even when ``parse_error`` is set, so a
    reward can still score the answer of an output whose format is off.
    """

    reasoning: str | None = None
    defect: bool | None = None
    defect_type: str | None = None
    boxes: tuple[Box, ...] = ()
    answers: tuple[str, ...] = ()
    checks: Mapping[str, bool] = field(default_factory=lambda: dict.fromkeys(STRUCTURE_CHECKS, False))
    parse_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.parse_error is None


@dataclass
class _Segment:
    tag: str
    content: str
    closed: bool


def parse_output(text: str) -> ParsedOutput:
    """Read a model output under the contract. Never raises; problems go to ``parse_error``."""
    if not isinstance(text, str):
        return ParsedOutput(parse_error=f"output is {type(text).__name__}, not text")
    cut_tag = _CUT_TAG_PATTERN.search(text)
    if cut_tag:
        text = text[: cut_tag.start()]
    segments, stray, outside = _split_segments(text)
    problems: dict[str, str] = {}

    by_tag = {tag: [s for s in segments if s.tag == tag] for tag in ALL_TAGS}
    tag_problems = [f"missing <{t}>" for t in SINGLE_TAGS if not by_tag[t]]
    tag_problems += [f"<{t}> appears {len(by_tag[t])} times" for t in SINGLE_TAGS if len(by_tag[t]) > 1]
    tag_problems += [f"<{s.tag}> is not closed (truncated?)" for s in segments if not s.closed]
    tag_problems += stray
    if cut_tag:
        tag_problems.append(f"output ends inside a tag {cut_tag.group(0)!r} (truncated?)")
    if tag_problems:
        problems["tags"] = "; ".join(dict.fromkeys(tag_problems))

    order = [s.tag for s in segments]
    expected_order = sorted(order, key=ALL_TAGS.index)
    if order != expected_order:
        problems["order"] = f"tags in order {order}, expected think, defect, region, answer"
    elif outside:
        problems["order"] = f"text outside the tags: {outside[:40]!r}"

    region = by_tag["region"][0] if by_tag["region"] else None
    boxes, region_problem = _parse_region(region.content if region else None)
    if region_problem:
        problems["region"] = region_problem
    box_problem = _box_problem(boxes) if not region_problem else "no parseable boxes"
    if box_problem:
        problems["boxes"] = box_problem

    defect_segment = by_tag["defect"][0] if by_tag["defect"] else None
    defect, defect_type = _parse_defect(defect_segment.content if defect_segment else "")
    if defect is None:
        problems["consistent"] = "defect verdict is neither yes nor no"
    elif defect != bool(boxes) and not region_problem:
        problems["consistent"] = (
            "defect=yes but the region is empty" if defect else "defect=no but the region has boxes"
        )
    elif region_problem:
        problems["consistent"] = "region unreadable, cannot check it against the verdict"

    think = by_tag["think"][0].content.strip() if by_tag["think"] else None
    answers = tuple(s.content.strip() for s in by_tag[ANSWER_TAG] if s.closed)
    checks = {name: name not in problems for name in STRUCTURE_CHECKS}
    error = "; ".join(problems[name] for name in STRUCTURE_CHECKS if name in problems) or None
    return ParsedOutput(
        reasoning=think,
        defect=defect,
        defect_type=defect_type,
        boxes=tuple(boxes),
        answers=answers,
        checks=checks,
        parse_error=error,
    )


def _split_segments(text: str) -> tuple[list[_Segment], list[str], str]:
    """Pair opening and closing tags; an unclosed tag runs to the next opening tag or the end.

    Returns the segments, the stray closing tags, and the text found outside all tags.
    """
    segments: list[_Segment] = []
    stray: list[str] = []
    outside: list[str] = []
    cursor = 0
    current: tuple[str, int] | None = None  # open tag, where its content starts
    for match in _TAG_PATTERN.finditer(text):
        closing, tag = match.group(1) == "/", match.group(2).lower()
        if not closing:
            if current is None:
                outside.append(text[cursor : match.start()])
            else:
                segments.append(_Segment(current[0], text[current[1] : match.start()], False))
            current = (tag, match.end())
        elif current is not None and current[0] == tag:
            segments.append(_Segment(tag, text[current[1] : match.start()], True))
            current = None
            cursor = match.end()
        else:
            stray.append(f"stray </{tag}>")
            if current is None:
                outside.append(text[cursor : match.start()])
                cursor = match.end()
    if current is None:
        outside.append(text[cursor:])
    else:
        segments.append(_Segment(current[0], text[current[1] :], False))
    return segments, stray, "".join(outside).strip()


def _parse_region(content: str | None) -> tuple[list[Box], str | None]:
    """Boxes from the region text. Strict JSON passes; loose ``[a, b, c, d]`` text is still read."""
    if content is None:
        return [], "no <region>"
    stripped = content.strip()
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError):
        loose = [_to_box(m.groups()) for m in _QUADRUPLE_PATTERN.finditer(stripped)]
        return [b for b in loose if b is not None], f"region is not a JSON list: {stripped[:40]!r}"
    if isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(item, list) and len(item) == 4 and all(_is_number(v) for v in item) for item in value
    ):
        return [], f"region must be a list of [x1, y1, x2, y2] boxes: {stripped[:40]!r}"
    boxes = [_to_box(item) for item in value]
    if any(b is None for b in boxes):
        return [], "region has a non-finite coordinate"
    return boxes, None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _to_box(values: Sequence[object]) -> Box | None:
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(n) for n in numbers) or any(abs(n) > 1e9 for n in numbers):
        return None
    x1, y1, x2, y2 = (int(round(n)) for n in numbers)
    return (x1, y1, x2, y2)


def valid_boxes(boxes: Sequence[Box]) -> list[Box]:
    """The boxes that follow the contract (inside 0-1000, x1 < x2, y1 < y2); the rest are dropped."""
    return [box for box in boxes if _box_problem([box]) is None]


def _box_problem(boxes: Sequence[Box]) -> str | None:
    for box in boxes:
        x1, y1, x2, y2 = box
        if not all(0 <= v <= COORDINATE_SCALE for v in box):
            return f"box {list(box)} leaves the 0-{COORDINATE_SCALE} range"
        if x1 >= x2 or y1 >= y2:
            return f"box {list(box)} needs x1 < x2 and y1 < y2"
    return None


def _parse_defect(content: str) -> tuple[bool | None, str | None]:
    verdict = content.strip()
    if not verdict:
        return None, None
    if verdict.lower().rstrip(".") in _NEGATIVE_VERDICTS:
        return False, None
    positive = _POSITIVE_PREFIX.match(verdict)
    if positive:
        remainder = verdict[positive.end() :].strip().rstrip(".")
        return True, remainder or None
    return True, verdict.rstrip(".")


def format_target(
    *,
    reasoning: str,
    defect: bool,
    defect_type: str | None = None,
    boxes: Sequence[Sequence[int]] = (),
    answers: Sequence[str] = (),
) -> str:
    """Write a training target in the contract; raises ValueError on a target that breaks it."""
    boxes = [tuple(int(v) for v in box) for box in boxes]
    if defect != bool(boxes):
        raise ValueError("a defective target needs at least one box and a normal one none")
    problem = _box_problem(boxes)
    if problem:
        raise ValueError(problem)
    for text in (reasoning, defect_type or "", *answers):
        if _TAG_PATTERN.search(text):
            raise ValueError(f"target text may not contain contract tags: {text[:40]!r}")
    verdict = ("yes: " + defect_type if defect_type else "yes") if defect else "no"
    region = json.dumps([list(b) for b in boxes], separators=(", ", ": "))
    lines = [
        f"<think>{reasoning.strip()}</think>",
        f"<defect>{verdict}</defect>",
        f"<region>{region}</region>",
        *(f"{ANSWER_OPEN}{answer_words(answer)}{ANSWER_CLOSE}" for answer in answers),
    ]
    return "\n".join(lines)


def answer_words(text: str) -> str:
    """An answer's content as written after ``<answer>``: the text with one leading space.

    Byte-level BPE marks a word's leading space, so " hole" is a different token from "hole".
    The options (``A: hole``), the evidence note (``defect: hole``) and the verdict
    (``yes: hole``) all write the word after a space; written the same way, the answer
    repeats their very tokens, and copying the verdict's type into it is a plain token copy.
    """
    return " " + text.strip()


def normalize_text(text: str) -> str:
    """Lowercase, punctuation to spaces, single spaces: the form answers are compared in."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Z])\s*[\).:]\s+")


def choose_option(answer_text: str, options: Mapping[str, str]) -> str | None:
    """The letter of the option whose text ``answer_text`` states; None if nothing matches.

    Tries, in order: normalized exact match; a bare letter or ``"B. text"`` prefix
    (tolerated though the contract asks for content); the option whose words all appear
    in the answer (the longest such option); highest word overlap, ties broken by
    character similarity.
    """
    if not options or not isinstance(answer_text, str) or not answer_text.strip():
        return None
    normalized_options = {letter: normalize_text(text) for letter, text in options.items()}
    answer = normalize_text(answer_text)
    for letter, text in normalized_options.items():
        if text == answer:
            return letter
    bare = answer_text.strip().rstrip(".").strip("()")
    if bare in options:
        return bare
    prefix = _LETTER_PREFIX.match(answer_text)
    if prefix and prefix.group(1) in options:
        return prefix.group(1)

    answer_words = set(answer.split())
    contained = [
        (len(text.split()), letter)
        for letter, text in normalized_options.items()
        if text and set(text.split()) <= answer_words
    ]
    if contained:
        return max(contained)[1]

    def similarity(letter: str) -> tuple[float, float]:
        words = set(normalized_options[letter].split())
        union = words | answer_words
        overlap = len(words & answer_words) / len(union) if union else 0.0
        return overlap, difflib.SequenceMatcher(None, normalized_options[letter], answer).ratio()

    best = max(options, key=similarity)
    return best if any(similarity(best)) else None


def boxes_to_mask(boxes: Sequence[Sequence[int]], height: int, width: int) -> np.ndarray:
    """Rasterize 0-1000 boxes onto an ``(height, width)`` boolean grid (rounded to pixels)."""
    mask = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        left, right = (int(round(v * width / COORDINATE_SCALE)) for v in (x1, x2))
        top, bottom = (int(round(v * height / COORDINATE_SCALE)) for v in (y1, y2))
        mask[max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)] = True
    return mask


def mask_to_boxes(mask: np.ndarray, min_pixels: int = 1) -> list[Box]:
    """One 0-1000 box per 8-connected defect blob of ``mask`` (blobs under ``min_pixels`` dropped)."""
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    boxes = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None or int((labels[found] == index).sum()) < min_pixels:
            continue
        rows, cols = found
        boxes.append(
            (
                int(round(cols.start * COORDINATE_SCALE / width)),
                int(round(rows.start * COORDINATE_SCALE / height)),
                int(round(cols.stop * COORDINATE_SCALE / width)),
                int(round(rows.stop * COORDINATE_SCALE / height)),
            )
        )
    return boxes


def snap_box(box: Sequence[float]) -> Box:
    """``box`` rounded outwards to the :data:`BOX_STEP` grid, at least one step wide and high."""
    x1, y1, x2, y2 = box

    def down(value: float) -> int:
        return int(math.floor(value / BOX_STEP) * BOX_STEP)

    def up(value: float) -> int:
        return int(min(COORDINATE_SCALE, math.ceil(value / BOX_STEP) * BOX_STEP))

    return down(x1), down(y1), max(up(x2), down(x1) + BOX_STEP), max(up(y2), down(y1) + BOX_STEP)


def largest_boxes(mask: np.ndarray, count: int, min_blob_fraction: float = 0.0) -> list[Box]:
    """Snapped boxes of the ``count`` largest blobs of ``mask`` (small blobs dropped unless none is left)."""
    min_pixels = max(1, int(np.asarray(mask).size * min_blob_fraction))
    boxes = mask_to_boxes(mask, min_pixels=min_pixels) or mask_to_boxes(mask)
    boxes.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
    return [snap_box(b) for b in boxes[:count]]
