// The demo page: loads the WebAssembly module (web/pkg, built by
// `bash web/test.sh` or the steps under "Build it and open it locally" in the
// README's "Browser demo" section), opens WebGPU, then either runs the
// interactive demo or, with ?selftest=1, the self-test.
//
// Three views (tabs; ?view=model, synthetic or train picks one at load):
// - a real model (all-MiniLM-L6-v2, fetched from models/ beside the page) on
//   typed text: A and R of a chosen layer and head, the layer curves of
//   normalized entropy and GTD, and the cosine of two sentences' embeddings;
// - synthetic heads: generated Q, K and V;
// - training (train.js): two character GPTs, λ = 0 and λ > 0, trained side
//   by side in the page.
//
// Responsiveness: sliders only update their labels while dragged; work
// starts when a control's value is committed (`change`), at most one run is in
// flight, and only the latest settings wait behind it. Changing the head (or
// the layer) shown runs nothing on the GPU: the model view redraws from the
// maps it already read back, the synthetic view reads that head's maps back
// from the last run. Changing λ in the model view reruns only SAOBP on the
// kept maps of A, not the model.

import { formatTick, niceStep } from './chart.js';
import { trainView } from './train.js';

const PARAMS = new URLSearchParams(location.search);
const SELFTEST = PARAMS.get('selftest') === '1';
const HEAD_WIDTH = 64; // D of the synthetic heads
const SEED = 7;
// Where the model's files are served, relative to the page (?model= overrides).
const MODEL_DIR = PARAMS.get('model') ?? 'models/all-MiniLM-L6-v2/';

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

// What to enable where WebGPU is missing, browser by browser.
const ENABLE_WEBGPU = [
  'How to get WebGPU:',
  '• Chrome or Edge 113+ (Windows, macOS, ChromeOS; Android 121+): on by default. On Linux, or where it',
  '  is blocked: open chrome://flags (edge://flags), enable "Unsafe WebGPU Support"',
  '  (#enable-unsafe-webgpu) and, on Linux, "Vulkan" (#enable-vulkan), then relaunch.',
  '  From a shell: chromium --enable-unsafe-webgpu --enable-features=Vulkan',
  '• Firefox: on by default on Windows from version 141; elsewhere use Firefox Nightly and set',
  '  dom.webgpu.enabled to true in about:config.',
  '• Safari: Safari 26 (macOS 26, iOS 26) has it; on older versions use Safari Technology Preview,',
  '  or enable Develop → Feature Flags → WebGPU.',
  'The page must come from https or http://localhost / http://127.0.0.1 (a secure context).',
].join('\n');

async function adapterInfo() {
  // wgpu only sees the adapter's `description`, which browsers often leave
  // empty; vendor and architecture say more (e.g. google / swiftshader).
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) {
    throw new Error('This browser has WebGPU but offers no adapter (the GPU is blocked or ' +
      `WebGPU is disabled).\n${ENABLE_WEBGPU}`);
  }
  const info = adapter.info ?? {};
  const parts = [info.vendor, info.architecture, info.description].filter(Boolean);
  const fallback = adapter.isFallbackAdapter ?? info.isFallbackAdapter;
  return `${parts.join(' ') || 'unnamed adapter'}${fallback ? ' (software fallback)' : ''}`;
}

async function main() {
  if (!('gpu' in navigator)) {
    $('adapter').textContent = 'no WebGPU in this browser';
    throw new Error(`This browser has no WebGPU (navigator.gpu is missing${window.isSecureContext ? '' :
      '; this page is not a secure context, which WebGPU requires'}), so nothing can run here.\n${ENABLE_WEBGPU}`);
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
    tabs(demo);
  }
}

// The three views as tabs; each starts its work the first time it is shown.
function tabs(demo) {
  const views = ['model', 'synthetic', 'train'];
  const started = {};
  const show = (view) => {
    for (const v of views) {
      $(`${v}-view`).hidden = v !== view;
      $(`tab-${v}`).setAttribute('aria-selected', String(v === view));
    }
    const url = new URL(location.href);
    url.searchParams.set('view', view);
    history.replaceState(null, '', url);
    if (started[view]) return;
    started[view] = true;
    if (view === 'model') modelView(demo).catch((e) => showModelError(e));
    else if (view === 'train') trainView(demo, showError);
    else interactive(demo);
  };
  for (const v of views) $(`tab-${v}`).addEventListener('click', () => show(v));
  show(views.includes(PARAMS.get('view')) ? PARAMS.get('view') : 'model');
}

