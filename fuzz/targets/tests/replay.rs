//! Replays the committed seed corpus through every fuzz target on the stable toolchain, so
//! the main test command keeps the targets compiling and every seed (including minimized
//! crash reproducers) passing, without libFuzzer.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use fuzz_targets::TARGETS;

/// `fuzz/`, the cargo-fuzz crate.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The seed files of `target`, sorted. Fails if the directory is missing or empty: a target
/// without seeds would replay nothing and pass silently.
fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("corpus").join(target);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} of target {target}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| {
            let entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
            entry.path()
        })
        // libFuzzer's scratch files while it merges.
        .filter(|path| {
            !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    for path in &files {
        assert!(path.is_file(), "{} is not a file", path.display());
    }
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

#[test]
fn every_seed_passes_its_target() {
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, target) in TARGETS {
        let files = seeds(name);
        for path in &files {
            let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                failures.push(path.display().to_string());
            }
        }
        println!("{name}: {} seeds replayed", files.len());
        total += files.len();
    }
    println!("{total} seeds replayed through {} targets", TARGETS.len());
    assert!(failures.is_empty(), "seeds that panic: {failures:#?}");
}

/// Every target has its cargo-fuzz binary and every corpus directory a target, so the two
/// drivers cannot drift apart.
#[test]
fn targets_match_the_fuzz_crate() {
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        let source = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text =
            fs::read_to_string(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        assert!(
            text.contains(&format!("fuzz_targets::{name}(")),
            "{} does not call fuzz_targets::{name}",
            source.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
    let corpus = fs::read_dir(fuzz_dir().join("corpus")).expect("fuzz/corpus");
    for entry in corpus {
        let name = entry.expect("corpus entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.iter().any(|(target, _)| *target == name),
            "fuzz/corpus/{name} belongs to no target"
        );
    }
}
