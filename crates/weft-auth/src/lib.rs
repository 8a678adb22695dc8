//! Users, roles and key-range permissions as etcd defines them, shared by weft's etcd API and
//! its HTTP API so both agree on who may do what.
//!
//! - **Users** have a password (stored as an Argon2id hash with a random salt, never in clear)
//!   and roles. A user with the `root` role may do everything, including managing auth.
//! - **Roles** hold [`Permission`]s: read, write or readwrite on a key, a range or everything
//!   from a key on.
//! - **Tokens** come from [`Auth::authenticate`] and live [`Options::token_ttl`] after their
//!   last use (etcd's simple tokens). They are kept by their SHA-256, so a lookup's timing
//!   says nothing about the token; a user's tokens end when it is deleted or its password
//!   changes.
//! - **Enabling** needs a `root` user holding the `root` role, as in etcd. While disabled,
//!   every caller may do everything ([`Identity::Admin`]).
//! - **Where they live**: in a store under one key ([`Auth::open_store`], what `weft up` uses:
//!   every node serving the same data sees the same users, see `stored.rs`), in a file
//!   ([`Auth::open`]), or in memory ([`Auth::in_memory`]). Each change is durable before it
//!   is acknowledged (a store write; or a temporary file, fsync, rename, fsync of the
//!   directory); damaged contents stop the start with where they are and what is wrong.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), weft_auth::AuthError> {
//! use weft_auth::{Auth, Need, Options, PermKind, Permission};
//!
//! let auth = Auth::in_memory(Options::default());
//! auth.user_add("root", Some("rootpw")).await?;
//! auth.user_grant_role("root", "root").await?;
//! auth.role_add("app").await?;
//! auth.role_grant_permission("app", Permission {
//!     kind: PermKind::ReadWrite, key: b"app/".to_vec(), range_end: b"app0".to_vec(),
//! }).await?;
//! auth.user_add("alice", Some("alicepw")).await?;
//! auth.user_grant_role("alice", "app").await?;
//! auth.enable().await?;
//!
//! let token = auth.authenticate("alice", "alicepw").await?;
//! let alice = auth.identify(Some(&token))?;
//! assert!(auth.check(&alice, b"app/config", b"", Need::Write).is_ok());
//! assert!(auth.check(&alice, b"other", b"", Need::Read).is_err());
//! # Ok(())
//! # }
//! ```

mod file;
mod perm;
mod requests;
mod stored;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::time::Instant;

pub use perm::{covers, valid_range, Need, PermKind, Permission};
pub use stored::AUTH_KEY;

/// The user and the role that may do everything.
pub const ROOT: &str = "root";

/// What went wrong; the messages are etcd's (without its `etcdserver: ` prefix).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Enabling auth needs a `root` user.
    #[error("root user does not exist")]
    RootUserNotExist,
    /// Enabling auth needs the `root` user to hold the `root` role.
    #[error("root user does not have root role")]
    RootRoleNotExist,
    /// A user of that name exists.
    #[error("user name already exists")]
    UserAlreadyExist,
    /// No user name was given (or no credentials at all while auth is enabled).
    #[error("user name is empty")]
    UserEmpty,
    /// No such user.
    #[error("user name not found")]
    UserNotFound,
    /// A role of that name exists.
    #[error("role name already exists")]
    RoleAlreadyExist,
    /// No such role.
    #[error("role name not found")]
    RoleNotFound,
    /// No role name was given.
    #[error("role name is empty")]
    RoleEmpty,
    /// Wrong user name or password (which one is not said).
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    /// A grant without a permission.
    #[error("permission not given")]
    PermissionNotGiven,
    /// The caller may not do this.
    #[error("permission denied")]
    PermissionDenied,
    /// Revoking a role the user does not hold.
    #[error("role is not granted to the user")]
    RoleNotGranted,
    /// Revoking a permission the role does not hold.
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    /// Authenticating while auth is disabled.
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    /// The token is unknown or expired, or its user is gone.
    #[error("invalid auth token")]
    InvalidAuthToken,
    /// A change that would lock everyone out (deleting root while enabled), or an invalid
    /// permission range.
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    /// The auth file cannot be read or written.
    #[error("auth file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The store holding the users and roles failed or refused the change.
    #[error("the store of users and roles: {0}")]
    Store(String),
    /// The auth file (or the store's auth key) is damaged.
    #[error("auth file {path} is damaged: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl AuthError {
    /// Whether trying again may succeed (only a failed write: the change was not made).
    pub fn is_retryable(&self) -> bool {
        matches!(self, AuthError::Io { .. } | AuthError::Store(_))
    }
}

