//! Stamps the binary with the commit it was built from (for `engine bench` rows).
fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=8", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=ENGINE_BUILD_COMMIT={commit}");
    // The checkout's own HEAD and the branches (in a git worktree `.git` is a file naming a
    // directory elsewhere, so ask git where they are).
    let git_path = |what: &str| {
        std::process::Command::new("git")
            .args(["rev-parse", "--path-format=absolute", what])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    };
    match (git_path("--git-dir"), git_path("--git-common-dir")) {
        (Some(dir), Some(common)) => {
            println!("cargo:rerun-if-changed={dir}/HEAD");
            println!("cargo:rerun-if-changed={common}/refs/heads");
            // (A path that does not exist would rerun this script on every build.)
            if std::path::Path::new(&format!("{common}/packed-refs")).exists() {
                println!("cargo:rerun-if-changed={common}/packed-refs");
            }
        }
        _ => {
            println!("cargo:rerun-if-changed=../.git/HEAD");
            println!("cargo:rerun-if-changed=../.git/refs/heads");
        }
    }
}
