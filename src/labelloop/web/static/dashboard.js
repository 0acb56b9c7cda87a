// The dashboard: tasks, and per task its versions, learning curves, counts, jobs and suspects;
// the cluster when the server has one. Everything refreshes by itself every few seconds.
"use strict";

const REFRESH_MS = 2500;
const state = { tasks: [], selected: null, folder: null, busy: false, info: null, me: null, showUnreadable: false, picking: null };
const isAdmin = () => !state.me || state.me.role === "admin";

function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("show"), 3500);
}

function selectedFromHash() {
  const m = location.hash.match(/task=(\d+)/);
  return m ? Number(m[1]) : null;
}

function countsBar(c) {
  const total = Math.max(1, c.items);
  const w = (n) => `${(100 * n) / total}%`;
  return `<div class="counts" title="${c.human_labelled} by people, ${c.model_labelled} by the model, ${c.unlabelled} unlabelled">
      <div class="human" style="width:${w(c.human_labelled)}"></div>
      <div class="model" style="width:${w(c.model_labelled)}"></div>
      <div class="pending" style="width:${w(c.pending)}"></div>
      <div class="failed" style="width:${w(c.failed)}"></div></div>`;
}

function taskRow(t) {
  return `
    <li data-id="${t.id}" data-testid="task-${t.id}" class="${t.id === state.selected ? "active" : ""}">
      <div class="name">${esc(t.name)}</div>
      <div class="meta">${esc(t.category)} · ${esc(t.extra)} · ${t.counts.items} items</div>
      ${countsBar(t.counts)}
      <div class="meta">${t.served_version === null ? '<span class="chip">no model yet</span>' : `<span class="chip model">model-time${t.served_version}</span>`}
        ${t.training ? '<span class="chip warn">training</span>' : ""}${t.archived ? '<span class="chip">archived</span>' : ""}</div>
    </li>`;
}

function renderTasks() {
  const ul = document.getElementById("tasks");
  if (!state.tasks.length) {
    ul.innerHTML = `<li class="muted">No task yet.</li>`;
    return;
  }
  const active = state.tasks.filter((t) => !t.archived);
  const archived = state.tasks.filter((t) => t.archived);
  const open = document.getElementById("archived-tasks");
  const wasOpen = open ? open.open : archived.some((t) => t.id === state.selected);
  ul.innerHTML = active.map(taskRow).join("") + (archived.length
    ? `<li class="archived-group"><details id="archived-tasks" data-testid="archived-tasks"${wasOpen ? " open" : ""}><summary>Archived (${archived.length})</summary>
        <ul class="tasks">${archived.map(taskRow).join("")}</ul></details></li>` : "");
  for (const li of ul.querySelectorAll("li[data-id]")) {
    li.onclick = (ev) => { ev.stopPropagation(); location.hash = `task=${li.dataset.id}`; };
  }
}

// A text-spans task is scored per entity: its versions' held-out entity F1 (with precision and
// recall) takes the place of accuracy and macro-F1; "exact" is the share of texts whose spans
// were all right.
const spanTask = (task) => Boolean(task.kind && task.kind.name === "text-spans");

function versionsTable(task, versions) {
  if (!versions.length) {
    return `<p class="muted">No model yet: the first one trains once ${task.policy.min_labels} items are labelled (with two classes at least).</p>`;
  }
  const rows = versions.slice().reverse().map((v) => {
    const m = v.metrics || {};
    const action = v.serving ? '<span class="chip good">serving</span>'
      : v.status !== "ready" ? `<span class="chip">${esc(v.status)}</span>`
      : !isAdmin() ? ""
      : `<button class="small" data-promote="${v.version}" data-testid="promote-${v.version}">${v.version < (task.served_version ?? -1) ? "Roll back to" : "Promote"}</button>`;
    return `<tr class="${v.serving ? "serving" : ""}" data-testid="version-${v.version}">
      <td>model-time${v.version}</td><td class="num">${v.n_labels}</td>
      <td class="num">${pct(m.cv_accuracy)}</td><td class="num"${spanTask(task) ? ` title="precision ${pct(m.cv_entity_precision)}, recall ${pct(m.cv_entity_recall)}"` : ""}>${pct(spanTask(task) ? m.cv_entity_f1 : m.cv_macro_f1)}</td>
      <td class="num">${v.live_n ? `${pct(v.live_accuracy)} <span class="muted">(${v.live_n})</span>` : "–"}</td>
      <td class="num">${v.train_seconds === null ? "–" : v.train_seconds.toFixed(2) + " s"}</td>
      <td>${v.promoted ? "promoted" : '<span class="muted">kept out</span>'}</td>
      <td>${action}</td></tr>`;
  }).join("");
  return `<table data-testid="versions"><thead><tr><th>version</th><th class="num">labels</th>
    ${spanTask(task) ? '<th class="num">held-out exact</th><th class="num">entity F1</th>' : '<th class="num">held-out acc.</th><th class="num">macro-F1</th>'}<th class="num">live acc.</th>
    <th class="num">train time</th><th>when trained</th><th></th></tr></thead><tbody>${rows}</tbody></table>`;
}

