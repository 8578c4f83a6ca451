// Opens every example workflow in ComfyUI's real frontend (headless Chromium) and writes what
// only the frontend can make:
//
//   workflows/<name>.json              the graph as the frontend saves it (app.graph.serialize()),
//                                      with the view it opens at: the frontend's default zoom (1)
//                                      and the graph's top-left corner (the first group) in view
//   workflows/api/<name>.json          API format, from the frontend's own app.graphToPrompt()
//   workflows/<name>.jpg               template-browser thumbnail (512 x 512 JPEG): the first
//                                      1000 x 1000 pixels of the graph at zoom 1
//   docs/screenshots/<name>.jpg        README screenshot: the whole graph at zoom 1, one screen
//                                      pixel per graph unit (as wide as the graph, plus a margin)
//
// The pictures are taken at the frontend's default zoom (1) and drawing settings (link style,
// level of detail, theme); only what would cover the graph is off (the first-run template dialog,
// the minimap, zoom buttons and render statistics in the canvas's corners), and focus mode hides
// the menus and side bar around it.
//
// Edit a workflow (by hand, or in ComfyUI and save it over workflows/<name>.json), then rerun this.
//
// It also checks that ComfyUI's template browser lists the pack's workflows
// (GET /workflow_templates), serves them and their thumbnails (/api/workflow_templates/<pack>/...),
// and that each one loads with no missing node type, no dialog, no warning toast, no page error,
// and re-serialises to the same nodes, widget values and links as the file; that no two nodes
// overlap; and that every Note shows its whole text at zoom 1 (no scroll bar).
//
// It starts the ComfyUI you name headless on the CPU with a temporary --base-directory whose
// custom_nodes/ holds a link to this repo (the checkout is left as it is) and whose input/ holds
// workflows/comboverse_example.png (the picture the workflows load), and stops it at the end.
//
// Once (outside the repo; Debian's chromium and playwright-core from npm):
//
//   apt-get install -y chromium
//   npm install --prefix /tmp/shots playwright-core
//
// Then, from the repo root:
//
//   node tools/workflow_screenshots.mjs --comfyui /path/to/ComfyUI --playwright /tmp/shots/node_modules
//
// Options:
//   --python PY       the Python that runs ComfyUI (default: python3); it must import this pack's deps
//   --chromium PATH   the browser (default: /usr/bin/chromium)
//   --only NAME       one workflow (repeatable)
//   --check           write nothing and take no pictures: fail if workflows/<name>.json or
//                     workflows/api/<name>.json is not what the frontend saves / converts
//                     (tests/test_comfyui_real.py runs this when PLAYWRIGHT_CORE_DIR is set)
//   --keep            keep the temporary base directory (server.log, settings) for debugging
//   --front-end-root DIR  serve this frontend (a comfyui-frontend-package's static/ folder) instead
//                     of the one the ComfyUI's requirements installed; with --check, to see whether
//                     another frontend version opens the workflows cleanly
//   --opened DIR      also write DIR/<name>.png: the whole window (1600 x 900, menus and side bar
//                     shown) as the workflow opens, to see what a user sees first
//
// Exit status 0 when every check passed; otherwise the problems are printed and it exits 1.

import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync, openSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';

import { CHROMIUM_FLAGS, SETTINGS, sleep } from './frontend_common.mjs';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const PACK = 'ComfyUI-ComboVerse'; // the folder name users clone into custom_nodes/ (README)
const EXAMPLE_PICTURE = 'comboverse_example.png'; // in workflows/; the workflows' Load Image names it
const THUMB_SIZE = 512;
const MARGIN = 24; // CSS pixels around the graph in the pictures
// The view a workflow opens at: the frontend's default zoom, the graph's top-left corner this far
// from the graph canvas's top-left corner. Frontend 1.27.10 (ComfyUI 0.3.64's) puts the canvas
// below the menu bar and right of the side bar, 1.58.1 (newest in 2026-11) under both: this clears
// them in both.
const OPEN_SCALE = 1;
const OPEN_AT = [72, 92];

