--- Renders sqlrs payloads with lua/sqlrs/render.lua, headless, for the unit
--- test in tests/tests/nvim.rs:
---
---   nvim --clean --headless -l render.lua IN.json OUT.json
---
--- IN: {"results": [payload, …], "statuses": [[status, …], …]} (decoded as
--- the LSP client decodes messages); OUT: {"results": [[line, …], …],
--- "statuses": [text, …]}.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*)/test/[^/]+$")
vim.opt.rtp:prepend(here)
local render = require("sqlrs.render")

local input_path, output_path = arg[1], arg[2]
local input = vim.json.decode(table.concat(vim.fn.readfile(input_path), "\n"), { luanil = { object = true } })

local out = { results = {}, statuses = {} }
for i, payload in ipairs(input.results or {}) do
  out.results[i] = render.result(payload)
end
for i, list in ipairs(input.statuses or {}) do
  out.statuses[i] = render.status(list)
end
vim.fn.writefile({ vim.json.encode(out) }, output_path)
