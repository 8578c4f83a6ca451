// What the pack's browser tools share: how headless Chromium starts, and the frontend settings
// they run with (the frontend's defaults, except that nothing is drawn over the graph: no
// first-run template dialog, no minimap, zoom buttons or render statistics in the canvas's
// corners; how the graph itself is drawn is left at the defaults).

export const CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

export const SETTINGS = {
  'Comfy.TutorialCompleted': true,
  'Comfy.Minimap.Visible': false,
  'Comfy.Graph.CanvasMenu': false,
  'Comfy.Graph.CanvasInfo': false,
};

export const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
