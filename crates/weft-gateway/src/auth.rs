//! Authentication: API keys, HTTP basic, and JWT bearer tokens (the `jsonwebtoken` crate).
//!
//! JWT safety rules: the token's `alg` must be one of the provider's configured algorithms
//! (so `none` and anything unexpected is refused), and the key used must belong to that
//! algorithm's family: a token claiming HS256 is never checked against an RSA public key used
//! as an HMAC secret (algorithm confusion). `exp` is required; `nbf`, `iss` and `aud` are
//! checked when configured, with a leeway for clock skew.

use std::collections::{BTreeMap, HashMap};

use http::HeaderMap;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, AuthMethod};

/// Why a request was not authenticated; sent to the client in the 401 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// What was wrong.
    pub message: String,
    /// `WWW-Authenticate` challenge.
    pub challenge: String,
}

type FieldError = (&'static str, String);

pub(crate) struct JwtKey {
    kid: Option<String>,
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// A built authentication provider.
pub(crate) enum Authenticator {
    ApiKey {
        header: http::HeaderName,
        query: Option<String>,
        keys: HashMap<String, String>,
    },
    Basic {
        users: BTreeMap<String, String>,
        realm: String,
    },
    Jwt {
        algorithms: Vec<Algorithm>,
        keys: Vec<JwtKey>,
        issuer: Option<String>,
        audience: Vec<String>,
        consumer_claim: String,
        leeway: u64,
        cache: TokenCache,
    },
}

/// Tokens that passed verification: token → (consumer, nbf, exp). A hit skips the signature
/// check and claim parsing but still checks the time window; the cache belongs to one built
/// provider, so a reload with other keys starts empty. Bounded: cleared when full.
#[derive(Default)]
pub(crate) struct TokenCache(std::sync::Mutex<HashMap<String, (String, u64, u64)>>);

const TOKEN_CACHE_MAX: usize = 10_000;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
}

impl Authenticator {
    pub(crate) fn build(cfg: &AuthConfig) -> Result<Authenticator, FieldError> {
        match &cfg.method {
            AuthMethod::ApiKey {
                header,
                query,
                keys,
            } => {
                if keys.is_empty() {
                    return Err(("keys", "at least one key is required".into()));
                }
                if let Some((k, _)) = keys.iter().find(|(k, _)| k.len() < 16) {
                    return Err((
                        "keys",
                        format!(
                            "key {}… is shorter than 16 characters",
                            &k[..k.len().min(3)]
                        ),
                    ));
                }
                Ok(Authenticator::ApiKey {
                    header: http::HeaderName::from_bytes(header.as_bytes())
                        .map_err(|_| ("header", format!("{header:?} is not a header name")))?,
                    query: query.clone(),
                    keys: keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                })
            }
            AuthMethod::Basic { users, realm } => {
                if users.is_empty() {
                    return Err(("users", "at least one user is required".into()));
                }
                if users.keys().any(|u| u.contains(':')) {
                    return Err(("users", "user names cannot contain ':'".into()));
                }
                Ok(Authenticator::Basic {
                    users: users.clone(),
                    realm: realm.clone(),
                })
            }
            AuthMethod::Jwt {
                algorithms,
                secret,
                public_key_file,
                jwks_file,
                issuer,
                audience,
                consumer_claim,
                leeway_secs,
            } => {
                if algorithms.is_empty() {
                    return Err((
                        "algorithms",
                        "list the accepted algorithms, e.g. [\"RS256\"]".into(),
                    ));
                }
                let mut algs = Vec::new();
                for a in algorithms {
                    let alg: Algorithm = a.parse().map_err(|_| {
                        (
                            "algorithms",
                            format!("{a:?} is not supported (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"),
                        )
                    })?;
                    algs.push(alg);
                }
                let mut families: Vec<AlgorithmFamily> = Vec::new();
                for a in &algs {
                    if !families.contains(&a.family()) {
                        families.push(a.family());
                    }
                }
                let mut keys = Vec::new();
                if let Some(s) = secret {
                    if !families.contains(&AlgorithmFamily::Hmac) {
                        return Err(("secret", "a secret is only used by HS* algorithms".into()));
                    }
                    if s.len() < 32 {
                        return Err(("secret", "an HMAC secret needs at least 32 bytes".into()));
                    }
                    keys.push(JwtKey {
                        kid: None,
                        alg: None,
                        key: DecodingKey::from_secret(s.as_bytes()),
                    });
                } else if families.contains(&AlgorithmFamily::Hmac) {
                    return Err(("secret", "HS* algorithms need a secret".into()));
                }
                if let Some(p) = public_key_file {
                    let pem = read(p).map_err(|m| ("public_key_file", m))?;
                    let asym: Vec<_> = families
                        .iter()
                        .filter(|f| **f != AlgorithmFamily::Hmac)
                        .collect();
                    if asym.len() != 1 {
                        return Err((
                            "public_key_file",
                            "one PEM key serves one key type: list only RS*/PS*, only ES* or only EdDSA algorithms (or use a JWKS file)".into(),
                        ));
                    }
                    let key = match asym[0] {
                        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
                        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
                        _ => DecodingKey::from_ed_pem(&pem),
                    }
                    .map_err(|e| {
                        (
                            "public_key_file",
                            format!("{p}: not a usable public key: {e}"),
                        )
                    })?;
                    keys.push(JwtKey {
                        kid: None,
                        alg: None,
                        key,
                    });
                }
                if let Some(p) = jwks_file {
                    let text = read(p).map_err(|m| ("jwks_file", m))?;
                    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&text)
                        .map_err(|e| ("jwks_file", format!("{p}: not a JWKS document: {e}")))?;
                    for jwk in &set.keys {
                        let key = DecodingKey::from_jwk(jwk)
                            .map_err(|e| ("jwks_file", format!("{p}: unusable key: {e}")))?;
                        let alg = jwk
                            .common
                            .key_algorithm
                            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
                        keys.push(JwtKey {
                            kid: jwk.common.key_id.clone(),
                            alg,
                            key,
                        });
                    }
                }
                if keys.iter().all(|k| k.key.family() == AlgorithmFamily::Hmac)
                    && families.iter().any(|f| *f != AlgorithmFamily::Hmac)
                {
                    return Err((
                        "public_key_file",
                        "asymmetric algorithms need public_key_file or jwks_file".into(),
                    ));
                }
                Ok(Authenticator::Jwt {
                    algorithms: algs,
                    keys,
                    issuer: issuer.clone(),
                    audience: audience.clone(),
                    consumer_claim: consumer_claim.clone(),
                    leeway: *leeway_secs,
                    cache: TokenCache::default(),
                })
            }
        }
    }

    /// Authenticates a request, returning the consumer.
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<String, AuthFailure> {
        match self {
            Authenticator::ApiKey {
                header,
                query: qname,
                keys,
            } => {
                let fail = |m: &str| AuthFailure {
                    message: m.into(),
                    challenge: format!("ApiKey header=\"{header}\""),
                };
                let from_header = headers
                    .get(header)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let from_query = qname.as_ref().and_then(|q| {
                    crate::route::parse_query(query.unwrap_or(""))
                        .into_iter()
                        .find(|(k, _)| k == q)
                        .map(|(_, v)| v)
                });
                let key = from_header
                    .or(from_query)
                    .ok_or_else(|| fail("missing API key"))?;
                keys.get(&key)
                    .cloned()
                    .ok_or_else(|| fail("unknown API key"))
            }
            Authenticator::Basic { users, realm } => {
                let fail = |m: &str| AuthFailure {
                    message: m.into(),
                    challenge: format!("Basic realm=\"{realm}\""),
                };
                let v = headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| fail("missing credentials"))?;
                let b64 = v
                    .strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
                    .ok_or_else(|| fail("expected Basic credentials"))?;
                use base64::Engine;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|_| fail("credentials are not base64"))?;
                let raw = String::from_utf8(raw).map_err(|_| fail("credentials are not UTF-8"))?;
                let (user, pass) = raw
                    .split_once(':')
                    .ok_or_else(|| fail("credentials need user:password"))?;
                let ok = users
                    .get(user)
                    .map(|p| bool::from(p.as_bytes().ct_eq(pass.as_bytes())))
                    .unwrap_or(false);
                if ok {
                    Ok(user.to_string())
                } else {
                    Err(fail("wrong user or password"))
                }
            }
            Authenticator::Jwt {
                algorithms,
                keys,
                issuer,
                audience,
                consumer_claim,
                leeway,
                cache,
            } => {
                let fail = |m: String| AuthFailure {
                    message: m,
                    challenge: "Bearer".into(),
                };
                let v = headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| fail("missing bearer token".into()))?;
                let token = v
                    .strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .ok_or_else(|| fail("expected a Bearer token".into()))?
                    .trim();
                let now = unix_now();
                if let Some((c, nbf, exp)) =
                    cache.0.lock().unwrap_or_else(|e| e.into_inner()).get(token)
                {
                    if now + leeway >= *nbf && now < exp + leeway {
                        return Ok(c.clone());
                    }
                }
                let header = jsonwebtoken::decode_header(token)
                    .map_err(|e| fail(format!("malformed token header: {e}")))?;
                if !algorithms.contains(&header.alg) {
                    return Err(fail(format!("algorithm {:?} is not accepted", header.alg)));
                }
                let family = header.alg.family();
                let key = keys
                    .iter()
                    .filter(|k| k.key.family() == family)
                    .filter(|k| k.alg.is_none_or(|a| a == header.alg))
                    .find(|k| match (&k.kid, &header.kid) {
                        (Some(a), Some(b)) => a == b,
                        (Some(_), None) => false,
                        (None, _) => true,
                    })
                    .ok_or_else(|| fail("no key for this token (alg/kid)".into()))?;
                let mut val = Validation::new(header.alg);
                val.algorithms = vec![header.alg];
                val.leeway = *leeway;
                val.validate_nbf = true;
                val.set_required_spec_claims(&["exp"]);
                if let Some(i) = issuer {
                    val.set_issuer(&[i]);
                }
                if audience.is_empty() {
                    val.validate_aud = false;
                } else {
                    val.set_audience(audience);
                }
                let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                    token, &key.key, &val,
                )
                .map_err(|e| fail(format!("invalid token: {e}")))?;
                let consumer = match data.claims.get(consumer_claim) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => return Err(fail(format!("token has no {consumer_claim:?} claim"))),
                };
                let num = |k: &str| data.claims.get(k).and_then(|v| v.as_u64());
                if let Some(exp) = num("exp") {
                    let mut c = cache.0.lock().unwrap_or_else(|e| e.into_inner());
                    if c.len() >= TOKEN_CACHE_MAX {
                        c.clear();
                    }
                    c.insert(
                        token.to_string(),
                        (consumer.clone(), num("nbf").unwrap_or(0), exp),
                    );
                }
                Ok(consumer)
            }
        }
    }
}
