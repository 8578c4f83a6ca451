// Validate one GLB with the Khronos glTF validator; print its issue summary as JSON.
//
// Usage: node tests/gltf_validate.mjs path/to/file.glb
// Needs `npm install --no-save --prefix tests/.node gltf-validator` (resolved from tests/.node).
// Prints {"numErrors", "numWarnings", "numInfos", "numHints", "messages": [...]} and exits 0
// when a report was produced; exits 2 (message on stderr) when it could not validate at all.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, ".node", "package.json"));

function fail(message) {
  console.error(`gltf_validate: ${message}`);
  process.exit(2);
}

const file = process.argv[2];
if (!file) fail("usage: node tests/gltf_validate.mjs FILE.glb");

let validator;
try {
  validator = require("gltf-validator");
} catch (err) {
  fail(`gltf-validator is not installed in ${path.join(here, ".node")} ` +
       `(npm install --no-save --prefix tests/.node gltf-validator): ${err.message}`);
}

let bytes;
try {
  bytes = new Uint8Array(readFileSync(file));
} catch (err) {
  fail(`cannot read ${file}: ${err.message}`);
}

try {
  const report = await validator.validateBytes(bytes, { uri: path.basename(file), maxIssues: 0 });
  const { numErrors, numWarnings, numInfos, numHints, messages, truncated } = report.issues;
  console.log(JSON.stringify({ numErrors, numWarnings, numInfos, numHints, truncated, messages }, null, 2));
} catch (err) {
  // A rejected promise means the validator could not even detect or parse the format.
  fail(`validator rejected ${file}: ${err}`);
}
