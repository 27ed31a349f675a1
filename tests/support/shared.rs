//! Where the shared fixtures are (`$ASEN_SHARED_DIR`, else `../shared` beside the checkout), and
//! the skip-or-fail rule: a test whose fixtures are missing is skipped with a notice, or fails when
//! `ASEN_REQUIRE_SHARED=1` (CI).

use std::path::{Path, PathBuf};

/// The shared folder when every path of `needed` (relative to it) is a file.
pub fn shared_dir(needed: &[&str]) -> Option<PathBuf> {
    let dir = std::env::var_os("ASEN_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    if needed.iter().all(|p| dir.join(p).is_file()) {
        return Some(dir);
    }
    if std::env::var("ASEN_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!(
            "ASEN_REQUIRE_SHARED=1 but the shared fixtures are missing at {}",
            dir.display()
        );
    }
    eprintln!("SKIPPED: shared fixtures not found at {}", dir.display());
    None
}