function parseArgs(argv) {
  const args = { comfyui: process.env.COMFYUI_DIR, python: 'python3', chromium: '/usr/bin/chromium',
    playwright: process.env.PLAYWRIGHT_CORE_DIR, only: [], check: false, keep: false, opened: null, frontEndRoot: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--comfyui') args.comfyui = value();
    else if (a === '--python') args.python = value();
    else if (a === '--chromium') args.chromium = value();
    else if (a === '--playwright') args.playwright = value();
    else if (a === '--only') args.only.push(value());
    else if (a === '--check') args.check = true;
    else if (a === '--keep') args.keep = true;
    else if (a === '--opened') args.opened = resolve(value());
    else if (a === '--front-end-root') args.frontEndRoot = resolve(value());
    else throw new Error(`unknown argument ${a}; see the comment at the top of this file`);
  }
  if (!args.comfyui) throw new Error('--comfyui /path/to/ComfyUI (or COMFYUI_DIR) is required');
  return args;
}

function loadPlaywright(dir) {
  // playwright-core lives outside the repo (see the top of this file), so resolve it from there.
  const from = dir ? join(resolve(dir), '..', 'noop.js') : join(REPO, 'noop.js');
  try {
    return createRequire(from)('playwright-core');
  } catch (err) {
    throw new Error(`playwright-core not found from ${dirname(from)}: ${err.message}\n` +
      'install it with `npm install --prefix /tmp/shots playwright-core` and pass ' +
      '--playwright /tmp/shots/node_modules');
  }
}

function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}


function graphWorkflowNames() {
  return readdirSync(join(REPO, 'workflows')).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5)).sort();
}

function prepareBaseDirectory() {
  const base = mkdtempSync(join(tmpdir(), 'comboverse-shots-'));
  mkdirSync(join(base, 'custom_nodes'));
  symlinkSync(REPO, join(base, 'custom_nodes', PACK), 'dir');
  mkdirSync(join(base, 'user', 'default'), { recursive: true });
  writeFileSync(join(base, 'user', 'default', 'comfy.settings.json'), JSON.stringify(SETTINGS, null, 2));
  // The picture the workflows' Load Image names, as a user who copied it would have it.
  mkdirSync(join(base, 'input'));
  copyFileSync(join(REPO, 'workflows', EXAMPLE_PICTURE), join(base, 'input', EXAMPLE_PICTURE));
  return base;
}

async function startComfyUI(args, base) {
  const port = await freePort();
  const log = openSync(join(base, 'server.log'), 'w');
  const frontEnd = args.frontEndRoot ? ['--front-end-root', args.frontEndRoot] : [];
  const proc = spawn(args.python, ['main.py', '--cpu', '--listen', '127.0.0.1', '--port', String(port),
    '--base-directory', base, '--disable-auto-launch', '--database-url', 'sqlite:///:memory:', ...frontEnd],
  { cwd: args.comfyui, stdio: ['ignore', log, log] });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 240; i++) {
    if (proc.exitCode !== null) {
      throw new Error(`ComfyUI exited:\n${readFileSync(join(base, 'server.log'), 'utf8').slice(-3000)}`);
    }
    try {
      const res = await fetch(`${url}/object_info/ComboVerseExportMesh`);
      if (res.ok) return { proc, url };
    } catch {
      // not listening yet
    }
    await sleep(1000);
  }
  proc.kill();
  throw new Error(`ComfyUI did not come up:\n${readFileSync(join(base, 'server.log'), 'utf8').slice(-3000)}`);
}

