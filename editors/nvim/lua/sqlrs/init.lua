--- sqlrs for neovim 0.11+: configures the language server sqlrs-lsp, keeps its
--- code lenses fresh, writes run results into the scratch buffer
--- `sqlrs://results`, puts each file's cache status in `vim.b.sqlrs_status`,
--- and defines :SqlrsRun, :SqlrsPrepare, :SqlrsPlan and :SqlrsCancel.
local codelens = require("sqlrs.codelens")
local protocol = require("sqlrs.protocol")
local render = require("sqlrs.render")
local results = require("sqlrs.results")

local M = {}

--- What `setup()` uses for every option it is not given.
M.defaults = {
  --- How to start the server.
  cmd = { "sqlrs-lsp" },
  filetypes = { "sql" },
  --- A workspace is the nearest folder holding one of these.
  root_markers = { ".sqlrs" },
  --- Server settings (docs/lsp-extensions.md): defaultAlias, instanceName,
  --- rowLimit, sqlrsPath. Sent as initializationOptions and as `settings.sqlrs`.
  settings = {},
  --- Where the results buffer opens: a split "below", "above", "left" or
  --- "right" of the whole screen, `size` lines (or columns) big.
  results = { position = "below", size = 15 },
  --- Call `vim.lsp.enable("sqlrs")` (false when nvim-lspconfig starts the server).
  enable = true,
}

--- The options in force (defaults merged with what `setup()` was given).
M.options = vim.deepcopy(M.defaults)

--- uri -> alias -> the latest `sqlrs/fileStatus` payload.
local statuses = {}
--- `<client id>:<runId>` of the last result written to the results buffer
--- (run ids start again when the server restarts; client ids do not).
local last_shown

local function notify(msg, level)
  vim.notify("sqlrs: " .. msg, level or vim.log.levels.INFO)
end

