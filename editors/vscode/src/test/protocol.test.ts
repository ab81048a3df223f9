// Checks that every sqlrs method, notification and command named in docs/lsp-extensions.md is exported by protocol.ts.
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import * as protocol from "../protocol";

const DOC = path.resolve(__dirname, "../../../../docs/lsp-extensions.md");

test("every sqlrs name of the LSP extensions doc is exported", () => {
  assert.ok(fs.existsSync(DOC), `${DOC} is missing: run the tests from the sqlrs source tree`);
  const doc = fs.readFileSync(DOC, "utf8");
  const names = new Set([...doc.matchAll(/`(sqlrs[./][A-Za-z]+|source\.sqlrs\.[A-Za-z]+)`/g)].map((m) => m[1]));
  for (const required of ["sqlrs/execute", "sqlrs/results", "sqlrs/cancel", "sqlrs/fileStatus", "sqlrs.runStatement"]) {
    assert.ok(names.has(required), `the doc no longer names ${required}`);
  }
  const exported = new Set<unknown>(Object.values(protocol));
  const missing = [...names].filter((n) => !exported.has(n));
  assert.deepEqual(missing, [], "names in the doc without a constant in src/protocol.ts");
});
