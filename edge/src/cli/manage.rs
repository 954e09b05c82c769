//! The commands that manage the edge's store beside a running edge (accounts, tokens, zones,
//! node tokens) and its tunnels file (`tunnel add`).

use super::*;

#[derive(Subcommand)]
pub(super) enum AccountCommand {
    /// Create an account and print its admin API token (shown once).
    Create {
        name: String,
        /// A zone the account may route hostnames under, e.g. example.com (repeatable; more
        /// with `zone add`).
        #[arg(long = "zone", value_name = "ZONE")]
        zones: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the accounts.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete an account and everything it owns: tokens stop working at once, its tunnels'
    /// connections are closed, its routes stop serving.
    Delete {
        /// Account name or id.
        account: String,
        /// Confirm: the account's tunnels, routes, pools and plugins are deleted for good.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
pub(super) enum ZoneCommand {
    /// Give an account a zone: it may then route the zone's hostnames (ZONE, *.ZONE, x.ZONE…).
    Add {
        zone: String,
        /// Account name or id.
        #[arg(long)]
        account: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List zones and the accounts that hold them.
    List {
        /// Only this account's (name or id).
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Take a zone from its account (refused while it routes hostnames, unless --force, which
    /// deletes those routes).
    Remove {
        zone: String,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
pub(super) enum TokenCommand {
    /// List API tokens (their ids and names, never the secrets).
    List {
        /// Only this account's (name or id).
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Create another API token for an account (shown once).
    Create {
        /// Account name or id.
        #[arg(long)]
        account: String,
        /// A name to tell it apart, e.g. ci.
        #[arg(long, default_value = "token")]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a token by its id (from `token list`, or the part after `burrow_`): it stops
    /// working at once.
    Revoke {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
pub(super) enum NodeTokenCommand {
    /// Create a token an edge-only node uses to follow this node's control plane (shown once).
    Create {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
pub(super) enum TunnelCommand {
    /// Create a tunnel in a tunnels file and write its credentials for the connector.
    Add(AddArgs),
}

#[derive(Args)]
pub(super) struct AddArgs {
    /// Tunnel name (unique in the file).
    name: String,
    /// The tunnels file to add to (created if missing).
    #[arg(long, env = "BURROW_TUNNELS_FILE")]
    tunnels: PathBuf,
    /// Hostname(s) to route to the tunnel (exact or *.domain).
    #[arg(long = "hostname")]
    hostnames: Vec<String>,
    /// Edge tunnel address(es) written into the credentials [default: localhost:7844].
    #[arg(long = "edge", value_name = "HOST:PORT")]
    edges: Vec<String>,
    /// Where to write <UUID>.json [default: $BURROW_HOME].
    #[arg(long)]
    credentials_dir: Option<PathBuf>,
    /// The edge's data dir, whose self-signed certificate connectors should trust [default: $BURROW_HOME/edge].
    /// Ignored with --public-pki.
    #[arg(long, env = "BURROW_EDGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The edge has a publicly trusted certificate: do not pin the self-signed one.
    #[arg(long)]
    public_pki: bool,
}

pub(super) async fn create_node_token(name: &str, store: &StoreArgs) -> Result<()> {
    let token = store.control_plane().await?.create_node_token(name).await?;
    println!("Node token (shown once, keep it secret): {token}");
    println!("Run an edge-only node with:  burrow-edge run --control-plane http://API_ADDR --node-token {token}");
    Ok(())
}

pub(super) async fn create_account(name: &str, zones: &[String], store: &StoreArgs) -> Result<()> {
    let cp = store.control_plane().await?;
    // Zones are checked before the account exists: a bad one creates nothing.
    for zone in zones {
        if let Some(held) = cp.zone_of(zone).await? {
            anyhow::bail!(
                "zone {zone}: {} is held by another account; nothing was created",
                held.zone
            );
        }
    }
    let (account, token) = cp.create_account(name).await?;
    for zone in zones {
        let zone = cp.add_zone(account.id, zone, ZoneSource::Operator).await?;
        println!("Zone {} is the account's", zone.zone);
    }
    println!("Created account {} ({})", account.name, account.id);
    println!("API token (shown once, keep it secret): {token}");
    println!("Log in with:  burrow login --api http://ADMIN_ADDR --token {token}");
    Ok(())
}

pub(super) async fn manage_accounts(command: AccountCommand) -> Result<()> {
    match command {
        AccountCommand::Create { name, zones, store } => create_account(&name, &zones, &store).await,
        AccountCommand::List { store } => {
            let cp = store.control_plane().await?;
            let mut table = plain_table(["ID", "NAME", "CREATED"]);
            for account in cp.list_accounts().await? {
                table.add_row([account.id.to_string(), account.name, rfc3339(account.created)]);
            }
            println!("{table}");
            Ok(())
        }
        AccountCommand::Delete { account, yes, store } => {
            let cp = store.control_plane().await?;
            let found = cp.find_account(&account).await?;
            anyhow::ensure!(
                yes,
                "this deletes account {} ({}) with all its tunnels, routes, pools, plugins and tokens; \
                 run again with --yes to do it",
                found.name,
                found.id
            );
            let deleted = cp.delete_account(&found.id.to_string()).await?;
            println!("Deleted account {} ({})", deleted.name, deleted.id);
            Ok(())
        }
    }
}

/// The account a listing is limited to (`--account`), and every account's name by id.
async fn account_names(
    cp: &ControlPlane,
    account: Option<String>,
) -> Result<(Option<AccountId>, std::collections::HashMap<AccountId, String>)> {
    let only = match account {
        Some(a) => Some(cp.find_account(&a).await?.id),
        None => None,
    };
    let names = cp.list_accounts().await?.into_iter().map(|a| (a.id, a.name)).collect();
    Ok((only, names))
}

/// A table printed without borders, under `header`.
fn plain_table<const N: usize>(header: [&str; N]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING).set_header(header);
    table
}

pub(super) async fn manage_tokens(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::List { account, store } => {
            let cp = store.control_plane().await?;
            let (only, names) = account_names(&cp, account).await?;
            let mut table = plain_table(["ID", "NAME", "ACCOUNT", "CREATED"]);
            for token in cp.list_tokens(only).await? {
                let account = names
                    .get(&token.account)
                    .cloned()
                    .unwrap_or_else(|| token.account.to_string());
                table.add_row([token.id, token.name, account, rfc3339(token.created)]);
            }
            println!("{table}");
            Ok(())
        }
        TokenCommand::Create { account, name, store } => {
            let cp = store.control_plane().await?;
            let account = cp.find_account(&account).await?;
            let (doc, token) = cp.create_token(account.id, &name).await?;
            println!("Created token {} ({}) for account {}", doc.id, doc.name, account.name);
            println!("API token (shown once, keep it secret): {token}");
            Ok(())
        }
        TokenCommand::Revoke { id, store } => {
            let cp = store.control_plane().await?;
            let id = crate::control::resources::token_id(&id).unwrap_or(&id).to_owned();
            let doc = cp.revoke_token(&id).await?;
            println!("Revoked token {} ({})", doc.id, doc.name);
            Ok(())
        }
    }
}

pub(super) async fn manage_zones(command: ZoneCommand) -> Result<()> {
    match command {
        ZoneCommand::Add { zone, account, store } => {
            let cp = store.control_plane().await?;
            let account = cp.find_account(&account).await?;
            let zone = cp.add_zone(account.id, &zone, ZoneSource::Operator).await?;
            println!(
                "Zone {} is account {}'s: it may route {0} and the names under it",
                zone.zone, account.name
            );
            Ok(())
        }
        ZoneCommand::List { account, store } => {
            let cp = store.control_plane().await?;
            let (only, names) = account_names(&cp, account).await?;
            let mut table = plain_table(["ZONE", "ACCOUNT", "SOURCE", "CREATED"]);
            for zone in cp.list_zones(only).await? {
                let account = names
                    .get(&zone.account)
                    .cloned()
                    .unwrap_or_else(|| zone.account.to_string());
                let source = match zone.source {
                    ZoneSource::Operator => "operator",
                    ZoneSource::Dns => "dns",
                };
                table.add_row([zone.zone, account, source.to_owned(), rfc3339(zone.created)]);
            }
            println!("{table}");
            Ok(())
        }
        ZoneCommand::Remove { zone, force, store } => {
            let cp = store.control_plane().await?;
            let removed = cp.remove_zone(None, &zone, force).await?;
            println!("Removed zone {}", removed.zone);
            Ok(())
        }
    }
}

pub(super) fn add_tunnel(args: AddArgs) -> Result<()> {
    let mut file = if args.tunnels.exists() {
        TunnelsFile::load(&args.tunnels)?
    } else {
        TunnelsFile::default()
    };
    anyhow::ensure!(
        !file.tunnels.iter().any(|t| t.name == args.name),
        "a tunnel named {:?} already exists in {}",
        args.name,
        args.tunnels.display()
    );
    // One file, one account: the file provider is for a single operator.
    let account = file.tunnels.first().map_or_else(AccountId::new_random, |t| t.account);
    let id = TunnelId::new_random();
    let secret = TunnelSecret::generate();
    file.tunnels.push(TunnelEntry {
        id,
        name: args.name.clone(),
        account,
        secret_sha256: encode_hex(&hash_secret(&secret)),
    });
    for hostname in &args.hostnames {
        file.routes.push(RouteEntry {
            hostname: hostname.clone(),
            tunnel: Some(args.name.clone()),
            pool: None,
            plugins: Vec::new(),
        });
    }
    file.to_table()
        .context("the tunnel or its routes are invalid; nothing was written")?;

    let edges = if args.edges.is_empty() {
        vec!["localhost:7844".to_owned()]
    } else {
        args.edges
    };
    let edge_ca = if args.public_pki {
        None
    } else {
        let tls = TlsIdentity::self_signed_in(&data_dir(args.data_dir), &self_signed_names(&edges))?;
        tls.self_signed_pem
    };
    let credentials = Credentials {
        account,
        tunnel_id: id,
        tunnel_name: args.name.clone(),
        secret,
        edges,
        edge_ca,
    };
    let dir = args.credentials_dir.unwrap_or_else(burrow_home);
    let path = dir.join(format!("{id}.json"));
    credentials.save(&path)?;
    file.save(&args.tunnels)?;
    println!("Created tunnel {} with id {id}", args.name);
    println!(
        "Credentials written to {} (keep it secret: it lets anyone serve this tunnel)",
        path.display()
    );
    println!(
        "Run it next to your origin:  burrow tunnel run --credentials-file {} --url http://localhost:8000",
        path.display()
    );
    println!("Reload a running edge with:  kill -HUP $(pidof burrow-edge)");
    Ok(())
}
