--- The neovim end-to-end scenario of tests/tests/nvim.rs, run headless:
---
---   nvim --clean --headless -l e2e.lua CONFIG.json
---
--- CONFIG: {"report": path, "cmd": [sqlrs-lsp, …], "settings": {…},
--- "chain_file": path, "append_line": text, "query_file": path,
--- "runs": [0-based line, …], "lens_run": 0-based line,
--- "run_lenses": n, "attach_timeout_ms", "lens_timeout_ms", "run_timeout_ms"}.
---
--- Sets the module up as a user would, opens the chain file and waits for
--- its status lens to say `cached` (refreshed by the module alone: this script
--- never asks for lenses), appends `append_line` to it and saves, waits for
--- the lens to say `cached` with another state, opens the query file, waits for its Run lenses,
--- then runs :SqlrsRun at each line, and the Run lens at `lens_run`, and
--- waits for the results buffer to change. Everything it sees goes to the JSON report; a wait that times out
--- ends the script with exit code 1 and the report's `error` saying what it
--- waited for and what it saw.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*)/test/[^/]+$")
vim.opt.rtp:prepend(here)
vim.cmd("filetype on")

local cfg = vim.json.decode(table.concat(vim.fn.readfile(arg[1]), "\n"))
local protocol = require("sqlrs.protocol")
local results = require("sqlrs.results")

local report = { notifications = {}, lens_history = {}, runs = {} }

vim.notify = function(msg, level)
  table.insert(report.notifications, { message = msg, level = level })
end
vim.lsp.log.set_level("debug")
report.lsp_log = vim.lsp.log.get_filename()

local function finish(code)
  vim.fn.writefile({ vim.json.encode(report) }, cfg.report)
  local clients = vim.lsp.get_clients()
  vim.lsp.stop_client(clients)
  vim.wait(5000, function()
    return #vim.lsp.get_clients() == 0
  end, 50)
  os.exit(code)
end

local Timeout = {}

--- Waits until `cond()` holds, or records what `seen()` returns and stops.
local function wait(what, timeout_ms, cond, seen)
  if not vim.wait(timeout_ms, cond, 100) then
    error({
      [Timeout] = string.format(
        "timed out after %d ms waiting for %s; saw: %s",
        timeout_ms,
        what,
        vim.inspect(seen())
      ),
    })
  end
end