function charts(task, metrics) {
  const spans = spanTask(task);
  const heldout = (v) => (spans ? v.heldout_entity_f1 : v.heldout_accuracy);
  const acc = metrics.versions.filter((v) => typeof heldout(v) === "number").map((v) => ({
    x: v.n_labels, y: heldout(v), highlight: v.serving,
    label: spans ? `model-time${v.version} · precision ${pct(v.heldout_entity_precision)}, recall ${pct(v.heldout_entity_recall)} · entity F1` : `model-time${v.version}`,
  }));
  const live = metrics.versions.filter((v) => v.live_accuracy !== null && v.live_n > 0).map((v) => ({
    x: v.n_labels, y: v.live_accuracy, label: `model-time${v.version} (live, ${v.live_n} labels)`,
  }));
  const edits = metrics.edit_rate.curve.map((p) => ({ x: p.labels, y: p.edit_rate, label: "edit rate" }));
  const f = (v) => `${Math.round(v * 100)}%`;
  return `<div class="grid2">
    <div>${lineChart({ title: spans ? "Held-out entity F1 per version" : "Held-out accuracy per version", xLabel: "labels", yLabel: spans ? "entity F1" : "accuracy", yFormat: f, testid: "chart-accuracy",
      series: [{ name: spans ? "entity F1 (cross-validated)" : "held-out (cross-validated)", color: "#2563eb", points: acc },
               { name: spans ? "live (texts accepted as shown)" : "live (pre-labels confirmed)", color: "#15803d", points: live, dashed: true }] })}</div>
    <div>${lineChart({ title: "Edit rate (share of pre-labels people changed)", xLabel: "labels", yLabel: "edit rate", yFormat: f, testid: "chart-edit-rate",
      series: [{ name: "edit rate per 50 labels", color: "#7c3aed", points: edits }] })}</div></div>`;
}

function jobsTable(jobs) {
  if (!jobs.length) return '<p class="muted">No job yet.</p>';
  const chip = { done: "good", failed: "bad", running: "warn", queued: "" };
  return `<table data-testid="jobs"><thead><tr><th>job</th><th>kind</th><th>state</th><th>result</th><th>when</th></tr></thead><tbody>
    ${jobs.slice(0, 12).map((j) => `<tr><td>#${j.id}</td><td>${esc(j.kind)}</td>
      <td><span class="chip ${chip[j.state] ?? ""}">${esc(j.state)}</span></td>
      <td class="muted result" title="${esc(j.error || (j.result ? JSON.stringify(j.result) : ""))}">${esc(j.error || (j.result ? (j.result.reason || JSON.stringify(j.result)) : ""))}</td>
      <td class="muted">${esc(ago(j.finished_at || j.created_at))}</td></tr>`).join("")}</tbody></table>`;
}

function suspectsBlock(result, task) {
  if (!result.available) {
    return '<p class="na" data-testid="suspects-na">Label-error flags are not available on this server (no /suspects endpoint).</p>';
  }
  const data = result.data || {};
  const list = Array.isArray(data) ? data : (data.suspects || []);
  const head = data.version === null || data.version === undefined
    ? '<p class="muted">Flags need a model: they come from the out-of-sample scores of a trained version.</p>'
    : `<p class="muted">model-time${esc(data.version)} checked ${esc(data.checked ?? "?")} human labels and flags ${esc(data.flagged ?? list.length)}.</p>`;
  const text = task.category.startsWith("text");
  const rows = list.slice(0, 20).map((s) => `<tr><td><a href="items.html?task=${task.id}&item=${esc(s.item_id)}" data-testid="suspect-link-${esc(s.item_id)}" title="open it in the item browser, to see or correct its label">#${esc(s.item_id)}</a></td>
      ${text ? `<td class="muted">${esc(String(s.data || "").slice(0, 80))}</td>` : ""}
      <td>${esc([].concat(s.given ?? []).join(", "))}</td><td><b>${esc([].concat(s.suggested ?? []).join(", "))}</b></td>
      <td class="num">${typeof s.score === "number" ? s.score.toFixed(2) : ""}</td>
      <td class="muted">${esc([].concat(s.annotators ?? []).join(", "))}</td></tr>`).join("");
  const flags = list.length
    ? `<table data-testid="suspects"><thead><tr><th>item</th>${text ? "<th>text</th>" : ""}<th>given</th><th>suggested</th><th class="num">score</th><th>annotators</th></tr></thead><tbody>${rows}</tbody></table>`
    : '<p class="muted" data-testid="suspects-none">No suspicious label right now.</p>';
  return head + flags + (list.length ? `<p class="muted"><a href="items.html?task=${task.id}&suspect=true">All flagged items in the item browser →</a></p>` : "");
}

