// rescam's page: plain JavaScript, no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  answer: null, image: 0, label: null, overlayUrl: null, live: null, watching: null, model: null, models: [],
  token: sessionStorage.getItem("rescam-token") || "",
  predictToken: sessionStorage.getItem("rescam-predict-token") || "",
};

function show(el, text) { el.textContent = text; el.hidden = !text; }
function pct(x) { return typeof x === "number" ? `${(100 * x).toFixed(1)}%` : "–"; }

function authHeaders(kind) {
  const token = kind === "admin" ? state.token : kind === "predict" ? state.predictToken : "";
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// kind: "admin" sends the admin token, "predict" the prediction token (when the service wants one)
async function api(path, options = {}, kind = null) {
  const headers = Object.assign({}, options.headers || {}, authHeaders(kind));
  const r = await fetch(path, Object.assign({}, options, { headers }));
  const type = r.headers.get("content-type") || "";
  const body = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

// An image or page behind a token: an <img src> or a link cannot send one, so fetch it as a blob.
async function blobUrl(path, kind) {
  const r = await fetch(path, { headers: authHeaders(kind) });
  if (!r.ok) {
    let message = `${r.status} ${r.statusText}`;
    try { message = (await r.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return URL.createObjectURL(await r.blob());
}

function button(text, onclick, className = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.className = className;
  b.onclick = onclick;
  return b;
}

// " int8" / " float16" after an architecture; nothing for float32, the usual case
const precisionTag = (p) => (p && p !== "float32" ? ` ${p}` : "");

// every route of the model the picker names
const modelPath = (rest = "") => `/v1/models/${encodeURIComponent(state.model)}${rest}`;

// the model picker: every model the service has; the header describes the one picked
async function loadHealth() {
  try {
    const index = await api("/v1/models");
    state.models = index.models;
    if (!state.model || !index.models.some((m) => m.name === state.model)) state.model = index.default;
    const pick = $("model-pick");
    pick.innerHTML = "";
    for (const m of index.models) {
      const o = document.createElement("option");
      o.value = m.name;
      o.textContent = `${m.name}${m.default ? " (default)" : ""}${m.state === "serving" ? "" : ` · ${m.state}`}`;
      pick.appendChild(o);
    }
    pick.value = state.model;
    pick.hidden = index.models.length < 2;
    const m = index.models.find((x) => x.name === state.model);
    $("model-info").textContent = !m ? "no model" : m.serving !== null || m.state === "standby"
      ? `${m.name} v${m.serving ?? m.deployed} · ${m.architecture}${precisionTag(m.precision)} · ${m.state}` +
        ` · ${m.labels ? m.labels.length : "?"} labels`
      : `${m.name}: ${m.state}${m.error ? `: ${m.error}` : ""}`;
  } catch (e) { $("model-info").textContent = `service unreachable: ${e.message}`; }
}

$("model-pick").addEventListener("change", (e) => {
  state.model = e.target.value;
  $("compare").hidden = true;
  $("card").hidden = true;
  loadHealth();
  if (state.token) loadAdmin();
});

// --- predictions -------------------------------------------------------------------------------

async function predict(files) {
  show($("error"), "");
  const form = new FormData();
  for (const f of files) form.append("file", f, f.name);
  try {
    // before the health check has named the models, the service's default model answers
    const path = state.model ? modelPath("/predict?top_k=5") : "/v1/predict?top_k=5";
    const answer = await api(path, { method: "POST", body: form }, "predict");
    state.answer = answer;
    const firstGood = answer.results.findIndex((r) => !r.error);
    const problems = answer.results.filter((r) => r.error).map((r) => `${r.filename}: ${r.error.message}`);
    show($("error"), problems.join("\n"));
    if (firstGood < 0) { $("result").hidden = true; return; }
    logAnswers(answer);
    renderTabs();
    selectImage(firstGood);
  } catch (e) {
    $("result").hidden = true;
    show($("error"), `Rejected: ${e.message}`);
  }
}

function renderTabs() {
  const tabs = $("images");
  tabs.innerHTML = "";
  state.answer.results.forEach((r, i) => { if (!r.error) tabs.appendChild(button(r.filename, () => selectImage(i))); });
  tabs.hidden = tabs.children.length < 2;
}

function selectImage(i) {
  state.image = i;
  const r = state.answer.results[i];
  const list = $("labels");
  list.innerHTML = "";
  // an unknown image's scores say which class it would be if it were one of them: greyed, and said so
  const guess = verdictClass(r.open_world) === "unknown";
  list.classList.toggle("guesses", guess);
  for (const p of r.predictions) {
    const li = document.createElement("li");
    li.dataset.label = p.label;
    const b = button("", () => selectLabel(p.label), "label-row");
    b.innerHTML = `<span class="name"></span><span class="bar"><span></span></span><span class="score"></span>`;
    const percent = (100 * p.score).toFixed(1);
    b.querySelector(".name").textContent = p.label;
    b.querySelector(".bar span").style.width = `${percent}%`;
    b.querySelector(".score").textContent = `${percent}%`;
    b.setAttribute("aria-label", `${p.label}, ${percent} percent` +
                   (guess ? ", if the image were one of the model's classes" : ""));
    li.appendChild(b);
    list.appendChild(li);
  }
  showVerdict(r);
  const m = state.answer.model;
  const rule = state.answer.box_rule;
  $("answered").textContent = `answered by ${m.name} v${m.version} (${m.architecture}${precisionTag(m.precision)}) on ${state.answer.provider}` +
    (m.test_time_flip ? " · each image averaged with its mirror" : "") +
    (m.test_time_zoom ? " · a second look around the object" : "") + (rule ? ` · boxes: ${rule.rule} (${rule.source})` : "");
  $("box-note").textContent = boxNote(rule);
  const t = r.timings;
  $("timings").textContent = `decode ${t.decode_ms} ms · queue ${t.queue_ms} ms · inference ${t.inference_ms} ms · ` +
    `CAM ${t.cam_ms} ms · batch ${t.batch_size} · total ${state.answer.total_ms} ms`;
  $("result").hidden = false;
  selectLabel(r.predictions[0].label);
}

// the open-world verdict: the labels are still shown, and the CAM of any of them still viewable
function verdictText(ow) {
  if (!ow || ow.unknown === null) return `not scored for the open world (${ow ? ow.method : "no verdict"})`;
  const how = `OOD score ${ow.ood_score.toFixed(4)}, threshold ${ow.threshold.toFixed(4)}; ${ow.method}`;
  return ow.unknown ? `Not one of this model's classes (${how}). ` +
      "Its best guesses follow, each scored as if the image were one of its classes, with their maps."
    : `Looks like the model's training data (${how}).`;
}

function verdictClass(ow) { return !ow || ow.unknown === null ? "unscored" : ow.unknown ? "unknown" : "known"; }
const VERDICT_WORDS = { unscored: "not scored", unknown: "none of its classes", known: "known" };

function showVerdict(r) {
  const v = $("verdict");
  v.textContent = verdictText(r.open_world);
  v.className = `verdict ${verdictClass(r.open_world)}`;
  v.hidden = false;
}

function logAnswers(answer) {
  state.log = state.log || [];
  for (const r of answer.results) {
    if (r.error) continue;
    const top = r.predictions[0];
    state.log.unshift({ file: r.filename, said: top.label, score: top.score, ow: r.open_world,
                        model: `${answer.model.name} v${answer.model.version}` });
  }
  state.log = state.log.slice(0, 200);
  renderLog();
}

function renderLog() {
  const body = $("answer-log").querySelector("tbody");
  body.innerHTML = "";
  const onlyUnknown = $("log-unknown").checked;
  for (const e of state.log || []) {
    const verdict = verdictClass(e.ow);
    if (onlyUnknown && verdict !== "unknown") continue;
    const tr = document.createElement("tr");
    tr.className = verdict;
    for (const text of [e.file, e.said, pct(e.score), VERDICT_WORDS[verdict],
                        e.ow ? e.ow.ood_score.toFixed(4) : "", e.model]) {
      tr.appendChild(Object.assign(document.createElement("td"), { textContent: text }));
    }
    body.appendChild(tr);
  }
  $("log-section").hidden = !(state.log || []).length;
}

$("log-unknown").addEventListener("change", renderLog);

function selectLabel(label) {
  state.label = label;
  for (const li of $("labels").children) {
    const selected = li.dataset.label === label;
    li.classList.toggle("selected", selected);
    li.firstChild.setAttribute("aria-pressed", String(selected));
  }
  refreshOverlay();
}

async function refreshOverlay() {
  const r = state.answer.results[state.image];
  const p = r.predictions.find((x) => x.label === state.label);
  if (!p || !p.cam_url) return;
  try {
    // a small picture's overlay is drawn at the page's size, so that its label does not cover it
    const url = await blobUrl(`${p.cam_url}&alpha=${$("alpha").value}&min_side=384`, "predict");
    if (state.overlayUrl) URL.revokeObjectURL(state.overlayUrl);
    state.overlayUrl = url;
    $("overlay").src = url;
    $("overlay").alt = `class-activation map of ${p.label} over ${r.filename}`;
  } catch (e) { show($("error"), `Overlay: ${e.message}`); }
}

$("file").addEventListener("change", (e) => e.target.files.length && predict(e.target.files));
$("alpha").addEventListener("change", () => state.answer && refreshOverlay());
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) predict(e.dataTransfer.files);
});

// --- admin: versions, reports, side by side, deploy, rollback ----------------------------------

async function loadAdmin() {
  show($("admin-error"), "");
  try {
    if (!state.model) await loadHealth();
    const [models, datasets] = await Promise.all([api(modelPath("/versions")), api("/v1/datasets", {}, "admin")]);
    $("versions-title").textContent = `Versions of ${models.name}`;
    state.live = models.deployed;
    const body = $("versions").querySelector("tbody");
    body.innerHTML = "";
    for (const v of models.versions.slice().reverse()) {
      const tr = document.createElement("tr");
      const m = v.metrics || {};
      tr.innerHTML = `<td>v${v.version}${v.deployed ? " (live)" : ""}</td><td></td><td>${pct(m.top1)}</td>` +
        `<td>${pct(m.box_rule ? m.gt_known_loc : (m.max_box_acc ?? m.gt_known_loc))}</td><td></td><td></td>`;
      tr.children[1].textContent = v.broken ? `broken: ${v.broken}` : ((v.architecture || "") + precisionTag(v.precision));
      tr.children[4].textContent = (v.created || "").replace("T", " ").slice(0, 16);
      const actions = tr.children[5];
      actions.appendChild(button("Card", () => showCard(v.version), "secondary"));
      if (v.report) actions.appendChild(button("Report", () => openReport(v.version), "secondary"));
      if (!v.deployed && state.live !== null) {
        actions.appendChild(button(`Compare with v${state.live}`, () => compareVersions(state.live, v.version), "secondary"));
      }
      if (!v.deployed && !v.broken) {
        actions.appendChild(button("Shadow", () => startTrial(v.version), "secondary"));
        actions.appendChild(button("Deploy", () => adminAction(modelPath(`/versions/${v.version}/deploy`))));
      }
      body.appendChild(tr);
    }
    await loadTrials();
    const select = $("dataset");
    select.innerHTML = `<option value="synthetic">synthetic (embedded)</option>`;
    for (const d of datasets.datasets) {
      const o = document.createElement("option");
      o.value = d.name;
      o.textContent = `${d.name} (${d.images} images, ${Object.keys(d.classes).length} classes)`;
      select.appendChild(o);
    }
    if (state.live !== null) await liveDefaults(state.live);
    $("admin-body").hidden = false;
    loadJobs();
  } catch (e) {
    $("admin-body").hidden = true;
    show($("admin-error"), e.message);
  }
}

// The retrain form shows what the live model uses; what is left empty, the data decide.
async function liveDefaults(version) {
  const detail = await api(modelPath(`/versions/${version}`));
  const card = detail.card || {};
  const side = card.preprocessing && card.preprocessing.crop;
  $("arch").placeholder = `auto (live model: ${detail.architecture || "?"})`;
  $("size").placeholder = side ? `auto from the images (live model: ${side} px)` : "auto: from the images";
}

async function showCard(version) {
  try {
    const detail = await api(modelPath(`/versions/${version}`));
    $("card").textContent = `v${version} card\n` + JSON.stringify(detail.card, null, 2);
    $("card").hidden = false;
  } catch (e) { show($("admin-error"), e.message); }
}

async function openReport(version) {
  try {
    const url = await blobUrl(modelPath(`/versions/${version}/report/index.html`), "admin");
    window.open(url, "_blank");
  } catch (e) { show($("admin-error"), e.message); }
}

function figureTable(f) {
  const m = f.metrics;
  const rows = [["top-1", pct(m.top1)], ["localization (served rule)", pct(m.gt_known_loc)],
    ["MaxBoxAcc", pct(m.max_box_acc)], ["box rule", f.box_rule], ["labels", f.labels],
    ["validation images", m.images ?? "–"], ["architecture", f.architecture || "–"],
    ["created", (f.created || "").replace("T", " ").slice(0, 16)]];
  const table = document.createElement("table");
  for (const [k, v] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = v;
  }
  return table;
}

async function reportFigures(column, f) {
  if (!f.report) {
    column.appendChild(Object.assign(document.createElement("p"), { className: "muted", textContent: "no report" }));
    return;
  }
  column.appendChild(button("Open the report", () => openReport(f.version), "secondary"));
  for (const name of ["curves", "confusion", "localization"]) {
    try {
      const img = document.createElement("img");
      img.alt = `v${f.version} ${name}`;
      img.className = "figure";
      img.src = await blobUrl(modelPath(`/versions/${f.version}/report/${name}.png`), "admin");
      column.appendChild(img);
    } catch (e) { /* a report without boxes has no localization figure */ }
  }
}

async function compareVersions(a, b) {
  show($("admin-error"), "");
  try {
    const c = await api(modelPath(`/compare/${a}/${b}`), {}, "admin");
    $("compare").hidden = false;
    $("compare-title").textContent = `v${a}${a === state.live ? " (live)" : ""} and v${b}${b === state.live ? " (live)" : ""}, side by side`;
    for (const [side, f] of [["a", c.a], ["b", c.b]]) {
      const column = $(`compare-${side}`);
      column.innerHTML = `<h4>v${f.version}${f.version === state.live ? " (live)" : ""}</h4>`;
      column.appendChild(figureTable(f));
      await reportFigures(column, f);
      $(`compare-head-${side}`).textContent = `v${f.version}`;
    }
    const actions = $("compare-actions");
    actions.innerHTML = "";
    const candidate = b === state.live ? a : b;
    actions.appendChild(button(`Deploy v${candidate}`, async () => { await adminAction(modelPath(`/versions/${candidate}/deploy`)); compareVersions(a, b); }));
    if (b === state.live || a === state.live) actions.appendChild(document.createTextNode(` v${state.live} serves now.`));
    const body = $("compare-images").querySelector("tbody");
    body.innerHTML = "";
    for (const row of c.images) {
      const tr = body.insertRow();
      tr.insertCell().textContent = `${row.truth} (${row.group})`;
      for (const side of ["a", "b"]) {
        const ans = row[side];
        const cell = tr.insertCell();
        const img = Object.assign(document.createElement("img"), { src: ans.overlay, className: "shot",
          alt: `v${c[side].version} says ${ans.said}` });
        cell.appendChild(img);
        cell.appendChild(Object.assign(document.createElement("div"), { className: "small",
          textContent: `${ans.said} ${pct(ans.score)}` + (ans.iou !== null ? ` · IoU ${ans.iou.toFixed(2)}` : "") }));
      }
    }
    if (!c.images.length) body.innerHTML = "<tr><td colspan='3'>neither version has a report with validation images</td></tr>";
    $("compare").scrollIntoView();
  } catch (e) { show($("admin-error"), e.message); }
}

// --- shadow trials -------------------------------------------------------------------------------

function ms(x) { return typeof x === "number" ? x.toFixed(1) : "–"; }

async function loadTrials() {
  const { trials } = await api(modelPath("/trials"), {}, "admin");
  const body = $("trials").querySelector("tbody");
  body.innerHTML = "";
  for (const t of trials) {
    const f = t.figures, tr = document.createElement("tr");
    tr.innerHTML = `<td>v${t.version} beside v${t.live_version ?? "–"} (${pct(t.share)})</td><td></td>` +
      `<td>${f.images} / ${t.target}${f.failed ? `, ${f.failed} failed` : ""}${t.skipped ? `, ${t.skipped} skipped` : ""}</td>` +
      `<td>${pct(f.top1_agreement)}</td><td>${f.box_iou_median === null ? "–" : f.box_iou_median.toFixed(2)}</td>` +
      `<td>${ms(f.live_ms_p50)} / ${ms(f.candidate_ms_p50)}</td>` +
      `<td>${pct(f.live_unknown_rate)} / ${pct(f.candidate_unknown_rate)}</td><td></td>`;
    tr.children[1].textContent = t.state + (t.note ? `: ${t.note}` : "");
    tr.children[1].title = f.last_error || "";
    const actions = tr.children[7];
    if (t.state !== "promoted") {
      actions.appendChild(button(`Promote v${t.version}`, () => adminAction(modelPath(`/trials/${t.id}/promote`))));
    }
    if (t.state === "running" || t.state === "complete") {
      actions.appendChild(button("Stop", () => adminAction(modelPath(`/trials/${t.id}/stop`)), "secondary"));
    }
    body.appendChild(tr);
  }
  if (!trials.length) body.innerHTML = "<tr><td colspan='8'>no trials of this model yet</td></tr>";
  clearTimeout(state.trialTimer);  // a running trial's figures grow with live traffic
  if (trials.some((t) => t.state === "running")) state.trialTimer = setTimeout(() => loadTrials().catch(() => {}), 3000);
}

async function startTrial(version) {
  show($("admin-error"), "");
  try {
    await api(modelPath("/trials"), {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ version, share: Number($("trial-share").value), samples: Number($("trial-samples").value) }),
    }, "admin");
    await loadTrials();
  } catch (e) { show($("admin-error"), e.message); }
}

