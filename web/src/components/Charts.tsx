// Inline SVG charts: no chart library, nothing but attributes (works under style-src 'self').
export interface Point {
  t: number; // ms since the epoch
  v: number | null;
}

function path(points: Point[], width: number, height: number, from: number, to: number, max: number): string {
  const span = Math.max(1, to - from);
  let d = "";
  let run = 0; // points in the current unbroken run
  for (const point of points) {
    if (point.v === null) {
      if (run === 1) d += "h0.1"; // a lone sample: a dot (round line caps)
      run = 0;
      continue;
    }
    const x = Math.min(width - 1.5, Math.max(1.5, ((point.t - from) / span) * width));
    const y = height - (Math.min(point.v, max) / max) * height;
    d += `${run ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
    run += 1;
  }
  if (run === 1) d += "h0.1";
  return d;
}

export function Sparkline({ points, label, from, to }: { points: Point[]; label: string; from: number; to: number }) {
  const width = 80;
  const height = 20;
  const d = path(points, width, height, from, to, 100);
  return (
    <svg className="sparkline" width={width} height={height} viewBox={`0 0 ${width} ${height}`} role="img" aria-label={label}>
      <title>{label}</title>
      <rect x="0" y="0" width={width} height={height} className="sparkline-bg" />
      {d && <path d={d} className="sparkline-line" data-testid="sparkline-path" />}
    </svg>
  );
}

export interface Series {
  name: string;
  points: Point[];
  className: string;
}

export function LineChart({ title, series, from, to }: { title: string; series: Series[]; from: number; to: number }) {
  const width = 480;
  const height = 120;
  const padTop = 8;
  const padLeft = 34;
  const plotWidth = width - padLeft;
  const empty = series.every((s) => s.points.every((p) => p.v === null));
  return (
    <figure className="chart">
      <figcaption>{title}</figcaption>
      <svg width="100%" viewBox={`0 ${-padTop} ${width} ${height + padTop + 8}`} role="img" aria-label={`${title} chart`}>
        <title>{`${title}: ${series.map((s) => s.name).join(", ")}`}</title>
        {[0, 50, 100].map((tick) => {
          const y = height - (tick / 100) * height + 0.5;
          return (
            <g key={tick}>
              <line x1={padLeft} x2={width} y1={y} y2={y} className="chart-grid" />
              <text x={padLeft - 4} y={y + 4} textAnchor="end" className="chart-tick">{`${tick}%`}</text>
            </g>
          );
        })}
        <g transform={`translate(${padLeft},0)`}>
          {series.map((s) => (
            <path key={s.name} d={path(s.points, plotWidth, height, from, to, 100)} className={`chart-line ${s.className}`} />
          ))}
        </g>
        {empty && (
          <text x={width / 2} y={height / 2} textAnchor="middle" className="chart-tick">no reports in this window</text>
        )}
      </svg>
      <ul className="legend">
        {series.map((s) => (
          <li key={s.name} className={s.className}>{s.name}</li>
        ))}
      </ul>
    </figure>
  );
}