function progressBlock(p) {
  if (!p) return '<p class="na">Progress is not available on this server.</p>';
  const overlap = p.overlap > 1 ? ` · each item by ${p.overlap} people` : "";
  const rows = p.annotators.map((a) => `<tr data-testid="annotator-${esc(a.annotator ?? "")}">
      <td>${a.annotator === null ? '<span class="muted">(no name)</span>' : esc(a.annotator)}</td>
      <td class="num">${a.labels}</td><td class="num">${a.items}</td>
      <td class="num">${a.rate_per_hour === null ? "–" : Math.round(a.rate_per_hour)}</td>
      <td class="num">${a.holding || ""}</td>
      <td class="num" data-testid="agreement">${a.agreement === null ? '<span class="muted">–</span>' : `${pct(a.agreement, 0)} <span class="muted">(${a.shared_items})</span>`}</td>
      <td class="muted">${esc(ago(a.last_label_at))}</td></tr>`).join("");
  const people = p.annotators.length
    ? `<table data-testid="annotators"><thead><tr><th>annotator</th><th class="num">labels</th><th class="num">items</th>
        <th class="num">per hour</th><th class="num">holding</th><th class="num" title="how often their label matches other people's on items they share (items shared)">agreement</th><th>last label</th></tr></thead><tbody>${rows}</tbody></table>`
    : '<p class="muted">Nobody has labelled yet.</p>';
  return `<div data-testid="progress">
      <span class="stat"><b data-testid="progress-done">${p.done}</b>done of ${p.items}${overlap}</span>
      <span class="stat"><b data-testid="progress-left">${p.left}</b>items left (${p.labels_needed} labels)</span>
      <span class="stat"><b>${p.rate_per_hour === null ? "–" : Math.round(p.rate_per_hour)}</b>labels per hour (last hour)</span>
      <span class="stat"><b data-testid="progress-eta">${p.left === 0 ? "done" : duration(p.eta_seconds)}</b>time left at that rate</span>
    </div>${people}`;
}

function unreadableBlock(task, failed) {
  if (!state.showUnreadable || !task.counts.failed) return "";
  const rows = (failed ? failed.items : []).map((it) => {
    const name = it.preview.split(/[\/]/).pop() || it.preview;
    return `<tr><td>#${it.id}</td><td title="${esc(it.preview)}"><b>${esc(name)}</b><div class="muted small">${esc(it.preview)}</div></td><td class="error">${esc(it.error || "")}</td></tr>`;
  }).join("");
  const more = failed && failed.total > failed.items.length ? `<p class="muted">${failed.total - failed.items.length} more in the <a href="items.html?task=${task.id}&status=failed">item browser</a>.</p>` : "";
  return `<div class="card" data-testid="unreadable-list"><h2>Unreadable items (${task.counts.failed})</h2>
    <table><thead><tr><th>item</th><th>file</th><th>why</th></tr></thead><tbody>${rows}</tbody></table>${more}</div>`;
}

function importBlock(task) {
  if (task.category.startsWith("text")) {
    return `<div class="row"><input type="file" id="add-csv" accept=".csv,text/csv" data-testid="add-csv">
      <span id="add-csv-columns" hidden>texts in <select id="add-csv-text" data-testid="add-csv-text"></select>
        labels in <select id="add-csv-label" data-testid="add-csv-label"></select></span>
      <button class="small" id="add-csv-go" data-testid="add-csv-go">Add texts from CSV</button></div>
      <div class="row"><input type="file" id="add-jsonl" accept=".jsonl,.json,.ndjson,application/json" data-testid="add-jsonl">
      <button class="small" id="add-jsonl-go" data-testid="add-jsonl-go" title="one JSON object a line: {&quot;text&quot;: …, &quot;${task.kind.value_field}&quot;: …}; Prodigy, doccano and Label Studio exports too">Add texts with their ${task.kind.value_field} from JSON lines</button></div>`;
  }
  return `<div class="row"><input type="file" id="add-files" accept="image/*" multiple><button class="small" id="add-files-go">Upload images</button>
    <input type="text" id="add-folder" placeholder="/folder/below/an/import/root" style="width: 260px"><button class="small" id="add-folder-go">Add folder</button></div>`;
}

