// The labelling page: the next item with the model's pre-label (its highlight scaled with its
// score); keys pick a label, Enter accepts the pre-label, Backspace goes back to correct one, and
// the next item shows at once (labels are sent in the background, in order). A choice applies only
// to the item that was on screen when it was made: the second click of a double-click, a held key
// and any input while items switch are ignored. It works before any model exists, and names one
// version everywhere (chip, suggestion, notice).
"use strict";

const params = new URLSearchParams(location.search);
const taskId = Number(params.get("task"));
const NAME_KEY = "labelloop.annotator";
const GUEST_KEY = "labelloop.guest";
const QUICK_KEY = "labelloop.quick";
// Quick accept/reject is offered from this score on.
const QUICK_MIN = 0.9;
// A new version is announced when its held-out accuracy moved this much since the last notice.
const NOTICE_DELTA = 0.02;
const HISTORY_SHOWN = 12;
// Items asked for at a time: the page's queue and the one on screen fit in one answer, so that
// asking again renews every one this page holds.
const BATCH = 16;

const S = {
  task: null, keys: null, queue: [], current: null, history: [], pos: null,
  onScreen: null, selected: new Set(), spans: [], focus: null, rejecting: false,
  sent: new Set(), served: undefined, announced: null, loading: null, chain: Promise.resolve(),
  images: new Map(), quick: false, guest: "", me: null, holder: null, lease: null, archived: false,
};
// The task's kind names the input widget: one choice, several, or spans of text.
const multi = () => S.task && S.task.kind.widget === "multi-choice";
// Text spans: select text, press a label's key (or click the label) to mark it; the model's marks
// are there to start from. Click a mark (or Tab to it) to pick it: a label's key (or button)
// changes its label, Delete (or a second click) removes it. Enter submits the marks (none: "no
// entity here").
const spansMode = () => S.task && S.task.kind.widget === "spans";
const $ = (id) => document.getElementById(id);

function toast(message) {
  const el = $("toast");
  el.textContent = message;
  el.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("show"), 5000);
}

// A value as comparable strings: labels as they are, spans as "start:end:label".
function keysOf(value) {
  return value.map((v) => (typeof v === "object" ? `${v.start}:${v.end}:${v.label}` : v)).sort().join("\n");
}

function sameLabels(a, b) {
  return Array.isArray(a) && Array.isArray(b) && keysOf(a) === keysOf(b);
}

// A value for people (HTML-escaped): labels joined, or each span's label and text.
function describe(value, item) {
  if (!value) return "";
  return value.map((v) => (typeof v === "object"
    ? `${esc(v.label)} “${esc(String(item ? item.data : "").slice(v.start, v.end))}”` : esc(v))).join(", ");
}

// What a pre-label proposes, as a value: its labels, or its spans without their scores.
function proposed(p) {
  if (!p) return [];
  if (spansMode()) return (p.spans || []).map(({ start, end, label }) => ({ start, end, label }));
  return p.labels || [];
}

// --- who labels --------------------------------------------------------------------------------

function annotator() {
  if (S.me && S.me.role === "annotator") return S.me.annotator; // the token names its annotator
  return $("annotator").value.trim() || S.guest;
}

// Items /next handed to one name are reserved for it: when the name changes, they are given back
// (and asked for again under the new name); when the page closes, too.
function releaseHeld(name) {
  if (!name) return;
  api.farewell("DELETE", `/api/v1/tasks/${taskId}/reservations?annotator=${encodeURIComponent(name)}`);
}

function nameChanged() {
  const now = annotator();
  if (S.holder === null || S.holder === now) return;
  releaseHeld(S.holder);
  S.holder = now;
  S.queue = [];
  refill();
}

async function setupAnnotator() {
  let guest = localStorage.getItem(GUEST_KEY);
  if (!guest) {
    guest = `guest-${Math.random().toString(16).slice(2, 6)}`;
    localStorage.setItem(GUEST_KEY, guest);
  }
  S.guest = guest;
  const input = $("annotator");
  const given = params.get("annotator");
  if (given) localStorage.setItem(NAME_KEY, given.trim());
  input.value = localStorage.getItem(NAME_KEY) || "";
  input.placeholder = `${guest} (your name?)`;
  input.classList.toggle("unnamed", !input.value.trim());
  input.oninput = () => {
    localStorage.setItem(NAME_KEY, input.value.trim());
    input.classList.toggle("unnamed", !input.value.trim());
  };
  input.onkeydown = (ev) => { if (ev.key === "Enter" || ev.key === "Escape") input.blur(); };
  input.onchange = nameChanged;
  try {
    S.me = await api.me();
  } catch (_) {
    S.me = null; // the banner asks for a token
  }
  if (S.me && S.me.role === "annotator") {
    input.value = S.me.annotator;
    input.readOnly = true;
    input.classList.remove("unnamed");
    input.title = "Your token names you: labels are recorded under this name";
    input.dataset.token = "annotator";
  }
}

