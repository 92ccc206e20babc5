"""What a new user ran into (issue #28 item 6): embedded Kafka that needs another command, relative
paths that fail late, a dead-letter reason with a memory address, a summary only at exit, and
library messages that read like errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from actors.ingest import FrameDecoder, Rejected
from cluster.kafka_broker import CACHE_ROOT, KAFKA_VERSION
from cluster.records import readable_reason
from pipelines.commands import next_summary_wait, summary_line
from pipelines.config import ConfigError, load_config
from tests.pipeline_support import _with_meta, record_for

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"lines": [{"id": "l1", "product": "bottle", "cameras": ["c1"]}],
          "products": {"bottle": {"bank": "banks/bottle"}}, "judo": {"checkpoint": "ckpt"}}


def test_a_garbage_frame_s_dead_letter_names_no_memory_address():
    rejected = FrameDecoder(["bottle"]).decode(record_for(_with_meta("garbage", os.urandom(3000))))
    assert isinstance(rejected, Rejected)
    reason = rejected.letter.reason
    assert reason.startswith("corrupt or truncated image: cannot identify image file") and "object at" not in reason
    assert not re.search(r"0x[0-9a-f]{6,}", reason), reason
    assert readable_reason("x <_io.BytesIO object at 0x7f00aa> y") == "x y"


def test_relative_paths_follow_the_yaml_and_missing_ones_fail_at_load_naming_the_field(tmp_path):
    folder = tmp_path / "plant"
    folder.mkdir()
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    with pytest.raises(ConfigError) as error:
        load_config(path, check_paths=True)
    message = str(error.value)
    assert f"products.bottle.bank: {folder / 'banks' / 'bottle'} does not exist" in message
    assert f"judo.checkpoint: {folder / 'ckpt'} does not exist" in message
    assert "relative paths resolve against the config file's folder" in message
    (folder / "banks" / "bottle").mkdir(parents=True)
    (folder / "ckpt").mkdir()
    with pytest.raises(ConfigError, match="has no bank.json"):
        load_config(path, check_paths=True)
    (folder / "banks" / "bottle" / "bank.json").write_text("{}")
    config = load_config(path, check_paths=True)
    assert config.products["bottle"].bank == folder / "banks" / "bottle"
    assert load_config(path).judo.checkpoint == folder / "ckpt"  # without the check: the same resolution


def test_the_run_summary_is_one_line_per_interval_when_not_on_a_terminal():
    stats = {"frames_in": 120, "verdicts_prefilter": 100, "verdicts_judo": 12, "dead_letters": 1,
             "latencies_pass_ms": [10.0, 20.0], "latencies_judo_ms": [300.0]}
    line = summary_line(stats, 12.0)
    assert line.startswith("12 s: frames in 120; frames/s 10.0;") and "routed to JUDO 10.7 %" in line
    assert "\n" not in line
    assert next_summary_wait(10.0, None, 35.0) == 10.0
    assert next_summary_wait(10.0, 30.0, 25.0) == 5.0 and next_summary_wait(10.0, 30.0, 31.0) == 0.0


def test_the_judo_command_keeps_faiss_s_avx_search_quiet():
    script = "from pipelines import cli; cli.main(['kafka', 'status']); import faiss"  # faiss after logging is set
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JUDO_CACHE": "/tmp/judo-friction-no-cache"})
    assert "AVX" not in done.stderr, done.stderr


@pytest.mark.skipif(not (CACHE_ROOT / "kafka" / KAFKA_VERSION / ".complete").exists(),
                    reason="the Kafka jars are not fetched yet (the kafka fixture fetches them)")
def test_embedded_mode_starts_a_local_kafka_when_none_runs(tmp_path):
    """``kafka.mode: embedded`` with no `judo kafka up` before: the command starts the broker itself."""
    cache = tmp_path / "cache"
    (cache / "kafka").mkdir(parents=True)
    (cache / "kafka" / KAFKA_VERSION).symlink_to(CACHE_ROOT / "kafka" / KAFKA_VERSION)  # the jars, not the state
    env = {**os.environ, "JUDO_CACHE": str(cache)}
    script = ("import logging; logging.basicConfig(level=logging.INFO); "
              "from pipelines.commands import kafka_settings_for; from pipelines.config import parse_config; "
              f"config = parse_config({CONFIG!r}); settings = kafka_settings_for(config); "
              "consumer = settings.consumer(group_id=None); topics = consumer.topics(); consumer.close(); "
              "print('BOOTSTRAP', settings.bootstrap_servers)")
    try:
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "BOOTSTRAP 127.0.0.1:" in done.stdout or "BOOTSTRAP localhost:" in done.stdout, done.stdout
        assert "starting one" in done.stderr and "judo kafka down" in done.stderr
    finally:
        subprocess.run([sys.executable, "-m", "pipelines.cli", "kafka", "down"], cwd=ROOT, env=env, timeout=120,
                       capture_output=True)
