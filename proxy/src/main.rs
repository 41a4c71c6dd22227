//! `sessiongate`: credential management, and a local proxy-wasm host that runs
//! the very plugin `.wasm` Envoy loads.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sessiongate_core::{Backend, GateConfig, GuardConfig, LimitConfig};
use sessiongate_core::{Kind, Level, Permission, Role};

use sessiongate::serve;
use sessiongate_store::Store;
use sessiongate_store::audit::{self, Action, Event};
use sessiongate_store::{manage, users};

#[derive(Parser)]
#[command(
    name = "sessiongate",
    version,
    about = "A gate in front of the external sessions API."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Site-scoped API tokens (`Bearer fus_…`, always standard level).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// API keys with a permission level (`Basic {API_KEY}`).
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// The people of a customer's account who manage its credentials in
    /// `sessiongate console`, each with a role and token permissions.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Serve the management API and web page (API Tokens, API Keys, audit
    /// log) for the users of each account, over the token store.
    Console(sessiongate::console::ConsoleArgs),
    /// Print the plugin configuration JSON (hashes only) for envoy.yaml.
    EnvoyConfig(ConfigArgs),
    /// Print the Worker configuration JSON (hashes only) for the
    /// SESSIONGATE_CONFIG binding. The same JSON as envoy-config; backend stub or a URL.
    WorkerConfig(ConfigArgs),
    /// Print the component configuration JSON (hashes only) for the key
    /// `sessiongate.config.v1` of a Spin app's default key-value store
    /// (`spin up --key-value`). The same JSON; backend stub or a URL.
    SpinConfig(ConfigArgs),
    /// Print an nginx.conf that serves the filter on Kong's WasmX (nginx +
    /// ngx_wasm_module), its configuration inline (hashes only), two
    /// workers sharing one limit. `plugin/run-wasmx.sh` renders and runs it.
    WasmxConfig(WasmxArgs),
    /// Make the Worker's credential store (its Durable Object) hold exactly
    /// this token store's records: writes what is new or changed, deletes
    /// what is gone. Idempotent. The admin secret is read from
    /// SESSIONGATE_ADMIN_SECRET.
    WorkerSync {
        #[command(flatten)]
        store: StoreArg,
        /// The Worker's origin, e.g. https://sessiongate.example.workers.dev
        #[arg(long, value_name = "URL")]
        url: String,
        /// Print what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Load a token store as `serve` does: how many credentials it holds and
    /// how long loading took, or what is wrong with it (exit status 1). In
    /// etcd, also that the digest index the filter reads agrees with the
    /// records.
    Check {
        #[command(flatten)]
        store: StoreArg,
        /// In etcd: write the digest index from the records where it
        /// disagrees (a store written before the index was kept).
        #[arg(long)]
        repair: bool,
    },
    /// Serve HTTP, running the proxy-wasm filter (or, with `--component`, the
    /// wasi:http component) under wasmtime.
    Serve(serve::ServeArgs),
}

#[derive(Args)]
struct StoreArg {
    /// The token store (JSON). A missing file is an empty store.
    #[arg(long, value_name = "FILE")]
    store: PathBuf,
}

impl StoreArg {
    /// The store, opened once for the command.
    fn open(&self) -> Result<Store> {
        Store::open(&self.store)
    }
}

#[derive(Args)]
struct CreateArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Unique name of the credential.
    #[arg(long)]
    name: String,
    /// The account id the credential belongs to.
    #[arg(long, value_name = "ID")]
    customer: String,
    /// Grant every site of the customer.
    #[arg(long, conflicts_with = "site")]
    all_sites: bool,
    /// Grant one site; repeat for more.
    #[arg(long = "site", value_name = "ID")]
    site: Vec<String>,
    #[arg(long)]
    description: Option<String>,
    /// Refuse it from this long after creation on (e.g. 90d, 12h; opt-in:
    /// without it, or --expires-at, it never expires).
    #[arg(long, value_name = "DURATION", conflicts_with = "expires_at")]
    expires_in: Option<String>,
    /// Refuse it from this instant on (RFC 3339, e.g. 2027-03-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    expires_at: Option<String>,
}

