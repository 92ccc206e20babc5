"""The operator dashboard on a real run: Kafka, Ray, the shipped JUDO, `judo dashboard` and headless Chromium.

Simulated frames go through the pipeline; the dashboard (the real command, in its own process)
reads the verdict and frame topics, the trace file and Ray Serve. In the browser: a verdict JUDO
called defective shows its frame with exactly the region the verdict carries, its reasoning and the
normal reference it was compared with; a feedback click lands on the feedback topic as a valid
record; line health, stage latency and the replica count match the run; a hostile reasoning string
stays text. Login is on (tokens from the environment, as an operator would set them): without
credentials the browser lands on the login page and the API answers 401, and a viewer's page offers
no feedback controls (feedback it sends by hand is refused). ``JUDO_DASHBOARD_SCREENSHOTS=docs`` also
writes the screenshots in docs/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml

from cluster.kafka_broker import free_port
from cluster.messages import Defect, RLEMask, Verdict
from cluster.records import feedback_from_record, frame_to_record, verdict_to_record
from cluster.telemetry import setup_tracing
from pipelines.commands import SHIPPED_CHECKPOINT
from pipelines.runner import Pipeline
from tooling.demo import demo_config, prepare_banks
from tooling.gallery import collect_verdicts
from tooling.simulator import CameraSimulator, CameraSpec

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FRAMES = 8
ROOT = Path(__file__).resolve().parents[1]
OPERATOR_TOKEN, VIEWER_TOKEN = "dash-Operator-3f9e1c", "dash-Viewer-8b27d0"
HOSTILE = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script> & "quotes"'

pytestmark = [
    pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "config.json").exists(), reason="no shipped JUDO checkpoint"),
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="needs Debian's chromium and chromium-driver (`make browser` installs them)"),
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian Chromium through its own chromedriver: nothing downloaded, a fresh profile."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def plant(kafka, tmp_path_factory):
    """The pipeline on simulated frames, every verdict collected, and `judo dashboard` watching it."""
    tmp_path = tmp_path_factory.mktemp("dashboard")
    banks = prepare_banks(tmp_path / "assets", ("bottle", "hex_nut"), images_per_category=40)
    trace_file = tmp_path / "traces.jsonl"
    setup_tracing("dashboard.cameras", trace_file=trace_file)
    config = demo_config(banks, SHIPPED_CHECKPOINT, kafka.bootstrap_servers, trace_file, lines=2,
                         cameras_per_line=1)
    config = config.model_copy(update={"topics": config.topics.model_copy(update={
        "frames": "dash.frames", "verdicts": "dash.verdicts", "dead_letters": "dash.dlq",
        "feedback": "dash.feedback", "partitions": 2})})
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    cameras = [CameraSpec(line.id, cam, line.product) for line in config.lines for cam in line.cameras]
    pipeline = Pipeline(config, kafka.settings())
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w")
    dashboard = None
    try:
        pipeline.start()
        dashboard = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "dashboard", "--config", str(config_file), "--port", str(port),
             "--ray-address", ray.get_runtime_context().gcs_address, "--window", "3600"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "JUDO_DASHBOARD_OPERATOR_TOKEN": OPERATOR_TOKEN,
                 "JUDO_DASHBOARD_VIEWER_TOKEN": VIEWER_TOKEN})
        url = f"http://127.0.0.1:{port}"
        _wait_for_http(f"{url}/login", dashboard, timeout_s=60)
        simulator = CameraSimulator(cameras, defect_rate=0.5, seed=11)
        sent = simulator.publish(kafka.settings(), config.topics.frames, FRAMES)
        collected = collect_verdicts(kafka.settings(), config.topics.verdicts,
                                     {item.frame.frame_id for item in sent}, timeout_s=300)
        yield {"url": url, "config": config, "sent": sent, "verdicts": collected.verdicts,
               "settings": kafka.settings(), "simulator": simulator, "log": tmp_path / "dashboard.log"}
    finally:
        if dashboard is not None:
            dashboard.terminate()
            try:
                dashboard.wait(timeout=30)
            except subprocess.TimeoutExpired:
                dashboard.kill()
        log.close()
        pipeline.stop()


def _wait_for_http(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"`judo dashboard` exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the dashboard did not answer on {url} within {timeout_s:.0f} s")


def _login(browser, url: str, token: str) -> None:
    """Log in through the login page as the holder of ``token``, starting from a logged-out browser."""
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(url + "/")
    _wait(browser, lambda b: "/login" in b.current_url, 30, "no redirect to the login page")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "login-token-submit").click()
    _wait(browser, lambda b: b.find_element(By.ID, "who").text.endswith("operator" if token == OPERATOR_TOKEN
                                                                          else "viewer"), 30, "login failed")


def _wait(browser, condition, timeout_s: float = 60, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout_s, poll_frequency=0.5).until(condition, message)


def _card(browser, frame_id: str, timeout_s: float = 60):
    from selenium.webdriver.common.by import By

    selector = f'article.card[data-frame-id="{frame_id}"]'
    return _wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, selector), timeout_s,
                 f"no card for {frame_id} in the gallery")


def _painted_mask_pixels(browser, card) -> int:
    """Pixels the card's mask canvas actually painted (alpha > 0), read back from the canvas."""
    return browser.execute_script(
        "const c = arguments[0].querySelector('canvas.mask'); if (!c) return -1;"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;", card)


def _image_loaded(browser, card, selector: str) -> int:
    """The natural width of a card's image once loaded (0 while loading or when broken)."""
    return browser.execute_script(
        "const i = arguments[0].querySelector(arguments[1]); return i && i.complete ? i.naturalWidth : 0;",
        card, selector)


def _assert_region_drawn(browser, card, defect: Defect) -> None:
    """The overlay is exactly the verdict's region: one outline per box, one painted pixel per mask pixel."""
    from selenium.webdriver.common.by import By

    outlines = card.find_elements(By.CSS_SELECTOR, "svg.boxes path.box")
    assert len(outlines) == len(defect.boxes)
    for outline, box in zip(outlines, defect.boxes):
        x1, y1, x2, y2, x1_again = (float(v) for v in re.findall(r"[-\d.e]+", outline.get_attribute("d")))
        assert [x1, y1, x2, y2, x1_again] == pytest.approx([box.x1, box.y1, box.x2, box.y2, box.x1], abs=1e-6)
    if defect.mask is not None:
        assert _painted_mask_pixels(browser, card) == defect.mask.area > 0
    else:
        assert _painted_mask_pixels(browser, card) == -1


def _screenshot(browser, tmp_path: Path, name: str) -> Path:
    """Save to the test's folder, and to ``$JUDO_DASHBOARD_SCREENSHOTS`` when set (docs/ for the README)."""
    path = tmp_path / name
    assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 20_000, "an almost empty screenshot: the page did not render"
    target = os.environ.get("JUDO_DASHBOARD_SCREENSHOTS")
    if target:
        shutil.copyfile(path, ROOT / target / name)
    return path


def test_gallery_shows_a_defective_verdict_with_its_region_reasoning_and_reference(plant, browser, tmp_path):
    from selenium.webdriver.common.by import By

    _login(browser, plant["url"], OPERATOR_TOKEN)

    judo = [v for v in plant["verdicts"].values() if v.stage == "judo"]
    shown = {v.frame_id for v in plant["verdicts"].values() if v.stage == "judo" or v.is_anomalous}
    defective = [v for v in judo if v.is_anomalous]
    assert defective, (f"no JUDO verdict called any of the {FRAMES} frames defective "
                       f"({sum(s.is_defective for s in plant['sent'])} were); raise the defect rate")
    # the richest defective verdict: a mask, then boxes, then reasoning
    verdict = max(defective, key=lambda v: (v.defect.mask is not None, bool(v.defect.boxes), bool(v.defect.reasoning)))
    assert verdict.reference_ids, "a JUDO verdict names the normal references it was compared with"

    browser.get(plant["url"] + "/")
    card = _card(browser, verdict.frame_id)
    assert card.get_attribute("data-anomalous") == "true"
    assert card.find_element(By.CSS_SELECTOR, ".badge").text == "DEFECT"
    _wait(browser, lambda b: _image_loaded(b, card, "img.frame-img") == 256, 30, "the frame image did not load")
    _wait(browser, lambda b: _image_loaded(b, card, "img.reference-img") > 0, 30, "the reference did not load")
    _assert_region_drawn(browser, card, verdict.defect)
    shown_reasoning = card.find_element(By.CSS_SELECTOR, ".reasoning").text
    assert shown_reasoning == (verdict.defect.reasoning.strip() or "no reasoning given")
    assert card.find_element(By.CSS_SELECTOR, ".defect-type-label").text == (verdict.defect.type or "type not given")
    assert card.find_element(By.CSS_SELECTOR, ".frame-id").text == verdict.frame_id
    cards = {c.get_attribute("data-frame-id") for c in browser.find_elements(By.CSS_SELECTOR, "article.card")}
    assert cards - {"probe-hostile"} == shown, "the gallery holds exactly the routed and the defective verdicts"
    browser.find_element(By.ID, "defects-only").click()
    visible = [c for c in browser.find_elements(By.CSS_SELECTOR, "article.card") if c.is_displayed()]
    assert {c.get_attribute("data-frame-id") for c in visible} - {"probe-hostile"} == {
        v.frame_id for v in plant["verdicts"].values() if v.is_anomalous}
    _screenshot(browser, tmp_path, "dashboard-gallery.png")

    card.find_element(By.CSS_SELECTOR, "a.trace-link").click()
    _wait(browser, lambda b: b.current_url.endswith(f"/trace?id={verdict.trace_id}"), 30, "no trace page")
    _wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#spans tbody tr")) >= 5, 30, "no spans listed")
    spans = {row.get_attribute("data-span") for row in browser.find_elements(By.CSS_SELECTOR, "#spans tbody tr")}
    assert {"camera.capture", "ingest", "prefilter", "references", "judo", "sink"} <= spans


def test_feedback_click_lands_on_the_feedback_topic(plant, browser):
    from selenium.webdriver.common.by import By

    _login(browser, plant["url"], OPERATOR_TOKEN)

    verdict = next(v for v in plant["verdicts"].values() if v.stage == "judo")
    browser.get(plant["url"] + "/")
    card = _card(browser, verdict.frame_id)
    operator = browser.find_element(By.ID, "operator")
    operator.clear()
    operator.send_keys("Ana Line-Lead")
    card.find_element(By.CSS_SELECTOR, "input.defect-type").send_keys("Broken Large")
    card.find_element(By.CSS_SELECTOR, "input.comment").send_keys("cap is cracked, not contaminated")
    card.find_element(By.CSS_SELECTOR, "button.fb-relabel").click()
    status = card.find_element(By.CSS_SELECTOR, ".feedback-status")
    _wait(browser, lambda b: status.text.startswith("saved"), 60, f"feedback not saved: {status.text!r}")
    assert card.get_attribute("data-feedback") == "relabel"

    consumer = plant["settings"].consumer(plant["config"].topics.feedback, group_id=None)
    records = []
    deadline = time.monotonic() + 30
    try:
        while not records and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records += [r for r in batch if r.key == verdict.frame_id.encode()]
    finally:
        consumer.close()
    assert len(records) == 1
    feedback = feedback_from_record(records[0].key, records[0].value, records[0].headers)
    assert (feedback.action, feedback.defect_type, feedback.operator) == ("relabel", "broken_large", "Ana Line-Lead")
    assert feedback.comment == "cap is cracked, not contaminated"
    assert (feedback.frame_id, feedback.camera_id, feedback.line_id) == (verdict.frame_id, verdict.camera_id,
                                                                          verdict.line_id)
    assert feedback.trace_id == verdict.trace_id and feedback.model_version == verdict.model_version
    assert feedback.verdict_is_anomalous == verdict.is_anomalous
    assert status.text.endswith(f"@{records[0].offset}")


def test_line_health_stage_latency_and_replicas_match_the_run(plant, browser, tmp_path):
    from selenium.webdriver.common.by import By

    _login(browser, plant["url"], OPERATOR_TOKEN)

    verdicts = list(plant["verdicts"].values())
    browser.get(plant["url"] + "/lines")
    for line in plant["config"].lines:
        camera = line.cameras[0]
        mine = [v for v in verdicts if v.camera_id == camera]
        row = f'#cameras tr.camera[data-camera="{camera}"]'
        _wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, f"{row} td.frames").text == str(len(mine)), 30,
              f"line health does not count {len(mine)} verdicts for {camera}")
        cells = browser.find_element(By.CSS_SELECTOR, row)
        routed = 100 * sum(v.stage == "judo" for v in mine) / len(mine)
        defects = 100 * sum(v.is_anomalous for v in mine) / len(mine)
        assert cells.find_element(By.CSS_SELECTOR, "td.routed").text == f"{routed:.1f} %"
        assert cells.find_element(By.CSS_SELECTOR, "td.defects").text == f"{defects:.1f} %"
    _wait(browser, lambda b: {"ingest", "prefilter", "judo", "sink"} <= {
        r.get_attribute("data-stage") for r in b.find_elements(By.CSS_SELECTOR, "#stages tbody tr")}, 30,
        "stage latency lacks the pipeline's stages")
    p50 = float(browser.find_element(By.CSS_SELECTOR, '#stages tr[data-stage="prefilter"] td.p50').text)
    assert p50 > 0
    judo_path = browser.find_element(By.CSS_SELECTOR, '#verdict-latency tr[data-stage="total (JUDO path)"]')
    assert judo_path.find_element(By.CSS_SELECTOR, "td.count").text == str(sum(v.stage == "judo" for v in verdicts))
    assert float(judo_path.find_element(By.CSS_SELECTOR, "td.p50").text) > 0
    replicas = browser.find_element(By.ID, "replica-now")
    _wait(browser, lambda b: replicas.get_attribute("data-running") == "1", 120,
          f"JUDO replicas not reported by Ray Serve: {replicas.text!r}")
    assert "judo/judo: HEALTHY" in replicas.text
    _screenshot(browser, tmp_path, "dashboard-lines.png")
    request = urllib.request.Request(plant["url"] + "/api/health",
                                     headers={"Authorization": f"Bearer {VIEWER_TOKEN}"})
    health = json.load(urllib.request.urlopen(request, timeout=10))
    assert health["feeds"]["kafka"]["ok"] and health["feeds"]["traces"]["ok"]


