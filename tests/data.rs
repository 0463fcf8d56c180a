//! The data module: built-in data sets, the file formats, batch shapes and their errors.

use ndarray::{arr1, arr2, Array2, ArrayD, Axis};
use ndarray_npy::NpzWriter;
use pcg::data::idx::{parse_idx, write_idx};
use pcg::data::{epoch_order, DataError, DataSpec, SpecArg, SpecValue};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Loads a data set as the training commands do, rejecting non-finite numbers.
fn load(spec: &DataSpec) -> Result<pcg::data::Dataset, DataError> {
    pcg::data::load(spec, false)
}

/// A fresh, empty directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("data-tests")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

fn message<T: std::fmt::Debug>(result: Result<T, DataError>) -> String {
    result.expect_err("expected an error").to_string()
}

fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

// ---------------------------------------------------------------- digits

#[test]
fn digits_loads_with_a_deterministic_split() {
    let digits = load(&DataSpec::Digits).expect("digits");
    assert_eq!(digits.classes, Some(10));
    assert_eq!(digits.example_shape, vec![8, 8]);
    assert_eq!(digits.train.len() + digits.test.len(), 1797);
    // About a fifth of each class is held out.
    assert!(
        (340..=380).contains(&digits.test.len()),
        "{}",
        digits.test.len()
    );

    let again = load(&DataSpec::Digits).expect("digits");
    let n = digits.test.len();
    let (x1, y1) = digits.test.batch(&all(n), &[n, 64], &[n]).expect("batch");
    let (x2, y2) = again.test.batch(&all(n), &[n, 64], &[n]).expect("batch");
    assert_eq!(x1, x2);
    assert_eq!(y1, y2);

    // Every class appears in both splits.
    for split in [&digits.train, &digits.test] {
        let n = split.len();
        let (_, y) = split.batch(&all(n), &[n, 64], &[n]).expect("batch");
        let mut seen = [false; 10];
        for &label in y.iter() {
            seen[label as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}

#[test]
fn digits_batches_fit_any_input_shape_with_64_values() {
    let digits = load(&DataSpec::Digits).expect("digits");
    let picks = [0, 5, 17, 100];
    let (flat, index) = digits.train.batch(&picks, &[4, 64], &[4]).expect("[B, 64]");
    let (image, one_hot) = digits
        .train
        .batch(&picks, &[4, 1, 8, 8], &[4, 10])
        .expect("[B, 1, 8, 8]");
    assert_eq!(flat.shape(), &[4, 64]);
    assert_eq!(image.shape(), &[4, 1, 8, 8]);
    assert_eq!(index.shape(), &[4]);
    assert_eq!(one_hot.shape(), &[4, 10]);
    assert_eq!(
        flat.iter().collect::<Vec<_>>(),
        image.iter().collect::<Vec<_>>()
    );
    assert!(flat.iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert!(flat.iter().any(|&v| v == 1.0), "pixels of 16 scale to 1");

    for (row, &class) in one_hot.axis_iter(Axis(0)).zip(index.iter()) {
        assert_eq!(row.sum(), 1.0);
        assert_eq!(row[class as usize], 1.0);
    }
}

#[test]
fn a_mismatched_shape_names_both_shapes() {
    let digits = load(&DataSpec::Digits).expect("digits");
    let text = message(digits.train.batch(&[0, 1], &[2, 65], &[2]));
    assert!(text.contains("digits"), "{text}");
    assert!(
        text.contains("[2, 65]") && text.contains("[2, 8, 8]"),
        "{text}"
    );

    let text = message(digits.train.batch(&[0, 1], &[2, 64], &[2, 9]));
    assert!(
        text.contains("[2, 9]") && text.contains("[2, 10]"),
        "{text}"
    );

    let text = message(digits.train.batch(&[0, 1], &[3, 64], &[2]));
    assert!(
        text.contains("[3, 64]") && text.contains("2 examples"),
        "{text}"
    );

    let text = message(digits.train.batch(&[0], &[], &[1]));
    assert!(text.contains("[]"), "{text}");

    let past = digits.train.len();
    let text = message(digits.train.batch(&[past], &[1, 64], &[1]));
    assert!(text.contains("out of range"), "{text}");

    // A shape whose size overflows is a mismatch, not a crash.
    let text = message(digits.train.batch(&[0], &[1, usize::MAX, 4], &[1]));
    assert!(text.contains("does not fit"), "{text}");
}

#[test]
fn mnist5k_loads_as_28_by_28_images() {
    let mnist = load(&DataSpec::Mnist5k).expect("mnist5k");
    assert_eq!(mnist.train.len(), 4000);
    assert_eq!(mnist.test.len(), 1000);
    assert_eq!(mnist.classes, Some(10));
    let (x, y) = mnist
        .test
        .batch(&[0, 999], &[2, 1, 28, 28], &[2, 10])
        .expect("batch");
    assert_eq!(x.shape(), &[2, 1, 28, 28]);
    assert!(x.iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert_eq!(y.sum(), 2.0);
}

// ---------------------------------------------------------------- text

/// A user's text file (gzipped or not): its own vocabulary, the held-out tail as test split,
/// and clear errors for a missing file or bytes that are not UTF-8.
#[test]
fn a_text_file_gives_windows_over_its_own_characters() {
    let dir = scratch("text-file");
    let body = "abcab".repeat(200);
    std::fs::write(dir.join("t.txt"), &body).expect("write");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).expect("gzip");
    std::fs::write(dir.join("t.txt.gz"), gz.finish().expect("gzip")).expect("write");
    for name in ["t.txt", "t.txt.gz"] {
        let spec = DataSpec::Text {
            path: dir.join(name),
            seq: 8,
        };
        let data = load(&spec).expect("loads");
        let vocab = data.vocab.as_ref().expect("vocab");
        assert_eq!(vocab.chars(), &['a', 'b', 'c']);
        assert_eq!(data.example_shape, vec![8]);
        // 1000 characters, the last 100 held out; one extra character for the last target.
        assert_eq!(data.train.len(), (900 - 1) / 8);
        assert_eq!(data.test.len(), (100 - 1) / 8);
        let (x, y) = data.train.batch(&[0], &[1, 8], &[1, 8]).expect("ids");
        let decode = |a: &ArrayD<f32>| vocab.decode(a.iter().map(|&v| v as usize));
        assert_eq!(decode(&x), "abcababc");
        assert_eq!(decode(&y), "bcababca");
    }
    let missing = DataSpec::Text {
        path: dir.join("absent.txt"),
        seq: 8,
    };
    assert!(message(load(&missing)).contains("no such file"));
    std::fs::write(dir.join("bin.txt"), [b'o', b'k', 0xff, 0xfe]).expect("write");
    let binary = DataSpec::Text {
        path: dir.join("bin.txt"),
        seq: 8,
    };
    assert!(message(load(&binary)).contains("not UTF-8 text (invalid bytes at byte 2)"));
}

#[test]
fn shakespeare_windows_predict_the_next_character() {
    let seq = 12;
    let data = load(&DataSpec::Shakespeare { seq }).expect("shakespeare");
    let vocab = data.vocab.as_ref().expect("vocab");
    assert_eq!(vocab.len(), 73);
    assert!(vocab.chars().windows(2).all(|w| w[0] < w[1]), "sorted");
    assert_eq!(vocab.id('\n'), Some(0));
    assert_eq!(vocab.char(vocab.id('z').expect("z")), Some('z'));
    assert_eq!(data.classes, None);

    // The test split is the last tenth of 938,028 characters.
    let chars = 938_028usize;
    assert_eq!(data.train.len(), (chars - chars / 10 - 1) / seq);
    assert_eq!(data.test.len(), (chars / 10 - 1) / seq);

    let (x, y) = data
        .train
        .batch(&[0, 1], &[2, seq], &[2, seq])
        .expect("ids");
    let decode = |row: ndarray::ArrayViewD<f32>| vocab.decode(row.iter().map(|&v| v as usize));
    assert_eq!(decode(x.index_axis(Axis(0), 0)), "HAMLET, PRIN");
    assert_eq!(decode(y.index_axis(Axis(0), 0)), "AMLET, PRINC");
    assert_eq!(decode(x.index_axis(Axis(0), 1)), "CE OF DENMAR");

    let (x1, y1) = data
        .train
        .batch(&[0], &[1, seq, 73], &[1, seq, 73])
        .expect("one-hot");
    assert_eq!(x1.shape(), &[1, seq, 73]);
    for (t, row) in x1.index_axis(Axis(0), 0).axis_iter(Axis(0)).enumerate() {
        assert_eq!(row.sum(), 1.0);
        assert_eq!(row[x[[0, t]] as usize], 1.0);
    }
    assert_eq!(y1.sum(), seq as f32);

    let text = message(data.train.batch(&[0], &[1, seq + 1], &[1, seq]));
    assert!(
        text.contains("[1, 13]") && text.contains("[1, 12]"),
        "{text}"
    );
    assert!(text.contains("[1, 12, 73]"), "{text}");
}

/// What a loaded data set holds, as the memory bound counts it: pixels as bytes and labels as
/// `u32` for the digits, every character as a `u16` token id for text.
#[test]
fn a_data_set_counts_the_bytes_it_holds() {
    let digits = load(&DataSpec::Digits).expect("digits");
    assert_eq!(digits.bytes(), 1797 * (64 + 4));
    let shakespeare = load(&DataSpec::Shakespeare { seq: 50 }).expect("shakespeare");
    assert_eq!(shakespeare.bytes(), 938_028 * 2);
}

#[test]
fn a_window_longer_than_the_test_text_is_an_error() {
    let text = message(load(&DataSpec::Shakespeare { seq: 200_000 }));
    assert!(text.contains("test split"), "{text}");
    let text = message(load(&DataSpec::Shakespeare { seq: 0 }));
    assert!(text.contains("seq"), "{text}");
}

// ---------------------------------------------------------------- IDX and Fashion-MNIST

#[test]
fn idx_round_trips_and_rejects_bad_files() {
    let data: Vec<u8> = (0..24).collect();
    let bytes = write_idx(&[2, 3, 4], &data).expect("write");
    assert_eq!(&bytes[..4], &[0, 0, 8, 3]);
    let array = parse_idx(bytes.clone(), "t.idx").expect("parse");
    assert_eq!(array.dims, vec![2, 3, 4]);
    assert_eq!(array.data, data);
    assert_eq!(write_idx(&[2, 3], &data), None);

    let mut bad = bytes.clone();
    bad[2] = 0x0d;
    let text = message(parse_idx(bad, "floats.idx"));
    assert!(
        text.contains("floats.idx") && text.contains("magic"),
        "{text}"
    );
    let text = message(parse_idx(vec![0x1f, 0x8b, 8, 0, 1], "zipped.idx"));
    assert!(text.contains("magic"), "{text}");

    let text = message(parse_idx(bytes[..bytes.len() - 1].to_vec(), "short.idx"));
    assert!(
        text.contains("short.idx") && text.contains("truncated"),
        "{text}"
    );
    let text = message(parse_idx(bytes[..6].to_vec(), "header.idx"));
    assert!(text.contains("truncated"), "{text}");
    let text = message(parse_idx(vec![0, 0], "tiny.idx"));
    assert!(text.contains("truncated"), "{text}");
    let mut long = bytes.clone();
    long.push(0);
    let text = message(parse_idx(long, "long.idx"));
    assert!(text.contains("trailing"), "{text}");
    // A header claiming 2^32 x 2^32 elements is measured, not allocated.
    let huge = [0, 0, 8, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    assert!(message(parse_idx(huge.to_vec(), "huge.idx")).contains("truncated"));
}

/// Writes a tiny Fashion-MNIST look-alike: 3 training and 2 test images of 2x3 pixels.
fn write_tiny_fmnist(dir: &Path, gzipped: bool) {
    let files: [(&str, Vec<usize>, Vec<u8>); 4] = [
        (
            "train-images-idx3-ubyte",
            vec![3, 2, 3],
            (0..18).map(|v| v * 15).collect(),
        ),
        ("train-labels-idx1-ubyte", vec![3], vec![9, 0, 4]),
        ("t10k-images-idx3-ubyte", vec![2, 2, 3], vec![255; 12]),
        ("t10k-labels-idx1-ubyte", vec![2], vec![1, 2]),
    ];
    for (name, dims, data) in files {
        let bytes = write_idx(&dims, &data).expect("idx");
        if gzipped {
            std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).expect("write");
        } else {
            std::fs::write(dir.join(name), bytes).expect("write");
        }
    }
}

#[test]
fn fmnist_loads_from_a_directory_of_idx_files() {
    for gzipped in [true, false] {
        let dir = scratch(if gzipped { "fmnist-gz" } else { "fmnist-raw" });
        write_tiny_fmnist(&dir, gzipped);
        let data = load(&DataSpec::Fmnist { dir: Some(dir) }).expect("fmnist");
        assert_eq!((data.train.len(), data.test.len()), (3, 2));
        assert_eq!(data.example_shape, vec![2, 3]);
        let (x, y) = data.train.batch(&[0, 2], &[2, 6], &[2]).expect("batch");
        assert_eq!(y, arr1(&[9.0f32, 4.0]).into_dyn());
        assert_eq!(x[[1, 5]], 1.0);
        assert_eq!(x[[0, 1]], 15.0 / 255.0);
    }
}

#[test]
fn fmnist_errors_say_what_is_wrong() {
    let dir = scratch("fmnist-missing");
    let text = message(load(&DataSpec::Fmnist {
        dir: Some(dir.clone()),
    }));
    assert!(text.contains("train-images-idx3-ubyte.gz"), "{text}");
    assert!(
        text.contains(
            "install it with `apt-get install dataset-fashion-mnist` (or pass a data dir)"
        ),
        "{text}"
    );

    write_tiny_fmnist(&dir, true);
    let labels = dir.join("t10k-labels-idx1-ubyte.gz");
    let good = std::fs::read(&labels).expect("read");
    std::fs::write(&labels, &good[..good.len() - 6]).expect("write");
    let text = message(load(&DataSpec::Fmnist {
        dir: Some(dir.clone()),
    }));
    assert!(
        text.contains("t10k-labels-idx1-ubyte.gz") && text.contains("gzip"),
        "{text}"
    );

    let bad_label = write_idx(&[2], &[1, 10]).expect("idx");
    std::fs::write(&labels, gzip(&bad_label)).expect("write");
    let text = message(load(&DataSpec::Fmnist {
        dir: Some(dir.clone()),
    }));
    assert!(
        text.contains("label 10") && text.contains("0..10"),
        "{text}"
    );

    let too_few = write_idx(&[1], &[1]).expect("idx");
    std::fs::write(&labels, gzip(&too_few)).expect("write");
    let text = message(load(&DataSpec::Fmnist { dir: Some(dir) }));
    assert!(text.contains("[1]") && text.contains("[2]"), "{text}");
}

#[test]
fn fmnist_from_the_system_package_when_installed() {
    if !Path::new("/usr/share/datasets/fashion-mnist").exists() {
        eprintln!("skipped: dataset-fashion-mnist is not installed");
        return;
    }
    let data = load(&DataSpec::Fmnist { dir: None }).expect("fmnist");
    assert_eq!((data.train.len(), data.test.len()), (60_000, 10_000));
    let (x, y) = data
        .test
        .batch(&all(64), &[64, 1, 28, 28], &[64, 10])
        .expect("batch");
    assert_eq!(x.shape(), &[64, 1, 28, 28]);
    assert_eq!(y.sum(), 64.0);
}

// ---------------------------------------------------------------- CSV

fn csv_spec(path: PathBuf) -> DataSpec {
    DataSpec::Csv {
        path,
        test_fraction: 0.25,
        seed: 1,
    }
}

#[test]
fn csv_loads_plain_and_gzipped_with_a_header() {
    let dir = scratch("csv-good");
    let mut text = String::from("a,b,label\n");
    for i in 0..40 {
        text.push_str(&format!("{}.5, {}, {}\n", i, -i, i % 2));
    }
    text.push('\n');
    let plain = dir.join("t.csv");
    let zipped = dir.join("t.csv.gz");
    std::fs::write(&plain, &text).expect("write");
    std::fs::write(&zipped, gzip(text.as_bytes())).expect("write");
    for path in [plain, zipped] {
        let data = load(&csv_spec(path)).expect("csv");
        assert_eq!(data.classes, Some(2));
        assert_eq!((data.train.len(), data.test.len()), (30, 10));
        let (x, y) = data.train.batch(&[0], &[1, 2], &[1, 2]).expect("batch");
        assert_eq!(y.sum(), 1.0);
        assert_eq!(x[[0, 0]].fract(), 0.5);
        assert_eq!(x[[0, 1]], -(x[[0, 0]] - 0.5));
    }
}

#[test]
fn malformed_csv_gives_errors_with_line_numbers() {
    let dir = scratch("csv-bad");
    let cases = [
        ("1,2,0\n3,x,1\n", "t.csv:2: column 2: `x` is not a number"),
        (
            "1,2,0\n\n3,4\n",
            "t.csv:3: 2 columns, but the first row has 3",
        ),
        (
            "1,2,0\n3,4,1.5\n",
            "t.csv:2: label `1.5` is not a class index",
        ),
        ("1,2,-1\n", "t.csv:1: label `-1`"),
        ("f,g,label\n", "t.csv: no data rows"),
        ("", "t.csv: no data rows"),
        ("0\n", "t.csv:1: a single column"),
        ("1,nan,0\n", "`nan` is not a number"),
    ];
    let path = dir.join("t.csv");
    for (text, expected) in cases {
        std::fs::write(&path, text).expect("write");
        let got = message(load(&csv_spec(path.clone())));
        assert!(got.contains(expected), "{text:?}: {got}");
    }
    std::fs::write(&path, b"1,2,0\n\xff\xfe,1\n").expect("write");
    let got = message(load(&csv_spec(path.clone())));
    assert!(got.contains("t.csv:2: not UTF-8"), "{got}");

    let full = gzip(b"1,2,0\n3,4,1\n");
    std::fs::write(&path, &full[..full.len() - 5]).expect("write");
    let got = message(load(&csv_spec(path)));
    assert!(got.contains("t.csv") && got.contains("gzip"), "{got}");
}

#[test]
fn a_missing_file_is_named() {
    let missing = scratch("missing").join("nowhere.csv");
    let got = message(load(&csv_spec(missing.clone())));
    assert!(
        got.contains("nowhere.csv") && got.contains("no such file"),
        "{got}"
    );
    let got = message(load(&DataSpec::Npz(missing.with_extension("npz"))));
    assert!(
        got.contains("nowhere.npz") && got.contains("no such file"),
        "{got}"
    );
}

// ---------------------------------------------------------------- npz

fn write_npz(path: &Path, arrays: &[(&str, ArrayD<f64>)], labels: &[(&str, ArrayD<i64>)]) {
    let mut npz = NpzWriter::new(std::fs::File::create(path).expect("create"));
    for (name, array) in arrays {
        npz.add_array(*name, array).expect("add");
    }
    for (name, array) in labels {
        npz.add_array(*name, array).expect("add");
    }
    npz.finish().expect("finish");
}

#[test]
fn npz_loads_class_labels_and_target_values() {
    let dir = scratch("npz-good");
    let path = dir.join("mine.npz");
    let x_train = Array2::from_shape_fn((5, 6), |(i, j)| (i * 6 + j) as f64).into_dyn();
    let x_test = Array2::from_shape_fn((2, 6), |(i, j)| -((i * 6 + j) as f64)).into_dyn();
    write_npz(
        &path,
        &[("x_train", x_train.clone()), ("x_test", x_test)],
        &[
            ("y_train", arr1(&[0i64, 1, 2, 1, 0]).into_dyn()),
            ("y_test", arr1(&[2i64, 3]).into_dyn()),
        ],
    );
    let data = load(&DataSpec::Npz(path.clone())).expect("npz");
    assert_eq!(data.classes, Some(4));
    assert_eq!(data.example_shape, vec![6]);
    assert_eq!((data.train.len(), data.test.len()), (5, 2));
    let (x, y) = data
        .train
        .batch(&[4, 1], &[2, 2, 3], &[2, 4])
        .expect("batch");
    assert_eq!(x[[0, 1, 2]], 29.0);
    assert_eq!(
        y,
        arr2(&[[1.0f32, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]).into_dyn()
    );

    // Float targets are values, copied as they are.
    let values = dir.join("values.npz");
    let y_train = Array2::from_shape_fn((5, 2), |(i, j)| (i + j) as f64 / 2.0).into_dyn();
    let y_test = Array2::from_shape_fn((2, 2), |(i, _)| i as f64).into_dyn();
    write_npz(
        &values,
        &[
            ("x_train", x_train.clone()),
            (
                "x_test",
                x_train.slice(ndarray::s![..2, ..]).to_owned().into_dyn(),
            ),
            ("y_train", y_train),
            ("y_test", y_test),
        ],
        &[],
    );
    let data = load(&DataSpec::Npz(values)).expect("npz values");
    assert_eq!(data.classes, None);
    let (_, y) = data.train.batch(&[3], &[1, 6], &[1, 2]).expect("batch");
    assert_eq!(y, arr2(&[[1.5f32, 2.0]]).into_dyn());
    let text = message(data.train.batch(&[3], &[1, 6], &[1]));
    assert!(text.contains("[1]") && text.contains("[1, 2]"), "{text}");
}

#[test]
fn malformed_npz_gives_errors() {
    let dir = scratch("npz-bad");
    let path = dir.join("bad.npz");
    let x = |n: usize, w: usize| Array2::<f64>::zeros((n, w)).into_dyn();
    let y = |n: usize| ndarray::Array1::<i64>::zeros(n).into_dyn();

    write_npz(
        &path,
        &[("x_train", x(3, 4)), ("x_test", x(2, 4))],
        &[("y_train", y(3))],
    );
    let text = message(load(&DataSpec::Npz(path.clone())));
    assert!(
        text.contains("bad.npz") && text.contains("`y_test`"),
        "{text}"
    );

    write_npz(
        &path,
        &[("x_train", x(3, 4)), ("x_test", x(2, 5))],
        &[("y_train", y(3)), ("y_test", y(2))],
    );
    let text = message(load(&DataSpec::Npz(path.clone())));
    assert!(
        text.contains("`x_test`") && text.contains("[2, 5]") && text.contains("[n, 4]"),
        "{text}"
    );

    write_npz(
        &path,
        &[("x_train", x(3, 4)), ("x_test", x(2, 4))],
        &[("y_train", y(4)), ("y_test", y(2))],
    );
    let text = message(load(&DataSpec::Npz(path.clone())));
    assert!(
        text.contains("`y_train`") && text.contains("[4]") && text.contains("[3, ...]"),
        "{text}"
    );

    write_npz(
        &path,
        &[("x_train", x(3, 4)), ("x_test", x(2, 4))],
        &[
            ("y_train", arr1(&[0i64, -2, 1]).into_dyn()),
            ("y_test", y(2)),
        ],
    );
    let text = message(load(&DataSpec::Npz(path.clone())));
    assert!(text.contains("label -2"), "{text}");

    std::fs::write(&path, b"not a zip archive").expect("write");
    let text = message(load(&DataSpec::Npz(path.clone())));
    assert!(text.contains("bad.npz") && text.contains("npz"), "{text}");
}

/// Leaves as a model declares them: inputs and targets by name, with their shapes.
fn leaves(inputs: &[(&str, &[usize])], targets: &[(&str, &[usize])]) -> pcg::data::Leaves {
    let own = |group: &[(&str, &[usize])]| -> Vec<(String, Vec<usize>)> {
        group
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_vec()))
            .collect()
    };
    pcg::data::Leaves {
        inputs: own(inputs),
        targets: own(targets),
    }
}

#[test]
fn npz_of_named_arrays_feeds_each_input_and_target_by_name() {
    let dir = scratch("npz-named");
    let path = dir.join("named.npz");
    let img = |n: usize| {
        ndarray::Array3::from_shape_fn((n, 2, 3), |(i, j, k)| (i * 6 + j * 3 + k) as f64).into_dyn()
    };
    let side = |n: usize| Array2::from_shape_fn((n, 4), |(i, j)| -((i * 4 + j) as f64)).into_dyn();
    write_npz(
        &path,
        &[
            ("img_train", img(5)),
            ("img_test", img(2)),
            ("side_train", side(5)),
            ("side_test", side(2)),
        ],
        &[
            ("y_train", arr1(&[0i64, 1, 2, 1, 0]).into_dyn()),
            ("y_test", arr1(&[2i64, 1]).into_dyn()),
        ],
    );
    let data = load(&DataSpec::Npz(path.clone())).expect("named npz");
    assert_eq!((data.train.len(), data.test.len()), (5, 2));
    assert_eq!(data.train.column_names(), ["img", "side", "y"]);
    let want = leaves(&[("img", &[2, 6]), ("side", &[2, 4])], &[("y", &[2, 3])]);
    let batch = data.train.batch_of(&[4, 1], &want).expect("batch");
    assert_eq!(batch["img"].shape(), &[2, 6]);
    assert_eq!(batch["img"][[0, 5]], 29.0);
    assert_eq!(batch["side"][[1, 0]], -4.0);
    assert_eq!(
        batch["y"],
        arr2(&[[1.0f32, 0.0, 0.0], [0.0, 1.0, 0.0]]).into_dyn()
    );
    // Labels as class indices, and a leaf without an array of its name.
    let ids = data
        .train
        .batch_of(&[2], &leaves(&[("img", &[1, 2, 3])], &[("y", &[1])]))
        .expect("ids");
    assert_eq!(ids["y"], arr1(&[2.0f32]).into_dyn());
    let text = message(
        data.train
            .batch_of(&[0], &leaves(&[("img", &[1, 6]), ("depth", &[1, 2])], &[])),
    );
    assert!(
        text.contains("input `depth`")
            && text.contains("depth_train")
            && text.contains("img, side, y"),
        "{text}"
    );
    let text = message(data.train.batch_of(&[0], &leaves(&[("img", &[1, 5])], &[])));
    assert!(text.contains("`img`") && text.contains("[1, 5]"), "{text}");

    // Splits whose arrays disagree in length.
    write_npz(
        &path,
        &[
            ("img_train", img(5)),
            ("img_test", img(2)),
            ("side_train", side(4)),
            ("side_test", side(2)),
        ],
        &[],
    );
    let text = message(load(&DataSpec::Npz(path.clone())));
    assert!(
        text.contains("`side_train` has 4 examples, but `img_train` has 5"),
        "{text}"
    );

    // Inputs alone (`x_train`, `x_test`) feed a model without a target, whatever its input's
    // name.
    write_npz(&path, &[("x_train", img(5)), ("x_test", img(2))], &[]);
    let data = load(&DataSpec::Npz(path)).expect("inputs only");
    let batch = data
        .test
        .batch_of(&[1], &leaves(&[("pixels", &[1, 6])], &[]))
        .expect("inputs only");
    assert_eq!(batch.keys().collect::<Vec<_>>(), ["pixels"]);
    assert_eq!(batch["pixels"][[0, 0]], 6.0);
}

#[test]
fn a_model_without_a_target_takes_the_inputs_alone() {
    let data = load(&DataSpec::Digits).expect("digits");
    let only_x = leaves(&[("img", &[3, 8, 8])], &[]);
    let batch = data.train.batch_of(&[0, 1, 2], &only_x).expect("inputs");
    assert_eq!(batch.keys().collect::<Vec<_>>(), ["img"]);
    let (x, _) = data
        .train
        .batch(&[0, 1, 2], &[3, 8, 8], &[3, 10])
        .expect("x, y");
    assert_eq!(batch["img"], x);
    // Two inputs need named arrays.
    let two = leaves(&[("a", &[3, 64]), ("b", &[3, 64])], &[]);
    let text = message(data.train.batch_of(&[0, 1, 2], &two));
    assert!(
        text.contains("2 input(s)") && text.contains("<name>_train"),
        "{text}"
    );
}

// ---------------------------------------------------------------- epochs and specs

#[test]
fn epoch_order_is_a_seeded_permutation() {
    let order = epoch_order(1000, 7, 3);
    assert_eq!(order, epoch_order(1000, 7, 3));
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, all(1000));
    assert_ne!(order, all(1000));
    assert_ne!(order, epoch_order(1000, 7, 4));
    assert_ne!(order, epoch_order(1000, 8, 3));
    assert!(epoch_order(0, 1, 0).is_empty());
}

#[test]
fn specs_parse_from_text_and_calls() {
    let parse = |text: &str| text.parse::<DataSpec>();
    assert_eq!(parse("digits").expect("digits"), DataSpec::Digits);
    assert_eq!(parse(" mnist5k ").expect("mnist5k"), DataSpec::Mnist5k);
    assert_eq!(
        parse("fmnist").expect("fmnist"),
        DataSpec::Fmnist { dir: None }
    );
    assert_eq!(
        parse("fmnist(dir = \"/x/y\")").expect("fmnist dir"),
        DataSpec::Fmnist {
            dir: Some("/x/y".into())
        }
    );
    assert_eq!(
        parse("shakespeare").expect("default seq"),
        DataSpec::Shakespeare { seq: 50 }
    );
    assert_eq!(
        parse("shakespeare(seq = 100)").expect("seq"),
        DataSpec::Shakespeare { seq: 100 }
    );
    assert_eq!(
        parse("npz(\"a b.npz\")").expect("npz"),
        DataSpec::Npz("a b.npz".into())
    );
    let csv = parse("csv(\"t.csv.gz\", test = 0.1, seed = 3)").expect("csv");
    assert_eq!(
        csv,
        DataSpec::Csv {
            path: "t.csv.gz".into(),
            test_fraction: 0.1,
            seed: 3
        }
    );
    assert_eq!(parse(&csv.to_string()).expect("round trip"), csv);
    let text = parse("text(\"notes.txt\", seq = 16)").expect("text");
    assert_eq!(
        text,
        DataSpec::Text {
            path: "notes.txt".into(),
            seq: 16
        }
    );
    assert_eq!(parse(&text.to_string()).expect("round trip"), text);
    assert_eq!(
        parse("text(\"notes.txt\")").expect("default seq"),
        DataSpec::Text {
            path: "notes.txt".into(),
            seq: 50
        }
    );

    for (text, expected) in [
        ("cifar", "unknown data set `cifar`"),
        ("shakespeare(seq = 0)", "at least 1"),
        ("shakespeare(seq = \"x\")", "must be an integer"),
        ("digits(3)", "takes no positional argument 3"),
        ("npz", "needs a file"),
        ("text", "needs a file"),
        ("text(\"a.txt\", seq = -2)", "at least 1"),
        ("csv(\"t.csv\", test = 1.5)", "[0, 1)"),
        ("csv(\"t.csv\", color = 1)", "takes no argument `color`"),
        ("digits(", "expected"),
        ("npz(\"unterminated)", "expected"),
        ("digits extra", "unexpected text"),
    ] {
        let got = message(parse(text));
        assert!(got.contains(expected), "{text}: {got}");
    }

    let call = DataSpec::from_call(
        "shakespeare",
        &[SpecArg {
            name: None,
            value: SpecValue::Int(20),
        }],
    );
    assert_eq!(call.expect("call"), DataSpec::Shakespeare { seq: 20 });
    let relative = DataSpec::Npz("mine.npz".into()).relative_to(Path::new("/models"));
    assert_eq!(relative, DataSpec::Npz("/models/mine.npz".into()));
}

#[test]
fn non_finite_numbers_are_rejected_naming_the_array_and_example() {
    let dir = scratch("non-finite");
    let path = dir.join("nan.npz");
    let mut x_train = Array2::<f64>::zeros((6, 4));
    x_train[[3, 2]] = f64::NAN;
    write_npz(
        &path,
        &[
            ("x_train", x_train.into_dyn()),
            ("x_test", Array2::<f64>::zeros((2, 4)).into_dyn()),
        ],
        &[
            ("y_train", arr1(&[0i64, 1, 0, 1, 0, 1]).into_dyn()),
            ("y_test", arr1(&[0i64, 1]).into_dyn()),
        ],
    );
    let text = message(load(&DataSpec::Npz(path.clone())));
    assert!(
        text.contains("`x_train`") && text.contains("example 3") && text.contains("NaN"),
        "{text}"
    );
    assert!(text.contains("--allow-nonfinite"), "{text}");
    let data = pcg::data::load(&DataSpec::Npz(path), true).expect("allowed");
    assert_eq!(data.train.len(), 6);

    // Float targets are checked too; CSV rows with a non-finite number are errors of their line.
    let values = dir.join("values.npz");
    let mut y_test = Array2::<f64>::zeros((2, 2));
    y_test[[1, 0]] = f64::INFINITY;
    write_npz(
        &values,
        &[
            ("x_train", Array2::<f64>::zeros((3, 4)).into_dyn()),
            ("x_test", Array2::<f64>::zeros((2, 4)).into_dyn()),
            ("y_train", Array2::<f64>::zeros((3, 2)).into_dyn()),
            ("y_test", y_test.into_dyn()),
        ],
        &[],
    );
    let text = message(load(&DataSpec::Npz(values)));
    assert!(
        text.contains("`y_test`") && text.contains("example 1") && text.contains("inf"),
        "{text}"
    );
    let csv = dir.join("t.csv");
    std::fs::write(&csv, "1,2,0\n3,4,1\n5,nan,0\n7,8,1\n").expect("write");
    let text = message(load(&csv_spec(csv.clone())));
    assert!(text.contains("t.csv:3") && text.contains("`nan`"), "{text}");
    // A number too large for f32 would read as infinity.
    std::fs::write(&csv, "1,2,0\n3,4,1\n5,1e999,0\n7,8,1\n").expect("write");
    let text = message(load(&csv_spec(csv)));
    assert!(
        text.contains("t.csv:3") && text.contains("`1e999`"),
        "{text}"
    );
}

/// Hostile files: every data format, truncated at many points and with bytes flipped
/// throughout, loads or fails with an error naming the file — never a panic.
#[test]
fn mangled_data_files_never_panic_and_name_the_file() {
    let dir = scratch("mangled");
    let npz = dir.join("good.npz");
    let mut x = Array2::<f64>::zeros((6, 4));
    x[[1, 2]] = 0.5;
    write_npz(
        &npz,
        &[
            ("x_train", x.clone().into_dyn()),
            (
                "x_test",
                x.slice(ndarray::s![..2, ..]).to_owned().into_dyn(),
            ),
        ],
        &[
            ("y_train", arr1(&[0i64, 1, 0, 1, 0, 1]).into_dyn()),
            ("y_test", arr1(&[0i64, 1]).into_dyn()),
        ],
    );
    let csv: Vec<u8> = (0..40)
        .map(|i| format!("{},{}.5,{}\n", i % 7, i % 3, i % 2))
        .collect::<String>()
        .into_bytes();
    let text = "To be, or not to be, that is the question. "
        .repeat(8)
        .into_bytes();
    let gzipped = |bytes: &[u8]| {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    };
    type Spec = fn(PathBuf) -> DataSpec;
    let cases: Vec<(&str, Vec<u8>, Spec)> = vec![
        ("npz", std::fs::read(&npz).unwrap(), DataSpec::Npz),
        ("csv", csv.clone(), |path| DataSpec::Csv {
            path,
            test_fraction: 0.25,
            seed: 0,
        }),
        ("csv.gz", gzipped(&csv), |path| DataSpec::Csv {
            path,
            test_fraction: 0.25,
            seed: 0,
        }),
        ("txt", text.clone(), |path| DataSpec::Text { path, seq: 8 }),
        ("txt.gz", gzipped(&text), |path| DataSpec::Text {
            path,
            seq: 8,
        }),
    ];
    for (ext, good, spec) in cases {
        let path = dir.join(format!("mangled.{ext}"));
        let n = good.len();
        let mut variants: Vec<Vec<u8>> = (0..n)
            .step_by((n / 40).max(1))
            .map(|cut| good[..cut].to_vec())
            .collect();
        for at in (0..n).step_by((n / 60).max(1)) {
            let mut flipped = good.clone();
            flipped[at] ^= 0xff;
            variants.push(flipped);
        }
        for bytes in variants {
            std::fs::write(&path, &bytes).unwrap();
            let result = std::panic::catch_unwind(|| load(&spec(path.clone())));
            match result {
                Err(_) => panic!("{ext}: loading a mangled file panicked"),
                Ok(Err(e)) => {
                    let text = e.to_string();
                    assert!(text.contains(&format!("mangled.{ext}")), "{ext}: {text}");
                }
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// `input_range = [-1, 1]` maps the pixels from [0, 1] to [-1, 1]; text has no such inputs.
#[test]
fn inputs_rescale_to_a_range() {
    let plain = load(&DataSpec::Digits).expect("digits");
    let mut wide = plain.clone();
    wide.rescale_inputs(-1.0, 1.0).expect("images rescale");
    let rows = all(40);
    let (x, _) = plain.train.batch(&rows, &[40, 64], &[40, 10]).unwrap();
    let (w, _) = wide.train.batch(&rows, &[40, 64], &[40, 10]).unwrap();
    assert_eq!(w, x.mapv(|v| 2.0 * v - 1.0));
    let (lo, hi) = w
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    assert_eq!((lo, hi), (-1.0, 1.0));
    let (t, _) = wide.test.batch(&[0], &[1, 64], &[1, 10]).unwrap();
    assert!(t.iter().all(|v| (-1.0..=1.0).contains(v)));
    let mut text = load(&DataSpec::Shakespeare { seq: 8 }).expect("text");
    let error = message(text.rescale_inputs(-1.0, 1.0));
    assert!(error.contains("input_range"), "{error}");
}
