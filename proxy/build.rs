//! Builds the proxy-wasm filter for `wasm32-wasip1` and embeds it, so one
//! `cargo build -p sessiongate` (or `cargo run … serve`) yields a binary that
//! carries the very `.wasm` Envoy loads. The nested build has its own target
//! directory (as substrate's wasm builder does) so it never waits on the
//! outer build's lock. `SESSIONGATE_PLUGIN_WASM=path` skips it and embeds a
//! prebuilt filter instead.

#![allow(clippy::panic)] // a build script reports failure by panicking

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SESSIONGATE_PLUGIN_WASM");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let wasm = if let Some(prebuilt) = env::var_os("SESSIONGATE_PLUGIN_WASM") {
        PathBuf::from(prebuilt)
    } else {
        build_plugin(&out_dir)
    };
    println!("cargo:rustc-env=SESSIONGATE_PLUGIN_WASM={}", wasm.display());
}

fn build_plugin(out_dir: &std::path::Path) -> PathBuf {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let workspace = manifest.parent().map(PathBuf::from).unwrap_or_default();
    for watched in [
        "plugin/src",
        "plugin/Cargo.toml",
        "core/src",
        "core/Cargo.toml",
        "Cargo.lock",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: build beside <profile>.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("sessiongate-plugin"))
        .unwrap_or_else(|| out_dir.join("sessiongate-plugin"));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--package",
            "sessiongate-plugin",
            "--target",
            "wasm32-wasip1",
            "--profile",
            "plugin",
            "--target-dir",
        ])
        .arg(&target_dir)
        // The outer build's flags and wrappers (clippy, coverage) are for the host target.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "building the plugin for wasm32-wasip1 failed ({s}); is the target installed? `rustup target add wasm32-wasip1`"
        ),
        Err(e) => panic!("cannot run cargo to build the plugin: {e}"),
    }
    target_dir
        .join("wasm32-wasip1")
        .join("plugin")
        .join("sessiongate_plugin.wasm")
}
