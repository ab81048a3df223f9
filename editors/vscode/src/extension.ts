// VS Code entry point: starts sqlrs-lsp over stdio and wires its results, file statuses and commands to the editor.
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  LanguageClient,
  type LanguageClientOptions,
  type ServerOptions,
  type StaticFeature,
  type DynamicFeature,
  TransportKind,
} from "vscode-languageclient/node";
import { findServer, type Discovery } from "./discovery";
import {
  CANCEL,
  CMD_CANCEL,
  CMD_PREPARE,
  CMD_RESTART_DAEMON,
  CMD_RUN_STATEMENT,
  CMD_SHOW_PLAN,
  EXECUTE,
  FILE_STATUS,
  RESULTS,
  SETTINGS_SECTION,
  type AliasArgs,
  type CancelParams,
  type CancelResult,
  type ExecuteParams,
  type FileStatus,
  type RunResult,
  type RunStatementArgs,
} from "./protocol";
import { clampPage, renderDocument, type ViewMessage, type ViewState } from "./render";
import { didChangeSettings, serverSettings } from "./settings";
import { StatusBoard } from "./status";

const RESULTS_VIEW = "sqlrs.results";

/**
 * A language client that leaves `workspace/executeCommand` commands to this extension: it registers
 * `sqlrs.*` itself (so they work, with a clear message, even when the server is missing) and
 * forwards them to the server, which would otherwise clash with the client's own registration.
 */
class SqlrsClient extends LanguageClient {
  override registerFeature(feature: StaticFeature | DynamicFeature<unknown>): void {
    const method = (feature as Partial<DynamicFeature<unknown>>).registrationType?.method;
    if (method === ExecuteCommandRequest.method) {
      return;
    }
    super.registerFeature(feature);
  }
}

/** The bottom-panel results view, reused for every run. */
class ResultsView implements vscode.WebviewViewProvider {
  private view: vscode.WebviewView | undefined;
  private state: ViewState = { kind: "empty" };

  constructor(private readonly onMessage: (message: ViewMessage, state: ViewState) => void) {}

  resolveWebviewView(view: vscode.WebviewView): void {
    this.view = view;
    view.webview.options = { enableScripts: true };
    view.webview.onDidReceiveMessage((message: ViewMessage) => this.onMessage(message, this.state));
    view.onDidDispose(() => {
      this.view = undefined;
    });
    this.render();
  }

  show(state: ViewState): void {
    this.state = state;
    this.render();
    if (this.view) {
      this.view.show(true);
    } else {
      void vscode.commands.executeCommand(`${RESULTS_VIEW}.focus`);
    }
  }

  shows(runId: string): boolean {
    return this.state.kind === "result" && this.state.run.runId === runId;
  }

  /** Shows another page of result set `result` of the current run. */
  page(result: number, page: number): void {
    if (this.state.kind !== "result") {
      return;
    }
    const set = this.state.run.results[result];
    if (!set) {
      return;
    }
    const pages = [...this.state.pages];
    pages[result] = clampPage(set, page);
    this.state = { ...this.state, pages };
    this.render();
  }

  private render(): void {
    if (this.view) {
      this.view.webview.html = renderDocument(this.state, nonce(), this.view.webview.cspSource);
    }
  }
}

