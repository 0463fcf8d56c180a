// The TextMate grammar on the repository's examples: each checked token gets the scope a
// theme colours it by. Run by scripts/editors_test.sh (`node --test`), which installs the two
// packages VS Code itself uses to tokenize (vscode-textmate, vscode-oniguruma).
const test = require("node:test");
const assert = require("node:assert");
const fs = require("node:fs");
const path = require("node:path");
const vsctm = require("vscode-textmate");
const oniguruma = require("vscode-oniguruma");

const root = path.join(__dirname, "..", "..", "..");

async function grammar() {
  const wasm = fs.readFileSync(require.resolve("vscode-oniguruma/release/onig.wasm"));
  await oniguruma.loadWASM(wasm.buffer);
  const registry = new vsctm.Registry({
    onigLib: Promise.resolve({
      createOnigScanner: (sources) => new oniguruma.OnigScanner(sources),
      createOnigString: (s) => new oniguruma.OnigString(s),
    }),
    loadGrammar: async () => {
      const file = path.join(__dirname, "..", "syntaxes", "pcg.tmLanguage.json");
      return vsctm.parseRawGrammar(fs.readFileSync(file, "utf8"), file);
    },
  });
  return registry.loadGrammar("source.pcg");
}

/** Every token of `text` as [text, innermost scope]. */
function tokens(g, text) {
  const out = [];
  let state = vsctm.INITIAL;
  for (const line of text.split("\n")) {
    const r = g.tokenizeLine(line, state);
    for (const t of r.tokens) {
      out.push([line.slice(t.startIndex, t.endIndex), t.scopes[t.scopes.length - 1]]);
    }
    state = r.ruleStack;
  }
  return out;
}

function scopeOf(toks, text) {
  const found = toks.find(([t]) => t.trim() === text);
  assert.ok(found, `no token ${text}`);
  return found[1];
}

test("mlp_digits is coloured by kind", async () => {
  const g = await grammar();
  const text = fs.readFileSync(path.join(root, "examples", "mlp_digits.pcg"), "utf8");
  const toks = tokens(g, text);
  assert.match(toks[0][1], /^comment\.line/);
  assert.strictEqual(scopeOf(toks, "use"), "keyword.control.import.pcg");
  assert.strictEqual(scopeOf(toks, "nn"), "entity.name.namespace.pcg");
  assert.strictEqual(scopeOf(toks, "model"), "storage.type.pcg");
  assert.strictEqual(scopeOf(toks, "mlp"), "entity.name.type.pcg");
  assert.strictEqual(scopeOf(toks, "input"), "storage.modifier.pcg");
  assert.strictEqual(scopeOf(toks, "tanh"), "support.function.builtin.pcg");
  assert.strictEqual(scopeOf(toks, "dense"), "entity.name.function.call.pcg");
  assert.strictEqual(scopeOf(toks, "B"), "variable.other.constant.pcg");
  assert.strictEqual(scopeOf(toks, "0.05"), "constant.numeric.pcg");
  assert.strictEqual(scopeOf(toks, "@"), "keyword.operator.pcg");
  assert.strictEqual(scopeOf(toks, "optimizer"), "variable.other.property.pcg");
  assert.strictEqual(scopeOf(toks, "lr"), "variable.parameter.keyword.pcg");
});

test("every example and stdlib file tokenizes", async () => {
  const g = await grammar();
  for (const dir of ["examples", "stdlib"]) {
    for (const name of fs.readdirSync(path.join(root, dir))) {
      if (!name.endsWith(".pcg")) continue;
      const text = fs.readFileSync(path.join(root, dir, name), "utf8");
      const toks = tokens(g, text);
      assert.ok(toks.length > 10, name);
      // Comments never leak: every `//` starts a comment token.
      for (const [t, scope] of toks) {
        if (t.startsWith("//")) assert.match(scope, /^comment/, `${name}: ${t}`);
      }
    }
  }
});
