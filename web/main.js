// The demo page: loads the WebAssembly module (web/pkg, built by
// `bash web/test.sh` or the steps under "Build it and open it locally" in the
// README's "Browser demo" section), opens WebGPU, then either runs the
// interactive demo or, with ?selftest=1, the self-test.
//
// Responsiveness: sliders only update their labels while dragged; a run
// starts when a control's value is committed (`change`), at most one run is in
// flight, and only the latest settings wait behind it. Changing only the head
// shown runs nothing: that head's maps are read back from the last run.

const SELFTEST = new URLSearchParams(location.search).get('selftest') === '1';
const HEAD_WIDTH = 64; // D of the synthetic heads
const SEED = 7;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- errors

function describe(e) {
  const panic = globalThis.saobpPanic;
  const text = e && e.message ? e.message : String(e);
  return panic && !text.includes(panic) ? `${panic}\n${text}` : text;
}

let failed = false;
function showError(message) {
  const box = $('error');
  box.hidden = false;
  box.textContent = box.textContent ? `${box.textContent}\n${message}` : message;
  if (SELFTEST && !failed) {
    failed = true;
    window.saobpReport = window.saobpReport ?? { pass: false, failures: [message] };
    document.title = `FAIL saobp self-test: ${message.split('\n')[0].slice(0, 300)}`;
  }
}

window.addEventListener('error', (e) => showError(`error: ${describe(e.error ?? e.message)}`));
window.addEventListener('unhandledrejection', (e) => showError(`error: ${describe(e.reason)}`));

// ---------------------------------------------------------------- start

async function adapterInfo() {
  // wgpu only sees the adapter's `description`, which browsers often leave
  // empty; vendor and architecture say more (e.g. google / swiftshader).
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) {
    throw new Error('WebGPU offers no adapter in this browser. Enable WebGPU (Chrome: chrome://flags ' +
      '"Unsafe WebGPU Support"; headless Chromium: --enable-unsafe-webgpu) or try another browser.');
  }
  const info = adapter.info ?? {};
  const parts = [info.vendor, info.architecture, info.description].filter(Boolean);
  const fallback = adapter.isFallbackAdapter ?? info.isFallbackAdapter;
  return `${parts.join(' ') || 'unnamed adapter'}${fallback ? ' (software fallback)' : ''}`;
}

async function main() {
  if (!('gpu' in navigator)) {
    throw new Error('this browser has no WebGPU (navigator.gpu is missing). Use a recent Chrome, Edge or ' +
      'Firefox over http://localhost or https; headless Chromium needs --enable-unsafe-webgpu.');
  }
  let wasm;
  try {
    wasm = await import('./pkg/saobp_web.js');
    await wasm.default();
  } catch (e) {
    throw new Error(`could not load the WebAssembly module web/pkg/saobp_web.js: ${describe(e)}\n` +
      'It is built, not checked in. Build it with `bash web/test.sh` (which also runs the browser test), ' +
      'or by the steps under "Build it and open it locally" in the README\'s "Browser demo" section, ' +
      'then serve web/ over http://127.0.0.1 and reload this page.');
  }
  const info = await adapterInfo();
  const demo = await wasm.Demo.create();
  const name = demo.adapter ? `${demo.adapter} · ` : '';
  $('adapter').textContent = `${name}${info} · ${demo.adapterDetails.replace(/^\s*\[/, '[')}`;
  if (SELFTEST) {
    await selftest(demo);
  } else {
    interactive(demo);
  }
}

main().catch((e) => showError(describe(e)));

// ---------------------------------------------------------------- self-test

async function selftest(demo) {
  $('controls').hidden = true;
  $('interactive').hidden = true;
  $('selftest').hidden = false;
  const start = performance.now();
  const report = JSON.parse(await demo.selftest());
  const ms = performance.now() - start;
  window.saobpReport = report;
  const checks = report.cases.flatMap((c) => c.checks);
  const heads = report.workload.shape[1];
  const summary = `${report.cases.length} cases × ${heads} heads, ${checks.length} checks, ` +
    `worst error ${report.worst_ratio.toFixed(3)} of the bound, ${ms.toFixed(0)} ms`;
  $('timing').textContent = `self-test: ${ms.toFixed(0)} ms`;
  $('selftest-title').textContent = `${report.pass ? 'PASS' : 'FAIL'}: ${summary}`;
  $('report').textContent = selftestText(report);
  drawCharts(report.cases[0].heads);
  if (failed) return; // an error already set the title
  document.title = report.pass
    ? `PASS saobp self-test: ${summary}`
    : `FAIL saobp self-test: ${report.failures.slice(0, 3).join('; ')}`;
}

