//! Path templates (`/users/{id}/posts/{*rest}`): parsing, matching and rewriting. A leaf:
//! the config checks templates with it, the router matches with it.

/// One segment of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Param(String),
    Rest(String),
}

/// A path template such as `/users/{id}/posts/{*rest}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    segs: Vec<Seg>,
}

impl Template {
    /// Parses a template; `{name}` is one segment, a final `{*name}` the rest of the path.
    pub fn parse(t: &str) -> Result<Template, String> {
        let body = t
            .strip_prefix('/')
            .ok_or_else(|| format!("{t:?} must start with '/'"))?;
        let mut segs = Vec::new();
        let mut names = std::collections::HashSet::new();
        let parts: Vec<&str> = if body.is_empty() {
            vec![]
        } else {
            body.split('/').collect()
        };
        for (i, p) in parts.iter().enumerate() {
            if let Some(inner) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let (rest, name) = match inner.strip_prefix('*') {
                    Some(n) => (true, n),
                    None => (false, inner),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "{t:?}: parameter {p:?} needs a name of A-Z a-z 0-9 _"
                    ));
                }
                if !names.insert(name.to_string()) {
                    return Err(format!("{t:?}: parameter {name:?} appears twice"));
                }
                if rest && i + 1 != parts.len() {
                    return Err(format!("{t:?}: {{*{name}}} must be the last segment"));
                }
                segs.push(if rest {
                    Seg::Rest(name.into())
                } else {
                    Seg::Param(name.into())
                });
            } else if p.contains('{') || p.contains('}') {
                return Err(format!(
                    "{t:?}: segment {p:?} mixes text and a parameter; a parameter is a whole segment"
                ));
            } else {
                segs.push(Seg::Lit((*p).to_string()));
            }
        }
        Ok(Template { segs })
    }

    /// Checks that a rewrite only uses this template's parameters.
    pub fn check_rewrite(&self, rewrite: &str) -> Result<(), String> {
        if !rewrite.starts_with('/') {
            return Err(format!("{rewrite:?} must start with '/'"));
        }
        let mut rest = rewrite;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{rewrite:?}: unclosed '{{'"))?;
            let name = &rest[open + 1..open + close];
            let known = self.segs.iter().any(|s| match s {
                Seg::Param(n) | Seg::Rest(n) => n == name,
                Seg::Lit(_) => false,
            });
            if !known {
                return Err(format!(
                    "{rewrite:?}: {{{name}}} is not a parameter of the template"
                ));
            }
            rest = &rest[open + close + 1..];
        }
        Ok(())
    }

    pub(crate) fn literals(&self) -> usize {
        self.segs
            .iter()
            .filter(|s| matches!(s, Seg::Lit(_)))
            .count()
    }

    /// Matches a path, returning the parameters.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let body = path.strip_prefix('/')?;
        let all: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        let mut parts = all.iter().copied();
        let mut params = Vec::new();
        let mut consumed = 0usize;
        for seg in &self.segs {
            match seg {
                Seg::Lit(l) => {
                    if parts.next()? != l {
                        return None;
                    }
                    consumed += 1;
                }
                Seg::Param(n) => {
                    let p = parts.next()?;
                    if p.is_empty() {
                        return None;
                    }
                    params.push((n.clone(), p.to_string()));
                    consumed += 1;
                }
                Seg::Rest(n) => {
                    params.push((n.clone(), all[consumed.min(all.len())..].join("/")));
                    return Some(params);
                }
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(params)
    }

    /// Renders a rewrite with the captured parameters.
    pub fn render(rewrite: &str, params: &[(String, String)]) -> String {
        let mut out = rewrite.to_string();
        for (n, v) in params {
            out = out.replace(&format!("{{{n}}}"), v);
        }
        out
    }
}
