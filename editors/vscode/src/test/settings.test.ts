// Tests of the settings forwarded to sqlrs-lsp: only set values, valid row limits, the didChangeConfiguration shape.
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { didChangeSettings, serverSettings } from "../settings";

test("server settings cases", () => {
  const cases: [Record<string, unknown>, object][] = [
    [{}, {}],
    [{ serverPath: "/x/sqlrs-lsp", defaultAlias: "", instanceName: "  ", sqlrsPath: "" }, {}],
    [{ defaultAlias: " db ", instanceName: "dev", rowLimit: 50, sqlrsPath: "/bin/sqlrs" }, { defaultAlias: "db", instanceName: "dev", rowLimit: 50, sqlrsPath: "/bin/sqlrs" }],
    [{ rowLimit: 0 }, {}],
    [{ rowLimit: 2.5 }, {}],
    [{ rowLimit: "100" }, {}],
  ];
  for (const [values, expected] of cases) {
    assert.deepEqual(serverSettings((key) => values[key]), expected, JSON.stringify(values));
  }
});

test("didChangeConfiguration carries the settings under settings.sqlrs", () => {
  const values: Record<string, unknown> = { defaultAlias: "db", rowLimit: 10 };
  assert.deepEqual(didChangeSettings((key) => values[key]), { settings: { sqlrs: { defaultAlias: "db", rowLimit: 10 } } });
});
