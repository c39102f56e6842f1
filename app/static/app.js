// rescam's page: plain JavaScript, no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { answer: null, image: 0, label: null, token: sessionStorage.getItem("rescam-token") || "" };

function show(el, text) { el.textContent = text; el.hidden = !text; }

async function api(path, options = {}, admin = false) {
  const headers = Object.assign({}, options.headers || {});
  if (admin && state.token) headers.Authorization = `Bearer ${state.token}`;
  const r = await fetch(path, Object.assign({}, options, { headers }));
  const type = r.headers.get("content-type") || "";
  const body = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

async function loadHealth() {
  try {
    const h = await api("/healthz");
    $("model-info").textContent = h.model
      ? `${h.model.name} v${h.model.version} · ${h.model.architecture} · ${h.provider}`
      : `no model loaded: ${h.load_error || ""}`;
  } catch (e) { $("model-info").textContent = `service unreachable: ${e.message}`; }
}

// --- predictions -------------------------------------------------------------------------------

async function predict(files) {
  show($("error"), "");
  const form = new FormData();
  for (const f of files) form.append("file", f, f.name);
  try {
    const answer = await api("/v1/predict?top_k=5", { method: "POST", body: form });
    state.answer = answer;
    const firstGood = answer.results.findIndex((r) => !r.error);
    const problems = answer.results.filter((r) => r.error).map((r) => `${r.filename}: ${r.error.message}`);
    show($("error"), problems.join("\n"));
    if (firstGood < 0) { $("result").hidden = true; return; }
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
  state.answer.results.forEach((r, i) => {
    if (r.error) return;
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = r.filename;
    b.onclick = () => selectImage(i);
    tabs.appendChild(b);
  });
  tabs.hidden = tabs.children.length < 2;
}

function selectImage(i) {
  state.image = i;
  const r = state.answer.results[i];
  const list = $("labels");
  list.innerHTML = "";
  for (const p of r.predictions) {
    const li = document.createElement("li");
    li.dataset.label = p.label;
    li.innerHTML = `<span class="name"></span><span class="bar"><span></span></span><span class="score"></span>`;
    li.querySelector(".name").textContent = p.label;
    li.querySelector(".bar span").style.width = `${(100 * p.score).toFixed(1)}%`;
    li.querySelector(".score").textContent = `${(100 * p.score).toFixed(1)}%`;
    li.onclick = () => selectLabel(p.label);
    list.appendChild(li);
  }
  const m = state.answer.model;
  const rule = state.answer.box_rule;
  $("answered").textContent = `answered by ${m.name} v${m.version} (${m.architecture}) on ${state.answer.provider}` +
    (rule ? ` · boxes: ${rule.rule} (${rule.source})` : "");
  const t = r.timings;
  $("timings").textContent = `decode ${t.decode_ms} ms · queue ${t.queue_ms} ms · inference ${t.inference_ms} ms · ` +
    `CAM ${t.cam_ms} ms · batch ${t.batch_size} · total ${state.answer.total_ms} ms`;
  $("result").hidden = false;
  selectLabel(r.predictions[0].label);
}

function selectLabel(label) {
  state.label = label;
  for (const li of $("labels").children) li.classList.toggle("selected", li.dataset.label === label);
  refreshOverlay();
}

function refreshOverlay() {
  const r = state.answer.results[state.image];
  const p = r.predictions.find((x) => x.label === state.label);
  if (!p || !p.cam_url) return;
  $("overlay").src = `${p.cam_url}&alpha=${$("alpha").value}`;
}

$("file").addEventListener("change", (e) => e.target.files.length && predict(e.target.files));
$("alpha").addEventListener("input", () => state.answer && refreshOverlay());
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) predict(e.dataTransfer.files);
});

// --- admin: versions, deploy, rollback, retrain ---------------------------------------------------

function pct(x) { return typeof x === "number" ? `${(100 * x).toFixed(1)}%` : "–"; }

