//! A split of a data set and the batches cut from it.
//!
//! A split keeps its examples in their compact form — image pixels as bytes, text as token
//! ids — and converts only the examples of one batch to `f32`, shaped as the model declares
//! its input and target. The fitting rules:
//!
//! - **Features.** Everything after the batch axis must hold exactly the example's feature
//!   count, in row-major order: the digits fit `[B, 64]`, `[B, 8, 8]` and `[B, 1, 8, 8]` alike.
//! - **Class targets.** `[B]` holds the class index as a float; any other shape must hold
//!   exactly `C` values per example and gets the one-hot vector (`[B, C]`).
//! - **Value targets** (float `y` arrays of an `.npz`) must hold the stored values per example.
//! - **Text.** A window of `N` tokens fits an input of `N` values per example (token ids, as
//!   floats) or `N·V` (one-hot over the vocabulary, `[B, N, V]`); the next-token targets follow
//!   the same two rules.
//!
//! Axis 0 of both shapes is the batch and must equal the number of examples asked for.

use super::error::{shape_text, DataError, Role};
use ndarray::{ArrayD, IxDyn};
use std::sync::Arc;

/// Example features, in the smallest form that holds them exactly.
#[derive(Clone, Debug)]
pub(crate) enum Features {
    /// Bytes (pixels); the feature value is `byte as f32 / divisor + offset`.
    Bytes {
        data: Vec<u8>,
        divisor: f32,
        offset: f32,
    },
    /// Arbitrary numbers.
    Floats(Vec<f32>),
}

impl Features {
    /// Appends the features of example `index` (each example holds `width` of them).
    fn push_example(&self, index: usize, width: usize, out: &mut Vec<f32>) {
        let range = index * width..(index + 1) * width;
        match self {
            Features::Bytes {
                data,
                divisor,
                offset,
            } => out.extend(data[range].iter().map(|&b| f32::from(b) / divisor + offset)),
            Features::Floats(data) => out.extend_from_slice(&data[range]),
        }
    }

    /// The features with every value v mapped to `low + (high − low) v`.
    fn rescaled(&mut self, low: f32, high: f32) {
        let width = high - low;
        match self {
            Features::Bytes {
                divisor, offset, ..
            } => {
                *divisor /= width;
                *offset = low + width * *offset;
            }
            Features::Floats(data) => data.iter_mut().for_each(|v| *v = low + width * *v),
        }
    }

    /// The features of the given examples only.
    pub(crate) fn select(&self, width: usize, rows: &[usize]) -> Features {
        fn gather<T: Copy>(data: &[T], width: usize, rows: &[usize]) -> Vec<T> {
            let mut out = Vec::with_capacity(rows.len() * width);
            for &row in rows {
                out.extend_from_slice(&data[row * width..(row + 1) * width]);
            }
            out
        }
        match self {
            Features::Bytes {
                data,
                divisor,
                offset,
            } => Features::Bytes {
                data: gather(data, width, rows),
                divisor: *divisor,
                offset: *offset,
            },
            Features::Floats(data) => Features::Floats(gather(data, width, rows)),
        }
    }
}

/// What an example is to be mapped to.
#[derive(Clone, Debug)]
pub(crate) enum Targets {
    /// One class index per example, each below `classes`.
    Classes { labels: Vec<u32>, classes: usize },
    /// A tensor of values per example, of the given shape.
    Values { data: Vec<f32>, shape: Vec<usize> },
}

impl Targets {
    pub(crate) fn select(&self, rows: &[usize]) -> Targets {
        match self {
            Targets::Classes { labels, classes } => Targets::Classes {
                labels: rows.iter().map(|&r| labels[r]).collect(),
                classes: *classes,
            },
            Targets::Values { data, shape } => {
                let width: usize = shape.iter().product();
                let mut out = Vec::with_capacity(rows.len() * width);
                for &row in rows {
                    out.extend_from_slice(&data[row * width..(row + 1) * width]);
                }
                Targets::Values {
                    data: out,
                    shape: shape.clone(),
                }
            }
        }
    }
}

/// One named array of a data set whose arrays are named after the model's leaves (an `.npz`
/// of `<name>_train` and `<name>_test` arrays): the values of one input or target.
#[derive(Clone, Debug)]
pub(crate) struct Column {
    pub name: String,
    pub data: ColumnData,
}

#[derive(Clone, Debug)]
pub(crate) enum ColumnData {
    /// Numbers, `shape.product()` of them per example.
    Values {
        features: Features,
        shape: Vec<usize>,
    },
    /// One class index per example (one-dimensional integers), each below `classes`.
    Labels { labels: Vec<u32>, classes: usize },
}

