"""Expert knowledge about every synthetic category, in one place.

The same facts feed three things: MMAD's ``domain_knowledge.json`` (normal look
and one paragraph per defect), the correct answers of the Defect Description /
Defect Analysis questions, and the Object Structure / Object Details questions.
Texts describe what the renderer in :mod:`judo_model.data.synth` actually draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from judo_model.data.synth import PRODUCTS

DATASET_NAME = "Synthetic"


@dataclass(frozen=True)
class DefectFacts:
    """What one defect type looks like and what it does to the product."""

    title: str
    appearance: str
    consequence: str


@dataclass(frozen=True)
class ObjectQuestion:
    """An Object Structure / Object Details question about a normal property of the product.

    ``attribute`` names a per-image fact reported by the renderer (e.g. ``color``);
    when it is None, ``answer`` is the fixed correct answer. ``choices`` is the pool
    of plausible answers the distractors are drawn from.
    """

    question_type: Literal["Object Structure", "Object Details"]
    question: str
    choices: tuple[str, ...]
    answer: str | None = None
    attribute: str | None = None


@dataclass(frozen=True)
class CategoryFacts:
    """Everything an inspector should know about one product category."""

    name: str
    display_name: str
    normal: str
    defects: dict[str, DefectFacts]
    object_questions: tuple[ObjectQuestion, ...]

    def domain_knowledge(self) -> dict[str, str]:
        """This category's entry of MMAD's ``domain_knowledge.json``."""
        entry = {"good": f" <Normal Characteristics>\n Description: {self.normal}"}
        for defect, facts in self.defects.items():
            entry[defect] = (f" <{facts.title}>\n Description: {facts.appearance} "
                             f"Consequence for the product: {facts.consequence}")
        return entry


def _d(title: str, appearance: str, consequence: str) -> DefectFacts:
    return DefectFacts(title, appearance, consequence)


_COLORS = ("beige", "denim blue", "grey", "dark red", "black", "brown", "tan", "burgundy", "white",
           "sky blue", "terracotta", "sage green", "light oak", "walnut", "pine", "green", "blue")

CATEGORY_FACTS: dict[str, CategoryFacts] = {
    "fabric": CategoryFacts(
        "fabric", "woven fabric",
        "A close-up of plain-weave cloth. Warp and weft threads cross over and under each other in a regular "
        "checker pattern with a fine fibre texture. The colour is uniform; slight rotation of the weave, soft "
        "lighting gradients and sensor noise are normal and not defects.",
        {"hole": _d("Hole", "A small dark opening where threads are torn and the backing shows through, "
                    "surrounded by a frayed lighter rim.",
                    "The cloth is perforated and the tear can grow under tension."),
         "stain": _d("Stain", "An irregular blotch of foreign colour (brown, oily black or dusty grey) soaked "
                     "into the threads.", "The fabric looks soiled and fails visual quality standards."),
         "broken_thread": _d("Broken Thread", "A single bright, loose yarn that curls across the weave "
                             "instead of following the thread pattern.",
                             "Loose yarn snags and unravels, weakening the weave.")},
        (ObjectQuestion("Object Structure", "What pattern do the threads of this fabric form?",
                        ("A plain over-under weave", "A knitted loop pattern", "A random non-woven felt",
                         "Parallel threads without crossings"), answer="A plain over-under weave"),
         ObjectQuestion("Object Details", "What is the main colour of the fabric?", _COLORS[:8], attribute="color"))),
    "wood": CategoryFacts(
        "wood", "wooden board",
        "A flat sawn wooden surface with long growth rings and fibre streaks running in one direction. Ring "
        "spacing, waviness, tone and grain direction vary between boards and are normal.",
        {"crack": _d("Crack", "A thin dark jagged fissure with short branches cutting into the wood.",
                     "The board can split further and loses strength."),
         "hole": _d("Hole", "A small dark round cavity, like a wormhole or a lost knot, with a lighter rim.",
                    "The surface is no longer closed and the hole collects dirt and moisture."),
         "scratch": _d("Scratch", "A thin straight or slightly curved line, lighter or darker than the grain.",
                       "The finish is damaged and the board looks worn."),
         "stain": _d("Stain", "An irregular blotch of liquid or dirt that darkens or discolours the grain.",
                     "The board looks dirty and may need sanding or refinishing.")},
        (ObjectQuestion("Object Structure", "What pattern runs across the surface of the board?",
                        ("Parallel growth rings and grain lines", "A square grid of grout lines",
                         "Concentric machined circles", "A crossing thread pattern"),
                        answer="Parallel growth rings and grain lines"),
         ObjectQuestion("Object Details", "Which wood tone does the board have?", ("light oak", "walnut", "pine",
                        "ebony", "cherry red"), attribute="color"))),
    "brushed_metal": CategoryFacts(
        "brushed_metal", "brushed metal sheet",
        "A flat steel sheet with a brushed finish: fine parallel streaks in one direction and a broad soft sheen. "
        "Streak direction, brightness and reflections vary with lighting and are normal.",
        {"scratch": _d("Scratch", "A thin line crossing the brushing direction that catches or swallows the light.",
                       "The finish is marred and the scratch can start corrosion."),
         "dent": _d("Dent", "A small round deformation where one side is brighter and the other side shadowed.",
                    "The sheet is no longer flat and may not fit during assembly."),
         "rust": _d("Rust", "An irregular orange-brown corrosion patch on the metal surface.",
                    "Corrosion spreads and weakens the sheet.")},
        (ObjectQuestion("Object Structure", "What texture does the surface of the sheet have?",
                        ("Fine parallel brushing streaks", "Woven threads", "Pebbled grain relief", "Square tiles"),
                        answer="Fine parallel brushing streaks"),
         ObjectQuestion("Object Details", "What colour is the metal sheet?", ("silver grey", "gold", "copper red",
                        "matte black"), answer="silver grey"))),
    "tile": CategoryFacts(
        "tile", "ceramic tile wall",
        "Square glazed ceramic tiles of one colour laid in a regular grid and separated by thin grey grout lines. "
        "Slight tone differences between tiles, a small offset of the grid and glaze reflections are normal.",
        {"crack": _d("Crack", "A thin dark jagged fracture line running across one tile.",
                     "The tile can break apart and let water behind it."),
         "chip": _d("Chip", "A piece broken off the corner or edge of a tile, exposing rough pale ceramic body.",
                    "The tile edge is sharp and the glaze no longer seals the body."),
         "color_mismatch": _d("Colour Mismatch", "One whole tile has a clearly different colour from all the "
                              "other tiles in the grid.", "The wall pattern is wrong: a tile from another batch "
                              "was laid, a logical assembly error.")},
        (ObjectQuestion("Object Structure", "How are the tiles arranged?", ("In a regular square grid",
                        "In a herringbone pattern", "In concentric circles", "In a random mosaic"),
                        answer="In a regular square grid"),
         ObjectQuestion("Object Details", "What is the glaze colour of the tiles?", ("white", "sky blue",
                        "terracotta", "sage green", "black"), attribute="color"))),
    "leather": CategoryFacts(
        "leather", "leather hide",
        "A close-up of dyed leather with a fine pebbled grain relief. The grain is irregular by nature; colour "
        "depth and lighting vary slightly and are normal.",
        {"cut": _d("Cut", "A thin straight dark slit in the surface.", "The hide is cut through and unusable "
                   "for that panel."),
         "poke": _d("Poke", "A small dark puncture hole with a slightly raised rim.",
                    "The leather is perforated and weakened locally."),
         "fold": _d("Fold", "A long crease with a bright ridge on one side and a shadow on the other.",
                    "The crease leaves a permanent mark in the finished product."),
         "color": _d("Colour Defect", "A soft-edged patch where the dye is lighter, darker or yellowed.",
                     "The colour is uneven and the panel fails visual inspection.")},
        (ObjectQuestion("Object Structure", "What kind of surface texture does the material have?",
                        ("A fine pebbled grain", "Parallel brushing streaks", "A woven thread pattern",
                         "A smooth glossy glaze"), answer="A fine pebbled grain"),
         ObjectQuestion("Object Details", "What colour is the leather?", ("brown", "black", "tan", "burgundy",
                        "white"), attribute="color"))),
    "bottle": CategoryFacts(
        "bottle", "bottle",
        "A glass bottle seen from above: a smooth, glossy, intact circular rim around the dark opening. The "
        "interior is dark and uniform. Small shifts of position, reflections on the rim and lighting changes "
        "are normal.",
        {"broken_large": _d("Large Breakage", "A large jagged piece broken out of the rim, exposing lighter rough "
                            "glass.", "The bottle cannot be sealed and sharp edges are a safety hazard."),
         "broken_small": _d("Small Breakage", "A small chip on the rim with a rough lighter fracture surface.",
                            "The rim may not seal and the chip can shed glass fragments."),
         "contamination": _d("Contamination", "A pale irregular particle or residue inside the dark opening.",
                             "Foreign matter in the bottle makes the product unsafe to fill.")},
        (ObjectQuestion("Object Structure", "What shape is the rim of the bottle?", ("A closed circular ring",
                        "A square frame", "A hexagon", "An open arc"), answer="A closed circular ring"),
         ObjectQuestion("Object Details", "How does the inside of the bottle opening look?",
                        ("Dark and uniform", "Bright white", "Filled with liquid", "Covered by a cap"),
                        answer="Dark and uniform"))),
    "screw": CategoryFacts(
        "screw", "screw",
        "A steel machine screw lying on a bright table: a round slotted head, a straight threaded shank with "
        "evenly spaced threads and a pointed tip on one straight axis. Position and rotation vary and are normal.",
        {"scratch_head": _d("Scratch on Head", "A thin bright line scratched across the round head of the screw.",
                            "The head finish is damaged and may corrode."),
         "thread_damage": _d("Damaged Thread", "A section of the shank where the thread is flattened or smeared "
                             "and the regular ridges are missing.", "The screw will not turn into the nut "
                             "and may strip the mating thread."),
         "bent_tip": _d("Bent Tip", "The pointed tip is bent away from the axis of the shank.",
                        "The screw cannot be driven straight and may jam.")},
        (ObjectQuestion("Object Structure", "Which parts make up the screw?", ("A slotted head, a threaded shank "
                        "and a pointed tip", "Two threaded ends without a head", "A hexagonal body with a round "
                        "hole", "A smooth pin with a flat cap"),
                        answer="A slotted head, a threaded shank and a pointed tip"),
         ObjectQuestion("Object Details", "What kind of drive does the screw head have?", ("A straight slot",
                        "A cross (Phillips) recess", "A hexagon socket", "No drive"), answer="A straight slot"))),
    "hex_nut": CategoryFacts(
        "hex_nut", "hex nut",
        "A steel hexagon nut seen face-on: six straight sides with sharp corners, a chamfered face and a round "
        "threaded bore in the centre. Rotation, position and reflections vary and are normal.",
        {"crack": _d("Crack", "A thin dark jagged fracture on the flat face of the nut.",
                     "The nut can split when it is tightened."),
         "chipped_corner": _d("Chipped Corner", "One of the six corners is broken off, leaving a rounded gap in "
                              "the outline.", "A wrench cannot grip the nut properly."),
         "rust": _d("Rust", "An orange-brown corrosion spot on the face of the nut.",
                    "Corrosion weakens the nut and can seize the thread.")},
        (ObjectQuestion("Object Structure", "How many sides does the outline of the nut have?", ("6", "4", "5", "8"),
                        attribute="sides"),
         ObjectQuestion("Object Details", "What is in the centre of the nut?", ("A round threaded hole",
                        "A square hole", "A solid cap", "A slot"), answer="A round threaded hole"))),
    "capsule": CategoryFacts(
        "capsule", "pill capsule",
        "A two-piece gelatin capsule on a light background: two coloured halves joined at a seam, a smooth "
        "rounded outline and the code 500 printed on the body. Rotation and position vary slightly and are normal.",
        {"crack": _d("Crack", "A thin dark jagged crack in the capsule shell.",
                     "The shell leaks powder and the dose is compromised."),
         "squeeze": _d("Squeeze", "One side of the capsule is pinched inwards so the outline is no longer "
                       "straight.", "The capsule is deformed and may not fit the blister or dose correctly."),
         "faulty_imprint": _d("Faulty Imprint", "The printed code is missing or only partly printed.",
                              "The capsule cannot be identified, a labelling (logical) error.")},
        (ObjectQuestion("Object Structure", "How many coloured halves does the capsule have?", ("2", "1", "3", "4"),
                        answer="2"),
         ObjectQuestion("Object Details", "What colours does the capsule have?", ("black and orange",
                        "white and blue", "red and yellow", "green and white"), attribute="color"))),
    "pcb": CategoryFacts(
        "pcb", "printed circuit board",
        "A small printed circuit board with a black microcontroller, two resistors, two capacitors, a crystal and "
        "a red LED, each sitting on its solder pads and connected by traces, plus four mounting holes. Board "
        "colour, position and lighting vary and are normal.",
        {"missing_component": _d("Missing Component", "A component is absent and its bare solder pads are "
                                 "visible.", "The circuit is incomplete and will not work (logical anomaly)."),
         "misplaced_component": _d("Misplaced Component", "A component is shifted off its pads or rotated "
                                   "to the wrong orientation.", "Its pins are not soldered and the circuit fails "
                                   "(logical anomaly)."),
         "scratch": _d("Scratch", "A thin bright line scratched across the board and its traces.",
                       "A trace may be cut, breaking the circuit."),
         "solder_splash": _d("Solder Splash", "A shiny silver blob of stray solder on the board surface.",
                             "Stray solder can short-circuit neighbouring traces.")},
        (ObjectQuestion("Object Structure", "How many components are mounted on the board?", ("7", "5", "6", "9"),
                        attribute="components"),
         ObjectQuestion("Object Details", "What colour is the circuit board?", ("green", "blue", "red", "black"),
                        attribute="color"))),
    "cable": CategoryFacts(
        "cable", "power cable",
        "The cross section of a power cable: a grey outer jacket, white filler and three conductors with "
        "green-yellow, blue and brown insulation in that fixed clockwise order around copper cores. Rotation "
        "and position vary and are normal.",
        {"missing_wire": _d("Missing Wire", "One of the three conductors is absent and only white filler fills "
                            "its place.", "The cable lacks a conductor and cannot carry the circuit (logical "
                            "anomaly)."),
         "cable_swap": _d("Cable Swap", "Two conductors have swapped places, so the insulation colours are in "
                          "the wrong order.", "Wrong wiring order causes miswiring at installation (logical "
                          "anomaly)."),
         "poke_insulation": _d("Poke Insulation", "A small dark puncture in the insulation of one conductor.",
                               "Exposed conductor risks a short circuit."),
         "cut_outer_insulation": _d("Cut Outer Insulation", "A thin dark jagged cut in the grey outer jacket.",
                                    "Moisture can enter and the cable may fail.")},
        (ObjectQuestion("Object Structure", "How many conductors does the cable contain?", ("3", "2", "4", "5"),
                        attribute="wires"),
         ObjectQuestion("Object Details", "Which insulation colours do the conductors have?",
                        ("Green-yellow, blue and brown", "Red, black and white", "All three grey",
                         "Orange, white and green"), answer="Green-yellow, blue and brown"))),
    "washer": CategoryFacts(
        "washer", "flat washer",
        "A flat steel washer: a circular ring with a round central hole and fine concentric lathe marks. Position "
        "and reflections vary and are normal.",
        {"crack": _d("Crack", "A thin dark jagged fracture across the ring.", "The washer can break under load."),
         "rust": _d("Rust", "An orange-brown corrosion spot on the ring.", "Corrosion weakens the washer."),
         "bent": _d("Bent Edge", "A part of the outer edge is pushed in, so the outline is no longer circular.",
                    "The washer does not sit flat and the joint loses clamping force.")},
        (ObjectQuestion("Object Structure", "How many holes does the washer have?", ("1", "2", "3", "0"),
                        attribute="holes"),
         ObjectQuestion("Object Details", "What shape is the outline of the washer?", ("A circle", "A square",
                        "A hexagon", "A triangle"), answer="A circle"))),
}


def defect_title(category: str, label: str) -> str:
    """The name a defect goes by in answers: its title where the knowledge base knows the category
    and label (``broken_thread`` -> ``Broken Thread``), else the label in words."""
    defects = CATEGORY_FACTS[category].defects if category in CATEGORY_FACTS else {}
    return defects[label].title if label in defects else label.replace("_", " ").strip()


def product_title(category: str) -> str:
    """The name a product goes by in answers: its display name where the knowledge base knows the
    category (``fabric`` -> ``woven fabric``), else the folder name in words."""
    return CATEGORY_FACTS[category].display_name if category in CATEGORY_FACTS else category.replace("_", " ").strip()


def category_facts(category: str) -> CategoryFacts:
    try:
        return CATEGORY_FACTS[category]
    except KeyError:
        raise KeyError(f"no knowledge for category {category!r}") from None


def domain_knowledge(categories: list[str] | tuple[str, ...] | None = None) -> dict[str, dict[str, dict[str, str]]]:
    """MMAD's ``domain_knowledge.json`` content for the given (default: all) categories."""
    names = categories if categories is not None else tuple(PRODUCTS)
    return {DATASET_NAME: {name: category_facts(name).domain_knowledge() for name in names}}