// --- keys --------------------------------------------------------------------------------------

// The task's own hotkeys first (policy.hotkeys: label -> key); then, when every label is one
// character (digits, letters), the key that is the label; otherwise positions 1-9, 0.
function buildKeys(task) {
  const custom = (task.policy && task.policy.hotkeys) || {};
  const byLabel = new Map();
  const byKey = new Map();
  const put = (label, key) => {
    if (!key || byKey.has(key) || byLabel.has(label)) return;
    byKey.set(key, label);
    byLabel.set(label, key);
  };
  for (const label of task.labels) if (typeof custom[label] === "string") put(label, custom[label]);
  const byName = task.labels.every((label) => [...label].length === 1);
  task.labels.forEach((label, i) => {
    if (byName) put(label, label);
    else if (i < 10) put(label, i < 9 ? String(i + 1) : "0");
  });
  return { byLabel, byKey, byName, custom: Object.keys(custom).length > 0 };
}

function labelForKey(key) {
  if (S.keys.byKey.has(key)) return S.keys.byKey.get(key);
  for (const other of [key.toLowerCase(), key.toUpperCase()]) {
    if (other !== key && S.keys.byKey.has(other)) return S.keys.byKey.get(other);
  }
  return undefined;
}

// --- what is on screen -------------------------------------------------------------------------

function entryOnScreen() { return S.pos === null ? null : S.history[S.pos]; }
function itemOnScreen() { const e = entryOnScreen(); return e ? e.item : S.current; }
function isText() { return S.task.kind.media === "text"; }

function prediction(item) {
  const p = item && item.prediction;
  return p && p.status === "ok" ? p : null;
}

// What the page shows of the model for an item: nothing on an audit (labelled blind: its label is
// the evidence that auto-labelling is certified on).
function shownPrediction(item) {
  return item && item.audit ? null : prediction(item);
}

function imageUrl(item) {
  if (!S.images.has(item.id)) {
    S.images.set(item.id, api.blobUrl(`/api/v1/tasks/${taskId}/items/${item.id}/content`));
  }
  return S.images.get(item.id);
}

// Object URLs are kept for what is queued, on screen or in the visible history only.
function pruneImages() {
  const keep = new Set([...S.queue.map((i) => i.id), S.current && S.current.id,
    ...S.history.slice(-HISTORY_SHOWN).map((e) => e.item.id), itemOnScreen() && itemOnScreen().id]);
  for (const [id, url] of S.images) {
    if (!keep.has(id)) {
      S.images.delete(id);
      url.then((u) => URL.revokeObjectURL(u)).catch(() => null);
    }
  }
}

function markShown(item) {
  S.onScreen = item.id;
  const stage = $("stage");
  stage.dataset.item = item.id;
  stage.classList.remove("flash"); void stage.offsetWidth; stage.classList.add("flash");
}

// Shows the item on screen (the next one, or one from the history). An image is fetched first
// and everything (image, suggestion, choices) changes at once; until then the page takes no choice.
function render() {
  const item = itemOnScreen();
  S.onScreen = null;
  if (!item) { delete $("stage").dataset.item; renderDone(); return; }
  if (isText()) { commit(item, null, null); return; }
  imageUrl(item).then((url) => commit(item, url, null)).catch((err) => commit(item, null, err));
}

function commit(item, url, err) {
  if (itemOnScreen() !== item) return; // the person moved on meanwhile
  const entry = entryOnScreen();
  const p = entry ? entry.shown : shownPrediction(item);
  S.selected = new Set(entry ? entry.labels : (multi() && p ? p.labels : []));
  S.spans = !spansMode() ? [] : entry ? entry.labels.map((v) => ({ ...v }))
    : preMarks(p);
  S.focus = null;
  S.rejecting = false;
  const stage = $("stage");
  if (isText()) {
    stage.innerHTML = `<div class="text" data-testid="item-text"></div>`;
    stage.firstChild.textContent = item.data;
    if (spansMode()) renderSpans(item);
  } else if (err) {
    stage.innerHTML = `<p class="error">cannot show this item: ${esc(err.message)}</p>`;
  } else {
    stage.innerHTML = `<img alt="item ${item.id}" data-testid="item-image">`;
    stage.firstChild.src = url;
  }
  renderPrelabel(item, p, entry);
  renderReview(entry);
  renderChoices(item, p);
  renderHint(p);
  renderHistory();
  markShown(item);
}

