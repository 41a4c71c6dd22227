//! Builds the WebAssembly the binary embeds: the proxy-wasm filter for
//! `wasm32-wasip1`, its fleet build, so one `cargo build -p sessiongate`
//! yields a binary that carries the very `.wasm` Envoy loads. (The wasi:http
//! components are not embedded: `serve --component` takes a file, and the
//! tests build theirs, `proxy/tests/common/components.rs`.) The nested
//! build has its own target directory (as substrate's wasm builder does) so
//! it never waits on the outer build's lock. `SESSIONGATE_PLUGIN_WASM=path`
//! skips it and uses a prebuilt file instead.

#![allow(clippy::panic)] // a build script reports failure by panicking

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One nested build: a workspace package, for a wasm target, in a profile.
struct WasmBuild {
    /// The variable that names a prebuilt file, and the one the path is exported as.
    env: &'static str,
    package: &'static str,
    target: &'static str,
    profile: &'static str,
    /// The directory beside the outer build's profile directories.
    dir: &'static str,
    artifact: &'static str,
    /// What it is built from, relative to the workspace.
    sources: &'static [&'static str],
    /// Cargo features to build it with.
    features: &'static str,
}

const BUILDS: &[WasmBuild] = &[WasmBuild {
    env: "SESSIONGATE_PLUGIN_WASM",
    package: "sessiongate-plugin",
    target: "wasm32-wasip1",
    profile: "plugin",
    dir: "sessiongate-plugin",
    artifact: "sessiongate_plugin.wasm",
    // .cargo/config.toml: the filter's target features.
    sources: &[
        "plugin/src",
        "plugin/Cargo.toml",
        "etcd/src",
        "etcd/Cargo.toml",
        ".cargo/config.toml",
    ],
    // `serve` can keep its limit on etcd: it embeds the fleet build.
    features: "fleet",
}];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let workspace = manifest.parent().map(PathBuf::from).unwrap_or_default();
    for watched in ["core/src", "core/Cargo.toml", "Cargo.lock", "Cargo.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    for build in BUILDS {
        println!("cargo:rerun-if-env-changed={}", build.env);
        let wasm = match env::var_os(build.env) {
            Some(prebuilt) => PathBuf::from(prebuilt),
            None => nested_build(build, &workspace, &out_dir),
        };
        println!("cargo:rustc-env={}={}", build.env, wasm.display());
    }
}

fn nested_build(build: &WasmBuild, workspace: &Path, out_dir: &Path) -> PathBuf {
    for watched in build.sources {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: build beside <profile>.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join(build.dir))
        .unwrap_or_else(|| out_dir.join(build.dir));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--package",
            build.package,
            "--target",
            build.target,
        ])
        .args(["--profile", build.profile, "--target-dir"])
        .arg(&target_dir)
        .args(if build.features.is_empty() {
            vec![]
        } else {
            vec!["--features", build.features]
        })
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
            "building {} for {} failed ({s}); is the target installed? `rustup target add {}`",
            build.package, build.target, build.target
        ),
        Err(e) => panic!("cannot run cargo to build {}: {e}", build.package),
    }
    target_dir
        .join(build.target)
        .join(build.profile)
        .join(build.artifact)
}
