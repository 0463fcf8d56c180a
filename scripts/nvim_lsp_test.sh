#!/usr/bin/env bash
# `pcg lsp` in a real editor: Neovim (Debian's `neovim` package), headless, with a small Lua
# configuration that starts the server on a copy of examples/mlp_digits.pcg with a shape
# mistake, prints the diagnostics, fixes the mistake and waits for them to clear, prints the
# hover on `let h`, the definition of the stdlib call `dense(...)`, the completions after `ta`
# and formats a mangled line. Fails (exit 1) if any of them is not what it should be.
#
#   scripts/nvim_lsp_test.sh          # builds pcg first; PCG=path/to/pcg to skip that
#
# Needs `nvim` (apt-get install neovim). Takes a few seconds once pcg is built.
set -euo pipefail
cd "$(dirname "$0")/.."
pcg=${PCG:-target/release/pcg}
[ -n "${PCG:-}" ] || cargo build --release --quiet
command -v nvim >/dev/null || { echo "nvim not found: apt-get install neovim" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed 's/w1: \[64, 64\]/w1: [63, 64]/' examples/mlp_digits.pcg >"$work/mlp.pcg"

cat >"$work/init.lua" <<'LUA'
local out = io.stdout
local function say(...) out:write(string.format(...) .. "\n") end
local function flat(s) return (s:gsub("\n", " | ")) end

vim.filetype.add({ extension = { pcg = "pcg" } })
vim.cmd("edit " .. os.getenv("PCG_FILE"))
local buf = vim.api.nvim_get_current_buf()
-- `vim.lsp.start_client` and `buf_attach_client` work from Neovim 0.5 on (Debian 12 has 0.7).
local client = vim.lsp.start_client({
  name = "pcg",
  cmd = { os.getenv("PCG_BIN"), "lsp" },
  root_dir = vim.fn.fnamemodify(os.getenv("PCG_FILE"), ":h"),
  cmd_env = { XDG_CACHE_HOME = os.getenv("PCG_CACHE") },
})
vim.lsp.buf_attach_client(buf, client)

local function wait_for(what, test)
  if not vim.wait(15000, test, 50) then
    say("TIMEOUT waiting for %s", what)
    vim.cmd("cquit 1")
  end
end

-- The mistake's diagnostic.
wait_for("diagnostics", function() return #vim.diagnostic.get(buf) > 0 end)
for _, d in ipairs(vim.diagnostic.get(buf)) do
  local code = d.code or (d.user_data and d.user_data.lsp and d.user_data.lsp.code)
  say("diagnostic %s line %d: %s", code, d.lnum + 1, flat(d.message))
end

local function request(method, line, character)
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(buf) },
    position = { line = line, character = character },
  }
  local replies = vim.lsp.buf_request_sync(buf, method, params, 15000) or {}
  for _, reply in pairs(replies) do
    if reply.result then return reply.result end
  end
end

local function line_of(pattern)
  for i, l in ipairs(vim.api.nvim_buf_get_lines(buf, 0, -1, false)) do
    if l:find(pattern, 1, true) then return i - 1, l end
  end
end

-- Fix it: the diagnostics clear.
local w1 = line_of("w1: [63, 64]")
local fixed = vim.api.nvim_buf_get_lines(buf, w1, w1 + 1, false)[1]:gsub("%[63, 64%]", "[64, 64]")
vim.api.nvim_buf_set_lines(buf, w1, w1 + 1, false, { fixed })
wait_for("the diagnostics to clear", function() return #vim.diagnostic.get(buf) == 0 end)
say("diagnostics after the fix: %d", #vim.diagnostic.get(buf))

-- Hover on `let h`.
local h = line_of("let h")
local hover = request("textDocument/hover", h, 8)
say("hover: %s", hover and flat(hover.contents.value) or "none")

-- Definition of `dense(...)`: a file of the stdlib.
local d, text = line_of("dense(h")
local def = request("textDocument/definition", d, text:find("dense", 1, true))
if def and def[1] then def = def[1] end
say("definition: %s line %d", def and def.uri or "none", def and def.range.start.line + 1 or 0)

-- Completion after `ta`.
local loss = line_of("loss mse")
vim.api.nvim_buf_set_lines(buf, loss, loss, false, { "    let z = ta" })
local items = request("textDocument/completion", loss, 14) or {}
items = items.items or items
local labels = {}
for _, item in ipairs(items) do labels[item.label] = true end
say("completion offers tanh: %s", tostring(labels["tanh"] == true))
vim.api.nvim_buf_set_lines(buf, loss, loss + 1, false, {})

-- Formatting a mangled line.
local o = line_of("let out")
vim.api.nvim_buf_set_lines(buf, o, o + 1, false, { "let out=dense( h,w2 ,b2 )" })
if vim.lsp.buf.format then
  vim.lsp.buf.format({ bufnr = buf, async = false, timeout_ms = 15000 })
else
  vim.lsp.buf.formatting_sync(nil, 15000)
end
say("formatted: %s", vim.api.nvim_buf_get_lines(buf, o, o + 1, false)[1])
vim.cmd("qa!")
LUA

output=$(PCG_FILE="$work/mlp.pcg" PCG_BIN="$(realpath "$pcg")" PCG_CACHE="$work/cache" \
  timeout 120 nvim --headless --clean -u "$work/init.lua" 2>&1)
echo "$output"
status=0
check() {
  if grep -qF -- "$1" <<<"$output"; then echo "ok: $2"; else echo "FAILED: $2" >&2; status=1; fi
}
line=$(grep -n "let h" examples/mlp_digits.pcg | head -n 1 | cut -d: -f1)
check "diagnostic E0201 line $line:" "the shape error's diagnostic, on the line of \`let h\`"
check "diagnostics after the fix: 0" "the diagnostics clear once fixed"
check "let h: [B, 64]" "hover on \`let h\` shows its shape"
check "/nn.pcg line" "definition of \`dense\` is in the stdlib's nn.pcg"
check "completion offers tanh: true" "completion after \`ta\` offers tanh"
check "formatted:     let out = dense(h, w2, b2)" "formatting"
exit $status