class Extension {
  private client: SqlrsClient | undefined;
  private discovery: Discovery | undefined;
  /** Id of the run this window started and waits for. */
  private pending: string | undefined;
  private runs = 0;
  private readonly board = new StatusBoard();
  private readonly statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Left, 50);
  private readonly output = vscode.window.createOutputChannel("sqlrs");
  private readonly results = new ResultsView((message, state) => this.onViewMessage(message, state));

  constructor(context: vscode.ExtensionContext) {
    this.statusItem.command = CMD_SHOW_PLAN;
    context.subscriptions.push(
      this.statusItem,
      this.output,
      vscode.window.registerWebviewViewProvider(RESULTS_VIEW, this.results, {
        webviewOptions: { retainContextWhenHidden: true },
      }),
      vscode.commands.registerCommand(CMD_RUN_STATEMENT, (args?: RunStatementArgs) => this.runStatement(args)),
      vscode.commands.registerCommand(CMD_CANCEL, (args?: CancelParams) => this.cancel(args)),
      vscode.commands.registerCommand(CMD_PREPARE, (args?: AliasArgs) => this.serverCommand(CMD_PREPARE, [aliasArgs(args)])),
      vscode.commands.registerCommand(CMD_SHOW_PLAN, (args?: AliasArgs) => this.serverCommand(CMD_SHOW_PLAN, [aliasArgs(args)])),
      vscode.commands.registerCommand(CMD_RESTART_DAEMON, () => this.serverCommand(CMD_RESTART_DAEMON, [])),
      vscode.workspace.onDidChangeConfiguration((e) => this.onConfigurationChanged(e)),
    );
  }

  async start(): Promise<void> {
    const config = vscode.workspace.getConfiguration(SETTINGS_SECTION);
    this.discovery = findServer({
      setting: config.get<string>("serverPath"),
      env: process.env,
      platform: process.platform,
      isExecutable,
    });
    if (!this.discovery.ok) {
      this.output.appendLine(this.discovery.message);
      void this.showDiscoveryError(this.discovery.message);
      return;
    }
    this.output.appendLine(`starting ${this.discovery.path} (from ${this.discovery.source})`);
    const serverOptions: ServerOptions = {
      command: this.discovery.path,
      transport: TransportKind.stdio,
    };
    const clientOptions: LanguageClientOptions = {
      documentSelector: [
        { scheme: "file", language: "sql" },
        { scheme: "file", pattern: "**/*.s9s.yaml" },
      ],
      initializationOptions: serverSettings((key) => config.get(key)),
      outputChannel: this.output,
    };
    const client = new SqlrsClient("sqlrs", "sqlrs", serverOptions, clientOptions);
    // Every finished run, also those other clients or server commands started; while this window waits
    // for its own run, others do not replace it.
    client.onNotification(RESULTS, (run: RunResult) => {
      if (this.pending === undefined || this.pending === run.runId) {
        this.showRun(run);
      }
    });
    client.onNotification(FILE_STATUS, (status: FileStatus) => {
      this.board.update(status);
      this.updateStatusBar();
    });
    this.client = client;
    try {
      await client.start();
    } catch (error) {
      this.client = undefined;
      void vscode.window.showErrorMessage(`sqlrs: ${this.discovery.path} did not start: ${errorMessage(error)}`);
    }
  }

  async stop(): Promise<void> {
    this.pending = undefined;
    const client = this.client;
    this.client = undefined;
    this.board.clear();
    this.updateStatusBar();
    if (client) {
      await client.stop();
    }
  }

  private async runStatement(args?: RunStatementArgs): Promise<void> {
    const client = this.requireClient();
    const target = args?.uri !== undefined && args.line !== undefined ? args : cursorTarget();
    if (!client || !target) {
      if (client) {
        void vscode.window.showWarningMessage("sqlrs: open a SQL file and put the cursor inside a statement to run it.");
      }
      return;
    }
    const config = vscode.workspace.getConfiguration(SETTINGS_SECTION);
    const runId = `vscode-${process.pid}-${++this.runs}`;
    const params: ExecuteParams = {
      uri: target.uri,
      line: target.line,
      alias: nonEmpty(config.get<string>("defaultAlias")),
      instanceName: nonEmpty(config.get<string>("instanceName")),
      runId,
    };
    this.pending = runId;
    const label = `${vscode.Uri.parse(target.uri).path.split("/").pop()}:${target.line + 1}`;
    this.results.show({ kind: "running", label });
    try {
      const run = await client.sendRequest<RunResult>(EXECUTE, params);
      if (this.pending === runId) {
        this.showRun(run);
      }
    } catch (error) {
      if (this.pending === runId) {
        this.results.show({ kind: "failed", label, message: errorMessage(error) });
      }
    } finally {
      if (this.pending === runId) {
        this.pending = undefined;
      }
    }
  }

  /** Cancels `args.runId`, else the run this window started; the run's result then shows the cancellation. */
  private async cancel(args?: CancelParams): Promise<void> {
    const client = this.requireClient();
    if (!client) {
      return;
    }
    const runId = args?.runId ?? this.pending;
    if (!runId) {
      void vscode.window.showInformationMessage("sqlrs: no statement is running.");
      return;
    }
    try {
      const reply = await client.sendRequest<CancelResult>(CANCEL, { runId } satisfies CancelParams);
      if (!reply.cancelled) {
        void vscode.window.showInformationMessage(`sqlrs: run ${runId} is not running any more.`);
      }
    } catch (error) {
      void vscode.window.showErrorMessage(`sqlrs: could not cancel run ${runId}: ${errorMessage(error)}`);
    }
  }

  private async serverCommand(command: string, args: unknown[]): Promise<unknown> {
    const client = this.requireClient();
    if (!client) {
      return undefined;
    }
    try {
      return await client.sendRequest(ExecuteCommandRequest.type, { command, arguments: args });
    } catch (error) {
      void vscode.window.showErrorMessage(`sqlrs: ${command} failed: ${errorMessage(error)}`);
      return undefined;
    }
  }

  /** Shows a finished run, unless the view shows it already (it arrives as reply and as notification). */
  private showRun(run: RunResult): void {
    if (this.results.shows(run.runId)) {
      return;
    }
    this.results.show({ kind: "result", run, pages: run.results.map(() => 0) });
  }

  private onViewMessage(message: ViewMessage, state: ViewState): void {
    switch (message.type) {
      case "page":
        this.results.page(message.result, message.page);
        break;
      case "cancel":
        void this.cancel();
        break;
      case "reveal":
        if (state.kind === "result" && state.run.error?.position) {
          const { line, character } = state.run.error.position;
          const position = new vscode.Position(line, character);
          void vscode.window.showTextDocument(vscode.Uri.parse(state.run.uri), {
            selection: new vscode.Range(position, position),
          });
        }
        break;
    }
  }

  private updateStatusBar(): void {
    const summary = this.board.summary();
    if (!summary) {
      this.statusItem.hide();
      return;
    }
    this.statusItem.text = summary.text;
    this.statusItem.tooltip = `${summary.tooltip}\n\nClick to show the plan.`;
    this.statusItem.backgroundColor =
      summary.status === "failed"
        ? new vscode.ThemeColor("statusBarItem.errorBackground")
        : summary.status === "invalid"
          ? new vscode.ThemeColor("statusBarItem.warningBackground")
          : undefined;
    this.statusItem.show();
  }

  private onConfigurationChanged(e: vscode.ConfigurationChangeEvent): void {
    if (e.affectsConfiguration(`${SETTINGS_SECTION}.serverPath`)) {
      void this.stop().then(() => this.start());
      return;
    }
    if (e.affectsConfiguration(SETTINGS_SECTION) && this.client?.isRunning()) {
      const config = vscode.workspace.getConfiguration(SETTINGS_SECTION);
      void this.client.sendNotification(
        DidChangeConfigurationNotification.type,
        didChangeSettings((key) => config.get(key)),
      );
    }
  }

  /** The running client, or `undefined` after telling the user why there is none. */
  private requireClient(): SqlrsClient | undefined {
    if (this.client) {
      return this.client;
    }
    const message =
      this.discovery && !this.discovery.ok ? this.discovery.message : "sqlrs-lsp is not running: see the sqlrs output.";
    void this.showDiscoveryError(message);
    return undefined;
  }

  private async showDiscoveryError(message: string): Promise<void> {
    const open = "Open Settings";
    const choice = await vscode.window.showErrorMessage(`sqlrs: ${message}`, open);
    if (choice === open) {
      await vscode.commands.executeCommand("workbench.action.openSettings", "sqlrs.serverPath");
    }
  }
}

function cursorTarget(): RunStatementArgs | undefined {
  const editor = vscode.window.activeTextEditor;
  if (!editor) {
    return undefined;
  }
  return { uri: editor.document.uri.toString(), line: editor.selection.active.line };
}

/** The alias arguments of a lens, or the active document (which picks the workspace) for the palette. */
function aliasArgs(args?: AliasArgs): AliasArgs {
  if (args && (args.alias !== undefined || args.uri !== undefined)) {
    return args;
  }
  const uri = vscode.window.activeTextEditor?.document.uri;
  return uri?.scheme === "file" ? { uri: uri.toString() } : {};
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function nonEmpty(value: string | undefined): string | null {
  return value && value.trim() !== "" ? value.trim() : null;
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function nonce(): string {
  return crypto.randomBytes(18).toString("base64");
}

let extension: Extension | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  extension = new Extension(context);
  await extension.start();
}

export async function deactivate(): Promise<void> {
  await extension?.stop();
  extension = undefined;
}