function selftestText(report) {
  const lines = [];
  const t = report.tolerance;
  lines.push(`workload [B, H, N, D] = [${report.workload.shape}], λ per head ${report.workload.lambda}, ` +
    `checksum ${report.workload.checksum}`);
  lines.push(`tolerance: relative ${t.relative}, absolute ${t.absolute} (summary distance ${t.distance_absolute})`);
  for (const c of report.cases) {
    lines.push('', c.causal ? 'causal' : 'full (not causal)');
    for (const k of c.checks) {
      lines.push(`  ${k.pass ? 'ok  ' : 'FAIL'} ${k.what.padEnd(24)} max error ${k.max_error.toExponential(2)}` +
        `  (${typeof k.worst_ratio === 'number' ? k.worst_ratio.toFixed(3) : k.worst_ratio} of the bound)`);
    }
  }
  if (report.failures.length) lines.push('', 'failures:', ...report.failures.map((f) => `  ${f}`));
  return lines.join('\n');
}

// ---------------------------------------------------------------- interactive

function interactive(demo) {
  const sliders = ['n', 'heads', 'temperature', 'lambda', 'show'];
  const label = () => {
    $('show').max = String(Number($('heads').value) - 1);
    for (const id of sliders) $(`${id}-out`).textContent = $(id).value;
  };
  let pending = null;
  let running = false;
  let timer = 0;
  // The workload of the last finished run (everything but the head shown):
  // while it is unchanged, showing another head only reads maps back.
  let computed = null;
  let summaries = null;

  const settings = () => ({
    n: Number($('n').value),
    heads: Number($('heads').value),
    temperature: Number($('temperature').value),
    lambda: Number($('lambda').value),
    causal: $('causal').checked,
    pattern: $('pattern').value,
    show: Math.min(Number($('show').value), Number($('heads').value) - 1),
  });

  async function pump() {
    if (running) return;
    running = true;
    $('busy').hidden = false;
    while (pending) {
      const s = pending;
      pending = null;
      const key = workloadKey(s);
      try {
        if (key !== computed) {
          computed = null;
          summaries = await runWorkload(demo, s);
          computed = key;
        }
        await showHead(demo, s, summaries);
      } catch (e) {
        const message = describe(e);
        // A lost device does not come back: only a new context (a reload) helps.
        showError(/device lost/i.test(message) ? `${message}\nReload the page to start again.` : message);
      }
    }
    running = false;
    $('busy').hidden = true;
  }

  const schedule = () => {
    label();
    // Coalesce bursts (keyboard steps, several controls changed at once).
    clearTimeout(timer);
    timer = setTimeout(() => {
      pending = settings();
      pump();
    }, 120);
  };

  for (const id of sliders) {
    $(id).addEventListener('input', label); // dragging: labels only
    $(id).addEventListener('change', schedule); // released: run
  }
  $('causal').addEventListener('change', schedule);
  $('pattern').addEventListener('change', schedule);
  label();
  drawColorbar();
  pending = settings();
  pump();
}

// Every setting but the head shown: a change of any of them needs a new run.
function workloadKey(s) {
  return JSON.stringify([s.n, s.heads, s.temperature, s.lambda, s.causal, s.pattern]);
}

// Runs the workload (the GPU keeps every head's maps) and draws the per-head
// charts; resolves to the summaries.
async function runWorkload(demo, s) {
  $('error').hidden = true;
  $('error').textContent = '';
  document.body.dataset.state = 'running';
  const start = performance.now();
  const result = await demo.run(s.n, s.heads, HEAD_WIDTH, s.temperature, s.lambda, s.causal, s.pattern, SEED);
  let summaries;
  try {
    summaries = JSON.parse(result.summaries);
    drawCharts(summaries.heads);
    const total = performance.now() - start;
    $('timing').innerHTML = '';
    $('timing').append(
      'last run: ', bold(`${total.toFixed(0)} ms`),
      ` (inputs ${result.workloadMs.toFixed(0)} ms, attention + SAOBP + metrics on the GPU ` +
      `${result.gpuMs.toFixed(0)} ms) · ` +
      `N = ${s.n}, ${s.heads} heads, D = ${HEAD_WIDTH}${s.causal ? ', causal' : ''}`,
    );
    $('readback').textContent = '';
    window.saobpRuns = (window.saobpRuns ?? 0) + 1;
    window.saobpLastRun = { settings: s, ms: total, summaries };
  } finally {
    result.free();
  }
  return summaries;
}

