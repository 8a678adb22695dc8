//! The gateway's modules form no import cycle (each `crate::x` a module names outside its
//! tests is an arrow): config is a leaf, balancers never name upstreams. The protocol code
//! (the HTTP/1.1 server loop, client and body types) is a crate of its own, `weft-h1`, which
//! does not depend on the gateway; the last test checks that.

use std::collections::{BTreeMap, BTreeSet};

fn arrows() -> BTreeMap<String, BTreeSet<String>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mods: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".rs")
                .map(String::from)
        })
        .collect();
    let mut g = BTreeMap::new();
    for m in mods.iter().filter(|m| *m != "lib") {
        let text = std::fs::read_to_string(format!("{dir}/{m}.rs")).unwrap();
        let code: String = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let deps: BTreeSet<String> = code
            .match_indices("crate::")
            .map(|(i, _)| {
                let rest = &code[i + 7..];
                let end = rest
                    .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .unwrap_or(rest.len());
                rest[..end].to_string()
            })
            .filter(|d| mods.contains(d) && d != m)
            .collect();
        g.insert(m.clone(), deps);
    }
    g
}

fn reaches(g: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(m) = stack.pop() {
        for d in g.get(&m).into_iter().flatten() {
            if d == to {
                return true;
            }
            if seen.insert(d.clone()) {
                stack.push(d.clone());
            }
        }
    }
    false
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let g = arrows();
    assert!(g.len() > 10, "read the modules: {g:?}");
    let cycles: Vec<(&String, &String)> = g
        .iter()
        .flat_map(|(m, ds)| ds.iter().map(move |d| (m, d)))
        .filter(|(m, d)| reaches(&g, d, m))
        .collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:?}\n{g:#?}");
    for leaf in ["config", "template", "error"] {
        let deps = &g[leaf];
        assert!(
            deps.iter()
                .all(|d| ["error", "template"].contains(&d.as_str())),
            "{leaf} -> {deps:?}"
        );
    }
}

#[test]
fn the_protocol_crate_knows_nothing_of_the_gateway() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../weft-h1");
    let manifest = std::fs::read_to_string(format!("{dir}/Cargo.toml")).unwrap();
    assert!(!manifest.contains("weft-gateway"), "{manifest}");
    for f in std::fs::read_dir(format!("{dir}/src")).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        assert!(!text.contains("weft_gateway"), "weft-h1 names the gateway");
    }
}
