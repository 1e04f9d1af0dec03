// Inline SVG charts: no chart library, nothing but attributes (works under style-src 'self').
export interface Point {
  t: number; // ms since the epoch
  v: number | null;
}

// Marker radii (px) for a sample with no neighbour: large enough to see at a glance and in a screenshot.
const SPARK_DOT_R = 3;
const CHART_DOT_R = 4.5;

/** A series as SVG: the lines of its unbroken runs, and each sample that has no neighbour to join
 * (the first report, or one between gaps) as a marker, which a line of zero length would not show. */
function trace(points: Point[], width: number, height: number, from: number, to: number, max: number, inset: number) {
  const span = Math.max(1, to - from);
  let d = "";
  const dots: { x: number; y: number }[] = [];
  let run: { x: number; y: number }[] = []; // the current unbroken run
  const close = () => {
    if (run.length === 1) dots.push(run[0]);
    else d += run.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join("");
    run = [];
  };
  for (const point of points) {
    if (point.v === null) {
      close();
      continue;
    }
    // `inset` keeps a marker at the window's edges (or at 0 or 100%) whole inside the box.
    const x = Math.min(width - inset, Math.max(inset, ((point.t - from) / span) * width));
    const y = Math.min(height - inset, Math.max(inset, height - (Math.min(point.v, max) / max) * height));
    run.push({ x, y });
  }
  close();
  return { d, dots };
}

export function Sparkline({ points, label, from, to }: { points: Point[]; label: string; from: number; to: number }) {
  const width = 80;
  const height = 20;
  const { d, dots } = trace(points, width, height, from, to, 100, SPARK_DOT_R);
  return (
    <svg className="sparkline" width={width} height={height} viewBox={`0 0 ${width} ${height}`} role="img" aria-label={label}>
      <title>{label}</title>
      <rect x="0" y="0" width={width} height={height} className="sparkline-bg" />
      {d && <path d={d} className="sparkline-line" data-testid="sparkline-path" />}
      {dots.map((dot) => (
        <circle key={`${dot.x},${dot.y}`} cx={dot.x} cy={dot.y} r={SPARK_DOT_R} className="sparkline-dot" data-testid="sparkline-dot" />
      ))}
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
          {series.map((s) => {
            const { d, dots } = trace(s.points, plotWidth, height, from, to, 100, 1.5);
            return (
              <g key={s.name} className={`chart-series ${s.className}`}>
                <path d={d} className="chart-line" />
                {dots.map((dot) => (
                  <circle key={`${dot.x},${dot.y}`} cx={dot.x} cy={dot.y} r={CHART_DOT_R} className="chart-dot" data-testid="chart-dot" />
                ))}
              </g>
            );
          })}
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
