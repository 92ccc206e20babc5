"""The output contract: format_target writes it, parse_output reads it, choose_option maps answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from judo_model.runtime.output import (
    STRUCTURE_CHECKS,
    ParsedOutput,
    boxes_to_mask,
    choose_option,
    format_target,
    mask_to_boxes,
    parse_output,
)

DEFECT_TARGET = format_target(
    reasoning="The query shows a dark scratch that the reference lacks.",
    defect=True,
    defect_type="scratch",
    boxes=[[100, 200, 300, 400], [600, 650, 700, 900]],
    answers=["Yes", "Scratch"],
)
NORMAL_TARGET = format_target(reasoning="Identical to the reference.", defect=False, answers=["No"])


def test_format_target_writes_the_documented_layout():
    assert DEFECT_TARGET == (
        "<think>The query shows a dark scratch that the reference lacks.</think>\n"
        "<defect>yes: scratch</defect>\n"
        "<region>[[100, 200, 300, 400], [600, 650, 700, 900]]</region>\n"
        "<answer> Yes</answer>\n"
        "<answer> Scratch</answer>"
    )
    assert NORMAL_TARGET.splitlines()[1:3] == ["<defect>no</defect>", "<region>[]</region>"]


def test_an_answer_is_written_as_the_verdict_writes_its_type():
    """Same characters after '<answer>' as after 'yes:', so a byte-level tokenizer gives the same tokens."""
    target = format_target(reasoning="r", defect=True, defect_type="broken thread", boxes=[[0, 0, 25, 25]],
                           answers=["broken thread"])
    verdict_words = target.split("<defect>yes:")[1].split("</defect>")[0]
    answer_words_written = target.split("<answer>")[1].split("</answer>")[0]
    assert verdict_words == answer_words_written == " broken thread"


def test_parse_reads_back_what_format_target_wrote():
    parsed = parse_output(DEFECT_TARGET)
    assert parsed.ok and parsed.parse_error is None
    assert parsed.reasoning == "The query shows a dark scratch that the reference lacks."
    assert parsed.defect is True and parsed.defect_type == "scratch"
    assert parsed.boxes == ((100, 200, 300, 400), (600, 650, 700, 900))
    assert parsed.answers == ("Yes", "Scratch")
    assert all(parsed.checks[name] for name in STRUCTURE_CHECKS)

    normal = parse_output(NORMAL_TARGET)
    assert normal.ok and normal.defect is False and normal.defect_type is None
    assert normal.boxes == () and normal.answers == ("No",)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(defect=True, boxes=[]), "needs at least one box"),
        (dict(defect=False, boxes=[[0, 0, 10, 10]]), "needs at least one box"),
        (dict(defect=True, boxes=[[0, 0, 1001, 10]]), "range"),
        (dict(defect=True, boxes=[[50, 0, 10, 10]]), "x1 < x2"),
        (dict(defect=False, answers=["<answer>No"]), "contract tags"),
    ],
)
def test_format_target_refuses_targets_that_break_the_contract(kwargs, message):
    with pytest.raises(ValueError, match=message):
        format_target(reasoning="r", **kwargs)


def test_tolerant_spelling_is_still_valid():
    text = "  <THINK>ok</THINK><defect>Yes - crack.</defect><region>[10, 20, 30, 40]</region><answer> Crack </answer>\n"
    parsed = parse_output(text)
    assert parsed.ok
    assert parsed.defect is True and parsed.defect_type == "crack"
    assert parsed.boxes == ((10, 20, 30, 40),)
    assert parsed.answers == ("Crack",)


@pytest.mark.parametrize(
    "text, failed_check, fragment",
    [
        ("<think>a</think><region>[]</region>", "tags", "missing <defect>"),
        ("<think>a</think><think>b</think><defect>no</defect><region>[]</region>", "tags", "appears 2 times"),
        ("<defect>no</defect><think>a</think><region>[]</region>", "order", "tags in order"),
        ("<think>a</think><defect>no</defect><region>[]</region> So the answer is B.", "order", "outside the tags"),
        ("<think>a</think><defect>yes</defect><region>[[1, 2]]</region>", "region", "list of [x1, y1, x2, y2]"),
        ("<think>a</think><defect>yes</defect><region>top left corner</region>", "region", "not a JSON list"),
        ("<think>a</think><defect>yes</defect><region>[[0, 0, 1200, 50]]</region>", "boxes", "0-1000 range"),
        ("<think>a</think><defect>yes</defect><region>[[90, 0, 10, 50]]</region>", "boxes", "x1 < x2"),
        ("<think>a</think><defect>no</defect><region>[[0, 0, 10, 10]]</region>", "consistent", "defect=no"),
        ("<think>a</think><defect>yes: dent</defect><region>[]</region>", "consistent", "defect=yes"),
        ("<think>a</think><defect></defect><region>[]</region>", "consistent", "neither yes nor no"),
    ],
)
def test_malformed_outputs_name_the_failed_check(text, failed_check, fragment):
    parsed = parse_output(text)
    assert not parsed.ok
    assert parsed.checks[failed_check] is False
    assert fragment in parsed.parse_error


def test_loose_boxes_are_read_even_when_the_region_is_not_json():
    parsed = parse_output("<think>a</think><defect>yes</defect><region>box [10, 20, 30, 40] and [50,60,70,80]</region>")
    assert parsed.checks["region"] is False
    assert parsed.boxes == ((10, 20, 30, 40), (50, 60, 70, 80))


@pytest.mark.parametrize("cut", [5, 40, 70, 110, len(DEFECT_TARGET) - 12, len(DEFECT_TARGET) - 3])
def test_truncated_output_reports_truncation_and_keeps_what_was_complete(cut):
    parsed = parse_output(DEFECT_TARGET[:cut])
    assert not parsed.ok
    assert "truncated" in parsed.parse_error
    assert parsed.checks["tags"] is False
    assert len(parsed.answers) < 2  # an unfinished answer is never counted


def test_truncated_last_answer_keeps_earlier_fields():
    parsed = parse_output(DEFECT_TARGET[: DEFECT_TARGET.rindex("Scratch") + 3])
    assert parsed.reasoning.startswith("The query shows")
    assert parsed.boxes == ((100, 200, 300, 400), (600, 650, 700, 900))
    assert parsed.answers == ("Yes",)
    assert "<answer> is not closed" in parsed.parse_error


@pytest.mark.parametrize("value", [None, 42, b"<think>", ["<think>"]])
def test_non_text_is_an_error_not_an_exception(value):
    parsed = parse_output(value)
    assert isinstance(parsed, ParsedOutput) and not parsed.ok


_TAGS = st.sampled_from(
    ["<think>", "</think>", "<defect>", "</defect>", "<region>", "</region>", "<answer>", "</answer>", "[", "]", ","]
)
_FRAGMENTS = st.one_of(
    _TAGS,
    st.text(max_size=12),
    st.integers(-5000, 5000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["yes", "no", "[[1e999, 2, 3, 4]]", "[[", "NaN", "[" * 50]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_FRAGMENTS, max_size=30).map("".join))
def test_parse_output_never_raises_on_tag_soup(text):
    parsed = parse_output(text)
    assert isinstance(parsed, ParsedOutput)
    assert parsed.ok == (parsed.parse_error is None) == all(parsed.checks.values())
    assert all(isinstance(box, tuple) and len(box) == 4 for box in parsed.boxes)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_parse_output_never_raises_on_arbitrary_text(text):
    assert isinstance(parse_output(text), ParsedOutput)


def test_deeply_nested_region_does_not_raise():
    parsed = parse_output("<think>a</think><defect>yes</defect><region>" + "[" * 100_000 + "</region>")
    assert parsed.checks["region"] is False


MMAD_OPTIONS = {"A": "Yes", "B": "No"}
TYPE_OPTIONS = {"A": "Crack", "B": "Scratch on the surface", "C": "Hole", "D": "Color stain"}


@pytest.mark.parametrize(
    "answer, options, letter",
    [
        ("Yes", MMAD_OPTIONS, "A"),
        ("no.", MMAD_OPTIONS, "B"),
        ("scratch on the surface", TYPE_OPTIONS, "B"),
        ("B", TYPE_OPTIONS, "B"),
        ("(C)", TYPE_OPTIONS, "C"),
        ("D. Color stain", TYPE_OPTIONS, "D"),
        ("There is a hole near the rim", TYPE_OPTIONS, "C"),
        ("a stain of a different color", TYPE_OPTIONS, "D"),
        ("scratches", TYPE_OPTIONS, "B"),
        ("", TYPE_OPTIONS, None),
        ("Yes", {}, None),
    ],
)
def test_choose_option_maps_content_to_letter(answer, options, letter):
    assert choose_option(answer, options) == letter


def test_choose_option_prefers_the_longest_fully_stated_option():
    options = {"A": "Crack", "B": "Hairline crack"}
    assert choose_option("a hairline crack on the left", options) == "B"


def test_mask_and_boxes_round_trip():
    mask = np.zeros((200, 300), dtype=bool)
    mask[20:60, 30:90] = True
    mask[150:170, 200:290] = True
    boxes = mask_to_boxes(mask)
    assert sorted(boxes) == [(100, 100, 300, 300), (667, 750, 967, 850)]
    assert np.array_equal(boxes_to_mask(boxes, 200, 300), mask)
    assert mask_to_boxes(np.zeros((10, 10), dtype=bool)) == []