async function checkTemplateListing(url, names, problems, { thumbnails }) {
  const listing = await (await fetch(`${url}/workflow_templates`)).json();
  const listed = [...(listing[PACK] || [])].sort();
  if (!isDeepStrictEqual(listed, names)) {
    problems.push(`/workflow_templates lists ${JSON.stringify(listed)} for ${PACK}, expected ${JSON.stringify(names)}`);
  }
  for (const name of names) {
    for (const ext of thumbnails ? ['json', 'jpg'] : ['json']) {
      const res = await fetch(`${url}/api/workflow_templates/${PACK}/${name}.${ext}`);
      if (res.status !== 200) problems.push(`/api/workflow_templates/${PACK}/${name}.${ext}: HTTP ${res.status}`);
      else if (ext === 'jpg') {
        const body = Buffer.from(await res.arrayBuffer());
        if (!body.equals(readFileSync(join(REPO, 'workflows', `${name}.jpg`)))) {
          problems.push(`/api/workflow_templates/${PACK}/${name}.jpg is not workflows/${name}.jpg`);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// In the page

async function openApp(page, url) {
  await page.goto(url);
  await page.waitForFunction(() => window.app?.graph && window.app?.canvas && window.LiteGraph
    && 'ComboVerseSegment' in window.LiteGraph.registered_node_types && window.app.extensionManager?.command,
  null, { timeout: 180000 });
  // Focus mode still shows the menu button in the top-right corner: not part of the graph.
  await page.addStyleTag({ content: '.comfy-menu-hamburger { display: none !important; }' });
  await page.waitForTimeout(500);
}

/** Focus mode: no menus or side bar around the graph. */
async function focusMode(page) {
  await page.evaluate(() => window.app.extensionManager.command.execute('Workspace.ToggleFocusMode'));
  await settle(page);
}

/** Load one workflow as the template browser does; return what the frontend made of it. */
async function loadWorkflow(page, workflow, name) {
  return page.evaluate(async ({ workflow, name }) => {
    const { app, LiteGraph } = window;
    const missing = workflow.nodes.map((n) => n.type).filter((t) => !(t in LiteGraph.registered_node_types));
    await app.loadGraphData(workflow, true, true, name);
    await new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(ok)));
    const visible = (el) => el.offsetParent !== null;
    const dialogs = [...document.querySelectorAll('.p-dialog')].filter(visible).map((d) => d.innerText.slice(0, 300));
    const toasts = [...document.querySelectorAll('.p-toast-message')].map((t) => t.innerText.slice(0, 300));
    const graph = app.graph.serialize();
    const { output } = await app.graphToPrompt();
    return { missing, dialogs, toasts, graph, output };
  }, { workflow, name });
}

/** The graph's extent in graph units: every node (title bar included) and every group. */
async function graphBounds(page) {
  return page.evaluate(() => {
    const { app } = window;
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    const rects = [...app.graph.nodes.map((n) => n.boundingRect), ...app.graph.groups.map((g) => g.boundingRect ?? g._bounding)];
    for (const [x, y, w, h] of rects) {
      x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
    }
    return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
  });
}

/** Show the graph at `scale` with graph point (x, y) at window pixel `at`. */
async function setView(page, scale, x, y, at) {
  await page.evaluate(async ({ scale, offset }) => {
    const { app } = window;
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = offset;
    app.canvas.setDirty(true, true);
    await new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(ok)));
    // Preview 3D sizes its viewer only when its node is resized (else it keeps the size it had
    // when created, drawn into a corner).
    for (const node of app.graph.nodes) node.onResize?.(node.size);
  }, { scale, offset: [at[0] / scale - x, at[1] / scale - y] });
  await settle(page);
}

/** Notes whose text does not fit their box at the current view (a scroll bar hides some). */
async function crampedNotes(page) {
  return page.evaluate(() => window.app.graph.nodes.filter((n) => n.type === 'Note').flatMap((n) => {
    const el = n.widgets?.find((w) => w.element)?.element;
    if (!el || !el.clientHeight) return [`${n.id}: its text box is not shown`];
    return el.scrollHeight > el.clientHeight + 1
      ? [`${n.id}: text needs ${el.scrollHeight} px, box has ${el.clientHeight} px`] : [];
  }));
}

async function encodeJpeg(page, png, width, height, quality) {
  const b64 = await page.evaluate(async ({ src, width, height, quality }) => {
    const img = new Image();
    img.src = `data:image/png;base64,${src}`;
    await img.decode();
    const canvas = document.createElement('canvas');
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext('2d');
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(img, 0, 0, width, height);
    return canvas.toDataURL('image/jpeg', quality).split(',')[1];
  }, { src: png.toString('base64'), width, height, quality });
  return Buffer.from(b64, 'base64');
}

/** Show the whole graph at zoom 1 in a window just large enough for it; check the Notes there. */
async function showWholeGraph(page) {
  const bounds = await graphBounds(page);
  const width = Math.ceil(bounds.width) + 2 * MARGIN;
  const height = Math.ceil(bounds.height) + 2 * MARGIN;
  await page.setViewportSize({ width, height });
  await settle(page);
  await setView(page, 1, bounds.x, bounds.y, [MARGIN, MARGIN]);
  return { bounds, width, height, cramped: await crampedNotes(page) };
}

/** The README screenshot (the whole graph at zoom 1, shown by showWholeGraph) and the template
 * thumbnail (square, like the template browser's cards: the graph's top-left corner at zoom 1). */
async function takePictures(page, whole) {
  const readme = await encodeJpeg(page, await page.screenshot({ type: 'png' }), whole.width, whole.height, 0.8);
  const side = 2 * THUMB_SIZE - 24;
  await page.setViewportSize({ width: side, height: side });
  await settle(page);
  await setView(page, 1, whole.bounds.x, whole.bounds.y, [MARGIN, MARGIN]);
  const thumb = await encodeJpeg(page, await page.screenshot({ type: 'png' }), THUMB_SIZE, THUMB_SIZE, 0.85);
  return { readme, thumb };
}

async function settle(page) {
  // DOM widgets (text areas, the 3D viewer) follow the canvas on the next frames.
  await page.waitForTimeout(400);
}

// ---------------------------------------------------------------------------------------------
// Comparing the frontend's serialisation with the file

/** The graph as the frontend saves it, with the view it opens at: zoom 1, the graph's top-left
 * corner at OPEN_AT (the frontend restores a saved view instead of fitting the whole graph, which
 * for these graphs would zoom out until the text is too small to read). */
function savedGraph(graph, bounds) {
  const out = structuredClone(graph);
  out.extra ??= {};
  out.extra.ds = { scale: OPEN_SCALE, offset: [OPEN_AT[0] / OPEN_SCALE - bounds.x, OPEN_AT[1] / OPEN_SCALE - bounds.y] };
  return out;
}

/** Links as (source node, output name) -> (target node, input name, type): slot numbers may
 * change when the frontend lists a node's sockets in its own order, connections may not. */
function namedLinks(workflow) {
  const byId = new Map(workflow.nodes.map((n) => [n.id, n]));
  return workflow.links.map(([, src, srcSlot, dst, dstSlot, type]) => JSON.stringify([
    src, byId.get(src)?.outputs?.[srcSlot]?.name, dst, byId.get(dst)?.inputs?.[dstSlot]?.name, type])).sort();
}

function compareWithFile(name, file, graph, problems, notes) {
  const byId = new Map(graph.nodes.map((n) => [n.id, n]));
  for (const node of file.nodes) {
    const got = byId.get(node.id);
    const where = `${name} node ${node.id} (${node.type})`;
    if (!got) { problems.push(`${where}: gone after loading`); continue; }
    if (got.type !== node.type) problems.push(`${where}: loaded as ${got.type}`);
    const want = node.widgets_values ?? [];
    const have = got.widgets_values ?? [];
    // The frontend may append widgets of its own (Preview3D's viewer); it must keep the file's values.
    if (!isDeepStrictEqual(have.slice(0, want.length), want)) {
      problems.push(`${where}: the frontend's widget values ${JSON.stringify(have)} ` +
        `differ from the file's ${JSON.stringify(want)}`);
    } else if (have.length !== want.length) {
      notes.push(`${where}: the frontend adds widget values ${JSON.stringify(have.slice(want.length))}`);
    }
  }
  if (graph.nodes.length !== file.nodes.length) problems.push(`${name}: ${graph.nodes.length} nodes after loading`);
  if (!isDeepStrictEqual(namedLinks(graph), namedLinks(file))) {
    problems.push(`${name}: the connections after loading differ from the file's`);
  }
}

function overlaps(name, graph, problems) {
  // Nodes drawn over each other hide sockets and widgets; title bars (30 px) sit above pos.
  const rects = graph.nodes.map((n) => ({ id: n.id, x: n.pos[0], y: n.pos[1] - 30, w: n.size[0], h: n.size[1] + 30 }));
  for (let i = 0; i < rects.length; i++) {
    for (let j = i + 1; j < rects.length; j++) {
      const a = rects[i]; const b = rects[j];
      if (a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h) {
        problems.push(`${name}: nodes ${a.id} and ${b.id} overlap`);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const { chromium } = loadPlaywright(args.playwright);
  const names = graphWorkflowNames();
  const selected = args.only.length ? args.only : names;
  for (const name of selected) if (!names.includes(name)) throw new Error(`no workflows/${name}.json`);
  const problems = [];
  const notes = [];
  const base = prepareBaseDirectory();
  let server = null;
  let browser = null;
  try {
    server = await startComfyUI(args, base);
    const { url } = server;
    console.log(`ComfyUI at ${url} (base directory ${base})`);
    await checkTemplateListing(url, names, problems, { thumbnails: false });

    browser = await chromium.launch({ executablePath: args.chromium, headless: true, args: CHROMIUM_FLAGS });
    const context = await browser.newContext({ viewport: { width: 1600, height: 900 } });
    await context.route((u) => !u.href.startsWith(url), (route) => route.abort()); // nothing leaves this machine
    const page = await context.newPage();
    let current = null; // the workflow being loaded, to attribute errors
    const startupErrors = [];
    page.on('pageerror', (err) => (current ? problems.push(`${current}: page error ${err.message}`)
      : startupErrors.push(err.message)));
    page.on('console', (msg) => {
      if (current && msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) {
        problems.push(`${current}: console error ${msg.text().slice(0, 300)}`);
      }
    });
    page.on('response', (res) => {
      if (current && res.status() >= 400) problems.push(`${current}: HTTP ${res.status()} ${res.url()}`);
    });
    await openApp(page, url);
    for (const err of startupErrors) console.log(`note: the frontend logged at startup (before any workflow): ${err}`);

    if (!args.check) {
      mkdirSync(join(REPO, 'workflows', 'api'), { recursive: true });
      mkdirSync(join(REPO, 'docs', 'screenshots'), { recursive: true });
    }
    for (const name of selected) {
      const file = JSON.parse(readFileSync(join(REPO, 'workflows', `${name}.json`), 'utf8'));
      // What the template browser fetches when a user picks the template.
      const served = await (await fetch(`${url}/api/workflow_templates/${PACK}/${name}.json`)).json();
      if (!isDeepStrictEqual(served, file)) problems.push(`${name}: the served template is not workflows/${name}.json`);

      current = name;
      await page.setViewportSize({ width: 1600, height: 900 });
      const loaded = await loadWorkflow(page, served, name);
      if (loaded.missing.length) problems.push(`${name}: missing node types ${loaded.missing.join(', ')}`);
      for (const d of loaded.dialogs) problems.push(`${name}: dialog after loading: ${d}`);
      for (const t of loaded.toasts) problems.push(`${name}: toast after loading: ${t}`);
      compareWithFile(name, file, loaded.graph, problems, notes);
      overlaps(name, loaded.graph, problems);

      if (args.opened) {
        mkdirSync(args.opened, { recursive: true });
        await settle(page);
        await page.screenshot({ path: join(args.opened, `${name}.png`) });
      }
      await focusMode(page);
      const whole = await showWholeGraph(page);
      for (const c of whole.cramped) problems.push(`${name}: Note ${c}`);

      // The graph as the frontend saves it, and the API format from its own graphToPrompt().
      const outputs = [[join(REPO, 'workflows', `${name}.json`), savedGraph(loaded.graph, whole.bounds), 'saves'],
        [join(REPO, 'workflows', 'api', `${name}.json`), loaded.output, 'makes with graphToPrompt()']];
      for (const [path, data, how] of outputs) {
        const text = `${JSON.stringify(data, null, 2)}\n`;
        if (args.check) {
          let old = null;
          try { old = readFileSync(path, 'utf8'); } catch { /* missing */ }
          if (old !== text) problems.push(`${path.slice(REPO.length + 1)} is not what the frontend ${how}`);
        } else {
          writeFileSync(path, text);
        }
      }

      const summary = `${name}: ${loaded.graph.nodes.length} nodes, ${Object.keys(loaded.output).length} in the API prompt`;
      if (args.check) {
        console.log(summary);
      } else {
        const pictures = await takePictures(page, whole);
        console.log(`${summary}; screenshot ${whole.width}x${whole.height} at zoom 1 (` +
          `${(pictures.readme.length / 1024).toFixed(0)} KB), thumbnail ${(pictures.thumb.length / 1024).toFixed(0)} KB`);
        writeFileSync(join(REPO, 'docs', 'screenshots', `${name}.jpg`), pictures.readme);
        writeFileSync(join(REPO, 'workflows', `${name}.jpg`), pictures.thumb);
      }
      await focusMode(page); // menus back for the next workflow's first view
    }
    current = null;
    await checkTemplateListing(url, names, problems, { thumbnails: true });
  } finally {
    if (browser) await browser.close();
    if (server) {
      server.proc.kill('SIGTERM');
      await Promise.race([new Promise((ok) => server.proc.once('exit', ok)), sleep(20000)]);
      if (server.proc.exitCode === null) server.proc.kill('SIGKILL');
    }
    if (!args.keep) rmSync(base, { recursive: true, force: true });
    else console.log(`kept ${base}`);
  }
  for (const n of notes) console.log(`note: ${n}`);
  if (problems.length) {
    console.log(`\n${problems.length} problem(s):`);
    for (const p of problems) console.log(`- ${p}`);
    process.exit(1);
  }
  console.log('all workflows load cleanly');
}

main().catch((err) => {
  console.error(err.stack || String(err));
  process.exit(2);
});
