// The item browser: a task's items filtered by label source, label, label-error flag, annotator and
// status, a page at a time; open one to see its history and correct its label (a correction is
// appended: labels are never overwritten). Filters and the open item live in the address, so a
// label-error flag on the dashboard links straight to its item.
"use strict";

const PAGE = 50;
const NAME_KEY = "labelloop.annotator";
const GUEST_KEY = "labelloop.guest";
const params = new URLSearchParams(location.search);
const taskId = Number(params.get("task"));
const FILTERS = ["source", "label", "suspect", "annotator", "status"];
const B = { task: null, me: null, offset: Number(params.get("offset") || 0), open: Number(params.get("item")) || null, page: null, images: new Map(), selected: new Set() };
const $ = (id) => document.getElementById(id);

function toast(message) {
  const el = $("toast");
  el.textContent = message;
  el.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("show"), 4000);
}

function isText() { return B.task.category.startsWith("text"); }

function annotator() {
  if (B.me && B.me.role === "annotator") return B.me.annotator;
  return $("annotator").value.trim() || localStorage.getItem(GUEST_KEY) || null;
}

function filters() {
  const form = $("filters");
  const out = {};
  for (const name of FILTERS) {
    const v = form.elements[name].value.trim();
    if (v) out[name] = v;
  }
  return out;
}

// The address says what is shown: filters, page and open item (so it can be shared or linked).
function remember() {
  const q = new URLSearchParams({ task: String(taskId), ...filters() });
  if (B.offset) q.set("offset", String(B.offset));
  if (B.open) q.set("item", String(B.open));
  history.replaceState(null, "", `items.html?${q}`);
}

function image(itemId) {
  if (!B.images.has(itemId)) B.images.set(itemId, api.blobUrl(`/api/v1/tasks/${taskId}/items/${itemId}/content`));
  return B.images.get(itemId);
}

function sourceChip(it) {
  if (it.label_source === "human") return '<span class="chip good">person</span>';
  if (it.label_source === "model") return `<span class="chip model">model-time${it.model_version}${it.score === null ? "" : ` · ${Math.round(100 * it.score)}%`}</span>`;
  return '<span class="chip">none</span>';
}

async function loadList() {
  remember();
  const q = new URLSearchParams({ offset: String(B.offset), limit: String(PAGE), ...filters() });
  let page;
  try {
    page = await api.get(`/api/v1/tasks/${taskId}/items?${q}`);
  } catch (err) {
    $("list").innerHTML = `<p class="error">${esc(err.message)}</p>`;
    return;
  }
  B.page = page;
  if (!page.items.length) {
    $("list").innerHTML = '<p class="muted" data-testid="no-items">No item matches these filters.</p>';
  } else {
    $("list").innerHTML = `<table class="items" data-testid="items"><thead><tr><th>item</th><th>${isText() ? "text" : "image"}</th><th>label</th><th>from</th><th>annotators</th><th></th></tr></thead><tbody>
      ${page.items.map((it) => `<tr data-id="${it.id}" data-testid="row-${it.id}" class="${it.id === B.open ? "active" : ""}">
        <td>#${it.id}</td>
        <td class="what">${it.status === "failed" ? `<span class="error" title="${esc(it.error || "")}">unreadable: ${esc(it.preview.split(/[\\/]/).pop())}</span>`
          : isText() ? esc(it.preview) : `<img class="thumb" data-thumb="${it.id}" alt="">`}</td>
        <td data-testid="row-label">${esc((it.labels || []).join(", ")) || '<span class="muted">–</span>'}</td>
        <td>${sourceChip(it)}</td>
        <td class="muted">${esc(it.annotators.join(", "))}</td>
        <td>${it.suspect ? '<span class="chip bad" title="the model confidently disagrees with this label">flagged</span>' : ""}</td></tr>`).join("")}</tbody></table>`;
    for (const tr of $("list").querySelectorAll("tr[data-id]")) tr.onclick = () => openItem(Number(tr.dataset.id));
    if (!isText()) {
      for (const img of $("list").querySelectorAll("img[data-thumb]")) {
        image(Number(img.dataset.thumb)).then((u) => { img.src = u; }).catch(() => null);
      }
    }
  }
  const last = Math.min(page.offset + page.items.length, page.total);
  $("range").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "0 items";
  $("prev").disabled = page.offset === 0;
  $("next").disabled = last >= page.total;
}

