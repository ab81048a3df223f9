--- Pure rendering of sqlrs payloads into text: run results (`sqlrs/results`)
--- as buffer lines, file statuses (`sqlrs/fileStatus`) as statusline text.
--- Touches no editor state, so it can be tested headless.
local protocol = require("sqlrs.protocol")

local M = {}

--- How SQL NULL is shown in a table cell.
M.NULL = "NULL"

--- PostgreSQL types whose values are right-aligned, as psql does.
local NUMERIC = {
  int2 = true,
  int4 = true,
  int8 = true,
  float4 = true,
  float8 = true,
  numeric = true,
  oid = true,
  money = true,
}

--- JSON null arrives as nil (in objects) or vim.NIL (in arrays).
local function is_null(v)
  return v == nil or v == vim.NIL
end

--- One table cell on one line: line breaks become ↵, tabs spaces.
local function cell(v)
  if is_null(v) then
    return M.NULL
  end
  local s = tostring(v):gsub("\r\n", "↵"):gsub("[\r\n]", "↵"):gsub("\t", "    ")
  return s
end

local function width(s)
  return vim.api.nvim_strwidth(s)
end

local function pad(s, w, align)
  local gap = w - width(s)
  if align == "right" then
    return string.rep(" ", gap) .. s
  elseif align == "centre" then
    local left = math.floor(gap / 2)
    return string.rep(" ", left) .. s .. string.rep(" ", gap - left)
  end
  return s .. string.rep(" ", gap)
end

