#!/usr/bin/env bash
# Builds the book (docs/book, mdBook) into target/book. Installs mdbook with cargo into
# ~/.cargo/bin when it is missing (a few minutes of compiling, once).
#
#   scripts/book.sh            # build
#   scripts/book.sh serve      # build, serve on localhost:3000 and rebuild on changes
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mdbook >/dev/null; then
  export PATH="$HOME/.cargo/bin:$PATH"
  command -v mdbook >/dev/null || cargo install mdbook --locked
fi
if [ "${1:-build}" = serve ]; then
  exec mdbook serve docs/book
fi
mdbook build docs/book
echo "the book is in target/book/index.html"
