//! Test helpers of the asen workspace (a dev-dependency only, never published).
//!
//! The default build has no dependencies and holds the one shared-fixture gate,
//! [`shared_dir`]: tests find the read-only fixtures (`golden/`, `data/`) in
//! `$ASEN_SHARED_DIR`, else in the `shared/` folder beside the checkout; when what a test
//! needs is missing it prints `SKIPPED: ...` and the test returns early, unless
//! `ASEN_REQUIRE_SHARED=1` (CI), where it panics instead.
//!
//! The `retrieval` feature adds [`retrieval`], the end-to-end evaluation used by
//! `tests/e2e.rs` and `examples/e2e_retrieval.rs`.

use std::path::{Path, PathBuf};

#[cfg(feature = "retrieval")]
pub mod retrieval;

/// Environment variable naming the shared fixture folder (overrides the default).
pub const SHARED_DIR_ENV: &str = "ASEN_SHARED_DIR";
/// Environment variable that turns a missing fixture into a failure (`1`: CI).
pub const REQUIRE_SHARED_ENV: &str = "ASEN_REQUIRE_SHARED";

/// Where the shared fixtures are expected: `$ASEN_SHARED_DIR`, else `shared/` beside the
/// checkout (`<checkout>/../shared`, found from this crate's own manifest directory, so it
/// is the same folder whichever package's test asks). It may not exist.
pub fn shared_root() -> PathBuf {
    std::env::var_os(SHARED_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared")
                .components()
                .collect()
        })
}

/// Whether missing fixtures must fail the test (`ASEN_REQUIRE_SHARED=1`).
pub fn shared_required() -> bool {
    std::env::var(REQUIRE_SHARED_ENV).as_deref() == Ok("1")
}

/// The shared folder when every path of `needed` (relative to it: files or folders)
/// exists. Otherwise prints `SKIPPED: <test>: ...` naming what is missing and returns
/// `None` (the caller returns early), or panics when `ASEN_REQUIRE_SHARED=1`.
///
/// ```no_run
/// let Some(shared) = asen_test_support::shared_dir(&["golden/asen_v1_fashionai.pth.gz"]) else {
///     return;
/// };
/// ```
pub fn shared_dir(needed: &[&str]) -> Option<PathBuf> {
    gate(&shared_root(), needed, shared_required())
}

/// [`shared_dir`] over an explicit folder and requirement (what the tests of the gate use).
pub fn gate(dir: &Path, needed: &[&str], required: bool) -> Option<PathBuf> {
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|p| !dir.join(p).exists())
        .collect();
    if dir.is_dir() && missing.is_empty() {
        return Some(dir.to_path_buf());
    }
    let what = if dir.is_dir() {
        format!("{} missing from {}", missing.join(", "), dir.display())
    } else {
        format!("shared fixtures not found at {}", dir.display())
    };
    // libtest names each test's thread after the test.
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    if required {
        panic!("{REQUIRE_SHARED_ENV}=1 but {what} (set {SHARED_DIR_ENV} to the fixture folder)");
    }
    eprintln!(
        "SKIPPED: {test}: {what} (set {SHARED_DIR_ENV}; {REQUIRE_SHARED_ENV}=1 fails instead)"
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_fixtures_open_the_gate() {
        let dir = std::env::temp_dir().join(format!("asen-gate-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("golden")).unwrap();
        std::fs::write(dir.join("golden/a.bin"), b"x").unwrap();
        assert_eq!(
            gate(&dir, &["golden/a.bin", "golden"], true),
            Some(dir.clone())
        );
        assert_eq!(gate(&dir, &["golden/b.bin"], false), None);
        let err = std::panic::catch_unwind(|| gate(&dir, &["golden/b.bin"], true)).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("golden/b.bin") && msg.contains("ASEN_REQUIRE_SHARED=1"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            gate(&dir, &[], false),
            None,
            "an absent folder closes the gate"
        );
    }

    #[test]
    fn default_root_is_beside_the_checkout() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        assert!(checkout.join("Cargo.toml").is_file());
        if std::env::var_os(SHARED_DIR_ENV).is_none() {
            assert_eq!(shared_root(), root.components().collect::<PathBuf>());
        }
    }
}
