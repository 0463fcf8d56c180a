//! Data specs: which data set to load, as written in a `train` block or on the command line.
//!
//! A spec is a name, optionally called with arguments, positional or named:
//!
//! ```text
//! digits                          mnist5k
//! fmnist                          fmnist(dir = "/data/fashion")
//! shakespeare                     shakespeare(seq = 100)
//! text("notes.txt", seq = 64)
//! npz("mine.npz")                 csv("table.csv.gz", test = 0.25, seed = 7)
//! ```
//!
//! The compiler hands a `train` block's `data = ...` over as a name and [`SpecArg`]s
//! ([`DataSpec::from_call`]); text (a command-line flag) goes through [`str::parse`], which
//! reads the same syntax. Relative paths are kept as written; [`DataSpec::relative_to`] anchors
//! them at the directory of the file that names them.

use super::error::DataError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The default window length of `shakespeare`, as in the LSTM experiment of Millidge et al.
pub const DEFAULT_SEQ: usize = 50;
/// The default fraction of a CSV file's rows held out for testing.
pub const DEFAULT_TEST_FRACTION: f64 = 0.2;
/// The default seed of a CSV file's train/test split.
pub const DEFAULT_SPLIT_SEED: u64 = 0x5eed;

/// A data set to load.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSpec {
    /// The 1797 UCI handwritten digits, 8×8 (built in; the default).
    Digits,
    /// 5000 MNIST digits, 28×28 (built in).
    Mnist5k,
    /// Fashion-MNIST from its IDX files, in `dir` or where Debian's package puts them.
    Fmnist { dir: Option<PathBuf> },
    /// Windows of `seq` characters of Shakespeare's plays (built in).
    Shakespeare { seq: usize },
    /// Windows of `seq` characters of a UTF-8 text file (optionally gzipped).
    Text { path: PathBuf, seq: usize },
    /// The user's arrays `x_train`, `y_train`, `x_test`, `y_test` in an `.npz` file.
    Npz(PathBuf),
    /// A CSV file (optionally gzipped) of features with the class label last, split at random.
    Csv {
        path: PathBuf,
        test_fraction: f64,
        seed: u64,
    },
}

/// A literal argument value of a spec.
#[derive(Clone, Debug, PartialEq)]
pub enum SpecValue {
    Int(i64),
    Float(f64),
    Str(String),
}

/// One argument of a spec call: `"mine.npz"` or `seq = 100`.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecArg {
    pub name: Option<String>,
    pub value: SpecValue,
}

impl fmt::Display for SpecValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecValue::Int(v) => write!(f, "{v}"),
            SpecValue::Float(v) => write!(f, "{v:?}"),
            SpecValue::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// The names `from_call` knows, for error messages.
const KNOWN: &str = "digits, mnist5k, fmnist, shakespeare, text, npz, csv";

impl DataSpec {
    /// The spec of a data set named `name` called with `args`.
    pub fn from_call(name: &str, args: &[SpecArg]) -> Result<DataSpec, DataError> {
        let mut call = Call::new(name, args);
        let spec = match name {
            "digits" => DataSpec::Digits,
            "mnist5k" => DataSpec::Mnist5k,
            "fmnist" => DataSpec::Fmnist {
                dir: call.string("dir", 0)?.map(PathBuf::from),
            },
            "shakespeare" => DataSpec::Shakespeare {
                seq: call.window("seq", 0)?,
            },
            "text" => {
                let path = call.required_path()?;
                DataSpec::Text {
                    path,
                    seq: call.window("seq", 1)?,
                }
            }
            "npz" => DataSpec::Npz(call.required_path()?),
            "csv" => {
                let path = call.required_path()?;
                let test_fraction = call.number("test", 1)?.unwrap_or(DEFAULT_TEST_FRACTION);
                if !(0.0..1.0).contains(&test_fraction) {
                    return Err(call.error(format!(
                        "`test` is the fraction of rows held out and must lie in [0, 1), \
                         not {test_fraction}"
                    )));
                }
                let seed = call.int("seed", 2)?.map_or(Ok(DEFAULT_SPLIT_SEED), |s| {
                    u64::try_from(s)
                        .map_err(|_| call.error(format!("`seed` must be non-negative, not {s}")))
                })?;
                DataSpec::Csv {
                    path,
                    test_fraction,
                    seed,
                }
            }
            _ => {
                return Err(call.error(format!("unknown data set `{name}`; known: {KNOWN}")));
            }
        };
        call.finish()?;
        Ok(spec)
    }

