// Drives the ComboVerse Boxes editor in ComfyUI's real frontend (headless Chromium), as a user
// would: opens a graph Load Image -> ComboVerse Boxes -> Segment -> Lift3D -> InitPose ->
// ExportMesh, draws two boxes on the picture with the mouse, moves and resizes one, draws a third
// and deletes it, types two phrases, queues the prompt, waits for the run, and checks what came
// back: the widget's JSON, Segment's mask overlay in the editor, and the GLB (two nodes, named
// after the phrases, with their boxes in extras). Also drops that GLB on the canvas and checks
// that the frontend restores the workflow from it. Prints a JSON report; exit status 1 on failure.
//
// It needs a running ComfyUI (tests/test_box_editor_browser.py starts one with tiny models in
// the real formats and runs this), Debian's chromium and playwright-core from npm:
//
//   node tools/box_editor_check.mjs --url http://127.0.0.1:8188 --playwright /tmp/shots/node_modules \
//       [--chromium /usr/bin/chromium] [--output DIR] [--screenshot docs/screenshots/box_editor.jpg]
//
// --output is ComfyUI's output folder (to read the GLB); --screenshot writes the README picture.

import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';

import { CHROMIUM_FLAGS, SETTINGS, sleep } from './frontend_common.mjs';

function parseArgs(argv) {
  const args = { url: null, playwright: process.env.PLAYWRIGHT_CORE_DIR, chromium: '/usr/bin/chromium',
    output: null, screenshot: null };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (!(key in args) || i + 1 >= argv.length) throw new Error(`bad argument ${argv[i]}; see the top of this file`);
    args[key] = argv[i + 1];
  }
  if (!args.url || !args.playwright) throw new Error('--url and --playwright are required');
  return args;
}

// The graph under test, in API format (the frontend lays it out); small sizes keep it fast on a CPU.
const PROMPT = {
  1: { class_type: 'LoadImage', inputs: { image: 'example.png' } },
  2: { class_type: 'ComboVerseLoadSAM', inputs: { sam_name: 'sam_vit_h_4b8939.pth' } },
  3: { class_type: 'ComboVerseBoxes', inputs: { image: ['1', 0], boxes: '[]' } },
  4: { class_type: 'ComboVerseSegment', inputs: { negative_points: true, auto_objects: 3, crop_size: 64,
    foreground_ratio: 0.85, background: 'grey', boxes_text: '', points: '', phrases: '', image: ['1', 0],
    sam: ['2', 0], boxes: ['3', 0] } },
  5: { class_type: 'ComboVerseLoadLift3DModel', inputs: { ckpt_name: 'model.ckpt', precision: 'auto' } },
  6: { class_type: 'ComboVerseLift3D', inputs: { resolution: 32, density_threshold: 0.5, max_faces: 400,
    foreground_ratio: 0.85, vertex_colors: true, query_chunk: 262144, lift3d_model: ['5', 0], images: ['4', 0],
    masks: ['4', 1] } },
  7: { class_type: 'ComboVerseInitPose', inputs: { fov_deg: 40, elevation_deg: -15, depth_kind: 'disparity',
    meshes: ['6', 0], layout: ['4', 2], reference_image: ['1', 0] } },
  8: { class_type: 'ComboVerseExportMesh', inputs: { filename_prefix: 'comboverse/boxes', scene: ['7', 0] } },
};
const PHRASES = ['a pink cylinder', 'a brown sphere'];

