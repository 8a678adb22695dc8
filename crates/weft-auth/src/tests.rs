use super::*;

async fn with_root(auth: &Auth) {
    auth.user_add("root", Some("rootpw")).await.unwrap();
    auth.user_grant_role("root", "root").await.unwrap();
}

/// Adds role `role` with `p`, and user `user` (password "pw") holding it; enables auth; the
/// user's identity from a fresh token.
async fn user_with(auth: &Auth, user: &str, role: &str, p: Permission) -> Identity {
    auth.role_add(role).await.unwrap();
    auth.role_grant_permission(role, p).await.unwrap();
    auth.user_add(user, Some("pw")).await.unwrap();
    auth.user_grant_role(user, role).await.unwrap();
    auth.enable().await.unwrap();
    let token = auth.authenticate(user, "pw").await.unwrap();
    auth.identify(Some(&token)).unwrap()
}

fn perm(kind: PermKind, key: &str, end: &str) -> Permission {
    Permission {
        kind,
        key: key.into(),
        range_end: end.into(),
    }
}

#[tokio::test]
async fn enabling_needs_a_root_user_with_the_root_role() {
    let auth = Auth::in_memory(Options::default());
    assert!(matches!(
        auth.enable().await,
        Err(AuthError::RootUserNotExist)
    ));
    auth.user_add("root", Some("pw")).await.unwrap();
    assert!(matches!(
        auth.enable().await,
        Err(AuthError::RootRoleNotExist)
    ));
    assert!(!auth.enabled());
    auth.user_grant_role("root", "root").await.unwrap();
    auth.enable().await.unwrap();
    assert!(auth.enabled());
    // Root cannot be removed while enabled.
    assert!(matches!(
        auth.user_delete("root").await,
        Err(AuthError::InvalidAuthMgmt)
    ));
    assert!(matches!(
        auth.user_revoke_role("root", "root").await,
        Err(AuthError::InvalidAuthMgmt)
    ));
}

#[tokio::test]
async fn disabled_auth_lets_everyone_in_and_refuses_to_authenticate() {
    let auth = Auth::in_memory(Options::default());
    assert_eq!(auth.identify(None).unwrap(), Identity::Admin);
    assert_eq!(auth.identify(Some("junk")).unwrap(), Identity::Admin);
    with_root(&auth).await;
    assert!(matches!(
        auth.authenticate("root", "rootpw").await,
        Err(AuthError::AuthNotEnabled)
    ));
}

#[tokio::test]
async fn wrong_names_and_passwords_fail_alike() {
    let auth = Auth::in_memory(Options::default());
    with_root(&auth).await;
    auth.enable().await.unwrap();
    for (u, p) in [("root", "nope"), ("nobody", "rootpw"), ("", "")] {
        assert!(
            matches!(auth.authenticate(u, p).await, Err(AuthError::AuthFailed)),
            "{u}"
        );
    }
    let t = auth.authenticate("root", "rootpw").await.unwrap();
    let who = auth.identify(Some(&t)).unwrap();
    assert_eq!(who.name(), "root");
    assert!(auth.is_admin(&who));
    assert!(matches!(auth.identify(None), Err(AuthError::UserEmpty)));
    assert!(matches!(
        auth.identify(Some("weft.x")),
        Err(AuthError::InvalidAuthToken)
    ));
}

#[tokio::test(start_paused = true)]
async fn tokens_expire_after_the_ttl_since_last_use() {
    let auth = Auth::in_memory(Options {
        token_ttl: Duration::from_secs(10),
    });
    with_root(&auth).await;
    auth.enable().await.unwrap();
    let t = auth.authenticate("root", "rootpw").await.unwrap();
    tokio::time::advance(Duration::from_secs(8)).await;
    auth.identify(Some(&t)).unwrap();
    tokio::time::advance(Duration::from_secs(8)).await;
    auth.identify(Some(&t)).expect("used 8 s ago: alive");
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(matches!(
        auth.identify(Some(&t)),
        Err(AuthError::InvalidAuthToken)
    ));
}

#[tokio::test]
async fn a_new_password_or_a_deleted_user_ends_its_tokens() {
    let auth = Auth::in_memory(Options::default());
    with_root(&auth).await;
    auth.user_add("alice", Some("a")).await.unwrap();
    auth.enable().await.unwrap();
    let t = auth.authenticate("alice", "a").await.unwrap();
    auth.user_change_password("alice", "b").await.unwrap();
    assert!(matches!(
        auth.identify(Some(&t)),
        Err(AuthError::InvalidAuthToken)
    ));
    assert!(matches!(
        auth.authenticate("alice", "a").await,
        Err(AuthError::AuthFailed)
    ));
    let t = auth.authenticate("alice", "b").await.unwrap();
    let alice = auth.identify(Some(&t)).unwrap();
    auth.user_delete("alice").await.unwrap();
    assert!(matches!(
        auth.identify(Some(&t)),
        Err(AuthError::InvalidAuthToken)
    ));
    assert!(matches!(
        auth.check(&alice, b"k", b"", Need::Read),
        Err(AuthError::InvalidAuthToken)
    ));
}

