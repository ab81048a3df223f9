--- Writes lua/sqlrs/protocol.lua as JSON, for the test in tests/tests/nvim.rs
--- that keeps its names in step with docs/lsp-extensions.md and the server:
---
---   nvim --clean --headless -l protocol.lua OUT.json
local here = debug.getinfo(1, "S").source:sub(2):match("(.*)/test/[^/]+$")
vim.opt.rtp:prepend(here)
vim.fn.writefile({ vim.json.encode(require("sqlrs.protocol")) }, arg[1])
