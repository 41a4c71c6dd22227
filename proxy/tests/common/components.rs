//! The wasi:http components `serve --component` runs in the tests. The
//! binary embeds only the filter, so the components are built here, once
//! per test process, when a test first asks for one: a nested `cargo build`
//! with a target directory of its own beside the tests' (no wait on their
//! lock), as `proxy/build.rs` builds the filter. `SESSIONGATE_COMPONENT_WASM`
//! / `SESSIONGATE_COMPONENT_P2_WASM` name a prebuilt file instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

struct Component {
    /// The variable that names a prebuilt file.
    env: &'static str,
    package: &'static str,
    /// Its target directory, beside the tests' profile directories.
    dir: &'static str,
    artifact: &'static str,
}

/// The wasi:http 0.3 build (spin-sdk 7).
pub fn p3() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| {
        built(&Component {
            env: "SESSIONGATE_COMPONENT_WASM",
            package: "sessiongate-spin",
            dir: "sessiongate-component",
            artifact: "sessiongate_spin.wasm",
        })
    })
}

/// The wasi:http 0.2 build (spin-sdk 5). Its own directory: it builds
/// `sessiongate-spin` as a dependency, whose cdylib there is not the 0.3
/// build.
pub fn p2() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| {
        built(&Component {
            env: "SESSIONGATE_COMPONENT_P2_WASM",
            package: "sessiongate-spin-wasip2",
            dir: "sessiongate-component-p2",
            artifact: "sessiongate_spin_wasip2.wasm",
        })
    })
}

fn built(component: &Component) -> String {
    if let Ok(prebuilt) = std::env::var(component.env) {
        return prebuilt;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join(component.dir);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&workspace)
        .args(["build", "--package", component.package])
        .args(["--target", "wasm32-wasip2", "--profile", "component"])
        .arg("--target-dir")
        .arg(&target)
        // The outer build's flags and wrappers are for the host target.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("run cargo to build a component");
    assert!(
        out.status.success(),
        "building {} for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`):\n{}",
        component.package,
        String::from_utf8_lossy(&out.stderr)
    );
    let file = target
        .join("wasm32-wasip2")
        .join("component")
        .join(component.artifact);
    assert!(file.exists(), "{} was not built", file.display());
    file.display().to_string()
}
