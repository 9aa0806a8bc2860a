// A dependency-free SVG chart: per model, throughput (images/s) and p99 latency (ms) against
// concurrency (log2 axis), one line per output format, the raw-ORT ceiling as a dashed line.
import type { BenchResult, ModelResult, PhaseResult } from './types.js';

const W = 420;
const H = 260;
const M = { l: 62, r: 16, t: 34, b: 42 };
const COLORS: Record<string, string> = { jpeg: '#1f77b4', png: '#d62728' };

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function niceMax(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmt(v: number): string {
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  if (v >= 1) return v.toFixed(2);
  return v.toPrecision(2);
}

function panel(x0: number, y0: number, title: string, yLabel: string, levels: number[], series: { name: string; color: string; pts: [number, number][] }[],
  ceiling?: { value: number; label: string }): string {
  const pw = W - M.l - M.r;
  const ph = H - M.t - M.b;
  const lmin = Math.log2(Math.min(...levels));
  const lmax = Math.log2(Math.max(...levels));
  const xs = (c: number): number => x0 + M.l + (lmax === lmin ? pw / 2 : ((Math.log2(c) - lmin) / (lmax - lmin)) * pw);
  const all = series.flatMap((s) => s.pts.map((p) => p[1])).concat(ceiling ? [ceiling.value] : []).filter(Number.isFinite);
  const ymax = niceMax(Math.max(...all, 1e-9) * 1.08);
  const ys = (v: number): number => y0 + M.t + ph - (v / ymax) * ph;
  const out: string[] = [];
  out.push(`<text x="${x0 + W / 2}" y="${y0 + 18}" text-anchor="middle" font-size="13" font-weight="bold">${esc(title)}</text>`);
  out.push(`<rect x="${x0 + M.l}" y="${y0 + M.t}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`);
  for (let i = 0; i <= 4; i++) {
    const v = (ymax * i) / 4;
    const y = ys(v);
    out.push(`<line x1="${x0 + M.l}" x2="${x0 + M.l + pw}" y1="${y}" y2="${y}" stroke="#eee"/>`);
    out.push(`<text x="${x0 + M.l - 5}" y="${y + 4}" text-anchor="end" font-size="10">${fmt(v)}</text>`);
  }
  for (const c of levels) {
    out.push(`<text x="${xs(c)}" y="${y0 + M.t + ph + 14}" text-anchor="middle" font-size="10">${c}</text>`);
  }
  out.push(`<text x="${x0 + M.l + pw / 2}" y="${y0 + H - 8}" text-anchor="middle" font-size="11">concurrency (clients)</text>`);
  out.push(`<text transform="translate(${x0 + 14},${y0 + M.t + ph / 2}) rotate(-90)" text-anchor="middle" font-size="11">${esc(yLabel)}</text>`);
  if (ceiling && Number.isFinite(ceiling.value)) {
    const y = ys(ceiling.value);
    out.push(`<line x1="${x0 + M.l}" x2="${x0 + M.l + pw}" y1="${y}" y2="${y}" stroke="#2ca02c" stroke-dasharray="5,4"/>`);
    out.push(`<text x="${x0 + M.l + pw - 4}" y="${y - 4}" text-anchor="end" font-size="10" fill="#2ca02c">${esc(ceiling.label)}</text>`);
  }
  series.forEach((s, i) => {
    const pts = s.pts.filter((p) => Number.isFinite(p[1]));
    if (pts.length) {
      out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${pts.map(([c, v]) => `${xs(c).toFixed(1)},${ys(v).toFixed(1)}`).join(' ')}"/>`);
      for (const [c, v] of pts) out.push(`<circle cx="${xs(c).toFixed(1)}" cy="${ys(v).toFixed(1)}" r="3" fill="${s.color}"><title>${esc(`${s.name} c=${c}: ${fmt(v)}`)}</title></circle>`);
    }
    out.push(`<rect x="${x0 + M.l + 8}" y="${y0 + M.t + 8 + i * 14}" width="10" height="3" fill="${s.color}"/>`);
    out.push(`<text x="${x0 + M.l + 22}" y="${y0 + M.t + 12 + i * 14}" font-size="10">${esc(s.name)}</text>`);
  });
  return out.join('\n');
}

function modelRow(m: ModelResult, y0: number, maxBatch: number): string {
  const phases = m.phases.filter((p) => !p.label);
  const levels = [...new Set(phases.map((p) => p.concurrency))].sort((a, b) => a - b);
  const formats = [...new Set(phases.map((p) => p.format))];
  const series = (f: (p: PhaseResult) => number): { name: string; color: string; pts: [number, number][] }[] =>
    formats.map((fm) => ({ name: fm.toUpperCase(), color: COLORS[fm] ?? '#555', pts: phases.filter((p) => p.format === fm).sort((a, b) => a.concurrency - b.concurrency).map((p) => [p.concurrency, f(p)] as [number, number]) }));
  const raw = m.raw?.points.find((p) => p.output === 'image' && p.batch === maxBatch) ?? m.raw?.points.filter((p) => p.output === 'image').at(-1);
  return panel(0, y0, `${m.label}: throughput`, 'images/s', levels, series((p) => p.imagesPerSec),
    raw ? { value: raw.imagesPerSec, label: `raw ORT, batch ${raw.batch}: ${fmt(raw.imagesPerSec)}/s` } : undefined)
    + '\n' + panel(W, y0, `${m.label}: p99 latency`, 'ms', levels, series((p) => p.latency.p99));
}

export function renderChart(r: BenchResult): string {
  const maxBatch = Number(r.settings.MAX_BATCH_SIZE ?? 8);
  const rows = r.models.filter((m) => m.phases.some((p) => !p.label));
  const height = Math.max(1, rows.length) * H + 24;
  const body = rows.map((m, i) => modelRow(m, 24 + i * H, maxBatch)).join('\n');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${2 * W}" height="${height}" viewBox="0 0 ${2 * W} ${height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="8" y="16" font-size="11" fill="#555">${esc(`latent-decoder bench ${r.date.slice(0, 16)} — ${r.machine.cpuModel}, ${r.machine.cores} cores, ${r.mode} mode`)}</text>
${body || '<text x="20" y="60">no service phases</text>'}
</svg>
`;
}
