// End-to-end test of the packaged extension in code-server against a stand-in server: the requests' exact parameters, settings propagation, paging, cancellation, discovery error.
//
//   CODE_SERVER=/path/to/node_modules/.bin/code-server node e2e/fake.mjs sqlrs-0.1.0.vsix
//
// Uses e2e/fake-server.js as sqlrs-lsp, which logs every message it receives: this checks what the
// extension sends (initializationOptions, didChangeConfiguration, run ids of execute and cancel),
// which the real server's behaviour does not show. e2e/real.mjs covers the real server.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { findResultsFrame, inputs, lenses, openFile, openWorkbench, resultsText, waitFor, writeUserSettings, writeWorkspaceSettings } from "./harness.mjs";

const SCRIPT = "fake.mjs";
const here = path.dirname(fileURLToPath(import.meta.url));
const { vsix, codeServer, browser } = inputs(SCRIPT);

const root = fs.mkdtempSync(path.join(os.tmpdir(), "sqlrs-vscode-fake-"));
const dirs = { root, data: path.join(root, "data"), ext: path.join(root, "ext"), ws: path.join(root, "ws") };
for (const d of Object.values(dirs)) fs.mkdirSync(d, { recursive: true });
fs.mkdirSync(path.join(dirs.ws, ".sqlrs"));
fs.writeFileSync(path.join(dirs.ws, "q.sql"), "select n from generate_series(1, 1000) n;\n");
fs.writeFileSync(path.join(dirs.ws, "s.sql"), "select pg_sleep(600);\n");
const serverLog = path.join(root, "server.log");
writeUserSettings(dirs.data, { "sqlrs.serverPath": path.join(here, "fake-server.js"), "sqlrs.defaultAlias": "db", "sqlrs.rowLimit": 250 });

function serverMessages(method) {
  if (!fs.existsSync(serverLog)) return [];
  return fs.readFileSync(serverLog, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l)).filter((m) => m.method === method);
}

let workbench;
let cleanUp = false;
try {
  workbench = await openWorkbench({ codeServer, browser, vsix, dirs, env: { SQLRS_FAKE_LOG: serverLog } });
  const { page } = workbench;

  // Settings reach the server as initializationOptions.
  const init = await waitFor("initialize", () => serverMessages("initialize")[0]);
  assert.deepEqual(init.params.initializationOptions, { defaultAlias: "db", rowLimit: 250 });

  // The status bar shows the worst file status.
  await page.locator(".statusbar-item", { hasText: "sqlrs: failed" }).first().waitFor({ timeout: 60000 });

  async function openAndRun(file) {
    await openFile(page, file);
    const lens = lenses(page, "Run");
    await lens.first().waitFor({ timeout: 60000 });
    await lens.first().click();
  }

  // Open q.sql, click its Run lens: the results view shows SQL, header, rows, NULL, truncation note.
  await openAndRun("q.sql");
  const frame = await waitFor("the results webview", () => findResultsFrame(page));
  const text = await frame.locator("body").innerText();
  for (const part of ["select n, '<b>' || n || '</b>'", "alias db", "9f3e7750aabb", "3.2 ms", "SELECT 1000", "rows 1–100 of 250", "Showing the first 250 of 1000 rows", "NOTICE: fake notice", "<b>v1</b>"]) {
    assert.ok(text.includes(part), `results view lacks "${part}":\n${text}`);
  }
  assert.equal(await frame.locator("td.null").count(), 1, "one SQL NULL cell");
  const executed = serverMessages("sqlrs/execute").map((m) => m.params);
  assert.equal(executed.length, 1);
  assert.match(executed[0].runId, /^vscode-\d+-1$/);
  assert.deepEqual({ ...executed[0], runId: undefined }, { uri: `file://${dirs.ws}/q.sql`, line: 0, alias: "db", instanceName: null, runId: undefined });

  // Paging happens in place.
  await frame.locator("button", { hasText: "Next" }).click();
  await waitFor("page 2", async () => (await resultsText(page))?.includes("rows 101–200 of 250"));

  // A long statement shows as running and is cancelled from the view by its run id.
  await openAndRun("s.sql");
  const cancelButton = await waitFor("the running view", async () => {
    for (const f of page.frames()) {
      const button = f.locator("button", { hasText: "Cancel" });
      if (await button.count().catch(() => 0)) return button;
    }
    return undefined;
  });
  await cancelButton.click();
  await waitFor("the cancellation error", async () => (await resultsText(page))?.includes("ERROR 57014: canceling statement due to user request"));
  const cancels = serverMessages("sqlrs/cancel").map((m) => m.params);
  assert.deepEqual(cancels, [{ runId: serverMessages("sqlrs/execute")[1].params.runId }]);

  // A changed setting (here a workspace setting) is sent as didChangeConfiguration.
  writeWorkspaceSettings(dirs.ws, { "sqlrs.defaultAlias": "other" });
  const change = await waitFor("didChangeConfiguration", () => serverMessages("workspace/didChangeConfiguration").at(-1));
  assert.deepEqual(change.params, { settings: { sqlrs: { defaultAlias: "other", rowLimit: 250 } } });

  // A wrong server path restarts the client and says what to do.
  writeWorkspaceSettings(dirs.ws, { "sqlrs.defaultAlias": "other", "sqlrs.serverPath": "/nowhere/sqlrs-lsp" });
  await page.locator(".notification-toast", { hasText: "no executable file is there" }).first().waitFor({ timeout: 60000 });
  console.log(`${SCRIPT}: ok`);
  cleanUp = true;
} catch (error) {
  if (workbench) await workbench.page.screenshot({ path: path.join(root, "failure.png") }).catch(() => {});
  console.error(`${SCRIPT}: ${error.stack ?? error}\nscreenshot and logs in ${root}\ncode-server output:\n${workbench?.output().slice(-4000) ?? ""}`);
  process.exitCode = 1;
} finally {
  await workbench?.close();
  if (cleanUp) fs.rmSync(root, { recursive: true, force: true });
}