#[derive(Args)]
struct ListArgs {
    #[command(flatten)]
    store: StoreArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DeleteArgs {
    #[command(flatten)]
    store: StoreArg,
    name: String,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Mint a token: the secret is printed once on stdout, only its hash is kept.
    Create(CreateArgs),
    List(ListArgs),
    /// Revoke at once.
    Delete(DeleteArgs),
    /// Check a token's checksum offline, as a secret scanner does: exit 0
    /// when it is a checksummed token (it may still be revoked or never
    /// issued; only a gate knows), 1 when it is not.
    Verify {
        /// The token; read from stdin when omitted or `-` (an argument is
        /// seen by other users of the machine and kept in shell history).
        token: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LevelArg {
    Standard,
    Architect,
    Admin,
}

impl From<LevelArg> for Level {
    fn from(l: LevelArg) -> Level {
        match l {
            LevelArg::Standard => Level::Standard,
            LevelArg::Architect => Level::Architect,
            LevelArg::Admin => Level::Admin,
        }
    }
}

#[derive(Subcommand)]
enum KeyAction {
    /// Mint a key: the secret is printed once on stdout, only its hash is kept.
    Create {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(long, value_enum)]
        level: LevelArg,
    },
    List(ListArgs),
    /// Rename a key or change its level; its value stays the same.
    Update {
        #[command(flatten)]
        store: StoreArg,
        name: String,
        #[arg(long, value_name = "NEW")]
        rename: Option<String>,
        #[arg(long, value_enum)]
        level: Option<LevelArg>,
    },
    Delete(DeleteArgs),
}

#[derive(Subcommand)]
enum UserAction {
    /// Create a user: their login secret is printed once on stdout, only
    /// its hash is kept.
    Create {
        #[command(flatten)]
        store: StoreArg,
        /// The account the user belongs to.
        #[arg(long, value_name = "ID")]
        customer: String,
        /// Unique name of the user ([A-Za-z0-9._-]).
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// A token permission; repeat for more.
        #[arg(long = "permission", value_name = "PERMISSION", value_parser = parse_permission)]
        permissions: Vec<Permission>,
    },
    List(ListArgs),
    /// Delete a user: their login stops working at once; what they created stays.
    Delete(DeleteArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Standard,
    Architect,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Standard => Role::Standard,
            RoleArg::Architect => Role::Architect,
            RoleArg::Admin => Role::Admin,
        }
    }
}

fn parse_permission(s: &str) -> Result<Permission, String> {
    Permission::parse(s).ok_or_else(|| {
        let all: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
        format!("expected one of {}", all.join(", "))
    })
}

fn user(action: UserAction, out: &mut dyn std::io::Write) -> Result<()> {
    match action {
        UserAction::Create {
            store,
            customer,
            name,
            role,
            permissions,
        } => {
            let store = store.open()?;
            let (secret, user) = users::create(&store, &name, &customer, role.into(), permissions)?;
            audit::record(&store, &Event::on_user(Action::Create, &user))?;
            writeln!(out, "{secret}")?;
            eprintln!(
                "Created user {name:?} of {customer:?}. This is the only time their login secret is shown: hand it over now."
            );
            Ok(())
        }
        UserAction::List(a) => users::list(&a.store.open()?, a.json, out),
        UserAction::Delete(a) => {
            let store = a.store.open()?;
            let user = users::delete(&store, &a.name)?;
            audit::record(&store, &Event::on_user(Action::Delete, &user))
        }
    }
}

#[derive(Args)]
struct ConfigArgs {
    #[command(flatten)]
    store: StoreArg,
    /// `stub` (synthetic sessions), `upstream` (Envoy: continue to the route's
    /// cluster) or an origin URL (Worker). Default: upstream for Envoy, stub for the Worker.
    #[arg(long)]
    backend: Option<String>,
    #[arg(long, default_value_t = 20)]
    requests: u32,
    #[arg(long, default_value_t = 60)]
    window_seconds: u32,
    /// Admit requests when the limiter's shared state fails (default: fail closed).
    #[arg(long)]
    fail_open: bool,
    /// The failed-credential guard: invalid credentials one client address
    /// may present per window before it is held (0 turns the guard off), as
    /// `[guard] failures` in `serve`'s TOML.
    #[arg(long, default_value_t = GuardConfig::default().failures)]
    guard_failures: u32,
    /// The guard's window, as `[guard] window_seconds`.
    #[arg(long, default_value_t = GuardConfig::default().window_seconds)]
    guard_window_seconds: u32,
    /// Print the whole plugin/envoy.yaml with this configuration inlined
    /// (plugin/envoy-fleet.yaml with --credentials-from-store).
    #[arg(long)]
    envoy_yaml: bool,
    /// Leave the credentials out (the Worker's binding, when they live in
    /// its credential store: `worker-sync`).
    #[arg(long)]
    without_credentials: bool,
    /// Name the store instead of listing its credentials: the fleet filter
    /// looks each presented credential up in it by digest (--store
    /// etcd://…/PREFIX), so a configuration stays small and a credential
    /// created or deleted holds without a push. etcd's user comes from the
    /// URL, its password from SESSIONGATE_ETCD_PASSWORD.
    #[arg(long, conflicts_with = "without_credentials")]
    credentials_from_store: bool,
    /// The host's name for the store's etcd members (an Envoy cluster),
    /// with --credentials-from-store.
    #[arg(long, value_name = "NAME", default_value = "sessiongate_etcd")]
    store_cluster: String,
}

#[derive(Args)]
struct WasmxArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The filter's .wasm (scripts/build-plugin.sh; with --etcd, its --fleet build).
    #[arg(long, value_name = "FILE")]
    filter: PathBuf,
    /// Where nginx listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// nginx's prefix directory (-p): pid, logs, temporary files.
    #[arg(long, value_name = "DIR")]
    prefix: PathBuf,
    /// nginx worker processes (each runs its own VM; shared data is shared).
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// The limiter on etcd: the members' client URLs, comma-separated.
    #[arg(long, value_name = "URL,URL,...", value_delimiter = ',')]
    etcd: Vec<String>,
    /// Where nginx's TCP proxy to the etcd members listens (with --etcd).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2479")]
    etcd_proxy: std::net::SocketAddr,
    /// The etcd key of the limiter's log (with --etcd).
    #[arg(long, default_value = "sessiongate/limiter/v1")]
    etcd_key: String,
    /// How long nginx's etcd proxy waits on a member before it answers the
    /// filter 504 and the request is answered 503 (with --etcd; a next
    /// member may be tried within it, so an answer takes at most about
    /// twice this).
    #[arg(long, default_value_t = 250)]
    etcd_timeout_ms: u32,
}

