//! Compiles the vendored ONNX protobuf schema into prost types.
//!
//! `protox` parses `proto/onnx.proto` in pure Rust (no system `protoc`), and `prost-build`
//! turns the resulting descriptor set into Rust code under `OUT_DIR` (`onnx.rs`), which
//! `src/onnx/mod.rs` includes.

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    println!("cargo:rerun-if-changed=build.rs");
    let fds = match protox::compile(["onnx.proto"], ["proto"]) {
        Ok(fds) => fds,
        Err(e) => panic!("parsing proto/onnx.proto failed: {e}"),
    };
    if let Err(e) = prost_build::Config::new().compile_fds(fds) {
        panic!("generating Rust code from proto/onnx.proto failed: {e}");
    }
}
