"""Copies the tables that the benchmark scripts write (docs/zoo.md, benches/peers/results.md,
docs/frontier.md, docs/backends.md, docs/exact.md,
docs/modes.md, docs/variants.md) into README.md between their markers."""
import re

tables = {"zoo": "docs/zoo.md", "frontier": "docs/frontier.md", "peers": "benches/peers/results.md", "backends": "docs/backends.md", "exact": "docs/exact.md", "modes": "docs/modes.md", "variants": "docs/variants.md"}
readme = open("README.md").read()
for name, path in tables.items():
    try:
        table = open(path).read().strip()
    except FileNotFoundError:
        continue
    readme = re.sub(
        rf"<!-- {name}:begin -->.*<!-- {name}:end -->",
        lambda _: f"<!-- {name}:begin -->\n{table}\n<!-- {name}:end -->",
        readme,
        flags=re.S,
    )
open("README.md", "w").write(readme)
