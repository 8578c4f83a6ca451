// ComboVerse Boxes: draw the objects' boxes on the picture, right in the graph, and name them.
//
// Plain JavaScript against the ComfyUI frontend's public extension API (app.registerExtension,
// node.addDOMWidget, api events); no build step. The editor sits on every "ComboVerse Boxes" node:
//
//   drag on the picture      draw a box            drag a box           move it
//   drag a box's corner      resize it             Delete / Backspace   remove the selected box
//   the list under it        type each object's phrase, or remove a box with its x
//
// Every change is written to the node's "boxes" widget as JSON
// [{"x", "y", "width", "height", "label"}, ...] in pixels of the picture (what nodes/boxes.py
// reads), so the workflow saves and queues the boxes like any widget value. The picture comes
// from the node connected to "image": a Load Image's file, or any node's preview image. After a
// run, the masks ComboVerse Segment found (its UI output) are drawn under the boxes.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE = "ComboVerseBoxes";
const SEGMENT = "ComboVerseSegment";
// Object colours, as nodes/host.py OBJECT_COLOURS paints the masks.
const COLOURS = ["#e64d3d", "#3399db", "#2ecc70", "#f2c40f", "#9b59b5", "#e67e22", "#1abc9c", "#ed70b0"];
const HANDLE = 7; // screen pixels around a corner that grab it
const MIN_SIZE = 3; // image pixels: smaller drags are clicks, not boxes

function parseBoxes(text) {
  try {
    const value = JSON.parse(text || "[]");
    const list = Array.isArray(value) && value.length && Array.isArray(value[0]) ? value[0] : value;
    return (Array.isArray(list) ? list : [])
      .filter((b) => b && typeof b === "object" && ["x", "y", "width", "height"].every((k) => Number.isFinite(+b[k])))
      .map((b) => ({ x: +b.x, y: +b.y, width: +b.width, height: +b.height, label: String(b.label ?? "") }));
  } catch {
    return null; // text being typed by hand: keep the last good boxes
  }
}

function round(v) {
  return Math.round(v * 10) / 10;
}

function inputPictureURL(node) {
  const slot = node.inputs?.findIndex((i) => i.name === "image");
  if (slot == null || slot < 0 || node.inputs[slot].link == null) return null;
  const source = node.getInputNode(slot);
  if (!source) return null;
  const widget = source.widgets?.find((w) => w.name === "image" && typeof w.value === "string" && w.value);
  if (widget) {
    let name = widget.value.replace(/\s*\[(input|output|temp)\]$/, "");
    const type = (widget.value.match(/\[(input|output|temp)\]$/) || [null, "input"])[1];
    let subfolder = "";
    const cut = name.lastIndexOf("/");
    if (cut >= 0) {
      subfolder = name.slice(0, cut);
      name = name.slice(cut + 1);
    }
    return api.apiURL(`/view?filename=${encodeURIComponent(name)}&type=${type}&subfolder=${encodeURIComponent(subfolder)}`);
  }
  return source.imgs?.[0]?.src ?? null;
}

