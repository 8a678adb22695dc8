//! Parser for etcdctl's interactive transaction syntax, so `weft kv txn` reads the same input:
//!
//! ```text
//! value("key") = "v"          <- compares, one per line
//! mod("key") > "5"
//!                             <- blank line
//! put key value               <- success requests (put, get, del)
//! get key
//!                             <- blank line
//! del key                     <- failure requests
//! ```

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

fn tokens(line: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut tok = String::new();
        if c == '"' || c == '\'' {
            chars.next();
            let mut closed = false;
            while let Some(ch) = chars.next() {
                if ch == '\\' {
                    if let Some(n) = chars.next() {
                        tok.push(n);
                    }
                } else if ch == c {
                    closed = true;
                    break;
                } else {
                    tok.push(ch);
                }
            }
            if !closed {
                bail!("unterminated quote in {line:?}");
            }
        } else {
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                tok.push(ch);
                chars.next();
            }
        }
        out.push(tok);
    }
    Ok(out)
}

fn compare(line: &str) -> Result<Value> {
    // target("key") op "value"
    let open = line
        .find('(')
        .with_context(|| format!("bad compare {line:?}: expected target(\"key\") op \"value\""))?;
    let close = line
        .rfind(')')
        .with_context(|| format!("bad compare {line:?}: missing ')'"))?;
    let target = match line[..open].trim() {
        "value" | "val" | "v" => "value",
        "version" | "ver" => "version",
        "create" | "c" => "create_revision",
        "mod" | "m" => "mod_revision",
        "lease" => "lease",
        other => {
            bail!("unknown compare target {other:?}; allowed: value, version, create, mod, lease")
        }
    };
    let key = tokens(&line[open + 1..close])?
        .pop()
        .with_context(|| format!("missing key in {line:?}"))?;
    let rest = tokens(&line[close + 1..])?;
    let [op, val] = rest.as_slice() else {
        bail!("bad compare {line:?}: expected an operator and a quoted value after the key");
    };
    if !matches!(op.as_str(), "=" | "!=" | "<" | ">") {
        bail!("unknown compare operator {op:?}; allowed: =, !=, <, >");
    }
    let value = if target == "value" {
        json!(val)
    } else {
        json!(val
            .parse::<i64>()
            .with_context(|| format!("{target} compares need an integer, got {val:?}"))?)
    };
    Ok(json!({"key": key, "target": target, "op": op, "value": value}))
}

fn request(line: &str) -> Result<Value> {
    let t = tokens(line)?;
    let Some((cmd, args)) = t.split_first() else {
        bail!("empty request")
    };
    let mut flags = args
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(String::as_str);
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let prefix = flags.any(|f| f == "--prefix");
    Ok(match (cmd.as_str(), pos.as_slice()) {
        ("put", [k, v]) => json!({"put": {"key": k, "value": v}}),
        ("get", [k]) => json!({"range": {"key": k, "prefix": prefix}}),
        ("get", [k, end]) => json!({"range": {"key": k, "range_end": end}}),
        ("del" | "delete", [k]) => json!({"delete": {"key": k, "prefix": prefix}}),
        ("del" | "delete", [k, end]) => json!({"delete": {"key": k, "range_end": end}}),
        _ => bail!("bad request {line:?}: expected put KEY VALUE, get KEY [END], or del KEY [END]"),
    })
}

/// Parses the three blank-line-separated sections into a txn JSON body.
pub fn parse(input: &str) -> Result<Value> {
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in input.lines() {
        if line.trim().is_empty() {
            if sections.len() < 3 {
                sections.push(Vec::new());
            }
            continue;
        }
        sections.last_mut().expect("non-empty").push(line.trim());
    }
    sections.resize(3, Vec::new());
    let compare = sections[0]
        .iter()
        .map(|l| compare(l))
        .collect::<Result<Vec<_>>>()?;
    let success = sections[1]
        .iter()
        .map(|l| request(l))
        .collect::<Result<Vec<_>>>()?;
    let failure = sections[2]
        .iter()
        .map(|l| request(l))
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({"compare": compare, "success": success, "failure": failure}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcdctl_syntax() {
        let t = parse(
            "value(\"k\") = \"v 1\"\nmod(\"k\") > \"5\"\n\nput k \"new value\"\nget k\n\ndel k\n",
        )
        .unwrap();
        assert_eq!(t["compare"][0]["value"], "v 1");
        assert_eq!(t["compare"][1]["target"], "mod_revision");
        assert_eq!(t["compare"][1]["value"], 5);
        assert_eq!(t["success"][0]["put"]["value"], "new value");
        assert_eq!(t["failure"][0]["delete"]["key"], "k");
    }

    #[test]
    fn bad_input_says_what_is_allowed() {
        let e = parse("size(\"k\") = \"1\"\n").unwrap_err().to_string();
        assert!(e.contains("allowed"), "{e}");
        let e = parse("version(\"k\") = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("integer"), "{e}");
        let e = parse("\n\nfrobnicate k\n").unwrap_err().to_string();
        assert!(e.contains("expected put"), "{e}");
    }
}
