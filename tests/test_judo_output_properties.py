"""Properties of the JUDO output contract over generated targets: exact round trip, and every
truncation (what a token limit or a dropped connection leaves) read without an exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from judo_model.runtime.output import COORDINATE_SCALE, ParsedOutput, format_target, parse_output

#: Free text as a model writes it; '<' and '>' would spell contract tags, which targets may not contain.
_TEXT = st.text(st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), max_size=60)
_DEFECT_TYPE = st.one_of(st.none(), st.from_regex(r"[A-Za-z][A-Za-z0-9 _]{0,18}[A-Za-z0-9]", fullmatch=True))


@st.composite
def _box(draw):
    x1 = draw(st.integers(0, COORDINATE_SCALE - 1))
    y1 = draw(st.integers(0, COORDINATE_SCALE - 1))
    return (x1, y1, draw(st.integers(x1 + 1, COORDINATE_SCALE)), draw(st.integers(y1 + 1, COORDINATE_SCALE)))


@st.composite
def targets(draw) -> dict:
    """Keyword arguments of a :func:`format_target` call that follows the contract."""
    defect = draw(st.booleans())
    return dict(
        reasoning=draw(_TEXT),
        defect=defect,
        defect_type=draw(_DEFECT_TYPE) if defect else None,
        boxes=draw(st.lists(_box(), min_size=1, max_size=4)) if defect else [],
        answers=draw(st.lists(_TEXT, max_size=3)),
    )


PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


@PROPERTY_SETTINGS
@given(targets())
def test_valid_outputs_round_trip_through_format_target(target):
    parsed = parse_output(format_target(**target))
    assert parsed.ok, parsed.parse_error
    assert parsed.reasoning == target["reasoning"].strip()
    assert parsed.defect is target["defect"]
    assert parsed.defect_type == target["defect_type"]
    assert parsed.boxes == tuple(target["boxes"])
    assert parsed.answers == tuple(a.strip() for a in target["answers"])
    assert all(parsed.checks.values())


@PROPERTY_SETTINGS
@given(targets(), st.data())
def test_truncated_outputs_parse_without_raising_and_never_invent_answers(target, data):
    text = format_target(**target)
    full = parse_output(text)
    cut = data.draw(st.integers(0, len(text) - 1), label="cut")
    parsed = parse_output(text[:cut])
    assert isinstance(parsed, ParsedOutput)
    assert parsed.ok == (parsed.parse_error is None)
    # only finished answers count, and they are the ones the full output gave, in order
    assert parsed.answers == full.answers[: len(parsed.answers)]
    if parsed.ok:  # a cut between whole answers is a shorter valid output, nothing else
        assert len(parsed.answers) < len(full.answers)
        assert (parsed.reasoning, parsed.defect, parsed.defect_type, parsed.boxes) == (
            full.reasoning, full.defect, full.defect_type, full.boxes)
