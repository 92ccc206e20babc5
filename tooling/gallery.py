"""Reading verdicts back and showing them: collection by frame_id, scoring against ground truth,
and a gallery of frames with their defect boxes, masks and JUDO's reasoning drawn on."""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cluster.kafka import KafkaSettings
from cluster.messages import DeadLetter, Verdict, canonical_defect_type
from cluster.records import dead_letter_from_record, verdict_from_record


@dataclass
class Collected:
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    duplicates: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)


def collect_verdicts(settings: KafkaSettings, verdict_topic: str, expected_ids: set[str], timeout_s: float,
                     dead_letter_topic: str | None = None, expected_dead_letters: int = 0) -> Collected:
    """Read the verdict (and dead-letter) topics from the start until every expected frame has a
    verdict and the expected dead letters arrived, or the time is up. Duplicates are counted."""
    topics = [verdict_topic] + ([dead_letter_topic] if dead_letter_topic else [])
    consumer = settings.consumer(*topics, group_id=None, enable_auto_commit=False)
    collected = Collected()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    if record.topic == verdict_topic:
                        verdict = verdict_from_record(record.key, record.value, record.headers)
                        if verdict.frame_id in collected.verdicts:
                            collected.duplicates += 1
                        collected.verdicts[verdict.frame_id] = verdict
                    else:
                        collected.dead_letters.append(dead_letter_from_record(record.key, record.value, record.headers))
            if expected_ids <= set(collected.verdicts) and len(collected.dead_letters) >= expected_dead_letters:
                break
    finally:
        consumer.close()
    return collected


def score_against_truth(verdicts: dict[str, Verdict], truth: list[dict]) -> dict:
    """Defects caught vs ground truth: recall and false alarms of the final verdicts, routing rate."""
    defective = [t for t in truth if t["is_defective"]]
    normal = [t for t in truth if not t["is_defective"]]
    caught = sum(1 for t in defective if t["frame_id"] in verdicts and verdicts[t["frame_id"]].is_anomalous)
    routed_defective = sum(1 for t in defective if t["frame_id"] in verdicts and verdicts[t["frame_id"]].stage == "judo")
    false_alarms = sum(1 for t in normal if t["frame_id"] in verdicts and verdicts[t["frame_id"]].is_anomalous)
    routed_normal = sum(1 for t in normal if t["frame_id"] in verdicts and verdicts[t["frame_id"]].stage == "judo")
    type_hits = sum(
        1 for t in defective
        if t["frame_id"] in verdicts and verdicts[t["frame_id"]].defect is not None
        and verdicts[t["frame_id"]].defect.type == canonical_defect_type(t["defect_type"]))
    return {
        "frames": len(truth), "defective": len(defective), "caught": caught,
        "recall": caught / max(len(defective), 1),
        "routed_defective": routed_defective, "routed_normal": routed_normal,
        "routing_rate_normal": routed_normal / max(len(normal), 1),
        "false_alarms": false_alarms, "defect_type_correct": type_hits,
    }


RED = np.array([230, 40, 40], dtype=np.float32)


def overlay(image: np.ndarray, verdict: Verdict) -> Image.Image:
    """The frame with the verdict's mask tinted red and its boxes outlined."""
    canvas = image.astype(np.float32)
    defect = verdict.defect
    if defect is not None and defect.mask is not None:
        mask = defect.mask.decode()
        if mask.shape == image.shape[:2]:
            canvas[mask] = 0.5 * canvas[mask] + 0.5 * RED
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    h, w = image.shape[:2]
    for box in (defect.boxes if defect else []):
        draw.rectangle([box.x1 * w, box.y1 * h, box.x2 * w, box.y2 * h], outline=(255, 220, 0), width=2)
    return picture


def gallery_card(image: np.ndarray, verdict: Verdict, reference: np.ndarray | None = None,
                 truth: dict | None = None, width: int = 560) -> Image.Image:
    """One card: reference | frame with overlay, and the verdict's text under them."""
    side = width // 2
    card = Image.new("RGB", (width, side + 150), (24, 24, 28))
    if reference is not None:
        card.paste(Image.fromarray(reference).resize((side, side)), (0, 0))
    card.paste(overlay(image, verdict).resize((side, side)), (side, 0))
    draw = ImageDraw.Draw(card)
    status = "DEFECT" if verdict.is_anomalous else "ok"
    kind = verdict.defect.type if verdict.defect and verdict.defect.type else "-"
    lines = [
        f"{verdict.frame_id}",
        f"{verdict.product} | {status} | type: {kind} | score {verdict.anomaly_score:.2f} / thr {verdict.threshold:.2f}",
    ]
    if truth is not None:
        lines.append(f"ground truth: {truth.get('defect_type') or 'good'}")
    reasoning = verdict.defect.reasoning if verdict.defect else ""
    if verdict.parse_error:
        reasoning = f"[parse error: {verdict.parse_error}] {reasoning}"
    lines += textwrap.wrap(f"reasoning: {reasoning}", 90)[:4]
    for i, line in enumerate(lines):
        draw.text((8, side + 6 + 18 * i), line, fill=(235, 235, 235))
    return card


def write_gallery(cards: list[Image.Image], out_dir: Path, columns: int = 3) -> Path:
    """Save each card and a contact sheet of all of them; return the sheet's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, card in enumerate(cards):
        card.save(out_dir / f"verdict_{i:03d}.png")
    if not cards:
        return out_dir
    w, h = cards[0].size
    rows = -(-len(cards) // columns)
    sheet = Image.new("RGB", (w * min(columns, len(cards)), h * rows), (0, 0, 0))
    for i, card in enumerate(cards):
        sheet.paste(card, ((i % columns) * w, (i // columns) * h))
    path = out_dir / "gallery.png"
    sheet.save(path)
    return path
