"""Copies the tables that the benchmark scripts write (docs/zoo.md, benches/peers/results.md,
docs/frontier.md, docs/backends.md, docs/exact.md, docs/modes.md, docs/variants.md, docs/autoencoder.md, docs/deep.md) into the
book's chapters (docs/book/src/*.md), between their markers (`<!-- zoo:begin -->` ...
`<!-- zoo:end -->`), wherever a chapter has them."""
import glob
import re

tables = {"zoo": "docs/zoo.md", "frontier": "docs/frontier.md", "peers": "benches/peers/results.md", "backends": "docs/backends.md", "exact": "docs/exact.md", "modes": "docs/modes.md", "variants": "docs/variants.md", "autoencoder": "docs/autoencoder.md", "deep": "docs/deep.md"}
for chapter in sorted(glob.glob("docs/book/src/*.md")):
    text = original = open(chapter).read()
    for name, path in tables.items():
        try:
            table = open(path).read().strip()
        except FileNotFoundError:
            continue
        text = re.sub(
            rf"<!-- {name}:begin -->.*<!-- {name}:end -->",
            lambda _: f"<!-- {name}:begin -->\n{table}\n<!-- {name}:end -->",
            text,
            flags=re.S,
        )
    if text != original:
        open(chapter, "w").write(text)
