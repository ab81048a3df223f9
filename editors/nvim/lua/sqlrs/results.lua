--- The one reusable scratch buffer `sqlrs://results`: created on first use,
--- shown in a split when no window of the current tab shows it, its text
--- replaced on every run.
local M = {}

--- The results buffer's name.
M.NAME = "sqlrs://results"

local bufnr

--- The results buffer, created (unlisted, no file, no swap) when missing.
---@return integer
function M.buffer()
  if bufnr and vim.api.nvim_buf_is_valid(bufnr) then
    return bufnr
  end
  for _, b in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_get_name(b) == M.NAME then
      bufnr = b
      return b
    end
  end
  bufnr = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_name(bufnr, M.NAME)
  vim.bo[bufnr].bufhidden = "hide"
  vim.bo[bufnr].filetype = "sqlrs_results"
  vim.bo[bufnr].modifiable = false
  return bufnr
end

--- A window of the current tab showing `buf`, if any.
local function window_of(buf)
  for _, win in ipairs(vim.api.nvim_tabpage_list_wins(0)) do
    if vim.api.nvim_win_get_buf(win) == buf then
      return win
    end
  end
end

--- Replaces the buffer's text with `lines` and makes sure a window shows it
--- (a split at `opts.position` — "below", "above", "left" or "right" of the
--- whole screen — `opts.size` lines or columns big), without moving the cursor.
---@param lines string[]
---@param opts {position: string, size: integer}
---@return integer buf, integer win
function M.show(lines, opts)
  local buf = M.buffer()
  vim.bo[buf].modifiable = true
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].modifiable = false
  vim.bo[buf].modified = false
  local win = window_of(buf)
  if not win then
    local vertical = opts.position == "left" or opts.position == "right"
    win = vim.api.nvim_open_win(buf, false, {
      split = opts.position,
      win = -1,
      height = (not vertical) and opts.size or nil,
      width = vertical and opts.size or nil,
    })
    vim.wo[win].wrap = false
    vim.wo[win].number = false
    vim.wo[win].relativenumber = false
    vim.wo[win].spell = false
  end
  vim.api.nvim_win_set_cursor(win, { 1, 0 })
  return buf, win
end

--- The buffer's current text (empty when it does not exist yet).
---@return string[]
function M.lines()
  if not (bufnr and vim.api.nvim_buf_is_valid(bufnr)) then
    return {}
  end
  return vim.api.nvim_buf_get_lines(bufnr, 0, -1, false)
end

return M
