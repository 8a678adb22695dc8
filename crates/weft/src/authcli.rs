//! `weft auth`, `weft user`, `weft role`: users, roles and key permissions, shared by the
//! node's HTTP API and its etcd API (as etcdctl's `auth`, `user` and `role`).

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::Conn;

#[derive(Subcommand)]
pub(crate) enum AuthCmd {
    /// Whether auth is enabled, and the auth revision.
    Status,
    /// Enable auth: needs a user `root` with the role `root` (`weft user add root`, `weft
    /// user grant root root`). From then on, calls need a user (--user) or the node's token.
    Enable,
    /// Disable auth.
    Disable,
    /// Log in as --user and print the token (for WEFT_TOKEN, curl or etcdctl's peers).
    Login,
}

#[derive(Subcommand)]
pub(crate) enum UserCmd {
    /// Add a user; its password from --password, WEFT_NEW_PASSWORD, or the first line of stdin.
    Add {
        name: String,
        #[arg(long, env = "WEFT_NEW_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// A user that cannot log in with a password.
        #[arg(long, conflicts_with = "password")]
        no_password: bool,
    },
    /// Delete a user (its tokens end).
    Delete { name: String },
    /// Set a user's password (its tokens end).
    Passwd {
        name: String,
        #[arg(long, env = "WEFT_NEW_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Grant a role to a user.
    Grant { name: String, role: String },
    /// Revoke a role from a user.
    Revoke { name: String, role: String },
    /// Every user with its roles.
    List,
}

#[derive(Subcommand)]
pub(crate) enum RoleCmd {
    /// Add a role.
    Add { name: String },
    /// Delete a role (taken from its users).
    Delete { name: String },
    /// Grant read, write or readwrite on a key, a range [KEY, RANGE_END), a prefix or every
    /// key from KEY on.
    Grant {
        name: String,
        /// read, write or readwrite.
        kind: String,
        key: String,
        range_end: Option<String>,
        #[command(flatten)]
        range: RangeFlags,
    },
    /// Revoke the permission on exactly that key or range.
    Revoke {
        name: String,
        key: String,
        range_end: Option<String>,
        #[command(flatten)]
        range: RangeFlags,
    },
    /// Every role with its permissions.
    List,
}

#[derive(clap::Args)]
pub(crate) struct RangeFlags {
    /// Every key starting with KEY.
    #[arg(long, conflicts_with = "from_key")]
    prefix: bool,
    /// Every key from KEY on.
    #[arg(long)]
    from_key: bool,
}

/// The permission body: `prefix` as the API takes it, `from_key` as the range end "\0".
fn permission(
    kind: Option<&str>,
    key: String,
    end: Option<String>,
    r: &RangeFlags,
) -> Result<Value> {
    if end.is_some() && (r.prefix || r.from_key) {
        bail!("give RANGE_END, --prefix or --from-key, not more than one");
    }
    let end = if r.from_key {
        Some("\0".to_owned())
    } else {
        end
    };
    let mut p = json!({"key": key, "prefix": r.prefix});
    if let Some(e) = end {
        p["range_end"] = json!(e);
    }
    if let Some(k) = kind {
        if !["read", "write", "readwrite"].contains(&k) {
            bail!("permission {k:?}: expected read, write or readwrite");
        }
        p["kind"] = json!(k);
    }
    Ok(p)
}

/// A password from the flag (or its environment variable), else the first line of stdin.
fn password(given: Option<String>) -> Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let p = line.trim_end_matches(['\r', '\n']).to_owned();
    if p.is_empty() {
        bail!("no password: pass --password, set WEFT_NEW_PASSWORD, or write it on stdin");
    }
    Ok(p)
}

fn print(conn: &Conn, v: &Value, text: impl FnOnce(&Value) -> String) {
    match conn.json {
        true => println!("{v}"),
        false => println!("{}", text(v)),
    }
}