async function renderDetail() {
  const el = document.getElementById("detail");
  const id = state.selected;
  if (id === null) return;
  let task, versions, metrics, jobs, suspects, progress, failed;
  try {
    [task, versions, metrics, jobs, suspects, progress] = await Promise.all([
      api.get(`/api/v1/tasks/${id}`), api.get(`/api/v1/tasks/${id}/models`),
      api.get(`/api/v1/tasks/${id}/metrics`), api.get(`/api/v1/tasks/${id}/jobs?limit=20`),
      api.optional(`/api/v1/tasks/${id}/suspects`), api.optional(`/api/v1/tasks/${id}/progress`),
    ]);
    if (state.showUnreadable && task.counts.failed) failed = await api.get(`/api/v1/tasks/${id}/items?status=failed&limit=20`);
  } catch (err) {
    el.innerHTML = `<div class="card error">${esc(err.message)}</div>`;
    return;
  }
  if (state.selected !== id || state.busy || state.picking === id) return;
  const c = task.counts;
  const er = metrics.edit_rate;
  const focus = document.activeElement && document.activeElement.id;
  if (focus && focus.startsWith("add-")) return; // do not wipe a form being filled in
  el.innerHTML = `
    <div class="card" data-testid="task-detail">
      <div class="row" style="justify-content: space-between">
        <div><h2 style="margin: 0" data-testid="task-name">${esc(task.name)}</h2>
          <div class="muted">${esc(task.category)} · ${esc(task.extra)} · labels: ${task.labels.map(esc).join(", ")}</div></div>
        <div class="row">
          ${task.served_version === null ? '<span class="chip">no model yet</span>' : `<span class="chip model" data-testid="serving">serving model-time${task.served_version}</span>`}
          ${task.training ? '<span class="chip warn">training…</span>' : ""}
          ${task.archived ? '<span class="chip" data-testid="archived">archived</span>' : ""}
          ${isAdmin() ? '<button id="train">Train now</button>' : ""}
          <a class="button" href="items.html?task=${task.id}" data-testid="browse-link">Browse items</a>
          ${task.archived ? "" : `<a class="button primary" href="label.html?task=${task.id}" data-testid="label-link">Label →</a>`}
        </div>
      </div>
      <div class="row actions">
        <span class="muted">Export (label, its source, model version and score per item):</span>
        <button class="small" data-export="jsonl" data-testid="export-jsonl">JSON lines</button>
        <button class="small" data-export="csv" data-testid="export-csv">CSV</button>
        <span class="spacer"></span>
        ${isAdmin() ? `<button class="small" id="archive" data-testid="archive">${task.archived ? "Restore" : "Archive"}</button>
          <button class="small danger" id="delete" data-testid="delete">Delete…</button>`
          : `<span class="chip" data-testid="annotator-role">annotator ${esc(state.me.annotator)}: labelling only</span>`}
      </div>
      <div style="margin-top: 12px">
        <span class="stat"><b data-testid="count-human">${c.human_labelled}</b>labelled by people</span>
        <span class="stat"><b data-testid="count-model">${c.model_labelled}</b>labelled by the model</span>
        <span class="stat"><b data-testid="count-unlabelled">${c.unlabelled}</b>unlabelled</span>
        <span class="stat"><b>${pct(er.overall)}</b>edit rate (${er.submitted} labels)</span>
        <span class="stat"><b>${pct(er.second_half)}</b>edit rate, second half</span>
      </div>
      ${countsBar(c)}
      <div class="legend-row"><span><i style="background: var(--accent)"></i>people</span><span><i style="background: var(--model)"></i>model</span>
        <span><i style="background: #fbbf24"></i>being read</span><span><i style="background: var(--bad)"></i>${c.failed
          ? `<a href="#" id="show-unreadable" data-testid="show-unreadable" title="which files, and why">unreadable (${c.failed})</a>` : "unreadable (0)"}</span><span><i style="background: #e5e7eb"></i>unlabelled</span></div>
      ${isAdmin() ? `<h3>Add items</h3>${importBlock(task)}` : ""}
    </div>
    ${unreadableBlock(task, failed)}
    <div class="card"><h2>Progress</h2>${progressBlock(progress.available ? progress.data : null)}</div>
    <div class="card"><h2>Learning curves</h2>${charts(task, metrics)}</div>
    <div class="card"><h2>Model versions</h2>${versionsTable(task, versions)}</div>
    <div class="card"><h2>Suspicious labels</h2>${suspectsBlock(suspects, task)}</div>
    <div class="card"><h2>Jobs</h2>${jobsTable(jobs)}</div>`;
  for (const b of el.querySelectorAll("[data-promote]")) {
    b.onclick = async () => {
      try {
        const r = await api.post(`/api/v1/tasks/${id}/models/${b.dataset.promote}/promote`);
        toast(`model-time${r.served_version} now serves`);
      } catch (err) { toast(err.message); }
      refresh();
    };
  }
  const q = (x) => document.getElementById(x);
  if (q("train")) q("train").onclick = async () => {
    try { await api.post(`/api/v1/tasks/${id}/train`); toast("training queued"); } catch (err) { toast(err.message); }
    refresh();
  };
  for (const b of el.querySelectorAll("[data-export]")) {
    b.onclick = async () => {
      const fmt = b.dataset.export;
      try {
        await api.download(`/api/v1/tasks/${id}/export?format=${fmt}`, `${task.name.replace(/[^\w.-]+/g, "_") || `task-${id}`}.${fmt}`);
      } catch (err) { toast(`export failed: ${err.message}`); }
    };
  }
  if (q("show-unreadable")) q("show-unreadable").onclick = (ev) => {
    ev.preventDefault();
    state.showUnreadable = !state.showUnreadable;
    refresh();
  };
  if (q("archive")) q("archive").onclick = async () => {
    try {
      const t = await api.patch(`/api/v1/tasks/${id}`, { archived: !task.archived });
      toast(t.archived ? `"${t.name}" is archived: kept, no longer handed out to label` : `"${t.name}" is restored`);
    } catch (err) { toast(err.message); }
    refresh();
  };
  if (q("delete")) q("delete").onclick = () => askDelete(task);
  if (isAdmin()) wireImports(task);
}

