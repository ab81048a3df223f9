// End-to-end test of the packaged extension in code-server against the real sqlrs-lsp, an isolated sqlrsd and PostgreSQL 15: status lens, status bar, Run results, SQLSTATE, build-error diagnostics.
//
//   CODE_SERVER=/path/to/node_modules/.bin/code-server node e2e/real.mjs sqlrs-0.1.0.vsix
//
// The server is $SQLRS_LSP_BIN, else <repo>/target/debug/sqlrs-lsp; sqlrsd and sqlrs are taken from
// beside it (`cargo build --workspace` builds all three). The daemon runs with its own XDG folders in a
// temporary directory (native runtime, copy snapshots, /usr/lib/postgresql/15/bin) and is stopped with
// `sqlrs daemon stop` at the end.
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { fail, findResultsFrame, inputs, lenses, openFile, openWorkbench, resultsText, waitFor, writeUserSettings } from "./harness.mjs";

const SCRIPT = "real.mjs";
const PG_BIN = "/usr/lib/postgresql/15/bin";
/** The first build runs initdb and both steps; a debug daemon on a loaded machine may take a while. */
const FIRST_BUILD_MS = 300000;
const REBUILD_MS = 120000;
const RUN_MS = 120000;

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../../..");
const { vsix, codeServer, browser } = inputs(SCRIPT);

const lspBin = path.resolve(process.env.SQLRS_LSP_BIN || path.join(repo, "target/debug/sqlrs-lsp"));
const sqlrsdBin = path.join(path.dirname(lspBin), "sqlrsd");
const sqlrsBin = path.join(path.dirname(lspBin), "sqlrs");
for (const bin of [lspBin, sqlrsdBin, sqlrsBin]) {
  if (!fs.existsSync(bin))
    fail(SCRIPT, `${bin} does not exist: run \`cargo build --workspace\` in ${repo} first (or set SQLRS_LSP_BIN to a sqlrs-lsp with sqlrsd and sqlrs beside it)`);
}
for (const tool of ["postgres", "initdb", "psql"]) {
  if (!fs.existsSync(path.join(PG_BIN, tool)))
    fail(SCRIPT, `${path.join(PG_BIN, tool)} does not exist: install PostgreSQL 15 (Debian: apt-get install -y postgresql-15)`);
}

const SCHEMA_SQL = "create table item(v int not null, label text not null);\n";
const SEED_SQL = "-- two items\ninsert into item values (1, 'one');\ninsert into item values (2, 'two');\n";
const Q_SQL = "select v, label from item order by v;\n\nselect * from no_such_table;\n";

// PostgreSQL servers run as the `postgres` account when this runs as root: every folder they enter is 0755.
if (process.getuid?.() === 0) {
  for (let dir = path.resolve(os.tmpdir()); ; dir = path.dirname(dir)) {
    if ((fs.statSync(dir).mode & 0o001) === 0)
      fail(SCRIPT, `${dir} cannot be entered by other accounts, and PostgreSQL runs as \`postgres\` when this runs as root: set TMPDIR to a folder outside it (e.g. /tmp) or \`chmod o+x ${dir}\``);
    if (dir === path.dirname(dir)) break;
  }
}
const root = fs.mkdtempSync(path.join(os.tmpdir(), "sqlrs-vscode-real-"));
const dirs = { root, data: path.join(root, "data"), ext: path.join(root, "ext"), ws: path.join(root, "ws") };
const xdg = { XDG_CONFIG_HOME: path.join(root, "config"), XDG_STATE_HOME: path.join(root, "state"), XDG_RUNTIME_DIR: path.join(root, "run") };
for (const d of [...Object.values(dirs), ...Object.values(xdg), path.join(xdg.XDG_CONFIG_HOME, "sqlrs"), path.join(dirs.ws, ".sqlrs")]) {
  fs.mkdirSync(d, { recursive: true });
  fs.chmodSync(d, 0o755);
}
fs.writeFileSync(
  path.join(xdg.XDG_CONFIG_HOME, "sqlrs", "config.yaml"),
  `runtime:\n  kind: native\n  native:\n    bin_dir: ${PG_BIN}\nsnapshot:\n  backend: copy\n`,
);
const project = {
  "db.prep.s9s.yaml": "kind: psql\nargs: [-f, schema.sql, -f, seed.sql]\n",
  "schema.sql": SCHEMA_SQL,
  "seed.sql": SEED_SQL,
  "q.sql": Q_SQL,
};
for (const [file, text] of Object.entries(project)) fs.writeFileSync(path.join(dirs.ws, file), text, { mode: 0o644 });
writeUserSettings(dirs.data, { "sqlrs.serverPath": lspBin, "files.autoSave": "off", "editor.quickSuggestions": { other: "off", comments: "off", strings: "off" } });

