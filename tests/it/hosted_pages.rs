//! The hosted pages: where the links in the mails lead, and the account page. Plain HTTP on
//! both databases (headers, the links' address, opening spends nothing), and in headless
//! Chromium as a person uses them: a real reset link from the SMTP sink, a weak password (the
//! reasons appear), a good one, then a login with it; a verification link and its one button;
//! the account page's sign-in, devices, password change, sign-out everywhere and deletion; two-step
//! sign-in turned on from the page (the QR code, a code typed, the recovery codes) and used to
//! sign in, with a code and with a recovery code; a passkey added from the page (Chromium's virtual
//! authenticator) and used to sign in without email or password, then removed.

use std::time::Duration as StdDuration;

use auth_service::http::pages::PAGE_CSP;
use fantoccini::{Client, Locator};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    docs_browser::chromium, dual_backend, helpers::*, second_factor::code_at, smtp_sink::SmtpSink,
};

const MAIL_WITHIN: StdDuration = StdDuration::from_secs(10);

dual_backend!(
    the_pages_carry_strict_headers_and_the_products_name,
    the_qr_code_is_drawn_for_an_enrolment_uri_only,
    the_links_lead_to_the_pages_and_opening_one_spends_nothing,
);

async fn app_with_sink(backend: Backend, extra: &[(&str, &str)]) -> (TestApp, SmtpSink) {
    let mut overrides = vec![("MAIL_PRODUCT_NAME", "Corner Shop")];
    overrides.extend_from_slice(extra);
    SmtpSink::with_app(backend, &overrides).await
}

