// Tests of the results view rendering: escaping, NULLs, paging, truncation, errors, notices, several result sets.
import { test } from "node:test";
import * as assert from "node:assert/strict";
import type { ResultSet, RunResult } from "../protocol";
import { clampPage, escapeHtml, formatElapsed, pageCount, renderBody, renderDocument, renderRun } from "../render";

function run(overrides: Partial<RunResult> = {}): RunResult {
  return {
    runId: "r7",
    uri: "file:///w/q.sql",
    range: { start: { line: 10, character: 0 }, end: { line: 12, character: 9 } },
    sql: "select * from item\nwhere v > 1;",
    alias: "db",
    stateId: "9f3e7750aabbccddeeff00112233",
    instanceId: "e66f35298eb874e7",
    elapsedMs: 3.2,
    results: [
      { columns: [{ name: "v", type: "int4" }], rows: [["2"], [null]], rowCount: 2, truncated: false, command: "SELECT 2" },
    ],
    notices: [],
    error: null,
    ...overrides,
  };
}

function numbers(n: number, overrides: Partial<ResultSet> = {}): ResultSet {
  const rows = Array.from({ length: n }, (_, i) => [String(i + 1)]);
  return { columns: [{ name: "n", type: "int8" }], rows, rowCount: n, truncated: false, command: `SELECT ${n}`, ...overrides };
}

test("escapeHtml escapes every markup character", () => {
  const cases: [string, string][] = [
    ["plain", "plain"],
    ["<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"],
    [`a & "b" 'c'`, "a &amp; &quot;b&quot; &#39;c&#39;"],
    ["&amp;", "&amp;amp;"],
  ];
  for (const [input, expected] of cases) {
    assert.equal(escapeHtml(input), expected, input);
  }
});

test("the executed SQL, header and values appear escaped, never as markup", () => {
  const evil = `<img src=x onerror="alert(1)">`;
  const html = renderRun(
    run({
      sql: `select '${evil}' as "<b>";`,
      alias: evil,
      uri: "file:///w/%3Cq%3E.sql",
      results: [{ columns: [{ name: evil, type: evil }], rows: [[evil]], rowCount: 1, truncated: false, command: evil }],
      notices: [{ severity: evil, message: evil }],
      error: { message: evil, code: evil, position: null },
    }),
    [0],
  );
  assert.ok(!html.includes("<img"), html);
  assert.ok(!html.includes("<b>\"") && !html.includes('"<b>"'), html);
  assert.ok(html.includes("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;"));
  assert.ok(html.includes("&lt;q&gt;.sql:11"), "file name decoded then escaped");
  assert.ok(html.includes(`<pre class="sql">select &#39;&lt;img`));
});

test("header shows file, alias, short state id, instance, elapsed time and run id", () => {
  const html = renderRun(run(), [0]);
  for (const part of ["q.sql:11", "alias <b>db</b>", "<code>9f3e7750aabb</code>", "e66f35298eb874e7", "3.2 ms", "run r7"]) {
    assert.ok(html.includes(part), `missing ${part}`);
  }
  assert.ok(html.includes(`<pre class="sql">select * from item\nwhere v &gt; 1;</pre>`));
  assert.ok(renderRun(run({ stateId: null, instanceId: null }), [0]).includes("no state"));
  const named = renderRun(run({ instanceName: "dev" }), [0]);
  assert.ok(named.includes("instance <b>dev</b>") && !named.includes("e66f35298eb874e7"), "a named instance shows its name");
});

test("SQL NULL is distinct from the text NULL", () => {
  const html = renderRun(
    run({ results: [{ columns: [{ name: "v", type: "text" }], rows: [[null], ["NULL"], [""]], rowCount: 3, truncated: false, command: "SELECT 3" }] }),
    [0],
  );
  assert.ok(html.includes(`<td class="null">NULL</td>`));
  assert.ok(html.includes(`<td>NULL</td>`));
  assert.ok(html.includes(`<td></td>`));
  assert.equal(html.match(/class="null"/g)?.length, 1);
});

test("rows are paged", () => {
  const cases: { rows: number; page: number; first: string | null; last: string | null; label: string }[] = [
    { rows: 0, page: 0, first: null, last: null, label: "0 rows" },
    { rows: 3, page: 0, first: "1", last: "3", label: "rows 1–3 of 3" },
    { rows: 250, page: 0, first: "1", last: "100", label: "rows 1–100 of 250 · page 1/3" },
    { rows: 250, page: 2, first: "201", last: "250", label: "rows 201–250 of 250 · page 3/3" },
    { rows: 250, page: 9, first: "201", last: "250", label: "rows 201–250 of 250 · page 3/3" },
    { rows: 250, page: -1, first: "1", last: "100", label: "rows 1–100 of 250 · page 1/3" },
  ];
  for (const c of cases) {
    const html = renderRun(run({ results: [numbers(c.rows)] }), [c.page], 100);
    assert.ok(html.includes(c.label), `${c.rows}/${c.page}: ${c.label}`);
    const cells = [...html.matchAll(/<td>(\d+)<\/td>/g)].map((m) => m[1]);
    assert.equal(cells[0] ?? null, c.first, `${c.rows}/${c.page} first`);
    assert.equal(cells.at(-1) ?? null, c.last, `${c.rows}/${c.page} last`);
  }
});

