// sqlrs-lsp protocol names and payload types, mirrored from docs/lsp-extensions.md
// (defined once in sqlrs-lsp/src/ext.rs; a server test checks every name appears here).

// Custom requests and notifications.
export const EXECUTE = "sqlrs/execute";
export const RESULTS = "sqlrs/results";
export const CANCEL = "sqlrs/cancel";
export const FILE_STATUS = "sqlrs/fileStatus";

// Commands (`workspace/executeCommand`).
export const CMD_RUN_STATEMENT = "sqlrs.runStatement";
export const CMD_PREPARE = "sqlrs.prepare";
export const CMD_SHOW_PLAN = "sqlrs.showPlan";
export const CMD_CANCEL = "sqlrs.cancel";
export const CMD_RESTART_DAEMON = "sqlrs.restartDaemon";

// Code action kind of "Run statement at cursor".
export const CODE_ACTION_RUN = "source.sqlrs.run";

// Settings section and keys (initializationOptions and didChangeConfiguration).
export const SETTINGS_SECTION = "sqlrs";
export const SETTING_DEFAULT_ALIAS = "defaultAlias";
export const SETTING_INSTANCE_NAME = "instanceName";
export const SETTING_ROW_LIMIT = "rowLimit";
export const SETTING_SQLRS_PATH = "sqlrsPath";

// Values of `FileStatus.status`.
export const STATUS_CACHED = "cached";
export const STATUS_STALE = "stale";
export const STATUS_BUILDING = "building";
export const STATUS_FAILED = "failed";
export const STATUS_INVALID = "invalid";

export type Status =
  | typeof STATUS_CACHED
  | typeof STATUS_STALE
  | typeof STATUS_BUILDING
  | typeof STATUS_FAILED
  | typeof STATUS_INVALID;

/** Settings the server reads; every key optional. */
export interface ServerSettings {
  defaultAlias?: string;
  instanceName?: string;
  rowLimit?: number;
  sqlrsPath?: string;
}

/** `workspace/didChangeConfiguration` params as the server expects them. */
export interface DidChangeSettings {
  settings: { sqlrs: ServerSettings };
}

export interface Position {
  line: number;
  character: number;
}

export interface Range {
  start: Position;
  end: Position;
}

/** Arguments of `sqlrs.runStatement`. */
export interface RunStatementArgs {
  uri: string;
  line: number;
}

/** Arguments of `sqlrs.prepare` and `sqlrs.showPlan`. */
export interface AliasArgs {
  alias?: string;
  /** The document the command comes from: picks the workspace. */
  uri?: string;
}

/** Arguments of `sqlrs.cancel` and params of `sqlrs/cancel`; no `runId` cancels every running run. */
export interface CancelParams {
  runId?: string;
}

export interface CancelResult {
  cancelled: boolean;
}

/** Params of `sqlrs/execute`. */
export interface ExecuteParams {
  uri: string;
  line: number;
  alias?: string | null;
  instanceName?: string | null;
  /** The id the run gets, so the client can cancel it before the result arrives. */
  runId?: string;
}

export interface Column {
  name: string;
  /** Type name, e.g. `int4`; absent when it could not be described. */
  type?: string | null;
}

/** One result set; values are PostgreSQL's text form, `null` is SQL NULL. */
export interface ResultSet {
  columns: Column[];
  rows: (string | null)[][];
  rowCount: number;
  truncated: boolean;
  command?: string | null;
}

export interface Notice {
  severity: string;
  message: string;
}

export interface RunError {
  message: string;
  /** SQLSTATE; absent when the error did not come from PostgreSQL. */
  code?: string | null;
  detail?: string | null;
  hint?: string | null;
  /** Where in the document PostgreSQL pointed. */
  position?: Position | null;
}

/** Result of `sqlrs/execute`, payload of `sqlrs/results`. */
export interface RunResult {
  runId: string;
  uri: string;
  range: Range;
  sql: string;
  alias: string;
  stateId: string | null;
  instanceId: string | null;
  /** Set when the run used a named instance. */
  instanceName?: string | null;
  elapsedMs: number;
  results: ResultSet[];
  notices: Notice[];
  error: RunError | null;
}

/** Payload of `sqlrs/fileStatus`. */
export interface FileStatus {
  uri: string;
  alias: string;
  status: Status;
  stateId?: string | null;
  step?: number | null;
  total?: number | null;
  message?: string | null;
}