impl Column {
    fn bytes(&self) -> usize {
        match &self.data {
            ColumnData::Values {
                features: Features::Bytes { data, .. },
                ..
            } => std::mem::size_of_val(data.as_slice()),
            ColumnData::Values {
                features: Features::Floats(data),
                ..
            } => std::mem::size_of_val(data.as_slice()),
            ColumnData::Labels { labels, .. } => std::mem::size_of_val(labels.as_slice()),
        }
    }

    /// Describes the shapes that fit, with the declared batch size.
    fn fits(&self, batch: usize) -> String {
        match &self.data {
            ColumnData::Values { shape, .. } => values_fit(batch, shape),
            ColumnData::Labels { classes, .. } => classes_fit(batch, *classes),
        }
    }
}

/// The leaves a batch binds: the model's inputs and targets, by name, with their declared
/// shapes (axis 0 the batch).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Leaves {
    pub inputs: Vec<(String, Vec<usize>)>,
    pub targets: Vec<(String, Vec<usize>)>,
}

#[derive(Clone, Debug)]
enum Examples {
    /// `count` fixed-size feature vectors with a target each; `shape` is one example's
    /// natural shape.
    Table {
        count: usize,
        features: Features,
        shape: Vec<usize>,
        targets: Targets,
    },
    /// Consecutive, non-overlapping windows of `seq` tokens over `tokens`; each window's
    /// target is the same window moved one token on.
    Text {
        tokens: Vec<u16>,
        seq: usize,
        vocab: usize,
    },
    /// `count` examples of named arrays, one per input or target of the model.
    Columns { count: usize, columns: Vec<Column> },
}

/// The train or test part of a data set.
#[derive(Clone, Debug)]
pub struct Split {
    /// The data set's name, for error messages.
    dataset: Arc<str>,
    examples: Examples,
}

impl Split {
    /// A split of `count` fixed-size examples. `features` holds `shape.product()` values per
    /// example and there is one target per example; the caller guarantees both.
    pub(crate) fn table(
        dataset: Arc<str>,
        count: usize,
        features: Features,
        shape: Vec<usize>,
        targets: Targets,
    ) -> Split {
        Split {
            dataset,
            examples: Examples::Table {
                count,
                features,
                shape,
                targets,
            },
        }
    }

    /// A split of windows of `seq` tokens over `tokens`, whose ids are below `vocab`.
    pub(crate) fn text(dataset: Arc<str>, tokens: Vec<u16>, seq: usize, vocab: usize) -> Split {
        Split {
            dataset,
            examples: Examples::Text { tokens, seq, vocab },
        }
    }

    /// A split of `count` examples of named arrays; each column holds `count` examples.
    pub(crate) fn columns(dataset: Arc<str>, count: usize, columns: Vec<Column>) -> Split {
        Split {
            dataset,
            examples: Examples::Columns { count, columns },
        }
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        match &self.examples {
            Examples::Table { count, .. } | Examples::Columns { count, .. } => *count,
            // Window i reads tokens i·seq ..= i·seq + seq (the last one as its final target).
            Examples::Text { tokens, seq, .. } => tokens.len().saturating_sub(1) / seq,
        }
    }

    /// Whether the split has no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes its examples hold in memory: features as stored (bytes or `f32`), class labels
    /// as `u32`, target values as `f32`, text as `u16` token ids.
    pub fn bytes(&self) -> u64 {
        let held = match &self.examples {
            Examples::Table {
                features, targets, ..
            } => {
                let features = match features {
                    Features::Bytes { data, .. } => std::mem::size_of_val(data.as_slice()),
                    Features::Floats(data) => std::mem::size_of_val(data.as_slice()),
                };
                let targets = match targets {
                    Targets::Classes { labels, .. } => std::mem::size_of_val(labels.as_slice()),
                    Targets::Values { data, .. } => std::mem::size_of_val(data.as_slice()),
                };
                features + targets
            }
            Examples::Text { tokens, .. } => std::mem::size_of_val(tokens.as_slice()),
            Examples::Columns { columns, .. } => columns.iter().map(Column::bytes).sum(),
        };
        held as u64
    }

