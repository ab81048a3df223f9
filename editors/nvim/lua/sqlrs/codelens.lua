--- Code lens refresh for sqlrs-lsp buffers. neovim 0.11 neither answers
--- `workspace/codeLens/refresh` nor retries a refresh asked for while one is
--- in flight (`vim.lsp.codelens.refresh` drops it), so status lenses could
--- stay old: here a refresh asked for during a request runs again when that
--- request ends, and the server's refresh request re-asks every attached buffer.
local M = {}

--- bufnr -> true while a request is in flight, "again" when another was asked for meanwhile.
local inflight = {}

--- Asks `client` for the lenses of `bufnr` and displays them.
---@param client vim.lsp.Client
---@param bufnr integer
function M.refresh(client, bufnr)
  if not vim.api.nvim_buf_is_loaded(bufnr) then
    return
  end
  if inflight[bufnr] then
    inflight[bufnr] = "again"
    return
  end
  inflight[bufnr] = true
  local params = { textDocument = vim.lsp.util.make_text_document_params(bufnr) }
  local sent = client:request("textDocument/codeLens", params, function(err, result, ctx)
    local again = inflight[bufnr] == "again"
    inflight[bufnr] = nil
    if vim.api.nvim_buf_is_loaded(bufnr) then
      vim.lsp.codelens.on_codelens(err, result, ctx)
      if again then
        M.refresh(client, bufnr)
      end
    end
  end, bufnr)
  if not sent then
    inflight[bufnr] = nil
  end
end

--- Refreshes every buffer attached to `client`.
---@param client vim.lsp.Client
function M.refresh_all(client)
  for bufnr in pairs(client.attached_buffers) do
    M.refresh(client, bufnr)
  end
end

--- Handler of the server's `workspace/codeLens/refresh` request.
function M.on_refresh(_, _, ctx)
  local client = vim.lsp.get_client_by_id(ctx.client_id)
  if client then
    vim.schedule(function()
      M.refresh_all(client)
    end)
  end
  return vim.NIL
end

return M
