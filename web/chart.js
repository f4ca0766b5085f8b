// Line-chart helpers shared by the page's views: round tick steps, tick
// labels, and a chart of series of (x, y) points on a canvas.

// A round tick step giving about four intervals up to `v`.
export function niceStep(v) {
  const rough = v / 4;
  const p = 10 ** Math.floor(Math.log10(rough));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= rough) return m * p;
  return 10 * p;
}

export function formatTick(v) {
  return String(Number(v.toPrecision(4)));
}

// Draws `series` ([{ points: [[x, y], ...], colour, dash }]) against x from 0
// to `xMax`; y from `yMin` (default: 0, or the data's round floor when
// `tight`) to the data's round top.
export function drawSeries(canvas, series, { xMax, tight = false } = {}) {
  const ctx = canvas.getContext('2d');
  const { width, height } = canvas;
  const pad = { left: 44, right: 10, top: 8, bottom: 22 };
  ctx.clearRect(0, 0, width, height);
  // At most MAX_POINTS per series, evenly strided (the last one kept), and
  // extremes by plain loops: spreading 100,000 points into Math.max throws.
  series = series.map((s) => ({ ...s, points: thin(s.points) }));
  let right = Math.max(1, xMax ?? 0);
  let hi = -Infinity;
  let lo = Infinity;
  for (const s of series) {
    for (const [px, py] of s.points) {
      if (px > right) right = px;
      if (Number.isFinite(py)) {
        if (py > hi) hi = py;
        if (py < lo) lo = py;
      }
    }
  }
  const ys = Number.isFinite(hi) ? [lo, hi] : [];
  if (!ys.length) {
    hi = 1;
    lo = 0;
  }
  let bottom = 0;
  let step = niceStep(Math.max(1e-9, hi));
  if (tight && ys.length) {
    step = niceStep(Math.max(1e-9, hi - lo) * 1.25);
    bottom = Math.floor(lo / step) * step;
  }
  const top = bottom + step * Math.max(1, Math.ceil((hi - bottom) / step - 1e-9));
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const x = (v) => pad.left + (plotW * v) / right;
  const y = (v) => pad.top + plotH * (1 - (v - bottom) / (top - bottom));
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = '#5b6475';
  ctx.strokeStyle = '#e3e6ec';
  ctx.lineWidth = 1;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (let v = bottom; v <= top * (1 + 1e-9) + 1e-12; v += step) {
    ctx.beginPath();
    ctx.moveTo(pad.left, y(v) + 0.5);
    ctx.lineTo(width - pad.right, y(v) + 0.5);
    ctx.stroke();
    ctx.fillText(formatTick(v), pad.left - 5, y(v));
  }
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  const xStep = niceStep(right);
  for (let v = 0; v <= right * (1 + 1e-9); v += xStep) ctx.fillText(formatTick(v), x(v), height - pad.bottom + 5);
  for (const s of series) {
    ctx.strokeStyle = s.colour;
    ctx.fillStyle = s.colour;
    ctx.lineWidth = s.width ?? 2;
    ctx.setLineDash(s.dash ? [5, 4] : []);
    ctx.beginPath();
    s.points.forEach(([px, py], i) => (i === 0 ? ctx.moveTo(x(px), y(py)) : ctx.lineTo(x(px), y(py))));
    ctx.stroke();
    if (s.points.length === 1) {
      ctx.beginPath();
      ctx.arc(x(s.points[0][0]), y(s.points[0][1]), 2.5, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
  ctx.setLineDash([]);
  ctx.lineWidth = 1;
}

const MAX_POINTS = 2000;

function thin(points) {
  if (points.length <= MAX_POINTS) return points;
  const stride = Math.ceil(points.length / MAX_POINTS);
  const kept = points.filter((_, i) => i % stride === 0);
  if (kept.at(-1) !== points.at(-1)) kept.push(points.at(-1));
  return kept;
}
