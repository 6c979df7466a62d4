// driver.js — drives headless Debian chromium (puppeteer-core) through the kzhook console for
// tests/integration/test_console.py. Reads a JSON plan on stdin, prints one JSON result on stdout:
// what it saw, how long pages took, which flows it skipped (routes the server answered 404) and
// every script-injection probe that fired (window.__kzXss(), exposed below, or window.__xss).
'use strict';
const puppeteer = require('puppeteer-core');

function readStdin() {
  return new Promise((resolve) => {
    let s = '';
    process.stdin.on('data', (d) => { s += d; });
    process.stdin.on('end', () => resolve(JSON.parse(s)));
  });
}

const out = {steps: [], skipped: [], xss: [], timings: {}, errors: [], consoleErrors: [], seen: {}};

async function settle(page, prev, timeout = 15000) {
  await page.waitForFunction((p) => document.body.dataset.ready && document.body.dataset.ready !== p,
    {timeout}, prev || '');
  return page.evaluate(() => document.body.dataset.ready);
}

async function ready(page) {
  return page.evaluate(() => document.body.dataset.ready || '');
}

// Goes to a console route and waits until it rendered; returns the milliseconds it took.
async function go(page, hash) {
  const prev = await ready(page);
  const t0 = Date.now();
  await page.evaluate((h) => {
    if (location.hash === h) window.dispatchEvent(new HashChangeEvent('hashchange'));
    else location.hash = h;
  }, hash);
  await settle(page, prev);
  return Date.now() - t0;
}

async function text(page) {
  return page.evaluate(() => document.getElementById('main').innerText);
}

// Types into the input whose <label> reads `label` (inside `scope`).
async function fill(page, label, value, scope = 'body') {
  const id = await page.evaluate((s, l) => {
    const lab = [...document.querySelectorAll(s + ' label')].find((x) => x.textContent.trim() === l);
    return lab ? lab.getAttribute('for') : null;
  }, scope, label);
  if (!id) throw new Error('no field labelled ' + label);
  await page.evaluate((i) => { document.getElementById(i).value = ''; }, id);
  await page.type('#' + id, value);
}

async function clickText(page, selector, t) {
  const el = await page.waitForSelector(`${selector}::-p-text(${t})`, {timeout: 10000});
  await el.click();
}

async function shot(page, plan, name) {
  if (!plan.shots) return;
  await page.evaluate(() => { document.getElementById('toast').className = 'toast'; });
  await new Promise((r) => setTimeout(r, 250));
  await page.screenshot({path: `${plan.shots}/${name}.png`, fullPage: true});
}

async function checkXss(page, where) {
  const flag = await page.evaluate(() => window.__xss || null);
  if (flag) out.xss.push({where, flag: String(flag)});
}

