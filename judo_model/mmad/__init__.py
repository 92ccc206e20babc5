"""MMAD benchmark support: file formats, the exact scorer, answerers and evaluation.

JUDO's answerers (:mod:`judo_model.mmad.judo_answerer`) are not imported here: they build on
training, whose data module reads :mod:`judo_model.mmad.format`.
"""

from .answerers import Answerer, GroundedAnswer, MMADQuery, RandomAnswerer
from .format import MMADDataset, MMADItem, MMADQuestion, MMADRecord, read_mmad_json
from .scorer import AccuracyTable, parse_letter, score_answers

__all__ = ["AccuracyTable", "Answerer", "GroundedAnswer", "MMADDataset", "MMADItem", "MMADQuery", "MMADQuestion",
           "MMADRecord", "RandomAnswerer", "parse_letter", "read_mmad_json", "score_answers"]
