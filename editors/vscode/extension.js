// Starts `pcg lsp` for .pcg files: diagnostics, hover, go to definition, completion, outline
// and formatting come from the language server; highlighting from the TextMate grammar.
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const config = vscode.workspace.getConfiguration("pcg");
  const command = config.get("server.path", "pcg");
  const args = [...config.get("server.extraArgs", []), "lsp"];
  const server = { command, args };
  client = new LanguageClient(
    "pcg",
    "pcg language server",
    { run: server, debug: server },
    { documentSelector: [{ scheme: "file", language: "pcg" }] },
  );
  context.subscriptions.push(client);
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
