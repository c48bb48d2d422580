//! The cloud identity sources against local servers that implement each
//! documented protocol: the GCE/GKE metadata server, Azure IMDS and the App
//! Service identity endpoint. Each server refuses a request without the
//! protocol's required header, as the real ones do, answers with the
//! protocol's lifetime fields, and caches its token the way metadata
//! servers do (handing back the same token, its life running down, until
//! it renews). The real endpoints are not reachable from CI.

#[path = "../../agent/tests/cloud_support/mod.rs"]
mod cloud_support;

use std::time::{Duration, Instant};

use cloud_support::{
    app_service_server, gce_server, imds_server, Faults, Reply, Server, TokenCache, AZ_CLIENT_ID,
    AZ_RESOURCE, GCE_ACCOUNT, IDENTITY_HEADER,
};
use freshtoken::handle::RefreshState;
use freshtoken::source::{
    AppServiceIdentity, AzureManagedIdentity, CloudIdentityError, FetchRequest, GcpMetadata,
    TokenSource,
};
use freshtoken::{Builder, FetchErrorKind};

fn gce_source(server: &Server) -> freshtoken::source::GcpMetadataBuilder {
    GcpMetadata::builder().host(server.addr.to_string())
}

#[test]
fn gce_driver_gets_a_token_and_refreshes_it() {
    let server = gce_server(
        TokenCache::new(Duration::from_secs(4), Duration::from_secs(1)),
        Faults::default(),
    );
    let source = gce_source(&server)
        .service_account(GCE_ACCOUNT)
        .scopes([
            "https://www.googleapis.com/auth/cloud-platform",
            "https://www.googleapis.com/auth/userinfo.email",
        ])
        .build()
        .unwrap();
    let (tokens, driver) = Builder::new().spawn_thread(source).unwrap();
    let first = tokens.wait_ready(Duration::from_secs(20)).expect("a token");
    assert_eq!(first.access_token().expose_secret(), "ya29.gce-1");
    let lifetime = first
        .expires_at()
        .saturating_duration_since(first.issued_at());
    assert!(lifetime <= Duration::from_secs(4), "{lifetime:?}");
    drop(first);
    // A 4 s token is renewed before it expires: the server renews its
    // cache with less than a second left, so a later request gets -2.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokens
        .token()
        .is_some_and(|t| t.access_token().expose_secret() == "ya29.gce-1")
    {
        assert!(Instant::now() < deadline, "no refresh");
        let _ = tokens.wait_changed(Duration::from_millis(200));
    }
    assert_eq!(
        tokens.token().unwrap().access_token().expose_secret(),
        "ya29.gce-2"
    );
    driver.shutdown_blocking();
    let log = server.requests();
    for r in &log {
        assert_eq!(r.headers["metadata-flavor"], "Google");
        assert!(!r.headers.contains_key("x-forwarded-for"));
        assert_eq!(
            r.path,
            format!("/computeMetadata/v1/instance/service-accounts/{GCE_ACCOUNT}/token")
        );
        assert_eq!(
            r.query["scopes"],
            "https://www.googleapis.com/auth/cloud-platform,https://www.googleapis.com/auth/userinfo.email"
        );
    }
}

#[test]
fn gce_server_refuses_requests_without_the_header() {
    // The local server is as strict as the real one: without the header,
    // or through a proxy that adds X-Forwarded-For, 403.
    let server = gce_server(
        TokenCache::new(Duration::from_secs(3600), Duration::from_secs(300)),
        Faults::default(),
    );
    let url = format!(
        "{}/computeMetadata/v1/instance/service-accounts/default/token",
        server.base()
    );
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let bare = agent.get(&url).call().unwrap();
    assert_eq!(bare.status().as_u16(), 403);
    let proxied = agent
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .header("X-Forwarded-For", "10.0.0.1")
        .call()
        .unwrap();
    assert_eq!(proxied.status().as_u16(), 403);
    let ok = agent
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .call()
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
}

