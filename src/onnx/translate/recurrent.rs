//! ONNX's recurrent layers, `LSTM` and `GRU`, as `for` loops over the sequence.
//!
//! The layer's state is carried by the loop (`h = ...`), each step's gates are written out in
//! ONNX's order and equations (LSTM: i, o, f, c; GRU: z, r, h, with or without
//! `linear_before_reset`), and the per-step outputs are gathered into the layer's first
//! output `Y: [S, 1, B, H]`. One direction, ONNX's default activations, no peepholes, no
//! clipping and no sequence lengths: anything else is refused by name.

use super::{Out, Translator};
use crate::onnx::known::{shape_text, Dim};
use crate::onnx::proto::NodeProto;

/// The gate equations of one recurrent layer.
#[derive(Clone, Copy, PartialEq)]
enum Cell {
    Lstm,
    Gru { linear_before_reset: bool },
}

impl<'m> Translator<'m> {
    /// `LSTM` or `GRU`: a loop over the sequence (axis 0 of the input `X: [S, B, I]`).
    pub(super) fn recurrent(&mut self, node: &'m NodeProto) -> Result<Out<'m>, String> {
        let lstm = node.op_type == "LSTM";
        let mut understood = vec![
            "activations",
            "direction",
            "hidden_size",
            "layout",
            "input_forget",
        ];
        if !lstm {
            understood.push("linear_before_reset");
        }
        let attrs = self.attributes(node, &understood)?;
        if let Some(direction) = attrs.string("direction") {
            if direction != "forward" {
                return Err(format!(
                    "direction = \"{direction}\": import translates forward layers only (split a bidirectional layer into two)"
                ));
            }
        }
        if attrs.int("layout").unwrap_or(0) != 0 || attrs.int("input_forget").unwrap_or(0) != 0 {
            return Err("layout = 1 or input_forget = 1".to_string());
        }
        let defaults: &[&str] = if lstm {
            &["Sigmoid", "Tanh", "Tanh"]
        } else {
            &["Sigmoid", "Tanh"]
        };
        if let Some(given) = attrs.strings("activations") {
            if given
                .iter()
                .map(String::as_str)
                .ne(defaults.iter().copied())
            {
                return Err(format!(
                    "activations = {given:?}: the language writes ONNX's defaults, {defaults:?}"
                ));
            }
        }
        let cell = if lstm {
            Cell::Lstm
        } else {
            Cell::Gru {
                linear_before_reset: attrs.int("linear_before_reset").unwrap_or(0) != 0,
            }
        };
        let gates = if lstm { 4 } else { 3 };
        for (i, what) in [(4, "sequence_lens"), (7, "peepholes (P)")] {
            if self.optional(node, i).is_some() {
                return Err(format!("its input {what} is not supported by import"));
            }
        }
        let (x, sx) = self.tensor(self.operand_name(node, 0)?)?;
        let (w, sw) = self.tensor(self.operand_name(node, 1)?)?;
        let (r, _) = self.tensor(self.operand_name(node, 2)?)?;
        let (Some(&Dim::Size(steps)), Some(&batch), 3) = (sx.first(), sx.get(1), sx.len()) else {
            return Err(format!(
                "an input of shape {}: a sequence [S, B, I] of known length",
                shape_text(&sx)
            ));
        };
        let Some(&Dim::Size(rows)) = sw.get(1) else {
            return Err("a weight sized by the batch".to_string());
        };
        let h = rows / gates;
        if attrs.int("hidden_size").is_some_and(|n| n as usize != h) {
            return Err("hidden_size differs from the weight's shape".to_string());
        }
        let bias = match self.optional(node, 3) {
            Some(b) => Some(self.tensor(b)?.0),
            None => None,
        };
        let state = [batch, Dim::Size(h)];
        let initial = |t: &mut Self, i: usize| -> Result<String, String> {
            Ok(match t.optional(node, i) {
                Some(name) => format!("{}[0]", t.tensor(name)?.0),
                None => format!("zeros({})", shape_text(&state)),
            })
        };
        let h0 = initial(self, 5)?;
        let c0 = if lstm { Some(initial(self, 6)?) } else { None };

        // Names for the loop's bindings, unique in the model.
        let base = if node.name.is_empty() {
            node.op_type.to_ascii_lowercase()
        } else {
            node.name.clone()
        };
        let mut name = |part: &str| self.names.value(&format!("{base}_{part}"), part);
        let (hs, cs, ys, t) = (name("h"), name("c"), name("steps"), name("t"));
        let (g, a, b, n) = (name("gates"), name("a"), name("b"), name("n"));

        let row = shape_text(&[Dim::Size(1), Dim::Size(1), batch, Dim::Size(h)]);
        let span = |k: usize| format!("{}, {}", k * h, (k + 1) * h);
        let gate = |v: &str, k: usize| format!("slice({v}, 1, {})", span(k));
        // The input's and the state's biases (ONNX stores both, one after the other).
        let (wb, rb) = match &bias {
            Some(b) => (
                format!(" + slice({b}[0], 0, 0, {rows})"),
                format!(" + slice({b}[0], 0, {rows}, {})", 2 * rows),
            ),
            None => (String::new(), String::new()),
        };
        let mut body = Vec::new();
        match cell {
            Cell::Lstm => {
                body.push(format!(
                    "let {g} = {x}[{t}] @ transpose({w}[0]) + {hs} @ transpose({r}[0]){wb}{rb}"
                ));
                body.push(format!("let {a} = sigmoid({})", gate(&g, 0)));
                body.push(format!("let {b} = sigmoid({})", gate(&g, 1)));
                body.push(format!(
                    "{cs} = sigmoid({}) * {cs} + {a} * tanh({})",
                    gate(&g, 2),
                    gate(&g, 3)
                ));
                body.push(format!("{hs} = {b} * tanh({cs})"));
            }
            Cell::Gru {
                linear_before_reset,
            } => {
                // a: the input's part of every gate; b: the state's part of z and r (and of
                // h, linearly, before the reset).
                body.push(format!("let {a} = {x}[{t}] @ transpose({w}[0]){wb}"));
                let state_rows = if linear_before_reset { rows } else { 2 * h };
                let state_bias = match &bias {
                    Some(bias) => format!(" + slice({bias}[0], 0, {rows}, {})", rows + state_rows),
                    None => String::new(),
                };
                body.push(format!(
                    "let {b} = {hs} @ transpose(slice({r}[0], 0, 0, {state_rows})){state_bias}"
                ));
                body.push(format!(
                    "let {g} = sigmoid({} + {})",
                    gate(&a, 0),
                    gate(&b, 0)
                ));
                let reset = format!("sigmoid({} + {})", gate(&a, 1), gate(&b, 1));
                let candidate = if linear_before_reset {
                    format!("{} + {reset} * {}", gate(&a, 2), gate(&b, 2))
                } else {
                    let hidden_bias = match &bias {
                        Some(bias) => {
                            format!(" + slice({bias}[0], 0, {}, {})", rows + 2 * h, 2 * rows)
                        }
                        None => String::new(),
                    };
                    format!(
                        "{} + ({reset} * {hs}) @ transpose(slice({r}[0], 0, {})){hidden_bias}",
                        gate(&a, 2),
                        span(2)
                    )
                };
                body.push(format!("let {n} = tanh({candidate})"));
                body.push(format!("{hs} = (1 - {g}) * {n} + {g} * {hs}"));
            }
        }
        body.push(format!(
            "{ys} = concat({ys}, reshape({hs}, {row}), axis = 0)"
        ));
        self.lets.push(format!("let {hs} = {h0}"));
        if let Some(c0) = c0 {
            self.lets.push(format!("let {cs} = {c0}"));
        }
        // The steps' outputs follow a first row of zeros, sliced off after the loop.
        self.lets.push(format!("let {ys} = zeros({row})"));
        self.lets.push(format!(
            "for {t} in 0..{steps} {{\n{}\n}}",
            body.iter()
                .map(|line| format!("    {line}"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
        Ok(Out::Let {
            expr: format!("slice({ys}, 0, 1, {})", steps + 1),
            shape: vec![Dim::Size(steps), Dim::Size(1), batch, Dim::Size(h)],
        })
    }
}