// Deleting takes the task's name typed again: it removes its items, labels and models for good.
function askDelete(task) {
  const dialog = document.getElementById("delete-dialog");
  const input = document.getElementById("delete-name");
  const go = document.getElementById("delete-confirm");
  document.getElementById("delete-what").textContent = task.name;
  document.getElementById("delete-error").textContent = "";
  input.value = "";
  go.disabled = true;
  input.oninput = () => { go.disabled = input.value !== task.name; };
  go.onclick = async (ev) => {
    ev.preventDefault();
    go.disabled = true;
    try {
      await api.del(`/api/v1/tasks/${task.id}`);
      dialog.close();
      toast(`"${task.name}" is deleted`);
      location.hash = "";
    } catch (err) {
      document.getElementById("delete-error").textContent = err.message;
      go.disabled = false;
    }
    refresh();
  };
  dialog.showModal();
  input.focus();
}

/** What an import left out, by name and why (the first few), for a toast. */
function leftOut(added) {
  const skipped = added.skipped_rows || added.skipped_lines || added.skipped || [];
  const total = added.skipped_total ?? (Array.isArray(added.skipped) ? added.skipped.length : added.skipped) ?? 0;
  if (!total || !Array.isArray(skipped)) return "";
  const named = skipped.slice(0, 3).map((x) => `${x.file} (${x.reason})`).join("; ");
  return ` · left out ${total}: ${named}${total > 3 ? "; …" : ""}`;
}

function imported(added) {
  const labelled = added.labelled ? ` · ${added.labelled} labelled from the data` : "";
  const existing = added.existing ? ` · ${added.existing} already there` : "";
  return `${added.created} new item(s)${existing}${labelled}${leftOut(added)}`;
}

function wireImports(task) {
  const run = async (fn, what) => {
    state.busy = true;
    try { const r = await fn(); toast(`${what}: ${imported(r)}`); } catch (err) { toast(err.message); }
    state.busy = false;
    refresh();
  };
  const q = (id) => document.getElementById(id);
  if (q("add-csv")) q("add-csv").onchange = async () => {
    // The header is shown and the person picks the columns; the page waits for them.
    const f = q("add-csv").files[0];
    state.picking = f ? task.id : null;
    q("add-csv-columns").hidden = !f;
    if (f) columnChoices(parseCsv(await f.text())[0] || [], q("add-csv-text"), q("add-csv-label"));
  };
  if (q("add-csv-go")) q("add-csv-go").onclick = () => {
    const f = q("add-csv").files[0];
    if (!f) return toast("choose a CSV file first");
    if (!q("add-csv-text").value) return toast("choose the column that holds the texts");
    const fd = new FormData(); fd.append("file", f);
    fd.append("text_column", q("add-csv-text").value);
    if (q("add-csv-label").value) fd.append("label_column", q("add-csv-label").value);
    state.picking = null;
    run(() => api.form(`/api/v1/tasks/${task.id}/import/csv`, fd), "CSV");
  };
  if (q("add-jsonl-go")) q("add-jsonl-go").onclick = () => {
    const f = q("add-jsonl").files[0];
    if (!f) return toast("choose a JSON lines file first");
    const fd = new FormData(); fd.append("file", f);
    run(() => api.form(`/api/v1/tasks/${task.id}/import/jsonl`, fd), "JSON lines");
  };
  if (q("add-files-go")) q("add-files-go").onclick = () => {
    const files = q("add-files").files;
    if (!files.length) return toast("choose image files first");
    const fd = new FormData(); for (const f of files) fd.append("files", f);
    run(() => api.form(`/api/v1/tasks/${task.id}/uploads`, fd), "upload");
  };
  if (q("add-folder-go")) q("add-folder-go").onclick = () => {
    const path = q("add-folder").value.trim();
    if (!path) return toast("give a folder path");
    run(() => api.post(`/api/v1/tasks/${task.id}/import/folder`, { path }), "folder");
  };
}