#[test]
fn gce_errors_are_classified_as_google_documents_them() {
    let faults = Faults::default();
    let server = gce_server(
        TokenCache::new(Duration::from_secs(3600), Duration::from_secs(300)),
        faults.clone(),
    );
    let source = gce_source(&server).build().unwrap();
    let fetch = || source.fetch(&FetchRequest::first());

    faults.lock().unwrap().push(Reply {
        status: 503,
        headers: vec![],
        body: "starting".into(),
    });
    let e = fetch().unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (FetchErrorKind::Transient, Some(503))
    );

    faults
        .lock()
        .unwrap()
        .push(Reply::json(429, "{}".into()).header("Retry-After", "7"));
    let e = fetch().unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::RateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));

    let unknown = gce_source(&server)
        .service_account("nobody@proj-1.iam.gserviceaccount.com")
        .build()
        .unwrap();
    let e = unknown.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (FetchErrorKind::Permanent, Some(404))
    );
    assert!(e.message().contains("no such service account"), "{e}");

    // An answer without Metadata-Flavor: Google is not the metadata server.
    let impostor = Server::start(|_| {
        Reply::json(
            200,
            r#"{"access_token":"evil","expires_in":3600,"token_type":"Bearer"}"#.into(),
        )
    });
    let e = GcpMetadata::builder()
        .host(impostor.addr.to_string())
        .build()
        .unwrap()
        .fetch(&FetchRequest::first())
        .unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Permanent);
    assert!(e.message().contains("Metadata-Flavor"), "{e}");

    let answer = fetch().unwrap();
    assert_eq!(answer.access_token.expose_secret(), "ya29.gce-1");
}

#[test]
fn gce_metadata_host_comes_from_the_environment_and_plain_http_is_confined() {
    // GCE_METADATA_HOST names the server (host:port, as Google's libraries
    // read it). Only this test sets it.
    let server = gce_server(
        TokenCache::new(Duration::from_secs(3600), Duration::from_secs(300)),
        Faults::default(),
    );
    std::env::set_var("GCE_METADATA_HOST", server.addr.to_string());
    let source = GcpMetadata::builder().build();
    std::env::remove_var("GCE_METADATA_HOST");
    let source = source.unwrap();
    assert!(source.url().starts_with(&server.base()), "{}", source.url());
    assert_eq!(
        source
            .fetch(&FetchRequest::first())
            .unwrap()
            .access_token
            .expose_secret(),
        "ya29.gce-1"
    );
    // The default is the documented address.
    assert!(GcpMetadata::builder()
        .build()
        .unwrap()
        .url()
        .starts_with("http://169.254.169.254/computeMetadata/v1/"));
    assert!(GcpMetadata::builder()
        .host("metadata.google.internal")
        .build()
        .is_ok());
    // Plain http anywhere else is refused, before any request.
    for host in ["10.0.0.1", "metadata.example.com", "169.254.169.254:8080"] {
        let err = GcpMetadata::builder().host(host).build().unwrap_err();
        assert!(
            matches!(err, CloudIdentityError::Insecure { .. }),
            "{host}: {err}"
        );
    }
    assert!(matches!(
        GcpMetadata::builder().service_account("../../x").build(),
        Err(CloudIdentityError::InvalidParameter { .. })
    ));
}