async function loadAdmin() {
  show($("admin-error"), "");
  try {
    const [models, datasets] = await Promise.all([api("/v1/models"), api("/v1/datasets", {}, true)]);
    const body = $("versions").querySelector("tbody");
    body.innerHTML = "";
    for (const v of models.versions.slice().reverse()) {
      const tr = document.createElement("tr");
      const m = v.metrics || {};
      tr.innerHTML = `<td>v${v.version}${v.deployed ? " (live)" : ""}</td><td></td><td>${pct(m.top1)}</td>` +
        `<td>${pct(m.box_rule ? m.gt_known_loc : (m.max_box_acc ?? m.gt_known_loc))}</td><td></td><td></td>`;
      tr.children[1].textContent = v.architecture || "";
      tr.children[4].textContent = (v.created || "").replace("T", " ").slice(0, 16);
      const cardButton = document.createElement("button");
      cardButton.type = "button";
      cardButton.textContent = "Card";
      cardButton.className = "secondary";
      cardButton.onclick = () => showCard(v.version);
      tr.children[5].appendChild(cardButton);
      if (!v.deployed) {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = "Deploy";
        b.onclick = () => adminAction(`/v1/models/${v.version}/deploy`);
        tr.children[5].appendChild(b);
      }
      body.appendChild(tr);
    }
    const select = $("dataset");
    select.innerHTML = `<option value="synthetic">synthetic (embedded)</option>`;
    for (const d of datasets.datasets) {
      const o = document.createElement("option");
      o.value = d.name;
      o.textContent = `${d.name} (${d.images} images, ${Object.keys(d.classes).length} classes)`;
      select.appendChild(o);
    }
    $("admin-body").hidden = false;
  } catch (e) {
    $("admin-body").hidden = true;
    show($("admin-error"), e.message);
  }
}

async function showCard(version) {
  try {
    const detail = await api(`/v1/models/${version}`);
    $("card").textContent = `v${version} card\n` + JSON.stringify(detail.card, null, 2);
    $("card").hidden = false;
  } catch (e) { show($("admin-error"), e.message); }
}

async function adminAction(path) {
  try {
    await api(path, { method: "POST" }, true);
    await Promise.all([loadAdmin(), loadHealth()]);
  } catch (e) { show($("admin-error"), e.message); }
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("token").value;
  sessionStorage.setItem("rescam-token", state.token);
  loadAdmin();
});
$("rollback").addEventListener("click", () => adminAction("/v1/models/rollback"));

$("job-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  show($("admin-error"), "");
  try {
    let dataset = $("dataset").value;
    const zip = $("zip").files[0];
    if (zip) {
      dataset = $("zip-name").value || zip.name.replace(/\.zip$/i, "").replace(/[^A-Za-z0-9_.-]/g, "_");
      await api(`/v1/datasets?name=${encodeURIComponent(dataset)}`,
        { method: "POST", body: zip, headers: { "Content-Type": "application/zip" } }, true);
    }
    const job = await api("/v1/jobs", {
      method: "POST", headers: { "Content-Type": "application/json" },
      // what the user leaves empty, the data decide (the auto recipe: size from the images, the steps)
      body: JSON.stringify(Object.fromEntries(Object.entries({
        dataset, architecture: $("arch").value || null, image_size: Number($("size").value) || null,
        epochs: Number($("epochs").value) || null, deploy: $("deploy").checked,
      }).filter(([, v]) => v !== null))),
    }, true);
    watchJob(job.id);
  } catch (err) { show($("admin-error"), err.message); }
});

async function watchJob(id) {
  $("job").hidden = false;
  $("job-result").textContent = "";
  for (;;) {
    let job;
    try { job = await api(`/v1/jobs/${id}`, {}, true); } catch (e) { show($("admin-error"), e.message); return; }
    const p = job.progress || {};
    $("job-state").textContent = `job ${id}: ${job.state}` + (p.step ? ` · epoch ${p.epoch} · step ${p.step}/${p.total_steps}` +
      ` · loss ${Number(p.loss).toFixed(3)}` + (p.val_top1 !== undefined ? ` · val top-1 ${pct(p.val_top1)}` : "") : "");
    $("job-progress").value = p.total_steps ? p.step / p.total_steps : 0;
    if (["succeeded", "failed", "cancelled", "interrupted"].includes(job.state)) {
      const r = job.result;
      $("job-result").textContent = r
        ? `v${r.version} · gate ${r.gate.passed ? "passed" : "failed"} (${r.gate.reason}) · ${r.deployed ? "deployed" : "not deployed"}`
        : (job.error || job.state);
      loadAdmin();
      loadHealth();
      return;
    }
    await new Promise((res) => setTimeout(res, 1000));
  }
}

loadHealth();
if (state.token) { $("token").value = state.token; loadAdmin(); }
