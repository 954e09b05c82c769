//! Nothing to build: the build dependency on protoc-bin-vendored-linux-x86_64 only makes cargo
//! fetch the protoc that etcd-client's build script runs (see tools/protoc).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
