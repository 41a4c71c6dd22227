//! Builds the WebAssembly the binary embeds: the proxy-wasm filter for
//! `wasm32-wasip1`, its fleet build, so one `cargo build -p sessiongate`
//! yields a binary that carries the very `.wasm` Envoy loads. (The wasi:http
//! components are not embedded: `serve --component` takes a file, and the
//! tests build theirs, `proxy/tests/common/components.rs`; both through
//! nested_build.rs). `SESSIONGATE_PLUGIN_WASM=path`
//! skips it and uses a prebuilt file instead.

#![allow(clippy::panic)] // a build script reports failure by panicking

use std::env;
use std::path::{Path, PathBuf};

#[path = "nested_build.rs"]
mod nested_build;

use nested_build::NestedBuild;

/// The wasm the binary embeds.
struct Embedded {
    /// The variable that names a prebuilt file, and the one the path is exported as.
    env: &'static str,
    build: NestedBuild,
    /// The directory beside the outer build's profile directories.
    dir: &'static str,
    /// What it is built from, relative to the workspace.
    sources: &'static [&'static str],
}

const EMBEDDED: &[Embedded] = &[Embedded {
    env: "SESSIONGATE_PLUGIN_WASM",
    // `serve` can keep its limit on etcd: it embeds the fleet build.
    build: NestedBuild {
        package: "sessiongate-plugin",
        target: "wasm32-wasip1",
        profile: "plugin",
        features: "fleet",
    },
    dir: "sessiongate-plugin",
    // .cargo/config.toml: the filter's target features.
    sources: &[
        "plugin/src",
        "plugin/Cargo.toml",
        "etcd/src",
        "etcd/Cargo.toml",
        ".cargo/config.toml",
        "proxy/nested_build.rs",
    ],
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
    for embedded in EMBEDDED {
        println!("cargo:rerun-if-env-changed={}", embedded.env);
        let wasm = match env::var_os(embedded.env) {
            Some(prebuilt) => PathBuf::from(prebuilt),
            None => nested_build(embedded, &workspace, &out_dir),
        };
        println!("cargo:rustc-env={}={}", embedded.env, wasm.display());
    }
}

fn nested_build(embedded: &Embedded, workspace: &Path, out_dir: &Path) -> PathBuf {
    for watched in embedded.sources {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: build beside <profile>.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join(embedded.dir))
        .unwrap_or_else(|| out_dir.join(embedded.dir));
    embedded
        .build
        .run(workspace, &target_dir)
        .unwrap_or_else(|e| panic!("{e}"))
}
