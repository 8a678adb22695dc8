//! Route matching.
//!
//! Routes are tried most specific first: routes with hosts before routes without, then exact
//! paths, then templates (more literal segments first), then prefixes (longest first), then
//! routes without a path; ties keep their declaration order. Within that order the first route
//! whose host, path, method, headers and query all match wins.

use std::collections::BTreeMap;

use http::{HeaderMap, Method};

use crate::config::RouteConfig;
pub use crate::template::Template;

#[derive(Clone, Debug)]
pub(crate) enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Template(Template),
}

/// A compiled route matcher.
#[derive(Clone, Debug)]
pub(crate) struct Matcher {
    hosts: Vec<String>,
    path: PathMatch,
    methods: Vec<Method>,
    headers: Vec<(http::HeaderName, String)>,
    query: BTreeMap<String, String>,
    rewrite: Option<String>,
}

/// What a match yields.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Matched {
    /// Path (and query) to send upstream, if it differs from the request's.
    pub path_and_query: Option<String>,
}

impl Matcher {
    pub(crate) fn new(r: &RouteConfig) -> Matcher {
        let path = if let Some(p) = &r.path {
            PathMatch::Exact(p.clone())
        } else if let Some(p) = &r.path_prefix {
            let p = if p.len() > 1 {
                p.trim_end_matches('/').to_string()
            } else {
                p.clone()
            };
            PathMatch::Prefix(p)
        } else if let Some(t) = &r.path_template {
            PathMatch::Template(Template::parse(t).expect("validated"))
        } else {
            PathMatch::Any
        };
        Matcher {
            hosts: r.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            path,
            methods: r
                .methods
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).expect("validated"))
                .collect(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        http::HeaderName::from_bytes(k.as_bytes()).expect("validated"),
                        v.clone(),
                    )
                })
                .collect(),
            query: r.query.clone(),
            rewrite: r.rewrite.clone(),
        }
    }

    /// Sort key: smaller is tried first.
    pub(crate) fn rank(&self) -> (u8, u8, std::cmp::Reverse<usize>) {
        let host = if self.hosts.is_empty() { 1 } else { 0 };
        let (kind, len) = match &self.path {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::Template(t) => (1, t.literals()),
            PathMatch::Prefix(p) => (2, p.len()),
            PathMatch::Any => (3, 0),
        };
        (host, kind, std::cmp::Reverse(len))
    }

    pub(crate) fn matches(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<Matched> {
        if !self.hosts.is_empty() {
            let host = host?.to_ascii_lowercase();
            let host = strip_port(&host);
            let ok = self.hosts.iter().any(|h| match h.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1
                        && host.ends_with(suffix)
                        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                }
                None => h == host,
            });
            if !ok {
                return None;
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return None;
        }
        for (name, want) in &self.headers {
            let v = headers.get(name)?;
            if want != "*" && v.as_bytes() != want.as_bytes() {
                return None;
            }
        }
        if !self.query.is_empty() {
            let pairs = parse_query(query.unwrap_or(""));
            for (k, want) in &self.query {
                let v = pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v)?;
                if want != "*" && v != want {
                    return None;
                }
            }
        }
        let new_path: Option<String> = match &self.path {
            PathMatch::Any => None,
            PathMatch::Exact(p) => {
                if path != p {
                    return None;
                }
                None
            }
            PathMatch::Prefix(p) => {
                let rest = if p == "/" {
                    Some(path)
                } else {
                    path.strip_prefix(p.as_str())
                        .filter(|r| r.is_empty() || r.starts_with('/'))
                };
                let rest = rest?;
                self.rewrite.as_ref().map(|rw| {
                    let joined = format!("{}{}", rw.trim_end_matches('/'), rest);
                    if joined.is_empty() {
                        "/".into()
                    } else if !joined.starts_with('/') {
                        format!("/{joined}")
                    } else {
                        joined
                    }
                })
            }
            PathMatch::Template(t) => {
                let params = t.matches(path)?;
                self.rewrite
                    .as_ref()
                    .map(|rw| Template::render(rw, &params))
            }
        };
        let path_and_query = new_path.map(|p| match query {
            Some(q) => format!("{p}?{q}"),
            None => p,
        });
        Some(Matched { path_and_query })
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split(']')
            .next()
            .map(|h| &host[..h.len() + 1])
            .unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

