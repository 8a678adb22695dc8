//! Authentication and rate limits through the gateway.

use crate::common;

use std::sync::atomic::Ordering;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
const SECRET: &str = "0123456789abcdef0123456789abcdef-hs";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, exp_in: i64) -> serde_json::Value {
    serde_json::json!({ "sub": sub, "exp": now() as i64 + exp_in, "iss": "issuer-1", "aud": "weft" })
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DATA}/{name}")).unwrap()
}

async fn gateway(a: &TestUpstream) -> TestGateway {
    let jwks = {
        let key = EncodingKey::from_ec_pem(&pem("ec_private.pem")).unwrap();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some("ec-1".into());
        // One file per gateway: tests run in parallel in this process.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("weft-jwks-{}-{n}.json", std::process::id()));
        std::fs::write(
            &path,
            serde_json::to_vec(&jsonwebtoken::jwk::JwkSet { keys: vec![jwk] }).unwrap(),
        )
        .unwrap();
        path
    };
    let toml = format!(
        r#"
[[route]]
name = "key"
path_prefix = "/key"
upstream = "u"
auth = "keys"
rate_limit = {{ per_second = 1, burst = 3 }}

[[route]]
name = "basic"
path_prefix = "/basic"
upstream = "u"
auth = "basic"

[[route]]
name = "hs"
path_prefix = "/hs"
upstream = "u"
auth = "hs"

[[route]]
name = "hs0"
path_prefix = "/hs0"
upstream = "u"
auth = "hs0"

[[route]]
name = "rs"
path_prefix = "/rs"
upstream = "u"
auth = "rs"

[[route]]
name = "es"
path_prefix = "/es"
upstream = "u"
auth = "es"

[[upstream]]
name = "u"
endpoints = [{{ address = "{addr}" }}]

[[auth]]
name = "keys"
kind = "api_key"
query = "apikey"
keys = {{ "key-alice-0123456789" = "alice", "key-bob-0123456789ab" = "bob" }}

[[auth]]
name = "basic"
kind = "basic"
users = {{ carol = "s3cret" }}

[[auth]]
name = "hs"
kind = "jwt"
algorithms = ["HS256"]
secret = "{SECRET}"
issuer = "issuer-1"
audience = ["weft"]

[[auth]]
name = "hs0"
kind = "jwt"
algorithms = ["HS256"]
secret = "{SECRET}"
leeway_secs = 0

[[auth]]
name = "rs"
kind = "jwt"
algorithms = ["RS256"]
public_key_file = "{DATA}/rsa_public.pem"

[[auth]]
name = "es"
kind = "jwt"
algorithms = ["ES256"]
jwks_file = "{jwks}"
"#,
        addr = a.addr,
        jwks = jwks.display()
    );
    TestGateway::start(&toml, None).await
}