function sureWord(score) {
  return score >= 0.9 ? "sure" : score >= 0.6 ? "fairly sure" : "unsure";
}

function renderPrelabel(item, p, entry) {
  const pre = $("prelabel");
  if (p) {
    // An item fetched before another version started serving keeps the suggestion it came with.
    const changed = S.served !== undefined && S.served !== null && S.served !== p.model_version
      && item.servedWhenFetched !== S.served;
    const later = entry ? ' <span class="muted">· shown when you labelled it</span>'
      : changed ? ` <span class="muted" data-testid="version-note">· model-time${S.served} serves from the next item on</span>` : "";
    pre.innerHTML = `<span data-testid="suggestion">model-time${p.model_version} suggests <b>${describe(proposed(p), item) || (spansMode() ? "no entity" : "no label")}</b>${typeof p.score === "number" ? ` (score ${Math.round(100 * p.score)}%)</span> <span class="muted">· ${sureWord(p.score)}</span>` : "</span>"}${later}`;
  } else if (entry) {
    pre.innerHTML = '<span class="muted">No suggestion was shown when you labelled it.</span>';
  } else if (item.audit && prediction(item)) {
    pre.innerHTML = `<span class="muted" data-testid="audit">A check of model-time${prediction(item).model_version}: label this one without its suggestion.</span>`;
  } else if (item.prediction && item.prediction.status === "failed") {
    pre.innerHTML = `<span class="error">the model could not read this item: ${esc(item.prediction.error)}</span>`;
  } else if (S.served === null || S.served === undefined) {
    pre.innerHTML = `<span class="muted" data-testid="no-model">No model yet: label from scratch. The first model trains after ${S.task.policy.min_labels} labels.</span>`;
  } else {
    pre.innerHTML = `<span class="muted" data-testid="no-suggestion">No suggestion for this item yet (model-time${S.served} serves).</span>`;
  }
}

function renderReview(entry) {
  const el = $("review");
  if (!entry) { el.hidden = true; el.innerHTML = ""; return; }
  el.hidden = false;
  const status = { sending: "sending…", saved: "saved", failed: `not saved: ${esc(entry.error || "")}` }[entry.status];
  el.innerHTML = `<span data-testid="review-label">You labelled this item <b>${describe(entry.labels, entry.item) || (spansMode() ? "no entity" : "no label")}</b></span>
    <span class="chip ${entry.status === "failed" ? "bad" : entry.status === "saved" ? "good" : ""}">${status}</span>
    <span class="muted">${entry.status === "failed" ? "Press Enter to send it again, or" : "Press Enter (or →) to keep it, or"} pick another label to correct it (the correction is added; labels are never overwritten).</span>
    <span id="server-label" data-testid="server-label"></span>`;
  if (entry.status !== "saved") return;
  api.get(`/api/v1/tasks/${taskId}/items/${entry.item.id}`).then((it) => {
    if (entryOnScreen() !== entry || sameLabels(it.labels, entry.labels)) return;
    const last = [...it.annotations].reverse().find((a) => a.source === "human");
    $("server-label").innerHTML = `<span class="chip warn">now labelled <b>${describe(it.labels || [], entry.item) || "none"}</b>${last && last.annotator ? ` by ${esc(last.annotator)}` : ""}</span>`;
  }).catch(() => null);
}

function quickOffer(p) {
  return S.quick && !entryOnScreen() && !multi() && !spansMode() && !S.rejecting && p && p.score >= QUICK_MIN;
}

