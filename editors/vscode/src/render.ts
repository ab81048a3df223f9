// Renders the results view as HTML: the executed SQL above its result sets, notices and error; everything escaped, rows paged.
import type { Notice, ResultSet, RunError, RunResult } from "./protocol";

/** Rows shown per page of a result set. */
export const PAGE_SIZE = 100;

/** What the results view shows. `pages[i]` is the 0-based page shown of result set `i`. */
export type ViewState =
  | { kind: "empty" }
  | { kind: "running"; label: string }
  | { kind: "failed"; label: string; message: string }
  | { kind: "result"; run: RunResult; pages: number[] };

/** Messages the view's buttons post back to the extension. */
export type ViewMessage =
  | { type: "page"; result: number; page: number }
  | { type: "cancel" }
  | { type: "reveal" };

export function escapeHtml(text: string): string {
  return text
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

export function pageCount(rows: number, pageSize: number = PAGE_SIZE): number {
  return Math.max(1, Math.ceil(rows / pageSize));
}

/** Keeps a requested page inside the result set's pages. */
export function clampPage(set: ResultSet, page: number, pageSize: number = PAGE_SIZE): number {
  return Math.min(Math.max(0, Math.trunc(page)), pageCount(set.rows.length, pageSize) - 1);
}

export function formatElapsed(ms: number): string {
  if (ms < 1000) {
    return `${ms.toFixed(1)} ms`;
  }
  return `${(ms / 1000).toFixed(2)} s`;
}

/** The whole webview document; `nonce` authorises the inline style and script, `cspSource` is the webview's origin. */
export function renderDocument(state: ViewState, nonce: string, cspSource: string, pageSize: number = PAGE_SIZE): string {
  const csp = `default-src 'none'; style-src ${cspSource} 'nonce-${nonce}'; script-src 'nonce-${nonce}';`;
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${escapeHtml(csp)}">
<style nonce="${nonce}">${STYLE}</style>
</head>
<body>
${renderBody(state, pageSize)}
<script nonce="${nonce}">${SCRIPT}</script>
</body>
</html>`;
}

/** The body of the view for `state`. */
export function renderBody(state: ViewState, pageSize: number = PAGE_SIZE): string {
  switch (state.kind) {
    case "empty":
      return `<p class="hint">Run a statement with the <b>▶ Run</b> lens above it, or with the command <b>sqlrs: Run Statement at Cursor</b>.</p>`;
    case "running":
      return `<p class="running">Running ${escapeHtml(state.label)} … ${button({ type: "cancel" }, "Cancel")}</p>`;
    case "failed":
      return `<p class="label">${escapeHtml(state.label)}</p><div class="error">${escapeHtml(state.message)}</div>`;
    case "result":
      return renderRun(state.run, state.pages, pageSize);
  }
}

/** One finished run: header, SQL, error, notices, then every result set. */
export function renderRun(run: RunResult, pages: number[], pageSize: number = PAGE_SIZE): string {
  const parts = [renderHeader(run), `<pre class="sql">${escapeHtml(run.sql)}</pre>`];
  if (run.error) {
    parts.push(renderError(run.error));
  }
  if (run.notices.length > 0) {
    parts.push(renderNotices(run.notices));
  }
  run.results.forEach((set, i) => parts.push(renderResultSet(set, i, pages[i] ?? 0, pageSize)));
  if (!run.error && run.results.length === 0) {
    parts.push(`<p class="hint">The statement returned no result.</p>`);
  }
  return parts.join("\n");
}

function renderHeader(run: RunResult): string {
  const items = [
    `<span title="file">${escapeHtml(fileLabel(run.uri))}:${run.range.start.line + 1}</span>`,
    `<span title="prepare alias">alias <b>${escapeHtml(run.alias)}</b></span>`,
    run.stateId
      ? `<span title="state ${escapeHtml(run.stateId)}">state <code>${escapeHtml(run.stateId.slice(0, 12))}</code></span>`
      : `<span>no state</span>`,
  ];
  if (run.instanceName) {
    items.push(`<span title="named instance">instance <b>${escapeHtml(run.instanceName)}</b></span>`);
  } else if (run.instanceId) {
    items.push(`<span title="instance">instance <code>${escapeHtml(run.instanceId)}</code></span>`);
  }
  items.push(`<span title="elapsed">${escapeHtml(formatElapsed(run.elapsedMs))}</span>`);
  items.push(`<span title="run id">run ${escapeHtml(run.runId)}</span>`);
  return `<div class="header">${items.join(" · ")}</div>`;
}

function renderError(error: RunError): string {
  const code = error.code ? ` <code>${escapeHtml(error.code)}</code>` : "";
  const position = error.position
    ? ` <span class="position">at line ${error.position.line + 1}, column ${error.position.character + 1}</span> ${button({ type: "reveal" }, "Go to position")}`
    : "";
  const extra = [
    error.detail ? `<div class="detail">DETAIL: ${escapeHtml(error.detail)}</div>` : "",
    error.hint ? `<div class="detail">HINT: ${escapeHtml(error.hint)}</div>` : "",
  ].join("");
  return `<div class="error"><b>ERROR</b>${code}: ${escapeHtml(error.message)}${position}${extra}</div>`;
}

function renderNotices(notices: Notice[]): string {
  const items = notices.map((n) => `<li><b>${escapeHtml(n.severity)}</b>: ${escapeHtml(n.message)}</li>`);
  return `<ul class="notices">${items.join("")}</ul>`;
}

function renderResultSet(set: ResultSet, index: number, requestedPage: number, pageSize: number): string {
  const command = set.command ? `<b class="command">${escapeHtml(set.command)}</b>` : "";
  if (set.columns.length === 0) {
    return `<section class="result">${command}</section>`;
  }
  const page = clampPage(set, requestedPage, pageSize);
  const start = page * pageSize;
  const rows = set.rows.slice(start, start + pageSize);
  const head = set.columns
    .map((c) => `<th>${escapeHtml(c.name)}${c.type ? `<span class="type">${escapeHtml(c.type)}</span>` : ""}</th>`)
    .join("");
  const body = rows
    .map((row) => `<tr>${row.map((v) => (v === null ? `<td class="null">NULL</td>` : `<td>${escapeHtml(v)}</td>`)).join("")}</tr>`)
    .join("\n");
  return `<section class="result">
<div class="meta">${command} ${renderPager(set, index, page, pageSize)}</div>
${set.truncated ? renderTruncated(set) : ""}
<table><thead><tr>${head}</tr></thead><tbody>
${body}
</tbody></table>
</section>`;
}

function renderPager(set: ResultSet, index: number, page: number, pageSize: number): string {
  const total = set.rows.length;
  if (total === 0) {
    return `<span class="rows">0 rows</span>`;
  }
  const pages = pageCount(total, pageSize);
  const range = `rows ${page * pageSize + 1}–${Math.min(total, (page + 1) * pageSize)} of ${total}`;
  if (pages === 1) {
    return `<span class="rows">${range}</span>`;
  }
  const prev = button({ type: "page", result: index, page: page - 1 }, "‹ Previous", page === 0);
  const next = button({ type: "page", result: index, page: page + 1 }, "Next ›", page === pages - 1);
  return `<span class="rows">${range} · page ${page + 1}/${pages}</span> ${prev} ${next}`;
}

function renderTruncated(set: ResultSet): string {
  return `<p class="truncated">Showing the first ${set.rows.length} of ${set.rowCount} rows: the rest were counted, not sent (setting <code>sqlrs.rowLimit</code>).</p>`;
}

function button(message: ViewMessage, label: string, disabled = false): string {
  return `<button data-msg="${escapeHtml(JSON.stringify(message))}"${disabled ? " disabled" : ""}>${escapeHtml(label)}</button>`;
}

function fileLabel(uri: string): string {
  const last = uri.split("/").pop() ?? uri;
  try {
    return decodeURIComponent(last);
  } catch {
    return last;
  }
}

const STYLE = `
body { font-family: var(--vscode-font-family); font-size: var(--vscode-font-size); color: var(--vscode-foreground); }
.header { color: var(--vscode-descriptionForeground); margin-bottom: 4px; }
pre.sql { font-family: var(--vscode-editor-font-family); background: var(--vscode-textCodeBlock-background); padding: 4px 8px; margin: 4px 0; white-space: pre-wrap; }
.error { color: var(--vscode-errorForeground); margin: 4px 0; }
.detail { margin-top: 2px; }
.notices { margin: 4px 0; padding-left: 18px; color: var(--vscode-descriptionForeground); }
.result { margin: 8px 0; }
.meta { margin-bottom: 4px; }
.rows, .type { color: var(--vscode-descriptionForeground); }
.type { margin-left: 6px; font-weight: normal; font-size: 90%; }
.truncated { color: var(--vscode-editorWarning-foreground); margin: 4px 0; }
table { border-collapse: collapse; font-family: var(--vscode-editor-font-family); }
th, td { border: 1px solid var(--vscode-panel-border); padding: 1px 6px; text-align: left; vertical-align: top; white-space: pre; }
td.null { color: var(--vscode-descriptionForeground); font-style: italic; }
button { color: var(--vscode-button-foreground); background: var(--vscode-button-background); border: none; padding: 1px 8px; cursor: pointer; }
button:disabled { opacity: 0.5; cursor: default; }
.hint { color: var(--vscode-descriptionForeground); }
`;

const SCRIPT = `
const vscode = acquireVsCodeApi();
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-msg]");
  if (button && !button.disabled) {
    vscode.postMessage(JSON.parse(button.dataset.msg));
  }
});
`;
