//! Reads the text form `print::to_text` writes back into a program.
//!
//! The optimisation passes are tested as pairs of IR text — the program before and the
//! program expected after — the way gluon tests its passes: a test reads the first, runs the
//! pass and compares its printout with the second. So the reader accepts exactly the printer's
//! format (one node per line, numbered in order, the shape after `:`, `[loss]` and a `// name`
//! comment optional), plus blank lines and `#` comment lines, and reports the first line it
//! cannot read. Shapes are checked by the verifier afterwards, not here.

use super::{
    BinaryOp, ConvParams, Init, LeafKind, Node, Op, Output, Program, ReduceOp, Region, Shape,
    UnaryOp, ValueId,
};
use std::fmt;

/// A line the reader could not make sense of.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses one program in the printer's format.
pub fn from_text(text: &str) -> Result<Program, ParseError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(k, raw)| (k + 1, raw.trim()))
        .filter(|(_, t)| !t.is_empty() && !t.starts_with('#'))
        .peekable();
    let program = parse_program(&mut lines, text.lines().count())?;
    if let Some((line, trimmed)) = lines.next() {
        return Err(ParseError {
            line,
            message: format!("text after the program's end: `{trimmed}`"),
        });
    }
    Ok(program)
}

/// The (line number, trimmed text) of each line that is not blank or a comment.
type Lines<'a, I> = std::iter::Peekable<I>;

/// `program NAME { ... }`, from its first line to its closing brace; a scan node's line is
/// followed by its body, a program of its own.
fn parse_program<'a, I: Iterator<Item = (usize, &'a str)>>(
    lines: &mut Lines<'a, I>,
    last_line: usize,
) -> Result<Program, ParseError> {
    let Some((line, trimmed)) = lines.next() else {
        return Err(ParseError {
            line: 1,
            message: "no program".into(),
        });
    };
    let name = trimmed
        .strip_prefix("program ")
        .and_then(|r| r.strip_suffix('{'))
        .ok_or_else(|| ParseError {
            line,
            message: format!("expected `program NAME {{`, found `{trimmed}`"),
        })?;
    let mut p = Program::new(name.trim());
    while let Some((line, trimmed)) = lines.next() {
        let fail = |message: String| ParseError { line, message };
        if trimmed == "}" {
            return Ok(p);
        } else if let Some(rest) = trimmed.strip_prefix("init ") {
            let (name, init) = rest
                .split_once(" = ")
                .ok_or_else(|| fail("expected `init NAME = INIT`".into()))?;
            p.inits
                .insert(name.to_string(), parse_init(init).map_err(fail)?);
        } else if let Some(rest) = trimmed.strip_prefix("return ") {
            let (name, value) = rest
                .split_once(" = ")
                .ok_or_else(|| fail("expected `return NAME = %N`".into()))?;
            let value = parse_value(value, p.nodes.len()).map_err(fail)?;
            p.outputs.push(Output {
                name: name.to_string(),
                value,
            });
        } else {
            let mut node = parse_node(trimmed, p.nodes.len()).map_err(fail)?;
            if let Op::Scan(scan) = &mut node.op {
                if !lines.peek().is_some_and(|(_, t)| t.starts_with("program ")) {
                    return Err(fail(
                        "a scan is followed by its body, `program NAME {`".into(),
                    ));
                }
                scan.body = parse_program(lines, last_line)?;
            }
            p.nodes.push(node);
        }
    }
    Err(ParseError {
        line: last_line,
        message: format!("the program `{}` is not closed with `}}`", p.name),
    })
}

/// `%N = OP ARGS : SHAPE [loss] // name`, the node numbered `index`.
fn parse_node(line: &str, index: usize) -> Result<Node, String> {
    let (line, name) = match line.split_once("//") {
        Some((code, comment)) => (code.trim(), Some(comment.trim().to_string())),
        None => (line, None),
    };
    let (line, region) = match line.strip_suffix("[loss]") {
        Some(code) => (code.trim(), Region::Loss),
        None => (line, Region::Model),
    };
    let (lhs, rhs) = line
        .split_once(" = ")
        .ok_or("expected `%N = ...`".to_string())?;
    if parse_value(lhs, usize::MAX)? != ValueId(index as u32) {
        return Err(format!("expected node %{index}, found `{lhs}`"));
    }
    let (op_args, shape) = rhs
        .rsplit_once(" : ")
        .ok_or("expected ` : SHAPE` after the op".to_string())?;
    let shape = parse_shape(shape.trim())?;
    let (op_text, args_text) = split_op(op_args.trim());
    let mut node = Node {
        op: Op::Const(0.0),
        args: Vec::new(),
        shape,
        name,
        region,
    };
    if let Some(kind) = leaf_kind(op_text) {
        node.op = Op::Leaf(kind);
        node.name = Some(args_text.trim().to_string());
        return Ok(node);
    }
    if op_text == "const" {
        node.op = Op::Const(parse_f64(args_text.trim())?);
        return Ok(node);
    }
    node.op = parse_op(op_text)?;
    node.args = args_text
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| parse_value(a, index))
        .collect::<Result<_, _>>()?;
    Ok(node)
}