function renderChoices(item, p) {
  const el = $("choices");
  if (quickOffer(p)) {
    el.innerHTML = `<button class="choice accept" data-act="accept" data-testid="quick-accept"><kbd>Enter</kbd>Accept <b>${p.labels.map(esc).join(", ")}</b><span class="score">${Math.round(100 * p.score)}%</span></button>
      <button class="choice reject" data-act="reject" data-testid="quick-reject"><kbd>Esc</kbd>Reject</button>`;
    for (const b of el.querySelectorAll("button")) {
      b.onclick = (ev) => { if (pointerOk(ev, item)) (b.dataset.act === "accept" ? accept : reject)(); };
    }
    return;
  }
  if (spansMode()) { renderSpanLabels(item); return; }
  const scores = (p && p.scores) || {};
  const top = new Set(Object.entries(scores).sort((a, b) => b[1] - a[1]).slice(0, 3).map(([label]) => label));
  const suggested = new Set(p ? p.labels : []);
  el.innerHTML = S.task.labels.map((label) => {
    const key = S.keys.byLabel.get(label);
    const score = typeof scores[label] === "number" ? scores[label] : null;
    const cls = ["choice", suggested.has(label) ? "suggested" : "", S.selected.has(label) ? "selected" : ""].join(" ");
    // The highlight's strength follows the score: 53% must not look like 100%.
    const style = suggested.has(label) && score !== null
      ? ` style="border-color: rgba(124, 58, 237, ${(0.2 + 0.8 * score).toFixed(3)}); background: rgba(124, 58, 237, ${(0.16 * score).toFixed(3)})"` : "";
    return `<button class="${cls}" data-label="${esc(label)}" data-testid="choice-${esc(label)}"${style}>${key ? `<kbd>${esc(key)}</kbd>` : ""}${esc(label)}${
      top.has(label) && score !== null ? `<span class="score" data-testid="score-${esc(label)}">${Math.round(100 * score)}%</span>` : ""}${
      suggested.has(label) && score !== null ? `<span class="conf" data-testid="conf" style="width: ${(100 * score).toFixed(1)}%"></span>` : ""}</button>`;
  }).join("");
  for (const b of el.querySelectorAll("button")) b.onclick = (ev) => { if (pointerOk(ev, item)) pick(b.dataset.label); };
}

function renderHint(p) {
  const keys = S.keys.byName ? "Keys pick a label by its name" : "Number keys pick a label by the position shown";
  const parts = [spansMode() ? `Select text, then ${S.keys.byName ? "a label's key" : "a number key"} marks it · click a mark (or Tab) to pick it: a label's key changes its label, Delete removes it · Enter ${p && (p.spans || []).length ? "accepts the marks shown" : "submits the marks"}`
    : multi() ? `${keys} (toggle) · Enter submits the selection` : `${keys}${p ? " · Enter accepts the suggestion" : ""}`];
  parts.push("Backspace goes back");
  parts.push(labelForKey("s") === undefined ? "S or → skips" : "→ skips");
  $("hint").textContent = parts.join(" · ");
  $("go-back").disabled = S.history.length === 0 || S.pos === 0;
}

function renderHistory() {
  const el = $("history");
  $("n-session").textContent = S.history.length;
  $("n-accepted").textContent = S.history.filter((e) => e.shown && sameLabels(proposed(e.shown), e.labels)).length;
  const rows = S.history.map((e, i) => ({ e, i })).slice(-HISTORY_SHOWN).reverse();
  const status = { sending: ["", "sending…"], saved: ["good", "saved"], failed: ["bad", "not saved"] };
  el.innerHTML = rows.map(({ e, i }) => `<li data-index="${i}" data-testid="history-${e.item.id}" class="${S.pos === i ? "active" : ""}">
      ${isText() ? `<span class="what">${esc(String(e.item.data).slice(0, 60))}</span>` : `<img class="thumb" data-thumb="${e.item.id}" alt="">`}
      <span class="muted">#${e.item.id}</span> → <b>${describe(e.labels, e.item) || (spansMode() ? "no entity" : "no label")}</b>
      <span class="chip ${status[e.status][0]}">${status[e.status][1]}</span>${e.corrections ? ' <span class="chip warn">corrected</span>' : ""}</li>`).join("");
  for (const li of el.querySelectorAll("li")) li.onclick = () => { S.pos = Number(li.dataset.index); render(); };
  if (!isText()) {
    for (const img of el.querySelectorAll("img[data-thumb]")) {
      const e = S.history.find((h) => h.item.id === Number(img.dataset.thumb));
      if (e && S.images.has(e.item.id)) S.images.get(e.item.id).then((url) => { img.src = url; }).catch(() => null);
    }
  }
}

