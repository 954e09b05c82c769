//! `burrow-edge dev`: an edge, a tunnel and a connector in one process, to try Burrow.

use super::*;

#[derive(Args)]
pub(super) struct DevArgs {
    /// Public HTTP listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The /v1 API listener (`burrow login --api http://ADDR`).
    #[arg(long, default_value = "127.0.0.1:9090")]
    api: SocketAddr,
    /// The operator's /metrics and /ready.
    #[arg(long, default_value = "127.0.0.1:9091")]
    admin: SocketAddr,
    /// Tunnel listener (UDP).
    #[arg(long, default_value = "127.0.0.1:7844")]
    tunnel: SocketAddr,
    /// Origin to serve [default: the connector's built-in hello_world page].
    #[arg(long)]
    url: Option<String>,
}

/// The dev store's directory, removed however `dev` ends.
pub(super) struct DevDir(PathBuf);

impl Drop for DevDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything in one process on loopback: an edge with its store and API, a dev account, a
/// tunnel routed from hello.localhost, and a connector serving it. Stops on Ctrl-C or SIGTERM,
/// and at once, with the error, if the edge or the connector stops by itself.
pub(super) async fn dev(args: DevArgs) -> Result<()> {
    use burrow_tunnel::ingress::{Ingress, OriginRequest, Service};
    use burrow_tunnel::origin::Origins;
    use burrow_tunnel::tunnel_client::{self, Status, TunnelOptions};

    let dir = DevDir(std::env::temp_dir().join(format!("burrow-dev-{}", uuid::Uuid::new_v4())));
    let store =
        SqliteStore::open(&dir.0.join("store.db")).map_err(|e| anyhow::anyhow!("opening the dev store: {e}"))?;
    let control = ControlPlane::new(store);
    let (account, token) = control.create_account("dev").await?;
    // The dev account routes anything under localhost (hello.localhost, app.localhost…).
    control.add_zone(account.id, "localhost", ZoneSource::Operator).await?;
    let (tunnel, secret) = control.create_tunnel(account.id, "dev").await?;
    control
        .route(account.id, "hello.localhost", RouteTo::Tunnel("dev"), false, None)
        .await?;
    // The edge starts with the tunnel in its table: the connector registers at once.
    let table = control
        .snapshot(&control.read_config().await?)
        .await?
        .to_table(None)
        .map_err(|e| anyhow::anyhow!("the dev config does not build: {e}"))?;

    let tls = TlsIdentity::generate_self_signed(&self_signed_names(&[]))?;
    let edge_ca = tls.self_signed_pem.clone();
    let bind = |addr: SocketAddr, flag: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {flag} {addr} (is another edge running?)"))
    };
    let admin = bind(args.admin, "--admin").await?;
    let api = bind(args.api, "--api").await?;
    let sockets = shards::bind(
        shards::Addresses {
            http: Some(args.http),
            https: None,
            tunnel: args.tunnel,
        },
        1,
    )?;
    let mut config = EdgeConfig::new("dev", tls);
    config.data_dir = Some(dir.0.clone());
    config.advertised_edges = vec![format!("localhost:{}", args.tunnel.port())];
    let state = EdgeState::with_control(config, Some(table), Some(control));
    let shutdown = CancellationToken::new();
    let listeners = Listeners {
        shards: sockets,
        admin: Some(admin),
        api: Some(ApiListener { tcp: api, tls: None }),
        cluster: None,
    };
    let mut edge = tokio::spawn(crate::run(state, listeners, shutdown.clone()));

    let service = match &args.url {
        Some(url) => Service::parse(url).map_err(|e| anyhow::anyhow!("--url {url}: {e}"))?,
        None => Service::HelloWorld,
    };
    let origins = Arc::new(Origins::new(
        Ingress::single(service, OriginRequest::default()),
        Default::default(),
    )?);
    let credentials = Credentials {
        account: account.id,
        tunnel_id: tunnel.id,
        tunnel_name: tunnel.name.clone(),
        secret,
        edges: vec![],
        edge_ca,
    };
    let options = TunnelOptions {
        edges: vec![format!("localhost:{}", args.tunnel.port())],
        ha_connections: 2,
        grace_period: Duration::from_secs(5),
        connector_id: burrow_protocol::ConnectorId::new_random(),
        limits: Default::default(),
        threads: 1,
    };
    let status = Arc::new(Status::default());
    let mut connector = tokio::spawn(tunnel_client::run(
        credentials,
        origins,
        options,
        status.clone(),
        // A child: the connector cancels its token when it fails, which must not stop the edge.
        shutdown.child_token(),
    ));
    println!(
        "Burrow dev: edge on http://{}, API on http://{}, tunnel \"dev\" ({})",
        args.http, args.api, tunnel.id
    );
    let ready = async {
        while status.ready_connections() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let stopped = |what: &str, result: Result<Result<()>, tokio::task::JoinError>| {
        let cause = match result {
            Ok(Ok(())) => anyhow::anyhow!("it stopped"),
            Ok(Err(e)) => e,
            Err(e) => anyhow::anyhow!(e),
        };
        cause.context(format!("the dev {what} stopped"))
    };
    tokio::select! {
        () = ready => {}
        result = &mut edge => return Err(stopped("edge", result)),
        result = &mut connector => return Err(stopped("connector", result)),
    }
    println!("Try:        curl http://hello.localhost:{}/", args.http.port());
    println!("Manage it:  burrow login --api http://{} --token {token}", args.api);
    println!("            burrow tunnel route dns dev app.localhost && burrow tunnel list");
    println!("Ctrl-C to stop (the dev store in {} is removed).", dir.0.display());
    tokio::select! {
        () = burrow_shared::signals::wait_for_signal() => {}
        result = &mut edge => {
            shutdown.cancel();
            return Err(stopped("edge", result));
        }
        result = &mut connector => {
            // Let the edge finish what it is answering (the API call that deleted the tunnel).
            shutdown.cancel();
            let _ = edge.await;
            return Err(stopped("connector", result));
        }
    }
    shutdown.cancel();
    let (edge, connector) = tokio::join!(edge, connector);
    edge??;
    connector??;
    Ok(())
}
