//! The language server (`pcg lsp`), driven the way an editor drives it: the real binary,
//! spoken to over stdin and stdout in JSON-RPC with `Content-Length` framing. Then its
//! analysis on every truncation of the examples (`pcg::lsp::analysis`): nothing may panic on a
//! half-typed file.

use pcg::lsp::analysis;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// An editor's side of the connection.
struct Editor {
    child: Child,
    stdin: ChildStdin,
    messages: Receiver<Value>,
    /// Notifications read while waiting for a response.
    pending: Vec<Value>,
    next_id: i64,
}

impl Editor {
    fn start() -> Editor {
        let cache = std::env::temp_dir().join(format!("pcg-lsp-cache-{}", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_pcg"))
            .arg("lsp")
            .env("XDG_CACHE_HOME", &cache)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pcg lsp starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut length = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(n) = line.strip_prefix("Content-Length: ") {
                        length = n.parse::<usize>().ok();
                    }
                }
                let mut body = vec![0; length.expect("a Content-Length header")];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let value: Value = serde_json::from_slice(&body).expect("JSON from the server");
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        let mut editor = Editor {
            child,
            stdin,
            messages: rx,
            pending: Vec::new(),
            next_id: 0,
        };
        let init = editor.request(
            "initialize",
            json!({"processId": null, "rootUri": null, "capabilities": {}}),
        );
        assert!(
            init["capabilities"]["hoverProvider"] == json!(true),
            "{init}"
        );
        editor.notify("initialized", json!({}));
        editor
    }

    fn send(&mut self, message: Value) {
        let body = message.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn receive(&mut self) -> Value {
        match self.messages.recv_timeout(Duration::from_secs(30)) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => panic!("no message from the server in 30 s"),
            Err(RecvTimeoutError::Disconnected) => panic!("the server closed its output"),
        }
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Sends a request and returns its result (panicking on an error response).
    fn request(&mut self, method: &str, params: Value) -> Value {
        let response = self.request_raw(method, params);
        assert!(response.get("error").is_none(), "{method}: {response}");
        response["result"].clone()
    }

    fn request_raw(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let message = self.receive();
            if message.get("id") == Some(&json!(id)) {
                return message;
            }
            self.pending.push(message);
        }
    }

    /// The next diagnostics published for `uri`.
    fn diagnostics(&mut self, uri: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self.pending.iter().position(|m| {
                m["method"] == "textDocument/publishDiagnostics" && m["params"]["uri"] == uri
            });
            if let Some(i) = found {
                let m = self.pending.remove(i);
                return m["params"]["diagnostics"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
            }
            assert!(Instant::now() < deadline, "no diagnostics for {uri}");
            let message = self.receive();
            self.pending.push(message);
        }
    }

    fn open(&mut self, uri: &str, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "pcg", "version": 1, "text": text}}),
        );
    }

    fn change(&mut self, uri: &str, version: i32, text: &str) {
        self.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": version},
                   "contentChanges": [{"text": text}]}),
        );
    }

    fn at(&mut self, method: &str, uri: &str, (line, character): (usize, usize)) -> Value {
        self.request(
            method,
            json!({"textDocument": {"uri": uri},
                   "position": {"line": line, "character": character}}),
        )
    }

    fn shutdown(mut self) {
        self.request("shutdown", Value::Null);
        self.notify("exit", Value::Null);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "the server exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("the server did not exit after `exit`");
    }
}

fn example(name: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("the example");
    (path, text)
}

fn uri(path: &Path) -> String {
    pcg::lsp::path_to_uri(path)
        .expect("a URI")
        .as_str()
        .to_string()
}

/// The 0-based line and column of the first `needle` in `text`, plus `shift` columns.
fn find(text: &str, needle: &str, shift: usize) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not found"));
    let line = text[..at].matches('\n').count();
    let column = at - text[..at].rfind('\n').map_or(0, |n| n + 1);
    (line, column + shift)
}

