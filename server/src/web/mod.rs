//! The web server: the Leptos app (server-rendered, then hydrated by the browser bundle) and its
//! server functions on axum, backed by the engine's worker thread.
//!
//! `cogvlm serve` (wired in `main.rs`) calls [`serve`].

use crate::engine::{bundled_models_dir, EngineHandle, Registry};
use crate::LoadOptions;
use anyhow::{bail, Context, Result};
use app::backend::{Backend, BackendContext, CancelHandle, Generation};
use app::protocol::{Event, GenerateRequest, ModelsState};
use app::{shell, App, OUTPUT_NAME};
use axum::Router;
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, LeptosRoutes};
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
    /// "cpu", "cuda", "cuda:N".
    pub device: String,
    /// "f32", "bf16", "f16"; `None`: the device's default.
    pub dtype: Option<String>,
    /// `--backend openai`: answer from this remote server instead of a local worker.
    pub remote: Option<crate::remote::RemoteConfig>,
}

impl Default for ServeArgs {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 3000,
            models_dir: None,
            device: "cpu".into(),
            dtype: None,
            remote: None,
        }
    }
}

/// The engine as the app's server functions see it.
impl Backend for EngineHandle {
    fn models(&self) -> ModelsState {
        EngineHandle::models(self)
    }

    fn generate(&self, req: GenerateRequest) -> Generation {
        let ticket = EngineHandle::generate(self, req);
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

/// Where the built site (`pkg/cogvlm.js`, `pkg/cogvlm_bg.wasm`, `pkg/cogvlm.css`, public files)
/// is: `$COGVLM_SITE_ROOT`, else `target/site` of this source tree (where `build.sh` puts
/// it), else `./target/site`, else `site` next to or above the binary.
pub fn find_site_root() -> Result<PathBuf> {
    let has_bundle = |dir: &Path| dir.join("pkg").join(format!("{OUTPUT_NAME}.js")).is_file();
    if let Some(dir) = std::env::var_os("COGVLM_SITE_ROOT") {
        let dir = PathBuf::from(dir);
        if has_bundle(&dir) {
            return Ok(dir);
        }
        bail!(
            "COGVLM_SITE_ROOT={} has no pkg/{OUTPUT_NAME}.js",
            dir.display()
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
        "the browser bundle is not built (looked for pkg/{OUTPUT_NAME}.js in {}): run ./build.sh \
         in the repository first, or set COGVLM_SITE_ROOT",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Builds the router: pages, server functions (the websocket ones too), the OpenAI-compatible
/// API (`/v1`) and static files.
pub fn router(backend: Arc<dyn Backend>, site_root: &Path, addr: SocketAddr) -> Router {
    let options = LeptosOptions::builder()
        .output_name(OUTPUT_NAME)
        .site_root(site_root.to_string_lossy().into_owned())
        .site_pkg_dir("pkg")
        .site_addr(addr)
        .build();
    let openai = crate::openai::router(backend.clone());
    let backend = BackendContext(backend);
    let routes = generate_route_list(App);
    Router::new()
        .leptos_routes_with_context(
            &options,
            routes,
            move || provide_context(backend.clone()),
            {
                let options = options.clone();
                move || shell(options.clone())
            },
        )
        .merge(openai)
        .fallback(leptos_axum::file_and_error_handler(shell))
        .with_state(options)
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
        let backend = Arc::new(crate::remote::RemoteBackend::new(remote)?);
        return listen(&args, backend, &source).await;
    }
    let models_dir = args.models_dir.clone().unwrap_or_else(bundled_models_dir);
    let registry = Registry::scan(&models_dir)?;
    for (folder, reason) in &registry.skipped {
        eprintln!("skipping {folder}: {reason}");
    }
    let initial = registry.default_entry().map(|e| e.name().to_string());
    if initial.is_none() {
        eprintln!(
            "no checkpoint found in {} (each checkpoint is a folder with config.json and *.safetensors)",
            models_dir.display()
        );
    }
    let engine = EngineHandle::start(
        registry,
        LoadOptions {
            device: args.device.clone(),
            dtype: args.dtype.clone(),
            tokenizer: None,
        },
        initial.as_deref(),
    )?;
    listen(&args, Arc::new(engine), &models_dir.display().to_string()).await
}

/// Serves `backend` (the local worker or a remote server) until Ctrl+C.
async fn listen(args: &ServeArgs, backend: Arc<dyn Backend>, source: &str) -> Result<()> {
    let site_root = find_site_root()?;
    let ip: IpAddr = args
        .host
        .parse()
        .with_context(|| format!("--host {:?} is not an IP address", args.host))?;
    let addr = SocketAddr::new(ip, args.port);
    let app = router(backend, &site_root, addr);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (is another server running? try --port)")
    })?;
    eprintln!("models: {source}");
    eprintln!("site:   {}", site_root.display());
    if ip.is_unspecified() {
        eprintln!(
            "WARNING: listening on {addr}: the app (and the model) are visible to your network"
        );
        eprintln!(
            "open http://localhost:{} (or this machine's address)",
            args.port
        );
    } else {
        eprintln!("open http://{addr}");
    }
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")?;
    Ok(())
}