async function scenario(page, plan) {
  const base = plan.base;
  const r = await page.goto(base + '/ui/', {waitUntil: 'load'});
  out.seen.csp = r.headers()['content-security-policy'] || null;
  out.seen.xfo = r.headers()['x-frame-options'] || null;
  out.seen.ctype = r.headers()['content-type'] || null;
  await page.waitForFunction(() => document.body.dataset.ready);

  // ---- operator ----
  let prev = await ready(page);
  await fill(page, 'Admin token', plan.adminToken);
  await page.click('.login-grid form.login:first-child button');
  await settle(page, prev);
  await page.waitForSelector('.charts canvas', {timeout: 10000});
  out.seen.overview = await text(page);
  await checkXss(page, 'overview');
  await shot(page, plan, 'overview');
  out.steps.push('operator overview');

  await go(page, '#/apps');
  out.seen.apps = await text(page);
  await checkXss(page, 'applications');
  await shot(page, plan, 'applications');
  await fill(page, 'Name', 'made-in-the-console');
  prev = await ready(page);
  await clickText(page, 'form button', 'Create');
  await page.waitForSelector('.alert-ok');
  out.seen.appCreated = await page.evaluate(() => document.querySelector('.alert-ok').innerText);
  if (plan.deleteApp) {
    page.once('dialog', (d) => d.accept());
    await page.evaluate((n) => {
      const tr = [...document.querySelectorAll('tbody tr')].find((r) => r.textContent.includes(n));
      tr.querySelector('button.btn-danger').click();
    }, plan.deleteApp);
    await page.waitForFunction((n) => !document.getElementById('main').innerText.includes(n),
      {timeout: 10000}, plan.deleteApp);
    out.steps.push('application deleted');
  }

  out.timings.allWebhooks = await go(page, '#/all-webhooks');
  out.seen.allWebhooks = await text(page);
  await checkXss(page, 'all webhooks');
  await shot(page, plan, 'all-webhooks');
  prev = await ready(page);
  await page.click('.who button');
  await settle(page, prev);

  // ---- connector ----
  prev = await ready(page);
  await fill(page, 'Application id', plan.app.applicationId);
  await fill(page, 'Application secret', plan.app.applicationSecret);
  await fill(page, 'Refresh token', plan.app.refreshToken);
  await page.click('.login-grid form.login:last-child button');
  await settle(page, prev);
  out.seen.webhooks = await text(page);
  await checkXss(page, 'webhooks');
  await shot(page, plan, 'webhooks');
  out.steps.push('connector webhooks');

  // create: a failing handshake, then a passing one
  await page.click('details.panel > summary');
  await fill(page, 'Object id', plan.groupId);
  await fill(page, 'Callback URL', plan.badUrl);
  await clickText(page, 'form button', 'Create and validate');
  await page.waitForSelector('.alert-bad', {timeout: 20000});
  out.seen.handshakeFailed = await page.evaluate(() => document.querySelector('.alert-bad').innerText);
  await fill(page, 'Callback URL', plan.goodUrl);
  await clickText(page, 'form button', 'Create and validate');
  await page.waitForSelector('.alert-ok', {timeout: 20000});
  out.seen.handshakePassed = await page.evaluate(() => document.querySelector('.alert-ok').innerText);
  const newId = await page.evaluate(() => document.querySelector('.alert-ok a').textContent);
  out.seen.createdWebhook = newId;
  out.steps.push('webhook created');

  // the seeded webhook: receiver answers with HTML, the event data holds HTML
  await go(page, '#/webhook/' + plan.webhookId);
  out.seen.webhook = await text(page);
  await checkXss(page, 'webhook detail');
  await shot(page, plan, 'webhook');
  // status filter
  const statusSel = () => page.evaluate(() => '#' + [...document.querySelectorAll('label')]
    .find((x) => x.textContent.trim() === 'Status').getAttribute('for'));
  prev = await ready(page);
  await page.select(await statusSel(), 'succeeded');
  await settle(page, prev);
  out.seen.filteredSucceeded = await page.$$eval('tbody .pill', (ps) => ps.map((p) => p.textContent));
  prev = await ready(page);
  await page.select(await statusSel(), '');
  await settle(page, prev);

  // edit: disable then enable
  prev = await ready(page);
  await clickText(page, '.actions button', 'Disable');
  await settle(page, prev);
  out.seen.afterDisable = (await text(page)).includes('disabled');
  prev = await ready(page);
  await clickText(page, '.actions button', 'Enable');
  await settle(page, prev);

  // the new webhook: test event -> delivery detail -> retry; secret reveal and rotation
  await go(page, '#/webhook/' + newId);
  await clickText(page, 'form button', 'Send test event');
  await page.waitForFunction(() => document.querySelector('.alert-ok, .alert-bad'));
  const testRes = await page.evaluate(() => {
    const a = document.querySelector('.alert-ok, .alert-bad');
    return {ok: a.classList.contains('alert-ok'), text: a.innerText};
  });
  if (!testRes.ok && /^404 /.test(testRes.text)) {
    out.skipped.push('test event: POST /v1/webhook/{id}/test answered 404 (not merged yet)');
  } else if (!testRes.ok) {
    throw new Error('test event failed: ' + testRes.text);
  } else {
    prev = await ready(page);
    await page.click('.alert-ok a');
    await settle(page, prev);
    const t = await text(page);
    if (/404 NotFound/.test(t)) {
      out.skipped.push('delivery detail: GET /v1/webhook/{id}/deliveries/{deliveryId} answered 404');
    } else {
      for (let i = 0; i < 50 && !(await text(page)).includes('succeeded'); i++) {
        await new Promise((res) => setTimeout(res, 200));
        await go(page, await page.evaluate(() => location.hash));
      }
      out.seen.delivery = await text(page);
      await shot(page, plan, 'delivery');
      await clickText(page, '.page-head button', 'Retry now');
      await page.waitForSelector('.toast.show');
      out.seen.retryToast = await page.evaluate(() => document.getElementById('toast').textContent);
      out.steps.push('test event, delivery detail, retry');
    }
  }
  await go(page, '#/webhook/' + newId);
  await page.evaluate(() => { document.getElementById('toast').className = 'toast'; });
  await clickText(page, '.actions button', 'Reveal secret');
  await page.waitForFunction(() => document.querySelector('.alert code.copy, .toast.show'));
  const revealed = await page.evaluate(() => {
    const c = document.querySelector('.alert code.copy');
    return c ? c.textContent : 'error: ' + document.getElementById('toast').textContent;
  });
  if (revealed.startsWith('error: 404')) {
    out.skipped.push('secret: GET /v1/webhook/{id}/secret answered 404 (not merged yet)');
  } else {
    out.seen.secret = revealed;
    await page.evaluate(() => { document.getElementById('toast').className = 'toast'; });
    page.once('dialog', (d) => d.accept('1h'));
    await clickText(page, '.actions button', 'Rotate secret');
    await page.waitForFunction((old) => {
      const c = document.querySelector('.alert-ok code.copy');
      return (c && c.textContent !== old) || document.querySelector('.toast.show');
    }, {}, revealed);
    out.seen.rotated = await page.evaluate(() => {
      const c = document.querySelector('.alert-ok code.copy');
      return c ? c.textContent : 'error: ' + document.getElementById('toast').textContent;
    });
    out.steps.push('secret revealed and rotated');
  }

  // phone width
  await page.setViewport({width: 390, height: 844, deviceScaleFactor: 2});
  await go(page, '#/webhook/' + plan.webhookId);
  await shot(page, plan, 'phone-webhook');
  out.seen.phoneOverflow = await page.evaluate(() => document.documentElement.scrollWidth -
    document.documentElement.clientWidth);
  await checkXss(page, 'phone');
}

