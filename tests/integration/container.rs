//! The container recipe, `edge-config/deploy/Containerfile`, builds from
//! the whole repository (`COPY . .`) filtered by `.dockerignore`. These
//! tests fail when a file the build needs would be left out of that build
//! context: any file git tracks (sources, `include_str!` files, the
//! vendored h3), a manifest, lock file or target cargo cannot resolve in
//! the copied tree, or a file the runtime stage copies. (No container engine runs here: the registries it would pull
//! base images from are out of reach, so the context is checked instead.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One `.dockerignore` line, in the forms the file allows.
#[derive(Debug)]
enum Pattern {
    /// `path` or `path/`: that path from the root, and all below it.
    Path(PathBuf),
    /// `**/name`: any file or directory of that name, at any depth.
    Named(String),
    /// `*.ext`: taken to match at any depth (docker matches the root only;
    /// excluding more can only make this test stricter).
    Extension(String),
}

fn patterns() -> Vec<Pattern> {
    let text = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let p = line.trim_start_matches('/').trim_end_matches('/');
        let wild = |s: &str| s.contains(['*', '?', '[', '!', '\\']);
        let pat = if let Some(name) = p
            .strip_prefix("**/")
            .filter(|n| !wild(n) && !n.contains('/'))
        {
            Pattern::Named(name.to_string())
        } else if let Some(ext) = p
            .strip_prefix("*.")
            .filter(|e| !wild(e) && !e.contains('/'))
        {
            Pattern::Extension(ext.to_string())
        } else if !wild(p) && !p.is_empty() {
            Pattern::Path(PathBuf::from(p))
        } else {
            panic!(".dockerignore: {line:?} is a form this test cannot evaluate: use a plain path, `dir/`, `**/name` or `*.ext`, or teach tests/integration/container.rs the new form");
        };
        out.push(pat);
    }
    assert!(!out.is_empty(), ".dockerignore has no patterns");
    out
}

fn excluded(rel: &Path, pats: &[Pattern]) -> bool {
    pats.iter().any(|p| match p {
        Pattern::Path(prefix) => rel.starts_with(prefix),
        Pattern::Named(name) => rel.components().any(|c| c.as_os_str() == name.as_str()),
        Pattern::Extension(ext) => rel.extension().is_some_and(|e| e == ext.as_str()),
    })
}

/// Copies the repository into `to` as the container engine would send it:
/// everything `.dockerignore` does not exclude. Returns the files copied.
fn copy_context(to: &Path, pats: &[Pattern]) -> Vec<PathBuf> {
    fn walk(root: &Path, rel: &Path, to: &Path, pats: &[Pattern], out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(root.join(rel)).expect("read_dir") {
            let entry = entry.expect("entry");
            let rel = rel.join(entry.file_name());
            if excluded(&rel, pats) {
                continue;
            }
            let ty = entry.file_type().expect("file type");
            if ty.is_dir() {
                std::fs::create_dir_all(to.join(&rel)).expect("mkdir");
                walk(root, &rel, to, pats, out);
            } else if ty.is_file() {
                match std::fs::copy(entry.path(), to.join(&rel)) {
                    Ok(_) => out.push(rel),
                    // Removed since it was listed (another process's file).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => panic!("{}: {e}", rel.display()),
                }
            } else if ty.is_symlink() {
                let target = std::fs::read_link(entry.path()).expect("readlink");
                std::os::unix::fs::symlink(target, to.join(&rel)).expect("symlink");
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo(), Path::new(""), to, pats, &mut out);
    out
}

/// Every file git tracks: a build on a fresh clone can read nothing else,
/// so the build context must hold all of them (the ignore file is for
/// build output, state and fuzz corpora, which git does not track either).
fn tracked_files() -> Vec<PathBuf> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo())
        .output()
        .expect("git ls-files (this test needs a git checkout)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        .collect()
}

#[test]
fn container_build_context_holds_every_file_the_build_needs() {
    let pats = patterns();
    let recipe =
        std::fs::read_to_string(repo().join("edge-config/deploy/Containerfile")).expect("recipe");

    // The build stage copies the whole tree, not a hand-kept list.
    let build_stage: Vec<&str> = recipe
        .split("\nFROM ")
        .find(|stage| stage.contains(" AS build"))
        .expect("a build stage")
        .lines()
        .filter(|l| l.trim_start().starts_with("COPY"))
        .collect();
    assert_eq!(
        build_stage,
        ["COPY . ."],
        "the build stage must copy the filtered tree"
    );

    // Every tracked file gets through the filter: sources, the vendored
    // h3 its [patch] points at, files pulled in with include_str!.
    let tracked = tracked_files();
    for must in [
        "src/main.rs",
        "src/admin/page.html",
        "vendor/h3/src/lib.rs",
        "Cargo.lock",
    ] {
        assert!(
            tracked.iter().any(|s| s == Path::new(must)),
            "git should track {must}"
        );
    }
    let missing: Vec<_> = tracked.iter().filter(|s| excluded(s, &pats)).collect();
    assert!(
        missing.is_empty(),
        ".dockerignore excludes tracked files the build may need: {missing:?}"
    );

    // Cargo resolves the copied tree as it does the repository: manifests,
    // lock file, every declared target, and the [patch] of h3.
    let ctx = tempfile::tempdir().expect("tempdir");
    let copied = copy_context(ctx.path(), &pats);
    for s in tracked.iter().filter(|s| repo().join(s).exists()) {
        assert!(
            copied.contains(s),
            "{} is not in the build context",
            s.display()
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .current_dir(ctx.path())
        .env("CARGO_TARGET_DIR", ctx.path().join("target"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo cannot read the build context: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let ctx_root = ctx.path().canonicalize().expect("ctx");
    let packages = meta["packages"].as_array().expect("packages");
    let h3 = packages
        .iter()
        .find(|p| p["name"] == "h3")
        .expect("h3 in the graph");
    assert!(
        h3["source"].is_null()
            && Path::new(h3["manifest_path"].as_str().expect("path")).starts_with(&ctx_root),
        "h3 should come from vendor/ inside the build context: {}",
        h3["manifest_path"]
    );
    for p in packages.iter().filter(|p| p["source"].is_null()) {
        for t in p["targets"].as_array().expect("targets") {
            let src = Path::new(t["src_path"].as_str().expect("src_path"));
            assert!(
                src.exists(),
                "{} of {} is missing from the build context",
                src.display(),
                p["name"]
            );
        }
    }

    // The runtime stage's own COPYs come from the context too.
    for line in recipe.lines().map(str::trim) {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") || args == ". ." {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        for src in &words[..words.len() - 1] {
            let rel = Path::new(src);
            assert!(
                !excluded(rel, &pats),
                "{line}: {src} is excluded by .dockerignore"
            );
            assert!(
                ctx.path().join(rel).exists(),
                "{line}: {src} is not in the build context"
            );
        }
    }
}

#[test]
fn dockerignore_patterns_exclude_what_they_say() {
    let pats = patterns();
    for (path, out) in [
        ("target/release/fnroute", true),
        (".git/HEAD", true),
        ("fuzz/corpus/dns_answer/seed-a", true),
        (
            "edge-config/functions/__pycache__/echo.cpython-311.pyc",
            true,
        ),
        ("vendor/h3/src/lib.rs", false),
        ("src/admin/page.html", false),
        ("fuzz/Cargo.toml", false),
        ("edge-config/targets.toml", false),
    ] {
        assert_eq!(excluded(Path::new(path), &pats), out, "{path}");
    }
}
