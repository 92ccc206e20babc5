"""MMAD benchmark support: file formats, the exact scorer, answerers and evaluation."""

from .answerers import Answerer, GroundedAnswer, MMADQuery, RandomAnswerer, load_answerer
from .format import MMADDataset, MMADItem, MMADQuestion, MMADRecord, read_mmad_json
from .scorer import AccuracyTable, parse_letter, score_answers

__all__ = ["AccuracyTable", "Answerer", "GroundedAnswer", "MMADDataset", "MMADItem", "MMADQuery", "MMADQuestion",
           "MMADRecord", "RandomAnswerer", "load_answerer", "parse_letter", "read_mmad_json", "score_answers"]
