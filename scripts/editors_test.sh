#!/usr/bin/env bash
# The editor grammars, tested as editors use them:
# - tree-sitter (editors/tree-sitter-pcg): regenerates the parser (and fails if the committed
#   one differs), runs the corpus and highlight tests (`tree-sitter test`) and parses every
#   .pcg file of the repository without an error;
# - VS Code's TextMate grammar (editors/vscode): tokenizes the examples and the stdlib with
#   vscode-textmate and vscode-oniguruma, as VS Code does, and checks the scopes (`node --test`).
#
# Needs a C compiler, node and npm. The `tree-sitter` command is installed with
# `cargo install tree-sitter-cli` when it is missing (several minutes of compiling, once; npm's
# tree-sitter-cli downloads its binary from GitHub, which this setup cannot reach).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v tree-sitter >/dev/null || cargo install tree-sitter-cli --locked

echo "== tree-sitter: generate, corpus and highlight tests"
(
  cd editors/tree-sitter-pcg
  tree-sitter generate
  git diff --exit-code -- src || { echo "the committed parser is stale: commit editors/tree-sitter-pcg/src" >&2; exit 1; }
  tree-sitter test
)
echo "== tree-sitter: every .pcg file of the repository parses"
files=()
while IFS= read -r f; do files+=("$PWD/$f"); done < <(git ls-files 'examples/*.pcg' 'stdlib/*.pcg' 'benches/*.pcg' 'tests/random_regressions/*.pcg' 'tests/ops/*.pcg')
(cd editors/tree-sitter-pcg && tree-sitter parse --quiet "${files[@]}")
echo "${#files[@]} files parsed"

echo "== VS Code: the TextMate grammar"
(
  cd editors/vscode
  npm install --no-audit --no-fund --no-save --silent vscode-textmate@9 vscode-oniguruma@2
  node --test test/
)