#[test]
fn an_editor_session() {
    let (path, text) = example("mlp_digits.pcg");
    let uri = uri(&path);
    let mut editor = Editor::start();

    // A shape error: a diagnostic with its code, on the line of the product.
    let broken = text.replace("w1: [64, 64]", "w1: [63, 64]");
    editor.open(&uri, &broken);
    let diagnostics = editor.diagnostics(&uri);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert_eq!(diagnostics[0]["code"], "E0201");
    assert_eq!(diagnostics[0]["source"], "pcg");
    let line = find(&broken, "let h", 0).0;
    assert_eq!(diagnostics[0]["range"]["start"]["line"], line);
    assert!(diagnostics[0]["message"]
        .as_str()
        .unwrap()
        .contains("inner dimensions"));

    // An error inside a stdlib function: shown at the call that led there.
    let inside = text.replace("w2: [64, 10]", "w2: [32, 10]");
    editor.change(&uri, 2, &inside);
    let diagnostics = editor.diagnostics(&uri);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert_eq!(diagnostics[0]["code"], "E0201");
    assert_eq!(
        diagnostics[0]["range"]["start"],
        json!({"line": find(&inside, "dense(h", 0).0, "character": find(&inside, "dense(h", 0).1})
    );
    assert!(diagnostics[0]["message"]
        .as_str()
        .unwrap()
        .starts_with("in stdlib nn:"));

    // Fixed: the diagnostics are cleared.
    editor.change(&uri, 2, &text);
    assert!(editor.diagnostics(&uri).is_empty());

    // Hover on a `let`: its shape with the batch dimension's name, its op, its PC role.
    let hover = editor.at("textDocument/hover", &uri, find(&text, "let h", 4));
    let shown = hover["contents"]["value"].as_str().unwrap().to_string();
    assert!(shown.contains("let h: [B, 64]"), "{shown}");
    assert!(shown.contains("`[B, 64]` = `[32, 64]`"), "{shown}");
    assert!(shown.contains("made by `tanh`"), "{shown}");
    assert!(shown.contains("PC: relaxed"), "{shown}");
    let hover = editor.at("textDocument/hover", &uri, find(&text, "let out", 4));
    let shown = hover["contents"]["value"].as_str().unwrap().to_string();
    assert!(shown.contains("PC: output"), "{shown}");
    let hover = editor.at("textDocument/hover", &uri, find(&text, "param  w1", 7));
    let shown = hover["contents"]["value"].as_str().unwrap().to_string();
    assert!(shown.contains("param w1: [64, 64]"), "{shown}");
    assert!(shown.contains("normal(0.1)"), "{shown}");

    // Definition of a stdlib call: a .pcg file of the stdlib, at its `fn`.
    let def = editor.at("textDocument/definition", &uri, find(&text, "dense(h", 1));
    let target = def["uri"].as_str().unwrap();
    assert!(target.ends_with("/nn.pcg"), "{def}");
    let file = pcg::lsp::uri_to_path(&target.parse().unwrap());
    let nn = std::fs::read_to_string(&file).expect("the stdlib file exists");
    let line = def["range"]["start"]["line"].as_u64().unwrap() as usize;
    assert!(
        nn.lines().nth(line).unwrap().starts_with("fn dense"),
        "{def}"
    );
    // Definition of a local: its `let`.
    let def = editor.at("textDocument/definition", &uri, find(&text, "dense(h", 6));
    assert_eq!(def["range"]["start"]["line"], find(&text, "let h", 0).0);

    // Completion after `ta` offers `tanh`; in the train block, the keys and their values.
    let typing = text.replace(
        "    loss mse(out, y)",
        "    let z = ta\n    loss mse(out, y)",
    );
    editor.change(&uri, 3, &typing);
    let items = editor.at("textDocument/completion", &uri, find(&typing, "= ta\n", 4));
    let offered = labels(&items);
    assert!(offered.contains(&"tanh".to_string()), "{offered:?}");
    assert!(offered.contains(&"out".to_string()), "{offered:?}");
    assert!(offered.contains(&"dense".to_string()), "{offered:?}");
    let softmax = items
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["label"] == "softmax")
        .expect("softmax offered");
    assert!(
        softmax.get("additionalTextEdits").is_none(),
        "`use nn` is there"
    );
    let items = editor.at("textDocument/completion", &uri, find(&typing, "mode = ", 7));
    assert_eq!(labels(&items), ["fixed", "strict", "exact", "epc"]);
    let items = editor.at("textDocument/completion", &uri, find(&typing, "method ", 0));
    assert!(labels(&items).contains(&"optimizer".to_string()));

    // Outline: the model and its declarations.
    let symbols = editor.request(
        "textDocument/documentSymbol",
        json!({"textDocument": {"uri": uri}}),
    );
    let model = symbols
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "mlp")
        .expect("the model");
    let children: Vec<&str> = model["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        children,
        ["x", "y", "w1", "b1", "w2", "b2", "h", "out", "z"]
    );

    // Formatting a mangled copy gives the example back.
    let mangled = text.replace(
        "    let out = dense(h, w2, b2)",
        "let out=dense( h,w2 ,b2 )",
    );
    editor.change(&uri, 4, &mangled);
    let edits = editor.request(
        "textDocument/formatting",
        json!({"textDocument": {"uri": uri}, "options": {"tabSize": 4, "insertSpaces": true}}),
    );
    let edits = edits.as_array().unwrap();
    assert_eq!(edits.len(), 1);
    assert_eq!(edits[0]["newText"], text);

    // Half-typed files: the server answers and stays up.
    for cut in (0..text.len()).step_by(37) {
        editor.change(&uri, 10 + cut as i32, &text[..cut]);
        let _ = editor.at("textDocument/hover", &uri, (0, 0));
        let _ = editor.diagnostics(&uri);
    }
    editor.shutdown();
}