/// Results of this crate.
pub type Result<T, E = AuthError> = std::result::Result<T, E>;

/// Settings.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// How long a token lives after its last use (etcd's `--auth-token-ttl`, 300 s).
    pub token_ttl: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token_ttl: Duration::from_secs(300),
        }
    }
}

/// Who a call comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// May do everything: auth is disabled, or the caller holds the node's admin token.
    Admin,
    /// A user, checked against its roles at each call.
    User(Arc<str>),
}

impl Identity {
    /// The user's name (`root` for [`Identity::Admin`]).
    pub fn name(&self) -> &str {
        match self {
            Identity::Admin => ROOT,
            Identity::User(u) => u,
        }
    }
}

/// A user as stored.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct User {
    /// The Argon2id hash in PHC format; none: the user cannot log in with a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    roles: BTreeSet<String>,
}

/// A role as stored.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Role {
    permissions: Vec<Permission>,
}

/// Everything the file holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    enabled: bool,
    /// Bumped by every change (etcd's auth revision).
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

/// A token's session.
struct Session {
    user: Arc<str>,
    expires: Instant,
}

/// Users, roles, permissions and tokens; see the crate docs.
pub struct Auth {
    state: RwLock<State>,
    enabled: AtomicBool,
    /// Sessions by the SHA-256 of their token.
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// Serialises changes, so each is written whole after the one before.
    writes: tokio::sync::Mutex<()>,
    backing: Backing,
    /// With a store: the auth key's mod revision of the installed state.
    store_rev: AtomicI64,
    opts: Options,
}

/// Where the state is kept.
enum Backing {
    Memory,
    File(PathBuf),
    Store(Arc<dyn weft_store::Store>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled())
            .field(
                "backing",
                &match &self.backing {
                    Backing::Memory => "memory".to_owned(),
                    Backing::File(p) => p.display().to_string(),
                    Backing::Store(_) => format!("store key {AUTH_KEY}"),
                },
            )
            .finish_non_exhaustive()
    }
}

/// A hash to verify against when the user does not exist, so that a wrong name costs the same
/// time as a wrong password.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password("weft-dummy").unwrap_or_default())
}

fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| AuthError::Io {
        path: PathBuf::from("<random>"),
        source: std::io::Error::other(e.to_string()),
    })?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| AuthError::InvalidAuthMgmt)?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| AuthError::InvalidAuthMgmt)
}

fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

