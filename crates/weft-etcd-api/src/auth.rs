//! etcd's Auth service over [`weft_auth::Auth`], and the checks every other call makes: a call
//! carries its token in the `token` metadata (what etcdctl `--user` and etcd-client's
//! `with_user` send), and while auth is enabled each key it reads or writes must be granted to
//! the token's user, with etcd's errors:
//!
//! - Range, watch, a compare, a previous value: read; Put, DeleteRange: write; a txn checks
//!   every compare and every operation of both branches, nested txns included.
//! - LeaseRevoke: write on every key attached to the lease; LeaseTimeToLive with keys: read
//!   on them. Grant, keep-alive, Leases, Compact, Status, MemberList: any user.
//! - Defragment, Snapshot, Hash, HashKV and every Auth call but Authenticate, AuthStatus,
//!   UserGet (of oneself) and RoleGet (of one's roles): the `root` role.
//! - Lock and Election: read and write on the name's prefix (what etcd's recipes do through
//!   the KV API); Unlock, Proclaim, Resign: write on the key.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weft_auth::{AuthError, Identity, Need, PermKind, Permission};

use crate::EtcdApi;

/// The generated Auth service and its messages (`proto/auth.proto`).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::auth_server::{Auth as AuthService, AuthServer};

/// etcd's status for an auth error: its code and message.
pub fn auth_status(e: AuthError) -> Status {
    use tonic::Code;
    let code = match &e {
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::AuthNotEnabled => Code::FailedPrecondition,
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::AuthFailed
        | AuthError::PermissionNotGiven
        | AuthError::InvalidAuthMgmt => Code::InvalidArgument,
        AuthError::PermissionDenied => Code::PermissionDenied,
        AuthError::InvalidAuthToken => Code::Unauthenticated,
        _ => return Status::unavailable(format!("etcdserver: {e}")),
    };
    Status::new(code, format!("etcdserver: {e}"))
}

/// The token a request carries in its `token` metadata.
pub(crate) fn token_of<T>(req: &Request<T>) -> Option<&str> {
    req.metadata().get("token").and_then(|v| v.to_str().ok())
}

/// The common name of the verified client certificate of a request's connection (put in
/// the request's extensions by the connection's service, `limit::RateLimited`).
#[derive(Clone, Debug)]
pub(crate) struct CertUser(pub Arc<str>);

/// Who sent `req`: anyone while auth is disabled; else its token's user, or without a token
/// the user its client certificate names (etcd's rule with `--client-cert-auth`).
pub(crate) fn identify<T>(auth: &weft_auth::Auth, req: &Request<T>) -> Result<Identity, Status> {
    let token = token_of(req);
    if let (None, Some(CertUser(cn))) = (token, req.extensions().get::<CertUser>()) {
        return auth.identify_cert(cn).map_err(auth_status);
    }
    auth.identify(token).map_err(auth_status)
}

impl EtcdApi {
    /// Who sent `req` (see [`identify`]).
    pub(crate) fn caller<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        identify(&self.auth, req)
    }

    /// `Ok` if `who` may `need` every key of `[key, end)`.
    pub(crate) fn check(
        &self,
        who: &Identity,
        key: &[u8],
        end: &[u8],
        need: Need,
    ) -> Result<(), Status> {
        self.auth.check(who, key, end, need).map_err(auth_status)
    }

    /// `Ok` if `who` holds the `root` role (or auth is disabled).
    pub(crate) fn require_admin(&self, who: &Identity) -> Result<(), Status> {
        self.auth.require_admin(who).map_err(auth_status)
    }

    /// The Auth service for tonic's routes.
    pub(crate) fn auth_server(&self) -> AuthServer<EtcdApi> {
        AuthServer::new(self.clone())
    }

    async fn auth_header(&self) -> Option<pb::ResponseHeader> {
        let rev = self.current_revision().await;
        Some(pb::ResponseHeader {
            cluster_id: self.cfg.member_id,
            member_id: self.cfg.member_id,
            revision: rev,
            raft_term: 1,
        })
    }

    /// The caller of `req`, who must hold the `root` role.
    fn admin<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        let who = self.caller(req)?;
        self.require_admin(&who)?;
        Ok(who)
    }
}

