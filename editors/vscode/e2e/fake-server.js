#!/usr/bin/env node
// A stand-in sqlrs-lsp for the code-server end-to-end test (e2e/fake.mjs): speaks the documented protocol over stdio with canned replies and logs what it receives.
"use strict";
const fs = require("node:fs");

const LOG = process.env.SQLRS_FAKE_LOG;
const COMMANDS = ["sqlrs.runStatement", "sqlrs.prepare", "sqlrs.showPlan", "sqlrs.cancel", "sqlrs.restartDaemon"];

function log(entry) {
  if (LOG) fs.appendFileSync(LOG, JSON.stringify(entry) + "\n");
}

function send(message) {
  const body = Buffer.from(JSON.stringify({ jsonrpc: "2.0", ...message }), "utf8");
  process.stdout.write(`Content-Length: ${body.length}\r\n\r\n`);
  process.stdout.write(body);
}

function runResult(params) {
  const rows = Array.from({ length: 250 }, (_, i) => [String(i + 1), i === 1 ? null : `<b>v${i + 1}</b>`]);
  return {
    runId: "r1",
    uri: params.uri,
    range: { start: { line: params.line, character: 0 }, end: { line: params.line, character: 30 } },
    sql: "select n, '<b>' || n || '</b>' from generate_series(1, 1000) n;",
    alias: params.alias ?? "db",
    stateId: "9f3e7750aabbccddeeff",
    instanceId: "e66f35298eb874e7",
    elapsedMs: 3.2,
    results: [
      { columns: [{ name: "n", type: "int4" }, { name: "v", type: "text" }], rows, rowCount: 1000, truncated: true, command: "SELECT 1000" },
    ],
    notices: [{ severity: "NOTICE", message: "fake notice" }],
    error: null,
  };
}

const documents = new Map();
// Runs of statements that sleep: they finish only when cancelled.
const sleeping = new Map();

function handle(msg) {
  log({ method: msg.method, params: msg.params });
  switch (msg.method) {
    case "initialize":
      return send({
        id: msg.id,
        result: {
          capabilities: { textDocumentSync: 1, codeLensProvider: {}, executeCommandProvider: { commands: COMMANDS } },
          serverInfo: { name: "sqlrs-lsp-fake" },
        },
      });
    case "initialized":
      send({ method: "sqlrs/fileStatus", params: { uri: "file:///w/a.sql", alias: "db", status: "cached", stateId: "9f3e7750aabb" } });
      send({ method: "sqlrs/fileStatus", params: { uri: "file:///w/b.sql", alias: "db", status: "failed", message: "b.sql:3: syntax error" } });
      return;
    case "textDocument/codeLens":
      return send({
        id: msg.id,
        result: [
          {
            range: { start: { line: 0, character: 0 }, end: { line: 0, character: 0 } },
            command: { title: "▶ Run", command: "sqlrs.runStatement", arguments: [{ uri: msg.params.textDocument.uri, line: 0 }] },
          },
        ],
      });
    case "textDocument/didOpen":
      documents.set(msg.params.textDocument.uri, msg.params.textDocument.text);
      return;
    case "sqlrs/execute":
      if ((documents.get(msg.params.uri) ?? "").includes("pg_sleep")) {
        sleeping.set(msg.params.runId, msg.id);
        return;
      }
      return send({ id: msg.id, result: runResult(msg.params) });
    case "sqlrs/cancel": {
      const id = sleeping.get(msg.params.runId);
      sleeping.delete(msg.params.runId);
      if (id !== undefined) {
        const error = { message: "canceling statement due to user request", code: "57014", position: null };
        send({ id, result: { ...runResult({ uri: "file:///w/s.sql", line: 0 }), runId: msg.params.runId, results: [], notices: [], error } });
      }
      return send({ id: msg.id, result: { cancelled: id !== undefined } });
    }
    case "workspace/executeCommand":
      send({ method: "window/showMessage", params: { type: 3, message: `fake ${msg.params.command} ${JSON.stringify(msg.params.arguments)}` } });
      return send({ id: msg.id, result: null });
    case "shutdown":
      return send({ id: msg.id, result: null });
    case "exit":
      return process.exit(0);
    default:
      if (msg.id !== undefined && msg.method !== undefined) {
        send({ id: msg.id, error: { code: -32601, message: `${msg.method} is not handled by the fake server` } });
      }
  }
}

let buffer = Buffer.alloc(0);
process.stdin.on("data", (chunk) => {
  buffer = Buffer.concat([buffer, chunk]);
  for (;;) {
    const headerEnd = buffer.indexOf("\r\n\r\n");
    if (headerEnd < 0) return;
    const length = Number(/Content-Length: (\d+)/i.exec(buffer.subarray(0, headerEnd).toString())[1]);
    if (buffer.length < headerEnd + 4 + length) return;
    const body = buffer.subarray(headerEnd + 4, headerEnd + 4 + length).toString("utf8");
    buffer = buffer.subarray(headerEnd + 4 + length);
    handle(JSON.parse(body));
  }
});