fn labels(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["label"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn dimension_names_follow_the_compiler() {
    let (path, text) = example("lstm_shakespeare.pcg");
    let a = analysis::analyse(&path, &text);
    assert!(a.diagnostics.is_empty());
    // B = 64 and H = 64 here: the names come from how the shapes change, not from values.
    let at = text.find("let h = ").unwrap() + 4;
    let shown = a.hover(at).unwrap();
    assert!(shown.contains("let h: [B, H]"), "{shown}");
    let at = text.find("param  w:").unwrap() + 7;
    let shown = a.hover(at).unwrap();
    assert!(shown.contains("param w: [V + H, 4 * H]"), "{shown}");
    // A name bound in a loop's body (lowered once, as one structured loop).
    let at = text.find("h_next, c_next").unwrap();
    let shown = a.hover(at).unwrap();
    assert!(shown.contains("[B, H]"), "{shown}");
}

#[test]
fn a_file_with_imports_and_its_errors() {
    let dir = std::env::temp_dir().join(format!("pcg-lsp-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("layers.pcg"),
        "// A layer.\nfn layer(x, w) {\n    tanh(x @ w)\n}\n",
    )
    .unwrap();
    let main = dir.join("main.pcg");
    let text = "use \"layers.pcg\"\nuse nn\n\nmodel m {\n    input x: [4, 3]\n    target y: [4, 2]\n    param w: [3, 2]\n    loss mse(layer(x, w), y)\n}\n";
    std::fs::write(&main, text).unwrap();
    let a = analysis::analyse(&main, text);
    assert!(a.diagnostics.is_empty(), "{:?}", a.diagnostics);
    let def = a.definition(text.find("layer(x").unwrap()).unwrap();
    assert_eq!(def.place, analysis::Place::File(dir.join("layers.pcg")));
    assert_eq!(&def.text[def.range.clone()], "layer");
    let shown = a.hover(text.find("layer(x").unwrap()).unwrap();
    assert!(
        shown.contains("fn layer(x, w)") && shown.contains("A layer."),
        "{shown}"
    );
    // An error inside the imported file is reported, in that file.
    std::fs::write(
        dir.join("layers.pcg"),
        "fn layer(x, w) {\n    tanh(x @ w @ w)\n}\n",
    )
    .unwrap();
    let a = analysis::analyse(&main, text);
    assert_eq!(a.diagnostics.len(), 1);
    let at = a.location(a.diagnostics[0].primary_span().unwrap());
    assert_eq!(at.place, analysis::Place::File(dir.join("layers.pcg")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every truncation of every example (sampled where the example unrolls a loop): analysis,
/// hover and definition at the end and at a name, completion, the outline and formatting all
/// return, and every position they give lies in the text.
#[test]
fn half_typed_files_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcg"))
        .collect();
    names.sort();
    for path in names {
        let text = std::fs::read_to_string(&path).unwrap();
        let cuts: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        let step = if text.contains("for ") {
            cuts.len() / 60 + 1
        } else {
            cuts.len() / 400 + 1
        };
        for &cut in cuts.iter().step_by(step) {
            let prefix = &text[..cut];
            let a = analysis::analyse(&path, prefix);
            for d in &a.diagnostics {
                let at = a.location(d.primary_span().unwrap_or_default());
                assert!(at.range.end <= at.text.len(), "{}: {cut}", path.display());
            }
            let name_at = prefix.rfind("let ").map_or(0, |i| i + 4);
            for offset in [cut, name_at, cut / 2] {
                let _ = a.hover(offset);
                if let Some(def) = a.definition(offset) {
                    assert!(def.range.end <= def.text.len());
                }
                let _ = a.completions(offset);
            }
            for s in a.symbols() {
                assert!(s.range.end <= prefix.len() && s.selection.end <= prefix.len());
            }
            let _ = pcg::syntax::format::format_source(0, prefix);
        }
    }
}

#[test]
fn positions_count_utf16_units() {
    use lsp_types::Position;
    let text = "// é and 𝔼\nlet x = 1\n";
    let e = text.find('𝔼').unwrap();
    // `// é and ` is 9 UTF-16 units; `𝔼` is two.
    assert_eq!(pcg::lsp::position(text, e), Position::new(0, 9));
    assert_eq!(pcg::lsp::position(text, e + 4), Position::new(0, 11));
    assert_eq!(pcg::lsp::offset(text, Position::new(0, 11)), e + 4);
    assert_eq!(
        pcg::lsp::offset(text, Position::new(1, 4)),
        text.find('x').unwrap()
    );
    assert_eq!(pcg::lsp::offset(text, Position::new(9, 0)), text.len());
    let path = Path::new("/tmp/a b/ü.pcg");
    let uri = pcg::lsp::path_to_uri(path).unwrap();
    assert_eq!(uri.as_str(), "file:///tmp/a%20b/%C3%BC.pcg");
    assert_eq!(pcg::lsp::uri_to_path(&uri), path);
}