fn wasmx_config(a: WasmxArgs, out: &mut dyn std::io::Write) -> Result<()> {
    if a.config.envoy_yaml {
        anyhow::bail!("--envoy-yaml is for envoy-config");
    }
    let mut config = gate_config(&a.config, "stub")?;
    // nginx proxies an admitted request itself: the filter only lets it go on.
    let upstream = match &config.backend {
        Backend::Upstream(url) => {
            let url = url.clone().ok_or_else(|| {
                anyhow::anyhow!("--backend takes stub or the sessions service's http:// URL here")
            })?;
            config.backend = Backend::Upstream(None);
            Some(url)
        }
        Backend::Stub => None,
    };
    let etcd = (!a.etcd.is_empty()).then(|| {
        let proxy = sessiongate::wasmx::EtcdProxy {
            listen: a.etcd_proxy,
            members: &a.etcd,
            timeout_ms: a.etcd_timeout_ms,
        };
        config.limiter = sessiongate_core::LimiterStore::Etcd {
            cluster: a.etcd_proxy.to_string(),
            key: a.etcd_key.clone(),
            timeout_ms: proxy.callout_timeout_ms(),
            user: None,
            password: None,
            // WasmX's proxy_set_effective_context does nothing, so a group
            // commit could not answer the requests it admitted.
            group_commit: false,
        };
        proxy
    });
    // The store's calls go through the same proxy as the limiter's.
    if let sessiongate_core::CredentialSource::Etcd(store) = &mut config.credentials {
        let Some(proxy) = &etcd else {
            anyhow::bail!(
                "--credentials-from-store on WasmX needs --etcd: the members nginx proxies the filter's calls to"
            );
        };
        store.cluster = proxy.listen.to_string();
        store.timeout_ms = proxy.callout_timeout_ms();
        if let sessiongate_core::LimiterStore::Etcd { user, password, .. } = &mut config.limiter {
            user.clone_from(&store.user);
            password.clone_from(&store.password);
        }
    }
    config.validate().map_err(anyhow::Error::msg)?;
    let filter_config = serde_json::to_string(&config)?;
    let filter = std::path::absolute(&a.filter)?;
    let prefix = std::path::absolute(&a.prefix)?;
    let conf = sessiongate::wasmx::NginxConf {
        filter: &filter,
        filter_config: &filter_config,
        listen: a.listen,
        prefix: &prefix,
        workers: a.workers,
        upstream: upstream.as_deref(),
        etcd,
    }
    .render()?;
    write!(out, "{conf}")?;
    Ok(())
}

