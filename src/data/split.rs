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
    /// Bytes (pixels); the feature value is `byte as f32 / divisor`.
    Bytes { data: Vec<u8>, divisor: f32 },
    /// Arbitrary numbers.
    Floats(Vec<f32>),
}

impl Features {
    /// Appends the features of example `index` (each example holds `width` of them).
    fn push_example(&self, index: usize, width: usize, out: &mut Vec<f32>) {
        let range = index * width..(index + 1) * width;
        match self {
            Features::Bytes { data, divisor } => {
                out.extend(data[range].iter().map(|&b| f32::from(b) / divisor))
            }
            Features::Floats(data) => out.extend_from_slice(&data[range]),
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
            Features::Bytes { data, divisor } => Features::Bytes {
                data: gather(data, width, rows),
                divisor: *divisor,
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

    /// The number of examples.
    pub fn len(&self) -> usize {
        match &self.examples {
            Examples::Table { count, .. } => *count,
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
        };
        held as u64
    }

    /// The shape of one example's features, without the batch axis: `[8, 8]` for the digits,
    /// `[N]` (token ids) for text.
    pub fn example_shape(&self) -> Vec<usize> {
        match &self.examples {
            Examples::Table { shape, .. } => shape.clone(),
            Examples::Text { seq, .. } => vec![*seq],
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
        let input_per = self.per_example(Role::Input, input_shape, indices.len())?;
        let target_per = self.per_example(Role::Target, target_shape, indices.len())?;
        let len = self.len();
        if let Some(&index) = indices.iter().find(|&&i| i >= len) {
            return Err(DataError::IndexOutOfRange {
                dataset: self.dataset.to_string(),
                index,
                len,
            });
        }
        let mut inputs = Vec::new();
        let mut targets = Vec::new();
        match &self.examples {
            Examples::Table {
                features,
                shape,
                targets: kinds,
                ..
            } => {
                let width: usize = shape.iter().product();
                if input_per != width {
                    return Err(self.mismatch(Role::Input, input_shape));
                }
                let target_layout = self.target_layout(kinds, target_shape, target_per)?;
                inputs.reserve(indices.len() * width);
                targets.reserve(indices.len() * target_per);
                for &i in indices {
                    features.push_example(i, width, &mut inputs);
                    match kinds {
                        Targets::Classes { labels, .. } => {
                            push_ids([labels[i] as usize], target_layout, &mut targets)
                        }
                        Targets::Values { data, .. } => {
                            targets.extend_from_slice(&data[i * target_per..(i + 1) * target_per])
                        }
                    }
                }
            }
            Examples::Text { tokens, seq, .. } => {
                let input_layout = self.token_layout(Role::Input, input_shape, input_per)?;
                let target_layout = self.token_layout(Role::Target, target_shape, target_per)?;
                inputs.reserve(indices.len() * input_per);
                targets.reserve(indices.len() * target_per);
                let ids =
                    |range: std::ops::Range<usize>| tokens[range].iter().map(|&t| usize::from(t));
                for &i in indices {
                    let start = i * seq;
                    push_ids(ids(start..start + seq), input_layout, &mut inputs);
                    push_ids(ids(start + 1..start + seq + 1), target_layout, &mut targets);
                }
            }
        }
        let inputs = self.array(Role::Input, input_shape, inputs)?;
        let targets = self.array(Role::Target, target_shape, targets)?;
        Ok((inputs, targets))
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
            Examples::Table { shape, .. } => {
                let width: usize = shape.iter().product();
                let mut natural = vec![batch];
                natural.extend(shape);
                format!(
                    "{} (or any shape with {width} values after the batch axis)",
                    shape_text(&natural)
                )
            }
            Examples::Text { seq, vocab, .. } => format!(
                "{} (token ids) or {} (one-hot)",
                shape_text(&[batch, *seq]),
                shape_text(&[batch, *seq, *vocab])
            ),
        }
    }

    /// Describes the target shapes that fit, with the declared batch size.
    fn target_fits(&self, declared: &[usize]) -> String {
        let batch = declared.first().copied().unwrap_or(0);
        match &self.examples {
            Examples::Table {
                targets: Targets::Classes { classes, .. },
                ..
            } => format!(
                "{} (one-hot over {classes} classes) or {} (class index)",
                shape_text(&[batch, *classes]),
                shape_text(&[batch])
            ),
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
