//! The web server: the Leptos app (server-rendered, then hydrated by the browser bundle) and its
//! server functions on axum, backed by the engine's worker thread.
//!
//! `cogvlm serve` (wired in `main.rs`) calls [`serve`]; [`access`] guards every route.

pub mod access;
pub mod assets;
pub mod chat;
pub mod redacted;
pub mod share;
pub mod uploads;

use crate::engine::{bundled_models_dir, EngineHandle, EngineOptions, Fairness, Limits, Registry};
use crate::generate::LoadOptions;
use access::Access;
use anyhow::{bail, Context, Result};
use app::backend::{Backend, BackendContext, CancelHandle, Generation, Web, WebContext};
use app::{shell, App, OUTPUT_NAME};
use axum::handler::Handler;
use axum::Router;
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, LeptosRoutes};
use protocol::{Event, GenerateRequest, ModelsState};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Options of `cogvlm serve`.
#[derive(Clone, Debug)]
pub struct ServeArgs {
    /// Address to bind; `0.0.0.0` makes the app visible to the network.
    pub host: String,
    pub port: u16,
    /// Folder of checkpoints (or one checkpoint); `None`: the bundled tiny test checkpoints.
    pub models_dir: Option<PathBuf>,
    /// Device, dtype, quantization, placement and adapter of every checkpoint served.
    pub load: LoadOptions,
    /// Bind every interface and require an access token (`token`, or a generated one).
    pub share: bool,
    /// The access token (checked by [`access::check_token`]); `None` with `share` (or a
    /// non-loopback host): a random one.
    pub token: Option<String>,
    /// Host names accepted besides loopback and IP addresses (`--allow-host`).
    pub allowed_hosts: Vec<String>,
    /// Connection deadlines and caps.
    pub conn: crate::net::conn::ConnLimits,
    /// Whether the API's `model` field may switch the checkpoint (`--api-switch`).
    pub api_switch: crate::openai::ApiSwitch,
    pub limits: Limits,
    /// The queue's rules; the rate limit is turned on for a shared server (`share`, or a host
    /// other than loopback) whatever `fairness.rate_limit` says.
    pub fairness: Fairness,
    /// Answers generated together; `None`: the device's default.
    pub max_batch: Option<usize>,
    /// `--prefill-chunk`; `None`: the engine's default, `Some(0)`: whole prompts.
    pub prefill_chunk: Option<usize>,
    /// `--backend openai`: answer from this remote server instead of a local worker.
    pub remote: Option<crate::remote::RemoteConfig>,
}

impl Default for ServeArgs {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 3000,
            models_dir: None,
            load: LoadOptions::default(),
            share: false,
            token: None,
            allowed_hosts: Vec::new(),
            conn: Default::default(),
            api_switch: Default::default(),
            limits: Limits::default(),
            fairness: Fairness::default(),
            max_batch: None,
            prefill_chunk: None,
            remote: None,
        }
    }
}

/// The engine as the app's server functions see it.
impl Backend for EngineHandle {
    fn models(&self) -> ModelsState {
        EngineHandle::models(self)
    }

    fn generate(&self, req: GenerateRequest, client: &str) -> Generation {
        let ticket = EngineHandle::generate(self, req, client);
        let canceller = ticket.canceller;
        Generation {
            events: ticket.events,
            cancel: CancelHandle::new(move || canceller.cancel()),
        }
    }

    fn load(&self, name: String) -> mpsc::Receiver<Event> {
        EngineHandle::load(self, &name)
    }
}

