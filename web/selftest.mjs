// Serves web/ on 127.0.0.1 and drives headless Chromium (the system's
// /usr/bin/chromium; no browser is downloaded) through the demo page's
// self-test, then screenshots the synthetic heads' view and checks that
// showing another head redraws from the last run's maps without running
// again, then uses the model view as a person would: types two sentences,
// picks a layer and a head, moves λ, and screenshots it; and the training
// tab: a very small GPT (set in the URL) started, paused and screenshotted.
//
//   node web/selftest.mjs [report.json] [synthetic.png] [model.png] [train.png]
//
// Prints the report, writes it to report.json, and exits 0 only when the
// page's title starts with PASS (and both views drew, changing the head shown
// redrew without a new run, and the model view's maps changed as asked with
// no error on the page). Every wait has a timeout, so a page that hangs fails
// instead of blocking.

import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const [reportPath, screenshotPath, modelScreenshotPath, trainScreenshotPath] = process.argv.slice(2);
const root = path.dirname(fileURLToPath(import.meta.url));

// A static server for web/, on a free port of the loopback interface only
// (http://127.0.0.1 is a secure context, which WebGPU requires).
const types = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript',
  '.mjs': 'text/javascript',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
  '.png': 'image/png',
  '.css': 'text/css',
};
const server = http.createServer((req, res) => {
  let file;
  try {
    const url = new URL(req.url, 'http://127.0.0.1');
    file = path.join(root, decodeURIComponent(url.pathname).replace(/\/$/, '/index.html'));
  } catch {
    file = '';
  }
  if (!file.startsWith(root + path.sep)) {
    res.writeHead(403).end();
    return;
  }
  fs.readFile(file, (err, data) => {
    if (err) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' });
    res.end(data);
  });
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const base = `http://127.0.0.1:${server.address().port}/`;
console.log(`serving ${root} at ${base}`);
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const selftestTimeout = Number(process.env.SAOBP_SELFTEST_TIMEOUT_MS ?? 180000);

// --enable-unsafe-webgpu is the one flag WebGPU needs here: headless Chromium
// then offers its built-in SwiftShader adapter (it refuses Mesa's lavapipe).
// The rest keep a test run quiet, offline and reproducible.
const args = [
  '--enable-unsafe-webgpu',
  '--no-sandbox',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'saobp-chromium-'));
let context;
let code = 1;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args,
    viewport: { width: 1280, height: 900 },
  });
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.log(`[page ${m.type()}] ${m.text()}`);
  });
  page.on('pageerror', (e) => console.log(`[page error] ${e.message}`));

  // 1. The self-test.
  await page.goto(new URL('index.html?selftest=1', base).href);
  let title;
  try {
    await page.waitForFunction(() => /^(PASS|FAIL)\b/.test(document.title), null, {
      timeout: selftestTimeout,
      polling: 250,
    });
    title = await page.title();
  } catch (e) {
    const body = await page.evaluate(() => document.body.innerText).catch(() => '');
    title = `FAIL the self-test did not finish within ${selftestTimeout} ms (${e.message.split('\n')[0]})`;
    console.log(body);
  }
  const report = await page.evaluate(() => window.saobpReport ?? null).catch(() => null);
  console.log(JSON.stringify(report, null, 2));
  if (reportPath && report) fs.writeFileSync(reportPath, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`title: ${title}`);
  code = title.startsWith('PASS') ? 0 : 1;

  // 2. A screenshot of the interactive page once its first run is drawn.
  if (screenshotPath) {
    await page.goto(new URL('index.html?view=synthetic', base).href);
    try {
      await page.waitForFunction(() => document.body.dataset.state === 'ready', null, {
        timeout: selftestTimeout,
        polling: 250,
      });
      await page.screenshot({ path: screenshotPath, fullPage: true });
      console.log(`screenshot: ${screenshotPath}`);
      const problem = await checkHeadChange(page);
      if (problem) {
        console.log(`FAIL changing the head shown: ${problem}`);
        code = 1;
      } else {
        console.log('head shown changed: redrawn from the last run, no new run');
      }
    } catch (e) {
      const error = await page.evaluate(() => document.getElementById('error')?.textContent ?? '').catch(() => '');
      console.log(`FAIL the interactive page did not draw: ${error || e.message.split('\n')[0]}`);
      code = 1;
    }
  }

  // 3. The model view, driven as a person would.
  if (modelScreenshotPath) {
    const problem = await checkModelView(page, modelScreenshotPath).catch((e) => e.message.split('\n')[0]);
    if (problem) {
      console.log(`FAIL the model view: ${problem}`);
      code = 1;
    }
  }

  // 4. The training tab, driven as a person would.
  if (trainScreenshotPath) {
    const problem = await checkTrainView(page, trainScreenshotPath).catch((e) => e.message.split('\n')[0]);
    if (problem) {
      console.log(`FAIL the training tab: ${problem}`);
      code = 1;
    }
  }
} catch (e) {
  console.log(`FAIL ${e.message}`);
  code = 1;
} finally {
  await context?.close().catch(() => {});
  fs.rmSync(profile, { recursive: true, force: true });
  server.close();
}
process.exit(code);