async fn the_pages_carry_strict_headers_and_the_products_name(backend: Backend) {
    let (app, _sink) = app_with_sink(backend, &[]).await;
    for path in [
        "/account/reset-password?token=not-reflected-abc",
        "/account/verify-email?token=not-reflected-abc",
        "/account?token=not-reflected-abc",
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        for (name, value) in [
            ("content-type", "text/html; charset=utf-8"),
            ("content-security-policy", PAGE_CSP),
            ("cache-control", "no-store"),
            ("referrer-policy", "no-referrer"),
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
        ] {
            assert_eq!(
                header(&response, name).as_deref(),
                Some(value),
                "{path}: {name}"
            );
        }
        let html = response.text().await.unwrap();
        assert!(html.contains("Corner Shop"), "{html}");
        assert!(
            !html.contains("not-reflected"),
            "the token is never echoed: {html}"
        );
        assert!(
            !html.contains("<script>") && !html.contains("<style") && !html.contains("style="),
            "no inline script or style (the CSP would refuse it): {html}"
        );
    }
    for (file, content_type) in [
        ("pages.css", "text/css; charset=utf-8"),
        ("pages.js", "text/javascript; charset=utf-8"),
    ] {
        let response = app.get(&format!("/account/assets/{file}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "content-type").as_deref(),
            Some(content_type)
        );
        assert_eq!(
            header(&response, "content-security-policy").as_deref(),
            Some(PAGE_CSP)
        );
    }
    let (status, body) = status_and_json(app.get("/account/assets/secrets.txt").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error_code"], "NOT_FOUND");
}

async fn the_links_lead_to_the_pages_and_opening_one_spends_nothing(backend: Backend) {
    // Arrange: the service behind a prefix on its public address.
    let (app, sink) = app_with_sink(
        backend,
        &[("PUBLIC_URL", "https://auth.shop.example.com/sso/")],
    )
    .await;
    let email = "opener@example.com";
    app.register(email, PASSWORD).await;
    let verification = sink.wait_for(email, 1, MAIL_WITHIN).await[0].link();
    app.post_json("/auth/password/forgot", &json!({ "email": email }))
        .await;
    let reset = sink.wait_for(email, 2, MAIL_WITHIN).await[1].link();
    // Assert: by default the mails lead to the hosted pages at PUBLIC_URL.
    for (link, path) in [
        (&verification, "/sso/account/verify-email"),
        (&reset, "/sso/account/reset-password"),
    ] {
        assert_eq!(
            (link.scheme(), link.host_str(), link.path()),
            ("https", Some("auth.shop.example.com"), path)
        );
    }
    // Act: a mail scanner (or the person, twice) opens both links.
    for link in [&verification, &reset] {
        let page = link.path().trim_start_matches("/sso");
        for _ in 0..2 {
            let opened = app.get(&format!("{page}?{}", link.query().unwrap())).await;
            assert_eq!(opened.status(), StatusCode::OK);
        }
    }
    // Assert: both tokens still work.
    let token = |link: &url::Url| {
        link.query_pairs()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let verified = app
        .post_json(
            "/auth/email/verify",
            &json!({ "token": token(&verification) }),
        )
        .await;
    assert_eq!(verified.status(), StatusCode::OK);
    let reset_done = app
        .post_json(
            "/auth/password/reset",
            &json!({ "token": token(&reset), "new_password": "AnotherPass456" }),
        )
        .await;
    assert_eq!(reset_done.status(), StatusCode::OK);
}

async fn the_qr_code_is_drawn_for_an_enrolment_uri_only(backend: Backend) {
    let (app, _sink) = app_with_sink(backend, &[]).await;
    let uri = |secret: &str| {
        format!(
            "otpauth://totp/Corner%20Shop:qr%40example%2Ecom?secret={secret}&issuer=Corner%20Shop\
             &algorithm=SHA1&digits=6&period=30"
        )
    };
    let draw = |text: String| {
        let app = &app;
        async move {
            app.post_json("/account/qr", &json!({ "otpauth_uri": text }))
                .await
        }
    };
    // An enrolment's URI: an SVG picture, not stored, under the pages' policy.
    let response = draw(uri("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")).await;
    assert_eq!(response.status(), StatusCode::OK);
    for (name, value) in [
        ("content-type", "image/svg+xml"),
        ("cache-control", "no-store"),
        ("content-security-policy", PAGE_CSP),
    ] {
        assert_eq!(header(&response, name).as_deref(), Some(value), "{name}");
    }
    let first = response.text().await.unwrap();
    assert!(first.contains("<svg") && first.contains("<path"), "{first}");
    assert!(
        !first.contains("<script") && !first.contains("style="),
        "{first}"
    );
    assert!(
        !first.contains("JBSWY3DP"),
        "the secret is drawn, not written"
    );
    // The same text, the same picture; another secret, another picture.
    let again = draw(uri("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(again, first);
    let other = draw(uri("KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"))
        .await
        .text()
        .await
        .unwrap();
    assert_ne!(other, first);
    // Anything but an enrolment's URI, or one too long: the contract's 422.
    for text in [
        "https://example.com/".to_owned(),
        "otpauth://hotp/x?secret=A".to_owned(),
        String::new(),
        format!("otpauth://totp/{}", "a".repeat(1100)),
    ] {
        let (status, body) = status_and_json(draw(text.clone()).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}: {body}");
        assert_eq!(body["error_code"], "VALIDATION_ERROR", "{body}");
        assert_eq!(body["errors"][0]["field"], "otpauth_uri", "{body}");
    }
    let (status, body) = status_and_json(app.post_json("/account/qr", &json!({})).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

/// The page's state once `selector` is shown (its `hidden` attribute removed).
async fn shown(browser: &Client, selector: &str) -> String {
    browser
        .wait()
        .at_most(StdDuration::from_secs(20))
        .for_element(Locator::Css(&format!("{selector}:not([hidden])")))
        .await
        .unwrap_or_else(|_| panic!("{selector} is shown"))
        .text()
        .await
        .unwrap()
}

/// The text of an element that is shown from the start and written once the API answers (a
/// section's state line): waits for it to be non-empty.
async fn written(browser: &Client, selector: &str) -> String {
    poll_until(&format!("{selector} written"), MAIL_WITHIN, || async {
        !shown(browser, selector).await.is_empty()
    })
    .await;
    shown(browser, selector).await
}

/// For a person to look at: the page as it is now.
async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    let path = std::env::temp_dir().join(format!("auth-service-page-{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Types the new password and its repetition on the reset page, and submits.
async fn choose(browser: &Client, password: &str, again: &str) {
    fill(browser, "new-password", password).await;
    fill(browser, "repeat-password", again).await;
    click(browser, "#reset-form button").await;
}

async fn fill(browser: &Client, id: &str, text: &str) {
    let field = browser
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|err| panic!("#{id} is on the page: {err}"));
    field
        .clear()
        .await
        .unwrap_or_else(|err| panic!("#{id} can be cleared: {err}"));
    field
        .send_keys(text)
        .await
        .unwrap_or_else(|err| panic!("#{id} can be typed in: {err}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_resets_a_password_and_confirms_an_address_in_chromium() {
    // Arrange: a user with a verification mail and a reset mail in the sink.
    let (app, sink) = app_with_sink(Backend::Sqlite, &[]).await;
    let email = "browser@example.com";
    app.register(email, PASSWORD).await;
    let verification = sink.wait_for(email, 1, MAIL_WITHIN).await[0].link();
    app.post_json("/auth/password/forgot", &json!({ "email": email }))
        .await;
    let reset = sink.wait_for(email, 2, MAIL_WITHIN).await[1].link();
    let here = |link: &url::Url| app.url(&format!("{}?{}", link.path(), link.query().unwrap()));

    for (width, height, form_factor) in [(1280, 900, "desktop"), (375, 740, "phone")] {
        let (_driver, browser) = chromium(width, height).await;
        browser.goto(&here(&reset)).await.unwrap();
        shown(&browser, "#reset-form").await;
        screenshot(&browser, &format!("reset-{form_factor}")).await;
        browser.goto(&here(&verification)).await.unwrap();
        shown(&browser, "#verify-form").await;
        screenshot(&browser, &format!("verify-{form_factor}")).await;
        browser.close().await.unwrap();
    }

    let (_driver, browser) = chromium(375, 740).await;
    // Act: the reset page, with two passwords that differ, then a weak one, then a good one.
    browser.goto(&here(&reset)).await.unwrap();
    shown(&browser, "#reset-form").await;
    choose(&browser, "AnotherPass456", "AnotherPass457").await;
    let differ = shown(&browser, "#reasons li").await;
    assert_eq!(differ, "the two passwords differ");
    choose(&browser, "short", "short").await;
    browser
        .wait()
        .at_most(StdDuration::from_secs(20))
        .for_element(Locator::XPath(
            "//ul[@id='reasons']/li[contains(., 'at least 8 characters')]",
        ))
        .await
        .expect("the policy's reason is shown beside the field");
    screenshot(&browser, "reset-weak-phone").await;
    choose(&browser, "AnotherPass456", "AnotherPass456").await;
    let done = shown(&browser, "#done").await;
    assert!(done.contains("Your password has been changed"), "{done}");
    screenshot(&browser, "reset-done-phone").await;
    // Assert: the new password signs in; the old one does not.
    assert_eq!(
        app.login(email, "AnotherPass456").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login(email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // The link, used once, says so when tried again.
    browser.goto(&here(&reset)).await.unwrap();
    choose(&browser, "ThirdPass789x", "ThirdPass789x").await;
    let expired = shown(&browser, "#expired").await;
    assert!(expired.contains("expired or has been used"), "{expired}");
    screenshot(&browser, "reset-expired-phone").await;

    // Act: the verification page's one button.
    browser.goto(&here(&verification)).await.unwrap();
    click(&browser, "#verify-form button").await;
    let confirmed = shown(&browser, "#done").await;
    assert!(confirmed.contains("confirmed"), "{confirmed}");
    screenshot(&browser, "verify-done-phone").await;
    browser.close().await.unwrap();
    // Assert: a new token says the address is verified.
    let (status, body) = status_and_json(app.login(email, "AnotherPass456").await).await;
    assert_eq!(status, StatusCode::OK);
    let access = body["access_token"].as_str().unwrap().to_owned();
    let (_, verified): (StatusCode, Value) = status_and_json(app.verify(&access).await).await;
    assert_eq!(verified["email_verified"], true);
}

async fn count(browser: &Client, selector: &str) -> usize {
    browser
        .find_all(Locator::Css(selector))
        .await
        .unwrap()
        .len()
}

async fn click(browser: &Client, selector: &str) {
    browser
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|err| panic!("{selector} is on the page: {err}"))
        .click()
        .await
        .unwrap_or_else(|err| panic!("{selector} can be clicked: {err}"));
}

/// Fills the account page's password change and submits.
async fn change_password(browser: &Client, current: &str, new: &str, again: &str) {
    fill(browser, "current-password", current).await;
    fill(browser, "changed-password", new).await;
    fill(browser, "changed-again", again).await;
    click(browser, "#password-form button").await;
}

async fn sign_in(browser: &Client, email: &str, password: &str) {
    shown(browser, "#signin-form").await;
    fill(browser, "signin-email", email).await;
    fill(browser, "signin-password", password).await;
    click(browser, "#signin-form button").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_manages_devices_password_and_account_on_the_account_page() {
    // Arrange: a user also signed in on another device, over the API.
    let (app, _sink) = app_with_sink(Backend::Sqlite, &[("EMAIL_VERIFICATION", "off")]).await;
    let email = "owner@example.com";
    app.register(email, PASSWORD).await;
    // At a desktop's width first, for the screenshot; signing out there ends that session.
    {
        let (_driver, desktop) = chromium(1280, 1100).await;
        desktop.goto(&app.url("/account")).await.unwrap();
        sign_in(&desktop, email, PASSWORD).await;
        shown(&desktop, "#account").await;
        poll_until("the device listed", MAIL_WITHIN, || async {
            count(&desktop, "#sessions li").await == 1
        })
        .await;
        screenshot(&desktop, "account-desktop").await;
        click(&desktop, "#signout").await;
        let out = shown(&desktop, "#signed-out").await;
        assert!(out.starts_with("You are signed out."), "{out}");
        desktop.close().await.unwrap();
    }
    let (_, other) = status_and_json(app.login(email, PASSWORD).await).await;
    let other_refresh = other["refresh_token"].as_str().unwrap().to_owned();
    let (_driver, browser) = chromium(375, 1400).await;
    browser.goto(&app.url("/account")).await.unwrap();
    shown(&browser, "#signin-form").await;
    screenshot(&browser, "account-signin-phone").await;

    // Act: a wrong password, then the right one.
    sign_in(&browser, email, "WrongPass999").await;
    let refused = shown(&browser, "#signin-error").await;
    assert_eq!(refused, "Wrong email or password.");
    sign_in(&browser, email, PASSWORD).await;
    shown(&browser, "#account").await;
    poll_until("both devices listed", MAIL_WITHIN, || async {
        count(&browser, "#sessions li").await == 2
    })
    .await;
    screenshot(&browser, "account-phone").await;
    // Sign the other device out.
    click(&browser, "#sessions li button").await;
    poll_until("one device left", MAIL_WITHIN, || async {
        count(&browser, "#sessions li").await == 1
    })
    .await;
    assert_eq!(
        app.refresh(&other_refresh).await.status(),
        StatusCode::UNAUTHORIZED,
        "the other device's session ended"
    );
    // Change the password: a weak one first.
    change_password(&browser, PASSWORD, "short", "short").await;
    browser
        .wait()
        .at_most(StdDuration::from_secs(20))
        .for_element(Locator::XPath(
            "//ul[@id='password-reasons']/li[contains(., 'at least 8 characters')]",
        ))
        .await
        .expect("the policy's reason is shown");
    change_password(&browser, PASSWORD, "ChangedPass789", "ChangedPass789").await;
    shown(&browser, "#password-done").await;
    screenshot(&browser, "account-password-changed-phone").await;
    assert_eq!(
        app.login(email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (status, elsewhere) = status_and_json(app.login(email, "ChangedPass789").await).await;
    assert_eq!(status, StatusCode::OK);
    // Nothing of the sign-in is kept outside the page's memory.
    let kept = browser
        .execute(
            "return [localStorage.length, sessionStorage.length, document.cookie];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kept, json!([0, 0, ""]));
    // Sign out everywhere: the session started over the API ends too.
    click(&browser, "#signout-everywhere").await;
    let everywhere = shown(&browser, "#signed-out").await;
    assert!(everywhere.contains("signed out everywhere"), "{everywhere}");
    let elsewhere_refresh = elsewhere["refresh_token"].as_str().unwrap();
    assert_eq!(
        app.refresh(elsewhere_refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Delete the account: a wrong password first.
    click(&browser, "#signin-again").await;
    sign_in(&browser, email, "ChangedPass789").await;
    shown(&browser, "#account").await;
    fill(&browser, "delete-password", "NotMyPass123").await;
    click(&browser, "#delete-form button").await;
    let wrong = shown(&browser, "#delete-error").await;
    assert_eq!(wrong, "The password is wrong.");
    fill(&browser, "delete-password", "ChangedPass789").await;
    click(&browser, "#delete-form button").await;
    let deleted = shown(&browser, "#signed-out").await;
    assert!(deleted.contains("deleted"), "{deleted}");
    screenshot(&browser, "account-deleted-phone").await;
    browser.close().await.unwrap();
    // Assert: the account is gone.
    assert_eq!(
        app.login(email, "ChangedPass789").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// The texts of the elements `selector` finds.
async fn texts(browser: &Client, selector: &str) -> Vec<String> {
    let mut texts = Vec::new();
    for element in browser.find_all(Locator::Css(selector)).await.unwrap() {
        texts.push(element.text().await.unwrap());
    }
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_turns_on_two_step_sign_in_on_the_account_page_and_signs_in_with_it() {
    use auth_service::clock::Clock as _;
    // Arrange: a user, also signed in on another device over the API.
    let (app, sink) = app_with_sink(Backend::Sqlite, &[("EMAIL_VERIFICATION", "off")]).await;
    let email = "two-step@example.com";
    app.register(email, PASSWORD).await;
    // At a desktop's width first, for the screenshot of an enrolment (left unconfirmed: the
    // phone's below replaces it).
    {
        let (_driver, desktop) = chromium(1280, 1500).await;
        desktop.goto(&app.url("/account")).await.unwrap();
        sign_in(&desktop, email, PASSWORD).await;
        shown(&desktop, "#account").await;
        click(&desktop, "#mfa-add").await;
        poll_until("the QR code drawn", MAIL_WITHIN, || async {
            count(&desktop, "#mfa-qr svg").await == 1
        })
        .await;
        screenshot(&desktop, "account-mfa-enrol-desktop").await;
        desktop.close().await.unwrap();
    }
    let (_, other) = status_and_json(app.login(email, PASSWORD).await).await;
    let (_driver, browser) = chromium(375, 1800).await;
    browser.goto(&app.url("/account")).await.unwrap();
    sign_in(&browser, email, PASSWORD).await;
    shown(&browser, "#account").await;
    let off = written(&browser, "#mfa-state").await;
    assert!(off.starts_with("Off"), "{off}");

    // Act: add an app; the service draws the QR code, the key is there to type.
    click(&browser, "#mfa-add").await;
    shown(&browser, "#mfa-enrol-form").await;
    poll_until("the QR code drawn", MAIL_WITHIN, || async {
        count(&browser, "#mfa-qr svg").await == 1
    })
    .await;
    let secret = shown(&browser, "#mfa-secret").await;
    assert_eq!(secret.len(), 32, "{secret}");
    screenshot(&browser, "account-mfa-enrol-phone").await;
    // A wrong code, then the app's code.
    let right = code_at(&secret, app.clock.now());
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    fill(&browser, "mfa-enrol-code", wrong).await;
    click(&browser, "#mfa-enrol-form button[type=submit]").await;
    let refused = shown(&browser, "#mfa-enrol-error").await;
    assert!(refused.contains("not right"), "{refused}");
    fill(&browser, "mfa-enrol-code", &right).await;
    click(&browser, "#mfa-enrol-form button[type=submit]").await;

    // Assert: ten recovery codes shown once, offered as a file; the factor listed; the other
    // device signed out; the mail sent.
    shown(&browser, "#recovery").await;
    let codes = texts(&browser, "#recovery-codes li").await;
    assert_eq!(codes.len(), 10, "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| c.len() == 11 && c.as_bytes()[5] == b'-')
    );
    let download = browser
        .execute(
            "var a = document.getElementById('recovery-download'); return [a.href, a.download];",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        download[0].as_str().unwrap().starts_with("blob:"),
        "{download}"
    );
    assert_eq!(download[1], "recovery-codes.txt");
    poll_until("the factor listed", MAIL_WITHIN, || async {
        count(&browser, "#factors li").await == 1
    })
    .await;
    let on = written(&browser, "#mfa-state").await;
    assert!(on.contains("10 recovery codes left"), "{on}");
    screenshot(&browser, "account-mfa-codes-phone").await;
    assert_eq!(
        app.refresh(other["refresh_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let added = sink.wait_for(email, 1, MAIL_WITHIN).await;
    assert!(
        added[0].subject().contains("second factor was added"),
        "{added:?}"
    );

    // Sign in again: the password, then a code from the app (the next one).
    click(&browser, "#signout").await;
    shown(&browser, "#signed-out").await;
    assert_eq!(
        count(&browser, "#recovery-codes li").await,
        0,
        "gone with the sign-out"
    );
    click(&browser, "#signin-again").await;
    app.clock.advance(chrono::Duration::seconds(30));
    sign_in(&browser, email, PASSWORD).await;
    shown(&browser, "#mfa-form").await;
    screenshot(&browser, "account-mfa-signin-phone").await;
    fill(&browser, "mfa-code", &code_at(&secret, app.clock.now())).await;
    click(&browser, "#mfa-form button[type=submit]").await;
    shown(&browser, "#account").await;

    // And with a recovery code instead.
    click(&browser, "#signout").await;
    shown(&browser, "#signed-out").await;
    click(&browser, "#signin-again").await;
    sign_in(&browser, email, PASSWORD).await;
    shown(&browser, "#mfa-form").await;
    click(&browser, "#mfa-use-recovery").await;
    let label = shown(&browser, "#mfa-code-label").await;
    assert_eq!(label, "Recovery code");
    fill(&browser, "mfa-code", &codes[0].to_uppercase()).await;
    click(&browser, "#mfa-form button[type=submit]").await;
    shown(&browser, "#account").await;
    poll_until("one code spent", MAIL_WITHIN, || async {
        texts(&browser, "#mfa-state:not([hidden])")
            .await
            .first()
            .is_some_and(|state| state.contains("9 recovery codes left"))
    })
    .await;

    // Remove the app: the password alone signs in again.
    click(&browser, "#factors li button").await;
    poll_until("the factor removed", MAIL_WITHIN, || async {
        count(&browser, "#factors li").await == 0
    })
    .await;
    let off = written(&browser, "#mfa-state").await;
    assert!(off.starts_with("Off"), "{off}");
    browser.close().await.unwrap();
    assert_eq!(app.login(email, PASSWORD).await.status(), StatusCode::OK);
}

/// Chromium's WebDriver extension `POST /session/{id}/webauthn/authenticator`: a virtual
/// platform authenticator with resident keys that verifies its user.
#[derive(Debug)]
struct AddVirtualAuthenticator;

impl fantoccini::wd::WebDriverCompatibleCommand for AddVirtualAuthenticator {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/webauthn/authenticator",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        let body = json!({
            "protocol": "ctap2",
            "transport": "internal",
            "hasResidentKey": true,
            "hasUserVerification": true,
            "isUserConsenting": true,
            "isUserVerified": true,
        });
        (axum::http::Method::POST, Some(body.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_adds_a_passkey_on_the_account_page_and_signs_in_with_it() {
    // Arrange: the page at http://localhost:<port>, an origin passkeys may use (RP ID
    // `localhost`), a user, and Chromium with a virtual authenticator.
    let port = free_port();
    let db = TestDb::new(Backend::Sqlite).await;
    let origin = format!("http://localhost:{port}");
    let config = test_config(
        &db,
        &[("EMAIL_VERIFICATION", "off"), ("WEBAUTHN_ORIGINS", &origin)],
    );
    let app =
        TestApp::spawn_config_on_port(db, auth_service::clock::TestClock::new(), config, port)
            .await;
    let email = "passkey-page@example.com";
    app.register(email, PASSWORD).await;
    let (_driver, browser) = chromium(375, 1800).await;
    browser.issue_cmd(AddVirtualAuthenticator).await.unwrap();
    browser.goto(&format!("{origin}/account")).await.unwrap();
    shown(&browser, "#passkey-signin").await;
    sign_in(&browser, email, PASSWORD).await;
    shown(&browser, "#account").await;
    let none = written(&browser, "#passkeys-state").await;
    assert!(none.starts_with("None yet"), "{none}");

    // Act: add a passkey named "Phone".
    fill(&browser, "passkey-name", "Phone").await;
    click(&browser, "#passkey-add").await;
    // Assert: listed by its name, never used yet.
    poll_until("the passkey listed", MAIL_WITHIN, || async {
        count(&browser, "#passkeys li").await == 1
    })
    .await;
    let listed = texts(&browser, "#passkeys li").await;
    assert!(listed[0].contains("Phone"), "{listed:?}");
    assert!(listed[0].contains("last used never"), "{listed:?}");
    screenshot(&browser, "account-passkey-added-phone").await;
    // The same section at a desktop's width, in a second browser signed in with the password.
    {
        let (_driver, desktop) = chromium(1280, 1500).await;
        desktop.goto(&format!("{origin}/account")).await.unwrap();
        sign_in(&desktop, email, PASSWORD).await;
        poll_until("the passkey listed", MAIL_WITHIN, || async {
            count(&desktop, "#passkeys li").await == 1
        })
        .await;
        desktop
            .execute(
                "document.getElementById('passkeys-title').scrollIntoView();",
                vec![],
            )
            .await
            .unwrap();
        screenshot(&desktop, "account-passkey-added-desktop").await;
        desktop.close().await.unwrap();
    }

    // Act: sign out, then sign in with the passkey alone (no email, no password).
    click(&browser, "#signout").await;
    shown(&browser, "#signed-out").await;
    click(&browser, "#signin-again").await;
    screenshot(&browser, "account-passkey-signin-phone").await;
    click(&browser, "#passkey-signin").await;
    // Assert: signed in as the user, and the passkey shows its use.
    shown(&browser, "#account").await;
    assert_eq!(shown(&browser, "#who").await, email);
    poll_until("the use shown", MAIL_WITHIN, || async {
        texts(&browser, "#passkeys li")
            .await
            .first()
            .is_some_and(|item| !item.contains("last used never"))
    })
    .await;
    let (access, _) = app.tokens(email).await;
    let (_, list) = status_and_json(app.get_bearer("/auth/passkeys", &access).await).await;
    assert!(list["passkeys"][0]["last_used_at"].is_string(), "{list}");

    // Act: remove it from the page.
    click(&browser, "#passkeys li button").await;
    poll_until("the passkey removed", MAIL_WITHIN, || async {
        count(&browser, "#passkeys li").await == 0
    })
    .await;
    browser.close().await.unwrap();
    let (_, list) = status_and_json(app.get_bearer("/auth/passkeys", &access).await).await;
    assert_eq!(list["passkeys"], json!([]));
}