def test_hostile_reasoning_stays_text_and_a_mask_is_painted_pixel_for_pixel(plant, browser):
    from selenium.webdriver.common.by import By

    _login(browser, plant["url"], OPERATOR_TOKEN)

    item = next(plant["simulator"].frames(1))
    frame = item.frame.model_copy(update={"frame_id": "probe-hostile", "line_id": "probe-line",
                                          "camera_id": "probe-cam"})
    mask = np.zeros((frame.height, frame.width), bool)
    mask[40:90, 100:180] = True
    verdict = Verdict(frame_id=frame.frame_id, camera_id=frame.camera_id, line_id=frame.line_id,
                      product=frame.product, stage="judo", anomaly_score=9.0, threshold=1.0, is_anomalous=True,
                      model_version="probe", defect=Defect(type="stain", boxes=[[0.39, 0.15, 0.71, 0.36]],
                                                           mask=RLEMask.encode(mask), reasoning=HOSTILE))
    producer = plant["settings"].producer()
    for topic, record in ((plant["config"].topics.frames, frame_to_record(frame)),
                          (plant["config"].topics.verdicts, verdict_to_record(verdict))):
        producer.send(topic, key=record.key, value=record.value, headers=record.headers)
    producer.flush(30)
    producer.close()

    browser.get(plant["url"] + "/")
    card = _card(browser, verdict.frame_id)
    assert card.find_element(By.CSS_SELECTOR, ".reasoning").text == HOSTILE
    _assert_region_drawn(browser, card, verdict.defect)
    assert browser.title == "JUDO Inspect · verdicts"
    assert not browser.find_elements(By.CSS_SELECTOR, 'img[src="x"], .reasoning script, .reasoning img')