fn create(kind: Kind, args: CreateArgs, level: Level) -> Result<()> {
    let sites = manage::sites_from_args(args.all_sites, args.site)?;
    let expires = manage::expiry_from_args(
        args.expires_in.as_deref(),
        args.expires_at.as_deref(),
        manage::now_ms(),
    )?;
    let store = args.store.open()?;
    let (secret, record) = manage::create(
        &store,
        kind,
        manage::NewCredential {
            name: args.name.clone(),
            description: args.description,
            customer: args.customer,
            sites,
            level,
            owner: None,
            expires,
        },
    )?;
    audit::record(&store, &Event::by_operator(Action::Create, &record, None))?;
    println!("{secret}");
    let expiry = record
        .expires
        .map(|at| format!(" It expires at {}.", manage::rfc3339(at)))
        .unwrap_or_default();
    eprintln!(
        "Created {} {:?}.{expiry} This is the only time its secret is shown: store it now.",
        if kind == Kind::Token { "token" } else { "key" },
        args.name
    );
    Ok(())
}

fn delete(store: &StoreArg, kind: Kind, name: &str) -> Result<()> {
    let store = store.open()?;
    let record = manage::delete(&store, kind, name, &manage::unrestricted)?;
    audit::record(&store, &Event::by_operator(Action::Delete, &record, None))
}

/// `plugin/envoy.yaml`, with the block between its markers replaced.
const ENVOY_YAML: &str = include_str!("../../plugin/envoy.yaml");
/// The fleet's: its etcd cluster, which a store the filter reads needs.
const ENVOY_FLEET_YAML: &str = include_str!("../../plugin/envoy-fleet.yaml");

fn envoy_yaml(config_json: &str, template: &str) -> Result<String> {
    const BEGIN: &str = "# BEGIN sessiongate configuration";
    const END: &str = "# END sessiongate configuration";
    let (Some(begin), Some(end)) = (template.find(BEGIN), template.find(END)) else {
        anyhow::bail!("the Envoy template lost its configuration markers");
    };
    let line_start = template[..begin].rfind('\n').map_or(0, |i| i + 1);
    let indent = &template[line_start..begin];
    let mut block = format!("{BEGIN}\n{indent}value: |\n");
    for line in config_json.lines() {
        block.push_str(&format!("{indent}  {line}\n"));
    }
    block.push_str(indent);
    Ok(format!("{}{block}{}", &template[..begin], &template[end..]))
}

fn run(cli: Cli) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Token { action } => match action {
            TokenAction::Create(a) => create(Kind::Token, a, Level::Standard),
            TokenAction::List(a) => {
                manage::list(&a.store.open()?, Kind::Token, a.json, &mut stdout)
            }
            TokenAction::Delete(a) => delete(&a.store, Kind::Token, &a.name),
            TokenAction::Verify { token } => verify_token(token, &mut stdout),
        },
        Command::Key { action } => match action {
            KeyAction::Create { create: a, level } => create(Kind::Key, a, level.into()),
            KeyAction::List(a) => manage::list(&a.store.open()?, Kind::Key, a.json, &mut stdout),
            KeyAction::Update {
                store,
                name,
                rename,
                level,
            } => {
                let store = store.open()?;
                let (before, after) = manage::update_key(
                    &store,
                    &name,
                    rename,
                    level.map(Into::into),
                    &manage::unrestricted,
                )?;
                let event = Event::by_operator(Action::Update, &after, Some(&before));
                audit::record(&store, &event)
            }
            KeyAction::Delete(a) => delete(&a.store, Kind::Key, &a.name),
        },
        Command::User { action } => user(action, &mut stdout),
        Command::Console(a) => sessiongate::console::run(a),
        Command::EnvoyConfig(a) => print_config(a, "upstream", &mut stdout),
        Command::WorkerConfig(a) | Command::SpinConfig(a) => {
            if a.envoy_yaml {
                anyhow::bail!("--envoy-yaml is for envoy-config");
            }
            print_config(a, "stub", &mut stdout)
        }
        Command::WasmxConfig(a) => wasmx_config(a, &mut stdout),
        Command::Check { store, repair } => {
            sessiongate::check::run(&store.store, repair, &mut stdout)
        }
        Command::WorkerSync {
            store,
            url,
            dry_run,
        } => sessiongate::worker_sync::run(&store.open()?, &url, dry_run, &mut stdout),
        Command::Serve(a) => serve::run(a),
    }
}