    /// The spec with relative paths taken as relative to `base` (the directory of the file
    /// that names them).
    pub fn relative_to(&self, base: &Path) -> DataSpec {
        let anchor = |p: &PathBuf| {
            if p.is_relative() {
                base.join(p)
            } else {
                p.clone()
            }
        };
        match self {
            DataSpec::Fmnist { dir: Some(dir) } => DataSpec::Fmnist {
                dir: Some(anchor(dir)),
            },
            DataSpec::Npz(path) => DataSpec::Npz(anchor(path)),
            DataSpec::Text { path, seq } => DataSpec::Text {
                path: anchor(path),
                seq: *seq,
            },
            DataSpec::Csv {
                path,
                test_fraction,
                seed,
            } => DataSpec::Csv {
                path: anchor(path),
                test_fraction: *test_fraction,
                seed: *seed,
            },
            other => other.clone(),
        }
    }
}

impl fmt::Display for DataSpec {
    /// The spec as text that parses back to it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted = |p: &Path| format!("{:?}", p.display().to_string());
        match self {
            DataSpec::Digits => write!(f, "digits"),
            DataSpec::Mnist5k => write!(f, "mnist5k"),
            DataSpec::Fmnist { dir: None } => write!(f, "fmnist"),
            DataSpec::Fmnist { dir: Some(dir) } => write!(f, "fmnist(dir = {})", quoted(dir)),
            DataSpec::Shakespeare { seq } => write!(f, "shakespeare(seq = {seq})"),
            DataSpec::Text { path, seq } => write!(f, "text({}, seq = {seq})", quoted(path)),
            DataSpec::Npz(path) => write!(f, "npz({})", quoted(path)),
            DataSpec::Csv {
                path,
                test_fraction,
                seed,
            } => write!(
                f,
                "csv({}, test = {test_fraction:?}, seed = {seed})",
                quoted(path)
            ),
        }
    }
}

impl FromStr for DataSpec {
    type Err = DataError;

    /// Parses `name` or `name(arg, key = arg, ...)`, arguments being integers, decimals or
    /// double-quoted strings (with `\"` and `\\` escapes).
    fn from_str(text: &str) -> Result<DataSpec, DataError> {
        let error = |problem: &str| DataError::Spec {
            spec: text.trim().to_string(),
            problem: problem.to_string(),
        };
        let mut scan = Scanner::new(text);
        let name = scan
            .word()
            .ok_or_else(|| error("expected a data set name"))?;
        let mut args = Vec::new();
        if scan.eat('(') {
            while !scan.eat(')') {
                if !args.is_empty() && !scan.eat(',') {
                    return Err(error("expected `,` or `)` after an argument"));
                }
                if scan.eat(')') {
                    break;
                }
                let mut name = None;
                let mark = scan.pos;
                if let Some(word) = scan.word() {
                    if scan.eat('=') {
                        name = Some(word);
                    } else {
                        scan.pos = mark;
                    }
                }
                let value = scan
                    .value()
                    .ok_or_else(|| error("expected a number or a \"string\" argument"))?;
                args.push(SpecArg { name, value });
            }
        }
        if !scan.at_end() {
            return Err(error("unexpected text after the spec"));
        }
        DataSpec::from_call(&name, &args).map_err(|e| match e {
            DataError::Spec { problem, .. } => error(&problem),
            other => other,
        })
    }
}

/// The arguments of one spec call, taken one by one; `finish` rejects any left over.
struct Call<'a> {
    name: &'a str,
    args: &'a [SpecArg],
    used: Vec<bool>,
}