async function renderDone() {
  const stage = $("stage");
  stage.innerHTML = `<div data-testid="all-done"><h2>Nothing left to label.</h2><p class="muted" data-testid="done-detail">checking the task…</p></div>`;
  $("prelabel").textContent = "";
  $("choices").innerHTML = "";
  $("review").hidden = true;
  renderHint(null);
  renderHistory();
  await S.chain; // the labels still being sent count too
  await pollTask();
  if (itemOnScreen()) return;
  const c = S.task.counts;
  const unsaved = S.history.filter((e) => e.status === "failed").length;
  const parts = [];
  const overlap = (S.task.policy && S.task.policy.overlap) || 1;
  const progress = overlap > 1 ? await api.get(`/api/v1/tasks/${taskId}/progress`).catch(() => null) : null;
  if (S.archived) {
    stage.querySelector("h2").textContent = "This task is archived.";
    parts.push("Its items are no longer handed out; the admin can restore it on the dashboard.");
  } else if (progress && progress.left > 0) {
    stage.querySelector("h2").textContent = "Nothing for you right now.";
    parts.push(`Each item is labelled by ${overlap} people: ${progress.left} item(s) still need labels from others (you labelled them, or others hold them). This page checks for more every few seconds.`);
  } else if (c.unlabelled === 0 && c.model_labelled === 0) {
    parts.push("Every item of this task has a label from a person.");
  } else if (c.unlabelled === 0) {
    parts.push(`Every item has a label: ${c.human_labelled} from people, ${c.model_labelled} from the model.`);
  } else {
    stage.querySelector("h2").textContent = "Nothing to hand out right now.";
    parts.push(`${c.unlabelled} item(s) have no label yet:`);
    if (unsaved) parts.push(`${unsaved} of your labels were not saved (correct them below);`);
    if (c.pending) parts.push(`${c.pending} are still being read;`);
    parts.push("the rest are with other annotators. This page checks for more every few seconds.");
  }
  if (c.failed) parts.push(`${c.failed} unreadable item(s) cannot be labelled (see the dashboard).`);
  stage.querySelector("[data-testid=done-detail]").innerHTML = `${parts.map(esc).join(" ")} <a href="index.html#task=${taskId}">Back to the dashboard</a>`;
}

// --- moving between items ----------------------------------------------------------------------

async function refill() {
  if (S.loading) return S.loading;
  S.loading = (async () => {
    try {
      // The items this name holds come back first (their lease renewed), then new ones.
      const name = annotator();
      const next = await api.get(`/api/v1/tasks/${taskId}/next?limit=${BATCH}&annotator=${encodeURIComponent(name)}`);
      S.holder = name;
      S.lease = next.lease_seconds;
      S.archived = false;
      const have = new Set([...S.queue.map((i) => i.id), S.current && S.current.id]);
      for (const it of next.items) {
        it.servedWhenFetched = next.model_version;
        if (!S.sent.has(it.id) && !have.has(it.id)) S.queue.push(it);
      }
      // A newer version serves than the page knows: catch up before these items show.
      if (S.served !== undefined && next.model_version !== S.served) pollTask();
      if (!isText()) S.queue.slice(0, 4).forEach(imageUrl);
    } catch (err) {
      if (err.status === 409 && /archived/.test(err.message)) S.archived = true;
      else toast(err.message);
    } finally {
      S.loading = null;
    }
  })();
  return S.loading;
}

async function advance() {
  if (S.pos === null) S.onScreen = null; // nothing is chosen while items switch
  S.current = S.queue.shift() || null;
  if (!S.current) {
    if (S.pos === null) { $("stage").innerHTML = '<span class="muted">loading…</span>'; delete $("stage").dataset.item; }
    await refill();
    if (!S.current) S.current = S.queue.shift() || null;
  }
  if (S.pos === null) render();
  pruneImages();
  if (S.queue.length < 5) refill();
}

function forward() {
  S.pos = S.pos !== null && S.pos + 1 < S.history.length ? S.pos + 1 : null;
  render();
}

function back() {
  if (!S.history.length) { toast("nothing labelled in this session yet"); return; }
  if (S.pos === null) S.pos = S.history.length - 1;
  else if (S.pos > 0) S.pos -= 1;
  else { toast("this is the first item of this session"); return; }
  render();
}

function skip() {
  if (entryOnScreen()) { forward(); return; }
  if (!S.current || S.onScreen !== S.current.id) return;
  S.queue.push(S.current);
  advance();
}

// --- labelling ---------------------------------------------------------------------------------

function send(entry, labels) {
  // The task's kind names the field: labels, or spans.
  const annotation = { item_id: entry.item.id, [S.task.kind.value_field]: labels, annotator: annotator() };
  if (entry.shown) annotation.shown_version = entry.shown.model_version; else annotation.shown_none = true;
  entry.status = "sending";
  renderHistory();
  S.chain = S.chain.then(async () => {
    try {
      const r = await api.post(`/api/v1/tasks/${taskId}/annotations`, { annotations: [annotation] });
      entry.status = "saved";
      entry.error = null;
      if (r.training_triggered) { $("training").hidden = false; pollTask(); }
    } catch (err) {
      entry.status = "failed";
      entry.error = err.message;
      toast(`label not saved: ${err.message}`);
    }
    renderHistory();
    if (entryOnScreen() === entry) renderReview(entry);
  });
}

function submit(item, labels) {
  const entry = { item, labels, shown: shownPrediction(item), status: "sending", corrections: 0, error: null };
  S.history.push(entry);
  S.sent.add(item.id);
  send(entry, labels);
  advance();
}

