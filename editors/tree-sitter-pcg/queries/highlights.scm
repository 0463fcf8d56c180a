; Highlighting of pcg files. Where several patterns match a node, the last one gives its
; colour (the tree-sitter CLI and Neovim), so the catch-alls come first and the specific
; patterns after them.

(identifier) @variable

; Dimension names and constants: all capitals (B, H, HEADS).
((identifier) @constant
  (#match? @constant "^[A-Z][A-Z0-9_]*$"))

(comment) @comment

[
  "use"
  "fn"
  "model"
  "train"
  "let"
  "const"
  "loss"
  "for"
  "in"
  "return"
] @keyword

(declaration kind: _ @keyword.storage)

(boolean) @constant.builtin
(integer) @number
(float) @number
(string) @string

(function name: (identifier) @function)
(call function: (identifier) @function.call)
((call function: (identifier) @function.builtin)
  (#match? @function.builtin "^(exp|log|sqrt|square|pow|abs|sin|cos|tan|tanh|erf|sigmoid|relu|leaky_relu|maximum|minimum|clip|sign|stop_gradient|dropout|where|sum|mean|max|min|var|argmax|reshape|flatten|transpose|broadcast|concat|slice|one_hot|causal_mask|conv2d|conv_transpose2d|conv1d|max_pool2d|avg_pool2d|dim|zeros|ones|full)$"))

(model name: (identifier) @type)
(train model: (identifier) @type)

(parameter name: (identifier) @variable.parameter)
(declaration name: (identifier) @variable.member)
(const name: (identifier) @constant)
(for variable: (identifier) @variable)

(train_entry key: (identifier) @property)
(keyword_argument name: (identifier) @property)
(use module: (identifier) @module)


[
  "+"
  "-"
  "*"
  "/"
  "@"
  "="
  "->"
  ".."
  "<"
  ">"
  "<="
  ">="
  "=="
  "!="
] @operator

["(" ")" "[" "]" "{" "}"] @punctuation.bracket
["," ";" ":"] @punctuation.delimiter
