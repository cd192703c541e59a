//! Keys, limits, budgets and usage (docs/contract.md §14): `proxy keys` and `proxy usage`,
//! authentication by key on every ingress, per-key limits with reservations,
//! usage metering (streams included) and the SQLite ledger. Each test is named
//! after what it proves.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::gateway::InProcess;
use crate::support::http::{Served, health, metrics_text, read_to_end, read_until};
use crate::support::upstream::{Behaviour, Upstream};
use crate::support::{PATIENCE, TestHome, client, run, sse_data, text};

/// `proxy keys create NAME ARGS --json`: the secret.
fn create_key(home: &TestHome, name: &str, args: &[&str]) -> String {
    let mut all = vec!["keys", "create", name, "--json"];
    all.extend_from_slice(args);
    let out = run("proxy", home, &all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["key"].as_str().unwrap().to_string()
}

fn chat_body(stream: bool) -> Value {
    json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hello there"}],
           "stream": stream, "max_tokens": 16})
}

async fn chat_as(server: &impl Served, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

/// Every row of the ledger: (key, route, status, input, output).
fn ledger_rows(home: &TestHome) -> Vec<(String, String, i64, i64, i64)> {
    let path = home.file("data/usage.db");
    if !path.exists() {
        return Vec::new();
    }
    // The writer may be creating the file: a failed read is read again.
    let read = || -> rusqlite::Result<Vec<_>> {
        let conn = rusqlite::Connection::open(&path)?;
        let mut stmt = conn.prepare(
            "SELECT key, route, status, input_tokens, output_tokens FROM usage ORDER BY rowid",
        )?;
        stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect()
    };
    read().unwrap_or_default()
}

/// Waits until the ledger holds `n` rows (they are written in batches).
async fn wait_rows(home: &TestHome, n: usize) -> Vec<(String, String, i64, i64, i64)> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rows = ledger_rows(home);
        if rows.len() >= n {
            return rows;
        }
        assert!(Instant::now() < deadline, "ledger rows: {rows:?}, want {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn keys_create_prints_the_secret_once_and_the_file_keeps_only_its_hash() {
    let home = TestHome::new();
    let secret = create_key(
        &home,
        "alice",
        &["--rpm", "60", "--models", "gpt-5,gpt-5-*"],
    );
    assert!(secret.starts_with("wk-") && secret.len() > 40, "{secret}");
    let file = home.read("keys.toml");
    assert!(
        !file.contains(&secret),
        "keys.toml holds the secret: {file}"
    );
    assert!(
        file.contains(&warden::keys::file::hash_secret(&secret)),
        "{file}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(home.file("keys.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second key of the same name is refused, naming the file.
    let out = run("proxy", &home, &["keys", "create", "alice"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("keys.toml"),
        "{}",
        text(&out.stderr)
    );
    // list --json: the contract's fields, and never the secret.
    let out = run("proxy", &home, &["keys", "list", "--json"]);
    assert!(out.status.success());
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let alice = &list[0];
    for field in [
        "name",
        "models",
        "rpm",
        "tpm",
        "max_parallel",
        "budget_tokens",
        "budget_usd",
        "period",
        "expires",
        "created",
        "last_used",
        "revoked",
        "spent_tokens",
        "spent_usd",
    ] {
        assert!(alice.get(field).is_some(), "{field} missing: {alice}");
    }
    assert_eq!(alice["rpm"], 60);
    assert_eq!(alice["revoked"], false);
    assert!(!text(&out.stdout).contains(&secret));
}

#[test]
fn a_bad_keys_file_is_an_error_naming_the_file_the_key_and_the_line() {
    let home = TestHome::new();
    home.write("keys.toml", "[[key]]\nname = \"bob\"\nsha256 = \"0000\"\n");
    let out = run("proxy", &home, &["keys", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("keys.toml:2:") && err.contains("sha256"),
        "{err}"
    );
}

#[tokio::test]
async fn a_key_is_required_once_one_exists_and_the_operator_token_still_works() {
    let home = TestHome::new();
    let gw = InProcess::start(&home, &[("WARDEN_AUTH_TOKEN", "operator-secret")]);
    // No key yet: the operator token alone is the door.
    assert_eq!(
        chat_as(&gw, Some("operator-secret"), &chat_body(false))
            .await
            .status(),
        200
    );
    assert_eq!(chat_as(&gw, None, &chat_body(false)).await.status(), 401);
    let secret = create_key(&home, "alice", &[]);
    let deadline = Instant::now() + PATIENCE;
    while chat_as(&gw, Some(&secret), &chat_body(false))
        .await
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "the new key never worked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = chat_as(&gw, Some("wk-not-a-key"), &chat_body(false)).await;
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    // The operator's token keeps working, recorded as key "-".
    assert_eq!(
        chat_as(&gw, Some("operator-secret"), &chat_body(false))
            .await
            .status(),
        200
    );
    let rows = wait_rows(&home, 2).await;
    assert!(rows.iter().any(|r| r.0 == "-" && r.2 == 200), "{rows:?}");
    assert!(
        rows.iter().any(|r| r.0 == "alice" && r.2 == 200),
        "{rows:?}"
    );
}

#[tokio::test]
async fn a_key_revoked_while_a_client_loops_is_refused_within_a_second() {
    let home = TestHome::new();
    let secret = create_key(&home, "looper", &[]);
    let gw = InProcess::start(&home, &[]);
    assert_eq!(
        chat_as(&gw, Some(&secret), &chat_body(false))
            .await
            .status(),
        200
    );
    let out = run("proxy", &home, &["keys", "revoke", "looper"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let revoked_at = Instant::now();
    loop {
        let status = chat_as(&gw, Some(&secret), &chat_body(false))
            .await
            .status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "a revoked key was still served after 1 s"
        );
    }
    // Revoking the last key never opens the gateway.
    assert_eq!(chat_as(&gw, None, &chat_body(false)).await.status(), 401);
    // Rotation: the new secret works, the old one never again.
    let out = run("proxy", &home, &["keys", "rotate", "looper", "--json"]);
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_secret = rotated["key"].as_str().unwrap().to_string();
    let deadline = Instant::now() + PATIENCE;
    while chat_as(&gw, Some(&new_secret), &chat_body(false))
        .await
        .status()
        != 200
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        chat_as(&gw, Some(&secret), &chat_body(false))
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn a_model_outside_the_keys_patterns_is_403_model_not_allowed_with_a_ledger_row() {
    let home = TestHome::new();
    let secret = create_key(&home, "narrow", &["--models", "gpt-5-*"]);
    let gw = InProcess::start(&home, &[]);
    let refused = chat_as(&gw, Some(&secret), &chat_body(false)).await;
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_allowed");
    let mut ok = chat_body(false);
    ok["model"] = json!("gpt-5-codex");
    assert_eq!(chat_as(&gw, Some(&secret), &ok).await.status(), 200);
    let rows = wait_rows(&home, 2).await;
    assert_eq!(rows[0].2, 403);
    assert_eq!((rows[0].3, rows[0].4), (0, 0), "a refusal has no tokens");
}

#[tokio::test]
async fn rpm_beyond_the_limit_is_429_rate_limit_exceeded_with_retry_after_and_ratelimit_headers() {
    let home = TestHome::new();
    let secret = create_key(&home, "slow", &["--rpm", "2", "--tpm", "100000"]);
    let gw = InProcess::start(&home, &[]);
    let first = chat_as(&gw, Some(&secret), &chat_body(false)).await;
    assert_eq!(first.status(), 200);
    let h = first.headers();
    assert_eq!(h["x-ratelimit-limit-requests"], "2");
    assert_eq!(h["x-ratelimit-remaining-requests"], "1");
    assert!(h.contains_key("x-ratelimit-reset-requests"));
    assert_eq!(h["x-ratelimit-limit-tokens"], "100000");
    assert!(h.contains_key("x-ratelimit-remaining-tokens"));
    assert_eq!(
        chat_as(&gw, Some(&secret), &chat_body(false))
            .await
            .status(),
        200
    );
    let third = chat_as(&gw, Some(&secret), &chat_body(false)).await;
    assert_eq!(third.status(), 429);
    let retry: u64 = third.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // The refusal carries the key's figures too: no request left this minute.
    let h = third.headers();
    assert_eq!(h["x-ratelimit-limit-requests"], "2");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    assert!(
        h["x-ratelimit-reset-requests"]
            .to_str()
            .unwrap()
            .ends_with('s')
    );
    assert_eq!(h["x-ratelimit-limit-tokens"], "100000");
    assert!(h.contains_key("x-ratelimit-remaining-tokens"));
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
}

/// Every 429 a key earns (max_parallel, tpm, insufficient_quota) carries
/// `Retry-After` and the `x-ratelimit-*` headers of the limits the key has, in
/// OpenAI's shape on /v1/chat/completions and in Anthropic's on /v1/messages.
#[tokio::test]
async fn every_429_of_a_key_carries_retry_after_and_its_ratelimit_headers() {
    let upstream = Upstream::start(Behaviour::StallStream);
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{}\"\nattempts = 1\n",
        upstream.url()
    ));
    let parallel = create_key(&home, "parallel", &["--max-parallel", "1", "--rpm", "50"]);
    let tokens = create_key(&home, "tokens", &["--tpm", "30"]);
    let budget = create_key(
        &home,
        "budget",
        &["--budget-tokens", "30", "--period", "day", "--rpm", "40"],
    );
    let gw = InProcess::start(&home, &[]);
    let check = |r: &reqwest::Response, code: &str, want: &[(&str, &str)]| {
        assert_eq!(r.status(), 429, "{code}");
        let h = r.headers();
        let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry >= 1, "{code}: Retry-After {retry}");
        for (name, value) in want {
            assert_eq!(h[*name], *value, "{code}: {name} in {h:?}");
        }
        for kind in ["requests", "tokens"] {
            let has = want.iter().any(|(n, _)| n.ends_with(kind));
            for part in ["limit", "remaining", "reset"] {
                let name = format!("x-ratelimit-{part}-{kind}");
                assert_eq!(h.contains_key(&name), has, "{code}: {name} in {h:?}");
            }
        }
    };
    // max_parallel: one stream holds the only slot.
    let mut streaming = chat_as(&gw, Some(&parallel), &chat_body(true)).await;
    assert_eq!(streaming.status(), 200);
    read_until(&mut streaming, "first").await;
    let r = chat_as(&gw, Some(&parallel), &chat_body(true)).await;
    check(
        &r,
        "max_parallel",
        &[
            ("x-ratelimit-limit-requests", "50"),
            ("x-ratelimit-remaining-requests", "49"),
        ],
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // The same refusal on /v1/messages, in Anthropic's shape, same headers.
    let r = client()
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", &parallel)
        .json(&json!({"model": "gpt-5", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    check(
        &r,
        "max_parallel on /v1/messages",
        &[
            ("x-ratelimit-limit-requests", "50"),
            ("x-ratelimit-remaining-requests", "49"),
        ],
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    drop(streaming);
    // tpm: the first request's tokens fill the window.
    let big = json!({"model": "gpt-5", "messages": [{"role": "user", "content": "x".repeat(200)}],
                     "max_tokens": 16, "stream": true});
    let mut first = chat_as(&gw, Some(&tokens), &big).await;
    assert_eq!(first.status(), 200);
    read_until(&mut first, "first").await;
    let r = chat_as(&gw, Some(&tokens), &chat_body(false)).await;
    check(
        &r,
        "tpm",
        &[
            ("x-ratelimit-limit-tokens", "30"),
            ("x-ratelimit-remaining-tokens", "0"),
        ],
    );
    // insufficient_quota: 27 reserved of 30 leaves no room for a second.
    let mut held = chat_as(&gw, Some(&budget), &chat_body(true)).await;
    assert_eq!(held.status(), 200);
    read_until(&mut held, "first").await;
    let r = chat_as(&gw, Some(&budget), &chat_body(true)).await;
    check(
        &r,
        "insufficient_quota",
        &[
            ("x-ratelimit-limit-requests", "40"),
            ("x-ratelimit-remaining-requests", "39"),
        ],
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
    drop(held);
}

/// A metered answer carries the key's `x-ratelimit-*` headers on every route:
/// chat, responses, messages, embeddings, completions and pass-through.
#[tokio::test]
async fn metered_answers_carry_ratelimit_headers_on_every_route() {
    async fn images() -> axum::Json<Value> {
        axum::Json(json!({"created": 1, "data": [{"url": "https://example.invalid/x.png"}]}))
    }
    let app = axum::Router::new().route("/v1/images/generations", axum::routing::post(images));
    let images_url = format!("http://{}/v1", crate::support::prompt_server::serve(app));
    let home = TestHome::new();
    home.config(&format!(
        "[[providers]]\nname = \"mock\"\nurl = \"mock\"\nmodels = [\"*\"]\n\n\
         [[providers]]\nname = \"img\"\nurl = \"{images_url}\"\npassthrough = true\nmodels = [\"dall-e-*\"]\n"
    ));
    let secret = create_key(&home, "headers", &["--rpm", "100", "--tpm", "1000000"]);
    let gw = InProcess::start(&home, &[]);
    let calls = [
        ("/v1/chat/completions", chat_body(false)),
        ("/v1/chat/completions", chat_body(true)),
        ("/v1/responses", json!({"model": "gpt-5", "input": "hello"})),
        (
            "/v1/responses",
            json!({"model": "gpt-5", "input": "hello", "stream": true}),
        ),
        (
            "/v1/messages",
            json!({"model": "gpt-5", "max_tokens": 20,
                   "messages": [{"role": "user", "content": "hello"}]}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "hello"}),
        ),
        (
            "/v1/completions",
            json!({"model": "gpt-5", "prompt": "hello", "max_tokens": 5}),
        ),
        (
            "/v1/images/generations",
            json!({"model": "dall-e-3", "prompt": "a cat"}),
        ),
    ];
    for (i, (path, body)) in calls.iter().enumerate() {
        let r = client()
            .post(format!("{}{path}", gw.url))
            .bearer_auth(&secret)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        let _ = r.bytes().await.unwrap();
        assert_eq!(h["x-ratelimit-limit-requests"], "100", "{path}: {h:?}");
        assert_eq!(
            h["x-ratelimit-remaining-requests"],
            (99 - i).to_string().as_str(),
            "{path}: {h:?}"
        );
        assert!(
            h["x-ratelimit-reset-requests"]
                .to_str()
                .unwrap()
                .ends_with('s')
        );
        assert_eq!(h["x-ratelimit-limit-tokens"], "1000000", "{path}: {h:?}");
        let remaining: u64 = h["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(remaining < 1_000_000, "{path}: {h:?}");
        assert!(h.contains_key("x-ratelimit-reset-tokens"), "{path}: {h:?}");
    }
}

/// LiteLLM #34732: budget checks and spend records as separate steps let a burst overspend.
#[tokio::test]
async fn a_burst_of_50_concurrent_requests_admits_only_what_fits_the_budget() {
    let upstream = Upstream::start(Behaviour::Gated);
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{}\"\nattempts = 1\n",
        upstream.url()
    ));
    // Each request reserves 16 output tokens plus its input estimate
    // (the messages' 41 bytes / 4 = 11): 27. A budget of 100 fits 3.
    let secret = create_key(
        &home,
        "burst",
        &["--budget-tokens", "100", "--period", "day"],
    );
    let gw = InProcess::start(&home, &[]);
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (url, secret, refused) = (gw.url.clone(), secret.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let r = client()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(secret)
                .json(&chat_body(false))
                .send()
                .await
                .unwrap();
            if r.status() == 429 {
                refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            r
        }));
    }
    // Every request is decided (refused, or waiting at the upstream) before
    // any admitted one ends and gives back the rest of its reservation.
    let deadline = Instant::now() + PATIENCE;
    while upstream.state.hits() + refused.load(std::sync::atomic::Ordering::SeqCst) < 50 {
        assert!(Instant::now() < deadline, "the burst was never decided");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Notify permits do not add up: release until every answer is back.
    let state = upstream.state.clone();
    let releaser = tokio::spawn(async move {
        loop {
            state.release();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap().status().as_u16());
    }
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let quota = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((ok, quota), (3, 47), "{statuses:?}");
    releaser.abort();
    assert_eq!(upstream.state.hits(), 3);
    // What was spent (the upstream reports 5 + 2 a request) is within the budget.
    let rows = wait_rows(&home, 50).await;
    let spent: i64 = rows.iter().map(|r| r.3 + r.4).sum();
    assert_eq!(spent, 21);
}

/// LiteLLM #36926: reservations never released, so budgets fail early.
#[tokio::test]
async fn reservations_are_released_when_requests_end_so_a_budget_is_not_exhausted_early() {
    let upstream = Upstream::start(Behaviour::Fast);
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{}\"\nattempts = 1\n",
        upstream.url()
    ));
    // One reservation (27) fits, two do not; each request spends 7.
    let secret = create_key(&home, "tight", &["--budget-tokens", "45"]);
    let gw = InProcess::start(&home, &[]);
    for i in 0..3 {
        let r = chat_as(&gw, Some(&secret), &chat_body(false)).await;
        assert_eq!(r.status(), 200, "request {i}");
    }
    // 21 spent: the next reservation of 27 no longer fits.
    let r = chat_as(&gw, Some(&secret), &chat_body(false)).await;
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
}

/// LiteLLM #20256: a parallel-request counter never decremented after a
/// cancelled call locks a key out.
#[tokio::test]
async fn the_parallel_slot_is_given_back_when_a_client_cancels_its_stream() {
    let upstream = Upstream::start(Behaviour::StallStream);
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{}\"\nattempts = 1\n",
        upstream.url()
    ));
    let secret = create_key(&home, "single", &["--max-parallel", "1"]);
    let gw = InProcess::start(&home, &[]);
    let mut streaming = chat_as(&gw, Some(&secret), &chat_body(true)).await;
    assert_eq!(streaming.status(), 200);
    read_until(&mut streaming, "first").await;
    // While it streams, a second is refused.
    let second = chat_as(&gw, Some(&secret), &chat_body(true)).await;
    assert_eq!(second.status(), 429);
    drop(streaming);
    // Once the client is gone, the slot comes back.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = chat_as(&gw, Some(&secret), &chat_body(true)).await;
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// LiteLLM #37923: streams at zero cost. The usage warden asks for is charged,
/// and the chunk is hidden from a client that did not ask.
#[tokio::test]
async fn a_stream_is_charged_the_providers_usage_and_the_usage_chunk_is_hidden() {
    let upstream = Upstream::start(Behaviour::GatedStream);
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{}\"\nattempts = 1\n\n[prices]\n\"gpt-5\" = {{ input = 1.0, output = 10.0 }}\n",
        upstream.url()
    ));
    let secret = create_key(&home, "streamer", &[]);
    let gw = InProcess::start(&home, &[]);
    let mut r = chat_as(&gw, Some(&secret), &chat_body(true)).await;
    let first = read_until(&mut r, "first").await;
    upstream.state.release();
    let body = read_to_end(&mut r, first).await;
    assert!(body.contains("[DONE]"), "{body}");
    assert!(
        !body.contains("\"usage\""),
        "the client did not ask for usage: {body}"
    );
    let sent: Value =
        serde_json::from_slice(upstream.state.bodies.lock().unwrap().last().unwrap()).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let rows = wait_rows(&home, 1).await;
    assert_eq!((rows[0].3, rows[0].4), (4, 2), "{rows:?}");
    let conn = rusqlite::Connection::open(home.file("data/usage.db")).unwrap();
    let cost: f64 = conn
        .query_row("SELECT cost_usd FROM usage", [], |r| r.get(0))
        .unwrap();
    assert!((cost - 0.000024).abs() < 1e-12, "{cost}");
}

/// Bifrost #3357: cancelled streams recorded at zero cost.
#[tokio::test]
async fn a_stream_cut_short_is_charged_what_was_streamed_never_zero() {
    let upstream = Upstream::start(Behaviour::DropMidStream);
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{}\"\nattempts = 1\n",
        upstream.url()
    ));
    let secret = create_key(&home, "cut", &[]);
    let gw = InProcess::start(&home, &[]);
    let mut r = chat_as(&gw, Some(&secret), &chat_body(true)).await;
    let first = read_until(&mut r, "partial").await;
    upstream.state.release();
    let _ = read_to_end(&mut r, first).await;
    let rows = wait_rows(&home, 1).await;
    // "partial" (7 bytes) is 2 tokens; the input estimate is the messages' bytes / 4.
    assert_eq!(rows[0].4, 2, "{rows:?}");
    assert!(rows[0].3 > 0, "{rows:?}");
}