// A new label for an item labelled earlier in this session: appended as a correction.
function correct(entry, labels) {
  if (!sameLabels(entry.labels, labels)) {
    entry.labels = labels;
    entry.corrections += 1;
    send(entry, labels);
    toast(`item #${entry.item.id} corrected to ${(spansMode() ? labels.map((v) => v.label) : labels).join(", ") || "no label"}`);
  } else if (entry.status === "failed") {
    send(entry, labels);
  }
  forward();
}

function decide(labels) {
  const entry = entryOnScreen();
  if (entry) correct(entry, labels); else if (S.current) submit(S.current, labels);
}

// Input applies only to the item whose content is on screen; the second click of a double-click
// lands on the item after the one it was meant for, and is ignored.
function pointerOk(ev, item) {
  return ev.detail <= 1 && Boolean(item) && S.onScreen === item.id;
}

function ready() {
  const item = itemOnScreen();
  return Boolean(item) && S.onScreen === item.id;
}

function pick(label) {
  if (!ready()) return;
  if (spansMode()) { markSelection(label); return; }
  if (multi()) {
    if (S.selected.has(label)) S.selected.delete(label); else S.selected.add(label);
    const entry = entryOnScreen();
    renderChoices(itemOnScreen(), entry ? entry.shown : shownPrediction(itemOnScreen()));
    return;
  }
  decide([label]);
}

function accept() {
  if (!ready()) return;
  const entry = entryOnScreen();
  if (multi()) { decide([...S.selected]); return; }
  if (spansMode()) { decide(spanValue()); return; }
  if (entry) { decide(entry.labels); return; }
  const p = shownPrediction(S.current);
  if (p && p.labels.length) decide(p.labels);
  else toast(`no suggestion to accept: pick a label${S.keys.byLabel.size ? " with its key" : ""}`);
}

// --- text spans --------------------------------------------------------------------------------

// A pre-label's spans as the page's marks: the model's, with their scores.
function preMarks(p) {
  return ((p && p.spans) || []).map(({ start, end, label, score }) => ({ start, end, label, score: typeof score === "number" ? score : null, pre: true }));
}

// The marks as a value: offsets and labels only (a model's score is for the page).
function spanValue() {
  return [...S.spans].sort((a, b) => a.start - b.start).map(({ start, end, label }) => ({ start, end, label }));
}

// The item's text with its marks; a mark's label is drawn by CSS (not text), so that offsets in
// the page's text are offsets in the item's text. The model's marks are dashed until a person
// changes them; the picked one is outlined.
function renderSpans(item) {
  const el = document.querySelector("[data-testid=item-text]");
  if (!el) return;
  const text = String(item.data);
  el.textContent = "";
  let at = 0;
  for (const span of [...S.spans].sort((a, b) => a.start - b.start)) {
    if (span.start > at) el.append(text.slice(at, span.start));
    const mark = document.createElement("mark");
    mark.className = `span${span.pre ? " pre" : ""}${span === S.focus ? " focus" : ""}`;
    mark.dataset.label = span.label;
    mark.dataset.testid = `span-${span.start}-${span.end}`;
    if (span.pre) mark.dataset.pre = span.score === null ? "" : String(Math.round(100 * span.score));
    const by = span.pre ? `the model's mark${span.score === null ? "" : ` (${Math.round(100 * span.score)}%)`}` : "your mark";
    mark.title = `${span.label}, ${by}: click to pick it (a label's key changes its label, Delete removes it)`;
    mark.textContent = text.slice(span.start, span.end);
    mark.onclick = (ev) => {
      if (!pointerOk(ev, item) || !window.getSelection().isCollapsed) return; // a drag selects text
      if (S.focus === span) removeSpan(span); else focusSpan(span);
    };
    el.append(mark);
    at = span.end;
  }
  if (at < text.length) el.append(text.slice(at));
}

function focusSpan(span) {
  S.focus = span;
  renderSpans(itemOnScreen());
  renderSpanLabels(itemOnScreen());
}

function removeSpan(span) {
  S.spans = S.spans.filter((s) => s !== span);
  focusSpan(null);
}

// Tab and Shift+Tab walk the marks in the order of the text.
function focusNext(step) {
  if (!S.spans.length) return;
  const ordered = [...S.spans].sort((a, b) => a.start - b.start);
  const at = ordered.indexOf(S.focus);
  const next = at < 0 ? (step > 0 ? 0 : ordered.length - 1) : (at + step + ordered.length) % ordered.length;
  focusSpan(ordered[next]);
}

// A picked mark takes the label (it is now the person's, not the model's).
function relabel(span, label) {
  span.label = label;
  span.pre = false;
  span.score = null;
  focusSpan(span);
}

