// charts.js — the overview's charts (uPlot, embedded in the binary: no CDN). uPlot styles its
// elements through the CSSOM, which the console's Content-Security-Policy allows.
import uPlot from './vendor/uPlot.esm.js';
import {h, clear} from './dom.js';

let plots = [];

function width(el) {
  return Math.max(280, Math.min(el.clientWidth || 600, 900));
}

export function drawCharts(el, buckets) {
  for (const p of plots) p.destroy();
  plots = [];
  clear(el);
  const t = buckets.map((b) => b.t / 1000);
  const col = (k) => buckets.map((b) => b[k]);
  const a = h('div.chart', h('h3', 'Throughput (per minute)'));
  const b = h('div.chart', h('h3', 'Publish → success latency (ms)'));
  el.appendChild(a);
  el.appendChild(b);
  const w = width(a);
  plots.push(new uPlot({
    width: w, height: 220,
    series: [{},
      {label: 'published', stroke: '#3b6fd8', width: 2},
      {label: 'succeeded', stroke: '#1f8f4e', width: 2},
      {label: 'failed', stroke: '#d08a00', width: 2},
      {label: 'dead', stroke: '#c23b3b', width: 2}],
    axes: [{}, {size: 50}],
  }, [t, col('published'), col('succeeded'), col('failed'), col('dead')], a));
  plots.push(new uPlot({
    width: w, height: 220,
    series: [{},
      {label: 'p50', stroke: '#3b6fd8', width: 2, spanGaps: true, points: {show: true, size: 6}},
      {label: 'p99', stroke: '#8a4fd0', width: 2, spanGaps: true, points: {show: true, size: 6}}],
    axes: [{}, {size: 60}],
  }, [t, col('p50Ms'), col('p99Ms')], b));
}