class BoxEditor {
  constructor(node) {
    this.node = node;
    this.boxes = [];
    this.selected = -1;
    this.drag = null;
    this.picture = null; // HTMLImageElement of the input picture
    this.pictureURL = null;
    this.overlay = null; // Segment's masks over the picture, after a run
    this.lastText = null;

    this.root = document.createElement("div");
    this.root.className = "comboverse-boxes";
    this.root.tabIndex = 0;
    Object.assign(this.root.style, { display: "flex", flexDirection: "column", gap: "4px", outline: "none",
      width: "100%", height: "100%", boxSizing: "border-box" });
    this.canvas = document.createElement("canvas");
    Object.assign(this.canvas.style, { alignSelf: "center", cursor: "crosshair", background: "#222",
      borderRadius: "4px", touchAction: "none", flex: "none" });
    this.hint = document.createElement("div");
    Object.assign(this.hint.style, { fontSize: "11px", opacity: "0.7", whiteSpace: "nowrap", overflow: "hidden",
      textOverflow: "ellipsis", flex: "none" });
    this.list = document.createElement("div");
    Object.assign(this.list.style, { display: "flex", flexDirection: "column", gap: "2px", overflowY: "auto",
      flex: "none", height: "84px" }); // fixed: the picture keeps its size while boxes come and go
    this.root.append(this.canvas, this.hint, this.list);

    this.canvas.addEventListener("pointerdown", (e) => this.onDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onUp(e));
    // Delete / Backspace remove the selected box while the editor is the last thing clicked. The
    // listener runs in the capture phase, before the graph's own handler would delete the node.
    this.active = false;
    this.onDocumentPointer = (e) => { this.active = this.root.contains(e.target); };
    this.onDocumentKey = (e) => {
      const typing = /^(INPUT|TEXTAREA)$/.test(document.activeElement?.tagName ?? "");
      if (!this.active || typing || this.selected < 0 || !(e.key === "Delete" || e.key === "Backspace")) return;
      this.remove(this.selected);
      e.preventDefault();
      e.stopImmediatePropagation();
    };
    document.addEventListener("pointerdown", this.onDocumentPointer, true);
    document.addEventListener("keydown", this.onDocumentKey, true);
    // The graph canvas must not pan or select while the editor is used.
    for (const kind of ["pointerdown", "mousedown", "wheel", "contextmenu"]) {
      this.root.addEventListener(kind, (e) => e.stopPropagation());
    }
  }

  dispose() {
    document.removeEventListener("pointerdown", this.onDocumentPointer, true);
    document.removeEventListener("keydown", this.onDocumentKey, true);
  }

  widget() {
    return this.node.widgets?.find((w) => w.name === "boxes");
  }

  // Keep the editor in step with the widget (typed by hand, loaded from a workflow) and the picture.
  sync() {
    const w = this.widget();
    const text = w ? String(w.value ?? "") : "[]";
    if (text !== this.lastText) {
      const parsed = parseBoxes(text);
      this.lastText = text;
      if (parsed) {
        this.boxes = parsed;
        this.selected = Math.min(this.selected, this.boxes.length - 1);
        this.rebuildList();
        this.draw();
      }
    }
    const size = `${this.root.clientWidth}x${this.root.clientHeight}`;
    if (size !== this.lastSize) {
      this.lastSize = size; // the node was resized: fit the picture again
      this.draw();
    }
    const url = inputPictureURL(this.node);
    if (url !== this.pictureURL) {
      this.pictureURL = url;
      this.overlay = null;
      this.picture = null;
      if (url) {
        const img = new Image();
        img.onload = () => {
          if (this.pictureURL === url) {
            this.picture = img;
            this.draw();
          }
        };
        img.src = url;
      }
      this.draw();
    }
  }

  commit() {
    const text = JSON.stringify(this.boxes.map((b) => ({ x: round(b.x), y: round(b.y), width: round(b.width),
      height: round(b.height), label: b.label })));
    const w = this.widget();
    if (w) {
      w.value = text;
      w.callback?.(text);
    }
    this.lastText = w ? String(w.value) : text;
    this.overlay = null; // the masks were found for other boxes
    this.node.setDirtyCanvas?.(true, true);
  }

  setOverlay(url) {
    const img = new Image();
    img.onload = () => {
      this.overlay = img;
      this.draw();
    };
    img.src = url;
  }

  scale() {
    return this.picture ? this.canvas.width / this.picture.naturalWidth : 1;
  }

  toImage(e) {
    const r = this.canvas.getBoundingClientRect();
    const s = this.scale() * (r.width / this.canvas.width);
    return { x: (e.clientX - r.left) / s, y: (e.clientY - r.top) / s, s };
  }

  hit(p) {
    const grab = HANDLE / p.s;
    for (let i = this.boxes.length - 1; i >= 0; i--) {
      const b = this.boxes[i];
      const corners = [[b.x, b.y], [b.x + b.width, b.y], [b.x, b.y + b.height], [b.x + b.width, b.y + b.height]];
      const c = corners.findIndex(([cx, cy]) => Math.abs(p.x - cx) <= grab && Math.abs(p.y - cy) <= grab);
      if (c >= 0) {
        const [ox, oy] = corners[3 - c]; // the opposite corner stays put
        return { kind: "resize", index: i, ox, oy };
      }
    }
    for (let i = this.boxes.length - 1; i >= 0; i--) {
      const b = this.boxes[i];
      if (p.x >= b.x && p.x <= b.x + b.width && p.y >= b.y && p.y <= b.y + b.height) {
        return { kind: "move", index: i, dx: p.x - b.x, dy: p.y - b.y };
      }
    }
    return null;
  }

