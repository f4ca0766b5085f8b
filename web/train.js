// The training tab: the spec's character GPT trained in the page on a text
// served beside it (data/shakespeare.txt, from `bash scripts/fetch-corpus.sh`;
// ?corpus= overrides), with the library's own training loop in WebAssembly.
//
// Two runs start from the same weights and see the same batches: λ = 0
// (plain GPT-2) and λ > 0 (SAOBP in every head, λ optionally learned). They
// step in turn; every `eval` steps both are evaluated (loss on fixed
// validation windows, each layer's normalized entropy of R, the map the
// model attends with, and GTD of A at λ = 1, which compares the two runs'
// maps on one scale: GTD of R is 0 at λ = 0 by definition), and
// every `sample` steps both write a line of text.
//
// Settings live in the URL (preset, lambda, learn, steps, seed, and the
// overrides layers, heads, embd, block, batch, lr, eval, sample), so a link
// reproduces a run. Start, Pause and Reset; changing a setting resets.

import { drawSeries } from './chart.js';

const $ = (id) => document.getElementById(id);

// The spec's `tiny` preset, and a smaller one for slow GPUs.
const PRESETS = {
  tiny: { layers: 4, heads: 4, embd: 128, block: 64, batch: 12, lr: 1e-3 },
  mini: { layers: 2, heads: 2, embd: 64, block: 32, batch: 8, lr: 1e-3 },
};
const LAYER_COLOURS = ['#2b8a3e', '#7048e8', '#c2255c', '#e67700', '#1098ad', '#5c940d', '#862e9c', '#495057'];
const SAMPLE_PROMPT = 'ROMEO:\n';
const SAMPLE_TOKENS = 160;

// The settings from the URL and the controls; URL overrides win.
function settings() {
  const params = new URLSearchParams(location.search);
  const preset = PRESETS[$('train-preset').value] ?? PRESETS.tiny;
  const int = (key, fallback) => {
    const v = params.get(key);
    return v === null || v === '' ? fallback : Math.trunc(Number(v));
  };
  const num = (key, fallback) => {
    const v = params.get(key);
    return v === null || v === '' ? fallback : Number(v);
  };
  return {
    layers: int('layers', preset.layers),
    heads: int('heads', preset.heads),
    embd: int('embd', preset.embd),
    block: int('block', preset.block),
    batch: int('batch', preset.batch),
    lr: num('lr', preset.lr),
    steps: Math.max(1, Math.trunc(Number($('train-steps').value) || 1)),
    seed: Math.max(0, Math.trunc(Number($('train-seed').value) || 0)),
    lambda: Number($('train-lambda').value),
    learn_lambda: $('train-learn').checked,
    eval_windows: int('windows', 16),
    evalEvery: Math.max(1, int('eval', 100)),
    sampleEvery: Math.max(1, int('sample', 200)),
  };
}

// The controls from the URL, once at start.
function controlsFromUrl() {
  const params = new URLSearchParams(location.search);
  const set = (id, key) => {
    if (params.has(key)) $(id).value = params.get(key);
  };
  set('train-preset', 'preset');
  set('train-lambda', 'lambda');
  set('train-steps', 'steps');
  set('train-seed', 'seed');
  if (params.has('learn')) $('train-learn').checked = params.get('learn') === '1';
  if (!PRESETS[$('train-preset').value]) $('train-preset').value = 'tiny';
  // Sizes from the URL replace the preset's: say so in the menu.
  const custom = ['layers', 'heads', 'embd', 'block', 'batch', 'lr'].filter((k) => params.has(k));
  if (custom.length) {
    const option = $('train-preset').selectedOptions[0];
    option.textContent = `${$('train-preset').value}, with ${custom.map((k) => `${k} ${params.get(k)}`).join(', ')} from the URL`;
  }
}

// The controls into the URL, keeping every other parameter.
function controlsToUrl() {
  const url = new URL(location.href);
  url.searchParams.set('preset', $('train-preset').value);
  url.searchParams.set('lambda', $('train-lambda').value);
  url.searchParams.set('learn', $('train-learn').checked ? '1' : '0');
  url.searchParams.set('steps', $('train-steps').value);
  url.searchParams.set('seed', $('train-seed').value);
  history.replaceState(null, '', url);
}

