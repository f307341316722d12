//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod sandbox;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// A scratch copy of the example project (roles, cookbooks, policies).
pub fn project_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["roles", "cookbooks", "policies"] {
        copy_dir(&repo().join(sub), &dir.path().join(sub));
    }
    dir
}

/// Runs the bake binary with `--root root` and `args`, with no BAKE_VAR_* from outside.
pub fn bake(root: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bake"));
    cmd.arg("--root").arg(root).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BAKE_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run bake")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