def test_without_credentials_only_the_login_page_answers(plant, browser):
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(plant["url"] + "/lines")
    _wait(browser, lambda b: "/login?next=%2Flines" in b.current_url, 30, "no redirect to the login page")
    assert not browser.find_elements(By.CSS_SELECTOR, "article.card, #cameras")
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "login-token-submit").click()
    _wait(browser, lambda b: b.find_element(By.ID, "login-failed").is_displayed(), 30, "no failure message")
    for path in ("/api/verdicts", "/api/health", "/api/frame?id=x"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(plant["url"] + path, timeout=10)
        assert refused.value.code == 401, path
    assert OPERATOR_TOKEN not in plant["log"].read_text() and VIEWER_TOKEN not in plant["log"].read_text()


def test_a_viewer_sees_the_verdicts_but_no_feedback_controls_and_its_feedback_is_refused(plant, browser):
    from selenium.webdriver.common.by import By

    _login(browser, plant["url"], VIEWER_TOKEN)
    verdict = next(v for v in plant["verdicts"].values() if v.stage == "judo")
    card = _card(browser, verdict.frame_id)  # a card is drawn only once the session (and its role) is known
    assert card.find_element(By.CSS_SELECTOR, ".frame-id").text == verdict.frame_id
    cards = browser.find_elements(By.CSS_SELECTOR, "article.card")
    assert len(cards) >= 1
    assert not browser.find_elements(By.CSS_SELECTOR, ".feedback, .feedback-status, button[class^='fb-'], "
                                                      "input.defect-type, input.comment, #operator"), \
        "a viewer's page offers no feedback controls, and no operator name to sign feedback with"
    # the server refuses a viewer's feedback anyway, even sent by hand with the session's own CSRF token
    status, answer = browser.execute_async_script(
        "const frameId = arguments[0], done = arguments[arguments.length - 1];"
        "fetch('/api/session').then((r) => r.json()).then((s) => fetch('/api/feedback', {method: 'POST',"
        "  headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf},"
        "  body: JSON.stringify({frame_id: frameId, action: 'confirm', operator: 'Vic Viewer'})}))"
        ".then(async (r) => done([r.status, await r.text()]), (e) => done([0, String(e)]));", verdict.frame_id)
    assert status == 403 and "only operators may send feedback" in answer, (status, answer)

    _login(browser, plant["url"], OPERATOR_TOKEN)  # the same card, as an operator: the controls are there
    card = _card(browser, verdict.frame_id)
    assert card.find_elements(By.CSS_SELECTOR, "button.fb-confirm") and browser.find_elements(By.ID, "operator")