--- Appends `text` to `lines`, one entry per line of it.
local function push(lines, text)
  for _, l in ipairs(vim.split(tostring(text), "\r?\n")) do
    lines[#lines + 1] = l
  end
end

--- A psql-style aligned table: centred header, a rule, one line per row;
--- NULL shown as `NULL`, numbers right-aligned, trailing blanks trimmed.
---@param columns {name: string, type?: string}[]
---@param rows any[][]
---@return string[]
function M.table(columns, rows)
  local widths, header, body = {}, {}, {}
  for i, c in ipairs(columns) do
    header[i] = cell(c.name)
    widths[i] = width(header[i])
  end
  for r, row in ipairs(rows) do
    local cells = {}
    for i = 1, #columns do
      cells[i] = cell(row[i])
      widths[i] = math.max(widths[i], width(cells[i]))
    end
    body[r] = cells
  end
  local function line(cells, align_of)
    local parts = {}
    for i, text in ipairs(cells) do
      parts[i] = " " .. pad(text, widths[i], align_of(i)) .. " "
    end
    return (table.concat(parts, "|"):gsub("%s+$", ""))
  end
  local rule = {}
  for i, w in ipairs(widths) do
    rule[i] = string.rep("-", w + 2)
  end
  local lines = {
    line(header, function()
      return "centre"
    end),
    table.concat(rule, "+"),
  }
  for _, cells in ipairs(body) do
    lines[#lines + 1] = line(cells, function(i)
      return NUMERIC[columns[i].type] and "right" or "left"
    end)
  end
  return lines
end

--- One result set: its table and row count (or the truncation note) when it
--- has columns, then its command tag.
---@return string[]
function M.result_set(set)
  local lines = {}
  local columns = set.columns or {}
  if #columns > 0 then
    local rows = set.rows or {}
    vim.list_extend(lines, M.table(columns, rows))
    local total = is_null(set.rowCount) and #rows or set.rowCount
    if set.truncated == true then
      lines[#lines + 1] = string.format(
        "(%d of %d rows shown: rowLimit reached)",
        #rows,
        total
      )
    else
      lines[#lines + 1] = string.format("(%d %s)", total, total == 1 and "row" or "rows")
    end
  end
  if not is_null(set.command) and set.command ~= "" then
    lines[#lines + 1] = set.command
  end
  return lines
end

--- The last segment of a file URI's path.
local function file_name(uri)
  if is_null(uri) then
    return nil
  end
  local name = uri:match("([^/]+)$")
  return name and (name:gsub("%%(%x%x)", function(h)
    return string.char(tonumber(h, 16))
  end))
end

--- `q.sql:11-13` (1-based lines) for a result's document and range.
local function location(p)
  local name = file_name(p.uri)
  if not name then
    return nil
  end
  local range = p.range
  if is_null(range) then
    return name
  end
  local first, last = range.start.line + 1, range["end"].line + 1
  if first == last then
    return string.format("%s:%d", name, first)
  end
  return string.format("%s:%d-%d", name, first, last)
end

--- Milliseconds as `3.2 ms` or `1.25 s`.
function M.elapsed(ms)
  if ms < 1000 then
    return string.format("%.1f ms", ms)
  end
  return string.format("%.2f s", ms / 1000)
end

--- The first 12 characters of an id, as the status lens shows state ids.
local function short(id)
  return id:sub(1, 12)
end

--- A `sqlrs/results` payload as the lines of the results buffer: where it
--- ran, the executed SQL, each result set, notices, the error (SQLSTATE and
--- 1-based line:col), then elapsed time, state and instance.
---@return string[]
function M.result(p)
  local lines = {}
  local head = { location(p) }
  if not is_null(p.alias) then
    head[#head + 1] = "alias " .. p.alias
  end
  if #head > 0 then
    lines[1] = "-- " .. table.concat(head, " · ")
  end
  push(lines, p.sql or "")
  for _, set in ipairs(p.results or {}) do
    lines[#lines + 1] = ""
    vim.list_extend(lines, M.result_set(set))
  end
  local notices = p.notices or {}
  if #notices > 0 then
    lines[#lines + 1] = ""
    for _, n in ipairs(notices) do
      push(lines, string.format("%s: %s", is_null(n.severity) and "NOTICE" or n.severity, n.message))
    end
  end
  local err = p.error
  if not is_null(err) then
    lines[#lines + 1] = ""
    local where = ""
    if not is_null(err.position) then
      where = string.format(" at %d:%d", err.position.line + 1, err.position.character + 1)
    end
    local code = is_null(err.code) and "" or " " .. err.code
    push(lines, string.format("ERROR%s%s: %s", code, where, err.message))
    for _, extra in ipairs({ "detail", "hint" }) do
      if not is_null(err[extra]) and err[extra] ~= "" then
        push(lines, extra:upper() .. ": " .. err[extra])
      end
    end
  end
  local tail = {}
  if not is_null(p.elapsedMs) then
    tail[#tail + 1] = M.elapsed(p.elapsedMs)
  end
  if not is_null(p.stateId) then
    tail[#tail + 1] = "state " .. short(p.stateId)
  end
  if not is_null(p.instanceId) then
    tail[#tail + 1] = "instance " .. p.instanceId
  end
  if not is_null(p.runId) then
    tail[#tail + 1] = "run " .. p.runId
  end
  if #tail > 0 then
    lines[#lines + 1] = ""
    lines[#lines + 1] = "-- " .. table.concat(tail, " · ")
  end
  return lines
end

--- One alias's status of a file: `cached 9f3e7750abcd`, `stale`,
--- `building 1/2`, `failed: message`, `invalid: message`.
function M.status_word(s)
  local text = s.status
  if s.status == "cached" and not is_null(s.stateId) then
    text = text .. " " .. short(s.stateId)
  elseif s.status == "building" and not is_null(s.step) and not is_null(s.total) then
    text = string.format("%s %d/%d", text, s.step, s.total)
  elseif not is_null(s.message) and s.message ~= "" then
    text = text .. ": " .. s.message
  end
  return text
end

--- Statusline text for a file from its `sqlrs/fileStatus` payloads (one per
--- alias): `sqlrs: cached 9f3e7750abcd`; the alias is named when there are
--- several. Empty when there is none.
---@param statuses table[]
---@return string
function M.status(statuses)
  if #statuses == 0 then
    return ""
  end
  local sorted = vim.deepcopy(statuses)
  table.sort(sorted, function(a, b)
    return tostring(a.alias) < tostring(b.alias)
  end)
  local parts = {}
  for i, s in ipairs(sorted) do
    local word = M.status_word(s)
    parts[i] = (#sorted > 1 and not is_null(s.alias)) and (s.alias .. " " .. word) or word
  end
  return "sqlrs: " .. table.concat(parts, ", ")
end

local RANK = {}
for i, word in ipairs(protocol.statuses) do
  RANK[word] = i
end

--- The worst of several statuses (invalid > failed > building > stale >
--- cached), or nil when there is none.
function M.worst(statuses)
  local worst
  for _, s in ipairs(statuses) do
    if not worst or (RANK[s.status] or 0) > (RANK[worst.status] or 0) then
      worst = s
    end
  end
  return worst
end

return M