--- Writes a run result of client `client_id` into the results buffer (once
--- per run: it arrives both as the command's reply and as `sqlrs/results`).
function M.show_result(payload, client_id)
  local key = string.format("%s:%s", client_id, payload.runId)
  if key == last_shown then
    return
  end
  last_shown = key
  results.show(render.result(payload), M.options.results)
end

--- The buffer currently showing `uri`, if any.
local function buffer_of(uri)
  local ok, fname = pcall(vim.uri_to_fname, uri)
  if not ok then
    return nil
  end
  for _, b in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_get_name(b) == fname then
      return b
    end
  end
end

--- The statuses of all chain files, one list.
local function all_statuses()
  local list = {}
  for _, by_alias in pairs(statuses) do
    for _, s in pairs(by_alias) do
      list[#list + 1] = s
    end
  end
  return list
end

--- Sets `vim.b.sqlrs_status` of the buffer showing `uri` (when open) and
--- `vim.g.sqlrs_status`, the worst status of the project.
local function apply_status(uri)
  local buf = buffer_of(uri)
  if buf then
    vim.b[buf].sqlrs_status = render.status(vim.tbl_values(statuses[uri] or {}))
  end
  local worst = render.worst(all_statuses())
  vim.g.sqlrs_status = worst and render.status({ worst }) or ""
  vim.cmd.redrawstatus({ bang = true })
end

--- Statusline component: the current buffer's status, else the project's.
---@return string
function M.statusline()
  local s = vim.b.sqlrs_status
  if s and s ~= "" then
    return s
  end
  return vim.g.sqlrs_status or ""
end

local function on_results(_, payload, ctx)
  vim.schedule(function()
    M.show_result(payload, ctx.client_id)
  end)
end

local function on_file_status(_, payload)
  statuses[payload.uri] = statuses[payload.uri] or {}
  statuses[payload.uri][payload.alias or ""] = payload
  vim.schedule(function()
    apply_status(payload.uri)
  end)
end

--- The `vim.lsp.config` table for sqlrs-lsp (also what nvim-lspconfig users
--- pass as their server's config).
---@param opts? table options as for `setup()`; defaults to those in force
---@return vim.lsp.Config
function M.config(opts)
  opts = vim.tbl_deep_extend("force", M.options, opts or {})
  local settings = vim.tbl_isempty(opts.settings) and vim.empty_dict() or opts.settings
  return {
    cmd = opts.cmd,
    filetypes = opts.filetypes,
    root_markers = opts.root_markers,
    init_options = settings,
    settings = { sqlrs = settings },
    capabilities = { workspace = { codeLens = { refreshSupport = true } } },
    handlers = {
      [protocol.methods.results] = on_results,
      [protocol.methods.file_status] = on_file_status,
      ["workspace/codeLens/refresh"] = codelens.on_refresh,
    },
  }
end

--- The sqlrs client attached to buffer `bufnr`, or nil after telling the user.
---@return vim.lsp.Client?
local function client_for(bufnr)
  local client = vim.lsp.get_clients({ bufnr = bufnr, name = protocol.server })[1]
  if not client then
    notify(
      "sqlrs-lsp is not attached to this buffer: open a .sql file inside a workspace (a folder holding .sqlrs/, made by `sqlrs init`), and check :checkhealth vim.lsp",
      vim.log.levels.ERROR
    )
  end
  return client
end

--- Any running sqlrs client (for commands that need no document).
local function any_client()
  return vim.lsp.get_clients({ bufnr = 0, name = protocol.server })[1]
    or vim.lsp.get_clients({ name = protocol.server })[1]
end

--- Runs a server command with its one argument object; `on_result` gets its reply.
local function execute(client, command, argument, on_result, bufnr)
  local ok = client:request("workspace/executeCommand", {
    command = command,
    -- An empty table would go out as `[]`: send `{}`.
    arguments = { vim.tbl_isempty(argument) and vim.empty_dict() or argument },
  }, function(err, result)
    if err then
      notify(command .. " failed: " .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
    elseif on_result then
      on_result(result)
    end
  end, bufnr)
  if not ok then
    notify(
      "sqlrs-lsp is not running: read its log (:checkhealth vim.lsp names it), then reopen the file to start it again",
      vim.log.levels.ERROR
    )
  end
end

--- Runs the statement at the cursor of the current buffer; the result goes to
--- the results buffer.
function M.run()
  local bufnr = vim.api.nvim_get_current_buf()
  local client = client_for(bufnr)
  if not client then
    return
  end
  local line = vim.api.nvim_win_get_cursor(0)[1] - 1
  execute(client, protocol.commands.run_statement, {
    uri = vim.uri_from_bufnr(bufnr),
    line = line,
  }, function(result)
    if type(result) == "table" and result.runId then
      vim.schedule(function()
        M.show_result(result, client.id)
      end)
    end
  end, bufnr)
end

--- Runs an alias command (`sqlrs.prepare`, `sqlrs.showPlan`) for the
--- workspace of the current buffer; the server shows its answer.
local function alias_command(command, alias)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = any_client()
  if not client then
    client_for(bufnr)
    return
  end
  local argument = { alias = alias }
  if vim.api.nvim_buf_get_name(bufnr) ~= "" and vim.bo[bufnr].buftype == "" then
    argument.uri = vim.uri_from_bufnr(bufnr)
  end
  execute(client, command, argument)
end

--- Prepares `alias` (default: the server's defaultAlias); the server shows the DSN.
---@param alias? string
function M.prepare(alias)
  alias_command(protocol.commands.prepare, alias)
end

--- Shows the plan of `alias` (default: the server's defaultAlias).
---@param alias? string
function M.plan(alias)
  alias_command(protocol.commands.show_plan, alias)
end

--- Cancels run `run_id` (as the results buffer names it), or every running one.
---@param run_id? string
function M.cancel(run_id)
  local client = any_client()
  if not client then
    client_for(0)
    return
  end
  execute(client, protocol.commands.cancel, { runId = run_id }, function(result)
    local cancelled = type(result) == "table" and result.cancelled
    notify(cancelled and "cancelled" or "no statement was running")
  end)
end

local function optional(args)
  return args.args ~= "" and args.args or nil
end

local function define_commands()
  local command = vim.api.nvim_create_user_command
  command("SqlrsRun", M.run, { desc = "sqlrs: run the statement at the cursor" })
  command("SqlrsPrepare", function(a)
    M.prepare(optional(a))
  end, { nargs = "?", desc = "sqlrs: prepare an alias (default: defaultAlias) and show its DSN" })
  command("SqlrsPlan", function(a)
    M.plan(optional(a))
  end, { nargs = "?", desc = "sqlrs: show the plan of an alias (default: defaultAlias)" })
  command("SqlrsCancel", function(a)
    M.cancel(optional(a))
  end, { nargs = "?", desc = "sqlrs: cancel a running statement (a runId, or every running one)" })
end

local function on_attach(bufnr, client)
  vim.b[bufnr].sqlrs_status = render.status(vim.tbl_values(statuses[vim.uri_from_bufnr(bufnr)] or {}))
  local group = vim.api.nvim_create_augroup("sqlrs_buffer_" .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ "BufEnter", "InsertLeave", "BufWritePost", "TextChanged" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      codelens.refresh(client, bufnr)
    end,
  })
  vim.api.nvim_create_autocmd("LspDetach", {
    group = group,
    buffer = bufnr,
    callback = function(ev)
      if ev.data.client_id == client.id then
        vim.api.nvim_del_augroup_by_id(group)
      end
    end,
  })
  codelens.refresh(client, bufnr)
end

--- Configures sqlrs-lsp for neovim 0.11+ and sets up the commands, the
--- results buffer, lens refresh and statuses.
---@param opts? table see `M.defaults`
function M.setup(opts)
  if vim.fn.has("nvim-0.11") == 0 then
    notify("needs neovim 0.11 or later (vim.lsp.config); this is " .. tostring(vim.version()), vim.log.levels.ERROR)
    return
  end
  M.options = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  define_commands()
  vim.api.nvim_create_autocmd("LspAttach", {
    group = vim.api.nvim_create_augroup("sqlrs", { clear = true }),
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      if client and client.name == protocol.server then
        on_attach(ev.buf, client)
      end
    end,
  })
  vim.lsp.config(protocol.server, M.config())
  if M.options.enable then
    vim.lsp.enable(protocol.server)
  end
end

return M