// Draws head `s.show` of the last run from its maps, read back without
// computing anything again.
async function showHead(demo, s, summaries) {
  const maps = await demo.head(s.show);
  try {
    drawMaps(maps.attention, maps.refined, maps.n);
    const head = summaries.heads[maps.head];
    const before = head.attention;
    const after = head.refined;
    $('a-caption').textContent = `head ${maps.head} (${head.pattern}), entropy ${before.entropy.toFixed(3)}, GTD(λ=1) ${before.gtd.toFixed(3)}`;
    $('r-caption').textContent = `λ = ${s.lambda}, entropy ${after.entropy.toFixed(3)}, GTD ${after.gtd.toFixed(3)}`;
    $('readback').textContent = ` · head ${maps.head}'s maps read back in ${maps.readbackMs.toFixed(0)} ms`;
    window.saobpShown = maps.head;
    document.body.dataset.state = 'ready';
  } finally {
    maps.free();
  }
}

function bold(text) {
  const b = document.createElement('b');
  b.textContent = text;
  return b;
}

// ---------------------------------------------------------------- drawing

// A perceptually ordered dark-to-bright ramp (viridis, sampled).
const RAMP = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37],
];

function ramp(t) {
  const x = Math.min(Math.max(t, 0), 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(x), RAMP.length - 2);
  const f = x - i;
  return RAMP[i].map((c, k) => Math.round(c + f * (RAMP[i + 1][k] - c)));
}

const DECADES = 4;

function drawMaps(a, r, n) {
  // One scale for both maps, so the eye compares like with like.
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, a[i], r[i]);
  const floor = max * 10 ** -DECADES;
  for (const [id, map] of [['map-a', a], ['map-r', r]]) {
    const image = new ImageData(n, n);
    for (let i = 0; i < n * n; i++) {
      const v = map[i];
      const t = v > floor ? Math.log10(v / floor) / DECADES : 0;
      const [cr, cg, cb] = v > 0 ? ramp(t) : [20, 20, 28];
      image.data[4 * i] = cr;
      image.data[4 * i + 1] = cg;
      image.data[4 * i + 2] = cb;
      image.data[4 * i + 3] = 255;
    }
    const source = new OffscreenCanvas(n, n);
    source.getContext('2d').putImageData(image, 0, 0);
    const canvas = $(id);
    const ctx = canvas.getContext('2d');
    ctx.imageSmoothingEnabled = n > canvas.width; // average when shrinking, crisp when enlarging
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(source, 0, 0, canvas.width, canvas.height);
  }
}

function drawColorbar() {
  const canvas = $('colorbar');
  const ctx = canvas.getContext('2d');
  for (let x = 0; x < canvas.width; x++) {
    const [r, g, b] = ramp(x / (canvas.width - 1));
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(x, 0, 1, canvas.height);
  }
}

function drawCharts(heads) {
  drawBars('chart-entropy', heads, (s) => s.entropy);
  drawBars('chart-sparsity', heads, (s) => s.sparsity);
  drawBars('chart-gtd', heads, (s) => s.gtd);
}

function drawBars(id, heads, metric) {
  const canvas = $(id);
  const ctx = canvas.getContext('2d');
  const css = getComputedStyle(document.documentElement);
  const colours = [css.getPropertyValue('--a').trim(), css.getPropertyValue('--r').trim()];
  const { width, height } = canvas;
  const pad = { left: 44, right: 8, top: 10, bottom: 26 };
  ctx.clearRect(0, 0, width, height);
  const values = heads.map((h) => [metric(h.attention), metric(h.refined)]);
  const step = niceStep(Math.max(1e-9, ...values.flat()));
  const top = step * Math.max(1, Math.ceil(Math.max(1e-9, ...values.flat()) / step - 1e-9));
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const y = (v) => pad.top + plotH * (1 - v / top);

  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = '#5b6475';
  ctx.strokeStyle = '#e3e6ec';
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (let k = 0; k * step <= top * (1 + 1e-9); k++) {
    const v = k * step;
    ctx.beginPath();
    ctx.moveTo(pad.left, y(v) + 0.5);
    ctx.lineTo(width - pad.right, y(v) + 0.5);
    ctx.stroke();
    ctx.fillText(formatTick(v), pad.left - 5, y(v));
  }
  const slot = plotW / Math.max(heads.length, 1);
  const bar = Math.min(18, slot * 0.36);
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  heads.forEach((h, i) => {
    const centre = pad.left + slot * (i + 0.5);
    values[i].forEach((v, k) => {
      ctx.fillStyle = colours[k];
      const x = centre + (k === 0 ? -bar - 1 : 1);
      ctx.fillRect(x, y(Math.max(v, 0)), bar, y(0) - y(Math.max(v, 0)));
    });
    ctx.fillStyle = '#5b6475';
    ctx.fillText(`${h.head}${(h.pattern ?? '?')[0]}`, centre, height - pad.bottom + 6);
  });
}

// A round tick step giving about four intervals up to `v`.
function niceStep(v) {
  const rough = v / 4;
  const p = 10 ** Math.floor(Math.log10(rough));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= rough) return m * p;
  return 10 * p;
}

function formatTick(v) {
  return String(Number(v.toPrecision(4)));
}