/// Splits `op[attrs] args` after the op and its bracketed attributes.
fn split_op(text: &str) -> (&str, &str) {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ' ' if depth == 0 => return (&text[..i], &text[i + 1..]),
            _ => {}
        }
    }
    (text, "")
}

fn leaf_kind(word: &str) -> Option<LeafKind> {
    [
        LeafKind::Input,
        LeafKind::Target,
        LeafKind::Param,
        LeafKind::State,
        LeafKind::Noise,
    ]
    .into_iter()
    .find(|k| k.keyword() == word)
}

/// `%N`, which must name a node before `before`.
fn parse_value(text: &str, before: usize) -> Result<ValueId, String> {
    let n: usize = text
        .trim()
        .strip_prefix('%')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("expected a value `%N`, found `{text}`"))?;
    if before != usize::MAX && n >= before {
        return Err(format!("%{n} is used before it is defined"));
    }
    Ok(ValueId(n as u32))
}

fn parse_f64(text: &str) -> Result<f64, String> {
    text.parse()
        .map_err(|_| format!("expected a number, found `{text}`"))
}

fn parse_usize(text: &str) -> Result<usize, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("expected a count, found `{text}`"))
}

/// `[2, 3]` or `[]`.
fn parse_list(text: &str) -> Result<Vec<usize>, String> {
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| format!("expected `[...]`, found `{text}`"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(parse_usize)
        .collect()
}

fn parse_shape(text: &str) -> Result<Shape, String> {
    parse_list(text).map(Shape::new)
}

/// An op's attributes as (key, value) pairs.
type Attributes<'a> = Vec<(&'a str, &'a str)>;

/// The name and attributes of `op[k=v, ...]`; a value without a key has key "".
fn attributes(text: &str) -> Result<(&str, Attributes<'_>), String> {
    let Some((name, rest)) = text.split_once('[') else {
        return Ok((text, Vec::new()));
    };
    let inner = rest
        .strip_suffix(']')
        .ok_or_else(|| format!("unclosed attributes in `{text}`"))?;
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in inner.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    let pairs = items
        .into_iter()
        .map(str::trim)
        .map(|item| item.split_once('=').unwrap_or(("", item)))
        .collect();
    Ok((name, pairs))
}

fn parse_op(text: &str) -> Result<Op, String> {
    let (name, attrs) = attributes(text)?;
    let get = |key: &str| -> Result<&str, String> {
        attrs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("`{text}` lacks `{key}`"))
    };
    let unary = |op| Ok(Op::Unary(op));
    let binary = |op| Ok(Op::Binary(op));
    let conv = |make: fn(ConvParams) -> Op| -> Result<Op, String> {
        let (stride, pads) = (get("stride")?, get("padding")?);
        if !stride.starts_with('[') {
            return Ok(make(ConvParams::new(
                parse_usize(stride)?,
                parse_usize(pads)?,
            )));
        }
        let to = |v: Vec<usize>, n: usize, what: &str| -> Result<Vec<usize>, String> {
            if v.len() == n {
                Ok(v)
            } else {
                Err(format!("`{text}`: {what} needs {n} numbers"))
            }
        };
        let stride = to(parse_list(stride)?, 2, "stride")?;
        let pads = to(parse_list(pads)?, 4, "padding")?;
        let dilation = to(parse_list(get("dilation")?)?, 2, "dilation")?;
        Ok(make(ConvParams {
            stride: [stride[0], stride[1]],
            pads: [pads[0], pads[1], pads[2], pads[3]],
            dilation: [dilation[0], dilation[1]],
            groups: parse_usize(get("groups")?)?,
        }))
    };
    match name {
        "neg" => unary(UnaryOp::Neg),
        "exp" => unary(UnaryOp::Exp),
        "log" => unary(UnaryOp::Log),
        "sqrt" => unary(UnaryOp::Sqrt),
        "sin" => unary(UnaryOp::Sin),
        "cos" => unary(UnaryOp::Cos),
        "tan" => unary(UnaryOp::Tan),
        "tanh" => unary(UnaryOp::Tanh),
        "erf" => unary(UnaryOp::Erf),
        "sigmoid" => unary(UnaryOp::Sigmoid),
        "abs" => unary(UnaryOp::Abs),
        "sign" => unary(UnaryOp::Sign),
        "stop_gradient" => unary(UnaryOp::StopGradient),
        "powf" => unary(UnaryOp::Powf(parse_f64(get("")?)?)),
        "add" => binary(BinaryOp::Add),
        "sub" => binary(BinaryOp::Sub),
        "mul" => binary(BinaryOp::Mul),
        "div" => binary(BinaryOp::Div),
        "max" => binary(BinaryOp::Max),
        "greater" => binary(BinaryOp::Greater),
        "equal" => binary(BinaryOp::Equal),
        "where" => Ok(Op::Where),
        "iota" => Ok(Op::Iota {
            axis: parse_usize(get("axis")?)?,
        }),
        "reduce_sum" => Ok(Op::Reduce(ReduceOp::Sum, parse_list(get("axes")?)?)),
        "reduce_max" => Ok(Op::Reduce(ReduceOp::Max, parse_list(get("axes")?)?)),
        "reshape" => Ok(Op::Reshape),
        "broadcast" => Ok(Op::Broadcast),
        "transpose" => Ok(Op::Transpose(parse_list(get("perm")?)?)),
        "slice" => {
            let axis = parse_usize(get("axis")?)?;
            let range = attrs
                .iter()
                .find(|(k, _)| k.is_empty())
                .map(|(_, v)| *v)
                .ok_or_else(|| format!("`{text}` lacks its range"))?;
            let (start, end) = range
                .split_once("..")
                .ok_or_else(|| format!("expected `start..end`, found `{range}`"))?;
            Ok(Op::Slice {
                axis,
                start: parse_usize(start)?,
                end: parse_usize(end)?,
            })
        }
        "pad" => Ok(Op::Pad {
            axis: parse_usize(get("axis")?)?,
            before: parse_usize(get("before")?)?,
            after: parse_usize(get("after")?)?,
        }),
        "concat" => Ok(Op::Concat {
            axis: parse_usize(get("axis")?)?,
        }),
        "matmul" => Ok(Op::MatMul),
        "conv2d" => conv(Op::Conv2d),
        "conv2d_input_grad" => conv(Op::Conv2dInputGrad),
        "conv2d_weight_grad" => conv(Op::Conv2dWeightGrad),
        "scan" => Ok(Op::Scan(Box::new(super::Scan {
            trips: parse_usize(get("trips")?)?,
            carries: parse_usize(get("carries")?)?,
            stacked: parse_usize(get("stacked")?)?,
            reverse: attrs.iter().any(|&(k, v)| k.is_empty() && v == "reverse"),
            body: Program::default(),
        }))),
        "result" => Ok(Op::Result(parse_usize(get("")?)?)),
        _ => Err(format!("unknown op `{name}`")),
    }
}

