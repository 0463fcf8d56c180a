//! Generates, into `OUT_DIR`, the parser from `grammar/pcg.lalrpop` and the ONNX message types
//! from `proto/onnx.proto3` (compiled by protox, so no system `protoc` is needed).
fn main() {
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    parser(&out_dir);
    onnx_messages();
}

fn parser(out_dir: &str) {
    println!("cargo:rerun-if-changed=grammar");
    lalrpop::Configuration::new()
        .set_in_dir("grammar")
        .set_out_dir(out_dir)
        .process()
        .expect("lalrpop grammar failed to compile");
}

/// `onnx.rs` in `OUT_DIR`: the messages of package `onnx`.
fn onnx_messages() {
    println!("cargo:rerun-if-changed=proto");
    let descriptors =
        protox::compile(["onnx.proto3"], ["proto"]).expect("proto/onnx.proto3 failed to compile");
    // The proto's comments would become doc comments, and their indented examples doctests.
    prost_build::Config::new()
        .disable_comments(["."])
        .compile_fds(descriptors)
        .expect("the ONNX message types could not be generated");
}