async function adminAction(path) {
  try {
    await api(path, { method: "POST" }, "admin");
    await Promise.all([loadAdmin(), loadHealth()]);
  } catch (e) { show($("admin-error"), e.message); }
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("token").value;
  state.predictToken = $("predict-token").value;
  sessionStorage.setItem("rescam-token", state.token);
  sessionStorage.setItem("rescam-predict-token", state.predictToken);
  loadAdmin();
});
$("rollback").addEventListener("click", () => adminAction(modelPath("/rollback")));

// --- jobs --------------------------------------------------------------------------------------

$("job-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  show($("admin-error"), "");
  try {
    let dataset = $("dataset").value;
    const zip = $("zip").files[0];
    if (zip) {
      dataset = $("zip-name").value || zip.name.replace(/\.zip$/i, "").replace(/[^A-Za-z0-9_.-]/g, "_");
      await api(`/v1/datasets?name=${encodeURIComponent(dataset)}`,
        { method: "POST", body: zip, headers: { "Content-Type": "application/zip" } }, "admin");
    }
    const job = await api("/v1/jobs", {
      method: "POST", headers: { "Content-Type": "application/json" },
      // what the user leaves empty, the data decide (the auto recipe: size from the images, the steps)
      body: JSON.stringify(Object.fromEntries(Object.entries({
        dataset, model: $("job-model").value || null, architecture: $("arch").value || null, image_size: Number($("size").value) || null,
        epochs: Number($("epochs").value) || null, deploy: $("deploy").checked,
      }).filter(([, v]) => v !== null))),
    }, "admin");
    watchJob(job.id);
  } catch (err) { show($("admin-error"), err.message); }
});