/// LiteLLM #38176: /v1/responses and /v1/messages traffic never counted.
#[tokio::test]
async fn responses_and_messages_are_metered_like_chat() {
    let home = TestHome::new();
    let secret = create_key(&home, "multi", &[]);
    let gw = InProcess::start(&home, &[]);
    let r = client()
        .post(format!("{}/v1/responses", gw.url))
        .bearer_auth(&secret)
        .json(&json!({"model": "gpt-5", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", &secret)
        .json(&json!({"model": "gpt-5", "max_tokens": 20,
                      "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let refused = client()
        .post(format!("{}/v1/messages", gw.url))
        .json(&json!({"model": "gpt-5", "max_tokens": 20,
                      "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["type"], "error", "Anthropic's shape: {body}");
    let rows = wait_rows(&home, 2).await;
    let routes: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(routes, ["/v1/responses", "/v1/messages"]);
    assert!(
        rows.iter().all(|r| r.0 == "multi" && r.3 + r.4 > 0),
        "{rows:?}"
    );
}

#[tokio::test]
async fn proxy_usage_totals_equal_the_upstreams_reported_tokens_exactly() {
    let upstream = Upstream::start(Behaviour::Fast);
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{}\"\nattempts = 1\n",
        upstream.url()
    ));
    let a = create_key(&home, "a", &[]);
    let b = create_key(&home, "b", &["--models", "other"]);
    let gw = InProcess::start(&home, &[]);
    for _ in 0..4 {
        assert_eq!(
            chat_as(&gw, Some(&a), &chat_body(false)).await.status(),
            200
        );
    }
    assert_eq!(
        chat_as(&gw, Some(&b), &chat_body(false)).await.status(),
        403
    );
    wait_rows(&home, 5).await;
    let out = run("proxy", &home, &["usage", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rows,
        json!([
            {"key": "a", "requests": 4, "refused": 0, "input_tokens": 20, "cached_tokens": 0,
             "output_tokens": 8, "cost_usd": 0.0},
            {"key": "b", "requests": 0, "refused": 1, "input_tokens": 0, "cached_tokens": 0,
             "output_tokens": 0, "cost_usd": 0.0}
        ])
    );
    let out = run(
        "proxy",
        &home,
        &["usage", "--by", "model", "--csv", "--key", "a"],
    );
    assert_eq!(
        text(&out.stdout),
        "model,requests,refused,input_tokens,cached_tokens,output_tokens,cost_usd\ngpt-5,4,0,20,0,8,0.0\n"
    );
    // The table: every column lined up under its heading.
    let out = run("proxy", &home, &["usage"]);
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines.iter().all(|line| line.len() == lines[0].len()),
        "aligned: {table}"
    );
    let out = run(
        "proxy",
        &home,
        &["usage", "--since", "2999-01-01", "--json"],
    );
    assert_eq!(text(&out.stdout).trim(), "[]");
}

/// LiteLLM #30670: keys leaking into logs on errors. The secret appears
/// nowhere in the home but as its hash, nor in /health, /metrics or /ui.
#[tokio::test]
async fn the_secret_appears_nowhere_but_as_its_hash() {
    let home = TestHome::new();
    let secret = create_key(&home, "quiet", &["--rpm", "1"]);
    let proxy = crate::support::Proxy::start(&home, &[], &[]);
    assert_eq!(
        chat_as(&proxy, Some(&secret), &chat_body(false))
            .await
            .status(),
        200
    );
    assert_eq!(
        chat_as(&proxy, Some(&secret), &chat_body(false))
            .await
            .status(),
        429
    );
    let mut wrong = secret.clone();
    wrong.push('x');
    assert_eq!(
        chat_as(&proxy, Some(&wrong), &chat_body(false))
            .await
            .status(),
        401
    );
    let pages = [
        health(&proxy).await.to_string(),
        metrics_text(&proxy).await,
        crate::support::http::get_text(&format!("{}/ui", proxy.url)).await,
    ];
    for page in &pages {
        assert!(!page.contains(&secret[3..]), "a page shows the key: {page}");
    }
    wait_rows(&home, 2).await;
    let mut files = vec![home.path().to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        let hay = String::from_utf8_lossy(&bytes);
        assert!(
            !hay.contains(&secret[3..]),
            "{} holds the secret",
            path.display()
        );
    }
}

/// LiteLLM #7129: a budget period that never resets. Spend before this
/// period's start (in the ledger from an earlier day) does not count.
#[tokio::test]
async fn spend_of_an_earlier_period_does_not_count_against_this_one() {
    let home = TestHome::new();
    let secret = create_key(
        &home,
        "daily",
        &["--budget-tokens", "100", "--period", "day"],
    );
    // Yesterday the key spent far past its budget.
    let conn = warden::keys::ledger::open(&home.file("data/usage.db")).unwrap();
    let yesterday = warden::keys::ledger::rfc3339(
        warden::keys::period::Period::Day.start(warden::keys::now_millis() / 1000) - 3600,
    );
    conn.execute(
        "INSERT INTO usage (time, key, ingress, route, status, input_tokens, output_tokens,
         cached_tokens, cost_usd, duration_ms) VALUES (?1, 'daily', 'http', '/v1/chat/completions',
         200, 5000, 5000, 0, 0, 1)",
        [yesterday],
    )
    .unwrap();
    drop(conn);
    let gw = InProcess::start(&home, &[]);
    assert_eq!(
        chat_as(&gw, Some(&secret), &chat_body(false))
            .await
            .status(),
        200
    );
    // Today's spend is counted: after it, a budget of 100 is spent by reservations
    // that do not fit.
    let out = run("proxy", &home, &["keys", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list[0]["spent_tokens"].as_u64().unwrap() < 100, "{list}");
}

#[tokio::test]
async fn health_reports_the_active_keys_and_the_ledger() {
    let home = TestHome::new();
    let gw = InProcess::start(&home, &[]);
    assert!(health(&gw).await.get("keys").is_none_or(Value::is_null));
    create_key(&home, "one", &[]);
    create_key(&home, "two", &[]);
    let out = run("proxy", &home, &["keys", "revoke", "two"]);
    assert!(out.status.success());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let report = health(&gw).await;
        if report["keys"] == json!({"count": 1, "ledger": "ok"}) {
            break;
        }
        assert!(Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_count_requests_and_tokens_per_key_name() {
    let home = TestHome::new();
    let secret = create_key(&home, "metered", &[]);
    let gw = InProcess::start(&home, &[]);
    assert_eq!(
        chat_as(&gw, Some(&secret), &chat_body(false))
            .await
            .status(),
        200
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = metrics_text(&gw).await;
        if text.contains("warden_key_requests_total{key=\"metered\"} 1") {
            assert!(text.contains("warden_key_tokens_total{key=\"metered\",direction=\"output\"}"));
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = sse_data("");
}

/// A NATS request: `Authorization` header when `auth` is given; retried while
/// no proxy has subscribed yet.
async fn nats_chat(nc: &async_nats::Client, auth: Option<&str>) -> async_nats::Message {
    let body = bytes::Bytes::from(chat_body(false).to_string());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(auth) = auth {
            headers.insert("Authorization", auth);
        }
        let sent = tokio::time::timeout(
            PATIENCE,
            nc.request_with_headers("warden.chat", headers, body.clone()),
        )
        .await
        .expect("a NATS reply in time");
        match sent {
            Ok(message) => return message,
            Err(e) => {
                assert!(Instant::now() < deadline, "NATS request failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_requests_need_a_key_bearer_or_bare_and_are_metered() {
    let nats = crate::support::nats::NatsServer::start();
    let home = TestHome::new();
    home.config(&format!("[nats]\nurl = \"{}\"\n", nats.url()));
    let secret = create_key(&home, "natsy", &[]);
    let gw = InProcess::start(&home, &[]);
    let deadline = Instant::now() + PATIENCE;
    while health(&gw).await["nats"]["state"] != "connected" {
        assert!(Instant::now() < deadline, "NATS never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let nc = nats.client().await;
    let code = |m: &async_nats::Message| {
        m.headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map(|v| v.as_str().to_string())
    };
    let refused = nats_chat(&nc, None).await;
    assert_eq!(code(&refused).as_deref(), Some("401"));
    let body: Value = serde_json::from_slice(&refused.payload).unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let bearer = nats_chat(&nc, Some(&format!("Bearer {secret}"))).await;
    assert_eq!(code(&bearer), None, "{:?}", bearer.payload);
    let bare = nats_chat(&nc, Some(&secret)).await;
    assert_eq!(code(&bare), None);
    let rows = wait_rows(&home, 2).await;
    assert!(
        rows.iter()
            .all(|r| r.0 == "natsy" && r.2 == 200 && r.3 + r.4 > 0),
        "{rows:?}"
    );
    let conn = rusqlite::Connection::open(home.file("data/usage.db")).unwrap();
    let ingress: String = conn
        .query_row("SELECT DISTINCT ingress FROM usage", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ingress, "nats");
}

/// Bifrost #2873: pass-through routes that skip governance. Embeddings,
/// legacy completions and pass-through need the key and are metered.
#[tokio::test]
async fn embeddings_completions_and_pass_through_need_the_key_and_are_metered() {
    async fn images() -> axum::Json<Value> {
        axum::Json(json!({"created": 1, "data": [{"url": "https://example.invalid/x.png"}]}))
    }
    let app = axum::Router::new().route("/v1/images/generations", axum::routing::post(images));
    let images_url = format!("http://{}/v1", crate::support::prompt_server::serve(app));
    let home = TestHome::new();
    home.config(&format!(
        "[[providers]]\nname = \"mock\"\nurl = \"mock\"\nmodels = [\"*\"]\n\n\
         [[providers]]\nname = \"img\"\nurl = \"{images_url}\"\npassthrough = true\nmodels = [\"dall-e-*\", \"gpt-image-*\"]\n"
    ));
    let secret = create_key(
        &home,
        "everything",
        &["--models", "gpt-5,text-embedding-*,dall-e-*"],
    );
    let gw = InProcess::start(&home, &[]);
    let calls = [
        (
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "hello"}),
        ),
        (
            "/v1/completions",
            json!({"model": "gpt-5", "prompt": "hello", "max_tokens": 5}),
        ),
        (
            "/v1/images/generations",
            json!({"model": "dall-e-3", "prompt": "a cat"}),
        ),
    ];
    for (path, body) in &calls {
        let without = client()
            .post(format!("{}{path}", gw.url))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(without.status(), 401, "{path} without a key");
        let with = client()
            .post(format!("{}{path}", gw.url))
            .bearer_auth(&secret)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(with.status(), 200, "{path}: {}", with.text().await.unwrap());
    }
    // A pass-through model outside the key's patterns is refused too.
    let refused = client()
        .post(format!("{}/v1/images/generations", gw.url))
        .bearer_auth(&secret)
        .json(&json!({"model": "gpt-image-1", "prompt": "a cat"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let rows = wait_rows(&home, 4).await;
    let answered: Vec<_> = rows.iter().filter(|r| r.2 == 200).collect();
    assert_eq!(answered.len(), 3, "{rows:?}");
    assert!(
        answered.iter().all(|r| r.0 == "everything" && r.3 > 0),
        "{rows:?}"
    );
    assert_eq!(
        answered.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
        [
            "/v1/embeddings",
            "/v1/completions",
            "/v1/images/generations"
        ]
    );
}

#[test]
fn doctor_tightens_keys_toml_and_moves_a_corrupt_ledger_aside_and_preflight_checks_both() {
    use std::os::unix::fs::PermissionsExt;
    let home = TestHome::new();
    create_key(&home, "doc", &[]);
    std::fs::set_permissions(
        home.file("keys.toml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    home.write(
        "data/usage.db",
        "this is not a database, it is a note\n"
            .repeat(200)
            .as_str(),
    );
    let out = run("preflight", &home, &["--only", "config", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["checks"][0]["status"], "warn", "{report}");
    assert!(
        report["checks"][0]["message"]
            .as_str()
            .unwrap()
            .contains("keys.toml")
    );
    let out = run("doctor", &home, &[]);
    let said = text(&out.stdout);
    assert!(
        said.contains("keys.toml") && said.contains("0600"),
        "{said}"
    );
    assert!(said.contains("usage.db.corrupt-"), "{said}");
    let mode = std::fs::metadata(home.file("keys.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!home.file("data/usage.db").exists());
    let aside = std::fs::read_dir(home.file("data"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("usage.db.corrupt-")
        });
    assert!(aside, "the corrupt ledger is kept aside");
    // A key file that does not parse fails `config`, naming the file and line.
    home.write("keys.toml", "[[key]]\nname = \"x\"\nsha256 = 12\n");
    let out = run("preflight", &home, &["--only", "config", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["checks"][0]["status"], "fail", "{report}");
    assert!(
        report["checks"][0]["message"]
            .as_str()
            .unwrap()
            .contains("keys.toml:3:"),
        "{report}"
    );
}

/// Every answered request has its ledger row, through `daemon restart` under
/// load and the old proxy's drain, and through `daemon stop`.
#[tokio::test(flavor = "multi_thread")]
async fn daemon_restart_under_load_leaves_one_ledger_row_per_answered_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let home = TestHome::new();
    home.config(&format!(
        "[server]\nport = {}\n[daemon]\nstartup_timeout = 20\nstop_timeout = 10\n",
        crate::support::free_port()
    ));
    let secret = create_key(&home, "loaded", &[]);
    let _guard = crate::daemon::StopOnDrop(&home);
    let out = run("daemon", &home, &["start", "--no-check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let port = warden::lifecycle::pidfile::inspect(&home.file("run/proxy.pid"))
        .ok()
        .and_then(|state| match state {
            warden::lifecycle::pidfile::PidState::Running(r) => r.port,
            _ => None,
        })
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (url, stop, answered, secret) =
            (url.clone(), stop.clone(), answered.clone(), secret.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            // Bounded: at most 20 000 requests per worker.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let sent = c
                    .post(&url)
                    .bearer_auth(&secret)
                    .json(&chat_body(false))
                    .send()
                    .await;
                if let Ok(r) = sent {
                    if r.status() == 200 && r.text().await.is_ok() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + PATIENCE;
    while answered.load(Ordering::Relaxed) < 100 {
        assert!(Instant::now() < deadline, "no load before the restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let home_path = home.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        crate::support::bin("daemon")
            .arg("--home")
            .arg(home_path)
            .args(["restart", "--no-check"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after = answered.load(Ordering::Relaxed);
    while answered.load(Ordering::Relaxed) < after + 100 {
        assert!(Instant::now() < deadline, "no load after the restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let out = run("daemon", &home, &["stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows = ledger_rows(&home);
    let ok_rows = rows.iter().filter(|r| r.2 == 200).count();
    assert_eq!(
        ok_rows,
        answered.load(Ordering::Relaxed),
        "ledger rows vs answered requests"
    );
}

/// An SSE body of the given JSON events (`event:` named by their `type`, when
/// they have one), then `[DONE]` when asked.
fn sse_body(events: &[Value], done: bool) -> axum::response::Response {
    let mut text = String::new();
    for e in events {
        if let Some(kind) = e["type"].as_str() {
            text.push_str(&format!("event: {kind}\n"));
        }
        text.push_str(&format!("data: {e}\n\n"));
    }
    if done {
        text.push_str("data: [DONE]\n\n");
    }
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from(text))
        .unwrap()
}

/// A fake provider that reports cached input tokens in each API's own way:
/// Chat (`prompt_tokens_details.cached_tokens`, 80 of 100), Responses
/// (`input_tokens_details.cached_tokens`, 150 of 200) and Anthropic
/// (`cache_read_input_tokens` 40 besides `input_tokens` 10).
fn cached_tokens_provider() -> String {
    use axum::response::IntoResponse;
    async fn chat(axum::Json(req): axum::Json<Value>) -> axum::response::Response {
        let usage = json!({"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110,
                           "prompt_tokens_details": {"cached_tokens": 80}});
        let model = req["model"].clone();
        if req["stream"] == true {
            let chunk = |delta: Value, finish: Value| {
                json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            let mut events = vec![
                chunk(json!({"role": "assistant", "content": "hi"}), Value::Null),
                chunk(json!({}), json!("stop")),
            ];
            if req["stream_options"]["include_usage"] == true {
                events.push(
                    json!({"id": "c1", "object": "chat.completion.chunk", "created": 1,
                                   "model": model, "choices": [], "usage": usage}),
                );
            }
            return sse_body(&events, true);
        }
        axum::Json(
            json!({"id": "c1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "finish_reason": "stop"}],
            "usage": usage}),
        )
        .into_response()
    }
    async fn responses(axum::Json(req): axum::Json<Value>) -> axum::response::Response {
        let response = json!({"id": "resp_1", "object": "response", "created_at": 1,
            "status": "completed", "model": req["model"],
            "output": [{"type": "message", "id": "m1", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": "hi", "annotations": []}]}],
            "usage": {"input_tokens": 200, "output_tokens": 20, "total_tokens": 220,
                      "input_tokens_details": {"cached_tokens": 150}}});
        if req["stream"] == true {
            return sse_body(
                &[
                    json!({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}),
                    json!({"type": "response.output_text.delta", "item_id": "m1", "output_index": 0,
                           "content_index": 0, "delta": "hi"}),
                    json!({"type": "response.completed", "response": response}),
                ],
                false,
            );
        }
        axum::Json(response).into_response()
    }
    async fn messages(axum::Json(req): axum::Json<Value>) -> axum::response::Response {
        let usage = json!({"input_tokens": 10, "cache_read_input_tokens": 40,
                           "cache_creation_input_tokens": 0, "output_tokens": 5});
        if req["stream"] == true {
            return sse_body(
                &[
                    json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                        "role": "assistant", "model": req["model"], "content": [],
                        "stop_reason": null, "stop_sequence": null,
                        "usage": {"input_tokens": 10, "cache_read_input_tokens": 40,
                                  "cache_creation_input_tokens": 0, "output_tokens": 1}}}),
                    json!({"type": "content_block_start", "index": 0,
                           "content_block": {"type": "text", "text": ""}}),
                    json!({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": "hi"}}),
                    json!({"type": "content_block_stop", "index": 0}),
                    json!({"type": "message_delta", "delta": {"stop_reason": "end_turn",
                           "stop_sequence": null}, "usage": {"output_tokens": 5}}),
                    json!({"type": "message_stop"}),
                ],
                false,
            );
        }
        axum::Json(
            json!({"id": "msg_1", "type": "message", "role": "assistant",
            "model": req["model"], "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn", "stop_sequence": null, "usage": usage}),
        )
        .into_response()
    }
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .route("/v1/responses", axum::routing::post(responses))
        .route("/v1/messages", axum::routing::post(messages));
    let url = format!("http://{}/v1", crate::support::prompt_server::serve(app));
    format!(
        "[[providers]]\nname = \"chat\"\nurl = \"{url}\"\nmodels = [\"gpt-5\"]\nattempts = 1\n\n\
         [[providers]]\nname = \"resp\"\nurl = \"{url}\"\napi = \"responses\"\nmodels = [\"o3\"]\nattempts = 1\n\n\
         [[providers]]\nname = \"claude\"\nurl = \"{url}\"\napi = \"anthropic\"\napi_key_env = \"ANTHROPIC_API_KEY\"\nmodels = [\"claude-*\"]\nattempts = 1\n\n\
         [features]\nresponses_no_base_instructions = true\n\n\
         [prices]\n\"gpt-5\" = {{ input = 1.0, output = 10.0, cached_input = 0.1 }}\n\
         \"o3\" = {{ input = 2.0, output = 8.0, cached_input = 0.5 }}\n\
         \"claude-*\" = {{ input = 3.0, output = 15.0, cached_input = 0.3 }}\n"
    )
}

/// Every ledger row's (route, model, input, output, cached, cost, trace id).
type Metering = (String, String, i64, i64, i64, f64, Option<String>);

fn metering_rows(home: &TestHome) -> Vec<Metering> {
    let conn = rusqlite::Connection::open(home.file("data/usage.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT route, model, input_tokens, output_tokens, cached_tokens, cost_usd, trace_id
             FROM usage ORDER BY rowid",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

/// The ledger's `cached_tokens` is what the provider reported (OpenAI Chat and
/// Responses, Anthropic), streamed or not, with input counting cached tokens;
/// the cost prices them at `cached_input`; `trace_id` is null with traces off.
#[tokio::test]
async fn cached_tokens_are_recorded_from_every_provider_and_priced_at_cached_input() {
    let home = TestHome::new();
    home.config(&cached_tokens_provider());
    let secret = create_key(&home, "cache", &[]);
    let gw = InProcess::start(&home, &[("ANTHROPIC_API_KEY", "sk-ant-test")]);
    let calls = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-5", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("/v1/responses", json!({"model": "o3", "input": "hi"})),
        (
            "/v1/responses",
            json!({"model": "o3", "input": "hi", "stream": true}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "o3", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "claude-x", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "claude-x", "max_tokens": 20, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "claude-x", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ];
    for (path, body) in &calls {
        let r = client()
            .post(format!("{}{path}", gw.url))
            .bearer_auth(&secret)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} {body}");
        let text = r.text().await.unwrap();
        assert!(text.contains("hi"), "{path}: {text}");
    }
    wait_rows(&home, calls.len()).await;
    let rows = metering_rows(&home);
    let got: Vec<(&str, &str, i64, i64, i64)> = rows
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str(), r.2, r.3, r.4))
        .collect();
    assert_eq!(
        got,
        [
            ("/v1/chat/completions", "gpt-5", 100, 10, 80),
            ("/v1/chat/completions", "gpt-5", 100, 10, 80),
            ("/v1/responses", "o3", 200, 20, 150),
            ("/v1/responses", "o3", 200, 20, 150),
            ("/v1/chat/completions", "o3", 200, 20, 150),
            ("/v1/messages", "claude-x", 50, 5, 40),
            ("/v1/messages", "claude-x", 50, 5, 40),
            ("/v1/chat/completions", "claude-x", 50, 5, 40),
        ]
    );
    // USD per 1M tokens: uncached input, cached input at cached_input, output.
    let want = |uncached: f64, cached: f64, output: f64| (uncached + cached + output) / 1e6;
    let costs = [
        want(20.0 * 1.0, 80.0 * 0.1, 10.0 * 10.0),
        want(50.0 * 2.0, 150.0 * 0.5, 20.0 * 8.0),
        want(10.0 * 3.0, 40.0 * 0.3, 5.0 * 15.0),
    ];
    for (row, cost) in rows.iter().zip([0, 0, 1, 1, 1, 2, 2, 2].map(|i| costs[i])) {
        assert!((row.5 - cost).abs() < 1e-12, "{row:?}: want {cost}");
        assert_eq!(row.6, None, "traces are off: {row:?}");
    }
    let out = run("proxy", &home, &["usage", "--by", "model", "--json"]);
    let by_model: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cached: Vec<(String, u64)> = by_model
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["model"].as_str().unwrap().to_string(),
                m["cached_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cached,
        [
            ("claude-x".to_string(), 120),
            ("gpt-5".to_string(), 160),
            ("o3".to_string(), 450)
        ],
        "{by_model}"
    );
}

/// With traces on, each ledger row's `trace_id` is the trace of the request's
/// exported span, so a row leads to its trace and back.
#[tokio::test]
async fn the_ledger_trace_id_is_the_exported_spans_trace_id() {
    use crate::support::otlp::{Collector, Mode, SERVER};
    let collector = Collector::start(Mode::Accept);
    let home = TestHome::new();
    home.config(&format!(
        "[telemetry]\notlp_endpoint = \"{}\"\n",
        collector.endpoint()
    ));
    let secret = create_key(&home, "traced", &[]);
    let gw = InProcess::start(&home, &[]);
    for stream in [false, true] {
        let r = chat_as(&gw, Some(&secret), &chat_body(stream)).await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
    }
    wait_rows(&home, 2).await;
    let rows = metering_rows(&home);
    let spans = collector
        .until("two server spans", |spans| {
            spans.iter().filter(|s| s.kind == SERVER).count() >= 2
        })
        .await;
    let mut exported: Vec<String> = spans
        .iter()
        .filter(|s| s.kind == SERVER)
        .map(|s| s.trace_id.clone())
        .collect();
    let mut recorded: Vec<String> = rows
        .iter()
        .map(|r| r.6.clone().expect("a trace id with traces on"))
        .collect();
    exported.sort();
    recorded.sort();
    assert_eq!(recorded, exported);
    assert!(
        recorded
            .iter()
            .all(|t| t.len() == 32 && t != &"0".repeat(32))
    );
}

/// Waits until `/health`'s `keys.ledger` says `want`.
async fn wait_ledger_state(gw: &InProcess, want: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let report = health(gw).await;
        if report["keys"]["ledger"] == want {
            return;
        }
        assert!(Instant::now() < deadline, "ledger never {want}: {report}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An unwritable ledger never stops serving until its backlog bound
/// (`keys.ledger_backlog`, 20 here); past it, `fail_closed = true` answers 503
/// `ledger_unavailable` to metered requests but never to the operator's token,
/// and `fail_closed = false` serves on.
#[tokio::test]
async fn an_unwritable_ledger_serves_until_its_backlog_bound_then_fail_closed_spares_the_operator()
{
    for fail_closed in [true, false] {
        let home = TestHome::new();
        home.config(&format!(
            "[keys]\nledger_backlog = 20\nfail_closed = {fail_closed}\n"
        ));
        // A directory where the database should be: it can never be written.
        std::fs::create_dir_all(home.file("data/usage.db")).unwrap();
        let secret = create_key(&home, "heavy", &[]);
        let gw = InProcess::start(&home, &[("WARDEN_AUTH_TOKEN", "operator-secret")]);
        for i in 0..20 {
            let r = chat_as(&gw, Some(&secret), &chat_body(false)).await;
            assert_eq!(r.status(), 200, "request {i} is within the bound");
        }
        wait_ledger_state(&gw, "failing").await;
        let report = health(&gw).await;
        assert_eq!(report["status"], "warn", "{report}");
        for _ in 0..3 {
            let r = chat_as(&gw, Some(&secret), &chat_body(false)).await;
            if fail_closed {
                assert_eq!(r.status(), 503);
                assert_eq!(r.headers()["retry-after"], "5");
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "ledger_unavailable", "{body}");
            } else {
                assert_eq!(r.status(), 200, "fail_closed = false serves on");
            }
            let r = chat_as(&gw, Some("operator-secret"), &chat_body(false)).await;
            assert_eq!(r.status(), 200, "the operator's token is never refused");
        }
    }
}

/// `keys.toml` is bounded: at most 10,000 keys (`proxy keys create` refuses
/// the next one) and 8 MiB; past either, the error names the file and says
/// what to do.
#[test]
fn a_keys_file_past_its_bounds_is_refused_naming_the_file() {
    use warden::keys::file::MAX_KEYS;
    let home = TestHome::new();
    let mut full = String::new();
    for i in 0..MAX_KEYS {
        full.push_str(&format!(
            "[[key]]\nname = \"k{i}\"\nsha256 = \"{}\"\n\n",
            "0".repeat(64)
        ));
    }
    home.write("keys.toml", &full);
    let out = run("proxy", &home, &["keys", "create", "one-too-many"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("keys.toml") && err.contains(&format!("at most {MAX_KEYS}")),
        "{err}"
    );
    assert_eq!(home.read("keys.toml"), full, "the file is left as it was");
    // A file past 8 MiB is refused before it is parsed.
    home.write("keys.toml", &"# padding padding\n".repeat(500_000));
    let out = run("proxy", &home, &["keys", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("keys.toml") && err.contains("larger than 8 MiB"),
        "{err}"
    );
}

/// GET `path` of `server` as JSON.
async fn get_json_of(server: &impl Served, path: &str) -> Value {
    let r = client()
        .get(format!("{}{path}", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

/// `/ui` shows usage per key name and per model (requests, tokens, cost; today
/// and this period) from memory; a restart keeps the figures (read back from
/// the ledger once); the key's secret appears nowhere on the page or its data.
#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_usage_per_key_and_model_and_never_a_secret() {
    let upstream = Upstream::start(Behaviour::Fast);
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{}\"\nattempts = 1\n\n[prices]\n\"gpt-5\" = {{ input = 1.0, output = 10.0 }}\n",
        upstream.url()
    ));
    let alice = create_key(&home, "alice", &["--period", "day"]);
    let bob = create_key(&home, "bob", &["--models", "other"]);
    let gw = InProcess::start(&home, &[]);
    let off = get_json_of(&gw, "/ui/usage.json").await;
    assert_eq!(off["keys"], json!([]), "{off}");
    for _ in 0..3 {
        assert_eq!(
            chat_as(&gw, Some(&alice), &chat_body(false)).await.status(),
            200
        );
    }
    assert_eq!(
        chat_as(&gw, Some(&bob), &chat_body(false)).await.status(),
        403
    );
    // The upstream reports 5 + 2 tokens a request: 5 × $1 + 2 × $10 per 1M.
    let figures = |requests: u64, refused: u64| {
        json!({"requests": requests, "refused": refused, "input_tokens": 5 * requests,
               "output_tokens": 2 * requests, "cached_tokens": 0, "tokens": 7 * requests,
               "cost_usd": (25 * requests) as f64 / 1e6})
    };
    let want = json!({
        "enabled": true,
        "keys": [
            {"name": "alice", "period": "day", "today": figures(3, 0), "period_figures": figures(3, 0)},
            {"name": "bob", "period": "month", "today": figures(0, 1), "period_figures": figures(0, 1)},
        ],
        "models": [{"model": "gpt-5", "today": figures(3, 1), "month": figures(3, 1)}],
    });
    let usage = get_json_of(&gw, "/ui/usage.json").await;
    assert_eq!(usage, want);
    // The page, as a browser renders it.
    let url = format!("{}/ui", gw.url);
    let dom = tokio::task::spawn_blocking(move || crate::ui::dump_dom(&url))
        .await
        .unwrap();
    let row = |attr: &str| {
        let at = dom
            .find(attr)
            .unwrap_or_else(|| panic!("{attr} not on the page:\n{dom}"));
        dom[at..at + dom[at..].find("</tr>").unwrap()].to_string()
    };
    let alice_row = row("data-key=\"alice\"");
    for cell in [
        "<td>alice</td>",
        "<td>3</td>",
        "<td>21</td>",
        "<td>$0.000075</td>",
        "<td>day</td>",
    ] {
        assert!(alice_row.contains(cell), "{cell} in {alice_row}");
    }
    let model_row = row("data-model=\"gpt-5\"");
    for cell in ["<td>gpt-5</td>", "<td>3</td>", "<td>21</td>"] {
        assert!(model_row.contains(cell), "{cell} in {model_row}");
    }
    for secret in [&alice, &bob] {
        let tail = &secret[secret.len() - 12..];
        assert!(!dom.contains(tail), "a secret on the page");
        assert!(!usage.to_string().contains(tail), "a secret in usage.json");
    }
    // A restart reads the figures back from the ledger.
    wait_rows(&home, 4).await;
    let again = InProcess::start(&home, &[]);
    assert_eq!(get_json_of(&again, "/ui/usage.json").await, want);
}

/// What a key spent this period is read back from the ledger when the proxy
/// starts: a restart never gives a budget back.
#[tokio::test]
async fn a_restart_keeps_what_a_key_spent_this_period() {
    let upstream = Upstream::start(Behaviour::Fast);
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{}\"\nattempts = 1\n",
        upstream.url()
    ));
    // A reservation is 27 tokens and a request spends 7: 30 fits one request
    // from zero, and none after 7 are spent.
    let secret = create_key(
        &home,
        "frugal",
        &["--budget-tokens", "30", "--period", "day"],
    );
    {
        let gw = InProcess::start(&home, &[]);
        assert_eq!(
            chat_as(&gw, Some(&secret), &chat_body(false))
                .await
                .status(),
            200
        );
        let r = chat_as(&gw, Some(&secret), &chat_body(false)).await;
        assert_eq!(r.status(), 429, "7 spent + 27 reserved > 30");
        wait_rows(&home, 2).await;
    }
    let gw = InProcess::start(&home, &[]);
    let r = chat_as(&gw, Some(&secret), &chat_body(false)).await;
    assert_eq!(r.status(), 429, "the restart gave the budget back");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
}

/// Bifrost #3357: a stream the client cancels is charged what was streamed
/// (status 499), never zero.
#[tokio::test]
async fn a_stream_the_client_cancels_is_charged_what_was_streamed_never_zero() {
    let upstream = Upstream::start(Behaviour::StallStream);
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{}\"\nattempts = 1\n\n[prices]\n\"gpt-5\" = {{ input = 1.0, output = 10.0 }}\n",
        upstream.url()
    ));
    let secret = create_key(&home, "quitter", &[]);
    let gw = InProcess::start(&home, &[]);
    let mut r = chat_as(&gw, Some(&secret), &chat_body(true)).await;
    read_until(&mut r, "first").await;
    drop(r);
    let rows = wait_rows(&home, 1).await;
    // "first" (5 bytes) is 2 output tokens; the input is the messages' estimate.
    assert_eq!((rows[0].2, rows[0].4), (499, 2), "{rows:?}");
    assert!(rows[0].3 > 0, "{rows:?}");
    let cost = metering_rows(&home)[0].5;
    assert!(cost > 0.0, "a cancelled stream at zero cost");
}

/// LiteLLM #20256, the timed-out half: a call that times out (before its
/// first byte, or silent mid-stream) gives its `max_parallel` slot back.
#[tokio::test]
async fn the_parallel_slot_is_given_back_when_the_upstream_times_out() {
    for (behaviour, timeout, stream) in [
        (Behaviour::Hang, "first_byte_timeout = 1", false),
        (Behaviour::StallStream, "idle_timeout = 1", true),
    ] {
        let upstream = Upstream::start(behaviour);
        let home = TestHome::new();
        home.config(&format!(
            "[upstream]\nurl = \"{}\"\nattempts = 1\n{timeout}\n",
            upstream.url()
        ));
        let secret = create_key(&home, "single", &["--max-parallel", "1"]);
        let gw = InProcess::start(&home, &[]);
        for i in 0..3 {
            let r = chat_as(&gw, Some(&secret), &chat_body(stream)).await;
            let status = r.status();
            let body = r.text().await.unwrap();
            if stream {
                // The stream began, then ended with an error event at the timeout.
                assert_eq!(status, 200, "request {i}: {body}");
                assert!(body.contains("\"error\""), "request {i}: {body}");
            } else {
                assert_eq!(
                    status, 504,
                    "request {i} (never 429: the slot came back): {body}"
                );
            }
        }
    }
}

/// LiteLLM #38176: /v1/responses and /v1/messages traffic counts against a
/// key's budget: alternating the two exhausts it, and what was spent stays
/// within it.
#[tokio::test]
async fn responses_and_messages_traffic_counts_against_the_budget() {
    let home = TestHome::new();
    let secret = create_key(
        &home,
        "budgeted",
        &["--budget-tokens", "40", "--period", "day"],
    );
    let gw = InProcess::start(&home, &[]);
    let mut answered = std::collections::BTreeMap::new();
    let mut refused = None;
    for i in 0..100 {
        let (path, body) = if i % 2 == 0 {
            (
                "/v1/responses",
                json!({"model": "gpt-5", "input": "hello", "max_output_tokens": 10}),
            )
        } else {
            (
                "/v1/messages",
                json!({"model": "gpt-5", "max_tokens": 10,
                       "messages": [{"role": "user", "content": "hello"}]}),
            )
        };
        let r = client()
            .post(format!("{}{path}", gw.url))
            .bearer_auth(&secret)
            .json(&body)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            refused = Some((path, r.text().await.unwrap()));
            break;
        }
        assert_eq!(r.status(), 200, "{path}");
        *answered.entry(path).or_insert(0) += 1;
    }
    let (path, body) = refused.expect("the budget was never exhausted");
    // OpenAI's `insufficient_quota` on /v1/responses; Anthropic's shape on /v1/messages.
    assert!(body.contains("has spent its budget"), "{path}: {body}");
    assert!(
        answered.len() == 2,
        "both routes were answered first: {answered:?}"
    );
    let n: usize = answered.values().sum();
    let rows = wait_rows(&home, n + 1).await;
    let spent: i64 = rows.iter().map(|r| r.3 + r.4).sum();
    assert!(spent > 0 && spent <= 40, "spent {spent} of 40: {rows:?}");
    let out = run("proxy", &home, &["keys", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["spent_tokens"], json!(spent), "{list}");
}

/// LiteLLM #37923: a stream is priced from `[prices]` with the tokens the
/// provider reported, even when the provider says it cost nothing.
#[tokio::test]
async fn a_stream_is_priced_from_prices_even_when_the_provider_reports_zero_cost() {
    async fn chat(axum::Json(req): axum::Json<Value>) -> axum::response::Response {
        let model = req["model"].clone();
        let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]});
        let usage = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                                      "cost": 0.0, "total_cost": 0.0}});
        sse_body(&[chunk, usage], true)
    }
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(chat));
    let url = format!("http://{}/v1", crate::support::prompt_server::serve(app));
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{url}\"\nattempts = 1\n\n[prices]\n\"gpt-5\" = {{ input = 1.0, output = 10.0 }}\n"
    ));
    let secret = create_key(&home, "free-lunch", &[]);
    let gw = InProcess::start(&home, &[]);
    let r = chat_as(&gw, Some(&secret), &chat_body(true)).await;
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("[DONE]") && !body.contains("\"usage\""),
        "{body}"
    );
    wait_rows(&home, 1).await;
    let row = &metering_rows(&home)[0];
    assert_eq!((row.2, row.3), (10, 5), "{row:?}");
    // 10 × $1 + 5 × $10 per 1M tokens.
    assert!((row.5 - 0.00006).abs() < 1e-12, "{row:?}");
}

/// LiteLLM PR #32368 (database queries to look a key up): keys are looked up
/// in memory. With the ledger's whole `data/` folder gone (a file in its
/// place), keys still authenticate, unknown ones are still refused, and a
/// revocation still takes effect.
#[tokio::test]
async fn keys_are_looked_up_in_memory_and_serve_with_no_database_at_all() {
    let home = TestHome::new();
    let secret = create_key(&home, "memory", &[]);
    let gw = InProcess::start(&home, &[]);
    assert_eq!(
        chat_as(&gw, Some(&secret), &chat_body(false))
            .await
            .status(),
        200
    );
    wait_rows(&home, 1).await;
    std::fs::remove_dir_all(home.file("data")).unwrap();
    std::fs::write(
        home.file("data"),
        "not a folder: no database can be opened here",
    )
    .unwrap();
    for _ in 0..20 {
        assert_eq!(
            chat_as(&gw, Some(&secret), &chat_body(false))
                .await
                .status(),
            200
        );
        assert_eq!(
            chat_as(&gw, Some("wk-0000000000000000"), &chat_body(false))
                .await
                .status(),
            401
        );
    }
    let out = run("proxy", &home, &["keys", "revoke", "memory"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + PATIENCE;
    while chat_as(&gw, Some(&secret), &chat_body(false))
        .await
        .status()
        != 401
    {
        assert!(
            Instant::now() < deadline,
            "the revocation never took effect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