    /// The shape of one example's features, without the batch axis: `[8, 8]` for the digits,
    /// `[N]` (token ids) for text.
    pub fn example_shape(&self) -> Vec<usize> {
        match &self.examples {
            Examples::Table { shape, .. } => shape.clone(),
            Examples::Text { seq, .. } => vec![*seq],
            Examples::Columns { columns, .. } => match columns.first().map(|c| &c.data) {
                Some(ColumnData::Values { shape, .. }) => shape.clone(),
                _ => Vec::new(),
            },
        }
    }

    /// Maps every input value v (a table's features) to `low + (high − low) v`: pixels from
    /// [0, 1] to [low, high]. Text and named arrays have no one input to map (an error).
    pub fn rescale_inputs(&mut self, low: f32, high: f32) -> Result<(), DataError> {
        match &mut self.examples {
            Examples::Table { features, .. } => {
                features.rescaled(low, high);
                Ok(())
            }
            _ => Err(DataError::Leaves {
                dataset: self.dataset.to_string(),
                problem: "`input_range` maps the inputs of an image or table data set, not token ids or named arrays".to_string(),
            }),
        }
    }

    /// The names of a split of named arrays (empty for other splits).
    pub fn column_names(&self) -> Vec<&str> {
        match &self.examples {
            Examples::Columns { columns, .. } => columns.iter().map(|c| c.name.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    /// Features and targets of the given examples, shaped to the model's declared input and
    /// target shapes (both with the batch size as axis 0).
    pub fn batch(
        &self,
        indices: &[usize],
        input_shape: &[usize],
        target_shape: &[usize],
    ) -> Result<(ArrayD<f32>, ArrayD<f32>), DataError> {
        let inputs = self.inputs(indices, input_shape)?;
        let targets = self.targets(indices, target_shape)?;
        Ok((inputs, targets))
    }

    /// The arrays of every leaf for the given examples, by leaf name. A split of named arrays
    /// gives each leaf the array of its name (the model's only input may also take `x`, its
    /// only target `y`); any other split feeds one input and at most one target (a model
    /// without a target, an autoencoder's, takes the inputs alone).
    pub fn batch_of(
        &self,
        indices: &[usize],
        leaves: &Leaves,
    ) -> Result<crate::npz::Arrays, DataError> {
        let mut out = crate::npz::Arrays::new();
        if let Examples::Columns { columns, .. } = &self.examples {
            for (role, group, fallback) in [
                (Role::Input, &leaves.inputs, "x"),
                (Role::Target, &leaves.targets, "y"),
            ] {
                for (name, shape) in group {
                    let only = group.len() == 1;
                    let column = columns
                        .iter()
                        .find(|c| c.name == *name)
                        .or_else(|| columns.iter().find(|c| only && c.name == fallback))
                        .ok_or_else(|| self.no_array(role, name, columns))?;
                    out.insert(name.clone(), self.column(column, role, indices, shape)?);
                }
            }
            return Ok(out);
        }
        match (leaves.inputs.as_slice(), leaves.targets.as_slice()) {
            ([(x, xs)], []) => {
                out.insert(x.clone(), self.inputs(indices, xs)?);
            }
            ([(x, xs)], [(y, ys)]) => {
                let (inputs, targets) = self.batch(indices, xs, ys)?;
                out.insert(x.clone(), inputs);
                out.insert(y.clone(), targets);
            }
            (inputs, targets) => {
                let names: Vec<&str> = inputs
                    .iter()
                    .chain(targets)
                    .map(|(n, _)| n.as_str())
                    .collect();
                return Err(DataError::Leaves {
                    dataset: self.dataset.to_string(),
                    problem: format!(
                        "its examples are one input and one target, but the model has {} input(s) and {} target(s) ({}); give each its own arrays, an .npz of `<name>_train` and `<name>_test` for every one",
                        inputs.len(),
                        targets.len(),
                        names.join(", ")
                    ),
                });
            }
        }
        Ok(out)
    }

    /// The error for a leaf that no named array feeds.
    fn no_array(&self, role: Role, name: &str, columns: &[Column]) -> DataError {
        let have: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        DataError::Leaves {
            dataset: self.dataset.to_string(),
            problem: format!(
                "no arrays for the model's {role} `{name}` (name them `{name}_train` and `{name}_test`; the data set has {})",
                have.join(", ")
            ),
        }
    }

    /// One named array's values for the given examples, shaped as a leaf declares.
    fn column(
        &self,
        column: &Column,
        role: Role,
        indices: &[usize],
        shape: &[usize],
    ) -> Result<ArrayD<f32>, DataError> {
        let per = self.per_example(role, shape, indices.len())?;
        self.check_indices(indices)?;
        let mismatch = || DataError::ShapeMismatch {
            dataset: format!("{} (array `{}`)", self.dataset, column.name),
            role,
            declared: shape.to_vec(),
            fits: column.fits(shape.first().copied().unwrap_or(0)),
        };
        let mut out = Vec::with_capacity(indices.len() * per);
        match &column.data {
            ColumnData::Values {
                features,
                shape: own,
            } => {
                let width: usize = own.iter().product();
                if per != width {
                    return Err(mismatch());
                }
                for &i in indices {
                    features.push_example(i, width, &mut out);
                }
            }
            ColumnData::Labels { labels, classes } => {
                let layout = if shape.len() == 1 {
                    Layout::Ids
                } else if per == *classes {
                    Layout::OneHot(*classes)
                } else {
                    return Err(mismatch());
                };
                push_ids(
                    indices.iter().map(|&i| labels[i] as usize),
                    layout,
                    &mut out,
                );
            }
        }
        ArrayD::from_shape_vec(IxDyn(shape), out).map_err(|_| mismatch())
    }

    /// An error for the first index past the split's end.
    fn check_indices(&self, indices: &[usize]) -> Result<(), DataError> {
        let len = self.len();
        match indices.iter().find(|&&i| i >= len) {
            Some(&index) => Err(DataError::IndexOutOfRange {
                dataset: self.dataset.to_string(),
                index,
                len,
            }),
            None => Ok(()),
        }
    }

    /// The inputs of the given examples, shaped to the model's declared input shape.
    pub fn inputs(&self, indices: &[usize], shape: &[usize]) -> Result<ArrayD<f32>, DataError> {
        let per = self.per_example(Role::Input, shape, indices.len())?;
        self.check_indices(indices)?;
        let mut inputs = Vec::with_capacity(indices.len().saturating_mul(per.min(1 << 20)));
        match &self.examples {
            Examples::Table {
                features,
                shape: own,
                ..
            } => {
                let width: usize = own.iter().product();
                if per != width {
                    return Err(self.mismatch(Role::Input, shape));
                }
                for &i in indices {
                    features.push_example(i, width, &mut inputs);
                }
            }
            Examples::Text { tokens, seq, .. } => {
                let layout = self.token_layout(Role::Input, shape, per)?;
                for &i in indices {
                    let start = i * seq;
                    let ids = tokens[start..start + seq].iter().map(|&t| usize::from(t));
                    push_ids(ids, layout, &mut inputs);
                }
            }
            Examples::Columns { .. } => return Err(self.mismatch(Role::Input, shape)),
        }
        self.array(Role::Input, shape, inputs)
    }

    /// The targets of the given examples, shaped to the model's declared target shape.
    pub fn targets(&self, indices: &[usize], shape: &[usize]) -> Result<ArrayD<f32>, DataError> {
        let per = self.per_example(Role::Target, shape, indices.len())?;
        self.check_indices(indices)?;
        let mut targets = Vec::with_capacity(indices.len().saturating_mul(per.min(1 << 20)));
        match &self.examples {
            Examples::Table { targets: kinds, .. } => {
                let layout = self.target_layout(kinds, shape, per)?;
                for &i in indices {
                    match kinds {
                        Targets::Classes { labels, .. } => {
                            push_ids([labels[i] as usize], layout, &mut targets)
                        }
                        Targets::Values { data, .. } => {
                            targets.extend_from_slice(&data[i * per..(i + 1) * per])
                        }
                    }
                }
            }
            Examples::Text { tokens, seq, .. } => {
                let layout = self.token_layout(Role::Target, shape, per)?;
                for &i in indices {
                    let start = i * seq + 1;
                    let ids = tokens[start..start + seq].iter().map(|&t| usize::from(t));
                    push_ids(ids, layout, &mut targets);
                }
            }
            Examples::Columns { .. } => return Err(self.mismatch(Role::Target, shape)),
        }
        self.array(Role::Target, shape, targets)
    }

    /// The number of values per example of a declared shape, after checking its batch axis.
    fn per_example(&self, role: Role, shape: &[usize], batch: usize) -> Result<usize, DataError> {
        let Some((&first, rest)) = shape.split_first() else {
            return Err(self.mismatch(role, shape));
        };
        if first != batch {
            return Err(DataError::BatchSize {
                dataset: self.dataset.to_string(),
                role,
                declared: shape.to_vec(),
                examples: batch,
            });
        }
        // A product that overflows cannot match any example; usize::MAX stands in for it.
        Ok(rest
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX))
    }

    /// How class targets are written for a declared shape; value targets must match in size
    /// (and are copied, whatever the returned layout).
    fn target_layout(
        &self,
        kinds: &Targets,
        shape: &[usize],
        per: usize,
    ) -> Result<Layout, DataError> {
        match kinds {
            Targets::Classes { .. } if shape.len() == 1 => Ok(Layout::Ids),
            Targets::Classes { classes, .. } if per == *classes => Ok(Layout::OneHot(*classes)),
            Targets::Values { shape: own, .. } if per == own.iter().product::<usize>() => {
                Ok(Layout::Ids)
            }
            _ => Err(self.mismatch(Role::Target, shape)),
        }
    }

    /// How tokens are written for a declared shape: `N` ids or `N` one-hot rows.
    fn token_layout(&self, role: Role, shape: &[usize], per: usize) -> Result<Layout, DataError> {
        let Examples::Text { seq, vocab, .. } = &self.examples else {
            return Ok(Layout::Ids);
        };
        if per == *seq {
            Ok(Layout::Ids)
        } else if Some(per) == seq.checked_mul(*vocab) {
            Ok(Layout::OneHot(*vocab))
        } else {
            Err(self.mismatch(role, shape))
        }
    }

    /// Describes the input shapes that fit, with the declared batch size.
    fn input_fits(&self, declared: &[usize]) -> String {
        let batch = declared.first().copied().unwrap_or(0);
        match &self.examples {
            Examples::Table { shape, .. } => values_fit(batch, shape),
            Examples::Text { seq, vocab, .. } => format!(
                "{} (token ids) or {} (one-hot)",
                shape_text(&[batch, *seq]),
                shape_text(&[batch, *seq, *vocab])
            ),
            Examples::Columns { .. } => "named arrays (one per input and target)".to_string(),
        }
    }

    /// Describes the target shapes that fit, with the declared batch size.
    fn target_fits(&self, declared: &[usize]) -> String {
        let batch = declared.first().copied().unwrap_or(0);
        match &self.examples {
            Examples::Table {
                targets: Targets::Classes { classes, .. },
                ..
            } => classes_fit(batch, *classes),
            Examples::Table {
                targets: Targets::Values { shape, .. },
                ..
            } => {
                let mut natural = vec![batch];
                natural.extend(shape);
                shape_text(&natural)
            }
            Examples::Text { seq, vocab, .. } => format!(
                "{} (next-token one-hot) or {} (next-token ids)",
                shape_text(&[batch, *seq, *vocab]),
                shape_text(&[batch, *seq])
            ),
            Examples::Columns { .. } => "named arrays (one per input and target)".to_string(),
        }
    }

    /// The error for a declared shape that does not fit, listing the shapes that would.
    fn mismatch(&self, role: Role, declared: &[usize]) -> DataError {
        let fits = match role {
            Role::Input => self.input_fits(declared),
            Role::Target => self.target_fits(declared),
        };
        DataError::ShapeMismatch {
            dataset: self.dataset.to_string(),
            role,
            declared: declared.to_vec(),
            fits,
        }
    }

    fn array(&self, role: Role, shape: &[usize], data: Vec<f32>) -> Result<ArrayD<f32>, DataError> {
        ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|_| self.mismatch(role, shape))
    }
}

/// The shapes that fit examples of `shape` values, with the batch size `batch`.
fn values_fit(batch: usize, shape: &[usize]) -> String {
    let width: usize = shape.iter().product();
    let mut natural = vec![batch];
    natural.extend(shape);
    format!(
        "{} (or any shape with {width} values after the batch axis)",
        shape_text(&natural)
    )
}

/// The shapes that fit class labels below `classes`, with the batch size `batch`.
fn classes_fit(batch: usize, classes: usize) -> String {
    format!(
        "{} (one-hot over {classes} classes) or {} (class index)",
        shape_text(&[batch, classes]),
        shape_text(&[batch])
    )
}

/// How ids (class labels, tokens) are written into a batch.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Each id as one float.
    Ids,
    /// Each id as a one-hot vector of the given size.
    OneHot(usize),
}

/// Appends ids in a layout; an id is below the one-hot size by construction of the split.
fn push_ids(ids: impl IntoIterator<Item = usize>, layout: Layout, out: &mut Vec<f32>) {
    match layout {
        Layout::Ids => out.extend(ids.into_iter().map(|id| id as f32)),
        Layout::OneHot(size) => {
            for id in ids {
                let start = out.len();
                out.resize(start + size, 0.0);
                out[start + id] = 1.0;
            }
        }
    }
}
