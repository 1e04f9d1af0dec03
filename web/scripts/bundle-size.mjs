// Prints the gzipped size of the JavaScript the built index.html loads on first load
// (its module scripts and their static imports), and fails above the budget.
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const BUDGET_BYTES = 300 * 1024;
const dist = resolve(dirname(fileURLToPath(import.meta.url)), "../dist");
const html = readFileSync(resolve(dist, "index.html"), "utf8");
if (/<script(?![^>]*\bsrc=)[^>]*>/.test(html) || /<style[\s>]/.test(html)) {
  console.error("dist/index.html has an inline script or style element: the CSP refuses it");
  process.exit(1);
}
const seen = new Set();
const pending = [...html.matchAll(/<(?:script|link)[^>]+(?:src|href)="\/?(assets\/[^"]+\.js)"/g)].map((m) => m[1]);
let gzipped = 0;
let raw = 0;
while (pending.length) {
  const file = pending.pop();
  if (seen.has(file)) continue;
  seen.add(file);
  const code = readFileSync(resolve(dist, file));
  raw += code.length;
  gzipped += gzipSync(code, { level: 9 }).length;
  // Static imports between chunks load at once too; dynamic import() ones do not.
  for (const m of code.toString().matchAll(/(?:^|[;\n}])\s*import\s*(?:[\w*{},\s$]+from\s*)?["']\.\/([^"']+\.js)["']/g)) {
    pending.push(`assets/${m[1]}`);
  }
}
const kb = (n) => (n / 1024).toFixed(1);
console.log(`first-load JavaScript: ${kb(gzipped)} KB gzipped (${kb(raw)} KB raw, ${seen.size} file(s)); budget ${kb(BUDGET_BYTES)} KB`);
if (gzipped > BUDGET_BYTES) process.exit(1);
