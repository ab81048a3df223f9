// End-to-end test of the packaged extension in code-server, driven by headless Chromium: results panel, paging, status bar, settings, discovery error.
//
//   CODE_SERVER=/path/to/node_modules/.bin/code-server node e2e/codeserver.mjs sqlrs-0.1.0.vsix
//
// Uses e2e/fake-server.js as sqlrs-lsp, so it checks the extension's side of the protocol only.
import { spawn, execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const vsix = path.resolve(process.argv[2] ?? "");
const codeServer = process.env.CODE_SERVER;
const browser = process.env.CHROMIUM ?? "/usr/bin/chromium";

function fail(message) {
  console.error(`codeserver.mjs: ${message}`);
  process.exit(1);
}

if (!process.argv[2] || !fs.existsSync(vsix)) fail(`usage: node e2e/codeserver.mjs PATH.vsix (build it with npm run package); got "${process.argv[2] ?? ""}"`);
if (!codeServer || !fs.existsSync(codeServer))
  fail("set CODE_SERVER to a code-server 4.100.3 binary (packaging/ci/vscode.sh --e2e installs it)");
if (!fs.existsSync(browser)) fail(`no Chromium at ${browser}: install it (Debian: apt-get install -y chromium) or set CHROMIUM`);

const root = fs.mkdtempSync(path.join(os.tmpdir(), "sqlrs-vscode-e2e-"));
const dirs = { data: path.join(root, "data"), ext: path.join(root, "ext"), ws: path.join(root, "ws") };
for (const d of Object.values(dirs)) fs.mkdirSync(d, { recursive: true });
fs.mkdirSync(path.join(dirs.ws, ".sqlrs"));
fs.writeFileSync(path.join(dirs.ws, "q.sql"), "select n from generate_series(1, 1000) n;\n");
fs.writeFileSync(path.join(dirs.ws, "s.sql"), "select pg_sleep(600);\n");
const serverLog = path.join(root, "server.log");
const settingsFile = path.join(dirs.data, "User", "settings.json");
fs.mkdirSync(path.dirname(settingsFile), { recursive: true });
function writeSettings(settings) {
  fs.writeFileSync(settingsFile, JSON.stringify({ "workbench.startupEditor": "none", "security.workspace.trust.enabled": false, ...settings }, null, 2));
}
writeSettings({ "sqlrs.serverPath": path.join(here, "fake-server.js"), "sqlrs.defaultAlias": "db", "sqlrs.rowLimit": 250 });

function writeWorkspaceSettings(settings) {
  fs.mkdirSync(path.join(dirs.ws, ".vscode"), { recursive: true });
  const file = path.join(dirs.ws, ".vscode", "settings.json");
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(settings, null, 2));
  fs.renameSync(`${file}.tmp`, file);
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitFor(what, check, timeoutMs = 60000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

function serverMessages(method) {
  if (!fs.existsSync(serverLog)) return [];
  return fs.readFileSync(serverLog, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l)).filter((m) => m.method === method);
}

const common = ["--user-data-dir", dirs.data, "--extensions-dir", dirs.ext, "--config", path.join(root, "config.yaml")];
execFileSync(codeServer, [...common, "--install-extension", vsix], { stdio: "inherit" });

const port = await freePort();
const server = spawn(codeServer, [...common, "--auth", "none", "--bind-addr", `127.0.0.1:${port}`, "--disable-telemetry", "--disable-workspace-trust", dirs.ws], {
  env: { ...process.env, SQLRS_FAKE_LOG: serverLog },
  stdio: ["ignore", "pipe", "pipe"],
});
let serverOutput = "";
server.stdout.on("data", (d) => (serverOutput += d));
server.stderr.on("data", (d) => (serverOutput += d));

const chrome = await chromium.launch({
  executablePath: browser,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
let page;
let cleanUp = false;
try {
  await waitFor("code-server to listen", async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => null))?.ok);
  page = await chrome.newPage({ viewport: { width: 1400, height: 900 } });
  await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(dirs.ws)}`);
  await page.waitForSelector(".monaco-workbench", { timeout: 60000 });

  // Settings reach the server as initializationOptions.
  const init = await waitFor("initialize", () => serverMessages("initialize")[0]);
  assert.deepEqual(init.params.initializationOptions, { defaultAlias: "db", rowLimit: 250 });

  // The status bar shows the worst file status.
  const status = page.locator(".statusbar-item", { hasText: "sqlrs: failed" });
  await status.first().waitFor({ timeout: 60000 });

  async function openAndRun(file) {
    await page.locator(".explorer-folders-view .monaco-list-row", { hasText: file }).first().click();
    const lens = page.locator(".codelens-decoration a", { hasText: "Run" });
    await page.locator(".tab.active", { hasText: file }).waitFor({ timeout: 60000 });
    await lens.first().waitFor({ timeout: 60000 });
    await lens.first().click();
  }

  // Open q.sql, click its Run lens: the results view shows SQL, header, rows, NULL, truncation note.
  await openAndRun("q.sql");
  // The view's document is replaced on every render: look its frame up again each time.
  const resultsText = async () => {
    for (const f of page.frames()) {
      if (await f.locator("pre.sql").count().catch(() => 0)) return f.locator("body").innerText().catch(() => undefined);
    }
    return undefined;
  };
  const resultsFrame = () =>
    waitFor("the results webview", async () => {
      for (const f of page.frames()) {
        if (await f.locator("pre.sql").count().catch(() => 0)) return f;
      }
      return undefined;
    });
  const frame = await resultsFrame();
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
  await waitFor("page 2", async () => (await resultsText())?.includes("rows 101–200 of 250"));

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
  await waitFor("the cancellation error", async () => (await resultsText())?.includes("ERROR 57014: canceling statement due to user request"));
  const cancels = serverMessages("sqlrs/cancel").map((m) => m.params);
  assert.deepEqual(cancels, [{ runId: serverMessages("sqlrs/execute")[1].params.runId }]);

  // A changed setting (here a workspace setting) is sent as didChangeConfiguration.
  writeWorkspaceSettings({ "sqlrs.defaultAlias": "other" });
  const change = await waitFor("didChangeConfiguration", () => serverMessages("workspace/didChangeConfiguration").at(-1));
  assert.deepEqual(change.params, { settings: { sqlrs: { defaultAlias: "other", rowLimit: 250 } } });

  // A wrong server path restarts the client and says what to do.
  writeWorkspaceSettings({ "sqlrs.defaultAlias": "other", "sqlrs.serverPath": "/nowhere/sqlrs-lsp" });
  await page.locator(".notification-toast", { hasText: "no executable file is there" }).first().waitFor({ timeout: 60000 });
  console.log("codeserver.mjs: ok");
  cleanUp = true;
} catch (error) {
  if (page) await page.screenshot({ path: path.join(root, "failure.png") }).catch(() => {});
  console.error(`codeserver.mjs: ${error.stack ?? error}\nscreenshot and logs in ${root}\ncode-server output:\n${serverOutput.slice(-4000)}`);
  process.exitCode = 1;
} finally {
  await chrome.close();
  server.kill();
  if (cleanUp) fs.rmSync(root, { recursive: true, force: true });
}