  clampPoint(p) {
    const w = this.picture.naturalWidth;
    const h = this.picture.naturalHeight;
    return { x: Math.min(Math.max(p.x, 0), w), y: Math.min(Math.max(p.y, 0), h) };
  }

  onDown(e) {
    if (!this.picture || e.button !== 0) return;
    const p = this.toImage(e);
    const hit = this.hit(p);
    if (hit) {
      this.selected = hit.index;
      this.drag = hit;
    } else {
      const q = this.clampPoint(p);
      this.boxes.push({ x: q.x, y: q.y, width: 0, height: 0, label: "" });
      this.selected = this.boxes.length - 1;
      this.drag = { kind: "resize", index: this.selected, ox: q.x, oy: q.y, created: true };
    }
    this.canvas.setPointerCapture(e.pointerId);
    this.draw();
  }

  onMove(e) {
    if (!this.drag) {
      if (this.picture) {
        const hit = this.hit(this.toImage(e));
        this.canvas.style.cursor = !hit ? "crosshair" : hit.kind === "move" ? "move" : "nwse-resize";
      }
      return;
    }
    const p = this.clampPoint(this.toImage(e));
    const b = this.boxes[this.drag.index];
    if (this.drag.kind === "move") {
      b.x = Math.min(Math.max(p.x - this.drag.dx, 0), this.picture.naturalWidth - b.width);
      b.y = Math.min(Math.max(p.y - this.drag.dy, 0), this.picture.naturalHeight - b.height);
    } else {
      b.x = Math.min(p.x, this.drag.ox);
      b.y = Math.min(p.y, this.drag.oy);
      b.width = Math.abs(p.x - this.drag.ox);
      b.height = Math.abs(p.y - this.drag.oy);
    }
    this.draw();
  }

  onUp(e) {
    if (!this.drag) return;
    const b = this.boxes[this.drag.index];
    if (this.drag.created && (b.width < MIN_SIZE || b.height < MIN_SIZE)) {
      this.boxes.splice(this.drag.index, 1); // a click on empty picture: deselect
      this.selected = -1;
    }
    this.drag = null;
    this.canvas.releasePointerCapture?.(e.pointerId);
    this.commit();
    this.rebuildList();
    this.draw();
  }

  remove(index) {
    this.boxes.splice(index, 1);
    this.selected = -1;
    this.commit();
    this.rebuildList();
    this.draw();
  }