async function loadJobs() {
  const { jobs } = await api("/v1/jobs", {}, "admin");
  const body = $("jobs").querySelector("tbody");
  body.innerHTML = "";
  for (const job of jobs) {
    const tr = body.insertRow();
    const r = job.result;
    for (const text of [job.id, job.state, job.request.model || "default", job.request.dataset,
      new Date(1000 * (job.started || job.created)).toLocaleString(),
      r ? `v${r.version} ${r.deployed ? "deployed" : "not deployed"}` : (job.error || "").slice(0, 80)]) {
      tr.insertCell().textContent = text;
    }
    tr.insertCell().appendChild(button("Watch", () => watchJob(job.id), "secondary"));
  }
}

function drawCurve(curves) {
  const svg = $("job-curve");
  const w = 600, h = 160, pad = 24;
  const steps = curves.step.concat(curves.val_step);
  if (!curves.step.length) { svg.innerHTML = ""; return; }
  const maxStep = Math.max(...steps, 1);
  const maxLoss = Math.max(...curves.loss, ...curves.val_loss.filter((v) => v !== null), 1e-9);
  const x = (s) => pad + (w - 2 * pad) * s / maxStep;
  const y = (v, top) => h - pad - (h - 2 * pad) * v / top;
  const line = (xs, ys, top) => xs.map((s, i) => `${x(s).toFixed(1)},${y(ys[i], top).toFixed(1)}`).join(" ");
  const dots = (xs, ys, top, colour) => xs.map((s, i) =>  // a curve of one point still shows
    `<circle cx="${x(s).toFixed(1)}" cy="${y(ys[i], top).toFixed(1)}" r="2.5" fill="${colour}"/>`).join("");
  const top1 = curves.val_top1.map((v) => v ?? 0);
  svg.innerHTML =
    `<polyline fill="none" stroke="#2f6fdb" stroke-width="1.5" points="${line(curves.step, curves.loss, maxLoss)}"/>` +
    `<polyline fill="none" stroke="#c2410c" stroke-width="2" points="${line(curves.val_step, top1, 1)}"/>` +
    dots(curves.val_step, top1, 1, "#c2410c") + (curves.step.length < 3 ? dots(curves.step, curves.loss, maxLoss, "#2f6fdb") : "") +
    `<text x="${pad}" y="14" font-size="12" fill="#2f6fdb">training loss (max ${maxLoss.toFixed(2)})</text>` +
    `<text x="${w / 2}" y="14" font-size="12" fill="#c2410c">validation top-1 (0 to 100%)</text>` +
    `<text x="${w - pad}" y="${h - 6}" font-size="11" text-anchor="end" fill="#6b7280">step ${maxStep}</text>`;
}

