//! The wasi:http components `serve --component` runs in the tests. The
//! binary embeds only the filter, so the components are built here, once
//! per test process, when a test first asks for one: a nested `cargo build`
//! with a target directory of its own beside the tests' (no wait on their
//! lock), as `proxy/build.rs` builds the filter (both: nested_build.rs).
//! `SESSIONGATE_COMPONENT_WASM` / `SESSIONGATE_COMPONENT_P2_WASM` name a
//! prebuilt file instead.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[path = "../../nested_build.rs"]
mod nested_build;

use nested_build::NestedBuild;

struct Component {
    /// The variable that names a prebuilt file.
    env: &'static str,
    build: NestedBuild,
    /// Its target directory, beside the tests' profile directories.
    dir: &'static str,
}

/// The wasi:http 0.3 build (spin-sdk 7).
pub fn p3() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| {
        built(&Component {
            env: "SESSIONGATE_COMPONENT_WASM",
            build: component("sessiongate-spin"),
            dir: "sessiongate-component",
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
            build: component("sessiongate-spin-wasip2"),
            dir: "sessiongate-component-p2",
        })
    })
}

fn component(package: &'static str) -> NestedBuild {
    NestedBuild {
        package,
        target: "wasm32-wasip2",
        profile: "component",
        features: "",
    }
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
    match component.build.run(&workspace, &target) {
        Ok(file) => file.display().to_string(),
        Err(e) => panic!("{e}"),
    }
}
