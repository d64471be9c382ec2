//! `/docs` as a person uses it: Swagger UI in headless Chromium (Debian's `chromium` and
//! `chromium-driver`; `.ci/run` installs them when missing), "Try it out" on a login at the
//! default `CORS_ORIGINS`, and the answer the page shows. The page's own origin is not in
//! `CORS_ORIGINS`, so this fails unless a same-origin POST is allowed.
//!
//! Never skipped: without the browser the test fails and says what to install.

use std::{path::Path, process::Stdio, time::Duration};

use fantoccini::{ClientBuilder, Locator, wd::Capabilities};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::helpers::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port, killed when dropped.
async fn start_chromedriver() -> (Child, String) {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "the /docs browser test needs Debian's Chromium: apt-get install chromium chromium-driver"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (child, url);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not listen on {url} within 10 s");
}

/// Headless Chromium at `width` x `height` CSS pixels, driven through a chromedriver of its
/// own (keep the `Child`: dropping it ends the driver).
pub async fn chromium(width: u32, height: u32) -> (Child, fantoccini::Client) {
    let (driver, driver_url) = start_chromedriver().await;
    let mut capabilities = Capabilities::new();
    let mut options = json!({
        "binary": CHROMIUM,
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--no-first-run",
            format!("--window-size={width},{height}"),
        ],
    });
    // A window is at least 500 px wide: a phone's width is an emulated viewport.
    if width < 500 {
        options["mobileEmulation"] =
            json!({"deviceMetrics": {"width": width, "height": height, "pixelRatio": 1}});
    }
    capabilities.insert("goog:chromeOptions".to_owned(), options);
    let browser = ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver_url)
        .await
        .expect("a Chromium session");
    (driver, browser)
}

#[tokio::test]
async fn try_it_out_on_docs_runs_a_login_at_the_default_origins() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (_driver, browser) = chromium(1280, 2400).await;

    browser.goto(&app.url("/docs")).await.unwrap();
    let login = "#operations-auth-login";
    browser
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(&format!("{login} .opblock-summary")))
        .await
        .expect("Swagger UI lists POST /auth/login")
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .for_element(Locator::Css(&format!("{login} .try-out__btn")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let body = browser
        .wait()
        .for_element(Locator::Css(&format!("{login} textarea.body-param__text")))
        .await
        .unwrap();
    body.clear().await.unwrap();
    body.send_keys(r#"{"email": "nobody@example.com", "password": "WrongPass123"}"#)
        .await
        .unwrap();
    browser
        .find(Locator::Css(&format!("{login} .execute")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    let answer = browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(&format!(
            "{login} .live-responses-table .response-col_description pre"
        )))
        .await
        .expect("the page shows the server's answer");
    let status = browser
        .find(Locator::Css(&format!(
            "{login} .live-responses-table .response .response-col_status"
        )))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let shown = answer.text().await.unwrap();
    // For a person to look at: the page as the test left it.
    if let Ok(png) = browser.screenshot().await {
        let path = std::env::temp_dir().join("auth-service-docs-try-it-out.png");
        let _ = std::fs::write(&path, png);
        eprintln!("screenshot: {}", path.display());
    }
    browser.close().await.unwrap();

    assert_eq!(status.trim(), "401", "{shown}");
    let body: serde_json::Value = serde_json::from_str(&shown).expect("a JSON body");
    assert_eq!(
        body,
        json!({"detail": "Invalid email or password", "error_code": "INVALID_CREDENTIALS"})
    );
}
