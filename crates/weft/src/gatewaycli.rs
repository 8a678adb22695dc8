//! `weft gateway` (a stateless gateway process), the gateway inside `weft up`, and
//! `weft route add|list|rm`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use weft_gateway::config::{RouteConfig, ROUTE_PREFIX};
use weft_gateway::{Config, Gateway};

use crate::Conn;

#[derive(Args)]
pub(crate) struct GatewayArgs {
    /// TOML configuration (routes, upstreams, auth); reloaded on change and on SIGHUP.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Proxy listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin API address (status, stored routes, metrics).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token for the admin API (required on non-loopback admin addresses).
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// This gateway's id among the store's gateways (it registers as an instance of the
    /// service `weft-gateway` with its admin address; the dashboard lists it). Default:
    /// `gw-` and the listen address.
    #[arg(long)]
    pub name: Option<String>,
    /// Worker threads, each with its own single-threaded runtime and accept loop on a
    /// SO_REUSEPORT socket (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Pin worker k to the k-th CPU (as nginx's `worker_cpu_affinity auto`): keeps the
    /// scheduler from stacking workers on one core when they are as many as the cores.
    #[arg(long)]
    pub pin_cpus: bool,
    /// Most connections one client address may hold open (0, the default: no limit); more
    /// are closed at accept and counted in weft_connections_refused_total.
    #[arg(long, default_value_t = 0)]
    pub max_conns_per_client: usize,
    /// Use this etcd cluster (or a weft node's --etcd-listen) as the store: discovered
    /// upstreams, routes kept in the store, global rate limits.
    #[cfg(feature = "etcd")]
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// TLS to the etcd endpoints.
    #[cfg(feature = "etcd")]
    #[command(flatten)]
    pub etcd_tls: EtcdTlsArgs,
    /// Terminate TLS (1.2/1.3; HTTP/2 offered by ALPN) on the proxy listener and the admin API
    /// with this certificate chain (PEM), reloaded when it changes; with --key-file.
    #[arg(long, requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(long, requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Another certificate for some SNI names: `NAME[,NAME...]=CERT:KEY` (names exact or
    /// `*.domain`); repeatable. --cert-file serves every other name.
    #[arg(long, requires = "cert_file")]
    pub sni: Vec<String>,
    /// Require client certificates signed by --trusted-ca-file (mTLS).
    #[arg(long, requires = "trusted_ca_file")]
    pub client_cert_auth: bool,
    /// The CA that client certificates must chain to (PEM).
    #[arg(long, requires = "cert_file")]
    pub trusted_ca_file: Option<PathBuf>,
}

/// TLS to an etcd cluster (`https://` endpoints of --etcd-endpoints and --failover-etcd).
#[cfg(feature = "etcd")]
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct EtcdTlsArgs {
    /// Trust this CA (PEM) for the etcd cluster's certificates.
    #[arg(long, value_name = "FILE")]
    pub etcd_cacert: Option<PathBuf>,
    /// Present this client certificate (PEM) to etcd (its --client-cert-auth); with
    /// --etcd-key.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The private key of --etcd-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

#[cfg(feature = "etcd")]
impl EtcdTlsArgs {
    /// Connects to `endpoints` with these files; the error says which cluster.
    pub(crate) async fn connect(
        &self,
        endpoints: &[String],
        what: &str,
    ) -> Result<weft_store_etcd::EtcdStore> {
        let tls = weft_store_etcd::EtcdTls {
            ca: self.etcd_cacert.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
        };
        weft_store_etcd::EtcdStore::connect_tls(endpoints, &tls)
            .await
            .with_context(|| format!("cannot connect to {what} at {}", endpoints.join(",")))
    }
}

/// Parses `--sni NAME[,NAME...]=CERT:KEY`.
fn parse_sni(v: &str) -> Result<weft_tls::SniFiles> {
    let bad = || anyhow::anyhow!("--sni {v:?}: expected NAME[,NAME...]=CERT:KEY");
    let (names, files) = v.split_once('=').ok_or_else(bad)?;
    let (cert, key) = files.split_once(':').ok_or_else(bad)?;
    let names: Vec<String> = names.split(',').map(|n| n.trim().to_string()).collect();
    if names.iter().any(String::is_empty) || cert.is_empty() || key.is_empty() {
        return Err(bad());
    }
    Ok(weft_tls::SniFiles {
        names,
        cert: cert.into(),
        key: key.into(),
    })
}

/// The gateway's TLS side from its flags (checked now: a bad file stops the start).
fn gateway_tls(a: &GatewayArgs) -> Result<Option<Arc<weft_tls::Acceptor>>> {
    let sni = a
        .sni
        .iter()
        .map(|v| parse_sni(v))
        .collect::<Result<Vec<_>>>()?;
    let flags = TlsFlags {
        cert: a.cert_file.as_ref(),
        key: a.key_file.as_ref(),
        client_cert_auth: a.client_cert_auth,
        trusted_ca: a.trusted_ca_file.as_ref(),
    };
    server_tls(flags, sni, &[b"h2", b"http/1.1"])
}

/// A listener's TLS flags (`--cert-file`, `--key-file`, `--client-cert-auth`,
/// `--trusted-ca-file`), as `weft up` and `weft gateway` take them.
pub(crate) struct TlsFlags<'a> {
    pub cert: Option<&'a PathBuf>,
    pub key: Option<&'a PathBuf>,
    pub client_cert_auth: bool,
    pub trusted_ca: Option<&'a PathBuf>,
}