local function lenses(buf)
  local list = {}
  for _, l in ipairs(vim.lsp.codelens.get(buf)) do
    list[#list + 1] = { line = l.range.start.line, title = l.command and l.command.title or "" }
  end
  table.sort(list, function(a, b)
    return a.line < b.line or (a.line == b.line and a.title < b.title)
  end)
  return list
end

local function attached(buf)
  return #vim.lsp.get_clients({ bufnr = buf, name = protocol.server }) > 0
end

local function results_buffers()
  local found = {}
  for _, b in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_get_name(b) == results.NAME then
      found[#found + 1] = b
    end
  end
  return found
end

local function results_tick()
  local b = results_buffers()[1]
  return b and vim.api.nvim_buf_get_changedtick(b) or -1
end

local function scenario()
  require("sqlrs").setup({ cmd = cfg.cmd, settings = cfg.settings })

  vim.cmd.edit(vim.fn.fnameescape(cfg.chain_file))
  local chain = vim.api.nvim_get_current_buf()
  report.chain_filetype = vim.bo[chain].filetype
  wait("sqlrs-lsp to attach to " .. cfg.chain_file, cfg.attach_timeout_ms, function()
    return attached(chain)
  end, function()
    return { filetype = vim.bo[chain].filetype, clients = #vim.lsp.get_clients() }
  end)

  -- The status lens at line 0 when it says cached (and is not `unlike`), recording every change seen.
  local last
  local function cached_lens(unlike)
    local now = lenses(chain)
    local key = vim.json.encode(now)
    if key ~= last then
      last = key
      report.lens_history[#report.lens_history + 1] = now
    end
    for _, l in ipairs(now) do
      if l.line == 0 and l.title:find("sqlrs: cached", 1, true) and l.title ~= unlike then
        return l.title
      end
    end
  end
  local function history()
    return report.lens_history
  end
  wait("a `sqlrs: cached` status lens at line 0 of " .. cfg.chain_file, cfg.lens_timeout_ms, function()
    return cached_lens() ~= nil
  end, history)
  report.first_cached_lens = cached_lens()

  -- Edit and save the chain file: the lens must follow by itself.
  vim.api.nvim_buf_set_lines(chain, -1, -1, false, { cfg.append_line })
  local saved = vim.uv.hrtime()
  vim.cmd.write()
  wait(
    "the status lens of " .. cfg.chain_file .. " to say cached with a new state after the save",
    cfg.lens_timeout_ms,
    function()
      return cached_lens(report.first_cached_lens) ~= nil
    end,
    history
  )
  report.save_to_lens_ms = (vim.uv.hrtime() - saved) / 1e6
  report.chain_lenses = lenses(chain)

  -- `sqlrs: cached · <12 hex digits> · …` names the state the status must name too.
  local state = cached_lens(report.first_cached_lens):match("cached · (%x+)") or ""
  wait("vim.b.sqlrs_status of " .. cfg.chain_file .. " to say cached " .. state, cfg.run_timeout_ms, function()
    return (vim.b[chain].sqlrs_status or ""):find("cached " .. state, 1, true) ~= nil
  end, function()
    return { b = vim.b[chain].sqlrs_status, g = vim.g.sqlrs_status }
  end)
  report.chain_status = vim.b[chain].sqlrs_status
  report.project_status = vim.g.sqlrs_status

  vim.cmd.edit(vim.fn.fnameescape(cfg.query_file))
  local query = vim.api.nvim_get_current_buf()
  local query_win = vim.api.nvim_get_current_win()
  wait(cfg.run_lenses .. " Run lenses in " .. cfg.query_file, cfg.attach_timeout_ms, function()
    local n = 0
    for _, l in ipairs(lenses(query)) do
      if l.title:find("Run", 1, true) then
        n = n + 1
      end
    end
    return n == cfg.run_lenses
  end, function()
    return { attached = attached(query), lenses = lenses(query) }
  end)
  report.query_lenses = lenses(query)

  -- Each `runs` line through :SqlrsRun, then `lens_run` through the Run lens
  -- as neovim itself runs lenses (workspace/executeCommand, no module code).
  local steps = {}
  for _, line in ipairs(cfg.runs) do
    steps[#steps + 1] = { line = line, via = "SqlrsRun" }
  end
  steps[#steps + 1] = { line = cfg.lens_run, via = "lens" }
  for _, step in ipairs(steps) do
    local line = step.line
    vim.api.nvim_set_current_win(query_win)
    vim.api.nvim_win_set_cursor(query_win, { line + 1, 0 })
    local before = results_tick()
    if step.via == "lens" then
      vim.lsp.codelens.run()
    else
      vim.cmd("SqlrsRun")
    end
    wait("the results buffer to change after running line " .. line .. " via " .. step.via, cfg.run_timeout_ms, function()
      return results_tick() > before
    end, function()
      return { buffer = results.lines(), notifications = report.notifications }
    end)
    local buf = results_buffers()[1]
    report.runs[#report.runs + 1] = {
      line = line,
      via = step.via,
      lines = results.lines(),
      results_buffers = #results_buffers(),
      windows = #vim.fn.win_findbuf(buf),
      focus_kept = vim.api.nvim_get_current_win() == query_win,
      modifiable = vim.bo[buf].modifiable,
      buftype = vim.bo[buf].buftype,
    }
  end
end

local ok, err = xpcall(scenario, function(e)
  if type(e) == "table" and e[Timeout] then
    return e[Timeout]
  end
  return debug.traceback(tostring(e), 2)
end)
if not ok then
  report.error = err
end
finish(ok and 0 or 1)