function table(rows) {
  if (!rows.length) return '<p class="muted">none</p>';
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))].slice(0, 8);
  const cell = (v) => {
    if (v === true) return '<span class="chip good">yes</span>';
    if (v === false) return '<span class="chip bad">no</span>';
    if (v === "good") return '<span class="chip good">good</span>';
    if (v === "bad") return '<span class="chip bad">bad</span>';
    if (v !== null && typeof v === "object") return esc(Array.isArray(v) ? v.join(", ") : JSON.stringify(v));
    return esc(v);
  };
  return `<table><thead><tr>${keys.map((k) => `<th>${esc(k)}</th>`).join("")}</tr></thead>
    <tbody>${rows.map((r) => `<tr>${keys.map((k) => `<td>${cell(r[k])}</td>`).join("")}</tr>`).join("")}</tbody></table>`;
}

function asRows(data, ...keys) {
  if (Array.isArray(data)) return data;
  for (const k of keys) if (data && Array.isArray(data[k])) return data[k];
  return data ? [data] : [];
}

// The server's mode is asked once (GET /info): a single server has no cluster endpoints, and is
// not polled for them.
async function serverInfo() {
  if (!state.info) state.info = api.get("/api/v1/info").catch((err) => { state.info = null; throw err; });
  return state.info;
}

async function renderCluster() {
  const el = document.getElementById("cluster");
  try {
    const info = await serverInfo();
    const has = info.endpoints || {};
    if (!has.cluster_workers && !has.cluster_machines) {
      if (el.dataset.mode !== info.mode) {
        el.dataset.mode = info.mode;
        el.innerHTML = `<p data-testid="single-server">A single server (${esc(info.mode)} mode): jobs run in its own worker processes (see <b>Jobs and queue</b>).</p>
          <p class="na" data-testid="machines-na">Machines: not available (no cluster on this server).</p>
          <p class="na" data-testid="workers-na">Workers: not available (no /cluster/workers endpoint on this server).</p>`;
      }
      return;
    }
    const [machines, workers] = await Promise.all([
      has.cluster_machines ? api.get("/api/v1/cluster/machines") : null,
      has.cluster_workers ? api.get("/api/v1/cluster/workers") : null,
    ]);
    const parts = [];
    if (machines) {
      const d = machines || {};
      const masters = ["master_train", "master_inference"].filter((k) => d[k]).map((k) => `${k}: <b>${esc(typeof d[k] === "object" ? (d[k].ip || d[k].hostname || JSON.stringify(d[k])) : d[k])}</b>`);
      parts.push(`<h3>Machines</h3>${masters.length ? `<p>${masters.join(" · ")}</p>` : ""}${table(asRows(d, "machines", "items"))}`);
    } else {
      parts.push('<p class="na" data-testid="machines-na">Machines: not available (no /cluster/machines endpoint on this server).</p>');
    }
    if (workers) {
      parts.push(`<h3>Workers</h3>${table(asRows(workers, "workers", "items"))}`);
    } else {
      parts.push('<p class="na" data-testid="workers-na">Workers: not available (no /cluster/workers endpoint on this server).</p>');
    }
    el.dataset.mode = info.mode;
    el.innerHTML = parts.join("");
  } catch (err) {
    el.innerHTML = `<p class="error">${esc(err.message)}</p>`;
  }
}

