"""Shared fixtures: a real Kafka broker, started once per test session and stopped after."""

from __future__ import annotations

import logging
import os
import uuid

import pytest

from cluster.local_kafka import LocalKafka

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
logging.getLogger("kafka").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def kafka():
    """One real single-broker KRaft cluster for the whole session."""
    with LocalKafka(brokers=1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pipeline_banks(tmp_path_factory):
    """Prefilter banks (with reference indexes) for bottle and hex_nut, fitted once for every pipeline test."""
    from tooling.demo import prepare_banks  # here, not at the top: it loads torch and Ray for every test session

    return prepare_banks(tmp_path_factory.mktemp("pipeline-assets"), ("bottle", "hex_nut"), images_per_category=40)


@pytest.fixture
def topic_name():
    """A fresh topic name per test so tests never read each other's records."""
    return f"t-{uuid.uuid4().hex[:10]}"
