// Tests of sqlrs-lsp discovery: the setting wins, then PATH in order, else a message saying how to install or configure it.
import { test } from "node:test";
import * as assert from "node:assert/strict";
import { findServer, type DiscoveryEnv } from "../discovery";

function env(files: string[], overrides: Partial<DiscoveryEnv> = {}): DiscoveryEnv {
  const present = new Set(files);
  return {
    setting: undefined,
    env: { PATH: "/usr/local/bin:/opt/sqlrs/bin:/usr/bin", HOME: "/home/ann" },
    platform: "linux",
    isExecutable: (file) => present.has(file),
    ...overrides,
  };
}

test("discovery cases", () => {
  const cases: { name: string; d: DiscoveryEnv; path?: string; source?: string; message?: RegExp }[] = [
    {
      name: "setting wins over PATH",
      d: env(["/custom/sqlrs-lsp", "/usr/bin/sqlrs-lsp"], { setting: "/custom/sqlrs-lsp" }),
      path: "/custom/sqlrs-lsp",
      source: "setting",
    },
    {
      name: "setting with ~ and spaces around it",
      d: env(["/home/ann/.cargo/bin/sqlrs-lsp"], { setting: "  ~/.cargo/bin/sqlrs-lsp " }),
      path: "/home/ann/.cargo/bin/sqlrs-lsp",
      source: "setting",
    },
    {
      name: "a wrong setting is reported, not silently replaced by PATH",
      d: env(["/usr/bin/sqlrs-lsp"], { setting: "/nowhere/sqlrs-lsp" }),
      message: /"sqlrs\.serverPath" setting is "\/nowhere\/sqlrs-lsp", but no executable file is there/,
    },
    { name: "empty setting means PATH", d: env(["/usr/bin/sqlrs-lsp"], { setting: "" }), path: "/usr/bin/sqlrs-lsp", source: "PATH" },
    {
      name: "first PATH entry that has it",
      d: env(["/opt/sqlrs/bin/sqlrs-lsp", "/usr/bin/sqlrs-lsp"]),
      path: "/opt/sqlrs/bin/sqlrs-lsp",
      source: "PATH",
    },
    {
      name: "empty PATH entries are skipped",
      d: env(["/usr/bin/sqlrs-lsp"], { env: { PATH: "::/usr/bin:" } }),
      path: "/usr/bin/sqlrs-lsp",
      source: "PATH",
    },
    {
      name: "missing everywhere",
      d: env(["/usr/bin/sqlrs"]),
      message: /sqlrs-lsp was not found on PATH\. Install it .*cargo install --path sqlrs-lsp.*"sqlrs\.serverPath"/,
    },
    { name: "no PATH at all", d: env([], { env: {} }), message: /not found on PATH/ },
    {
      name: "Windows: ; separator and PATHEXT",
      d: env(["C:\\tools\\sqlrs-lsp.exe"], { platform: "win32", env: { Path: "C:\\bin;C:\\tools", PATHEXT: ".COM;.EXE" } }),
      path: "C:\\tools\\sqlrs-lsp.exe",
      source: "PATH",
    },
  ];
  for (const c of cases) {
    const found = findServer(c.d);
    if (c.message) {
      assert.equal(found.ok, false, c.name);
      assert.match(found.ok ? "" : found.message, c.message, c.name);
    } else {
      assert.deepEqual(found, { ok: true, path: c.path, source: c.source }, c.name);
    }
  }
});

test("a directory named sqlrs-lsp is not taken for the server", () => {
  const d = env([], { isExecutable: (file) => file === "/usr/bin/sqlrs-lsp" });
  assert.equal(findServer(d).ok, true);
  assert.equal(findServer(env([])).ok, false);
});
