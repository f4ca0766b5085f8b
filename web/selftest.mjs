// Serves web/ on 127.0.0.1 and drives headless Chromium (the system's
// /usr/bin/chromium; no browser is downloaded) through the demo page's
// self-test, then screenshots the interactive page and checks that showing
// another head redraws from the last run's maps without running again.
//
//   node web/selftest.mjs [report.json] [screenshot.png]
//
// Prints the report, writes it to report.json, and exits 0 only when the
// page's title starts with PASS (and the interactive page drew, and changing
// the head shown redrew without a new run). Every wait
// has a timeout, so a page that hangs fails instead of blocking.

import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const [reportPath, screenshotPath] = process.argv.slice(2);
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
    await page.goto(new URL('index.html', base).href);
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