/// The password of a user-add or change-password request: etcd 3.5 clients may send a
/// bcrypt hash instead, which weft cannot turn into its own hash.
fn password(clear: String, hashed: &str) -> Result<String, Status> {
    if clear.is_empty() && !hashed.is_empty() {
        return Err(Status::invalid_argument(
            "etcdserver: weft does not take pre-hashed passwords (hashedPassword): send the password, over TLS",
        ));
    }
    Ok(clear)
}

fn perm_pb(p: Permission) -> pb::Permission {
    pb::Permission {
        perm_type: p.kind.as_i32(),
        key: p.key,
        range_end: p.range_end,
    }
}

type R<T> = Result<Response<T>, Status>;

macro_rules! ok_header {
    ($self:ident, $t:ident) => {
        Ok(Response::new(pb::$t {
            header: $self.auth_header().await,
        }))
    };
}

#[tonic::async_trait]
impl AuthService for EtcdApi {
    async fn auth_enable(&self, req: Request<pb::AuthEnableRequest>) -> R<pb::AuthEnableResponse> {
        self.admin(&req)?;
        self.auth.enable().await.map_err(auth_status)?;
        ok_header!(self, AuthEnableResponse)
    }

    async fn auth_disable(
        &self,
        req: Request<pb::AuthDisableRequest>,
    ) -> R<pb::AuthDisableResponse> {
        self.admin(&req)?;
        self.auth.disable().await.map_err(auth_status)?;
        ok_header!(self, AuthDisableResponse)
    }