async function openItem(itemId) {
  B.open = itemId;
  remember();
  for (const tr of document.querySelectorAll("tr[data-id]")) tr.classList.toggle("active", Number(tr.dataset.id) === itemId);
  const box = $("item");
  let it;
  try {
    it = await api.get(`/api/v1/tasks/${taskId}/items/${itemId}`);
  } catch (err) {
    box.innerHTML = `<p class="error">${esc(err.message)}</p>`;
    return;
  }
  if (B.open !== itemId) return;
  B.selected = new Set(it.labels || []);
  const multi = B.task.extra === "multi-label";
  const history = it.annotations.slice().reverse().map((a) => `<tr><td>r${a.revision}</td>
      <td>${a.labels === null ? '<span class="muted">retracted</span>' : esc(a.labels.join(", ")) || '<span class="muted">no label</span>'}</td>
      <td>${a.source === "model" ? `<span class="chip model">model-time${a.model_version}</span>` : esc(a.annotator || "(no name)")}</td>
      <td class="muted">${esc(ago(a.created_at))}</td></tr>`).join("");
  box.innerHTML = `<h2 data-testid="item-title">Item #${it.id}${it.external_id ? ` <span class="muted">${esc(it.external_id)}</span>` : ""}</h2>
    <div id="item-content" data-testid="item-content">${it.status === "failed" ? `<p class="error">unreadable: ${esc(it.error || "")}</p><p class="muted">${esc(it.data)}</p>` : '<span class="muted">loading…</span>'}</div>
    <p data-testid="item-label">Label: <b>${esc((it.labels || []).join(", ")) || "none"}</b> ${it.label_source ? `(${it.label_source === "human" ? "from a person" : "from the model"})` : ""}</p>
    ${it.prediction ? `<p class="muted">model-time${it.prediction.model_version} suggests ${esc(it.prediction.labels.join(", "))} (${Math.round(100 * it.prediction.score)}%)</p>` : ""}
    <h3>${it.labels ? "Correct it" : "Label it"}${multi ? " (toggle, then save)" : ""}</h3>
    <div class="choices" id="relabel" data-testid="relabel">${B.task.labels.map((l) => `<button class="choice${B.selected.has(l) ? " selected" : ""}" data-label="${esc(l)}" data-testid="relabel-${esc(l)}">${esc(l)}</button>`).join("")}
      ${multi ? '<button class="primary" id="relabel-save" data-testid="relabel-save">Save</button>' : ""}</div>
    <h3>History <span class="muted">(newest first; labels are never overwritten)</span></h3>
    <table data-testid="history"><tbody>${history || '<tr><td class="muted">no label yet</td></tr>'}</tbody></table>`;
  for (const b of box.querySelectorAll("#relabel [data-label]")) {
    b.onclick = (ev) => {
      if (ev.detail > 1) return; // the second click of a double-click
      const label = b.dataset.label;
      if (!multi) { relabel(it, [label]); return; }
      if (B.selected.has(label)) B.selected.delete(label); else B.selected.add(label);
      b.classList.toggle("selected", B.selected.has(label));
    };
  }
  if ($("relabel-save")) $("relabel-save").onclick = () => relabel(it, [...B.selected]);
  if (it.status === "failed") return;
  const content = $("item-content");
  if (isText()) {
    content.innerHTML = '<div class="text"></div>';
    content.firstChild.textContent = it.data;
  } else {
    image(it.id).then((u) => {
      if (B.open !== it.id) return;
      content.innerHTML = `<img alt="item ${it.id}" data-testid="item-image">`;
      content.firstChild.src = u;
    }).catch((err) => { content.innerHTML = `<p class="error">${esc(err.message)}</p>`; });
  }
}

async function relabel(it, labels) {
  const same = it.labels && [...it.labels].sort().join("\n") === [...labels].sort().join("\n");
  if (same) { toast("that is its label already"); return; }
  const annotation = { item_id: it.id, labels, shown_none: true };
  const name = annotator();
  if (name) annotation.annotator = name;
  try {
    await api.post(`/api/v1/tasks/${taskId}/annotations`, { annotations: [annotation] });
    toast(`item #${it.id} ${it.labels ? "corrected" : "labelled"}: ${labels.join(", ") || "no label"}`);
  } catch (err) {
    toast(`not saved: ${err.message}`);
    return;
  }
  await Promise.all([openItem(it.id), loadList()]);
}

async function start() {
  if (!taskId) {
    $("list").innerHTML = '<p>No task chosen. <a href="index.html">Pick one on the dashboard.</a></p>';
    return;
  }
  $("back").href = `index.html#task=${taskId}`;
  $("label-link").href = `label.html?task=${taskId}`;
  const input = $("annotator");
  input.value = localStorage.getItem(NAME_KEY) || "";
  input.placeholder = `${localStorage.getItem(GUEST_KEY) || "guest"} (your name?)`;
  input.oninput = () => localStorage.setItem(NAME_KEY, input.value.trim());
  try {
    [B.task, B.me] = await Promise.all([api.get(`/api/v1/tasks/${taskId}`), api.me()]);
  } catch (err) {
    $("list").innerHTML = `<p class="error">${esc(err.message)}</p>`;
    return;
  }
  if (B.me.role === "annotator") { input.value = B.me.annotator; input.readOnly = true; }
  $("task-name").textContent = B.task.name;
  document.title = `labelloop · items of ${B.task.name}`;
  const form = $("filters");
  form.elements.label.innerHTML += B.task.labels.map((l) => `<option value="${esc(l)}">${esc(l)}</option>`).join("");
  for (const name of FILTERS) {
    if (params.get(name)) form.elements[name].value = params.get(name);
    form.elements[name].onchange = () => { B.offset = 0; loadList(); };
  }
  form.onsubmit = (ev) => { ev.preventDefault(); B.offset = 0; loadList(); };
  api.get(`/api/v1/tasks/${taskId}/progress`).then((p) => {
    $("annotators").innerHTML = p.annotators.filter((a) => a.annotator).map((a) => `<option value="${esc(a.annotator)}">`).join("");
  }).catch(() => null);
  $("prev").onclick = () => { B.offset = Math.max(0, B.offset - PAGE); loadList(); };
  $("next").onclick = () => { B.offset += PAGE; loadList(); };
  await loadList();
  if (B.open) openItem(B.open);
}

start();