/// An initialiser as `Init`'s `Display` writes it.
fn parse_init(text: &str) -> Result<Init, String> {
    let text = text.trim();
    let call = |prefix: &str| {
        text.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(')'))
            .map(|args| {
                args.split(',')
                    .map(|a| a.split_once('=').map_or(a, |(_, v)| v).trim())
                    .map(parse_f64)
                    .collect::<Result<Vec<f64>, String>>()
            })
    };
    match text {
        "zeros" => return Ok(Init::Zeros),
        "ones" => return Ok(Init::Ones),
        "xavier" => return Ok(Init::Xavier),
        "he" => return Ok(Init::He),
        _ => {}
    }
    if let Some(args) = call("constant(") {
        if let [c] = args?.as_slice() {
            return Ok(Init::Constant(*c));
        }
    } else if let Some(args) = call("normal(") {
        if let [mean, std] = args?.as_slice() {
            return Ok(Init::Normal {
                mean: *mean,
                std: *std,
            });
        }
    } else if let Some(args) = call("dropout(") {
        if let [p] = args?.as_slice() {
            return Ok(Init::Dropout { p: *p });
        }
    } else if let Some(args) = call("orthogonal(") {
        if let [gain] = args?.as_slice() {
            return Ok(Init::Orthogonal { gain: *gain });
        }
    } else if let Some(args) = call("fan_in_uniform(") {
        if let [scale] = args?.as_slice() {
            return Ok(Init::FanInUniform { scale: *scale });
        }
    } else if let Some(args) = call("uniform(") {
        if let [low, high] = args?.as_slice() {
            return Ok(Init::Uniform {
                low: *low,
                high: *high,
            });
        }
    }
    Err(format!("unknown initialiser `{text}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_printer_writes() {
        let text = "program p {
  init w = normal(mean = 0, std = 0.1)
  %0 = input x : [2, 3]
  %1 = param w : [3, 4]
  %2 = matmul %0, %1 : [2, 4]  // h
  %3 = slice[axis=1, 1..3] %2 : [2, 2]
  %4 = reduce_sum[axes=[0, 1]] %3 : []  [loss]
  %5 = powf[0.5] %4 : []  [loss]
  %6 = const -1.5 : []
  return loss = %5
}
";
        let program = from_text(text).expect("parses");
        assert_eq!(super::super::to_text(&program), text);
        super::super::verify(&program).expect("valid");
    }

    #[test]
    fn names_the_line_it_cannot_read() {
        let e = from_text("program p {\n  %0 = input x : [2]\n  %1 = frobnicate %0 : [2]\n}\n")
            .expect_err("unknown op");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("frobnicate"), "{e}");
        let e = from_text("program p {\n  %0 = neg %1 : [2]\n}\n").expect_err("forward ref");
        assert_eq!(e.line, 2);
    }
}
