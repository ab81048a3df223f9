// Project cache state for the status bar: the worst `sqlrs/fileStatus` of every (file, alias) pair.
import type { FileStatus, Status } from "./protocol";

/** Severity order, worst last: failed > invalid > building > stale > cached. */
const RANK: Record<Status, number> = {
  cached: 0,
  stale: 1,
  building: 2,
  invalid: 3,
  failed: 4,
};

const ICON: Record<Status, string> = {
  cached: "$(database)",
  stale: "$(history)",
  building: "$(sync~spin)",
  invalid: "$(warning)",
  failed: "$(error)",
};

/** The worst of `statuses`, or `undefined` when there is none. Unknown values rank as failed. */
export function worstStatus(statuses: Iterable<Status>): Status | undefined {
  let worst: Status | undefined;
  for (const s of statuses) {
    if (worst === undefined || rank(s) > rank(worst)) {
      worst = s;
    }
  }
  return worst;
}

function rank(s: Status): number {
  return RANK[s] ?? RANK.failed;
}

export interface StatusSummary {
  status: Status;
  /** Status bar text, with a codicon. */
  text: string;
  /** One line per (alias, file) in the worst status, then the counts of all statuses. */
  tooltip: string;
}

/** The latest status of every (file, alias) pair of the project. */
export class StatusBoard {
  private readonly entries = new Map<string, FileStatus>();

  /** Records a `sqlrs/fileStatus` notification, replacing the pair's previous status. */
  update(status: FileStatus): void {
    this.entries.set(`${status.alias}\u0000${status.uri}`, status);
  }

  /** Forgets every status (e.g. when the server restarts). */
  clear(): void {
    this.entries.clear();
  }

  summary(): StatusSummary | undefined {
    const all = [...this.entries.values()];
    const worst = worstStatus(all.map((e) => e.status));
    if (worst === undefined) {
      return undefined;
    }
    const worstEntries = all
      .filter((e) => e.status === worst)
      .sort((a, b) => (a.alias + a.uri).localeCompare(b.alias + b.uri));
    const counts = new Map<Status, number>();
    for (const e of all) {
      counts.set(e.status, (counts.get(e.status) ?? 0) + 1);
    }
    const countLine = [...counts.entries()]
      .sort((a, b) => rank(b[0]) - rank(a[0]))
      .map(([s, n]) => `${n} ${s}`)
      .join(", ");
    return {
      status: worst,
      text: `${ICON[worst] ?? ICON.failed} sqlrs: ${label(worstEntries[0])}`,
      tooltip: [...worstEntries.map(describe), countLine].join("\n"),
    };
  }
}

function label(e: FileStatus): string {
  if (e.status === "building" && e.step != null && e.total != null) {
    return `building ${e.step}/${e.total}`;
  }
  return e.status;
}

function describe(e: FileStatus): string {
  const parts = [`${e.alias}: ${label(e)}`, fileName(e.uri)];
  if (e.stateId) {
    parts.push(e.stateId.slice(0, 12));
  }
  if (e.message) {
    parts.push(e.message);
  }
  return parts.join(" · ");
}

function fileName(uri: string): string {
  const path = uri.replace(/^file:\/\//, "");
  try {
    return decodeURIComponent(path);
  } catch {
    return path;
  }
}
