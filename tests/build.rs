//! Builds the plugin components in `plugins/` for `wasm32-wasip2`, so the tests load real
//! components. Paths reach the tests as `PLUGIN_<NAME>` environment variables.

use std::path::PathBuf;
use std::process::Command;

const PLUGINS: [&str; 10] = [
    "api_key",
    "header_auth",
    "jwt_auth",
    "rate_limit",
    "rewrite",
    "balancer_latency",
    "balancer_hash",
    "test_trap",
    "test_spin",
    "test_body",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let plugins = manifest_dir.join("../plugins");
    for watched in [
        "../plugins/Cargo.toml",
        "../plugins/sdk",
        "../plugins/api-key",
        "../plugins/header-auth",
        "../plugins/jwt-auth",
        "../plugins/rate-limit",
        "../plugins/rewrite",
        "../plugins/balancer-latency",
        "../plugins/balancer-hash",
        "../plugins/test-trap",
        "../plugins/test-spin",
        "../plugins/test-body",
        "../wit",
    ] {
        println!("cargo:rerun-if-changed={watched}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&out)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("running cargo for the plugins");
    assert!(
        status.success(),
        "building the test plugins failed; they need the wasm32-wasip2 target: rustup target add wasm32-wasip2"
    );
    for name in PLUGINS {
        let path = out.join("wasm32-wasip2/release").join(format!("{name}.wasm"));
        println!("cargo:rustc-env=PLUGIN_{}={}", name.to_uppercase(), path.display());
    }
}