/// A token that arrives nearly expired, and that the metadata server keeps
/// handing back until it has less than a second left: the driver serves it
/// for the life it really has, asks again a handful of times, not as fast
/// as the server answers, keeps its status healthy while the server repeats
/// itself (a repeat is not a failure), and has the renewed token when it
/// comes.
#[test]
fn a_nearly_expired_cached_token_does_not_cause_a_storm() {
    let mut cache = TokenCache::new(Duration::from_secs(3600), Duration::from_secs(1));
    // "90 s left out of an hour", scaled to 6 s so the test is short.
    cache.first_left = Some(Duration::from_secs(6));
    let server = gce_server(cache, Faults::default());
    let source = gce_source(&server).build().unwrap();
    let started = Instant::now();
    // The machine's refresh floor scaled down with the token's life (the
    // default 5 s would leave room for a single repeat in 6 s).
    let floor = Duration::from_millis(500);
    let (tokens, driver) = Builder::new()
        .min_refresh_interval(floor)
        .spawn_thread(source)
        .unwrap();
    let first = tokens.wait_ready(Duration::from_secs(20)).expect("a token");
    assert_eq!(first.access_token().expose_secret(), "ya29.gce-1");
    // Its life is what the server said was left, not an hour.
    let life = first
        .expires_at()
        .saturating_duration_since(first.issued_at());
    assert!(life <= Duration::from_secs(6), "{life:?}");
    drop(first);
    // Until the renewed token comes, every status seen is healthy: the
    // server handing back its cached token is no failure to report.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut looks = 0u32;
    loop {
        let status = tokens.status();
        if tokens
            .token()
            .is_some_and(|t| t.access_token().expose_secret() == "ya29.gce-2")
        {
            break;
        }
        assert!(
            matches!(status, RefreshState::Healthy),
            "while the server repeats its token: {status:?}"
        );
        looks += 1;
        assert!(Instant::now() < deadline, "the renewed token never came");
        let _ = tokens.wait_changed(Duration::from_millis(50));
    }
    // The server did hand the first token back (more than one request
    // before the renewal), so the loop above watched the repeats.
    let before_renewal = server.requests().len() - 1;
    assert!(before_renewal >= 2, "{before_renewal} requests for gce-1");
    let renewed = tokens.token().unwrap();
    let life = renewed
        .expires_at()
        .saturating_duration_since(renewed.issued_at());
    assert!(life > Duration::from_secs(3000), "{life:?}");
    assert!(matches!(tokens.status(), RefreshState::Healthy));
    drop(renewed);
    driver.shutdown_blocking();
    let requests = server.requests().len();
    let elapsed = started.elapsed();
    // At most one request per refresh floor once the server has repeated
    // itself (plus the first, the first repeat and the renewal). Without
    // the machine's rule it asks again as soon as each repeat arrives:
    // hundreds of requests.
    let bound = 4 + (elapsed.as_millis() / floor.as_millis()) as usize;
    eprintln!(
        "{requests} requests in {elapsed:?} (bound {bound}); {before_renewal} before the \
         renewal, status looked at {looks} times"
    );
    assert!(requests <= bound, "{requests} requests in {elapsed:?}");
}

fn imds_source(server: &Server) -> freshtoken::source::AzureManagedIdentityBuilder {
    AzureManagedIdentity::builder(AZ_RESOURCE)
        .endpoint(format!("{}/metadata/identity/oauth2/token", server.base()))
}

#[test]
fn imds_driver_gets_a_token_for_a_user_assigned_identity_and_refreshes_it() {
    let server = imds_server(
        TokenCache::new(Duration::from_secs(4), Duration::from_secs(1)),
        Faults::default(),
    );
    let source = imds_source(&server)
        .client_id(AZ_CLIENT_ID)
        .unwrap()
        .build()
        .unwrap();
    let (tokens, driver) = Builder::new().spawn_thread(source).unwrap();
    let first = tokens.wait_ready(Duration::from_secs(20)).expect("a token");
    assert_eq!(first.access_token().expose_secret(), "eyJ.imds-1");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokens
        .token()
        .is_some_and(|t| t.access_token().expose_secret() == "eyJ.imds-1")
    {
        assert!(Instant::now() < deadline, "no refresh");
        let _ = tokens.wait_changed(Duration::from_millis(200));
    }
    driver.shutdown_blocking();
    for r in server.requests() {
        assert_eq!(r.headers["metadata"], "true");
        assert_eq!(r.query["resource"], AZ_RESOURCE);
        assert_eq!(r.query["client_id"], AZ_CLIENT_ID);
    }
}