// Moves the "head shown" slider to another head as a user would (a committed
// `change`), waits for that head to be drawn, and returns what went wrong, or
// null: the workload must not run again, and the caption and map must change.
async function checkHeadChange(page) {
  const before = await page.evaluate(() => ({
    runs: window.saobpRuns,
    shown: window.saobpShown,
    map: document.getElementById('map-a').toDataURL(),
  }));
  const target = await page.evaluate(() => {
    const slider = document.getElementById('show');
    const head = (Number(slider.value) + 1) % (Number(slider.max) + 1);
    slider.value = String(head);
    slider.dispatchEvent(new Event('change'));
    return head;
  });
  if (target === before.shown) return `the page has one head only (head ${target})`;
  try {
    await page.waitForFunction((h) => window.saobpShown === h && document.body.dataset.state === 'ready', target, {
      timeout: selftestTimeout,
      polling: 100,
    });
  } catch (e) {
    const error = await page.evaluate(() => document.getElementById('error')?.textContent ?? '').catch(() => '');
    return `head ${target} was not drawn: ${error || e.message.split('\n')[0]}`;
  }
  const after = await page.evaluate(() => ({
    runs: window.saobpRuns,
    caption: document.getElementById('a-caption').textContent,
    map: document.getElementById('map-a').toDataURL(),
  }));
  if (after.runs !== before.runs) return `the workload ran again (${before.runs} runs before, ${after.runs} after)`;
  if (!after.caption.startsWith(`head ${target} `)) return `the caption reads "${after.caption}"`;
  if (after.map === before.map) return `the map of head ${target} looks exactly like head ${before.shown}'s`;
  return null;
}

// The page's error box, or ''.
async function pageError(page) {
  return page.evaluate(() => {
    const box = document.getElementById('error');
    return box && !box.hidden ? box.textContent : '';
  });
}

// Waits until the model view is ready with `done` true of window.saobpModel;
// returns what went wrong, or null.
async function waitModel(page, what, done, arg) {
  try {
    await page.waitForFunction(
      ([source, a]) => {
        const m = window.saobpModel;
        const state = document.body.dataset.modelState;
        if (state === 'error') return true;
        return state === 'ready' && m && new Function('m', 'a', `return (${source})(m, a)`)(m, a);
      },
      [done.toString(), arg],
      { timeout: selftestTimeout, polling: 100 },
    );
  } catch (e) {
    return `${what}: ${(await pageError(page).catch(() => '')) || e.message.split('\n')[0]}`;
  }
  const error = await pageError(page);
  return error ? `${what}: the page shows an error: ${error}` : null;
}

// What the model view shows now: its two maps, its counters, the cosine.
function maps(page) {
  return page.evaluate(() => ({
    a: document.getElementById('model-map-a').toDataURL(),
    r: document.getElementById('model-map-r').toDataURL(),
    model: { ...window.saobpModel },
    cosine: document.getElementById('cosine').textContent,
  }));
}

// Moves a range input with the keyboard, as a person would: focus, arrows.
async function slide(page, id, steps) {
  await page.focus(`#${id}`);
  for (let i = 0; i < Math.abs(steps); i++) await page.keyboard.press(steps > 0 ? 'ArrowRight' : 'ArrowLeft');
}