export function trainView(demo, showError) {
  controlsFromUrl();
  const state = {
    runs: null, // [{ name, run, losses: [[step, loss]], evals: [...] }]
    running: false, // the loop should go on
    looping: false, // a loop is in flight (it may be finishing its pair of steps)
    resetting: false,
    loop: null,
    text: null,
    startedAt: 0,
    stepMs: 0,
  };
  // What the browser test reads.
  window.saobpTrain = { steps: 0, evaluations: 0, samples: 0, running: false, error: '' };

  const label = () => ($('train-lambda-out').textContent = Number($('train-lambda').value).toFixed(2));
  label();

  async function corpus() {
    if (state.text) return state.text;
    const url = new URLSearchParams(location.search).get('corpus') ?? 'data/shakespeare.txt';
    $('train-timing').textContent = `training: fetching ${url}…`;
    const t0 = performance.now();
    const response = await fetch(url);
    if (!response.ok) {
      throw new Error(`could not fetch the training text ${url} (HTTP ${response.status}). ` +
        'Put it beside the page with `bash scripts/fetch-corpus.sh` (data/shakespeare.txt), or give ?corpus=URL.');
    }
    state.text = await response.text();
    $('train-timing').textContent =
      `training: ${state.text.length.toLocaleString()} characters fetched in ${(performance.now() - t0).toFixed(0)} ms`;
    return state.text;
  }

  async function create() {
    const s = settings();
    const text = await corpus();
    const t0 = performance.now();
    const make = (lambda, learn) =>
      demo.trainer(text, JSON.stringify({ ...s, lambda, learn_lambda: learn, evalEvery: undefined, sampleEvery: undefined }));
    const plain = make(0, false);
    let saobp;
    try {
      saobp = make(s.lambda, s.learn_lambda);
    } catch (e) {
      plain.free();
      throw e;
    }
    state.runs = [
      { name: 'λ = 0', run: plain, losses: [], evals: [], sample: '' },
      { name: `λ = ${s.lambda.toFixed(2)}${s.learn_lambda ? ' (learned)' : ''}`, run: saobp, losses: [], evals: [], sample: '' },
    ];
    state.settings = s;
    $('train-timing').textContent = `training: two models of L ${s.layers}, H ${s.heads}, C ${s.embd}, ` +
      `T ${s.block}, batch ${s.batch}, lr ${s.lr} (${plain.parameters.toLocaleString()} and ` +
      `${saobp.parameters.toLocaleString()} parameters), vocabulary ${plain.vocab}, built in ` +
      `${(performance.now() - t0).toFixed(0)} ms`;
    $('train-layer-legend').innerHTML = Array.from({ length: s.layers }, (_, l) =>
      `<span style="color:${LAYER_COLOURS[l % LAYER_COLOURS.length]}">■ ${l}</span>`).join(' ');
  }

  async function evaluate(step) {
    for (const r of state.runs) {
      const e = JSON.parse(await r.run.evaluate());
      r.evals.push(e);
    }
    window.saobpTrain.evaluations += 1;
    if (step % state.settings.sampleEvery === 0 || step === state.settings.steps) {
      for (const [i, r] of state.runs.entries()) {
        r.sample = await r.run.sample(SAMPLE_PROMPT, SAMPLE_TOKENS, 0.8, step);
        $(`train-sample-${i}`).textContent = r.sample;
        $(`train-sample-${i}-caption`).textContent = `${r.name}, after ${step} steps (temperature 0.8, top 40)`;
      }
      window.saobpTrain.samples += 1;
    }
    draw();
  }

  function readout(step) {
    const s = state.settings;
    const parts = state.runs.map((r, i) => {
      const last = r.losses.at(-1)?.[1];
      const val = r.evals.at(-1)?.val_loss;
      const colour = i === 0 ? 'var(--a)' : 'var(--r)';
      return `<span style="color:${colour}">${r.name}</span>: loss <b>${last?.toFixed(4) ?? '–'}</b>` +
        ` (val ${val?.toFixed(4) ?? '–'})`;
    });
    const tokens = (2 * s.batch * s.block) / Math.max(1e-9, state.stepMs / 1000);
    $('train-readout').innerHTML = `step <b>${step}</b> of ${s.steps} · ${parts.join(' · ')} · ` +
      `${state.stepMs.toFixed(0)} ms per pair of steps (${tokens.toFixed(0)} tokens/s)`;
  }

  function draw() {
    if (!state.runs) return;
    const css = getComputedStyle(document.documentElement);
    const colours = [css.getPropertyValue('--a').trim(), css.getPropertyValue('--r').trim()];
    const xMax = state.settings.steps;
    const loss = [];
    state.runs.forEach((r, i) => {
      loss.push({ points: smooth(r.losses), colour: colours[i], width: 1 });
      loss.push({ points: r.evals.map((e) => [e.step, e.val_loss]), colour: colours[i], width: 3 });
    });
    drawSeries($('train-chart-loss'), loss, { xMax, tight: true });
    for (const [id, metric] of [
      ['train-chart-entropy', (l) => l.entropy_r],
      ['train-chart-gtd', (l) => l.gtd_a.reduce((a, b) => a + b, 0) / Math.max(1, l.gtd_a.length)],
    ]) {
      const series = [];
      state.runs.forEach((r, i) => {
        for (let l = 0; l < state.settings.layers; l++) {
          series.push({
            points: r.evals.map((e) => [e.step, metric(e.layers[l])]),
            colour: LAYER_COLOURS[l % LAYER_COLOURS.length],
            dash: i === 0,
          });
        }
      });
      drawSeries($(id), series, { xMax });
    }
  }

  async function loop() {
    state.looping = true;
    document.body.dataset.trainState = 'running';
    window.saobpTrain.running = true;
    try {
      if (!state.runs) {
        await create();
        await evaluate(0);
      }
      const s = state.settings;
      let step = window.saobpTrain.steps;
      let lastDraw = 0;
      while (state.running && step < s.steps) {
        const t0 = performance.now();
        for (const r of state.runs) {
          const out = JSON.parse(await r.run.step(1));
          out.losses.forEach((l, k) => r.losses.push([out.step - out.losses.length + k + 1, l]));
          step = out.step;
        }
        const ms = performance.now() - t0;
        state.stepMs = state.stepMs ? 0.9 * state.stepMs + 0.1 * ms : ms;
        window.saobpTrain.steps = step;
        if (step % s.evalEvery === 0 || step === s.steps) await evaluate(step);
        if (performance.now() - lastDraw > 250) {
          readout(step);
          draw();
          lastDraw = performance.now();
        }
      }
      readout(step);
      draw();
      if (step >= s.steps) {
        state.running = false;
        $('train-start').textContent = 'Done';
        $('train-start').disabled = true;
      }
    } catch (e) {
      state.running = false;
      window.saobpTrain.error = String(e?.message ?? e);
      document.body.dataset.trainState = 'error';
      $('train-start').textContent = 'Start';
      showError(`training: ${window.saobpTrain.error}`);
      return;
    } finally {
      state.looping = false;
      window.saobpTrain.running = false;
    }
    document.body.dataset.trainState = state.running ? 'running' : 'paused';
  }

  // Start and Pause are one button. Pausing only asks the loop to stop
  // after its current pair of steps; pressing Start before it has stopped
  // lets the same loop go on, so two loops never run at once.
  function start() {
    if (state.resetting) return;
    if (state.running) {
      state.running = false;
      $('train-start').textContent = 'Start';
      return;
    }
    state.running = true;
    $('train-start').textContent = 'Pause';
    if (!state.looping) state.loop = loop();
  }

  async function reset() {
    if (state.resetting) return;
    state.resetting = true;
    $('train-start').disabled = true;
    state.running = false;
    await state.loop;
    state.resetting = false;
    for (const r of state.runs ?? []) r.run.free();
    state.runs = null;
    Object.assign(window.saobpTrain, { steps: 0, evaluations: 0, samples: 0, error: '' });
    state.stepMs = 0;
    $('train-start').textContent = 'Start';
    $('train-start').disabled = false;
    for (const id of ['train-chart-loss', 'train-chart-entropy', 'train-chart-gtd']) {
      const c = $(id);
      c.getContext('2d').clearRect(0, 0, c.width, c.height);
    }
    for (const i of [0, 1]) {
      $(`train-sample-${i}`).textContent = '';
      $(`train-sample-${i}-caption`).textContent = '';
    }
    $('train-readout').textContent = 'Reset: press Start for two new runs.';
    document.body.dataset.trainState = 'idle';
  }

  $('train-start').addEventListener('click', start);
  $('train-reset').addEventListener('click', () => reset().catch((e) => showError(`training: ${e.message ?? e}`)));
  $('train-lambda').addEventListener('input', label);
  for (const id of ['train-preset', 'train-lambda', 'train-learn', 'train-steps', 'train-seed']) {
    $(id).addEventListener('change', () => {
      controlsToUrl();
      if (state.runs || state.looping) reset().catch((e) => showError(`training: ${e.message ?? e}`));
    });
  }
  controlsToUrl();
  document.body.dataset.trainState = 'idle';
}

// Batch losses smoothed (exponential moving average) so the curve reads.
function smooth(points) {
  let avg = null;
  return points.map(([x, y]) => {
    avg = avg === null ? y : 0.9 * avg + 0.1 * y;
    return [x, avg];
  });
}