function renderSpanLabels(item) {
  const el = $("choices");
  const picked = S.focus;
  el.innerHTML = S.task.labels.map((label) => {
    const key = S.keys.byLabel.get(label);
    const cls = `choice${picked && picked.label === label ? " selected" : ""}`;
    return `<button class="${cls}" data-label="${esc(label)}" data-testid="choice-${esc(label)}">${key ? `<kbd>${esc(key)}</kbd>` : ""}${esc(label)}</button>`;
  }).join("") + (picked ? '<button class="choice reject" data-act="remove" data-testid="remove-span"><kbd>Del</kbd>Remove mark</button>' : "")
    + '<button class="choice accept" data-act="accept" data-testid="submit-spans"><kbd>Enter</kbd>Submit</button>';
  for (const b of el.querySelectorAll("button")) {
    b.onmousedown = (ev) => ev.preventDefault(); // keep the text selected
    b.onclick = (ev) => {
      if (!pointerOk(ev, item)) return;
      if (b.dataset.act === "accept") accept();
      else if (b.dataset.act === "remove") { if (S.focus) removeSpan(S.focus); }
      else pick(b.dataset.label);
    };
  }
}

// Marks the selected text with ``label``: offsets counted in the item's text, blanks at either
// end left out; marks it overlaps are replaced (spans never overlap). Without a selection, the
// picked mark takes the label.
function markSelection(label) {
  const el = document.querySelector("[data-testid=item-text]");
  const sel = window.getSelection();
  if (!el || !sel || !sel.rangeCount || sel.isCollapsed) {
    if (S.focus) relabel(S.focus, label);
    else toast("select some text (or click a mark) first, then press a label's key");
    return;
  }
  const range = sel.getRangeAt(0);
  if (!el.contains(range.startContainer) || !el.contains(range.endContainer)) return;
  const before = document.createRange();
  before.selectNodeContents(el);
  before.setEnd(range.startContainer, range.startOffset);
  const text = String(itemOnScreen().data);
  let start = before.toString().length;
  let end = start + range.toString().length;
  while (start < end && /\s/.test(text[start])) start += 1;
  while (end > start && /\s/.test(text[end - 1])) end -= 1;
  if (end <= start) return;
  S.spans = S.spans.filter((s) => s.end <= start || s.start >= end);
  S.spans.push({ start, end, label, pre: false, score: null });
  sel.removeAllRanges();
  focusSpan(null);
}

function reject() {
  const item = itemOnScreen();
  if (!ready() || !quickOffer(shownPrediction(item))) return;
  S.rejecting = true;
  renderChoices(item, shownPrediction(item));
}

// The keys of the marks: Tab walks them; with one picked, Delete or Backspace removes it and
// Escape lets it go. True when the key was for them.
function spanKey(ev) {
  if (!ready()) return false;
  if (ev.key === "Tab" && S.spans.length) { if (!ev.repeat) focusNext(ev.shiftKey ? -1 : 1); return true; }
  if (!S.focus) return false;
  if (ev.key === "Delete" || ev.key === "Backspace") { if (!ev.repeat) removeSpan(S.focus); return true; }
  if (ev.key === "Escape") { focusSpan(null); return true; }
  return false;
}

document.addEventListener("keydown", (ev) => {
  if (ev.target && ["INPUT", "TEXTAREA", "SELECT"].includes(ev.target.tagName)) return;
  if (ev.ctrlKey || ev.metaKey || ev.altKey || !S.task || !S.keys) return;
  if (spansMode() && spanKey(ev)) { ev.preventDefault(); return; }
  const label = labelForKey(ev.key);
  const action = label !== undefined ? "pick"
    : { Enter: "accept", Escape: "reject", Backspace: "back", ArrowLeft: "back", ArrowRight: "skip", s: "skip", S: "skip" }[ev.key];
  if (!action) return;
  ev.preventDefault();
  if (ev.repeat) return; // a held key labels one item, not the ones after it
  if (action === "pick") pick(label);
  else if (action === "accept") accept();
  else if (action === "reject") reject();
  else if (action === "back") back();
  else skip();
});

// --- the task and its versions -----------------------------------------------------------------

// A version's held-out score as the page names it: accuracy, or entity F1 for text spans.
const scoreName = () => (spansMode() ? "held-out entity F1" : "held-out accuracy");

async function accuracyOf(version) {
  try {
    const versions = await api.get(`/api/v1/tasks/${taskId}/models`);
    const v = versions.find((x) => x.version === version);
    const acc = v && v.metrics ? v.metrics[spansMode() ? "cv_entity_f1" : "cv_accuracy"] : null;
    return typeof acc === "number" ? acc : null;
  } catch (_) {
    return null;
  }
}