// Loads the model view (the model's files beside the page), types two
// sentences, picks a layer and a head, moves λ; each step must redraw the
// maps it should, run on the GPU only what it should, and show no error.
async function checkModelView(page, screenshot) {
  const t0 = Date.now();
  await page.goto(new URL('index.html?view=model', base).href);
  let problem = await waitModel(page, 'the first analysis', (m) => m.analyses >= 1 && m.draws >= 1);
  if (problem) return problem;
  console.log(`model view: loaded and drew the default sentences in ${Date.now() - t0} ms`);

  // Type two sentences and press Enter.
  const before = await maps(page);
  await page.fill('#text-1', 'The old dog chased the ball.');
  await page.fill('#text-2', 'A puppy ran after a toy.');
  await page.press('#text-1', 'Enter');
  problem = await waitModel(page, 'typing two sentences', (m, n) => m.analyses > n, before.model.analyses);
  if (problem) return problem;
  const typed = await maps(page);
  const tokens = typed.model.drawn.tokens.join(' ');
  if (!tokens.includes('dog') || !tokens.includes('chased')) return `the tokens shown are "${tokens}"`;
  if (typed.a === before.a) return 'A did not change after a new sentence';
  if (!/plain model -?\d\.\d{4}, with SAOBP/.test(typed.cosine)) return `the cosine reads "${typed.cosine}"`;
  console.log(`model view: typed sentences → ${tokens}; ${typed.cosine}`);

  // Pick a layer and a head: a redraw only, nothing runs on the GPU.
  await slide(page, 'layer', 2);
  await slide(page, 'head', 3);
  problem = await waitModel(page, 'picking a layer and a head', (m, d) => m.drawn.layer === d.layer + 2 && m.drawn.head === d.head + 3, typed.model.drawn);
  if (problem) return problem;
  const picked = await maps(page);
  if (picked.a === typed.a || picked.r === typed.r) return 'the maps did not change with the layer and head';
  if (picked.model.analyses !== typed.model.analyses || picked.model.refines !== typed.model.refines) {
    return 'changing the layer or head ran the model or SAOBP again';
  }
  console.log(`model view: layer ${picked.model.drawn.layer}, head ${picked.model.drawn.head} redrawn without GPU work`);

  // Move λ: SAOBP reruns on the kept maps, the model does not.
  await slide(page, 'model-lambda', 20);
  problem = await waitModel(page, 'moving λ', (m, l) => m.refines > 0 && m.drawn.lambda !== l, picked.model.drawn.lambda);
  if (problem) return problem;
  const moved = await maps(page);
  if (moved.r === picked.r) return `R did not change when λ went from ${picked.model.drawn.lambda} to ${moved.model.drawn.lambda}`;
  if (moved.model.analyses !== picked.model.analyses) return 'moving λ ran the model again';
  console.log(`model view: λ ${picked.model.drawn.lambda} → ${moved.model.drawn.lambda}: R redrawn after ${moved.model.refines} SAOBP run(s), the model not rerun`);

  // Hover a cell of A: its value shows.
  const box = await page.locator('#model-map-a').boundingBox();
  await page.mouse.move(box.x + box.width * 0.6, box.y + box.height * 0.6);
  const tip = await page.evaluate(() => {
    const t = document.getElementById('tooltip');
    return t.hidden ? '' : t.textContent;
  });
  if (!/^A\[.+ → .+\] = \d\.\d{4}/.test(tip)) return `hovering A shows "${tip}"`;
  console.log(`model view: hover → ${tip}`);
  const timing = await page.evaluate(() => document.getElementById('model-timing').textContent);
  console.log(`model view: ${timing}`);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);
  return null;
}

// Opens the training tab with a very small GPT (SwiftShader is slow), sets
// λ and presses Start; waits for a few steps and two evaluations, presses
// Pause, and checks that the loss readout, the three charts and the samples
// changed and that no error appeared. Returns what went wrong, or null.
async function checkTrainView(page, screenshot) {
  const t0 = Date.now();
  const small = 'layers=2&heads=2&embd=32&block=32&batch=4&windows=4&eval=4&sample=1000&lr=0.003';
  await page.goto(new URL(`index.html?view=train&steps=40&${small}`, base).href);
  await page.waitForFunction(() => document.body.dataset.trainState === 'idle', null, { timeout: 30000 });
  const blank = await page.evaluate(() => document.getElementById('train-chart-loss').toDataURL());
  const readout = await page.evaluate(() => document.getElementById('train-readout').textContent);
  await slide(page, 'train-lambda', 2);
  await page.click('#train-start');
  try {
    await page.waitForFunction(
      () => window.saobpTrain.error || (window.saobpTrain.steps >= 8 && window.saobpTrain.evaluations >= 3),
      null,
      { timeout: selftestTimeout, polling: 250 },
    );
  } catch (e) {
    return `no progress: ${(await pageError(page).catch(() => '')) || e.message.split('\n')[0]}`;
  }
  await page.click('#train-start'); // Pause
  await page.waitForFunction(() => !window.saobpTrain.running, null, { timeout: selftestTimeout });
  const error = await pageError(page);
  if (error) return `the page shows an error: ${error}`;
  const after = await page.evaluate(() => ({
    train: { ...window.saobpTrain },
    url: location.search,
    readout: document.getElementById('train-readout').textContent,
    charts: ['loss', 'entropy', 'gtd'].map((c) => document.getElementById(`train-chart-${c}`).toDataURL()),
    samples: [0, 1].map((i) => document.getElementById(`train-sample-${i}`).textContent),
    state: document.body.dataset.trainState,
  }));
  if (after.state !== 'paused') return `the state after Pause is ${after.state}`;
  if (!/lambda=0\.4(&|$)/.test(after.url)) return `λ is not kept in the URL (${after.url})`;
  if (after.readout === readout || !/loss \d\.\d{4} \(val \d\.\d{4}\)/.test(after.readout)) {
    return `the loss readout reads "${after.readout}"`;
  }
  if (after.charts.some((c) => c === blank)) return 'a chart is still blank';
  if (after.samples.some((t) => t.length < 20)) return `the samples are "${after.samples.join('" and "')}"`;
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`training tab: ${after.train.steps} steps, ${after.train.evaluations} evaluations in ` +
    `${Date.now() - t0} ms; ${after.readout}`);
  console.log(`screenshot: ${screenshot}`);
  return null;
}