// how the answer's box was drawn (app.cam.BoxRule): which map, and a region or the heat's spread
function boxNote(rule) {
  const map = rule && rule.map === "pc1" ? "the model's foreground map, where its features say an object is" : null;
  if (rule && rule.name === "spread") {
    return `The box (black and white): centred on ${map || "the label's CAM"}, ${rule.value} standard deviations ` +
      "of its spread either way" + (map ? "; every label gets the same box. The colours are the selected label's CAM." : ".");
  }
  return map
    ? `The box (black and white): the largest region of ${map}; every label gets the same box. ` +
      "The colours are the selected label's CAM."
    : "The box: the largest region the model's box rule keeps (black and white).";
}

// what the job's plan chose (training/plan.py): the network, the steps and what set them, the device
function planText(plan) {
  if (!plan) return "";
  const boxes = plan.boxes_fitted ? ` · CAMs fitted to ${plan.boxes_fitted} boxes` : "";
  const eta = plan.expected_s ? ` · about ${Math.ceil(plan.expected_s / 60)} min` : "";
  // where the budget would have cut a model still far from its epochs, it stretched (training/plan.py)
  const stretched = plan.stretched_budget_s ?
    ` (the time budget stretched to ${Math.round(plan.stretched_budget_s / 60)} min for them)` : "";
  // where its weights began: scratch, the shipped shapes model's (training/weights.py) or a file
  const start = plan.start && plan.start !== "scratch" ? ` from ${plan.start}` : "";
  return `plan: ${plan.architecture || "the network"}${start} at ${plan.image_size} px · ${plan.steps} steps ` +
    `(set by ${plan.limited_by})${stretched} · ${plan.augment}${boxes} · ${plan.device || "cpu"} ` +
    `${plan.precision || "float32"}${eta}`;
}

