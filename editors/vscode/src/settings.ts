// The sqlrs settings forwarded to sqlrs-lsp (initializationOptions and didChangeConfiguration), from a setting getter.
import {
  SETTING_DEFAULT_ALIAS,
  SETTING_INSTANCE_NAME,
  SETTING_ROW_LIMIT,
  SETTING_SQLRS_PATH,
  type DidChangeSettings,
  type ServerSettings,
} from "./protocol";

/** Reads one key of the `sqlrs` settings section. */
export type SettingGetter = (key: string) => unknown;

/** The server's settings: empty strings and invalid row limits are left out so the server uses its defaults. */
export function serverSettings(get: SettingGetter): ServerSettings {
  const out: ServerSettings = {};
  for (const key of [SETTING_DEFAULT_ALIAS, SETTING_INSTANCE_NAME, SETTING_SQLRS_PATH] as const) {
    const value = get(key);
    if (typeof value === "string" && value.trim() !== "") {
      out[key] = value.trim();
    }
  }
  const rowLimit = get(SETTING_ROW_LIMIT);
  if (typeof rowLimit === "number" && Number.isInteger(rowLimit) && rowLimit > 0) {
    out.rowLimit = rowLimit;
  }
  return out;
}

/** `workspace/didChangeConfiguration` params: `{"settings": {"sqlrs": {…}}}`. */
export function didChangeSettings(get: SettingGetter): DidChangeSettings {
  return { settings: { sqlrs: serverSettings(get) } };
}
