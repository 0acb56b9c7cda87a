// A small client of labelloop's HTTP API for the pages: JSON in and out, the API token (if the
// server wants one) kept in this browser's localStorage, errors as readable messages.
"use strict";

const TOKEN_KEY = "labelloop.token";

// A link may carry a token (`?token=…`, e.g. an annotator's, handed out by the admin): it is kept
// in this browser and taken out of the address bar at once, so it is not bookmarked or shared.
(function takeTokenFromLink() {
  const url = new URL(location.href);
  const token = url.searchParams.get("token");
  if (token === null) return;
  if (token.trim()) localStorage.setItem(TOKEN_KEY, token.trim());
  url.searchParams.delete("token");
  history.replaceState(null, "", url.pathname + url.search + url.hash);
})();

class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

function authHeaders() {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function request(method, path, body, isForm) {
  const headers = authHeaders();
  const init = { method, headers };
  if (body !== undefined) {
    if (isForm) {
      init.body = body;
    } else {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "unreachable", "the labelloop server does not answer");
  }
  if (resp.status === 401) askForToken();
  if (!resp.ok) {
    let code = "error";
    let detail = resp.statusText;
    try {
      const j = await resp.json();
      code = j.error || code;
      detail = j.detail || detail;
    } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, code, detail);
  }
  if (resp.status === 204) return null;
  return resp.json();
}

const api = {
  get: (path) => request("GET", path),
  post: (path, body) => request("POST", path, body),
  patch: (path, body) => request("PATCH", path, body),
  form: (path, formData) => request("POST", path, formData, true),
  del: (path) => request("DELETE", path),
  // Who this browser's token says it is ({role: admin|annotator, annotator}); asked once.
  me() {
    if (!api._me) api._me = request("GET", "/api/v1/me").catch((err) => { api._me = null; throw err; });
    return api._me;
  },
  // A file from the API saved by the browser (a plain link could not send the token).
  async download(path, filename) {
    const url = await api.blobUrl(path);
    const a = document.createElement("a");
    a.href = url;
    a.download = filename;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  },
  // Sent even while the page closes (giving back reserved items).
  farewell(method, path) {
    try {
      fetch(path, { method, headers: authHeaders(), keepalive: true }).catch(() => null);
    } catch (_) { /* the page is going away */ }
  },
  // An endpoint that a server may not have (another component adds it): null when it is absent.
  async optional(path) {
    try {
      return { available: true, data: await request("GET", path) };
    } catch (err) {
      if (err.status === 404 && err.code === "http_error") return { available: false, data: null };
      if (err.status === 405 || err.status === 501) return { available: false, data: null };
      throw err;
    }
  },
  // Item content (an image) as an object URL: <img> cannot send the API token by itself.
  async blobUrl(path) {
    const resp = await fetch(path, { headers: authHeaders() });
    if (!resp.ok) {
      let detail = resp.statusText;
      try { detail = (await resp.json()).detail || detail; } catch (_) { /* binary */ }
      throw new ApiError(resp.status, "error", detail);
    }
    return URL.createObjectURL(await resp.blob());
  },
};

function askForToken() {
  if (document.getElementById("token-banner")) return;
  const bar = document.createElement("div");
  bar.id = "token-banner";
  bar.className = "banner";
  bar.innerHTML = `This server asks for an API token.
    <input type="password" id="token-input" placeholder="API token" autocomplete="off">
    <button id="token-save">Use token</button>`;
  document.body.prepend(bar);
  document.getElementById("token-save").onclick = () => {
    localStorage.setItem(TOKEN_KEY, document.getElementById("token-input").value.trim());
    location.reload();
  };
}

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function pct(x, digits = 1) {
  return x === null || x === undefined ? "–" : `${(100 * x).toFixed(digits)}%`;
}

function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

function versionName(v) {
  return v === null || v === undefined ? "no model yet" : `model-time${v}`;
}