main().catch((e) => showError(describe(e)));

// ---------------------------------------------------------------- self-test

async function selftest(demo) {
  $('tabs').hidden = true;
  $('selftest').hidden = false;
  $('synthetic-view').hidden = false; // its per-head charts show the synthetic part
  $('controls').hidden = true;
  $('interactive').hidden = true;
  $('synthetic-timing').hidden = true;
  await loadModel(demo);
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
  const m = report.model;
  if (m) {
    lines.push('', `model: ${m.model.layers} layers × ${m.model.heads} heads, hidden ${m.model.hidden}, λ = ${m.lambda}`);
    for (const t of m.texts) {
      lines.push(`  ${JSON.stringify(t.text)}: ${t.tokens.join(' ')}`);
      lines.push('    layer  H/ln n (A)  H/ln n (R)  GTD (A)  GTD (R)');
      for (const l of t.layers) {
        lines.push(`    ${String(l.layer).padStart(5)}  ${l.attention.normalized_entropy.toFixed(4).padStart(10)}  ` +
          `${l.refined.normalized_entropy.toFixed(4).padStart(10)}  ${l.attention.gtd.toFixed(4).padStart(7)}  ` +
          `${l.refined.gtd.toFixed(4).padStart(7)}`);
      }
    }
    lines.push(`  cosine of the two embeddings: plain ${m.cosine.plain.toFixed(4)}, with SAOBP ${m.cosine.saobp.toFixed(4)}`);
    for (const k of m.checks) {
      lines.push(`  ${k.pass ? 'ok  ' : 'FAIL'} ${k.what}  max error ${k.max_error.toExponential(2)}`);
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


// ---------------------------------------------------------------- the model

// Fetches the model's files as bytes and builds the model in WebAssembly
// (the library's byte loaders). Shows the time of each step.
async function loadModel(demo) {
  const timing = $('model-timing');
  timing.textContent = `model: fetching ${MODEL_DIR}…`;
  const start = performance.now();
  const get = async (name, optional = false) => {
    let response;
    try {
      response = await fetch(new URL(name, new URL(MODEL_DIR, location.href)));
    } catch (e) {
      response = { ok: false, status: describe(e) };
    }
    if (!response.ok) {
      if (optional) return null;
      throw new Error(`could not fetch the model file ${MODEL_DIR}${name} (${response.status}).\n` +
        'The page loads all-MiniLM-L6-v2 from models/all-MiniLM-L6-v2/ beside it. Fetch it with ' +
        '`bash scripts/fetch-model.sh` at the repository root, then link it into the served folder ' +
        '(`ln -s ../models web/models`) and reload. The synthetic heads tab works without it.');
    }
    return response;
  };
  const [config, weights, tokenizer, sentence] = await Promise.all([
    get('config.json').then((r) => r.text()),
    get('model.safetensors').then((r) => r.arrayBuffer()),
    get('tokenizer.json').then((r) => r.arrayBuffer()),
    get('sentence_bert_config.json', true).then((r) => (r ? r.text() : undefined)),
  ]);
  const fetched = performance.now();
  timing.textContent = `model: ${(weights.byteLength / 2 ** 20).toFixed(0)} MiB fetched, uploading…`;
  const info = JSON.parse(demo.loadModel(config, new Uint8Array(weights), new Uint8Array(tokenizer), sentence));
  const loaded = performance.now();
  const stages = {
    load: loaded - start,
    fetch: fetched - start,
    upload: loaded - fetched,
  };
  window.saobpModelInfo = { ...info, stages };
  modelTimes.load = stages;
  modelTimes.info = info;
  showModelTimes();
  return info;
}

// The time of each stage of the model view, shown in the status panel.
const modelTimes = { load: null, info: null, tokenize: null, forward: null, saobp: null, readback: null };
// (`saobp_maps` and `saobp_embeddings` split `saobp` when there are two sentences.)

function showModelTimes() {
  const t = modelTimes;
  const ms = (v) => (v == null ? '–' : v < 10 ? `${v.toFixed(1)} ms` : v < 10000 ? `${v.toFixed(0)} ms` : `${(v / 1000).toFixed(1)} s`);
  const box = $('model-timing');
  box.innerHTML = '';
  const parts = [];
  if (t.info) {
    parts.push(`model all-MiniLM-L6-v2 (${t.info.layers} layers × ${t.info.heads} heads, hidden ${t.info.hidden}) · `);
  }
  parts.push('load ', bold(ms(t.load?.load)));
  if (t.load) parts.push(` (fetch ${ms(t.load.fetch)}, check + upload ${ms(t.load.upload)})`);
  parts.push(' · tokenize ', bold(ms(t.tokenize)), ' · forward ', bold(ms(t.forward)),
    ' · SAOBP ', bold(ms(t.saobp)));
  if (t.saobp_embeddings > 1) {
    parts.push(` (on the maps ${ms(t.saobp_maps)}, model with SAOBP for the embeddings ${ms(t.saobp_embeddings)})`);
  }
  parts.push(' · read back ', bold(ms(t.readback)));
  box.append(...parts);
}

function showModelError(e) {
  document.body.dataset.modelState = 'error';
  const message = describe(e);
  showError(/device lost/i.test(message) ? `${message}\nReload the page to start again.` : message);
}

async function modelView(demo) {
  document.body.dataset.modelState = 'loading';
  const info = await loadModel(demo);
  $('layer').max = String(info.layers - 1);
  $('head').max = String(info.heads - 1);
  $('layer').value = String(Math.min(Number($('layer').value), info.layers - 1));

  // What was read back last: every layer's A and R of each text, and the summaries.
  const data = { texts: [], attention: [], refined: [], lambda: null };
  const sliders = ['layer', 'head', 'model-lambda'];
  const label = () => {
    for (const id of sliders) $(`${id}-out`).textContent = $(id).value;
  };
  let pending = null;
  let running = false;
  let timer = 0;
  window.saobpModel = { analyses: 0, refines: 0, draws: 0, drawn: null };

  const texts = () => [$('text-1').value, $('text-2').value].map((t) => t.trim()).filter((t) => t.length > 0);
  const lambda = () => Number($('model-lambda').value);

  async function pump() {
    if (running) return;
    running = true;
    $('busy').hidden = false;
    while (pending) {
      const job = pending;
      pending = null;
      document.body.dataset.modelState = 'running';
      try {
        if (job.kind === 'analyze') await analyze(job.texts, job.lambda);
        else if (job.lambda !== data.lambda && data.texts.length > 0) await refine(job.lambda);
        draw();
        document.body.dataset.modelState = 'ready';
      } catch (e) {
        showModelError(e);
      }
    }
    running = false;
    $('busy').hidden = true;
  }

  const submit = (job) => {
    // An analysis also applies the latest λ, so it replaces a waiting refinement.
    if (!(pending?.kind === 'analyze' && job.kind === 'refine')) pending = job;
    else pending.lambda = job.lambda;
    pump();
  };

  async function analyze(list, l) {
    if (list.length === 0) throw new Error('type a sentence first');
    $('error').hidden = true;
    $('error').textContent = '';
    const result = await demo.analyze(list, l);
    try {
      const summary = JSON.parse(result.summary);
      data.texts = summary.texts.map((t, i) => ({ ...t, text: list[i] }));
      data.attention = data.texts.map((_, i) => result.attention(i));
      data.refined = data.texts.map((_, i) => result.refined(i));
      data.lambda = summary.lambda;
      data.cosine = summary.cosine;
      Object.assign(modelTimes, { saobp_maps: null, saobp_embeddings: null }, summary.timings);
      showModelTimes();
      window.saobpModel.analyses += 1;
    } finally {
      result.free();
    }
    const shown = $('text-shown');
    shown.disabled = data.texts.length < 2;
    if (data.texts.length < 2) shown.value = '0';
  }

  async function refine(l) {
    const result = await demo.refine(l);
    try {
      const summary = JSON.parse(result.summary);
      summary.texts.forEach((t, i) => (data.texts[i].layers = t.layers));
      data.refined = data.texts.map((_, i) => result.refined(i));
      data.lambda = summary.lambda;
      data.cosine = summary.cosine;
      Object.assign(modelTimes, { saobp_maps: null, saobp_embeddings: null }, summary.timings);
      showModelTimes();
      window.saobpModel.refines += 1;
    } finally {
      result.free();
    }
  }

  // Redraws the chosen text, layer and head from what was read back.
  function draw() {
    if (data.texts.length === 0) return;
    const t = Math.min(Number($('text-shown').value), data.texts.length - 1);
    const layer = Number($('layer').value);
    const head = Number($('head').value);
    const text = data.texts[t];
    const n = text.tokens.length;
    const block = n * n;
    const offset = (layer * info.heads + head) * block;
    const a = data.attention[t].subarray(offset, offset + block);
    const r = data.refined[t].subarray(offset, offset + block);
    drawTokenMaps(a, r, text.tokens);
    const sa = text.layers[layer].heads[head].attention;
    const sr = text.layers[layer].heads[head].refined;
    $('model-a-caption').textContent = `layer ${layer}, head ${head}: H/ln n ${sa.normalized_entropy.toFixed(3)}, GTD(λ=1) ${sa.gtd.toFixed(3)}`;
    $('model-r-caption').textContent = `λ = ${data.lambda}: H/ln n ${sr.normalized_entropy.toFixed(3)}, GTD ${sr.gtd.toFixed(3)}`;
    drawLayerLines('chart-layer-entropy', text.layers, (s) => s.normalized_entropy, layer, 1);
    drawLayerLines('chart-layer-gtd', text.layers, (s) => s.gtd, layer, null);
    if (data.cosine) {
      $('cosine').innerHTML = '';
      $('cosine').append('cosine of the two sentence embeddings: plain model ', bold(data.cosine.plain.toFixed(4)),
        `, with SAOBP (λ = ${data.lambda} in every layer) `, bold(data.cosine.saobp.toFixed(4)));
    } else {
      $('cosine').textContent = 'cosine of the sentence embeddings: type a second sentence';
    }
    window.saobpModel.draws += 1;
    window.saobpModel.drawn = { text: t, layer, head, lambda: data.lambda, tokens: text.tokens };
  }

  const startAnalysis = () => submit({ kind: 'analyze', texts: texts(), lambda: lambda() });
  $('analyze').addEventListener('click', startAnalysis);
  for (const id of ['text-1', 'text-2']) {
    $(id).addEventListener('keydown', (e) => {
      if (e.key === 'Enter') startAnalysis();
    });
  }
  for (const id of sliders) $(id).addEventListener('input', label);
  // Layer, head and sentence shown: a redraw from the maps already read back.
  for (const id of ['layer', 'head', 'text-shown']) {
    $(id).addEventListener('change', () => {
      label();
      // While a run is in flight, its own redraw at the end reads the controls.
      if (!running) draw();
    });
  }
  // λ: SAOBP again on the kept maps of A (coalescing keyboard steps).
  $('model-lambda').addEventListener('change', () => {
    label();
    clearTimeout(timer);
    timer = setTimeout(() => submit({ kind: 'refine', lambda: lambda() }), 120);
  });
  setupHover(() => data, info);
  drawModelColorbar();
  label();
  startAnalysis();
}

// The value under the pointer, with its query and key word pieces.
function setupHover(getData, info) {
  const tip = $('tooltip');
  for (const [id, name] of [['model-map-a', 'A'], ['model-map-r', 'R']]) {
    const canvas = $(id);
    canvas.addEventListener('mousemove', (e) => {
      const data = getData();
      const d = window.saobpModel?.drawn;
      if (!d || data.texts.length === 0) return;
      const tokens = data.texts[d.text].tokens;
      const n = tokens.length;
      const box = canvas.getBoundingClientRect();
      const x = ((e.clientX - box.left) * canvas.width) / box.width;
      const y = ((e.clientY - box.top) * canvas.height) / box.height;
      const g = mapGeometry(canvas, n);
      const col = Math.floor((x - g.left) / g.cell);
      const row = Math.floor((y - g.top) / g.cell);
      if (row < 0 || col < 0 || row >= n || col >= n) {
        tip.hidden = true;
        return;
      }
      const maps = name === 'A' ? data.attention : data.refined;
      const value = maps[d.text][(d.layer * info.heads + d.head) * n * n + row * n + col];
      tip.textContent = `${name}[${tokens[row]} → ${tokens[col]}] = ${value.toFixed(4)}  (query ${row}, key ${col})`;
      tip.style.left = `${e.clientX + 12}px`;
      tip.style.top = `${e.clientY + 12}px`;
      tip.hidden = false;
    });
    canvas.addEventListener('mouseleave', () => (tip.hidden = true));
  }
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

// Room for the word pieces on the left and on top; square cells.
function mapGeometry(canvas, n) {
  const margin = 86;
  const cell = Math.max(1, (Math.min(canvas.width, canvas.height) - margin - 4) / Math.max(n, 1));
  return { left: margin, top: margin, cell };
}

// A and R of one head with the word pieces on both axes, on one linear scale.
function drawTokenMaps(a, r, tokens) {
  const n = tokens.length;
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, a[i], r[i]);
  for (const [id, map] of [['model-map-a', a], ['model-map-r', r]]) {
    const canvas = $(id);
    const ctx = canvas.getContext('2d');
    const g = mapGeometry(canvas, n);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        const [cr, cg, cb] = ramp(max > 0 ? map[i * n + j] / max : 0);
        ctx.fillStyle = `rgb(${cr},${cg},${cb})`;
        // Cells overlap by a fraction of a pixel: no seams between them.
        ctx.fillRect(g.left + j * g.cell, g.top + i * g.cell, g.cell + 0.5, g.cell + 0.5);
      }
    }
    const size = Math.max(7, Math.min(12, g.cell * 0.8));
    ctx.font = `${size}px system-ui, sans-serif`;
    ctx.fillStyle = '#1d2330';
    ctx.textBaseline = 'middle';
    const clip = (t) => (t.length > 12 ? `${t.slice(0, 11)}…` : t);
    ctx.textAlign = 'right';
    tokens.forEach((t, i) => ctx.fillText(clip(t), g.left - 4, g.top + (i + 0.5) * g.cell));
    ctx.save();
    ctx.textAlign = 'left';
    tokens.forEach((t, j) => {
      ctx.save();
      ctx.translate(g.left + (j + 0.5) * g.cell, g.top - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText(clip(t), 0, 0);
      ctx.restore();
    });
    ctx.restore();
  }
}

function drawModelColorbar() {
  const canvas = $('model-colorbar');
  const ctx = canvas.getContext('2d');
  for (let x = 0; x < canvas.width; x++) {
    const [r, g, b] = ramp(x / (canvas.width - 1));
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(x, 0, 1, canvas.height);
  }
}

// One metric by layer, A and R as two lines, the layer shown marked.
function drawLayerLines(id, layers, metric, marked, fixedTop) {
  const canvas = $(id);
  const ctx = canvas.getContext('2d');
  const css = getComputedStyle(document.documentElement);
  const colours = [css.getPropertyValue('--a').trim(), css.getPropertyValue('--r').trim()];
  const { width, height } = canvas;
  const pad = { left: 44, right: 10, top: 8, bottom: 24 };
  ctx.clearRect(0, 0, width, height);
  const series = [layers.map((l) => metric(l.attention)), layers.map((l) => metric(l.refined))];
  const biggest = Math.max(1e-9, ...series.flat());
  const step = niceStep(fixedTop ?? biggest);
  const top = fixedTop ?? step * Math.max(1, Math.ceil(biggest / step - 1e-9));
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const x = (l) => pad.left + (layers.length > 1 ? (plotW * l) / (layers.length - 1) : plotW / 2);
  const y = (v) => pad.top + plotH * (1 - v / top);
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = '#5b6475';
  ctx.strokeStyle = '#e3e6ec';
  ctx.lineWidth = 1;
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
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  layers.forEach((_, l) => ctx.fillText(`${l}`, x(l), height - pad.bottom + 6));
  ctx.strokeStyle = '#9aa3b2';
  ctx.setLineDash([3, 3]);
  ctx.beginPath();
  ctx.moveTo(x(marked) + 0.5, pad.top);
  ctx.lineTo(x(marked) + 0.5, pad.top + plotH);
  ctx.stroke();
  ctx.setLineDash([]);
  series.forEach((values, k) => {
    ctx.strokeStyle = colours[k];
    ctx.fillStyle = colours[k];
    ctx.lineWidth = 2;
    ctx.beginPath();
    values.forEach((v, l) => (l === 0 ? ctx.moveTo(x(l), y(v)) : ctx.lineTo(x(l), y(v))));
    ctx.stroke();
    values.forEach((v, l) => {
      ctx.beginPath();
      ctx.arc(x(l), y(v), l === marked ? 4 : 2.5, 0, 2 * Math.PI);
      ctx.fill();
    });
  });
  ctx.lineWidth = 1;
}