/// `a=1&b=2` → pairs (percent-decoding `+` and `%XX`).
pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(f: impl FnOnce(&mut RouteConfig)) -> Matcher {
        let mut r = RouteConfig {
            name: "r".into(),
            upstream: "u".into(),
            ..Default::default()
        };
        f(&mut r);
        crate::config::validate_route(&r).unwrap();
        Matcher::new(&r)
    }

    fn m(mt: &Matcher, method: &str, host: &str, pq: &str) -> Option<String> {
        let (p, q) = match pq.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (pq, None),
        };
        mt.matches(
            &Method::from_bytes(method.as_bytes()).unwrap(),
            Some(host),
            p,
            q,
            &HeaderMap::new(),
        )
        .map(|x| x.path_and_query.unwrap_or_else(|| pq.to_string()))
    }

    #[test]
    fn templates_match_segments_and_rewrite() {
        let t = route(|r| {
            r.path_template = Some("/users/{id}/posts/{*rest}".into());
            r.rewrite = Some("/v2/{id}/{rest}".into());
        });
        assert_eq!(
            m(&t, "GET", "h", "/users/7/posts/a/b?x=1").as_deref(),
            Some("/v2/7/a/b?x=1")
        );
        assert_eq!(m(&t, "GET", "h", "/users/7/post/a"), None);
        assert_eq!(m(&t, "GET", "h", "/users//posts/a"), None);
        let t = route(|r| r.path_template = Some("/a/{x}".into()));
        assert_eq!(m(&t, "GET", "h", "/a/1").as_deref(), Some("/a/1"));
        assert_eq!(m(&t, "GET", "h", "/a/1/2"), None);
        assert_eq!(m(&t, "GET", "h", "/a"), None);
        assert!(Template::parse("/a/x{y}").is_err());
        assert!(Template::parse("/{*a}/b").is_err());
        assert!(Template::parse("/{a}/{a}").is_err());
        assert!(Template::parse("/{a}")
            .unwrap()
            .check_rewrite("/{b}")
            .is_err());
    }

    #[test]
    fn prefixes_respect_segments_and_strip() {
        let p = route(|r| {
            r.path_prefix = Some("/api/".into());
            r.rewrite = Some("".into());
        });
        assert_eq!(m(&p, "GET", "h", "/api").as_deref(), Some("/"));
        assert_eq!(m(&p, "GET", "h", "/api/x/y?q").as_deref(), Some("/x/y?q"));
        assert_eq!(m(&p, "GET", "h", "/apix"), None);
        let p = route(|r| {
            r.path_prefix = Some("/api".into());
            r.rewrite = Some("/internal".into());
        });
        assert_eq!(m(&p, "GET", "h", "/api/x").as_deref(), Some("/internal/x"));
    }

    #[test]
    fn hosts_methods_headers_query() {
        let r = route(|r| {
            r.hosts = vec!["*.example.com".into(), "api.test".into()];
            r.methods = vec!["GET".into()];
            r.query = [("v".to_string(), "2".to_string())].into();
        });
        assert!(m(&r, "GET", "a.example.com:8080", "/?v=2").is_some());
        assert!(m(&r, "GET", "example.com", "/?v=2").is_none());
        assert!(m(&r, "GET", "API.test", "/?a=1&v=2").is_some());
        assert!(m(&r, "POST", "api.test", "/?v=2").is_none());
        assert!(m(&r, "GET", "api.test", "/?v=3").is_none());
        let h = route(|r| r.headers = [("x-env".to_string(), "*".to_string())].into());
        let mut hm = HeaderMap::new();
        assert!(h.matches(&Method::GET, None, "/", None, &hm).is_none());
        hm.insert("x-env", "prod".parse().unwrap());
        assert!(h.matches(&Method::GET, None, "/", None, &hm).is_some());
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_query("a=1+2&b=%41%zz&c"),
            vec![
                ("a".into(), "1 2".into()),
                ("b".into(), "A%zz".into()),
                ("c".into(), "".into())
            ]
        );
        assert_eq!(parse_query("x=%"), vec![("x".into(), "%".into())]);
    }
}