function glbJson(path) {
  const data = readFileSync(path);
  const length = data.readUInt32LE(12);
  return JSON.parse(data.subarray(20, 20 + length).toString('utf8'));
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const { chromium } = createRequire(join(resolve(args.playwright), '..', 'noop.js'))('playwright-core');
  const browser = await chromium.launch({ executablePath: args.chromium, headless: true, args: CHROMIUM_FLAGS });
  const problems = [];
  const report = {};
  const check = (ok, what) => { if (!ok) problems.push(what); };
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 900 } });
    const errors = [];
    page.on('pageerror', (e) => { if (/comboverse/i.test(`${e.stack}`)) errors.push(`${e}\n${e.stack}`.slice(0, 1500)); });
    page.on('console', (m) => { if (m.type() === 'error' && /comboverse/i.test(m.text())) errors.push(m.text()); });
    // A fresh ComfyUI shows a first-run template dialog over the canvas: settle that first.
    for (const [id, value] of Object.entries(SETTINGS)) {
      await fetch(`${args.url}/settings/${encodeURIComponent(id)}`, { method: 'POST', body: JSON.stringify(value) });
    }
    await page.goto(args.url);
    await page.waitForFunction(() => window.app?.graph && window.app?.canvas && window.LiteGraph
      && 'ComboVerseBoxes' in window.LiteGraph.registered_node_types, null, { timeout: 180000 });
    report.frontend = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
    await page.evaluate(async (prompt) => {
      await window.app.loadApiJson(prompt, 'box editor');
    }, PROMPT);
    // Put the Boxes node at a known place and size, and the view at the frontend's default zoom.
    await page.evaluate(() => {
      const { app } = window;
      const node = app.graph.nodes.find((n) => n.comfyClass === 'ComboVerseBoxes');
      node.pos = [420, 60];
      node.setSize([520, 700]);
      const ds = app.canvas.ds;
      ds.scale = 1;
      ds.offset = [-300, 20];
      app.canvas.setDirty(true, true);
    });
    await page.waitForFunction(() => {
      const node = window.app.graph.nodes.find((n) => n.comfyClass === 'ComboVerseBoxes');
      return node?.comboverseBoxEditor?.picture?.complete;
    }, null, { timeout: 30000 });
    await sleep(500);
    const canvas = page.locator('.comboverse-boxes canvas');
    const box = await canvas.boundingBox();
    check(box && box.width > 100 && box.height > 100, `editor canvas visible: ${JSON.stringify(box)}`);
    const natural = await page.evaluate(() => {
      const e = window.app.graph.nodes.find((n) => n.comfyClass === 'ComboVerseBoxes').comboverseBoxEditor;
      return [e.picture.naturalWidth, e.picture.naturalHeight];
    });
    const s = box.width / natural[0];
    const at = (x, y) => [box.x + x * s, box.y + y * s]; // picture pixels -> screen
    const dragBetween = async (a, b) => {
      await page.mouse.move(...at(...a));
      await page.mouse.down();
      for (let k = 1; k <= 5; k++) {
        await page.mouse.move(...at(a[0] + ((b[0] - a[0]) * k) / 5, a[1] + ((b[1] - a[1]) * k) / 5));
      }
      await page.mouse.up();
    };
    // The tiny models' picture (96 px): a pink cylinder at about [19, 28, 54, 87], a brown
    // sphere at about [53, 30, 69, 61]. Draw the first box too small, then resize it by its corner.
    await dragBetween([19, 28], [45, 70]);
    await dragBetween([45, 70], [54, 87]); // bottom-right corner -> resize
    // The second box drawn off to the left, then moved onto the sphere.
    await dragBetween([2, 2], [18, 33]);
    await dragBetween([10, 17], [61, 45]); // drag from inside -> move by (51, 28)
    // A third box, selected and deleted with the Delete key.
    await dragBetween([70, 70], [90, 90]);
    await page.keyboard.press('Delete');
    if (process.env.BOX_DEBUG) await page.screenshot({ path: "/tmp/i15/debug.png" });
    const phrases = page.locator('.comboverse-boxes input.comboverse-phrase');
    check(await phrases.count() === 2, `two phrase fields, got ${await phrases.count()}`);
    for (let i = 0; i < PHRASES.length; i++) {
      await phrases.nth(i).click();
      await phrases.nth(i).type(PHRASES[i]);
    }
    const widget = await page.evaluate(() => JSON.parse(window.app.graph.nodes
      .find((n) => n.comfyClass === 'ComboVerseBoxes').widgets.find((w) => w.name === 'boxes').value));
    report.boxes = widget;
    check(widget.length === 2, `two boxes in the widget, got ${widget.length}`);
    const near = (a, b) => Math.abs(a - b) <= 1.5;
    if (widget.length === 2) {
      const [a, b] = widget;
      check(near(a.x, 19) && near(a.y, 28) && near(a.x + a.width, 54) && near(a.y + a.height, 87),
        `first box resized to [19, 28, 54, 87]: ${JSON.stringify(a)}`);
      check(near(b.x, 53) && near(b.y, 30) && near(b.x + b.width, 69) && near(b.y + b.height, 61),
        `second box moved to [53, 30, 69, 61]: ${JSON.stringify(b)}`);
      check(a.label === PHRASES[0] && b.label === PHRASES[1], `phrases typed: ${a.label}, ${b.label}`);
    }
    // The workflow saves the boxes in the widget, and the editor itself adds no widget value.
    const saved = await page.evaluate(() => window.app.graph.serialize().nodes
      .find((n) => n.type === 'ComboVerseBoxes').widgets_values);
    report.widgets_values = saved;
    check(saved.length === 1 && JSON.parse(saved[0]).length === 2, `widgets_values ${JSON.stringify(saved)}`);

    // Queue it as the Run button does, and wait for the history entry.
    const before = new Set(Object.keys(await (await fetch(`${args.url}/history`)).json()));
    await page.evaluate(() => {
      window.__executed = [];
      window.app.api.addEventListener('executed', ({ detail }) => window.__executed.push(detail));
    });
    await page.evaluate(() => window.app.queuePrompt(0, 1));
    let entry = null;
    let promptId = null;
    for (let t = 0; t < 300 && !entry; t++) {
      await sleep(1000);
      const history = await (await fetch(`${args.url}/history`)).json();
      promptId = Object.keys(history).find((k) => !before.has(k)) ?? null;
      const h = promptId ? history[promptId] : null;
      if (h && (h.status?.completed || h.status?.status_str === 'error')) entry = h;
    }
    check(entry?.status?.status_str === 'success', `run finished: ${JSON.stringify(entry?.status)?.slice(0, 2000)}`);
    report.prompt_id = promptId;
    await page.waitForFunction(() => window.app.graph.nodes.find((n) => n.comfyClass === 'ComboVerseBoxes')
      .comboverseBoxEditor.overlay, null, { timeout: 20000 }).catch(() => problems.push('no mask overlay in the editor'));
    await sleep(300);
    if (process.env.BOX_DEBUG) await page.screenshot({ path: "/tmp/i15/debug2.png" });
    if (process.env.BOX_DEBUG) report.executed = await page.evaluate(() => JSON.stringify(window.__executed));
    if (args.screenshot) {
      const node = await page.evaluate(() => {
        const { app } = window;
        const n = app.graph.nodes.find((m) => m.comfyClass === 'ComboVerseBoxes');
        const [x, y] = app.canvas.ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT]);
        return { x, y, width: n.size[0] * app.canvas.ds.scale, height: (n.size[1] + LiteGraph.NODE_TITLE_HEIGHT) * app.canvas.ds.scale };
      });
      const rect = await page.locator('canvas#graph-canvas').boundingBox();
      await page.screenshot({ path: args.screenshot, type: 'jpeg', quality: 88,
        clip: { x: rect.x + node.x - 12, y: rect.y + node.y - 12, width: node.width + 24, height: node.height + 24 } });
    }
    // The GLB: one node per phrase, in the boxes' order, with the boxes in extras.
    const shown = entry ? Object.values(entry.outputs ?? {}).flatMap((o) => o['3d'] ?? []) : [];
    check(shown.length === 1, `one GLB shown: ${JSON.stringify(shown)}`);
    if (shown.length === 1 && args.output) {
      const path = join(args.output, shown[0].subfolder, shown[0].filename);
      const gltf = glbJson(path);
      report.glb = { path, nodes: gltf.nodes.map((n) => ({ name: n.name, extras: n.extras })) };
      check(JSON.stringify(gltf.nodes.map((n) => n.extras.phrase)) === JSON.stringify(PHRASES),
        `GLB node phrases ${JSON.stringify(gltf.nodes.map((n) => n.extras.phrase))}`);
      check(gltf.nodes.map((n) => n.name).join() === PHRASES.map((p) => p.replaceAll(' ', '_')).join(),
        `GLB node names ${gltf.nodes.map((n) => n.name)}`);
      check(typeof gltf.asset.extras.workflow === 'string' && typeof gltf.asset.extras.prompt === 'string',
        'the GLB holds the workflow and the prompt');
      // Dropping the GLB on the canvas: the frontend's own file handler restores the workflow.
      await page.evaluate(() => window.app.graph.clear());
      const bytes = readFileSync(path).toString('base64');
      const restored = await page.evaluate(async ({ bytes, name }) => {
        const raw = Uint8Array.from(atob(bytes), (c) => c.charCodeAt(0));
        const file = new File([raw], name, { type: 'model/gltf-binary' });
        await window.app.handleFile(file);
        await new Promise((ok) => setTimeout(ok, 500));
        const node = window.app.graph.nodes.find((n) => n.comfyClass === 'ComboVerseBoxes');
        return { types: window.app.graph.nodes.map((n) => n.comfyClass).sort(),
          boxes: node?.widgets.find((w) => w.name === 'boxes').value ?? null };
      }, { bytes, name: shown[0].filename });
      report.restored = restored;
      check(restored.types.length === Object.keys(PROMPT).length && restored.types.includes('ComboVerseBoxes'),
        `workflow restored from the GLB: ${restored.types}`);
      check(restored.boxes && JSON.parse(restored.boxes).map((b) => b.label).join() === PHRASES.join(),
        `the restored workflow has the drawn boxes: ${restored.boxes}`);
    }
    check(errors.length === 0, `page errors: ${errors.join(' | ')}`);
  } finally {
    await browser.close();
  }
  report.problems = problems;
  console.log(JSON.stringify(report, null, 1));
  process.exit(problems.length ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(2);
});