// What the extension host, sqlrs-lsp and the daemon it starts see; libpq variables of the caller must not leak in.
const daemonEnv = { ...xdg, SQLRSD_BIN: sqlrsdBin, NO_COLOR: "1" };
for (const key of ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGSERVICE", "PGOPTIONS", "PSQLRC"]) daemonEnv[key] = undefined;

/** Stops the sandbox's daemon (and with it its instances); a daemon that was never started is fine. */
function stopDaemon() {
  const env = { ...process.env };
  for (const [key, value] of Object.entries(daemonEnv)) {
    if (value === undefined) delete env[key];
    else env[key] = value;
  }
  execFileSync(sqlrsBin, ["daemon", "stop"], { env, stdio: ["ignore", "inherit", "inherit"], timeout: 60000 });
}

let workbench;
let ok = false;
try {
  const started = Date.now();
  workbench = await openWorkbench({ codeServer, browser, vsix, dirs, env: daemonEnv });
  const { page } = workbench;
  const step = (what) => console.log(`${SCRIPT}: ${((Date.now() - started) / 1000).toFixed(1)} s: ${what}`);

  // The status lens of seed.sql reaches cached once the daemon built the chain.
  await openFile(page, "seed.sql");
  const cachedLens = lenses(page, "sqlrs: cached").first();
  await cachedLens.waitFor({ timeout: FIRST_BUILD_MS });
  const cachedTitle = await cachedLens.innerText();
  const stateId = /^sqlrs: cached · ([0-9a-f]{12}) · \d/.exec(cachedTitle)?.[1];
  assert.ok(stateId, `status lens "${cachedTitle}" is not "sqlrs: cached · <state id> · <size>"`);
  step(`seed.sql ${cachedTitle}`);

  // The status bar item shows the project's state.
  const statusBar = (text) => page.locator(".statusbar-item", { hasText: text }).first();
  await statusBar("sqlrs: cached").waitFor({ timeout: 30000 });

  // q.sql: one Run lens per statement; the first returns the seed's rows against the cached state.
  await openFile(page, "q.sql");
  const run = lenses(page, "Run");
  await waitFor("a Run lens on both statements of q.sql", async () => (await run.count()) === 2);
  await run.nth(0).click();
  const text = await waitFor("the result of the first statement", async () => {
    const t = await resultsText(page);
    return t?.includes("SELECT 2") ? t : undefined;
  }, RUN_MS);
  for (const part of ["select v, label from item order by v;", "q.sql:1", "alias db", `state ${stateId}`, "SELECT 2"]) {
    assert.ok(text.includes(part), `results view lacks "${part}":\n${text}`);
  }
  const frame = await findResultsFrame(page);
  const headers = await frame.locator("thead th").evaluateAll((ths) => ths.map((th) => [th.firstChild.textContent, th.querySelector(".type")?.textContent]));
  assert.deepEqual(headers, [["v", "int4"], ["label", "text"]], "column headers (name, type)");
  assert.deepEqual(await frame.locator("tbody td").allInnerTexts(), ["1", "one", "2", "two"], "rows from seed.sql");
  step("first statement ran");

  // The second fails: the view shows its SQLSTATE, message and position in q.sql.
  await run.nth(1).click();
  const errorText = await waitFor("the error of the second statement", async () => {
    const t = await resultsText(page);
    return t?.includes("no_such_table") ? t : undefined;
  }, RUN_MS);
  for (const part of ["select * from no_such_table;", "q.sql:3", "ERROR 42P01", 'relation "no_such_table" does not exist', "at line 3, column 15"]) {
    assert.ok(errorText.includes(part), `results view lacks "${part}":\n${errorText}`);
  }
  step("failing statement showed 42P01");

  const problems = async () => {
    const panel = page.locator(".markers-panel");
    if (!(await panel.isVisible().catch(() => false))) {
      await page.keyboard.press("Control+Shift+M");
      await panel.waitFor({ timeout: 10000 });
    }
    return panel.innerText();
  };
  const failedAt = async (line) => {
    await lenses(page, `sqlrs: failed · seed.sql:${line}`).first().waitFor({ timeout: REBUILD_MS });
    await statusBar("sqlrs: failed").waitFor({ timeout: 30000 });
    await waitFor(`an error squiggle in seed.sql`, async () => (await page.locator(".monaco-editor .squiggly-error").count()) > 0, 30000);
    await waitFor(`the Problems panel to list seed.sql:${line}`, async () => {
      const t = await problems();
      return t.includes("seed.sql") && t.includes("sqlrs") && t.includes(`[Ln ${line}, Col 1]`) ? t : undefined;
    }, 30000);
  };
  const cachedAgain = async () => {
    await lenses(page, `sqlrs: cached · ${stateId}`).first().waitFor({ timeout: REBUILD_MS });
    await statusBar("sqlrs: cached").waitFor({ timeout: 30000 });
    await waitFor("the Problems panel to be empty", async () => (await problems()).includes("No problems have been detected"), 30000);
  };
  const focusEditor = async () => {
    await page.locator(".editor-instance .monaco-editor .view-lines").first().click();
  };

  // Break line 3 of seed.sql in the editor and save: the step fails there.
  await openFile(page, "seed.sql");
  await focusEditor();
  await page.keyboard.press("Control+Home");
  await page.keyboard.press("ArrowDown");
  await page.keyboard.press("ArrowDown");
  await page.keyboard.press("Home");
  await page.keyboard.type("x");
  await page.keyboard.press("Escape");
  await page.keyboard.press("Control+S");
  await waitFor("seed.sql to be saved", () => fs.readFileSync(path.join(dirs.ws, "seed.sql"), "utf8").includes("xinsert"), 30000);
  await failedAt(3);
  step("edit saved in the editor failed at seed.sql:3");

  // Undo and save: the cached state is found again (same id), the diagnostic clears.
  await focusEditor();
  await page.keyboard.press("Control+Z");
  await page.keyboard.press("Control+S");
  await waitFor("seed.sql to be restored", () => fs.readFileSync(path.join(dirs.ws, "seed.sql"), "utf8") === SEED_SQL, 30000);
  await cachedAgain();
  step("undo brought back the cached state");

  // Break line 2 on disk, behind the editor's back.
  fs.writeFileSync(path.join(dirs.ws, "seed.sql"), SEED_SQL.replace("(1, 'one')", "(1, 'one', 'extra')"));
  await failedAt(2);
  step("edit on disk failed at seed.sql:2");

  fs.writeFileSync(path.join(dirs.ws, "seed.sql"), SEED_SQL);
  await cachedAgain();
  step("restored on disk: cached");
  console.log(`${SCRIPT}: ok`);
  ok = true;
} catch (error) {
  if (workbench) await workbench.page.screenshot({ path: path.join(root, "failure.png") }).catch(() => {});
  console.error(
    `${SCRIPT}: ${error.stack ?? error}\nscreenshot, daemon logs (state/sqlrs) and workspace in ${root}\ncode-server output:\n${workbench?.output().slice(-4000) ?? ""}`,
  );
  process.exitCode = 1;
} finally {
  await workbench?.close();
  try {
    stopDaemon();
  } catch (error) {
    console.error(`${SCRIPT}: sqlrs daemon stop failed: ${error.message}`);
    process.exitCode = 1;
    ok = false;
  }
  if (ok) fs.rmSync(root, { recursive: true, force: true });
}