/// `token verify`: the token is never printed back, only the finding.
fn verify_token(token: Option<String>, out: &mut dyn std::io::Write) -> Result<()> {
    let token = match token.filter(|t| t != "-") {
        Some(token) => token,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line
        }
    };
    let token = token.trim();
    if !sessiongate_core::is_token(token) {
        anyhow::bail!(
            "not a token: a token is fus_ and 40 letters or digits ({} characters given)",
            token.chars().count()
        );
    }
    if !sessiongate_core::is_checksummed_token(token) {
        anyhow::bail!(
            "the checksum does not hold: mistyped, made up, or minted before tokens carried one"
        );
    }
    writeln!(
        out,
        "checksum valid: a token sessiongate minted (whether it is still live only a gate can say)"
    )?;
    Ok(())
}

fn print_config(a: ConfigArgs, default_backend: &str, out: &mut dyn std::io::Write) -> Result<()> {
    let config = gate_config(&a, default_backend)?;
    config.validate().map_err(anyhow::Error::msg)?;
    let json = serde_json::to_string_pretty(&config)?;
    let text = if a.envoy_yaml {
        // A store the filter reads needs the fleet's file: its etcd cluster.
        let template = if a.credentials_from_store {
            ENVOY_FLEET_YAML
        } else {
            ENVOY_YAML
        };
        envoy_yaml(&json, template)?
    } else {
        json
    };
    writeln!(out, "{}", text.trim_end())?;
    Ok(())
}

/// The filter's configuration the flags describe, with the store's credentials.
fn gate_config(a: &ConfigArgs, default_backend: &str) -> Result<GateConfig> {
    // A gate that looks credentials up elsewhere (etcd, the Worker's object)
    // skips the lookup of a wrong checksum when the store's tokens all carry
    // one; every token minted from now on does, so the mark stays true.
    let store = a.store.open()?;
    let checksummed_tokens = (a.credentials_from_store || a.without_credentials)
        && !store.load_set()?.holds_unchecksummed_tokens();
    let credentials = if a.credentials_from_store {
        let Store::Etcd(etcd) = store else {
            anyhow::bail!(
                "--credentials-from-store needs a store in etcd (--store etcd://HOST:PORT…/PREFIX)"
            );
        };
        sessiongate_core::CredentialSource::Etcd(sessiongate_core::CredentialStore {
            cluster: a.store_cluster.clone(),
            prefix: etcd.prefix().to_owned(),
            user: etcd.login().map(|l| l.user.clone()),
            password: etcd.login().map(|l| l.password.clone()),
            ..Default::default()
        })
    } else if a.without_credentials {
        sessiongate_core::CredentialSet::default().into()
    } else {
        store.load_set()?.into()
    };
    Ok(GateConfig {
        credentials,
        limit: LimitConfig {
            requests: a.requests,
            window_seconds: a.window_seconds,
        },
        backend: Backend::parse(a.backend.as_deref().unwrap_or(default_backend))
            .map_err(anyhow::Error::msg)?,
        fail_open: a.fail_open,
        guard: GuardConfig {
            failures: a.guard_failures,
            window_seconds: a.guard_window_seconds,
        },
        checksummed_tokens,
        ..Default::default()
    })
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessiongate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