#[tokio::test]
async fn permissions_follow_roles_at_each_call() {
    let auth = Auth::in_memory(Options::default());
    with_root(&auth).await;
    let bob = user_with(&auth, "bob", "reader", perm(PermKind::Read, "app/", "app0")).await;
    assert!(auth.check(&bob, b"app/x", b"", Need::Read).is_ok());
    assert!(matches!(
        auth.check(&bob, b"app/x", b"", Need::Write),
        Err(AuthError::PermissionDenied)
    ));
    assert!(!auth.is_admin(&bob));
    // Upgraded in place: same range, now readwrite.
    auth.role_grant_permission("reader", perm(PermKind::ReadWrite, "app/", "app0"))
        .await
        .unwrap();
    assert_eq!(auth.role_get("reader").unwrap().len(), 1);
    assert!(auth.check(&bob, b"app/x", b"", Need::Write).is_ok());
    auth.role_revoke_permission("reader", b"app/", b"app0")
        .await
        .unwrap();
    assert!(auth.check(&bob, b"app/x", b"", Need::Read).is_err());
    assert!(matches!(
        auth.role_revoke_permission("reader", b"app/", b"app0")
            .await,
        Err(AuthError::PermissionNotGranted)
    ));
    auth.role_delete("reader").await.unwrap();
    assert!(
        auth.user_get("bob").unwrap().is_empty(),
        "a deleted role leaves its users"
    );
}

#[tokio::test]
async fn management_errors_are_etcds() {
    let auth = Auth::in_memory(Options::default());
    assert!(matches!(
        auth.user_add("", None).await,
        Err(AuthError::UserEmpty)
    ));
    assert!(matches!(auth.role_add("").await, Err(AuthError::RoleEmpty)));
    auth.user_add("u", None).await.unwrap();
    assert!(matches!(
        auth.user_add("u", None).await,
        Err(AuthError::UserAlreadyExist)
    ));
    assert!(matches!(
        auth.user_grant_role("u", "r").await,
        Err(AuthError::RoleNotFound)
    ));
    assert!(matches!(
        auth.user_grant_role("x", "root").await,
        Err(AuthError::UserNotFound)
    ));
    assert!(matches!(
        auth.user_revoke_role("u", "r").await,
        Err(AuthError::RoleNotGranted)
    ));
    auth.role_add("r").await.unwrap();
    assert!(matches!(
        auth.role_add("r").await,
        Err(AuthError::RoleAlreadyExist)
    ));
    for (k, e) in [("", ""), ("z", "a"), ("a", "a")] {
        assert!(matches!(
            auth.role_grant_permission("r", perm(PermKind::Read, k, e))
                .await,
            Err(AuthError::InvalidAuthMgmt)
        ));
    }
    assert!(matches!(auth.user_get("x"), Err(AuthError::UserNotFound)));
    assert!(matches!(auth.role_get("x"), Err(AuthError::RoleNotFound)));
    assert!(matches!(
        auth.user_delete("x").await,
        Err(AuthError::UserNotFound)
    ));
    assert!(matches!(
        auth.role_delete("x").await,
        Err(AuthError::RoleNotFound)
    ));
    assert_eq!(auth.user_list(), ["u"]);
    assert_eq!(auth.role_list(), ["r"]);
    // A user with no password cannot log in with one.
    with_root(&auth).await;
    auth.enable().await.unwrap();
    assert!(matches!(
        auth.authenticate("u", "").await,
        Err(AuthError::AuthFailed)
    ));
}

#[tokio::test]
async fn the_file_keeps_everything_and_never_holds_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.json");
    let rev = {
        let auth = Auth::open(&path, Options::default()).unwrap();
        with_root(&auth).await;
        auth.role_add("r").await.unwrap();
        auth.role_grant_permission("r", perm(PermKind::Write, "k", "\0"))
            .await
            .unwrap();
        auth.enable().await.unwrap()
    };
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("rootpw"), "{text}");
    assert!(text.contains("$argon2id$"), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }
    let auth = Auth::open(&path, Options::default()).unwrap();
    assert!(auth.enabled());
    assert_eq!(auth.revision(), rev);
    assert_eq!(
        auth.role_get("r").unwrap(),
        [perm(PermKind::Write, "k", "\0")]
    );
    auth.authenticate("root", "rootpw").await.unwrap();
}

#[test]
fn a_damaged_file_is_refused_with_its_path_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.json");
    for (body, want) in [
        ("{not json", "damaged"),
        (
            r#"{"version": 9, "enabled": false, "revision": 0, "users": {}, "roles": {}}"#,
            "version 9",
        ),
        (
            r#"{"version": 1, "enabled": false, "revision": 0, "users": {"u": {"password": "plain", "roles": []}}, "roles": {}}"#,
            "password hash",
        ),
    ] {
        std::fs::write(&path, body).unwrap();
        let e = Auth::open(&path, Options::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.json") && e.contains(want), "{e}");
    }
}

