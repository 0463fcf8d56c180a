//! Character-level text: a vocabulary of the text's distinct characters and windows of token
//! ids.
//!
//! The vocabulary is the sorted set of characters of the whole text, so token ids are stable
//! for a given text and every character of the test part has one. Examples are consecutive,
//! non-overlapping windows of `seq` characters; a window's target is the window moved on by
//! one character, so the model learns to predict each next character. The test split is the
//! held-out tail of the text, so no test window overlaps the training text.

use super::error::DataError;
use super::split::Split;
use std::sync::Arc;

/// The characters of a text, sorted; a character's token id is its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    chars: Vec<char>,
}

impl Vocab {
    /// The sorted distinct characters of `text`.
    pub fn from_text(text: &str) -> Vocab {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Vocab { chars }
    }

    /// The number of distinct characters.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Whether the vocabulary is empty (the text was).
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters, in token id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The token id of a character, if the text has it.
    pub fn id(&self, c: char) -> Option<usize> {
        self.chars.binary_search(&c).ok()
    }

    /// The character of a token id.
    pub fn char(&self, id: usize) -> Option<char> {
        self.chars.get(id).copied()
    }

    /// The text of a sequence of token ids; ids outside the vocabulary become `\u{fffd}`.
    pub fn decode(&self, ids: impl IntoIterator<Item = usize>) -> String {
        ids.into_iter()
            .map(|id| self.char(id).unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    }
}

/// A text data set's vocabulary and its train and test splits.
pub(crate) struct TextSplits {
    pub vocab: Vocab,
    pub train: Split,
    pub test: Split,
}

/// Cuts `text` into windows of `seq` characters, holding out the last `test_fraction` of it.
pub(crate) fn windows(
    dataset: &Arc<str>,
    text: &str,
    seq: usize,
    test_fraction: f64,
) -> Result<TextSplits, DataError> {
    let problem = |problem: String| DataError::Text {
        dataset: dataset.to_string(),
        problem,
    };
    if seq == 0 {
        return Err(problem(
            "the window length `seq` must be at least 1".to_string(),
        ));
    }
    let vocab = Vocab::from_text(text);
    if vocab.len() > usize::from(u16::MAX) + 1 {
        return Err(problem(format!(
            "{} distinct characters; at most 65536 are supported",
            vocab.len()
        )));
    }
    let tokens: Vec<u16> = text
        .chars()
        .map(|c| vocab.id(c).map_or(0, |id| id as u16))
        .collect();
    let held_out = (tokens.len() as f64 * test_fraction.clamp(0.0, 1.0)).round() as usize;
    let cut = tokens.len() - held_out.min(tokens.len());
    let (train, test) = tokens.split_at(cut);
    // Each split needs seq + 1 characters for one window and its shifted target.
    let shortest = train.len().min(test.len());
    if shortest <= seq {
        return Err(problem(format!(
            "windows of {seq} characters need at least {} characters in each split, but the \
             {} split has {shortest}",
            seq + 1,
            if train.len() <= test.len() {
                "train"
            } else {
                "test"
            }
        )));
    }
    Ok(TextSplits {
        train: Split::text(dataset.clone(), train.to_vec(), seq, vocab.len()),
        test: Split::text(dataset.clone(), test.to_vec(), seq, vocab.len()),
        vocab,
    })
}