/// The acceptor those flags ask for, if any, loaded now (a bad file stops the start with the
/// file and the reason) and reloaded every 2 s when its files change.
pub(crate) fn server_tls(
    f: TlsFlags<'_>,
    sni: Vec<weft_tls::SniFiles>,
    alpn: &[&[u8]],
) -> Result<Option<Arc<weft_tls::Acceptor>>> {
    let (Some(cert), Some(key)) = (f.cert, f.key) else {
        return Ok(None);
    };
    if f.trusted_ca.is_some() && !f.client_cert_auth {
        bail!("--trusted-ca-file is used with --client-cert-auth (to require client certificates)");
    }
    let files = weft_tls::ServerFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: f.trusted_ca.cloned(),
    };
    let acceptor = weft_tls::Acceptor::load_sni(files, sni, alpn)?;
    acceptor.watch(Duration::from_secs(2));
    Ok(Some(acceptor))
}

/// Who may reach a gateway's listeners: the admin API's token, and TLS for both listeners.
pub(crate) struct Guard {
    /// Bearer token of the admin API.
    pub token: Option<String>,
    /// TLS on the proxy listener and the admin API.
    pub tls: Option<Arc<weft_tls::Acceptor>>,
}

/// A gateway whose configuration is loaded and whose listeners are bound: every start-up
/// error has happened by the time this exists.
pub(crate) struct StartedGateway {
    gw: Arc<Gateway>,
    id: String,
    announcer: Option<weft_gateway::registry::Announcer>,
    listeners: Vec<std::net::TcpListener>,
    tls: Option<Arc<weft_tls::Acceptor>>,
    stop_admin: tokio::sync::watch::Sender<bool>,
    admin_task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pin_cpus: bool,
    max_conns_per_client: usize,
}

impl StartedGateway {
    /// The node's view of this gateway: its registered id and its status, read directly.
    pub(crate) fn local(&self) -> weft_server::LocalGateway {
        let gw = self.gw.clone();
        weft_server::LocalGateway {
            id: self.id.clone(),
            status: Arc::new(move || gw.status()),
        }
    }

    /// Serves until `shutdown` completes.
    pub(crate) async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let opts = weft_gateway::ThreadOptions::default()
            .pin_cpus(self.pin_cpus)
            .tls(self.tls)
            .max_conns_per_client(self.max_conns_per_client);
        weft_gateway::serve_threads_with(self.listeners, self.gw, shutdown, opts).await?;
        if let Some(a) = self.announcer {
            a.stop().await;
        }
        let _ = self.stop_admin.send(true);
        if let Some(t) = self.admin_task {
            let _ = t.await;
        }
        Ok(())
    }
}

/// Writes one line to stdout and flushes it, ignoring a closed stdout.
fn announce_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// How a gateway registers on its store (see `weft_gateway::registry`).
pub(crate) struct Identity {
    /// Its id; `None`: `gw-` and the listen address.
    pub name: Option<String>,
    /// Inside a `weft up` node.
    pub embedded: bool,
}