#[tokio::test]
async fn a_certificate_names_an_existing_user_once_enabled() {
    let auth = Auth::in_memory(Options::default());
    assert_eq!(auth.identify_cert("anyone").unwrap(), Identity::Admin);
    with_root(&auth).await;
    auth.user_add("svc", None).await.unwrap();
    auth.enable().await.unwrap();
    assert_eq!(auth.identify_cert("svc").unwrap().name(), "svc");
    assert!(matches!(
        auth.identify_cert("ghost"),
        Err(AuthError::PermissionDenied)
    ));
}

async fn embedded() -> (tempfile::TempDir, Arc<dyn weft_store::Store>) {
    let dir = tempfile::tempdir().unwrap();
    let s = weft_store::embedded::Embedded::open(dir.path(), Default::default())
        .await
        .unwrap();
    (dir, Arc::new(s))
}

/// Waits (bounded) until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 2 s");
}

#[tokio::test]
async fn nodes_on_one_store_share_users_but_not_tokens() {
    let (_dir, store) = embedded().await;
    let a = Auth::open_store(store.clone(), Options::default())
        .await
        .unwrap();
    let b = Auth::open_store(store.clone(), Options::default())
        .await
        .unwrap();
    with_root(&a).await;
    a.user_add("alice", Some("pw")).await.unwrap();
    a.enable().await.unwrap();
    until("b sees a's changes", || {
        b.enabled() && b.user_list().len() == 2
    })
    .await;
    let on_a = a.authenticate("alice", "pw").await.unwrap();
    assert!(matches!(
        b.identify(Some(&on_a)),
        Err(AuthError::InvalidAuthToken)
    ));
    let on_b = b.authenticate("alice", "pw").await.unwrap();
    b.identify(Some(&on_b)).unwrap();
    // A new password set on a ends alice's tokens on b too.
    a.user_change_password("alice", "new").await.unwrap();
    until("b ends alice's tokens", || b.identify(Some(&on_b)).is_err()).await;
    // Reopened, the store still holds them (and hashes, not passwords).
    drop((a, b));
    let c = Auth::open_store(store.clone(), Options::default())
        .await
        .unwrap();
    assert!(c.enabled());
    c.authenticate("alice", "new").await.unwrap();
    let raw = store
        .range(weft_store::RangeRequest::new(weft_store::KeyRange::key(
            AUTH_KEY,
        )))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&raw.kvs[0].value).into_owned();
    assert!(
        text.contains("$argon2id$") && !text.contains("\"new\""),
        "{text}"
    );
}

#[tokio::test]
async fn changes_made_at_once_on_two_nodes_are_both_kept() {
    let (_dir, store) = embedded().await;
    let a = Auth::open_store(store.clone(), Options::default())
        .await
        .unwrap();
    let b = Auth::open_store(store.clone(), Options::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let n = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(
            async move { n.role_add(&format!("r{i}")).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let c = Auth::open_store(store, Options::default()).await.unwrap();
    assert_eq!(c.role_list().len(), 8, "{:?}", c.role_list());
}

#[tokio::test]
async fn the_auth_key_is_roots_alone_whatever_a_role_grants() {
    let (_dir, store) = embedded().await;
    let a = Auth::open_store(store, Options::default()).await.unwrap();
    with_root(&a).await;
    let bob = user_with(&a, "bob", "wide", perm(PermKind::ReadWrite, "/", "\0")).await;
    let root = a
        .identify(Some(&a.authenticate("root", "rootpw").await.unwrap()))
        .unwrap();
    assert!(a.check(&bob, b"/weft/lock/x", b"", Need::Write).is_ok());
    for (k, e) in [(AUTH_KEY, ""), ("/weft/", "/weft0"), ("/", "\0")] {
        assert!(
            matches!(
                a.check(&bob, k.as_bytes(), e.as_bytes(), Need::Read),
                Err(AuthError::PermissionDenied)
            ),
            "{k} {e}"
        );
    }
    assert!(a
        .check(&root, AUTH_KEY.as_bytes(), b"", Need::Write)
        .is_ok());
}

#[tokio::test]
async fn a_damaged_value_is_ignored_while_running_and_refused_at_open() {
    let (_dir, store) = embedded().await;
    let a = Auth::open_store(store.clone(), Options::default())
        .await
        .unwrap();
    a.role_add("kept").await.unwrap();
    store
        .put(weft_store::PutRequest::new(AUTH_KEY, b"{not json".to_vec()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(a.role_list(), ["kept"], "the last good state stays");
    let e = Auth::open_store(store, Options::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains(AUTH_KEY), "{e}");
}
