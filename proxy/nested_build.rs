//! One nested `cargo build` of a workspace package for a wasm target, with a
//! target directory of its own (so it never waits on the outer build's
//! lock, as substrate's wasm builder does). Used by `build.rs` (the filter
//! the binary embeds) and by the tests (the components, common/components.rs),
//! both through `#[path]`: a build script cannot depend on its own crate.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What to build.
pub struct NestedBuild {
    /// The workspace package.
    pub package: &'static str,
    /// The wasm target triple.
    pub target: &'static str,
    /// The profile, from the workspace's Cargo.toml.
    pub profile: &'static str,
    /// Cargo features, comma-separated; empty for none.
    pub features: &'static str,
}

impl NestedBuild {
    /// Builds the package into `target_dir`; the `.wasm` file's path, or why not.
    pub fn run(&self, workspace: &Path, target_dir: &Path) -> Result<PathBuf, String> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(workspace)
            .args(["build", "--package", self.package, "--target", self.target])
            .args(["--profile", self.profile, "--target-dir"])
            .arg(target_dir);
        if !self.features.is_empty() {
            command.args(["--features", self.features]);
        }
        // The outer build's flags and wrappers (clippy, coverage) are for the host target.
        for outer in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTC_WORKSPACE_WRAPPER",
            "RUSTC_WRAPPER",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
        ] {
            command.env_remove(outer);
        }
        let out = command
            .output()
            .map_err(|e| format!("cannot run cargo to build {}: {e}", self.package))?;
        if !out.status.success() {
            return Err(format!(
                "building {} for {} failed ({}); is the target installed? `rustup target add {}`\n{}",
                self.package,
                self.target,
                out.status,
                self.target,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let file = target_dir
            .join(self.target)
            .join(self.profile)
            .join(format!("{}.wasm", self.package.replace('-', "_")));
        if file.exists() {
            Ok(file)
        } else {
            Err(format!("{} was not built", file.display()))
        }
    }
}
