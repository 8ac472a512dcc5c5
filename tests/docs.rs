//! The documentation holds together: every relative link in README.md, docs/*.md,
//! grafana/README.md and benches/RESULTS.md points at a file that exists and, when it
//! names an anchor, at a heading of that file (GitHub's slug rule); README.md lists every
//! docs page and stays small enough to read on one screen. No server needed.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};

use pulldown_cmark::{Event, Parser, Tag, TagEnd};

/// README.md must stay a front page, not a manual.
const README_LIMIT_BYTES: u64 = 12 * 1024;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files whose links are checked, relative to the repository root.
fn documents() -> Vec<PathBuf> {
    let mut docs = vec![
        PathBuf::from("README.md"),
        PathBuf::from("grafana/README.md"),
        PathBuf::from("benches/RESULTS.md"),
    ];
    docs.extend(docs_pages());
    docs
}

/// Every `docs/*.md`, relative to the repository root, sorted.
fn docs_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("read docs/")
        .map(|entry| entry.expect("read docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| {
            path.strip_prefix(root())
                .expect("docs/ is under the root")
                .to_path_buf()
        })
        .collect();
    pages.sort();
    pages
}

/// GitHub's anchor for a heading (github-slugger): lowercase, drop everything but
/// letters, digits, marks, `-`, `_` and spaces, then spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// What a Markdown text offers and asks for: the anchors its headings produce (repeats
/// numbered `-1`, `-2`, ... as GitHub does) and the destinations of its links and images.
struct Parsed {
    anchors: Vec<String>,
    links: Vec<String>,
}

fn parse(markdown: &str) -> Parsed {
    let mut anchors = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut links = Vec::new();
    let mut heading: Option<String> = None;
    for event in Parser::new(markdown) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                let base = slug(&heading.take().unwrap_or_default());
                let count = seen.entry(base.clone()).or_insert(0);
                anchors.push(if *count == 0 {
                    base.clone()
                } else {
                    format!("{base}-{count}")
                });
                *count += 1;
            }
            Event::Text(text) | Event::Code(text) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&text);
                }
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                links.push(dest_url.into_string())
            }
            _ => {}
        }
    }
    Parsed { anchors, links }
}

