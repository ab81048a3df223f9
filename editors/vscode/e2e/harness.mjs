// Shared parts of the code-server end-to-end tests: argument checks, code-server with the packaged extension, headless Chromium, waits and workbench lookups.
import { spawn, execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { chromium } from "playwright-core";

/** Prints `message` prefixed with the script's name and exits with status 1. */
export function fail(script, message) {
  console.error(`${script}: ${message}`);
  process.exit(1);
}

/** The .vsix, code-server and Chromium paths from argv and the environment; exits with what to do when one is missing. */
export function inputs(script) {
  const vsix = path.resolve(process.argv[2] ?? "");
  const codeServer = process.env.CODE_SERVER;
  const browser = process.env.CHROMIUM ?? "/usr/bin/chromium";
  if (!process.argv[2] || !fs.existsSync(vsix))
    fail(script, `usage: node e2e/${script} PATH.vsix (build it with npm run package); got "${process.argv[2] ?? ""}"`);
  if (!codeServer || !fs.existsSync(codeServer))
    fail(script, "set CODE_SERVER to a code-server 4.100.3 binary (packaging/ci/vscode.sh --e2e installs it)");
  if (!fs.existsSync(browser)) fail(script, `no Chromium at ${browser}: install it (Debian: apt-get install -y chromium) or set CHROMIUM`);
  return { vsix, codeServer, browser };
}

/** Writes the user settings code-server starts with (no start-up editor, no workspace trust prompt). */
export function writeUserSettings(dataDir, settings) {
  const file = path.join(dataDir, "User", "settings.json");
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify({ "workbench.startupEditor": "none", "security.workspace.trust.enabled": false, ...settings }, null, 2));
}

/** Replaces `<ws>/.vscode/settings.json` atomically, so code-server never reads half a file. */
export function writeWorkspaceSettings(ws, settings) {
  fs.mkdirSync(path.join(ws, ".vscode"), { recursive: true });
  const file = path.join(ws, ".vscode", "settings.json");
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(settings, null, 2));
  fs.renameSync(`${file}.tmp`, file);
}

export function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Polls `check` every 250 ms until it returns a truthy value; throws naming `what` after `timeoutMs`. */
export async function waitFor(what, check, timeoutMs = 60000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * Installs `vsix` into a fresh code-server under `dirs` (data, ext, ws, root), starts it on a free port with
 * `env` added to its environment (`undefined` removes a variable; the extension host and the language server inherit it), opens the
 * workspace in headless Chromium and returns the page. `close()` ends Chromium and code-server's whole
 * process group.
 */
export async function openWorkbench({ codeServer, browser, vsix, dirs, env = {} }) {
  const common = ["--user-data-dir", dirs.data, "--extensions-dir", dirs.ext, "--config", path.join(dirs.root, "code-server.yaml")];
  execFileSync(codeServer, [...common, "--install-extension", vsix], { stdio: ["ignore", "inherit", "inherit"] });
  const port = await freePort();
  const serverEnv = { ...process.env };
  for (const [key, value] of Object.entries(env)) {
    if (value === undefined) delete serverEnv[key];
    else serverEnv[key] = value;
  }
  const server = spawn(
    codeServer,
    [...common, "--auth", "none", "--bind-addr", `127.0.0.1:${port}`, "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust", dirs.ws],
    { env: serverEnv, stdio: ["ignore", "pipe", "pipe"], detached: true },
  );
  let output = "";
  server.stdout.on("data", (d) => (output += d));
  server.stderr.on("data", (d) => (output += d));
  const exited = new Promise((resolve) => server.once("exit", resolve));
  const chrome = await chromium.launch({
    executablePath: browser,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  const close = async () => {
    await chrome.close().catch(() => {});
    if (server.exitCode === null && server.signalCode === null) {
      try {
        process.kill(-server.pid, "SIGTERM");
      } catch {
        // already gone
      }
      const timer = setTimeout(() => {
        try {
          process.kill(-server.pid, "SIGKILL");
        } catch {
          // already gone
        }
      }, 5000);
      await exited;
      clearTimeout(timer);
    }
  };
  try {
    await waitFor("code-server to listen", async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => null))?.ok);
    const page = await chrome.newPage({ viewport: { width: 1400, height: 900 } });
    await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(dirs.ws)}`);
    await page.waitForSelector(".monaco-workbench", { timeout: 60000 });
    return { page, close, output: () => output };
  } catch (error) {
    await close();
    throw error;
  }
}

/** Opens `file` from the explorer and waits until its editor tab is the active one. */
export async function openFile(page, file) {
  await page.locator(".explorer-folders-view .monaco-list-row", { hasText: file }).first().click();
  await page.locator(".tab.active", { hasText: file }).waitFor({ timeout: 60000 });
}

/** The code lenses of the visible editor whose text contains `text`. */
export function lenses(page, text) {
  return page.locator(".codelens-decoration a", { hasText: text });
}

/** The results webview's frame (it holds `pre.sql` once a run finished), or undefined. */
export async function findResultsFrame(page) {
  for (const f of page.frames()) {
    if (await f.locator("pre.sql").count().catch(() => 0)) return f;
  }
  return undefined;
}

/** The text of the results view, or undefined while it shows no finished run. The view's document is replaced on every render: it is looked up again each time. */
export async function resultsText(page) {
  const frame = await findResultsFrame(page);
  return frame ? frame.locator("body").innerText().catch(() => undefined) : undefined;
}