#[test]
fn imds_errors_are_classified_as_azure_documents_them() {
    let faults = Faults::default();
    let server = imds_server(
        TokenCache::new(Duration::from_secs(86_400), Duration::from_secs(300)),
        faults.clone(),
    );
    let source = imds_source(&server).build().unwrap();
    let fetch = || source.fetch(&FetchRequest::first());
    let push = |r: Reply| faults.lock().unwrap().push(r);

    // 404: IMDS is updating; retried, at least a second apart.
    push(Reply::json(404, "{}".into()));
    let e = fetch().unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (FetchErrorKind::Transient, Some(404))
    );
    assert!(e.retry_after() >= Some(Duration::from_secs(1)));
    // 410: updating, back within 70 s; every 10 s.
    push(Reply::json(410, "{}".into()));
    let e = fetch().unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Transient);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(10)));
    // 429: throttled; a Retry-After longer than the floor is kept.
    push(Reply::json(429, "{}".into()).header("Retry-After", "12"));
    let e = fetch().unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::RateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(12)));
    // 5xx: transient, no sooner than a second.
    push(Reply::json(
        500,
        r#"{"error":"unknown","error_description":"Failed to retrieve token from the Active directory"}"#.into(),
    ));
    let e = fetch().unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Transient);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    // 400: an identity this VM does not have is permanent.
    let e = imds_source(&server)
        .client_id("not-assigned")
        .unwrap()
        .build()
        .unwrap()
        .fetch(&FetchRequest::first())
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (FetchErrorKind::Permanent, Some(400))
    );
    assert!(e.message().contains("Identity not found"), "{e}");

    // The server refuses a request without `Metadata: true`, as IMDS does.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let bare = agent
        .get(format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x",
            server.base()
        ))
        .call()
        .unwrap();
    assert_eq!(bare.status().as_u16(), 400);

    let answer = fetch().unwrap();
    let left = answer.expires_in.unwrap();
    assert!((86_390..=86_400).contains(&left), "{left}");

    // Naming the identity twice is an error; plain http only to IMDS.
    assert!(AzureManagedIdentity::builder(AZ_RESOURCE)
        .client_id("a")
        .unwrap()
        .object_id("b")
        .is_err());
    assert!(AzureManagedIdentity::builder(AZ_RESOURCE).build().is_ok());
    let err = AzureManagedIdentity::builder(AZ_RESOURCE)
        .endpoint("http://169.254.169.253/metadata/identity/oauth2/token")
        .build()
        .unwrap_err();
    assert!(matches!(err, CloudIdentityError::Insecure { .. }), "{err}");
}

#[test]
fn app_service_driver_takes_the_lifetime_from_expires_on_and_refreshes() {
    let server = app_service_server(TokenCache::new(
        Duration::from_secs(5),
        Duration::from_secs(1),
    ));
    let endpoint = format!("{}/msi/token", server.base());
    let source = AppServiceIdentity::builder(&endpoint, IDENTITY_HEADER, AZ_RESOURCE)
        .build()
        .unwrap();
    assert!(!format!("{source:?}").contains(IDENTITY_HEADER));
    let (tokens, driver) = Builder::new().spawn_thread(source).unwrap();
    let first = tokens.wait_ready(Duration::from_secs(20)).expect("a token");
    assert_eq!(first.access_token().expose_secret(), "eyJ.appsvc-1");
    // expires_on is whole seconds: the life is at most the 5 s, and not
    // the lifetime policy's 300 s default.
    let life = first
        .expires_at()
        .saturating_duration_since(first.issued_at());
    assert!(
        life <= Duration::from_secs(5) && life >= Duration::from_secs(3),
        "{life:?}"
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokens
        .token()
        .is_some_and(|t| t.access_token().expose_secret() == "eyJ.appsvc-1")
    {
        assert!(Instant::now() < deadline, "no refresh");
        let _ = tokens.wait_changed(Duration::from_millis(200));
    }
    driver.shutdown_blocking();
    for r in server.requests() {
        assert_eq!(r.headers["x-identity-header"], IDENTITY_HEADER);
        assert_eq!(r.query["api-version"], "2019-08-01");
        assert_eq!(r.query["resource"], AZ_RESOURCE);
    }

    // A wrong identity header is refused (permanent), and never shown.
    let wrong = AppServiceIdentity::builder(&endpoint, "stale-header-value", AZ_RESOURCE)
        .build()
        .unwrap();
    let e = wrong.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (FetchErrorKind::Permanent, Some(401))
    );
    assert!(!format!("{e} {e:?}").contains("stale-header-value"));

    // Plain http to loopback or a link-local address only.
    assert!(
        AppServiceIdentity::builder("http://169.254.255.2:8081/msi/token", "h", "r")
            .build()
            .is_ok()
    );
    let err = AppServiceIdentity::builder("http://172.16.0.9:8081/msi/token", "h", "r")
        .build()
        .unwrap_err();
    assert!(matches!(err, CloudIdentityError::Insecure { .. }), "{err}");
}