  rebuildList() {
    this.list.replaceChildren();
    this.boxes.forEach((b, i) => {
      const row = document.createElement("div");
      Object.assign(row.style, { display: "flex", alignItems: "center", gap: "4px" });
      const tag = document.createElement("span");
      tag.textContent = String(i + 1);
      Object.assign(tag.style, { background: COLOURS[i % COLOURS.length], color: "#000", borderRadius: "3px",
        padding: "0 5px", fontSize: "11px", fontWeight: "bold" });
      const phrase = document.createElement("input");
      phrase.type = "text";
      phrase.placeholder = `phrase of object ${i + 1}, e.g. a teddy bear`;
      phrase.value = b.label;
      phrase.className = "comboverse-phrase";
      Object.assign(phrase.style, { flex: "1", minWidth: "0", fontSize: "12px" });
      phrase.addEventListener("input", () => {
        b.label = phrase.value;
        this.commit();
        this.draw();
      });
      phrase.addEventListener("focus", () => {
        this.selected = i;
        this.draw();
      });
      const del = document.createElement("button");
      del.textContent = "\u00d7";
      del.title = `remove box ${i + 1}`;
      del.addEventListener("click", () => this.remove(i));
      row.append(tag, phrase, del);
      this.list.append(row);
    });
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    // The picture fits the space the node gives the editor, less the hint and the phrase list.
    const room = Math.max(64, (this.root.clientWidth || 320) - 2);
    const tall = Math.max(80, (this.root.clientHeight || 300) - this.hint.offsetHeight - this.list.offsetHeight - 10);
    const aspect = this.picture ? this.picture.naturalHeight / this.picture.naturalWidth : 0.6;
    const width = Math.round(Math.min(room, tall / aspect));
    this.canvas.style.width = `${width}px`;
    this.canvas.style.height = `${Math.round(width * aspect)}px`;
    if (!this.picture) {
      this.canvas.width = width;
      this.canvas.height = Math.round(width * aspect);
      ctx.fillStyle = "#222";
      ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
      ctx.fillStyle = "#aaa";
      ctx.font = "13px sans-serif";
      ctx.fillText("connect a picture to 'image'", 12, 24);
      this.updateHint();
      return;
    }
    this.canvas.width = width;
    this.canvas.height = Math.round(width * aspect);
    const s = this.scale();
    ctx.drawImage(this.overlay ?? this.picture, 0, 0, this.canvas.width, this.canvas.height);
    ctx.font = "bold 12px sans-serif";
    this.boxes.forEach((b, i) => {
      const colour = COLOURS[i % COLOURS.length];
      ctx.lineWidth = i === this.selected ? 3 : 2;
      ctx.strokeStyle = colour;
      ctx.strokeRect(b.x * s, b.y * s, b.width * s, b.height * s);
      if (i === this.selected) {
        ctx.fillStyle = colour;
        for (const [cx, cy] of [[b.x, b.y], [b.x + b.width, b.y], [b.x, b.y + b.height], [b.x + b.width, b.y + b.height]]) {
          ctx.fillRect(cx * s - 4, cy * s - 4, 8, 8);
        }
      }
      const text = `${i + 1}${b.label ? " " + b.label : ""}`;
      const tw = ctx.measureText(text).width + 8;
      ctx.fillStyle = colour;
      ctx.fillRect(b.x * s, Math.max(0, b.y * s - 16), tw, 16);
      ctx.fillStyle = "#000";
      ctx.fillText(text, b.x * s + 4, Math.max(12, b.y * s - 4));
    });
    this.updateHint();
  }

  updateHint() {
    this.hint.textContent = !this.picture
      ? "Connect a picture (Load Image) to 'image'."
      : this.boxes.length
        ? "Drag to draw more boxes; drag a box to move it, its corner to resize; Delete removes the selected one."
        : "Drag on the picture to draw one box per object.";
  }
}

function findBoxesNode(segment) {
  const slot = segment.inputs?.findIndex((i) => i.name === "boxes");
  if (slot == null || slot < 0 || segment.inputs[slot].link == null) return null;
  const source = segment.getInputNode(slot);
  return source?.comfyClass === NODE ? source : null;
}

app.registerExtension({
  name: "ComboVerse.BoxEditor",

  async setup() {
    // After a run, Segment's masks (its UI output) are drawn on the box editor that feeds it.
    api.addEventListener("executed", ({ detail }) => {
      const images = detail?.output?.images;
      if (!images?.length) return;
      const id = String(detail.node).split(":").pop();
      const segment = app.graph?.getNodeById(id);
      if (segment?.comfyClass !== SEGMENT) return;
      const editor = findBoxesNode(segment)?.comboverseBoxEditor;
      if (!editor) return;
      const { filename, subfolder, type } = images[0];
      editor.setOverlay(api.apiURL(`/view?filename=${encodeURIComponent(filename)}&type=${type}` +
        `&subfolder=${encodeURIComponent(subfolder ?? "")}&t=${Date.now()}`));
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      const editor = new BoxEditor(this);
      this.comboverseBoxEditor = editor;
      const widget = this.addDOMWidget("box_editor", "comboverse_box_editor", editor.root, {
        serialize: false, // the boxes live in the "boxes" widget; this one only shows them
        hideOnZoom: false,
        getMinHeight: () => 240,
      });
      widget.serialize = false;
      this.setSize([Math.max(this.size[0], 420), Math.max(this.size[1], 520)]);
      editor.sync();
      return r;
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function () {
      onDrawForeground?.apply(this, arguments);
      this.comboverseBoxEditor?.sync();
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      onRemoved?.apply(this, arguments);
      this.comboverseBoxEditor?.dispose();
    };
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      onConnectionsChange?.apply(this, arguments);
      this.comboverseBoxEditor?.sync();
    };
  },
});