function chip(version, accuracy) {
  const el = $("serving");
  el.textContent = version === null ? "no model yet"
    : `model-time${version}${accuracy === null ? "" : ` · ${spansMode() ? "entity F1" : "held-out"} ${Math.round(100 * accuracy)}%`}`;
  el.className = version === null ? "chip" : "chip model";
}

// A change of served version is announced when it is the first model, or when held-out accuracy
// moved by NOTICE_DELTA since the last notice (not at every retraining).
function worthANotice(before, now, announced, accuracy) {
  if (now === null) return false;
  if (before === null) return true;
  if (accuracy === null) return false;
  return announced === null || Math.abs(accuracy - announced) >= NOTICE_DELTA;
}

async function versionChanged(before, now) {
  const accuracy = now === null ? null : await accuracyOf(now);
  chip(now, accuracy);
  if (before === undefined) { S.announced = accuracy; return; } // the page just opened
  if (worthANotice(before, now, S.announced, accuracy)) {
    const acc = accuracy === null ? "" : S.announced === null ? ` (${scoreName()} ${Math.round(100 * accuracy)}%)`
      : `: ${scoreName()} ${Math.round(100 * S.announced)}% → ${Math.round(100 * accuracy)}%`;
    toast(`model-time${now} now serves${acc}`);
    S.announced = accuracy;
  }
  // Queued items carry the old version's pre-labels: fetch them again from the new one.
  S.queue = [];
  await refill();
  const item = S.current;
  if (item && !prediction(item) && now !== null) {
    const fresh = await api.get(`/api/v1/tasks/${taskId}/predictions?item_id=${item.id}`).catch(() => null);
    if (fresh && fresh.status === "ok" && S.current === item && !prediction(item)) {
      item.prediction = fresh;
      if (itemOnScreen() === item && !item.audit) {
        if (multi() && !S.selected.size) S.selected = new Set(fresh.labels);
        if (spansMode() && !S.spans.length) {
          S.spans = preMarks(fresh);
          renderSpans(item);
        }
        renderPrelabel(item, fresh, null);
        renderChoices(item, fresh);
        renderHint(fresh);
        return;
      }
    }
  }
  const shown = itemOnScreen();
  if (shown && !entryOnScreen()) renderPrelabel(shown, shownPrediction(shown), null);
}

async function pollTask() {
  try {
    const t = await api.get(`/api/v1/tasks/${taskId}`);
    S.task = t;
    $("n-human").textContent = t.counts.human_labelled;
    $("n-left").textContent = t.counts.unlabelled;
    $("training").hidden = !t.training;
    if (t.served_version !== S.served) {
      const before = S.served;
      S.served = t.served_version;
      await versionChanged(before, t.served_version);
    }
  } catch (err) {
    toast(err.message);
  }
}

async function start() {
  await setupAnnotator();
  if (!taskId) {
    $("stage").innerHTML = '<p>No task chosen. <a href="index.html">Pick one on the dashboard.</a></p>';
    return;
  }
  $("back").href = `index.html#task=${taskId}`;
  try {
    S.task = await api.get(`/api/v1/tasks/${taskId}`);
  } catch (err) {
    $("stage").innerHTML = `<p class="error">${esc(err.message)}</p>`;
    return;
  }
  S.keys = buildKeys(S.task);
  const quick = $("quick");
  S.quick = quick.checked = localStorage.getItem(QUICK_KEY) === "1";
  quick.onchange = () => {
    S.quick = quick.checked;
    localStorage.setItem(QUICK_KEY, S.quick ? "1" : "0");
    quick.blur(); // keys label again at once
    if (itemOnScreen()) render();
  };
  $("go-back").onclick = (ev) => { ev.currentTarget.blur(); back(); };
  $("task-name").textContent = S.task.name;
  document.title = `labelloop · ${S.task.name}`;
  await pollTask();
  await refill();
  await advance();
  setInterval(pollTask, 2000);
  // Asking again renews the lease of every item this page holds (a third of a lease at a time).
  const renew = () => {
    setTimeout(() => { if (!S.loading) refill(); renew(); }, Math.min(120, Math.max(5, (S.lease || 600) / 3)) * 1000);
  };
  renew();
  window.addEventListener("pagehide", () => releaseHeld(S.holder));
  // At the end of the queue, ask again now and then: new items, labels that did not arrive.
  setInterval(() => { if (!S.current && !S.loading) refill().then(() => { if (!S.current && S.queue.length) advance(); }); }, 4000);
}

start();