// whether validation top-1 still rose at the end (training/plan.py::learning_at_the_end): then a
// longer time_budget_s buys more; on a plateau it does not
function endText(p) {
  if (p.still_learning === undefined) return "";
  const gain = `${p.late_gain >= 0 ? "+" : ""}${(100 * p.late_gain).toFixed(1)} points over its last ${p.late_epochs} epochs`;
  return p.still_learning
    ? `still learning when its steps ran out (validation top-1 ${gain}): a longer time_budget_s would likely add more`
    : `validation top-1 had levelled off (${gain}): a longer budget would add little`;
}

async function watchJob(id) {
  state.watching = id;
  $("job").hidden = false;
  $("job-result").textContent = "";
  $("job-cancel").onclick = async () => {
    try { await api(`/v1/jobs/${id}`, { method: "DELETE" }, "admin"); } catch (e) { show($("admin-error"), e.message); }
  };
  while (state.watching === id) {
    let job, curves, log;
    try {
      [job, curves, log] = await Promise.all([api(`/v1/jobs/${id}`, {}, "admin"), api(`/v1/jobs/${id}/curves`, {}, "admin"),
        api(`/v1/jobs/${id}/logs?tail=4000`, {}, "admin")]);
    } catch (e) { show($("admin-error"), e.message); return; }
    const p = job.progress || {};
    $("job-state").textContent = `job ${id}: ${job.state}` + (p.step ? ` · epoch ${p.epoch} · step ${p.step}/${p.total_steps}` +
      ` · loss ${Number(p.loss).toFixed(3)}` + (p.val_top1 !== undefined ? ` · val top-1 ${pct(p.val_top1)}` : "") +
      (p.eta_s ? ` · about ${Math.ceil(p.eta_s / 60)} min left` : "") : "");
    $("job-progress").value = p.total_steps ? p.step / p.total_steps : 0;
    $("job-plan").textContent = [planText(p.plan), endText(p)].filter(Boolean).join(" · ");
    drawCurve(curves);
    $("job-log").textContent = log;
    const done = ["succeeded", "failed", "cancelled", "interrupted"].includes(job.state);
    $("job-cancel").hidden = done;
    if (done) {
      const r = job.result;
      $("job-result").textContent = !r ? (job.error || job.state)
        : r.deployed ? `v${r.version}${r.model ? ` of ${r.model}` : ""} · gate passed (${r.gate.reason}) · deployed`
        : `v${r.version} · gate ${r.gate && r.gate.passed ? "passed" : "failed"} · not deployed: ${r.not_deployed_because}`;
      loadAdmin();
      loadHealth();
      return;
    }
    await new Promise((res) => setTimeout(res, 1000));
  }
}

loadHealth();
if (state.token || state.predictToken) {
  $("token").value = state.token;
  $("predict-token").value = state.predictToken;
  if (state.token) loadAdmin();
}
