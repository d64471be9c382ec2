//! The hosted pages (API.md, "Hosted pages"): where the links in the mails lead when the shop
//! has no page of its own, and the account page. `GET /account/reset-password`,
//! `GET /account/verify-email` and `GET /account` are plain HTML from the binary (askama, `templates/pages/`), with one stylesheet and one script
//! beside them under `/account/assets/`; no third-party asset, no inline script or style.
//!
//! Opening a page spends nothing: the page never reads the token on the server; its script takes
//! it from the link and POSTs it to the JSON API (`/auth/password/reset`, `/auth/email/verify`)
//! when the person presses the button, as a same-origin request. The account page signs in with
//! the JSON API and keeps the tokens in the page's memory (a reload signs out), never in
//! storage or a cookie. The pages need the script (the API takes JSON); without it they say so.
//!
//! `POST /account/qr` draws the enrolment's `otpauth://` URI as an SVG QR code for the account
//! page (the service draws it: no script library, and the secret never travels in a URL).

use askama::Template;
use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

use super::{
    errors::{ApiError, FieldError},
    extract::AppJson,
};
use crate::{service::AuthError, state::AppState};

/// Every page's policy: its own origin only, never framed, no plugins, forms only to itself.
pub const PAGE_CSP: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'; object-src 'none'";

/// The pages and their two assets (not API routes: not in the OpenAPI document).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/account", get(account))
        .route("/account/reset-password", get(reset_password))
        .route("/account/verify-email", get(verify_email))
        .route("/account/assets/{file}", get(asset))
        .route("/account/qr", post(qr))
}

/// Where a page's stylesheet and script are, relative to the page: beside `/account`'s
/// children, under `/account` itself (relative, so a path prefix in `PUBLIC_URL` works).
const BESIDE: &str = "assets";
const BELOW: &str = "account/assets";

#[derive(Template)]
#[template(path = "pages/account.html")]
struct Account<'a> {
    product: &'a str,
    assets: &'a str,
}

#[derive(Template)]
#[template(path = "pages/reset_password.html")]
struct ResetPassword<'a> {
    product: &'a str,
    assets: &'a str,
}

#[derive(Template)]
#[template(path = "pages/verify_email.html")]
struct VerifyEmail<'a> {
    product: &'a str,
    assets: &'a str,
}

/// `GET /account`: sign in, then the account's security (password, devices, deletion). The
/// tokens live in the page's memory only.
async fn account(State(state): State<AppState>) -> Response {
    page(&Account {
        product: &state.http().product,
        assets: BELOW,
    })
}

/// `GET /account/reset-password?token=...`: the new-password form.
async fn reset_password(State(state): State<AppState>) -> Response {
    page(&ResetPassword {
        product: &state.http().product,
        assets: BESIDE,
    })
}

/// `GET /account/verify-email?token=...`: one button that confirms.
async fn verify_email(State(state): State<AppState>) -> Response {
    page(&VerifyEmail {
        product: &state.http().product,
        assets: BESIDE,
    })
}

/// A rendered page with the pages' headers (`Referrer-Policy: no-referrer` and `nosniff` are
/// on every response already).
fn page(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => with_page_headers(
            ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        ),
        Err(err) => ApiError::from(AuthError::Internal(err.into())).into_response(),
    }
}

/// `GET /account/assets/{file}`: the stylesheet and the script, from the binary.
async fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "pages.css" => (
            include_str!("../../templates/pages/pages.css"),
            "text/css; charset=utf-8",
        ),
        "pages.js" => (
            include_str!("../../templates/pages/pages.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return ApiError::NotFound.into_response(),
    };
    with_page_headers(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// `POST /account/qr` body: the URI `POST /auth/mfa/totp` answered.
#[derive(Deserialize, utoipa::ToSchema)]
struct QrRequest {
    otpauth_uri: String,
}

/// The longest text drawn: an enrolment's URI, with a 254-character email and a long product
/// name percent-encoded, stays under it.
const MAX_QR_TEXT: usize = 1024;

/// `POST /account/qr`: the enrolment's `otpauth://totp/` URI as an SVG QR code, for the account
/// page to show (an authenticator app scans it). Anything else is refused: this draws
/// enrolments, not whatever a caller sends. `no-store`, as the secret is in the picture.
async fn qr(AppJson(request): AppJson<QrRequest>) -> Response {
    let text = request.otpauth_uri;
    let code = (text.starts_with("otpauth://totp/") && text.len() <= MAX_QR_TEXT)
        .then(|| qrcode::QrCode::new(text.as_bytes()).ok())
        .flatten();
    let Some(code) = code else {
        return ApiError::Validation(vec![FieldError::new(
            "otpauth_uri",
            "must be the otpauth://totp/ URI of an enrolment",
        )])
        .into_response();
    };
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    with_page_headers(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

fn with_page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