// Load times only: the operator's page of every webhook and a webhook's deliveries.
async function perf(page, plan) {
  await page.goto(plan.base + '/ui/', {waitUntil: 'load'});
  await page.waitForFunction(() => document.body.dataset.ready);
  await page.evaluate((t) => sessionStorage.setItem('kzhook.console.session',
    JSON.stringify({mode: 'operator', token: t})), plan.adminToken);
  const runs = {allWebhooks: [], deliveries: []};
  for (let i = 0; i < 5; i++) {
    await page.goto(plan.base + '/ui/#/all-webhooks?x=' + i, {waitUntil: 'load'});
    const t0 = Date.now();
    await page.reload({waitUntil: 'load'});
    await page.waitForFunction(() => document.querySelector('tbody tr'), {timeout: 10000});
    runs.allWebhooks.push(Date.now() - t0);
  }
  out.seen.allWebhooksRows = await page.$$eval('tbody tr', (r) => r.length);
  out.seen.allWebhooksText = await text(page);
  await page.evaluate((a) => sessionStorage.setItem('kzhook.console.session',
    JSON.stringify({mode: 'connector', applicationId: a.applicationId,
      applicationSecret: a.applicationSecret, refreshToken: a.refreshToken, accessToken: 'expired'})),
  plan.app);
  for (let i = 0; i < 5; i++) {
    await page.goto(plan.base + '/ui/#/webhook/' + plan.webhookId, {waitUntil: 'load'});
    const t0 = Date.now();
    await page.reload({waitUntil: 'load'});
    await page.waitForFunction(() => document.querySelectorAll('tbody tr').length >= 50,
      {timeout: 10000});
    runs.deliveries.push(Date.now() - t0);
  }
  out.seen.deliveriesText = await text(page);
  await shot(page, plan, 'webhook-1m-deliveries');
  out.timings = runs;
}

(async () => {
  const plan = await readStdin();
  const browser = await puppeteer.launch({executablePath: plan.chromium, headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run']});
  let code = 0;
  try {
    const page = await browser.newPage();
    await page.setViewport({width: 1280, height: 900});
    await page.exposeFunction('__kzXss', (w) => { out.xss.push({where: 'exposed', flag: String(w)}); });
    page.on('pageerror', (e) => out.errors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') out.consoleErrors.push(m.text()); });
    page.on('dialog', async (d) => { if (d.type() === 'alert') await d.dismiss(); });
    if (plan.mode === 'perf') await perf(page, plan);
    else await scenario(page, plan);
  } catch (e) {
    out.errors.push('driver: ' + (e && e.stack ? e.stack : String(e)));
    code = 1;
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out));
  process.exit(code);
})();