fn token_key(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

fn new_token() -> Result<String> {
    use base64::Engine;
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(|e| AuthError::Io {
        path: PathBuf::from("<random>"),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(format!(
        "weft.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    ))
}

/// Password hashing costs tens of milliseconds of CPU: off the caller's runtime thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::spawn_blocking(f)
            .await
            .expect("password hashing panicked"),
        Err(_) => f(),
    }
}

impl Auth {
    /// Auth kept in memory only (tests, embedding without a data dir).
    pub fn in_memory(opts: Options) -> Auth {
        Auth::with_state(State::default(), Backing::Memory, opts)
    }

    /// Auth kept in the file at `path`, created on the first change if missing.
    pub fn open(path: &Path, opts: Options) -> Result<Auth> {
        let state = file::load(path)?;
        Ok(Auth::with_state(
            state,
            Backing::File(path.to_path_buf()),
            opts,
        ))
    }

    /// Auth kept in `store` under [`AUTH_KEY`], followed with a watch so that a change made
    /// through any node sharing the store applies here too (a task, on the current runtime,
    /// that ends when the returned `Auth` is dropped).
    pub async fn open_store(store: Arc<dyn weft_store::Store>, opts: Options) -> Result<Arc<Auth>> {
        let (state, mod_rev, rev) = stored::load(&store).await?;
        let auth = Arc::new(Auth::with_state(state, Backing::Store(store.clone()), opts));
        auth.store_rev.store(mod_rev, Ordering::Release);
        tokio::spawn(stored::follow(Arc::downgrade(&auth), store, rev + 1));
        Ok(auth)
    }

    fn with_state(state: State, backing: Backing, opts: Options) -> Auth {
        Auth {
            enabled: AtomicBool::new(state.enabled),
            state: RwLock::new(state),
            sessions: Mutex::new(HashMap::new()),
            writes: tokio::sync::Mutex::new(()),
            backing,
            store_rev: AtomicI64::new(0),
            opts,
        }
    }

    /// Makes `next` the state (read from the store at `mod_rev`, or written by this node):
    /// ignored if older than the installed one; tokens of users that are gone or have a new
    /// password end, and every token ends when auth is disabled.
    fn install(&self, next: State, mod_rev: i64) {
        if matches!(self.backing, Backing::Store(_)) {
            if mod_rev <= self.store_rev.load(Ordering::Acquire) && mod_rev != 0 {
                return;
            }
            self.store_rev.store(mod_rev, Ordering::Release);
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let ended: Vec<String> = st
            .users
            .iter()
            .filter(|(name, u)| {
                next.users
                    .get(*name)
                    .is_none_or(|n| n.password != u.password)
            })
            .map(|(name, _)| name.clone())
            .collect();
        self.enabled.store(next.enabled, Ordering::Release);
        let enabled = next.enabled;
        *st = next;
        drop(st);
        let mut sessions = self.sessions();
        if !enabled {
            sessions.clear();
        } else if !ended.is_empty() {
            sessions.retain(|_, s| !ended.iter().any(|u| **u == *s.user));
        }
    }

    /// Whether auth is enabled (one atomic load: cheap enough for every call).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The auth revision: bumped by every change.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` to a copy of the state, writes the result, then makes it current: a change
    /// that fails, or cannot be written, leaves everything as it was. Returns the new revision.
    /// In a store, `f` applies to what the store holds, and runs again if another node
    /// changed it first.
    async fn change(&self, f: impl Fn(&mut State) -> Result<()>) -> Result<u64> {
        let _w = self.writes.lock().await;
        if let Backing::Store(store) = &self.backing {
            return self.change_stored(store, f).await;
        }
        let mut next = self.read().clone();
        f(&mut next)?;
        next.revision += 1;
        if let Backing::File(path) = &self.backing {
            let (path, copy) = (path.clone(), next.clone());
            blocking(move || file::store(&path, &copy)).await?;
        }
        let rev = next.revision;
        self.install(next, 0);
        Ok(rev)
    }

    async fn change_stored(
        &self,
        store: &Arc<dyn weft_store::Store>,
        f: impl Fn(&mut State) -> Result<()>,
    ) -> Result<u64> {
        // First from the state this node holds (kept current by the watch); from a fresh
        // read of the store when that was behind (the write's compare failed, or the
        // change was refused on what may be an old state).
        let mut fresh = false;
        for _ in 0..16 {
            let (mut next, mod_rev) = match fresh {
                false => (self.read().clone(), self.store_rev.load(Ordering::Acquire)),
                true => {
                    let (st, mod_rev, _) = stored::load(store).await?;
                    (st, mod_rev)
                }
            };
            if let Err(e) = f(&mut next) {
                if fresh {
                    return Err(e);
                }
                fresh = true;
                continue;
            }
            fresh = true;
            next.revision += 1;
            if let Some(new_rev) = stored::store_if(store, &next, mod_rev).await? {
                let rev = next.revision;
                self.install(next, new_rev);
                return Ok(rev);
            }
        }
        Err(AuthError::Store(
            "other nodes kept changing the users and roles; try again".into(),
        ))
    }

    /// Enables auth: needs a `root` user with the `root` role.
    pub async fn enable(&self) -> Result<u64> {
        self.change(|s| {
            let root = s.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
            if !root.roles.contains(ROOT) {
                return Err(AuthError::RootRoleNotExist);
            }
            s.enabled = true;
            Ok(())
        })
        .await
    }

    /// Disables auth; tokens given out so far end.
    pub async fn disable(&self) -> Result<u64> {
        self.change(|s| {
            s.enabled = false;
            Ok(())
        })
        .await
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A token for `name` if `password` is its password.
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<String> {
        if !self.enabled() {
            return Err(AuthError::AuthNotEnabled);
        }
        let hash = self.read().users.get(name).and_then(|u| u.password.clone());
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| dummy_hash().to_owned());
        let password = password.to_owned();
        let ok = blocking(move || verify_password(&hash, &password)).await;
        if !(ok && known) {
            return Err(AuthError::AuthFailed);
        }
        let token = new_token()?;
        let now = Instant::now();
        let mut sessions = self.sessions();
        // Expired sessions go when the table has doubled since the last sweep.
        if sessions.len() >= 1024 && sessions.len().is_power_of_two() {
            sessions.retain(|_, s| s.expires > now);
        }
        sessions.insert(
            token_key(&token),
            Session {
                user: Arc::from(name),
                expires: now + self.opts.token_ttl,
            },
        );
        Ok(token)
    }

    /// Who holds `token`: [`Identity::Admin`] while auth is disabled; with auth enabled, the
    /// token's user (its life starts again), [`AuthError::UserEmpty`] without a token,
    /// [`AuthError::InvalidAuthToken`] for an unknown or expired one.
    pub fn identify(&self, token: Option<&str>) -> Result<Identity> {
        if !self.enabled() {
            return Ok(Identity::Admin);
        }
        let token = token.ok_or(AuthError::UserEmpty)?;
        let now = Instant::now();
        let mut sessions = self.sessions();
        let key = token_key(token);
        let s = sessions.get_mut(&key).ok_or(AuthError::InvalidAuthToken)?;
        if s.expires <= now {
            sessions.remove(&key);
            return Err(AuthError::InvalidAuthToken);
        }
        s.expires = now + self.opts.token_ttl;
        Ok(Identity::User(s.user.clone()))
    }

    /// Who a connection authenticated by a client certificate is, when its call carries no
    /// token: the user named by the certificate's common name (etcd's rule), which must exist
    /// ([`AuthError::PermissionDenied`] otherwise); [`Identity::Admin`] while auth is disabled.
    pub fn identify_cert(&self, common_name: &str) -> Result<Identity> {
        if !self.enabled() {
            return Ok(Identity::Admin);
        }
        match self.read().users.contains_key(common_name) {
            true => Ok(Identity::User(Arc::from(common_name))),
            false => Err(AuthError::PermissionDenied),
        }
    }

    /// Whether `who` may do everything (admin, or a user with the `root` role).
    pub fn is_admin(&self, who: &Identity) -> bool {
        match who {
            Identity::Admin => true,
            Identity::User(u) => !self.enabled() || self.has_role(u, ROOT),
        }
    }

    fn has_role(&self, user: &str, role: &str) -> bool {
        self.read()
            .users
            .get(user)
            .is_some_and(|u| u.roles.contains(role))
    }

    /// `Ok` if `who` may do everything, else [`AuthError::PermissionDenied`].
    pub fn require_admin(&self, who: &Identity) -> Result<()> {
        match self.is_admin(who) {
            true => Ok(()),
            false => Err(AuthError::PermissionDenied),
        }
    }

    /// `Ok` if `who` may `need` every key of `[key, range_end)` (etcd's range conventions),
    /// else [`AuthError::PermissionDenied`].
    pub fn check(&self, who: &Identity, key: &[u8], range_end: &[u8], need: Need) -> Result<()> {
        let Identity::User(name) = who else {
            return Ok(());
        };
        if !self.enabled() {
            return Ok(());
        }
        let s = self.read();
        let Some(user) = s.users.get(&**name) else {
            return Err(AuthError::InvalidAuthToken);
        };
        if user.roles.contains(ROOT) {
            return Ok(());
        }
        // The users and roles themselves (password hashes): root's alone.
        if stored::holds_auth_key(key, range_end) {
            return Err(AuthError::PermissionDenied);
        }
        let perms = user
            .roles
            .iter()
            .filter_map(|r| s.roles.get(r))
            .flat_map(|r| r.permissions.iter());
        match covers(perms, key, range_end, need) {
            true => Ok(()),
            false => Err(AuthError::PermissionDenied),
        }
    }

    /// Adds a user; `password` none: it cannot log in with a password.
    pub async fn user_add(&self, name: &str, password: Option<&str>) -> Result<u64> {
        if name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let hash = match password {
            Some(p) => {
                let p = p.to_owned();
                Some(blocking(move || hash_password(&p)).await?)
            }
            None => None,
        };
        self.change(|s| {
            if s.users.contains_key(name) {
                return Err(AuthError::UserAlreadyExist);
            }
            let user = User {
                password: hash.clone(),
                roles: BTreeSet::new(),
            };
            s.users.insert(name.to_owned(), user);
            Ok(())
        })
        .await
    }

    /// Deletes a user (not `root` while auth is enabled); its tokens end.
    pub async fn user_delete(&self, name: &str) -> Result<u64> {
        self.change(|s| {
            if s.enabled && name == ROOT {
                return Err(AuthError::InvalidAuthMgmt);
            }
            s.users.remove(name).ok_or(AuthError::UserNotFound)?;
            Ok(())
        })
        .await
    }

    /// Sets a user's password; its tokens end.
    pub async fn user_change_password(&self, name: &str, password: &str) -> Result<u64> {
        if !self.read().users.contains_key(name) {
            return Err(AuthError::UserNotFound);
        }
        let p = password.to_owned();
        let hash = blocking(move || hash_password(&p)).await?;
        self.change(|s| {
            let u = s.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
            u.password = Some(hash.clone());
            Ok(())
        })
        .await
    }

    /// A user's roles.
    pub fn user_get(&self, name: &str) -> Result<Vec<String>> {
        let s = self.read();
        let u = s.users.get(name).ok_or(AuthError::UserNotFound)?;
        Ok(u.roles.iter().cloned().collect())
    }

    /// Every user's name, in order.
    pub fn user_list(&self) -> Vec<String> {
        self.read().users.keys().cloned().collect()
    }

    /// Grants `role` to `name` (`root` need not exist as a role, as in etcd).
    pub async fn user_grant_role(&self, name: &str, role: &str) -> Result<u64> {
        self.change(|s| {
            if role != ROOT && !s.roles.contains_key(role) {
                return Err(AuthError::RoleNotFound);
            }
            let u = s.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
            u.roles.insert(role.to_owned());
            Ok(())
        })
        .await
    }

    /// Revokes `role` from `name` (not `root` from `root` while auth is enabled).
    pub async fn user_revoke_role(&self, name: &str, role: &str) -> Result<u64> {
        self.change(|s| {
            if s.enabled && name == ROOT && role == ROOT {
                return Err(AuthError::InvalidAuthMgmt);
            }
            let u = s.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
            if !u.roles.remove(role) {
                return Err(AuthError::RoleNotGranted);
            }
            Ok(())
        })
        .await
    }

    /// Adds a role.
    pub async fn role_add(&self, name: &str) -> Result<u64> {
        if name.is_empty() {
            return Err(AuthError::RoleEmpty);
        }
        self.change(|s| {
            if s.roles.contains_key(name) {
                return Err(AuthError::RoleAlreadyExist);
            }
            s.roles.insert(name.to_owned(), Role::default());
            Ok(())
        })
        .await
    }

    /// Deletes a role (not `root` while auth is enabled) and takes it from every user.
    pub async fn role_delete(&self, name: &str) -> Result<u64> {
        self.change(|s| {
            if s.enabled && name == ROOT {
                return Err(AuthError::InvalidAuthMgmt);
            }
            s.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
            for u in s.users.values_mut() {
                u.roles.remove(name);
            }
            Ok(())
        })
        .await
    }

    /// A role's permissions, sorted by key.
    pub fn role_get(&self, name: &str) -> Result<Vec<Permission>> {
        let s = self.read();
        let r = s.roles.get(name).ok_or(AuthError::RoleNotFound)?;
        Ok(r.permissions.clone())
    }

    /// Every role's name, in order.
    pub fn role_list(&self) -> Vec<String> {
        self.read().roles.keys().cloned().collect()
    }

    /// Grants `perm` to `role`, replacing one on the same range.
    pub async fn role_grant_permission(&self, role: &str, perm: Permission) -> Result<u64> {
        if !valid_range(&perm.key, &perm.range_end) {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.change(|s| {
            let r = s.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
            let same = |p: &Permission| p.key == perm.key && p.range_end == perm.range_end;
            match r.permissions.iter_mut().find(|p| same(p)) {
                Some(p) => *p = perm.clone(),
                None => r.permissions.push(perm.clone()),
            }
            r.permissions.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(())
        })
        .await
    }

    /// Revokes the permission on exactly `[key, range_end)` from `role`.
    pub async fn role_revoke_permission(
        &self,
        role: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<u64> {
        self.change(|s| {
            let r = s.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
            let before = r.permissions.len();
            r.permissions
                .retain(|p| !(p.key == key && p.range_end == range_end));
            if r.permissions.len() == before {
                return Err(AuthError::PermissionNotGranted);
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests;