/// Where the built site (`pkg/cogvlm.<hash>.{js,wasm,css}` listed in `pkg/hash.txt`, or
/// unhashed `pkg/cogvlm.js`…, and the public files) is: `$COGVLM_SITE_ROOT`, else `target/site`
/// of this source tree (where `build.sh` puts it), else `./target/site`, else `site` next to or
/// above the binary.
pub fn find_site_root() -> Result<PathBuf> {
    let has_bundle = |dir: &Path| {
        let pkg = dir.join("pkg");
        pkg.join(assets::HASH_FILE).is_file() || pkg.join(format!("{OUTPUT_NAME}.js")).is_file()
    };
    if let Some(dir) = std::env::var_os("COGVLM_SITE_ROOT") {
        let dir = PathBuf::from(dir);
        if has_bundle(&dir) {
            return Ok(dir);
        }
        bail!(
            "COGVLM_SITE_ROOT={} has no pkg/{} nor pkg/{OUTPUT_NAME}.js",
            dir.display(),
            assets::HASH_FILE
        );
    }
    let mut candidates = vec![
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/site"),
        PathBuf::from("target/site"),
    ];
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        candidates.push(exe_dir.join("site"));
        candidates.push(exe_dir.join("../site"));
    }
    for dir in &candidates {
        if has_bundle(dir) {
            return Ok(dir.canonicalize().unwrap_or_else(|_| dir.clone()));
        }
    }
    bail!(
        "the browser bundle is not built (looked for pkg/{} in {}): run ./build.sh \
         in the repository first, or set COGVLM_SITE_ROOT",
        assets::HASH_FILE,
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Builds the router: pages, server functions (the upload and the websocket ones too), the
/// OpenAI-compatible API (`/v1`) and static files, compressed and with caching headers
/// ([`assets`]).
pub fn router(
    backend: Arc<dyn Backend>,
    web: Arc<dyn Web>,
    site_root: &Path,
    addr: SocketAddr,
    api: crate::openai::ApiOptions,
) -> Router {
    // With hashed bundle names the page links them. Leptos reads the hash file on each render
    // (a rebuild while serving is picked up) from the binary's folder joined with this path,
    // which an absolute path replaces.
    let hash_file = assets::hash_file(site_root);
    let options = LeptosOptions::builder()
        .output_name(OUTPUT_NAME)
        .site_root(site_root.to_string_lossy().into_owned())
        .site_pkg_dir("pkg")
        .site_addr(addr)
        .hash_files(hash_file.is_some())
        .hash_file(
            hash_file
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| assets::HASH_FILE.into())
                .into(),
        )
        .build();
    let openai = crate::openai::router(backend.clone(), api);
    let backend = BackendContext(backend);
    let web = WebContext(web);
    let shared = share::current();
    let routes = generate_route_list(App);
    let not_found =
        Handler::with_state(leptos_axum::file_and_error_handler(shell), options.clone());
    Router::new()
        .leptos_routes_with_context(
            &options,
            routes,
            move || {
                provide_context(backend.clone());
                provide_context(web.clone());
                if let Some(s) = &shared {
                    provide_context(s.clone());
                }
            },
            {
                let options = options.clone();
                move || shell(options.clone())
            },
        )
        .merge(openai)
        .fallback_service(assets::static_files(site_root, not_found))
        .with_state(options)
        .layer(axum::middleware::from_fn(assets::cache_control))
        .layer(assets::compression())
}

/// The whole app: [`router`] behind the [`access`] guard (host, origin, token, client id),
/// keeping uploads within `limits`, with the API's default options.
pub fn app(
    backend: Arc<dyn Backend>,
    site_root: &Path,
    addr: SocketAddr,
    access: Access,
    limits: &Limits,
) -> Router {
    app_with(backend, site_root, addr, access, limits, Default::default())
}

/// [`app`] with these API options.
pub fn app_with(
    backend: Arc<dyn Backend>,
    site_root: &Path,
    addr: SocketAddr,
    access: Access,
    limits: &Limits,
    api: crate::openai::ApiOptions,
) -> Router {
    // With a token the server is shared: peers on other machines read its messages (no paths of
    // the host's disk), and can make new client ids, so each address is held to a share of the
    // upload store.
    let shared = access.token.is_some();
    let backend: Arc<dyn Backend> = if shared {
        Arc::new(redacted::Redacted(backend))
    } else {
        backend
    };
    let uploads = uploads::Uploads::new(limits.clone()).per_address(shared);
    let web = chat::WebLayer::new(backend.clone(), uploads);
    let guard = access::Guard {
        access,
        bound: addr.ip(),
        // A question's text JSON-escaped at worst (`\uXXXX`, six bytes a byte), and room for the
        // rest of the frame.
        websocket_input: limits.max_text_bytes.saturating_mul(6) + (64 << 10),
    };
    let max_upload = limits.max_upload_bytes;
    router(backend, Arc::new(web), site_root, addr, api)
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                uploads::refuse_malformed(max_upload, req, next)
            },
        ))
        // Outermost: nothing is reached without the host check and the token.
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard),
            access::guard,
        ))
}

/// Serves `app` on `listener` with the default connection limits ([`crate::net::conn`]).
pub async fn serve_app(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::net::conn::serve(listener, app, Default::default(), shutdown).await
}

/// This machine's address on the network (the one a LAN peer would reach), if any. Opening
/// a UDP socket "towards" a private address sends nothing; it only picks the interface.
fn lan_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.168.255.255:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

