--- Names of the sqlrs LSP extensions, as docs/lsp-extensions.md defines them
--- (sqlrs-lsp/src/ext.rs holds the server's copy; tests/tests/nvim.rs keeps them in step).
return {
  --- The name the server is configured under (`vim.lsp.config("sqlrs", …)`).
  server = "sqlrs",
  methods = {
    execute = "sqlrs/execute",
    results = "sqlrs/results",
    cancel = "sqlrs/cancel",
    file_status = "sqlrs/fileStatus",
  },
  commands = {
    run_statement = "sqlrs.runStatement",
    prepare = "sqlrs.prepare",
    show_plan = "sqlrs.showPlan",
    cancel = "sqlrs.cancel",
    restart_daemon = "sqlrs.restartDaemon",
  },
  --- The code action kind of "Run statement at cursor".
  code_action_run = "source.sqlrs.run",
  --- The status words of `sqlrs/fileStatus`, best first.
  statuses = { "cached", "stale", "building", "failed", "invalid" },
}
