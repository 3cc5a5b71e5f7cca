//! Running the `resnet` binary and checking how it fails.

use std::path::Path;
use std::process::{Command, Output};

pub fn resnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet")).args(args).output().expect("run resnet")
}

/// The stdout of a run that must have succeeded.
pub fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Asserts a clean failure: non-zero exit, no panic, one `error:` line containing every
/// needle.
pub fn assert_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks '{n}': {}", lines[0]);
    }
}