pub(crate) async fn auth(cmd: AuthCmd, conn: Conn) -> Result<()> {
    let c = conn.client()?;
    let on_off = |v: &Value| {
        let on = v["enabled"].as_bool().unwrap_or(false);
        format!(
            "Authentication Status: {}\nAuthRevision: {}",
            if on { "true" } else { "false" },
            v["revision"]
        )
    };
    match cmd {
        AuthCmd::Status => print(&conn, &c.get("/v1/auth/status").await?, on_off),
        AuthCmd::Enable => {
            let v = c.post("/v1/auth/enable", &json!({})).await?;
            print(&conn, &v, |_| "Authentication Enabled".into());
        }
        AuthCmd::Disable => {
            let v = c.post("/v1/auth/disable", &json!({})).await?;
            print(&conn, &v, |_| "Authentication Disabled".into());
        }
        AuthCmd::Login => {
            let Some((name, pw)) = conn.user()? else {
                bail!("weft auth login needs --user NAME[:PASSWORD]");
            };
            let body = json!({"name": name, "password": pw});
            let v = c.post("/v1/auth/authenticate", &body).await?;
            print(&conn, &v, |v| v["token"].as_str().unwrap_or("").to_owned());
        }
    }
    Ok(())
}

pub(crate) async fn user(cmd: UserCmd, conn: Conn) -> Result<()> {
    let c = conn.client()?;
    let (body, done) = match cmd {
        UserCmd::Add {
            name,
            password: p,
            no_password,
        } => {
            let mut b = json!({"op": "add", "name": name});
            if !no_password {
                b["password"] = json!(password(p)?);
            }
            (b, format!("User {name} created"))
        }
        UserCmd::Delete { name } => (
            json!({"op": "delete", "name": name}),
            format!("User {name} deleted"),
        ),
        UserCmd::Passwd { name, password: p } => (
            json!({"op": "passwd", "name": name, "password": password(p)?}),
            "Password updated".into(),
        ),
        UserCmd::Grant { name, role } => (
            json!({"op": "grant", "name": name, "role": role}),
            format!("Role {role} is granted to user {name}"),
        ),
        UserCmd::Revoke { name, role } => (
            json!({"op": "revoke", "name": name, "role": role}),
            format!("Role {role} is revoked from user {name}"),
        ),
        UserCmd::List => {
            let v = c.get("/v1/auth/users").await?;
            print(&conn, &v, |v| {
                let users = v["users"].as_array().cloned().unwrap_or_default();
                let line =
                    |u: &Value| format!("{} {}", u["name"].as_str().unwrap_or(""), u["roles"]);
                users.iter().map(line).collect::<Vec<_>>().join("\n")
            });
            return Ok(());
        }
    };
    let v = c.post("/v1/auth/user", &body).await?;
    print(&conn, &v, |_| done);
    Ok(())
}

pub(crate) async fn role(cmd: RoleCmd, conn: Conn) -> Result<()> {
    let c = conn.client()?;
    let (body, done) = match cmd {
        RoleCmd::Add { name } => (
            json!({"op": "add", "name": name}),
            format!("Role {name} created"),
        ),
        RoleCmd::Delete { name } => (
            json!({"op": "delete", "name": name}),
            format!("Role {name} deleted"),
        ),
        RoleCmd::Grant {
            name,
            kind,
            key,
            range_end,
            range,
        } => {
            let p = permission(Some(&kind), key, range_end, &range)?;
            (
                json!({"op": "grant", "name": name, "permission": p}),
                format!("Role {name} updated"),
            )
        }
        RoleCmd::Revoke {
            name,
            key,
            range_end,
            range,
        } => {
            let p = permission(None, key, range_end, &range)?;
            (
                json!({"op": "revoke", "name": name, "permission": p}),
                format!("Permission of role {name} revoked"),
            )
        }
        RoleCmd::List => {
            let v = c.get("/v1/auth/roles").await?;
            print(&conn, &v, |v| {
                let roles = v["roles"].as_array().cloned().unwrap_or_default();
                let line = |r: &Value| {
                    format!("{} {}", r["name"].as_str().unwrap_or(""), r["permissions"])
                };
                roles.iter().map(line).collect::<Vec<_>>().join("\n")
            });
            return Ok(());
        }
    };
    let v = c.post("/v1/auth/role", &body).await?;
    print(&conn, &v, |_| done);
    Ok(())
}