async function renderServer() {
  const chip = document.getElementById("server");
  const queue = document.getElementById("queue");
  try {
    const h = await api.get("/health");
    chip.textContent = `v${h.version} · ${h.status}`;
    const j = h.jobs || {};
    const running = Array.isArray(j.running) ? j.running.length : (j.running ?? "–");
    const workers = Array.isArray(j.workers) ? j.workers.length : j.workers;
    queue.innerHTML = `<div>backend <b>${esc(j.backend ?? "none")}</b>${workers ? ` · ${workers} workers` : ""}</div>
      <div data-testid="queue-depth">queued <b>${esc(j.queued ?? "–")}</b> · running <b>${esc(running)}</b></div>`;
  } catch (err) {
    chip.textContent = "server unreachable";
    queue.textContent = err.message;
  }
}

async function refresh() {
  try {
    if (!state.me) {
      state.me = await api.me();
      document.getElementById("new-task").hidden = !isAdmin();
      if (!isAdmin()) document.getElementById("who").textContent = `annotator ${state.me.annotator}`;
    }
    state.tasks = await api.get("/api/v1/tasks");
  } catch (err) {
    document.getElementById("tasks").innerHTML = `<li class="error">${esc(err.message)}</li>`;
  }
  state.selected = selectedFromHash();
  if (state.selected !== null && !state.tasks.some((t) => t.id === state.selected)) state.selected = null;
  const active = state.tasks.filter((t) => !t.archived);
  if (state.selected === null && active.length) state.selected = active[active.length - 1].id;
  if (state.selected === null) {
    document.getElementById("detail").innerHTML = document.getElementById("welcome").innerHTML;
  }
  renderTasks();
  await Promise.all([renderDetail(), renderServer(), renderCluster()]);
}

// --- new task -------------------------------------------------------------------------------

async function showFolder(path) {
  const box = document.getElementById("folders");
  try {
    const d = await api.get(`/api/v1/import/folders${path ? `?path=${encodeURIComponent(path)}` : ""}`);
    state.folder = d.path;
    state.folderNames = d.path ? d.folders.map((f) => f.name) : [];
    document.getElementById("folder-path").textContent = d.path || "Import roots (folders this server may read)";
    const rows = [];
    if (d.parent) rows.push(`<div data-path="${esc(d.parent)}">⬑ ..</div>`);
    for (const f of d.folders) rows.push(`<div data-path="${esc(f.path)}" data-testid="folder">📁 ${esc(f.name)} <span class="muted">(${f.images} images)</span></div>`);
    if (d.path && !d.folders.length && !d.parent) rows.push('<div class="muted">(no sub-folders)</div>');
    if (!d.path && !d.folders.length) rows.push('<div class="muted">No import root: start the server with --import-root FOLDER, or upload files.</div>');
    box.innerHTML = rows.join("");
    for (const div of box.querySelectorAll("[data-path]")) div.onclick = () => showFolder(div.dataset.path);
    document.getElementById("folder-info").textContent = d.path ? `${d.images} images here${d.sample.length ? ` (${d.sample.slice(0, 4).join(", ")}…)` : ""}` : "";
  } catch (err) {
    box.innerHTML = `<div class="error">${esc(err.message)}</div>`;
  }
}

function syncSourceFields(form) {
  const text = form.kind.value !== "image";
  document.getElementById("source-image").hidden = text;
  document.getElementById("source-text").hidden = !text;
  const upload = form.imgsrc.value === "upload";
  document.getElementById("folder-pick").hidden = upload;
  document.getElementById("upload-pick").hidden = !upload;
}

/** The records of a CSV text (RFC 4180 quoting), as the server reads them. */
function parseCsv(text) {
  const rows = [];
  let row = [], field = "", quoted = false;
  text = text.replace(/^\uFEFF/, "");
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quoted) {
      if (ch !== '"') field += ch;
      else if (text[i + 1] === '"') { field += '"'; i++; } else quoted = false;
    } else if (ch === '"') quoted = true;
    else if (ch === ",") { row.push(field); field = ""; }
    else if (ch === "\n" || ch === "\r") {
      if (ch === "\r" && text[i + 1] === "\n") i++;
      row.push(field); rows.push(row); row = []; field = "";
    } else field += ch;
  }
  if (field !== "" || row.length) { row.push(field); rows.push(row); }
  return rows;
}

/** Fill the column choices with a CSV's header: the column named "text" is preselected, nothing
 * else (never a guess); labels are optional. */
function columnChoices(header, textSelect, labelSelect) {
  const textAt = header.findIndex((h) => h.trim().toLowerCase() === "text");
  const opts = header.map((h, i) => `<option value="${esc(h)}"${i === textAt ? " selected" : ""}>${esc(h)}</option>`).join("");
  textSelect.innerHTML = (textAt < 0 ? '<option value="" selected disabled>choose the column of the texts</option>' : "") + opts;
  labelSelect.innerHTML = '<option value="">(none)</option>' + header.map((h) => `<option value="${esc(h)}">${esc(h)}</option>`).join("");
}