    async fn auth_status(&self, _req: Request<pb::AuthStatusRequest>) -> R<pb::AuthStatusResponse> {
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.auth_header().await,
            enabled: self.auth.enabled(),
            auth_revision: self.auth.revision(),
        }))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> R<pb::AuthenticateResponse> {
        let r = req.into_inner();
        let token = self
            .auth
            .authenticate(&r.name, &r.password)
            .await
            .map_err(auth_status)?;
        Ok(Response::new(pb::AuthenticateResponse {
            header: self.auth_header().await,
            token,
        }))
    }

    async fn user_add(&self, req: Request<pb::AuthUserAddRequest>) -> R<pb::AuthUserAddResponse> {
        self.admin(&req)?;
        let r = req.into_inner();
        let no_password = r.options.is_some_and(|o| o.no_password);
        let pw = password(r.password, &r.hashed_password)?;
        let pw = (!no_password).then_some(pw.as_str());
        self.auth.user_add(&r.name, pw).await.map_err(auth_status)?;
        ok_header!(self, AuthUserAddResponse)
    }

    async fn user_get(&self, req: Request<pb::AuthUserGetRequest>) -> R<pb::AuthUserGetResponse> {
        let who = self.caller(&req)?;
        let name = req.into_inner().name;
        if who.name() != name {
            self.require_admin(&who)?;
        }
        let roles = self.auth.user_get(&name).map_err(auth_status)?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.auth_header().await,
            roles,
        }))
    }

    async fn user_list(
        &self,
        req: Request<pb::AuthUserListRequest>,
    ) -> R<pb::AuthUserListResponse> {
        self.admin(&req)?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.auth_header().await,
            users: self.auth.user_list(),
        }))
    }

    async fn user_delete(
        &self,
        req: Request<pb::AuthUserDeleteRequest>,
    ) -> R<pb::AuthUserDeleteResponse> {
        self.admin(&req)?;
        let name = req.into_inner().name;
        self.auth.user_delete(&name).await.map_err(auth_status)?;
        ok_header!(self, AuthUserDeleteResponse)
    }

    async fn user_change_password(
        &self,
        req: Request<pb::AuthUserChangePasswordRequest>,
    ) -> R<pb::AuthUserChangePasswordResponse> {
        self.admin(&req)?;
        let r = req.into_inner();
        let pw = password(r.password, &r.hashed_password)?;
        self.auth
            .user_change_password(&r.name, &pw)
            .await
            .map_err(auth_status)?;
        ok_header!(self, AuthUserChangePasswordResponse)
    }

    async fn user_grant_role(
        &self,
        req: Request<pb::AuthUserGrantRoleRequest>,
    ) -> R<pb::AuthUserGrantRoleResponse> {
        self.admin(&req)?;
        let r = req.into_inner();
        self.auth
            .user_grant_role(&r.user, &r.role)
            .await
            .map_err(auth_status)?;
        ok_header!(self, AuthUserGrantRoleResponse)
    }

    async fn user_revoke_role(
        &self,
        req: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> R<pb::AuthUserRevokeRoleResponse> {
        self.admin(&req)?;
        let r = req.into_inner();
        self.auth
            .user_revoke_role(&r.name, &r.role)
            .await
            .map_err(auth_status)?;
        ok_header!(self, AuthUserRevokeRoleResponse)
    }

    async fn role_add(&self, req: Request<pb::AuthRoleAddRequest>) -> R<pb::AuthRoleAddResponse> {
        self.admin(&req)?;
        let name = req.into_inner().name;
        self.auth.role_add(&name).await.map_err(auth_status)?;
        ok_header!(self, AuthRoleAddResponse)
    }

    async fn role_get(&self, req: Request<pb::AuthRoleGetRequest>) -> R<pb::AuthRoleGetResponse> {
        let who = self.caller(&req)?;
        let role = req.into_inner().role;
        let own = self
            .auth
            .user_get(who.name())
            .is_ok_and(|roles| roles.contains(&role));
        if !own {
            self.require_admin(&who)?;
        }
        let perms = self.auth.role_get(&role).map_err(auth_status)?;
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.auth_header().await,
            perm: perms.into_iter().map(perm_pb).collect(),
        }))
    }

    async fn role_list(
        &self,
        req: Request<pb::AuthRoleListRequest>,
    ) -> R<pb::AuthRoleListResponse> {
        self.admin(&req)?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.auth_header().await,
            roles: self.auth.role_list(),
        }))
    }

    async fn role_delete(
        &self,
        req: Request<pb::AuthRoleDeleteRequest>,
    ) -> R<pb::AuthRoleDeleteResponse> {
        self.admin(&req)?;
        let role = req.into_inner().role;
        self.auth.role_delete(&role).await.map_err(auth_status)?;
        ok_header!(self, AuthRoleDeleteResponse)
    }

    async fn role_grant_permission(
        &self,
        req: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> R<pb::AuthRoleGrantPermissionResponse> {
        self.admin(&req)?;
        let r = req.into_inner();
        let p = r
            .perm
            .ok_or_else(|| auth_status(AuthError::PermissionNotGiven))?;
        let kind = PermKind::from_i32(p.perm_type).ok_or_else(|| {
            Status::invalid_argument(format!(
                "etcdserver: unknown permission type {} (0 read, 1 write, 2 readwrite)",
                p.perm_type
            ))
        })?;
        let perm = Permission {
            kind,
            key: p.key,
            range_end: p.range_end,
        };
        self.auth
            .role_grant_permission(&r.name, perm)
            .await
            .map_err(auth_status)?;
        ok_header!(self, AuthRoleGrantPermissionResponse)
    }

    async fn role_revoke_permission(
        &self,
        req: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> R<pb::AuthRoleRevokePermissionResponse> {
        self.admin(&req)?;
        let r = req.into_inner();
        self.auth
            .role_revoke_permission(&r.role, &r.key, &r.range_end)
            .await
            .map_err(auth_status)?;
        ok_header!(self, AuthRoleRevokePermissionResponse)
    }
}

/// An in-memory auth for a server given none (auth can still be enabled, until it stops).
pub(crate) fn default_auth() -> Arc<weft_auth::Auth> {
    Arc::new(weft_auth::Auth::in_memory(weft_auth::Options::default()))
}
