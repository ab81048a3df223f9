// Finds the sqlrs-lsp executable: the `sqlrs.serverPath` setting, then PATH; pure, with the environment injected.
import * as path from "node:path";

export const SERVER_NAME = "sqlrs-lsp";

/** What discovery may look at, so tests can supply their own. */
export interface DiscoveryEnv {
  /** Value of the `sqlrs.serverPath` setting ("" or undefined when unset). */
  setting: string | undefined;
  /** The process environment (PATH, PATHEXT, HOME). */
  env: Record<string, string | undefined>;
  platform: NodeJS.Platform;
  /** Whether `file` exists and can be executed. */
  isExecutable(file: string): boolean;
}

export type Discovery =
  | { ok: true; path: string; source: "setting" | "PATH" }
  | { ok: false; message: string };

export const INSTALL_HINT =
  `Install it from the sqlrs source tree with \`cargo install --path sqlrs-lsp\` ` +
  `(or put a built \`${SERVER_NAME}\` on PATH), or set "sqlrs.serverPath" to its full path, then run "Developer: Reload Window".`;

/** Finds the server: the setting wins when set; otherwise the first match on PATH. */
export function findServer(d: DiscoveryEnv): Discovery {
  const p = d.platform === "win32" ? path.win32 : path.posix;
  const setting = d.setting?.trim();
  if (setting) {
    const file = expandHome(setting, d.env, p);
    if (d.isExecutable(file)) {
      return { ok: true, path: file, source: "setting" };
    }
    return {
      ok: false,
      message:
        `The "sqlrs.serverPath" setting is "${setting}", but no executable file is there. ` +
        `Point it at the ${SERVER_NAME} binary, or clear it to look ${SERVER_NAME} up on PATH.`,
    };
  }
  const pathVar = d.env.PATH ?? d.env.Path ?? "";
  const exts =
    d.platform === "win32" ? (d.env.PATHEXT ?? ".EXE;.CMD;.BAT").split(";").filter((e) => e !== "") : [""];
  for (const dir of pathVar.split(p.delimiter)) {
    if (dir === "") {
      continue;
    }
    for (const ext of exts) {
      const file = p.join(dir, SERVER_NAME + ext.toLowerCase());
      if (d.isExecutable(file)) {
        return { ok: true, path: file, source: "PATH" };
      }
    }
  }
  return { ok: false, message: `${SERVER_NAME} was not found on PATH. ${INSTALL_HINT}` };
}

function expandHome(file: string, env: Record<string, string | undefined>, p: path.PlatformPath): string {
  const home = env.HOME ?? env.USERPROFILE;
  if (home && (file === "~" || file.startsWith("~/"))) {
    return p.join(home, file.slice(1));
  }
  return file;
}
