//! Whether a model fits in memory, checked before anything is allocated.
//!
//! Running a model holds at least its parameters, one update (gradient) of each, and its
//! largest single value; training and evaluating also hold the data set, as loaded. That
//! lower bound is compared with the memory this process may use — the smallest of
//! `MemAvailable` (`/proc/meminfo`), the cgroup's `memory.max` less its `memory.current`, and
//! a limit the user gives — so a model that cannot fit ends with a diagnostic naming its
//! largest tensors (and the data set) instead of an allocation failure. Being a lower bound,
//! it never refuses a model that would have fitted.
//!
//! The model alone is checked as soon as it is compiled; the model with its data set once the
//! data set is loaded (its size is known only then) and before the parameters and the
//! training step's buffers are allocated. The data set is then already held, so what the
//! system reports available is counted on top of it.

use crate::ir::{LeafKind, Op, Program};

/// What a model needs at least, in bytes, and its largest tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Footprint {
    pub params: u64,
    pub largest_value: u64,
    /// The largest parameters and computed values: (what, name, shape, bytes), largest first.
    pub largest: Vec<(String, String, String, u64)>,
}

impl Footprint {
    /// The largest tensors, as a diagnostic lists them.
    pub fn largest_text(&self) -> String {
        let largest: Vec<String> = self
            .largest
            .iter()
            .map(|(what, name, shape, bytes)| {
                format!("{what} `{name}`: {shape}, {}", bytes_text(*bytes))
            })
            .collect();
        largest.join("; ")
    }

    /// The parameters, their updates and the largest value.
    pub fn at_least(&self) -> u64 {
        2 * self.params + self.largest_value
    }
}

const F32: u64 = std::mem::size_of::<f32>() as u64;

/// The footprint of a forward program.
pub fn footprint(forward: &Program) -> Footprint {
    let mut params = 0;
    let mut largest_value = 0;
    let mut tensors = Vec::new();
    for node in &forward.nodes {
        let bytes = node.shape.numel() as u64 * F32;
        let what = match node.op {
            Op::Leaf(LeafKind::Param) => {
                params += bytes;
                "param"
            }
            Op::Leaf(LeafKind::Input) => "input",
            Op::Leaf(LeafKind::Target) => "target",
            Op::Leaf(_) | Op::Const(_) => continue,
            _ => {
                largest_value = largest_value.max(bytes);
                "value"
            }
        };
        // Unnamed intermediates are not something the user can find in the source.
        let Some(name) = node.name.clone() else {
            continue;
        };
        tensors.push((what.to_string(), name, node.shape.to_string(), bytes));
    }
    tensors.sort_by_key(|t| std::cmp::Reverse(t.3));
    tensors.truncate(3);
    Footprint {
        params,
        largest_value,
        largest: tensors,
    }
}

/// The bytes this process may still allocate, as far as the system says; `None` when it does
/// not say.
pub fn available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        });
    let read =
        |path: &str| -> Option<u64> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    let cgroup = match (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        (Some(max), Some(current)) => Some(max.saturating_sub(current)),
        _ => None,
    };
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Writes a byte count with a binary unit: `37.3 GiB`.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A loaded data set, as the memory bound counts it.
#[derive(Clone, Debug, PartialEq)]
pub struct DataBytes {
    /// The data set's name (`digits`) or file.
    pub name: String,
    /// What its train and test splits hold (`data::Dataset::bytes`).
    pub bytes: u64,
}

impl From<&crate::data::Dataset> for DataBytes {
    fn from(data: &crate::data::Dataset) -> Self {
        DataBytes {
            name: data.name.clone(),
            bytes: data.bytes(),
        }
    }
}

/// An error when the model cannot fit in `limit` bytes (or in what the system has available
/// when there is no limit), with `data`, a data set already loaded, if any.
pub fn ensure_fits(
    forward: &Program,
    data: Option<&DataBytes>,
    limit: Option<u64>,
) -> Result<(), String> {
    let footprint = footprint(forward);
    let held = data.map_or(0, |d| d.bytes);
    // The data set is allocated already: the memory available now comes on top of it.
    let available = available().map(|a| a.saturating_add(held));
    let (room, source) = match (limit, available) {
        (Some(l), Some(a)) if a < l => (a, "available"),
        (Some(l), _) => (l, "allowed by --memory-limit"),
        (None, Some(a)) => (a, "available"),
        (None, None) => return Ok(()),
    };
    let need = footprint.at_least() + held;
    if need <= room {
        return Ok(());
    }
    let (what, data_part) = match data {
        Some(d) => (
            format!("model `{}` with the data set `{}`", forward.name, d.name),
            format!(", the data set {}", bytes_text(d.bytes)),
        ),
        None => (format!("model `{}`", forward.name), String::new()),
    };
    Err(format!(
        "{what} needs at least {} ({need} bytes) of memory — parameters {}, their updates as \
         much again, its largest value {}{data_part} — but {} are {source}\n  largest tensors: {}",
        bytes_text(need),
        bytes_text(footprint.params),
        bytes_text(footprint.largest_value),
        bytes_text(room),
        footprint.largest_text()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{BinaryOp, LeafKind, Program, Shape};

    fn model(n: usize) -> Program {
        let mut p = Program::new("m");
        let x = p.leaf(LeafKind::Input, "x", Shape::new(vec![4, n]));
        p.leaf(LeafKind::Param, "w", Shape::new(vec![n, n]));
        let y = p.binary(BinaryOp::Mul, x, x);
        p.set_output("loss", y);
        p
    }

    #[test]
    fn the_footprint_counts_parameters_twice_and_the_largest_value() {
        let f = footprint(&model(100));
        assert_eq!(f.params, 100 * 100 * 4);
        assert_eq!(f.largest_value, 4 * 100 * 4);
        assert_eq!(f.at_least(), 2 * 40_000 + 1_600);
        assert_eq!(f.largest[0].1, "w");
    }

    #[test]
    fn a_model_over_the_limit_names_its_largest_parameter() {
        let err = ensure_fits(&model(100), None, Some(50_000)).expect_err("over the limit");
        assert!(err.contains("`w`") && err.contains("81600 bytes"), "{err}");
        assert!(
            ensure_fits(&model(100), None, Some(81_600)).is_ok()
                || available().is_some_and(|a| a < 81_600)
        );
    }

    #[test]
    fn the_data_set_counts_towards_the_bound() {
        let data = DataBytes {
            name: "digits".to_string(),
            bytes: 10_000,
        };
        let err = ensure_fits(&model(100), Some(&data), Some(90_000)).expect_err("over");
        assert!(
            err.contains("data set `digits`") && err.contains("91600 bytes"),
            "{err}"
        );
        assert!(
            ensure_fits(&model(100), None, Some(90_000)).is_ok()
                || available().is_some_and(|a| a < 81_600)
        );
    }

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(bytes_text(512), "512 bytes");
        assert_eq!(bytes_text(3 << 20), "3.0 MiB");
        assert_eq!(bytes_text(40_000_000_000), "37.3 GiB");
    }
}
