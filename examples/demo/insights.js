// The insights page: draws the funnel as a bar chart and the cohorts as a
// heat map, in SVG built with DOM calls (no inline code, no third-party
// script; the page's CSP allows scripts from this origin only). Numbers
// are rendered as text, never as HTML.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const STEP_TITLES = { view_product: 'Viewed a product', add_to_cart: 'Added to cart', checkout: 'Checked out' };

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

async function get(path) {
  const res = await fetch(path, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  return { status: res.status, body };
}

const pct = (n, of) => (of > 0 ? Math.round((100 * n) / of) : 0);

function drawFunnel(report) {
  const box = document.getElementById('funnel');
  box.replaceChildren();
  const steps = report.steps;
  const top = Math.max(1, steps[0] ? steps[0].sessions : 0);
  const width = 640, barH = 44, gap = 18, left = 170, right = 150;
  const height = steps.length * (barH + gap) + gap;
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', class: 'funnel-svg',
    'aria-label': 'Funnel: sessions reaching each step' });
  steps.forEach((step, i) => {
    const y = gap + i * (barH + gap);
    const w = Math.max(2, ((width - left - right) * step.sessions) / top);
    const bar = svg('rect', { x: left, y, width: w, height: barH, rx: 6, class: 'funnel-bar',
      'data-testid': `funnel-bar-${i}`, 'data-sessions': step.sessions });
    bar.append(svg('title', {}, `${step.event}: ${step.sessions} sessions`));
    chart.append(
      svg('text', { x: left - 12, y: y + barH / 2 + 5, 'text-anchor': 'end', class: 'funnel-label' },
        STEP_TITLES[step.event] || step.event),
      bar,
      svg('text', { x: left + w + 10, y: y + barH / 2 - 3, class: 'funnel-count' }, step.sessions.toLocaleString('en')),
      svg('text', { x: left + w + 10, y: y + barH / 2 + 15, class: 'funnel-pct', 'data-testid': `funnel-pct-${i}` },
        i === 0 ? '100%' : `${pct(step.sessions, steps[i - 1].sessions)}% of previous · ${pct(step.sessions, top)}% overall`),
    );
  });
  box.append(chart);
}

function drawCohorts(report) {
  const box = document.getElementById('cohorts');
  box.replaceChildren();
  const rows = report.cohorts;
  if (rows.length === 0) {
    box.append(Object.assign(document.createElement('p'), { className: 'muted', textContent: 'No logged-in sessions yet.' }));
    return;
  }
  const cols = Math.max(...rows.map((r) => r.active.length));
  const cell = 46, left = 150, top = 34, label = report.period === 'week' ? 'week' : 'day';
  const width = left + cols * cell + 10, height = top + rows.length * cell + 10;
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', class: 'heatmap-svg',
    'aria-label': `Retention by ${label} of first session` });
  chart.append(svg('text', { x: left - 10, y: top - 12, 'text-anchor': 'end', class: 'heat-head' }, `first ${label} · users`));
  for (let k = 0; k < cols; k++) {
    chart.append(svg('text', { x: left + k * cell + cell / 2, y: top - 12, 'text-anchor': 'middle', class: 'heat-head' }, `+${k}`));
  }
  rows.forEach((row, r) => {
    const y = top + r * cell;
    chart.append(svg('text', { x: left - 10, y: y + cell / 2 + 5, 'text-anchor': 'end', class: 'heat-head' },
      `${row.start} · ${row.users}`));
    row.active.forEach((n, k) => {
      const share = pct(n, row.users);
      const rect = svg('rect', { x: left + k * cell + 2, y: y + 2, width: cell - 4, height: cell - 4, rx: 4,
        class: 'heat-cell', 'fill-opacity': (0.08 + 0.92 * (share / 100)).toFixed(2), 'data-testid': 'heat-cell' });
      rect.append(svg('title', {}, `${row.start}, ${label} ${k}: ${n} of ${row.users} users`));
      chart.append(rect, svg('text', { x: left + k * cell + cell / 2, y: y + cell / 2 + 5, 'text-anchor': 'middle',
        class: share > 55 ? 'heat-num light' : 'heat-num' }, `${share}%`));
    });
  });
  box.append(chart);
}

async function loadCohorts(period) {
  const cohorts = await get(`/api/insights/cohorts?period=${period}`);
  if (cohorts.status === 200) drawCohorts(cohorts.body);
  for (const b of document.querySelectorAll('[data-period]')) b.classList.toggle('primary', b.dataset.period === period);
}

async function load() {
  const note = document.getElementById('insights-note');
  const funnel = await get('/api/insights/funnel?steps=view_product,add_to_cart,checkout&within=3600');
  if (funnel.status !== 200) {
    note.textContent = funnel.status === 401 || funnel.status === 403
      ? 'Insights are for admins: log in on the shop page, then elevate to admin.'
      : `Insights are unavailable (${(funnel.body && funnel.body.error) || funnel.status}).`;
    note.dataset.state = 'refused';
    return;
  }
  drawFunnel(funnel.body);
  await loadCohorts('week');
  note.textContent = `${funnel.body.steps[0].sessions.toLocaleString('en')} sessions viewed a product.`;
  note.dataset.state = 'ready';
}

document.addEventListener('DOMContentLoaded', () => {
  for (const b of document.querySelectorAll('[data-period]')) {
    b.addEventListener('click', () => loadCohorts(b.dataset.period));
  }
  load();
});