/// Starts a gateway on `store`: config file (optional) + stored routes, file watch, SIGHUP,
/// admin API, and its registration on the store.
pub(crate) async fn start_gateway(
    config: Option<PathBuf>,
    listen: SocketAddr,
    threads: usize,
    admin: Option<SocketAddr>,
    guard: Guard,
    store: Option<Arc<dyn weft_store::Store>>,
    identity: Identity,
) -> Result<StartedGateway> {
    let Guard { token, tls } = guard;
    if let Some(a) = admin {
        if !a.ip().is_loopback() && (token.as_deref().is_none_or(str::is_empty) || tls.is_none()) {
            bail!("refusing to serve the gateway admin API on {a} without TLS and a token: pass --cert-file, --key-file and --token, or use loopback");
        }
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Routes cache their metric handles: the recorder must exist first.
    weft_server::install_metrics();
    let cfg = match &config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Config::from_toml(&text, &p.display().to_string())?
        }
        None => Config::default(),
    };
    let gw = Gateway::new(cfg, store.clone())?;
    gw.watch_store_routes().await?;
    if let Some(p) = &config {
        gw.watch_file(p.clone(), Duration::from_secs(1));
        let gw2 = gw.clone();
        let p = p.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match gw2.reload_file(&p) {
                    Ok(()) => tracing::info!("SIGHUP: configuration reloaded"),
                    Err(e) => tracing::error!("SIGHUP: configuration not reloaded: {e}"),
                }
            }
        });
    }
    let listeners = weft_gateway::bind_workers(listen, threads)
        .with_context(|| format!("cannot listen on {listen}"))?;
    // Announced on stdout for scripts; a closed stdout (a `weft up` whose reader went away
    // after its first line) is not an error.
    announce_line(&format!(
        "gateway listening on {scheme}://{}",
        listeners[0].local_addr()?
    ));
    let listen = listeners[0].local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut admin_url = None;
    let admin_task = match admin {
        Some(a) => {
            let l = weft_server::bind(a).with_context(|| format!("cannot listen on {a}"))?;
            let url = format!("{scheme}://{}", l.local_addr()?);
            announce_line(&format!("gateway admin API on {url}"));
            admin_url = Some(url);
            let mut rx = stop_rx.clone();
            let render: weft_gateway::MetricsRender = Arc::new(weft_server::render_metrics);
            Some(tokio::spawn(weft_gateway::serve_admin(
                l,
                gw.clone(),
                Some(render),
                token,
                tls.clone(),
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };
    let id = identity.name.unwrap_or_else(|| format!("gw-{listen}"));
    let announcer = match &store {
        Some(store) => {
            let a = weft_gateway::registry::Announcement {
                id: id.clone(),
                listen: listen.to_string(),
                admin: admin_url,
                embedded: identity.embedded,
            };
            Some(
                weft_gateway::registry::announce(store.clone(), a, 10)
                    .await
                    .with_context(|| format!("cannot register gateway {id:?} on the store"))?,
            )
        }
        None => None,
    };
    Ok(StartedGateway {
        gw,
        id,
        announcer,
        listeners,
        tls,
        stop_admin: stop_tx,
        admin_task,
        pin_cpus: false,
        max_conns_per_client: 0,
    })
}

pub(crate) async fn gateway(a: GatewayArgs) -> Result<()> {
    crate::init_tracing();
    #[cfg(feature = "etcd")]
    let store: Option<Arc<dyn weft_store::Store>> = if a.etcd_endpoints.is_empty() {
        None
    } else {
        let s = a.etcd_tls.connect(&a.etcd_endpoints, "etcd").await?;
        Some(Arc::new(s))
    };
    #[cfg(not(feature = "etcd"))]
    let store: Option<Arc<dyn weft_store::Store>> = None;
    if a.config.is_none() && store.is_none() {
        bail!(
            "give --config FILE (and/or a store with --etcd-endpoints) so the gateway has routes"
        );
    }
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let identity = Identity {
        name: a.name.clone(),
        embedded: false,
    };
    let guard = Guard {
        token: a.token.clone(),
        tls: gateway_tls(&a)?,
    };
    let mut started = start_gateway(
        a.config,
        a.listen,
        threads,
        a.admin_listen,
        guard,
        store,
        identity,
    )
    .await?;
    started.pin_cpus = a.pin_cpus;
    started.max_conns_per_client = a.max_conns_per_client;
    started.serve(crate::shutdown_signal()).await
}

// Parsed once per process; boxing the big variant would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum RouteCmd {
    /// Store a route (validated first); every gateway on the store picks it up.
    Add {
        /// Route name.
        name: String,
        /// Upstream name (or the discovered service of that name).
        #[arg(long)]
        upstream: String,
        /// Path prefix.
        #[arg(long, conflicts_with_all = ["path", "template"])]
        prefix: Option<String>,
        /// Exact path.
        #[arg(long, conflicts_with = "template")]
        path: Option<String>,
        /// Path template, e.g. /users/{id}.
        #[arg(long)]
        template: Option<String>,
        /// Rewrite of the matched prefix ("" strips it) or template.
        #[arg(long)]
        rewrite: Option<String>,
        /// Hosts (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Methods (repeatable).
        #[arg(long = "method")]
        methods: Vec<String>,
        /// Request deadline in milliseconds.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Or: the whole route as JSON (fields as in the TOML [[route]] table).
        #[arg(long, conflicts_with_all = ["prefix", "path", "template", "rewrite", "hosts", "methods", "timeout_ms"])]
        spec: Option<String>,
    },
    /// List stored routes.
    List,
    /// Delete a stored route.
    Rm {
        /// Route name.
        name: String,
    },
}

pub(crate) async fn route(cmd: RouteCmd, conn: Conn) -> Result<()> {
    let c = conn.client()?;
    match cmd {
        RouteCmd::Add {
            name,
            upstream,
            prefix,
            path,
            template,
            rewrite,
            hosts,
            methods,
            timeout_ms,
            spec: raw,
        } => {
            let r: RouteConfig = match raw {
                Some(j) => {
                    let mut v: Value = serde_json::from_str(&j).context("--spec is not JSON")?;
                    v["name"] = json!(name);
                    v["upstream"] = json!(upstream);
                    serde_json::from_value(v).context("--spec is not a route")?
                }
                None => RouteConfig {
                    name: name.clone(),
                    upstream,
                    path_prefix: prefix,
                    path,
                    path_template: template,
                    rewrite,
                    hosts,
                    methods,
                    timeout_ms,
                    ..Default::default()
                },
            };
            weft_gateway::config::validate_route(&r)
                .map_err(|(field, msg)| anyhow::anyhow!("route {:?}: {field}: {msg}", r.name))?;
            let value = serde_json::to_string(&r)?;
            c.post(
                "/v1/kv/put",
                &json!({"key": format!("{ROUTE_PREFIX}{}", r.name), "value": value}),
            )
            .await?;
            println!("route {} stored", r.name);
        }
        RouteCmd::List => {
            let resp: weft_server::api::RangeResp = c
                .call(
                    "/v1/kv/range",
                    &json!({"key": ROUTE_PREFIX, "prefix": true}),
                )
                .await?;
            // A stored value that is not a route (written by hand) is shown as it is.
            let routes: Vec<Result<RouteConfig, String>> = resp
                .kvs
                .iter()
                .map(|kv| serde_json::from_str(&kv.value).map_err(|_| kv.value.clone()))
                .collect();
            if conn.json {
                let all: Vec<Value> = routes
                    .iter()
                    .map(|r| match r {
                        Ok(r) => serde_json::to_value(r).unwrap_or_default(),
                        Err(raw) => serde_json::from_str(raw).unwrap_or(Value::Null),
                    })
                    .collect();
                println!("{}", Value::Array(all));
            } else {
                for r in routes {
                    match r {
                        Ok(r) => {
                            let m = r
                                .path_prefix
                                .as_ref()
                                .map(|p| format!("prefix {p}"))
                                .or_else(|| r.path.as_ref().map(|p| format!("path {p}")))
                                .or_else(|| {
                                    r.path_template.as_ref().map(|p| format!("template {p}"))
                                })
                                .unwrap_or_else(|| "any path".into());
                            println!("{}\t{}\t-> {}", r.name, m, r.upstream);
                        }
                        Err(raw) => println!("?\t(not a route: {raw})"),
                    }
                }
            }
        }
        RouteCmd::Rm { name } => {
            let r: weft_server::api::DeleteResp = c
                .call(
                    "/v1/kv/delete",
                    &json!({"key": format!("{ROUTE_PREFIX}{name}")}),
                )
                .await?;
            if r.deleted == 0 {
                bail!("no stored route {name:?}");
            }
            println!("route {name} deleted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_sni;

    #[test]
    fn sni_flags_name_their_certificate_or_say_the_form() {
        let s = parse_sni("api.example.com,*.api.example.com=api.pem:api-key.pem").unwrap();
        assert_eq!(s.names, ["api.example.com", "*.api.example.com"]);
        assert_eq!(
            (s.cert.to_str(), s.key.to_str()),
            (Some("api.pem"), Some("api-key.pem"))
        );
        for bad in ["api.pem:key.pem", "a=api.pem", "=c:k", "a,=c:k", "a=:k"] {
            let e = parse_sni(bad).unwrap_err().to_string();
            assert!(e.contains("NAME[,NAME...]=CERT:KEY"), "{bad}: {e}");
        }
    }

    /// The node lists gateways under the service name they register with.
    #[test]
    fn the_node_and_the_gateways_name_one_service() {
        assert_eq!(
            weft_server::GATEWAY_SERVICE,
            weft_gateway::registry::SERVICE
        );
    }
}
