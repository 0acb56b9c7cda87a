// The labelling page: the next item with the model's pre-label highlighted; number keys pick a
// label, Enter accepts the pre-label, and the next item shows at once (labels are sent in the
// background, in order). It works before any model exists, and says when a new version serves.
"use strict";

const taskId = Number(new URLSearchParams(location.search).get("task"));
const S = {
  task: null, queue: [], current: null, selected: new Set(), sent: new Set(),
  served: undefined, session: 0, accepted: 0, loading: null, chain: Promise.resolve(),
  images: new Map(),
};
const multi = () => S.task && S.task.extra === "multi-label";

function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("show"), 4000);
}

function keyOf(i) { return i < 9 ? String(i + 1) : i === 9 ? "0" : ""; }

function imageUrl(item) {
  if (!S.images.has(item.id)) {
    S.images.set(item.id, api.blobUrl(`/api/v1/tasks/${taskId}/items/${item.id}/content`));
  }
  return S.images.get(item.id);
}

function isText() { return S.task.category.startsWith("text"); }

async function refill() {
  if (S.loading) return S.loading;
  S.loading = (async () => {
    try {
      const next = await api.get(`/api/v1/tasks/${taskId}/next?limit=12`);
      const have = new Set([...S.queue.map((i) => i.id), S.current && S.current.id]);
      for (const it of next.items) {
        if (!S.sent.has(it.id) && !have.has(it.id)) S.queue.push(it);
      }
      if (!isText()) S.queue.slice(0, 4).forEach(imageUrl);
    } catch (err) {
      toast(err.message);
    } finally {
      S.loading = null;
    }
  })();
  return S.loading;
}

function prediction(item) {
  const p = item && item.prediction;
  return p && p.status === "ok" ? p : null;
}

function renderChoices() {
  const el = document.getElementById("choices");
  const p = prediction(S.current);
  const suggested = new Set(p ? p.labels : []);
  el.innerHTML = S.task.labels.map((label, i) => {
    const score = p && p.scores ? p.scores[label] : null;
    const cls = ["choice", suggested.has(label) ? "suggested" : "", S.selected.has(label) ? "selected" : ""].join(" ");
    return `<button class="${cls}" data-label="${esc(label)}" data-testid="choice-${esc(label)}">
      ${keyOf(i) ? `<kbd>${keyOf(i)}</kbd>` : ""}${esc(label)}
      ${suggested.has(label) && score !== null && score !== undefined ? `<span class="score">${Math.round(100 * score)}%</span>` : ""}</button>`;
  }).join("");
  for (const b of el.querySelectorAll("button")) b.onclick = () => pick(b.dataset.label);
}

async function show() {
  const stage = document.getElementById("stage");
  const pre = document.getElementById("prelabel");
  if (!S.current) {
    stage.innerHTML = `<div data-testid="all-done"><h2>Nothing left to label.</h2><p class="muted">Every item of this task has a label from a person. <a href="index.html#task=${taskId}">Back to the dashboard</a></p></div>`;
    pre.textContent = "";
    document.getElementById("choices").innerHTML = "";
    document.getElementById("hint").textContent = "";
    return;
  }
  const item = S.current;
  const p = prediction(item);
  S.selected = new Set(multi() && p ? p.labels : []);
  stage.dataset.item = item.id;
  if (isText()) {
    stage.innerHTML = `<div class="text" data-testid="item-text"></div>`;
    stage.firstChild.textContent = item.data;
  } else {
    stage.innerHTML = `<img alt="item ${item.id}" data-testid="item-image">`;
    const img = stage.firstChild;
    imageUrl(item).then((url) => { if (S.current === item) img.src = url; })
      .catch((err) => { if (S.current === item) stage.innerHTML = `<p class="error">cannot show this item: ${esc(err.message)}</p>`; });
  }
  stage.classList.remove("flash"); void stage.offsetWidth; stage.classList.add("flash");
  if (p) {
    pre.innerHTML = `<span data-testid="suggestion">model-time${p.model_version} suggests <b>${p.labels.map(esc).join(", ") || "no label"}</b> (score ${Math.round(100 * p.score)}%)</span>`;
  } else if (item.prediction && item.prediction.status === "failed") {
    pre.innerHTML = `<span class="error">the model could not read this item: ${esc(item.prediction.error)}</span>`;
  } else {
    pre.innerHTML = `<span class="muted" data-testid="no-model">No model yet: label from scratch. The first model trains after ${S.task.policy.min_labels} labels.</span>`;
  }
  renderChoices();
  document.getElementById("hint").textContent = multi()
    ? "Number keys (or clicks) toggle labels · Enter submits the selection · S skips"
    : `Number keys (or clicks) pick a label and move on${p ? " · Enter accepts the suggestion" : ""} · S skips`;
}