test("pager buttons post the neighbouring pages and disable at the ends", () => {
  const first = renderRun(run({ results: [numbers(250)] }), [0], 100);
  assert.ok(first.includes(`data-msg="{&quot;type&quot;:&quot;page&quot;,&quot;result&quot;:0,&quot;page&quot;:-1}" disabled`));
  assert.ok(first.includes(`data-msg="{&quot;type&quot;:&quot;page&quot;,&quot;result&quot;:0,&quot;page&quot;:1}">Next ›`));
  const last = renderRun(run({ results: [numbers(250)] }), [2], 100);
  assert.ok(last.includes(`&quot;page&quot;:3}" disabled`));
});

test("page arithmetic", () => {
  assert.deepEqual([0, 1, 100, 101, 500].map((n) => pageCount(n, 100)), [1, 1, 1, 2, 5]);
  assert.deepEqual([-3, 0, 1, 2, 7, 1.7].map((p) => clampPage(numbers(250), p, 100)), [0, 0, 1, 2, 2, 1]);
});

test("a truncated result says how many rows there were and how many were sent", () => {
  const html = renderRun(run({ results: [numbers(500, { rowCount: 12345, truncated: true })] }), [0]);
  assert.ok(html.includes("Showing the first 500 of 12345 rows"), html);
  assert.ok(html.includes("sqlrs.rowLimit"));
  assert.ok(!renderRun(run(), [0]).includes("Showing the first"));
});

test("an error shows SQLSTATE and its 1-based position with a button to go there", () => {
  const html = renderRun(
    run({
      results: [],
      error: { message: `relation "nope" does not exist`, code: "42P01", position: { line: 11, character: 14 } },
    }),
    [],
  );
  assert.ok(html.includes(`<b>ERROR</b> <code>42P01</code>: relation &quot;nope&quot; does not exist`), html);
  assert.ok(html.includes("at line 12, column 15"));
  assert.ok(html.includes(`{&quot;type&quot;:&quot;reveal&quot;}`));
  assert.ok(!html.includes("returned no result"));
  const detailed = renderRun(
    run({ results: [], error: { message: "m", code: "23505", detail: "Key (id)=(1) <exists>.", hint: "use ON CONFLICT", position: null } }),
    [],
  );
  assert.ok(detailed.includes("DETAIL: Key (id)=(1) &lt;exists&gt;.") && detailed.includes("HINT: use ON CONFLICT"), detailed);
  const bare = renderRun(run({ results: [], error: { message: "connection lost" } }), []);
  assert.ok(bare.includes("<b>ERROR</b>: connection lost"));
  assert.ok(!bare.includes("reveal"));
});

test("notices are listed with their severity", () => {
  const html = renderRun(
    run({ notices: [{ severity: "NOTICE", message: "table \"t\" does not exist, skipping" }, { severity: "WARNING", message: "w" }] }),
    [0],
  );
  assert.ok(html.includes(`<li><b>NOTICE</b>: table &quot;t&quot; does not exist, skipping</li><li><b>WARNING</b>: w</li>`));
});

test("several result sets render in order, each with its command tag and own page", () => {
  const html = renderRun(
    run({
      results: [
        { columns: [], rows: [], rowCount: 3, truncated: false, command: "INSERT 0 3" },
        numbers(150),
        { columns: [{ name: "a", type: "text" }, { name: "b", type: "jsonb" }], rows: [["x", "{}"]], rowCount: 1, truncated: false, command: "SELECT 1" },
      ],
    }),
    [0, 1],
    100,
  );
  const order = ["INSERT 0 3", "SELECT 150", "rows 101–150 of 150", "SELECT 1", "<td>x</td><td>{}</td>"].map((tag) =>
    html.indexOf(tag.startsWith("<") || tag.startsWith("rows") ? tag : `<b class="command">${tag}</b>`),
  );
  assert.ok(order.every((pos) => pos >= 0), String(order));
  assert.deepEqual([...order].sort((a, b) => a - b), order);
  assert.ok(html.includes(`&quot;result&quot;:1,&quot;page&quot;:0`), "pager of the second set");
  assert.ok(html.includes(`<th>b<span class="type">jsonb</span></th>`));
  const untyped = renderRun(run({ results: [{ columns: [{ name: "x", type: null }], rows: [["1"]], rowCount: 1, truncated: false, command: "SELECT 1" }] }), [0]);
  assert.ok(untyped.includes("<th>x</th>"), "a column without a type name");
});

test("a statement without result says so", () => {
  assert.ok(renderRun(run({ results: [] }), []).includes("returned no result"));
});

test("elapsed time formatting", () => {
  assert.deepEqual([0.04, 3.2, 999.94, 1500, 61234].map(formatElapsed), ["0.0 ms", "3.2 ms", "999.9 ms", "1.50 s", "61.23 s"]);
});

test("view states: empty hint, running with cancel, failure", () => {
  assert.ok(renderBody({ kind: "empty" }).includes("Run Statement at Cursor"));
  const running = renderBody({ kind: "running", label: "<q>.sql:3" });
  assert.ok(running.includes("Running &lt;q&gt;.sql:3"));
  assert.ok(running.includes(`{&quot;type&quot;:&quot;cancel&quot;}`));
  const failed = renderBody({ kind: "failed", label: "q.sql:3", message: "<boom>" });
  assert.ok(failed.includes("&lt;boom&gt;") && !failed.includes("<boom>"));
});

test("the document allows only the nonce'd style and script", () => {
  const html = renderDocument({ kind: "empty" }, "N0nce", "vscode-webview://x");
  assert.ok(html.includes(`content="default-src &#39;none&#39;; style-src vscode-webview://x &#39;nonce-N0nce&#39;; script-src &#39;nonce-N0nce&#39;;"`));
  assert.ok(html.includes(`<style nonce="N0nce">`) && html.includes(`<script nonce="N0nce">`));
  assert.equal(html.match(/<script/g)?.length, 1);
});