/** Show the chosen CSV's header: the person picks the column of the texts and, optionally, a
 * column of labels. */
async function showCsvColumns(form) {
  const box = document.getElementById("csv-columns");
  state.csvRows = null;
  box.hidden = true;
  const file = form.csv.files[0];
  if (!file) return;
  const rows = parseCsv(await file.text());
  if (!rows.length) return;
  state.csvRows = rows;
  columnChoices(rows[0], form.text_column, form.label_column);
  box.hidden = false;
}

/** The labels the data brings when the person left the labels empty: the class folders' names,
 * or the values of the CSV's label column. */
function labelsFromData(form, text) {
  if (!text && form.imgsrc.value === "folder" && form.fromfolders.checked) return state.folderNames || [];
  if (text && form.label_column.value && state.csvRows) {
    const at = state.csvRows[0].indexOf(form.label_column.value);
    const values = state.csvRows.slice(1).flatMap((r) => {
      const cell = (r[at] || "").trim();
      return form.multi.checked ? cell.split("|") : [cell];
    }).map((v) => v.trim()).filter(Boolean);
    return [...new Set(values)];
  }
  return [];
}

async function createTask(form) {
  const text = form.kind.value !== "image";
  const spans = form.kind.value === "spans"; // one label per span: never multi-label
  const typed = form.labels.value.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
  const fromData = !text && form.imgsrc.value === "folder" && form.fromfolders.checked || text && !spans && !!form.label_column.value;
  if (text && !form.csv.files.length) throw new Error("choose a CSV file of texts");
  if (text && !state.csvRows) await showCsvColumns(form); // submitted before the header was read
  if (text && !form.text_column.value) throw new Error("choose the column that holds the texts");
  const labels = typed.length || spans ? typed : labelsFromData(form, text);
  if (!labels.length) throw new Error(fromData ? "the data names no labels: give the labels" : "give the labels, one per line or separated by commas");
  const body = {
    name: form.name.value.trim(), labels,
    category: spans ? "text-spans" : text ? "text-classification" : "image-classification",
    extra: form.multi.checked && !spans ? "multi-label" : "multi-class",
  };
  if (!text && form.imgsrc.value === "folder" && !state.folder) throw new Error("open the folder that holds the images");
  if (!text && form.imgsrc.value === "upload" && !form.files.files.length) throw new Error("choose image files");
  const task = await api.post("/api/v1/tasks", body);
  let added;
  try {
    if (text) {
      const fd = new FormData(); fd.append("file", form.csv.files[0]);
      fd.append("text_column", form.text_column.value);
      if (form.label_column.value) { fd.append("label_column", form.label_column.value); fd.append("add_labels", "true"); }
      added = await api.form(`/api/v1/tasks/${task.id}/import/csv`, fd);
    } else if (form.imgsrc.value === "upload") {
      const fd = new FormData(); for (const f of form.files.files) fd.append("files", f);
      added = await api.form(`/api/v1/tasks/${task.id}/uploads`, fd);
    } else {
      const classes = form.fromfolders.checked;
      added = await api.post(`/api/v1/tasks/${task.id}/import/folder`, { path: state.folder, labels_from_folders: classes, add_labels: classes });
    }
  } catch (err) {
    await api.del(`/api/v1/tasks/${task.id}`).catch(() => null);
    throw err;
  }
  return { task, added };
}

function setupCreate() {
  const dialog = document.getElementById("create");
  const form = document.getElementById("create-form");
  document.getElementById("new-task").onclick = () => {
    document.getElementById("create-error").textContent = "";
    syncSourceFields(form);
    showFolder(null);
    dialog.showModal();
  };
  form.kind.onchange = () => syncSourceFields(form);
  form.csv.onchange = () => showCsvColumns(form);
  for (const r of form.imgsrc) r.onchange = () => syncSourceFields(form);
  form.addEventListener("submit", async (ev) => {
    if (ev.submitter && ev.submitter.value === "cancel") return;
    ev.preventDefault();
    const button = document.getElementById("create-submit");
    button.disabled = true;
    try {
      const { task, added } = await createTask(form);
      dialog.close();
      form.reset();
      document.getElementById("csv-columns").hidden = true;
      state.csvRows = null;
      toast(`task "${task.name}" created: ${imported(added)}`);
      location.hash = `task=${task.id}`;
    } catch (err) {
      document.getElementById("create-error").textContent = err.message;
    } finally {
      button.disabled = false;
    }
  });
}

window.addEventListener("hashchange", refresh);
setupCreate();
refresh();
setInterval(refresh, REFRESH_MS);
