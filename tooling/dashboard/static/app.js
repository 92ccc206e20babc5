// JUDO Inspect dashboard. Every piece of text from Kafka or the trace file goes into the page through
// textContent or an attribute, never as markup; the server's Content-Security-Policy forbids inline script.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const MAX_CARDS = 60;
const POLL_MS = 2000;

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

function fmt(value, digits = 1) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function setStatus(text, ok = true) {
  const status = document.getElementById("status");
  if (!status) return;
  status.textContent = text;
  status.classList.toggle("bad", !ok);
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (response.status === 401) {  // the session expired or was logged out: back to the login page
    location.assign(`/login?next=${encodeURIComponent(location.pathname)}`);
    throw new Error("logged out");
  }
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

// Who is logged in, the CSRF token every state-changing request echoes, and whether this role may send
// feedback (tooling/dashboard/auth.py). A viewer's page has no feedback controls at all; the server refuses
// a viewer's feedback with 403 anyway.
const SESSION = { user: "", role: "", csrf: "", may_send_feedback: false };

async function loadSession() {
  Object.assign(SESSION, await getJSON("/api/session"));
  document.getElementById("who").textContent = `${SESSION.user} · ${SESSION.role}`;
  document.body.dataset.role = SESSION.role;
  if (!SESSION.may_send_feedback) {
    const signature = document.querySelector("label.operator");
    if (signature) signature.remove();  // the operator's name only signs feedback
  }
}

async function logout() {
  await fetch("/logout", { method: "POST", headers: { "X-CSRF-Token": SESSION.csrf } });
  location.assign("/login");
}

function every(ms, task) {
  const run = async () => {
    try {
      await task();
    } catch (error) {
      setStatus(`dashboard unreachable: ${error.message}`, false);
    }
    setTimeout(run, ms);
  };
  run();
}

// ------------------------------------------------------------------ overlays

// Runs alternate background/defect starting with background (cluster/messages.py RLEMask).
function drawMask(canvas, mask) {
  canvas.width = mask.width;
  canvas.height = mask.height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(mask.width, mask.height);
  let position = 0;
  let area = 0;
  mask.counts.forEach((run, i) => {
    if (i % 2 === 1) {
      for (let p = position; p < position + run; p++) {
        image.data.set([230, 40, 40, 150], p * 4);
      }
      area += run;
    }
    position += run;
  });
  context.putImageData(image, 0, 0);
  canvas.dataset.maskArea = String(area);
}

function frameFigure(card) {
  const verdict = card.verdict;
  const defect = verdict.defect;
  const stage = el("div", { class: "overlay" });
  if (card.frame_available) {
    stage.append(el("img", { class: "frame-img", alt: `frame ${verdict.frame_id}`,
                             src: `/api/frame?id=${encodeURIComponent(verdict.frame_id)}` }));
  } else {
    stage.append(el("div", { class: "placeholder", text: "frame no longer in the window" }));
  }
  if (defect && defect.mask) {
    const canvas = el("canvas", { class: "mask", "aria-label": "defect mask" });
    drawMask(canvas, defect.mask);
    stage.append(canvas);
  }
  const boxes = defect ? defect.boxes : [];
  const layer = svg("svg", { class: "boxes", viewBox: "0 0 1 1", preserveAspectRatio: "none",
                             "data-boxes": boxes.length });
  // a path, not a rect: a box JUDO gave zero height or width still shows as a line
  for (const [x1, y1, x2, y2] of boxes) {
    layer.append(svg("path", { d: `M ${x1} ${y1} H ${x2} V ${y2} H ${x1} Z`, class: "box",
                               "vector-effect": "non-scaling-stroke" }));
  }
  stage.append(layer);
  const caption = defect && !defect.mask && !boxes.length ? "frame · JUDO gave no region" : "frame · JUDO's region";
  return el("figure", { class: "frame" }, stage, el("figcaption", { text: caption }));
}

function referenceFigure(verdict) {
  const id = (verdict.reference_ids || [])[0];
  if (!id) {
    return el("figure", { class: "reference" }, el("div", { class: "placeholder", text: "no reference named" }),
              el("figcaption", { text: "normal reference" }));
  }
  const img = el("img", { class: "reference-img", alt: `normal reference ${id}`,
                          src: `/api/reference?product=${encodeURIComponent(verdict.product)}&id=${encodeURIComponent(id)}` });
  img.addEventListener("error", () => img.replaceWith(el("div", { class: "placeholder", text: "reference unavailable" })));
  return el("figure", { class: "reference" }, el("div", { class: "overlay" }, img),
            el("figcaption", { text: `normal reference · ${id}` }));
}

// ------------------------------------------------------------------ gallery

function operatorName() {
  return document.getElementById("operator").value.trim();
}

async function sendFeedback(article, verdict, action, typeInput, commentInput, output) {
  const operator = operatorName();
  if (!operator) {
    output.textContent = "enter your name under Operator first";
    document.getElementById("operator").focus();
    return;
  }
  if (action === "relabel" && !typeInput.value.trim()) {
    output.textContent = "type the correct defect type, then relabel";
    typeInput.focus();
    return;
  }
  output.textContent = "sending…";
  const body = { frame_id: verdict.frame_id, action, operator, comment: commentInput.value,
                 defect_type: action === "relabel" ? typeInput.value.trim() : null };
  try {
    const response = await fetch("/api/feedback", {
      method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": SESSION.csrf },
      body: JSON.stringify(body) });
    const answer = await response.json();
    if (response.status !== 201) {
      output.textContent = `not saved: ${answer.error}`;
      return;
    }
    output.textContent = `saved: ${action} → ${answer.topic}[${answer.partition}]@${answer.offset}`;
    article.dataset.feedback = action;
  } catch (error) {
    output.textContent = `not saved: ${error.message}`;
  }
}

function feedbackControls(article, verdict) {
  const output = el("output", { class: "feedback-status" });
  const typeInput = el("input", { class: "defect-type", placeholder: "defect type", maxlength: 64,
                                  "aria-label": "corrected defect type" });
  const commentInput = el("input", { class: "comment", placeholder: "comment (optional)", maxlength: 2000,
                                     "aria-label": "comment" });
  const button = (action, label) => {
    const node = el("button", { type: "button", class: `fb-${action}`, text: label });
    node.addEventListener("click", () => sendFeedback(article, verdict, action, typeInput, commentInput, output));
    return node;
  };
  return el("div", { class: "feedback" },
            el("div", { class: "row" }, button("confirm", "Confirm"), button("reject", "Reject"), typeInput,
               button("relabel", "Relabel")),
            el("div", { class: "row" }, commentInput), output);
}

function verdictCard(card) {
  const v = card.verdict;
  const defect = v.defect;
  const article = el("article", { class: `card ${v.is_anomalous ? "defect" : "ok"}`, "data-frame-id": v.frame_id,
                                  "data-anomalous": String(v.is_anomalous), "data-stage": v.stage });
  const time = v.produced_at ? new Date(v.produced_at).toLocaleTimeString() : "";
  article.append(el("header", {},
    el("span", { class: "badge", text: v.is_anomalous ? "DEFECT" : "OK" }),
    el("span", { class: "defect-type-label", text: defect && defect.type ? defect.type : (v.is_anomalous ? "type not given" : "normal") }),
    el("span", { class: "where", text: `${v.line_id} · ${v.camera_id} · ${v.product}` }),
    el("time", { datetime: v.produced_at, text: time })));
  article.append(el("div", { class: "pair" }, referenceFigure(v), frameFigure(card)));
  const total = v.latency_ms && v.latency_ms.total;
  const trace = v.trace_id ? el("a", { href: `/trace?id=${encodeURIComponent(v.trace_id)}`, class: "trace-link",
                                       text: v.trace_id.slice(0, 12) + "…" }) : el("span", { text: "–" });
  article.append(el("dl", { class: "scores" },
    el("dt", { text: "anomaly score" }), el("dd", { text: `${fmt(v.anomaly_score, 2)} (threshold ${fmt(v.threshold, 2)})` }),
    el("dt", { text: "stage · model" }), el("dd", { text: `${v.stage} · ${v.model_version}` }),
    el("dt", { text: "latency" }), el("dd", { text: total ? `${fmt(total, 0)} ms` : "–" }),
    el("dt", { text: "frame" }), el("dd", { class: "frame-id", text: v.frame_id }),
    el("dt", { text: "trace" }), el("dd", {}, trace)));
  const reasoning = defect && defect.reasoning ? defect.reasoning : "";
  article.append(el("p", { class: `reasoning${reasoning ? "" : " muted"}`, text: reasoning || "no reasoning given" }));
  if (v.answers && v.answers.length) {
    article.append(el("ul", { class: "answers" },
      ...v.answers.map((a) => el("li", { text: `${a.question} → ${a.option || a.answer}` }))));
  }
  if (v.parse_error) article.append(el("p", { class: "parse-error", text: `output problems: ${v.parse_error}` }));
  if (SESSION.may_send_feedback) article.append(feedbackControls(article, v));
  return article;
}

function startGallery() {
  const gallery = document.getElementById("gallery");
  const operator = document.getElementById("operator");  // absent from a viewer's page
  if (operator) {
    operator.value = localStorage.getItem("judo-operator") || "";
    operator.addEventListener("change", () => localStorage.setItem("judo-operator", operator.value.trim()));
  }
  const onlyDefects = document.getElementById("defects-only");
  onlyDefects.addEventListener("change", () => gallery.classList.toggle("defects-only", onlyDefects.checked));
  let lastSeq = 0;
  every(POLL_MS, async () => {
    const { cards, latest_seq: latest } = await getJSON(`/api/verdicts?after=${lastSeq}&limit=${MAX_CARDS}`);
    if (latest < lastSeq) {  // the dashboard restarted: its numbering did too
      gallery.replaceChildren();
      lastSeq = 0;
      return;
    }
    for (const card of cards.slice().reverse()) {
      gallery.prepend(verdictCard(card));
      lastSeq = Math.max(lastSeq, card.seq);
    }
    while (gallery.children.length > MAX_CARDS) gallery.lastElementChild.remove();
    const shown = gallery.children.length;
    const defects = gallery.querySelectorAll(".card.defect").length;
    document.getElementById("empty").hidden = shown > 0;
    document.getElementById("count").textContent = `${shown} verdicts shown, ${defects} defective`;
    setStatus(`live · ${new Date().toLocaleTimeString()}`);
  });
}

// ------------------------------------------------------------------ lines and stages

function fillTable(table, rows) {
  const body = table.tBodies[0];
  body.replaceChildren(...rows);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  const ago = Math.max(0, Date.now() / 1000 - seconds);
  return ago < 120 ? `${ago.toFixed(0)} s ago` : `${(ago / 60).toFixed(0)} min ago`;
}

function replicaChart(chart, history, bounds) {
  const known = history.filter((s) => s.deployments);
  chart.replaceChildren();
  const width = 600, height = 160, pad = 28;
  const top = Math.max(bounds.max, 1, ...known.map((s) => runningOf(s)));
  const y = (n) => height - pad - (n / top) * (height - 2 * pad);
  chart.append(svg("line", { x1: pad, y1: y(0), x2: width - 8, y2: y(0), class: "axis" }));
  for (const n of [...new Set([0, bounds.min, top])]) {
    const label = svg("text", { x: 4, y: y(n) + 4, class: "tick" });
    label.textContent = String(n);
    chart.append(label);
  }
  if (!history.length) return;
  const t0 = history[0].at, t1 = Math.max(history[history.length - 1].at, t0 + 1);
  const x = (t) => pad + ((t - t0) / (t1 - t0)) * (width - pad - 8);
  let points = "";
  let previous = null;
  for (const sample of history) {
    if (!sample.deployments) {
      chart.append(svg("rect", { x: x(sample.at) - 1, y: pad / 2, width: 2, height: height - pad * 1.5, class: "unknown" }));
      previous = null;
      continue;
    }
    const n = runningOf(sample);
    if (previous !== null) points += ` ${x(sample.at)},${y(previous)}`;
    points += ` ${x(sample.at)},${y(n)}`;
    previous = n;
  }
  chart.append(svg("polyline", { points: points.trim(), class: "replicas" }));
  const span = svg("text", { x: width - 8, y: height - 6, class: "tick end" });
  span.textContent = `last ${((t1 - t0) / 60).toFixed(1)} min`;
  chart.append(span);
}

function percentileRow(row) {
  return el("tr", { "data-stage": row.stage },
    el("td", { text: row.stage }), el("td", { class: "num count", text: String(row.count) }),
    el("td", { class: "num p50", text: fmt(row.p50_ms) }), el("td", { class: "num", text: fmt(row.p90_ms) }),
    el("td", { class: "num p99", text: fmt(row.p99_ms) }), el("td", { class: "num", text: fmt(row.max_ms) }));
}

function runningOf(sample) {
  return Object.values(sample.deployments || {}).reduce((sum, d) => sum + d.running, 0);
}

function startLines() {
  every(POLL_MS, async () => {
    const health = await getJSON("/api/health");
    document.getElementById("window").textContent = `(last ${fmt(health.window_s, 0)} s)`;
    fillTable(document.getElementById("cameras"), health.cameras.map((row) => el("tr", {
      class: row.camera_id ? "camera" : "line-total", "data-line": row.line_id, "data-camera": row.camera_id || "" },
      el("td", { text: row.line_id }), el("td", { text: row.camera_id || "all cameras" }),
      el("td", { class: "num frames", text: String(row.frames) }),
      el("td", { class: "num fps", text: fmt(row.frames_per_s, 2) }),
      el("td", { class: "num routed", text: row.routed_pct === null ? "–" : `${fmt(row.routed_pct)} %` }),
      el("td", { class: "num defects", text: row.defect_rate_pct === null ? "–" : `${fmt(row.defect_rate_pct)} %` }),
      el("td", { text: age(row.last_verdict_at) }))));
    fillTable(document.getElementById("stages"), health.stages.map(percentileRow));
    fillTable(document.getElementById("verdict-latency"), health.verdict_latency.map(percentileRow));
    const traces = health.feeds.traces;
    document.getElementById("stages-note").textContent = !health.stages.length
      ? (traces && traces.error) || "no spans yet (is telemetry.trace_file set?)" : "";
    const history = health.replicas;
    const last = history[history.length - 1];
    const now = document.getElementById("replica-now");
    if (last && last.deployments) {
      const running = runningOf(last);
      now.dataset.running = String(running);
      now.textContent = `${running} running (autoscaling between ${health.replica_bounds.min} and ${health.replica_bounds.max})` +
        Object.entries(last.deployments).map(([name, d]) => ` · ${name}: ${d.status}`).join("");
    } else {
      delete now.dataset.running;
      now.textContent = `unknown${last && last.error ? `: ${last.error}` : " (asking Ray Serve…)"}`;
    }
    replicaChart(document.getElementById("replica-chart"), history, health.replica_bounds);
    document.getElementById("feeds").replaceChildren(...Object.entries(health.feeds).map(([name, feed]) =>
      el("li", { class: feed.ok ? "ok" : "bad", text: `${name}: ${feed.ok ? "ok" : feed.error}` })));
    setStatus(`live · ${new Date().toLocaleTimeString()}`);
  });
}

// ------------------------------------------------------------------ one trace

async function startTrace() {
  const id = new URLSearchParams(location.search).get("id") || "";
  document.getElementById("trace-id").textContent = id;
  const { spans } = await getJSON(`/api/trace?id=${encodeURIComponent(id)}`);
  const note = document.getElementById("trace-note");
  if (!spans.length) {
    note.textContent = "no spans of this trace in the recent window of the trace file";
    return;
  }
  const t0 = Math.min(...spans.map((s) => s.start_ns));
  const t1 = Math.max(...spans.map((s) => s.end_ns));
  const total = Math.max(t1 - t0, 1);
  fillTable(document.getElementById("spans"), spans.map((s) => {
    const bar = el("div", { class: "bar" });
    bar.style.marginLeft = `${(100 * (s.start_ns - t0)) / total}%`;
    bar.style.width = `${Math.max((100 * (s.end_ns - s.start_ns)) / total, 0.5)}%`;
    const attributes = Object.entries(s.attributes || {}).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(",") : v}`);
    return el("tr", { "data-span": s.name },
      el("td", { text: s.name }), el("td", { text: s.service || "" }),
      el("td", { class: "num", text: fmt((s.start_ns - t0) / 1e6) }), el("td", { class: "num", text: fmt(s.duration_ms) }),
      el("td", { class: "wide" }, bar), el("td", { text: s.status }), el("td", { class: "attrs", text: attributes.join("  ") }));
  }));
  note.textContent = `${spans.length} spans over ${fmt(total / 1e6)} ms`;
}

// One page, three views chosen by the path (the server answers /, /lines and /trace with this page).
const VIEWS = {
  "/": { name: "gallery", title: "verdicts", start: startGallery },
  "/lines": { name: "lines", title: "lines and stages", start: startLines },
  "/trace": { name: "trace", title: "trace", start: () => startTrace().catch((error) => setStatus(error.message, false)) },
};

document.addEventListener("DOMContentLoaded", () => {
  const view = VIEWS[location.pathname] || VIEWS["/"];
  document.title = `JUDO Inspect · ${view.title}`;
  document.body.dataset.view = view.name;
  for (const node of document.querySelectorAll("main[data-view]")) node.hidden = node.dataset.view !== view.name;
  for (const node of document.querySelectorAll("[data-for]")) node.hidden = node.dataset.for !== view.name;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === view.name) link.setAttribute("aria-current", "page");
  }
  document.getElementById("logout").addEventListener("click", () => logout());
  loadSession().then(() => view.start()).catch((error) => setStatus(error.message, false));
});