/// A link that leaves the repository (a scheme such as `https:` or `mailto:`).
fn is_external(dest: &str) -> bool {
    dest.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// `a/b/../c` without touching the file system, so a missing file is reported as such.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Every broken relative link in `docs` (paths relative to `root`), as
/// "file: [dest]: what is wrong".
fn broken_links(root: &Path, docs: &[PathBuf]) -> Vec<String> {
    let mut anchors_of: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    let mut anchors = |file: &Path| -> Option<Vec<String>> {
        if let Some(found) = anchors_of.get(file) {
            return Some(found.clone());
        }
        let text = fs::read_to_string(root.join(file)).ok()?;
        let found = parse(&text).anchors;
        anchors_of.insert(file.to_path_buf(), found.clone());
        Some(found)
    };
    let mut broken = Vec::new();
    for doc in docs {
        let text = match fs::read_to_string(root.join(doc)) {
            Ok(text) => text,
            Err(e) => {
                broken.push(format!("{}: cannot read: {e}", doc.display()));
                continue;
            }
        };
        for dest in parse(&text).links {
            if is_external(&dest) {
                continue;
            }
            let (path, anchor) = match dest.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (dest.as_str(), None),
            };
            let target = if path.is_empty() {
                doc.clone()
            } else if path.starts_with('/') {
                broken.push(format!(
                    "{}: [{dest}]: absolute path; use a path relative to the file",
                    doc.display()
                ));
                continue;
            } else {
                normalize(&doc.parent().unwrap_or(Path::new("")).join(path))
            };
            if target.as_os_str().is_empty() || !root.join(&target).exists() {
                broken.push(format!(
                    "{}: [{dest}]: {} does not exist",
                    doc.display(),
                    target.display()
                ));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if root.join(&target).is_dir() || target.extension().is_none_or(|e| e != "md") {
                broken.push(format!(
                    "{}: [{dest}]: an anchor into {}, which is not a Markdown file",
                    doc.display(),
                    target.display()
                ));
                continue;
            }
            let known = anchors(&target).unwrap_or_default();
            if !known.iter().any(|a| a == anchor) {
                broken.push(format!(
                    "{}: [{dest}]: no heading of {} has the anchor #{anchor} (it has: {})",
                    doc.display(),
                    target.display(),
                    known.join(", ")
                ));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_resolves() {
    let docs = documents();
    assert!(docs.len() > 5, "docs/ holds the reference pages: {docs:?}");
    let broken = broken_links(&root(), &docs);
    assert!(
        broken.is_empty(),
        "{} broken link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn readme_fits_a_screen() {
    let size = fs::metadata(root().join("README.md"))
        .expect("README.md")
        .len();
    assert!(
        size < README_LIMIT_BYTES,
        "README.md is {size} bytes; keep it under {README_LIMIT_BYTES} and move reference \
         material into docs/"
    );
}

#[test]
fn readme_links_every_docs_page() {
    let readme = fs::read_to_string(root().join("README.md")).expect("README.md");
    let linked: Vec<PathBuf> = parse(&readme)
        .links
        .iter()
        .filter(|dest| !is_external(dest))
        .map(|dest| normalize(Path::new(dest.split('#').next().unwrap_or_default())))
        .collect();
    let missing: Vec<String> = docs_pages()
        .into_iter()
        .filter(|page| !linked.contains(page))
        .map(|page| page.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "README.md's documentation map does not link: {}",
        missing.join(", ")
    );
}

#[test]
fn slugs_follow_github() {
    // Anchors as GitHub renders them for these headings.
    for (heading, anchor) in [
        ("Per row (the hot path)", "per-row-the-hot-path"),
        ("`config.toml`", "configtoml"),
        ("`vigil check`", "vigil-check"),
        (
            "Fleet: many replicas, one view of drift, one retrain",
            "fleet-many-replicas-one-view-of-drift-one-retrain",
        ),
        (
            "Engines: tract and ONNX Runtime",
            "engines-tract-and-onnx-runtime",
        ),
        (
            "2026-12-03 — drift accumulation",
            "2026-12-03--drift-accumulation",
        ),
        ("snake_case and χ² tests", "snake_case-and-χ²-tests"),
    ] {
        assert_eq!(slug(heading), anchor, "{heading}");
    }
    let parsed = parse("# Tests\n\n## Tests\n\n## Tests\n");
    assert_eq!(parsed.anchors, ["tests", "tests-1", "tests-2"]);
}

#[test]
fn the_checker_reports_what_it_is_for() {
    let dir = std::env::temp_dir().join(format!("vigil-docs-test-{}", std::process::id()));
    fs::create_dir_all(dir.join("docs")).expect("temp dir");
    fs::write(dir.join("docs/page.md"), "# Page\n\n## A section\n").expect("write page");
    fs::write(
        dir.join("README.md"),
        "[ok](docs/page.md#a-section) [ok](#top) [ok](https://example.com/x.md#nope)\n\
         `[not a link](missing.md)`\n\n```\n[not a link](missing.md)\n```\n\n\
         # Top\n\n\
         [gone](docs/gone.md) [bad anchor](docs/page.md#b-section) [self](#nowhere)\n\
         ![img](docs/nothing.png) [absolute](/docs/page.md) [dir anchor](docs#x)\n",
    )
    .expect("write readme");
    let broken = broken_links(&dir, &[PathBuf::from("README.md")]);
    fs::remove_dir_all(&dir).expect("remove temp dir");
    let text = broken.join("\n");
    for expected in [
        "[docs/gone.md]: docs/gone.md does not exist",
        "[docs/page.md#b-section]: no heading of docs/page.md has the anchor #b-section",
        "[#nowhere]: no heading of README.md has the anchor #nowhere",
        "[docs/nothing.png]: docs/nothing.png does not exist",
        "[/docs/page.md]: absolute path",
        "[docs#x]: an anchor into docs, which is not a Markdown file",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(broken.len(), 6, "{text}");
}