impl<'a> Call<'a> {
    fn new(name: &'a str, args: &'a [SpecArg]) -> Call<'a> {
        Call {
            name,
            args,
            used: vec![false; args.len()],
        }
    }

    fn error(&self, problem: String) -> DataError {
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| match &a.name {
                Some(name) => format!("{name} = {}", a.value),
                None => a.value.to_string(),
            })
            .collect();
        let spec = if args.is_empty() {
            self.name.to_string()
        } else {
            format!("{}({})", self.name, args.join(", "))
        };
        DataError::Spec { spec, problem }
    }

    /// The argument named `key`, or else the positional argument at `position`.
    fn take(&mut self, key: &str, position: usize) -> Option<&'a SpecValue> {
        let named = self
            .args
            .iter()
            .position(|a| a.name.as_deref() == Some(key));
        let index = named.or_else(|| {
            let positional = self.args.iter().take_while(|a| a.name.is_none()).count();
            (position < positional).then_some(position)
        })?;
        self.used[index] = true;
        Some(&self.args[index].value)
    }

    fn string(&mut self, key: &str, position: usize) -> Result<Option<String>, DataError> {
        match self.take(key, position) {
            None => Ok(None),
            Some(SpecValue::Str(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.error(format!("`{key}` must be a string, not {other}"))),
        }
    }

    fn int(&mut self, key: &str, position: usize) -> Result<Option<i64>, DataError> {
        match self.take(key, position) {
            None => Ok(None),
            Some(SpecValue::Int(v)) => Ok(Some(*v)),
            Some(other) => Err(self.error(format!("`{key}` must be an integer, not {other}"))),
        }
    }

    fn number(&mut self, key: &str, position: usize) -> Result<Option<f64>, DataError> {
        match self.take(key, position) {
            None => Ok(None),
            Some(SpecValue::Int(v)) => Ok(Some(*v as f64)),
            Some(SpecValue::Float(v)) => Ok(Some(*v)),
            Some(other) => Err(self.error(format!("`{key}` must be a number, not {other}"))),
        }
    }

    /// A text window length: a positive integer, `DEFAULT_SEQ` when not given.
    fn window(&mut self, key: &str, position: usize) -> Result<usize, DataError> {
        let seq = self.int(key, position)?.unwrap_or(DEFAULT_SEQ as i64);
        match usize::try_from(seq) {
            Ok(seq) if seq > 0 => Ok(seq),
            _ => Err(self.error(format!("`{key}` must be at least 1, not {seq}"))),
        }
    }

    fn required_path(&mut self) -> Result<PathBuf, DataError> {
        match self.string("path", 0)? {
            Some(path) => Ok(PathBuf::from(path)),
            None => Err(self.error(format!(
                "`{}` needs a file: {}(\"path\")",
                self.name, self.name
            ))),
        }
    }

    fn finish(&self) -> Result<(), DataError> {
        match self.used.iter().position(|used| !used) {
            None => Ok(()),
            Some(i) => {
                let arg = &self.args[i];
                let what = match &arg.name {
                    Some(name) => format!("argument `{name}`"),
                    None => format!("positional argument {}", arg.value),
                };
                Err(self.error(format!("`{}` takes no {what}", self.name)))
            }
        }
    }
}

/// A cursor over spec text that skips whitespace before each token.
struct Scanner<'t> {
    text: &'t str,
    pos: usize,
}

impl<'t> Scanner<'t> {
    fn new(text: &'t str) -> Scanner<'t> {
        Scanner { text, pos: 0 }
    }

    fn rest(&mut self) -> &'t str {
        let rest = &self.text[self.pos..];
        let trimmed = rest.trim_start();
        self.pos += rest.len() - trimmed.len();
        trimmed
    }

    fn at_end(&mut self) -> bool {
        self.rest().is_empty()
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.rest().starts_with(c);
        if found {
            self.pos += c.len_utf8();
        }
        found
    }

    /// An identifier: a letter or `_`, then letters, digits and `_`.
    fn word(&mut self) -> Option<String> {
        let rest = self.rest();
        let first = rest.chars().next()?;
        if !(first.is_ascii_alphabetic() || first == '_') {
            return None;
        }
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        self.pos += len;
        Some(rest[..len].to_string())
    }

    fn value(&mut self) -> Option<SpecValue> {
        let rest = self.rest();
        if let Some(body) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = body.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        self.pos += 1 + i + 1;
                        return Some(SpecValue::Str(value));
                    }
                    '\\' => value.push(chars.next()?.1),
                    c => value.push(c),
                }
            }
            return None;
        }
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+')))
            .unwrap_or(rest.len());
        let token = &rest[..len];
        let value = if let Ok(v) = token.parse::<i64>() {
            SpecValue::Int(v)
        } else {
            SpecValue::Float(token.parse::<f64>().ok().filter(|v| v.is_finite())?)
        };
        self.pos += len;
        Some(value)
    }
}
