//! The status page `GET /ui`: rendered by headless Chromium (Debian `chromium`,
//! installed by .ci/run) against a real proxy with two providers, one cooling after
//! real failures from an axum upstream; `server.ui = false`; the history JSON.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::gateway::InProcess;
use crate::support::http::Served;
use crate::support::upstream::{Behaviour, Upstream};
use crate::support::{PATIENCE, TestHome, client};

async fn history(proxy: &impl Served) -> Value {
    let r = client()
        .get(format!("{}/ui/history.json", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn provider_state(h: &Value, name: &str) -> String {
    h["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| p["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// `chromium --headless --dump-dom URL`, killed (by its own PID) past the deadline.
pub(crate) fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium must be installed for this test (.ci/run installs Debian's chromium)");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium failed: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish rendering {url} within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::read_to_string(out.path()).unwrap()
}

/// The text of the element with this id (its first text node).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the DOM:\n{dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap();
    &rest[start..start + end]
}

/// The provider's table row (`<tr class="provider" data-provider="NAME">…</tr>`).
fn provider_row<'a>(dom: &'a str, name: &str) -> &'a str {
    let at = dom
        .find(&format!("data-provider=\"{name}\""))
        .unwrap_or_else(|| panic!("provider {name} not on the page:\n{dom}"));
    let end = dom[at..].find("</tr>").unwrap();
    &dom[at..at + end]
}

/// Sends real requests (each answer checked by `check`) until `provider` is cooling
/// (3 failures in a row by default), then renders `/ui` in Chromium.
async fn render_once_cooling(
    proxy: &InProcess,
    provider: &str,
    check: impl Fn(&reqwest::Response),
) -> String {
    let deadline = Instant::now() + PATIENCE;
    while provider_state(&history(proxy).await, provider) != "cooling" {
        assert!(Instant::now() < deadline, "{provider} never cooled");
        let r = client()
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        check(&r);
    }
    let url = format!("{}/ui", proxy.url());
    tokio::task::spawn_blocking(move || dump_dom(&url))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_renders_two_providers_one_cooling_and_the_request_count() {
    // `primary` answers 500 (a real axum upstream) and is tried first; `backup` is the
    // built-in mock. Every request fails over and is answered; after 3 failures in a
    // row `primary` cools.
    let failing = Upstream::start(Behaviour::Always(500));
    let home = TestHome::new();
    home.config(&format!(
        "[[providers]]\nname = \"primary\"\nurl = \"{}\"\nmodels = [\"*\"]\npriority = 0\n\n\
         [[providers]]\nname = \"backup\"\nurl = \"mock\"\nmodels = [\"*\"]\npriority = 1\n",
        failing.url()
    ));
    let proxy = InProcess::start(&home, &[]);
    let dom = render_once_cooling(&proxy, "primary", |r| {
        assert_eq!(r.status(), 200, "failed over to the mock");
        assert_eq!(r.headers()["x-warden-provider"], "backup");
    })
    .await;
    let primary = provider_row(&dom, "primary");
    assert!(primary.contains(">cooling<"), "state in words: {primary}");
    assert!(
        primary.contains("left") || primary.contains("probing"),
        "countdown: {primary}"
    );
    assert!(dom.contains("last error: "), "last error shown");
    let backup = provider_row(&dom, "backup");
    assert!(backup.contains(">healthy<"), "state in words: {backup}");
    assert_eq!(text_of(&dom, "upstream"), "2 providers: backup, primary");
    let total: u64 = text_of(&dom, "requests-total").parse().unwrap();
    assert!(total >= 3, "request count {total}");
    assert_eq!(text_of(&dom, "status"), "pass");
}

/// Every candidate of a model cooling: the page says "warn", not a green
/// "pass", and names the cooling entries (what `/health` says, docs/contract.md §17).
#[tokio::test(flavor = "multi_thread")]
async fn chromium_shows_warn_and_names_the_models_whose_every_provider_is_cooling() {
    // `primary` alone serves `m` and answers 500; `backup` (the mock) serves only
    // `other`, so once `primary` cools, `m` has no candidate left.
    let failing = Upstream::start(Behaviour::Always(500));
    let home = TestHome::new();
    home.config(&format!(
        "[[providers]]\nname = \"primary\"\nurl = \"{}\"\nmodels = [\"m\"]\nattempts = 1\n\n\
         [[providers]]\nname = \"backup\"\nurl = \"mock\"\nmodels = [\"other\"]\n",
        failing.url()
    ));
    let proxy = InProcess::start(&home, &[]);
    let dom = render_once_cooling(&proxy, "primary", |r| {
        assert!(r.status().is_server_error(), "{}", r.status());
    })
    .await;
    assert!(provider_row(&dom, "primary").contains(">cooling<"));
    assert!(provider_row(&dom, "backup").contains(">healthy<"));
    assert_eq!(text_of(&dom, "status"), "warn", "not a green pass");
    let status = opening_tag(&dom, "status");
    assert!(status.contains("warn"), "styled as a warning: {status}");
    assert_eq!(
        text_of(&dom, "cooling"),
        "every provider cooling for: m",
        "{dom}"
    );
    let cooling = opening_tag(&dom, "cooling");
    assert!(!cooling.contains("hidden"), "shown: {cooling}");
}

/// The opening tag of the element with this id (`<span id=… class=…>`).
fn opening_tag<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the DOM:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    &dom[start..=end]
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_shows_errors_by_kind_when_the_only_provider_fails() {
    let failing = Upstream::start(Behaviour::Always(500));
    let home = TestHome::new();
    home.config(&format!(
        "[upstream]\nurl = \"{}\"\nattempts = 1\n",
        failing.url()
    ));
    let proxy = InProcess::start(&home, &[]);
    let dom = render_once_cooling(&proxy, "default", |r| {
        assert!(r.status().is_server_error(), "{}", r.status());
    })
    .await;
    assert!(provider_row(&dom, "default").contains(">cooling<"));
    // Errors by kind come from /metrics?format=json.
    assert!(dom.contains("HTTP 50"), "errors by kind: {dom}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_is_on_by_default_open_like_health_and_off_with_server_ui_false() {
    let home = TestHome::new();
    // A bearer token protects /v1/*, not /health nor the page.
    let proxy = InProcess::start(&home, &[("WARDEN_AUTH_TOKEN", "s3cret-token")]);
    let r = client()
        .get(format!("{}/ui", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = r.text().await.unwrap();
    assert!(page.contains("<title>warden status</title>"));
    assert!(!page.contains("s3cret-token"));
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "no external assets"
    );
    let h = history(&proxy).await;
    assert_eq!(h["capacity"], 180);
    assert_eq!(h["interval_secs"], 5);
    assert!(h["samples"].as_array().unwrap().len() <= 180);
    assert_eq!(provider_state(&h, "default"), "healthy");

    let off = TestHome::new();
    off.config("[server]\nui = false\n");
    let proxy = InProcess::start(&off, &[]);
    for path in ["/ui", "/ui/history.json"] {
        let r = client()
            .get(format!("{}{path}", proxy.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
}
