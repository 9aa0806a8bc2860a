// Number and table formatting shared by the report's sections.
export const f = (v: number | undefined, d = 1): string => (v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(d));
export const f2 = (v: number | undefined): string => f(v, 2);
export const ms = (v: number | undefined): string => (v === undefined || !Number.isFinite(v) ? '–' : v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(v < 10 ? 2 : 1)} ms`);
export const ips = (v: number | undefined): string => (v === undefined || !Number.isFinite(v) ? '–' : v >= 10 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toPrecision(2));

export function table(head: string[], rows: (string | number)[][]): string {
  return [`| ${head.join(' | ')} |`, `|${head.map(() => ' --- ').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

export const errorsText = (e: Record<string, number>): string => Object.entries(e).map(([k, v]) => `${k}×${v}`).join(', ') || '0';
