// Hand-written SVG line charts (no library): learning curves against the number of labels.
"use strict";

function niceTicks(min, max, count) {
  if (max <= min) max = min + 1;
  const raw = (max - min) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let t = Math.ceil(min / step) * step; t <= max + 1e-9; t += step) ticks.push(+t.toFixed(10));
  return ticks;
}

// series: [{name, color, points: [{x, y, label?, highlight?}], dashed?}]
function lineChart({ title, series, xLabel, yLabel, yMin = 0, yMax = 1, yFormat = (v) => v, testid }) {
  const W = 460, H = 250, L = 48, R = 12, T = 44, B = 40;
  const all = series.flatMap((s) => s.points);
  const xMax = Math.max(10, ...all.map((p) => p.x));
  const xs = (x) => L + (x / xMax) * (W - L - R);
  const ys = (y) => T + (1 - (y - yMin) / (yMax - yMin)) * (H - T - B);
  const parts = [];
  parts.push(`<text x="${L}" y="16" class="chart-title">${esc(title)}</text>`);
  for (const t of niceTicks(yMin, yMax, 4)) {
    parts.push(`<line x1="${L}" x2="${W - R}" y1="${ys(t)}" y2="${ys(t)}" class="grid"/>`);
    parts.push(`<text x="${L - 6}" y="${ys(t) + 4}" class="tick" text-anchor="end">${esc(yFormat(t))}</text>`);
  }
  for (const t of niceTicks(0, xMax, 5)) {
    parts.push(`<line x1="${xs(t)}" x2="${xs(t)}" y1="${H - B}" y2="${H - B + 4}" class="axis"/>`);
    parts.push(`<text x="${xs(t)}" y="${H - B + 16}" class="tick" text-anchor="middle">${t}</text>`);
  }
  parts.push(`<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" class="axis"/>`);
  parts.push(`<line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" class="axis"/>`);
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 6}" class="axis-label" text-anchor="middle">${esc(xLabel)}</text>`);
  parts.push(`<text x="12" y="${(T + H - B) / 2}" class="axis-label" text-anchor="middle" transform="rotate(-90 12 ${(T + H - B) / 2})">${esc(yLabel)}</text>`);
  if (!all.length) {
    parts.push(`<text x="${(L + W) / 2}" y="${(T + H - B) / 2}" class="empty" text-anchor="middle">no data yet</text>`);
  }
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p) => `${xs(p.x).toFixed(1)},${ys(p.y).toFixed(1)}`).join(" ");
    parts.push(`<polyline points="${d}" fill="none" stroke="${s.color}" stroke-width="2" ${s.dashed ? 'stroke-dasharray="5 4"' : ""} class="series" data-series="${esc(s.name)}"/>`);
    for (const p of s.points) {
      const r = p.highlight ? 6 : 3.5;
      parts.push(`<circle cx="${xs(p.x).toFixed(1)}" cy="${ys(p.y).toFixed(1)}" r="${r}" fill="${p.highlight ? "#fff" : s.color}" stroke="${s.color}" stroke-width="2" class="point${p.highlight ? " serving" : ""}"><title>${esc(p.label || "")} ${esc(yFormat(p.y))} at ${p.x} labels</title></circle>`);
    }
    const lx = L + i * 190;
    parts.push(`<rect x="${lx}" y="${T - 17}" width="10" height="3" fill="${s.color}"/><text x="${lx + 14}" y="${T - 13}" class="legend">${esc(s.name)}</text>`);
  });
  return `<svg viewBox="0 0 ${W} ${H}" class="chart" role="img" aria-label="${esc(title)}" data-testid="${esc(testid || "")}">${parts.join("")}</svg>`;
}
