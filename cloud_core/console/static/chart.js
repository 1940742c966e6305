// One chart per reading field, on the vendored uPlot (static/uPlot.iife.min.js, MIT: static/uPlot.LICENSE): live points are
// appended and the oldest dropped beyond a fixed capacity and time span, so a chart fed 10 readings/s
// for hours holds the same memory; redraws are coalesced to one per animation frame. Anomaly episodes
// are drawn as shaded bands over the plot.

import {h} from './dom.js';
import {num} from './format.js';

export const UNITS = {
  temperature: '°C', humidity: '% RH', pressure: 'hPa', battery_level: '%', signal_strength: 'dBm',
  quality_score: '',
};
const COLORS = ['#1f6feb', '#c2410c', '#15803d', '#7e22ce', '#b91c1c', '#0f766e', '#a16207'];
let colorIndex = 0;

export class FieldChart {
  /**
   * @param {HTMLElement} container
   * @param {string} field
   * @param {{capacity?: number, spanMs?: number}} options capacity: points kept at most (live);
   *   spanMs: live window, points older than the newest minus this are dropped.
   */
  constructor(container, field, {capacity = 3000, spanMs = 600000} = {}) {
    this.field = field;
    this.capacity = capacity;
    this.spanMs = spanMs;
    this.live = true;
    this.xs = [];
    this.ys = [];
    this.episodes = [];
    this.frame = 0;
    this.last = h('span', {class: 'last'});
    this.plot = h('div', {class: 'plot'});
    this.root = h('figure', {class: 'chart', dataset: {field, points: '0', episodes: '0'}},
      h('figcaption', {}, h('strong', {}, field), UNITS[field] ? ` (${UNITS[field]})` : '', ' ', this.last),
      this.plot);
    container.append(this.root);
    const stroke = COLORS[colorIndex++ % COLORS.length];
    this.u = new window.uPlot({
      width: this.width(), height: 190, ms: 1,
      legend: {show: false},
      cursor: {drag: {x: false, y: false}},
      scales: {x: {time: true}},
      series: [{}, {label: field, stroke, width: 1.5, spanGaps: false, points: {size: 4}}],
      axes: [{stroke: '#555', grid: {stroke: '#eee'}}, {stroke: '#555', grid: {stroke: '#eee'}, size: 72}],
      hooks: {draw: [(u) => this.drawEpisodes(u)]},
    }, [this.xs, this.ys], this.plot);
    this.u.root.setAttribute('role', 'img');
    this.resize = new ResizeObserver(() => this.u.setSize({width: this.width(), height: 190}));
    this.resize.observe(this.plot);
  }

  width() {
    return Math.max(240, Math.floor(this.plot.getBoundingClientRect().width) || 600);
  }

  /** Replace everything with history points [{ts, value}] (no live trimming). */
  setHistory(points) {
    this.live = false;
    this.xs.length = 0;
    this.ys.length = 0;
    for (const p of points) {
      this.xs.push(p.ts);
      this.ys.push(p.value);
    }
    this.schedule();
  }

  /** Start live mode with what the stream sends next. */
  startLive() {
    this.live = true;
    this.xs.length = 0;
    this.ys.length = 0;
    this.schedule();
  }

  /** Append live rows [{ts, values}]: only this chart's field; older-than-newest points are skipped. */
  push(rows) {
    for (const row of rows) {
      const value = row.values[this.field];
      if (value === undefined || value === null) continue;
      const n = this.xs.length;
      if (n && row.ts <= this.xs[n - 1]) continue;
      this.xs.push(row.ts);
      this.ys.push(value);
    }
    const newest = this.xs[this.xs.length - 1];
    let drop = Math.max(0, this.xs.length - this.capacity);
    while (drop < this.xs.length && newest - this.xs[drop] > this.spanMs) drop++;
    if (drop) {
      this.xs.splice(0, drop);
      this.ys.splice(0, drop);
    }
    this.schedule();
  }

  setEpisodes(episodes) {
    this.episodes = episodes.filter((e) => e.field === this.field || e.field === '*');
    this.schedule();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.u.setData([this.xs, this.ys]);
      const n = this.xs.length;
      this.root.dataset.points = String(n);
      this.last.textContent = n ? `latest ${num(this.ys[n - 1])}` : 'no data in this range';
      this.u.root.setAttribute('aria-label',
        `${this.field}: ${n} points${n ? `, latest ${num(this.ys[n - 1])}` : ''}, ${this.root.dataset.episodes} anomaly episodes shown`);
    });
  }

  drawEpisodes(u) {
    const [xmin, xmax] = [u.scales.x.min, u.scales.x.max];
    let shown = 0;
    if (xmin === null || xmin === undefined) return;
    const ctx = u.ctx;
    ctx.save();
    for (const ep of this.episodes) {
      const start = Math.max(ep.start_ms, xmin);
      const end = Math.min(Math.max(ep.end_ms, ep.start_ms), xmax);
      if (end < xmin || start > xmax || start > end) continue;
      const x0 = u.valToPos(start, 'x', true);
      const x1 = Math.max(u.valToPos(end, 'x', true), x0 + 3 * devicePixelRatio);
      ctx.fillStyle = 'rgba(220, 38, 38, 0.22)';
      ctx.fillRect(x0, u.bbox.top, x1 - x0, u.bbox.height);
      ctx.fillStyle = 'rgba(185, 28, 28, 0.9)';
      ctx.fillRect(x0, u.bbox.top, Math.max(1, x1 - x0), 3 * devicePixelRatio);
      shown++;
    }
    ctx.restore();
    this.root.dataset.episodes = String(shown);
  }

  destroy() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.resize.disconnect();
    this.u.destroy();
    this.root.remove();
  }
}