async function advance() {
  S.current = S.queue.shift() || null;
  if (!S.current) {
    await refill();
    S.current = S.queue.shift() || null;
  }
  show();
  if (S.queue.length < 5) refill();
}

function submit(labels) {
  const item = S.current;
  if (!item) return;
  const p = prediction(item);
  const annotation = { item_id: item.id, labels, annotator: "web" };
  if (p) annotation.shown_version = p.model_version; else annotation.shown_none = true;
  if (p && [...p.labels].sort().join("\n") === [...labels].sort().join("\n")) S.accepted += 1;
  S.sent.add(item.id);
  S.session += 1;
  document.getElementById("n-session").textContent = S.session;
  document.getElementById("n-accepted").textContent = S.accepted;
  S.chain = S.chain.then(async () => {
    try {
      const r = await api.post(`/api/v1/tasks/${taskId}/annotations`, { annotations: [annotation] });
      if (r.training_triggered) { document.getElementById("training").hidden = false; pollTask(); }
    } catch (err) {
      S.sent.delete(item.id);
      toast(`label not saved: ${err.message}`);
    }
  });
  advance();
}

function pick(label) {
  if (!S.current) return;
  if (multi()) {
    if (S.selected.has(label)) S.selected.delete(label); else S.selected.add(label);
    renderChoices();
    return;
  }
  submit([label]);
}

function accept() {
  if (!S.current) return;
  if (multi()) return submit([...S.selected]);
  const p = prediction(S.current);
  if (p) submit(p.labels); else toast("no suggestion yet: pick a label with its number key");
}

document.addEventListener("keydown", (ev) => {
  if (ev.target && ["INPUT", "TEXTAREA", "SELECT"].includes(ev.target.tagName)) return;
  if (ev.ctrlKey || ev.metaKey || ev.altKey || !S.task) return;
  if (/^[0-9]$/.test(ev.key)) {
    const i = ev.key === "0" ? 9 : Number(ev.key) - 1;
    if (i < S.task.labels.length) { ev.preventDefault(); pick(S.task.labels[i]); }
  } else if (ev.key === "Enter") {
    ev.preventDefault(); accept();
  } else if (ev.key === "s" || ev.key === "S" || ev.key === "ArrowRight") {
    ev.preventDefault(); if (S.current) { S.queue.push(S.current); advance(); }
  }
});

async function pollTask() {
  try {
    const t = await api.get(`/api/v1/tasks/${taskId}`);
    S.task = t;
    document.getElementById("n-human").textContent = t.counts.human_labelled;
    document.getElementById("n-left").textContent = t.counts.unlabelled;
    document.getElementById("training").hidden = !t.training;
    const chip = document.getElementById("serving");
    chip.textContent = versionName(t.served_version);
    chip.className = t.served_version === null ? "chip" : "chip model";
    if (S.served !== undefined && t.served_version !== S.served && t.served_version !== null) {
      toast(`model-time${t.served_version} now serves: its pre-labels show from the next item on`);
      // Queued items carry the old version's pre-labels: fetch them again from the new one.
      S.queue = [];
      await refill();
      if (S.current && !prediction(S.current)) {
        const fresh = await api.get(`/api/v1/tasks/${taskId}/predictions?item_id=${S.current.id}`).catch(() => null);
        if (fresh && fresh.status === "ok") { S.current.prediction = fresh; show(); }
      }
    }
    S.served = t.served_version;
  } catch (err) {
    toast(err.message);
  }
}

async function start() {
  if (!taskId) {
    document.getElementById("stage").innerHTML = '<p>No task chosen. <a href="index.html">Pick one on the dashboard.</a></p>';
    return;
  }
  document.getElementById("back").href = `index.html#task=${taskId}`;
  try {
    S.task = await api.get(`/api/v1/tasks/${taskId}`);
  } catch (err) {
    document.getElementById("stage").innerHTML = `<p class="error">${esc(err.message)}</p>`;
    return;
  }
  document.getElementById("task-name").textContent = S.task.name;
  document.title = `labelloop · ${S.task.name}`;
  await pollTask();
  await refill();
  await advance();
  setInterval(pollTask, 2000);
}

start();
