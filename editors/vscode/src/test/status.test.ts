// Tests of the status bar aggregation: worst status wins, later notifications replace earlier ones per (file, alias).
import { test } from "node:test";
import * as assert from "node:assert/strict";
import type { FileStatus, Status } from "../protocol";
import { StatusBoard, worstStatus } from "../status";

test("worstStatus ranks failed > invalid > building > stale > cached", () => {
  const cases: [Status[], Status | undefined][] = [
    [[], undefined],
    [["cached"], "cached"],
    [["cached", "stale"], "stale"],
    [["stale", "building", "cached"], "building"],
    [["building", "invalid", "stale"], "invalid"],
    [["invalid", "failed", "building"], "failed"],
    [["failed", "cached"], "failed"],
  ];
  for (const [statuses, expected] of cases) {
    assert.equal(worstStatus(statuses), expected, statuses.join(","));
  }
});

function fs(uri: string, status: Status, extra: Partial<FileStatus> = {}): FileStatus {
  return { uri: `file:///w/${uri}`, alias: "db", status, stateId: null, step: null, total: null, message: null, ...extra };
}

test("board summary: empty board has none", () => {
  assert.equal(new StatusBoard().summary(), undefined);
});

test("board summary follows the latest status of each (file, alias)", () => {
  const board = new StatusBoard();
  board.update(fs("a.sql", "cached", { stateId: "9f3e7750aabbccddeeff" }));
  board.update(fs("b.sql", "cached"));
  assert.equal(board.summary()?.text, "$(database) sqlrs: cached");
  assert.match(board.summary()?.tooltip ?? "", /db: cached · \/w\/a\.sql · 9f3e7750aabb/);

  board.update(fs("b.sql", "building", { step: 2, total: 5 }));
  assert.equal(board.summary()?.status, "building");
  assert.equal(board.summary()?.text, "$(sync~spin) sqlrs: building 2/5");

  board.update(fs("b.sql", "failed", { message: "b.sql:3: syntax error" }));
  board.update(fs("a.sql", "stale", { alias: "other" }));
  const failed = board.summary();
  assert.equal(failed?.status, "failed");
  assert.equal(failed?.text, "$(error) sqlrs: failed");
  assert.equal(failed?.tooltip, "db: failed · /w/b.sql · b.sql:3: syntax error\n1 failed, 1 stale, 1 cached");

  board.update(fs("b.sql", "cached"));
  assert.equal(board.summary()?.status, "stale", "the failure cleared, the other alias's stale status remains");

  board.clear();
  assert.equal(board.summary(), undefined);
});