/// Runs the web app until Ctrl+C. Builds its own tokio runtime.
pub fn serve(args: ServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: ServeArgs) -> Result<()> {
    if let Some(remote) = args.remote.clone() {
        let source = format!("remote {}", remote.endpoint);
        let backend = Arc::new(crate::remote::RemoteBackend::new(remote)?.with_rules(
            args.limits.clone(),
            fairness_for(&args),
            crate::remote::REQUEST_TIMEOUT,
        ));
        return listen(&args, backend, &source, None).await;
    }
    let models_dir = args.models_dir.clone().unwrap_or_else(bundled_models_dir);
    let registry = match &args.models_dir {
        Some(dir) => Registry::scan(dir)?,
        None => Registry::bundled()?,
    };
    for (folder, reason) in &registry.skipped {
        tracing::warn!("skipping {folder}: {reason}");
    }
    let initial = registry.default_entry().map(|e| e.name().to_string());
    if initial.is_none() {
        tracing::info!(
            "no checkpoint found in {} (each checkpoint is a folder with config.json and *.safetensors)",
            models_dir.display()
        );
    }
    let engine = EngineHandle::start_with(
        registry,
        EngineOptions {
            load: args.load.clone(),
            limits: args.limits.clone(),
            fairness: fairness_for(&args),
            max_batch: args.max_batch,
            prefill_chunk: args.prefill_chunk,
        },
        initial.as_deref(),
    )?;
    let source = models_dir.display().to_string();
    listen(&args, Arc::new(engine.clone()), &source, Some(engine)).await
}

/// Whether other machines can reach the server (`--share`, or a host other than loopback).
fn is_shared(args: &ServeArgs) -> bool {
    args.share || !matches!(args.host.parse::<IpAddr>(), Ok(ip) if ip.is_loopback())
}

/// The access token: `--token` (checked), else a random one for anything reachable from other
/// machines, even without `--share`.
fn token_for(args: &ServeArgs, ip: IpAddr) -> Result<Option<String>> {
    Ok(match &args.token {
        Some(t) => Some(access::check_token(t)?),
        None if args.share || !ip.is_loopback() => Some(access::new_token()),
        None => None,
    })
}

/// The queue rules with what a shared server adds: a rate limit, and per-address limits (a peer
/// can make new client ids at will).
fn fairness_for(args: &ServeArgs) -> Fairness {
    Fairness {
        rate_limit: args.fairness.rate_limit || is_shared(args),
        per_address: args.fairness.per_address || is_shared(args),
        ..args.fairness.clone()
    }
}

/// Serves `backend` (the local worker or a remote server) until Ctrl+C; `engine`, when local,
/// is told to stop its work at Ctrl+C.
async fn listen(
    args: &ServeArgs,
    backend: Arc<dyn Backend>,
    source: &str,
    engine: Option<EngineHandle>,
) -> Result<()> {
    let site_root = find_site_root()?;
    let host = if args.share { "0.0.0.0" } else { &args.host };
    let ip: IpAddr = host
        .parse()
        .with_context(|| format!("--host {host:?} is not an IP address"))?;
    let addr = SocketAddr::new(ip, args.port);
    let token = token_for(args, ip)?;
    let access = Access {
        token: token.clone(),
        allowed_hosts: args.allowed_hosts.clone(),
    };
    let query = token
        .as_deref()
        .map(|t| format!("/?token={t}"))
        .unwrap_or_default();
    let lan_link = ip
        .is_unspecified()
        .then(lan_address)
        .flatten()
        .map(|lan| format!("http://{lan}:{}{query}", args.port));
    if let Some(link) = &lan_link {
        // Before the router is built: the host's page offers it with its QR code.
        share::set_link(link);
    }
    let api = crate::openai::ApiOptions {
        switch: args.api_switch,
        ..Default::default()
    };
    let app = app_with(backend, &site_root, addr, access, &args.limits, api);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (is another server running? try --port)")
    })?;
    tracing::info!("models: {source}");
    tracing::info!("site:   {}", site_root.display());
    if ip.is_unspecified() {
        tracing::info!(
            "listening on {addr}: the app is visible to your network, with the token below"
        );
        if let Some(link) = &lan_link {
            tracing::info!("share:  {link}");
            // The QR code is a picture for the terminal: printed as is, not as a log line.
            if let Some(qr) = args.share.then(|| share::terminal(link)).flatten() {
                eprintln!("{qr}");
            }
        }
        tracing::info!("local:  http://localhost:{}{query}", args.port);
    } else {
        tracing::info!("open http://{addr}{query}");
    }
    if let Some(t) = &token {
        tracing::info!("API clients: Authorization: Bearer {t}");
    }
    let shutdown = async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: stopping the running answer, refusing waiting ones");
        if let Some(engine) = engine {
            engine.shutdown();
        }
        // Open sockets end when their answers end; don't wait forever for idle ones.
        tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            tracing::info!("some connections did not close within 10 s; exiting");
            std::process::exit(0);
        });
    };
    crate::net::conn::serve(listener, app, args.conn.clone(), shutdown)
        .await
        .context("serving")?;
    Ok(())
}