#[tokio::test]
async fn api_keys_identify_consumers_and_feed_rate_limits() {
    let a = TestUpstream::start("a").await;
    let gw = gateway(&a).await;
    let r = get(gw.addr, "/key").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.reason(), "unauthorized");
    let r = get_h(gw.addr, "/key", &[("x-api-key", "nope-nope-nope-nope")]).await;
    assert_eq!(r.status, 401);
    let r = get_h(
        gw.addr,
        "/key",
        &[
            ("x-api-key", "key-alice-0123456789"),
            ("x-weft-consumer", "forged"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-weft-consumer"], "alice");
    let r = get(gw.addr, "/key?apikey=key-bob-0123456789ab").await;
    assert_eq!(r.json()["headers"]["x-weft-consumer"], "bob");
    // Alice has used 1 of her burst of 3: two more pass, then 429 with Retry-After. Bob's
    // limit is his own.
    for _ in 0..2 {
        assert_eq!(
            get_h(gw.addr, "/key", &[("x-api-key", "key-alice-0123456789")])
                .await
                .status,
            200
        );
    }
    let r = get_h(gw.addr, "/key", &[("x-api-key", "key-alice-0123456789")]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.reason(), "rate-limited");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(
        get(gw.addr, "/key?apikey=key-bob-0123456789ab")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn basic_auth() {
    let a = TestUpstream::start("a").await;
    let gw = gateway(&a).await;
    let r = get(gw.addr, "/basic").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Basic realm=\"weft\"");
    // carol:wrong, carol:s3cret
    let r = get_h(
        gw.addr,
        "/basic",
        &[("authorization", "Basic Y2Fyb2w6d3Jvbmc=")],
    )
    .await;
    assert_eq!(r.status, 401);
    let r = get_h(
        gw.addr,
        "/basic",
        &[("authorization", "Basic Y2Fyb2w6czNjcmV0")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-weft-consumer"], "carol");
    let r = get_h(gw.addr, "/basic", &[("authorization", "Basic !!!")]).await;
    assert_eq!(r.status, 401);
}

async fn bearer(gw: &TestGateway, path: &str, token: &str) -> Reply {
    get_h(
        gw.addr,
        path,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

#[tokio::test]
async fn jwt_hs256_claims_are_checked() {
    let a = TestUpstream::start("a").await;
    let gw = gateway(&a).await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let ok = encode(&Header::new(Algorithm::HS256), &claims("dave", 300), &key).unwrap();
    let r = bearer(&gw, "/hs", &ok).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["headers"]["x-weft-consumer"], "dave");
    let expired = encode(&Header::new(Algorithm::HS256), &claims("dave", -300), &key).unwrap();
    assert_eq!(bearer(&gw, "/hs", &expired).await.status, 401);
    // Each mutation of otherwise valid claims must be refused.
    type Mutation = (&'static str, fn(&mut serde_json::Value));
    let mutations: [Mutation; 4] = [
        ("wrong aud", |c| c["aud"] = "other".into()),
        ("wrong iss", |c| c["iss"] = "mallory".into()),
        ("nbf in the future", |c| c["nbf"] = (now() + 3600).into()),
        ("no exp", |c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
    ];
    for (what, mutate) in mutations {
        let mut c = claims("dave", 300);
        mutate(&mut c);
        let token = encode(&Header::new(Algorithm::HS256), &c, &key).unwrap();
        assert_eq!(bearer(&gw, "/hs", &token).await.status, 401, "{what}");
    }
    let wrong = EncodingKey::from_secret(b"another-secret-another-secret-xx");
    assert_eq!(
        bearer(
            &gw,
            "/hs",
            &encode(&Header::new(Algorithm::HS256), &claims("dave", 300), &wrong).unwrap()
        )
        .await
        .status,
        401
    );
    // Tampered payload.
    let mut parts: Vec<String> = ok.split('.').map(str::to_string).collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    parts[1] = b64.encode(serde_json::to_vec(&claims("root", 300)).unwrap());
    assert_eq!(bearer(&gw, "/hs", &parts.join(".")).await.status, 401);
}

fn unsigned(alg: &str, c: &serde_json::Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(serde_json::json!({"alg": alg, "typ": "JWT"}).to_string()),
        b64.encode(c.to_string())
    )
}

#[tokio::test]
async fn jwt_none_and_algorithm_confusion_are_rejected() {
    let a = TestUpstream::start("a").await;
    let gw = gateway(&a).await;
    let c = claims("eve", 300);
    for alg in ["none", "None", "NONE"] {
        let r = bearer(&gw, "/rs", &unsigned(alg, &c)).await;
        assert_eq!(r.status, 401, "alg {alg}");
    }
    // RS256 route; token signed HS256 with the RSA *public key* as the HMAC secret.
    let public = pem("rsa_public.pem");
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    let r = bearer(&gw, "/rs", &confused).await;
    assert_eq!(r.status, 401);
    assert!(
        String::from_utf8_lossy(&r.body).contains("not accepted"),
        "{:?}",
        r.body
    );
    // The genuine RS256 token passes.
    let rsa = EncodingKey::from_rsa_pem(&pem("rsa_private.pem")).unwrap();
    let good = encode(&Header::new(Algorithm::RS256), &c, &rsa).unwrap();
    assert_eq!(bearer(&gw, "/rs", &good).await.status, 200);
    // An RS256 token on the HS256 route is refused too.
    assert_eq!(bearer(&gw, "/hs", &good).await.status, 401);
    assert_eq!(a.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn jwt_es256_from_jwks_by_kid() {
    let a = TestUpstream::start("a").await;
    let gw = gateway(&a).await;
    let key = EncodingKey::from_ec_pem(&pem("ec_private.pem")).unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec-1".into());
    let token = encode(&h, &claims("frank", 300), &key).unwrap();
    let r = bearer(&gw, "/es", &token).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["headers"]["x-weft-consumer"], "frank");
    h.kid = Some("unknown".into());
    let token = encode(&h, &claims("frank", 300), &key).unwrap();
    assert_eq!(bearer(&gw, "/es", &token).await.status, 401);
}

#[test]
fn jwt_config_mistakes_are_reported() {
    let base = |auth: &str| {
        format!("[[upstream]]\nname = \"u\"\nendpoints = [{{ address = \"127.0.0.1:1\" }}]\n\n[[auth]]\nname = \"j\"\nkind = \"jwt\"\n{auth}\n")
    };
    let cases = [
        ("algorithms = [\"HS256\"]", "HS* algorithms need a secret"),
        (
            "algorithms = [\"HS256\"]\nsecret = \"short\"",
            "at least 32 bytes",
        ),
        ("algorithms = [\"none\"]", "is not supported"),
        (
            "algorithms = [\"RS256\"]",
            "need public_key_file or jwks_file",
        ),
        (
            "algorithms = [\"RS256\", \"ES256\"]\npublic_key_file = \"/dev/null\"",
            "one PEM key serves one key type",
        ),
        (
            "algorithms = [\"RS256\"]\npublic_key_file = \"/nonexistent.pem\"",
            "cannot read /nonexistent.pem",
        ),
    ];
    for (auth, want) in cases {
        let e = weft_gateway::Config::from_toml(&base(auth), "gw.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{auth}: {e}");
        assert!(e.starts_with("gw.toml:5: auth[0]."), "{e}");
    }
}

#[tokio::test]
async fn verified_tokens_are_cached_but_still_expire() {
    let a = TestUpstream::start("a").await;
    let gw = gateway(&a).await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let token = encode(&Header::new(Algorithm::HS256), &claims("gina", 2), &key).unwrap();
    for _ in 0..3 {
        assert_eq!(bearer(&gw, "/hs0", &token).await.status, 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let r = bearer(&gw, "/hs0", &token).await;
    assert_eq!(r.status, 401, "a cached token must not outlive its exp");
}
