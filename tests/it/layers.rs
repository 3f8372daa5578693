//! The floors of the code (ARCHITECTURE.md, "Floors"), checked by reading the sources, in the spirit of
//! rust-analyzer's tidy tests.
//!
//! Every top-level module of `src/` sits on a floor; a module may import from floors below its own, and from its
//! own floor except on the services floor, where services never import each other. So if someone writes, inside
//! `src/gate/pair.rs`,
//!
//! ```text
//! use crate::ops::terminal;          // a service reaching up into the use cases
//! ```
//!
//! `layers_point_one_way` fails with `src/gate/pair.rs:LINE: gate (services) imports ops (use cases)`, and
//! `use crate::master::…` there fails the same way (services never import each other). A new top-level module
//! fails the test until it is given a floor below.

use std::path::{Path, PathBuf};

/// Floors from the bottom (0) up. The services floor is `SERVICES`.
const FLOORS: &[(&str, &[&str])] = &[
    ("domain/sys", &["domain", "sys"]),
    ("store/config/pki files/ovpn", &["db", "config", "pkifiles", "ovpn"]),
    ("app/http/wire/control/cluster", &["app", "http", "wire", "control", "cluster"]),
    ("services", &["vpn", "gate", "master", "signer", "net", "agent", "firewall"]),
    ("use cases", &["ops", "daemon", "web"]),
    ("cli", &["cli"]),
];
const SERVICES: usize = 3;

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|(_, mods)| mods.contains(&module))
}

/// The top-level module a source file belongs to (`src/gate/pair.rs` → `gate`, `src/pkifiles.rs` → `pkifiles`);
/// `None` for the crate roots.
fn module_of(rel: &Path) -> Option<String> {
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
    let first = parts.next()?;
    match (first.strip_suffix(".rs"), parts.next()) {
        (Some("lib" | "main"), None) => None,
        (Some(stem), None) => Some(stem.to_owned()),
        _ => Some(first),
    }
}

/// Every top-level module named in `crate::…` paths of `text`, with its line number. Handles `crate::a::b`,
/// `crate::{a, b::c}` and nested groups; skips comments.
fn crate_refs(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            rest = &rest[at + "crate::".len()..];
            // `cas_vpn_crate::` or `mycrate::` are not `crate::`.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            push_head(&mut out, i + 1, &item);
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
                push_head(&mut out, i + 1, &item);
            } else {
                push_head(&mut out, i + 1, rest);
            }
        }
    }
    out
}

fn push_head(out: &mut Vec<(usize, String)>, line: usize, path: &str) {
    let head: String = path.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    if !head.is_empty() && head != "self" {
        out.push((line, head));
    }
}

/// The violations in one file's text, as lines of the failure message.
fn violations(rel: &Path, text: &str) -> Vec<String> {
    let Some(module) = module_of(rel) else { return Vec::new() };
    let Some(own) = floor_of(&module) else {
        return vec![format!("src/{}: module `{module}` has no floor in tests/it/layers.rs", rel.display())];
    };
    let mut out = Vec::new();
    for (line, target) in crate_refs(text) {
        if target == module {
            continue;
        }
        let Some(theirs) = floor_of(&target) else { continue }; // a crate-root item (macros), not a module
        let upward = theirs > own;
        let sideways_service = theirs == own && own == SERVICES;
        if upward || sideways_service {
            out.push(format!(
                "src/{}:{line}: {module} ({}) imports {target} ({}){}",
                rel.display(),
                FLOORS[own].0,
                FLOORS[theirs].0,
                if sideways_service { ": services never import each other" } else { ": nothing imports upward" }
            ));
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn layers_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 50, "found only {} source files under {}", files.len(), src.display());
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        bad.extend(violations(rel, &std::fs::read_to_string(f).unwrap()));
    }
    assert!(bad.is_empty(), "imports that break the floors (ARCHITECTURE.md, \"Floors\"):\n{}", bad.join("\n"));
}

/// The checker itself catches what the module doc promises (so `layers_point_one_way` cannot pass by reading
/// nothing).
#[test]
fn the_checker_sees_forbidden_imports() {
    let gate = Path::new("gate/pair.rs");
    assert_eq!(violations(gate, "use crate::ops::terminal;\n").len(), 1);
    assert_eq!(violations(gate, "use crate::{db::Store, ops::Ctx};\n").len(), 1);
    assert_eq!(violations(gate, "    let x = crate::master::router(s);\n").len(), 1);
    assert_eq!(violations(gate, "use crate::{app::{Ctx, now}, wire};\n").len(), 0);
    assert_eq!(violations(gate, "// use crate::ops::terminal; (a comment)\n").len(), 0);
    assert_eq!(violations(Path::new("db/mod.rs"), "use crate::app::Ctx;\n").len(), 1);
    assert_eq!(violations(Path::new("ops/x.rs"), "use crate::gate::router;\n").len(), 0);
    assert_eq!(violations(Path::new("newthing/mod.rs"), "").len(), 1);
}
