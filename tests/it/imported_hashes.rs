//! Users brought from another system sign in with the password hash that system made: argon2,
//! scrypt and PBKDF2 (PHC strings), Django's PBKDF2, phpass (WordPress, phpBB) and bcrypt under
//! each prefix. Over real sockets on both databases: the right password signs in and the hash
//! becomes ours (bcrypt at `BCRYPT_ROUNDS`), a wrong one is refused and counts toward the
//! lockout, and a hash with costly parameters is never run. The hashes were made by someone
//! else's code (argon2-cffi, passlib, Python's hashlib), not by the crates that verify them.
//! `auth-service user import` brings them in from JSON Lines: every bad line reported with its
//! number and reason (never its hash), a second run imports nothing, `--dry-run` writes nothing,
//! a repeated email is caught across batches, progress shows on a terminal only, and every
//! format is verified on the password-hashing pool.

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::json;

use crate::{dual_backend, helpers::*};

dual_backend!(
    user_import_brings_every_format_and_reports_each_bad_line,
    a_second_import_imports_nothing_and_a_dry_run_writes_nothing,
    each_format_signs_in_once_then_the_hash_is_ours,
    wrong_passwords_against_an_imported_hash_count_toward_the_lockout,
    a_hash_with_costly_parameters_never_signs_in_and_is_kept,
);

/// The password every vector was made for.
const IMPORTED_PASSWORD: &str = "Imported-Pass-123";

/// (format, hash) for `IMPORTED_PASSWORD`.
const VECTORS: [(&str, &str); 8] = [
    (
        "argon2id",
        "$argon2id$v=19$m=19456,t=2,p=1$rFMgd7i5EvW0QEjRdeq/Fw$TaOkx8zceq7FNapIgKs5x2gS6EbU5tOlcds2CMeNyN0",
    ),
    (
        "argon2i",
        "$argon2i$v=19$m=8192,t=2,p=1$z4uLFXtq84WSjHFAWQjCdA$J6BFkvL/qsJKjb+3Lpm2aBZHeemNNiiGklIJzG9gplM",
    ),
    ("wordpress", "$P$6maPPE8TkQ5VY.lVM2wfxDbKNGdRu41"),
    ("phpbb", "$H$6Ilfdm/Z5bJswkYdnT5iiqLF00.XmY/"),
    (
        "django",
        "pbkdf2_sha256$10000$UDjDB2JGS0eY$6oEtxscgUtsjZE4UKRWM594+GTl0aKrZBy4HuB12/Q0=",
    ),
    (
        "scrypt",
        "$scrypt$ln=10,r=8,p=1$c2FsdHNhbHRzYWx0MTIzNA$PDALpEiyzT7uqFe4EtSQKeNbGFHk6htxeFLI2QR8DXg",
    ),
    (
        "pbkdf2-sha256",
        "$pbkdf2-sha256$i=10000,l=32$c2FsdHNhbHRzYWx0MTIzNA$ZLTLxgUNxsWUD2lfzXEY6ajpTD1slUvvIGb7InpwBnQ",
    ),
    (
        "pbkdf2-sha512",
        "$pbkdf2-sha512$i=10000,l=64$c2FsdHNhbHRzYWx0MTIzNA$wMvROBpF8WR/4DD+MGUYceeYVB8ZcrEnmM6lmZxZD6aD4ecdl5n+FswPABspzQZiq/i+lGN5rLPO2SbQ2GhtsA",
    ),
];

/// A user stored with `hash`, as an import leaves it.
async fn imported(app: &TestApp, email: &str, hash: &str) -> i64 {
    app.store
        .insert_user(email, hash, Utc::now())
        .await
        .unwrap()
        .id
}

/// A login with `password` answers 401 `INVALID_CREDENTIALS`.
async fn refused(app: &TestApp, email: &str, password: &str) {
    let (status, body) = status_and_json(app.login(email, password).await).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "Invalid email or password",
        "INVALID_CREDENTIALS",
    );
}

async fn stored_hash(app: &TestApp, id: i64) -> String {
    app.store
        .find_user_by_id(id)
        .await
        .unwrap()
        .unwrap()
        .password_hash
}

async fn each_format_signs_in_once_then_the_hash_is_ours(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("EMAIL_VERIFICATION", "off")]).await;
    // bcrypt from PHP ($2y$) and older libraries ($2a$), at another cost than ours.
    let bcrypt = bcrypt::hash(IMPORTED_PASSWORD, 5).unwrap();
    let php = format!("$2y${}", &bcrypt[4..]);
    let old = format!("$2a${}", &bcrypt[4..]);
    let all = VECTORS
        .iter()
        .map(|(name, hash)| ((*name).to_owned(), (*hash).to_owned()))
        .chain([("bcrypt-2y".to_owned(), php), ("bcrypt-2a".to_owned(), old)]);
    for (name, hash) in all {
        let email = format!("{name}@example.com");
        let id = imported(&app, &email, &hash).await;
        // Act + Assert: a wrong password is refused and changes nothing.
        refused(&app, &email, "Imported-Pass-124").await;
        assert_eq!(stored_hash(&app, id).await, hash, "{name}");
        // The right one signs in, and the stored hash is now bcrypt at BCRYPT_ROUNDS (4).
        let (status, body) = status_and_json(app.login(&email, IMPORTED_PASSWORD).await).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        let ours = stored_hash(&app, id).await;
        assert!(ours.starts_with("$2b$04$"), "{name}: rehashed");
        assert!(bcrypt::verify(IMPORTED_PASSWORD, &ours).unwrap(), "{name}");
        // The next login uses ours.
        assert_eq!(
            app.login(&email, IMPORTED_PASSWORD).await.status(),
            StatusCode::OK,
            "{name}"
        );
        assert_eq!(stored_hash(&app, id).await, ours, "{name}: rehashed once");
    }
}

async fn wrong_passwords_against_an_imported_hash_count_toward_the_lockout(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("EMAIL_VERIFICATION", "off")]).await;
    let email = "locked@example.com";
    imported(&app, email, VECTORS[0].1).await;
    for _ in 0..5 {
        assert_eq!(
            app.login(email, "Imported-Pass-124").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, body) = status_and_json(app.login(email, IMPORTED_PASSWORD).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error_code"], "TOO_MANY_ATTEMPTS");
}

async fn a_hash_with_costly_parameters_never_signs_in_and_is_kept(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("EMAIL_VERIFICATION", "off")]).await;
    // Argon2 asking for 4 GiB, PBKDF2 for 10^9 iterations, scrypt for N = 2^30, phpass for
    // 2^61 rounds: with the right password, each would stall a hashing thread for good.
    for (name, hash) in [
        (
            "argon2",
            "$argon2id$v=19$m=4194304,t=2,p=1$rFMgd7i5EvW0QEjRdeq/Fw$TaOkx8zceq7FNapIgKs5x2gS6EbU5tOlcds2CMeNyN0",
        ),
        (
            "pbkdf2",
            "$pbkdf2-sha256$i=1000000000,l=32$c2FsdHNhbHRzYWx0MTIzNA$ZLTLxgUNxsWUD2lfzXEY6ajpTD1slUvvIGb7InpwBnQ",
        ),
        (
            "scrypt",
            "$scrypt$ln=30,r=8,p=1$c2FsdHNhbHRzYWx0MTIzNA$PDALpEiyzT7uqFe4EtSQKeNbGFHk6htxeFLI2QR8DXg",
        ),
        ("phpass", "$P$zmaPPE8TkQ5VY.lVM2wfxDbKNGdRu41"),
    ] {
        let email = format!("costly-{name}@example.com");
        let id = imported(&app, &email, hash).await;
        refused(&app, &email, IMPORTED_PASSWORD).await;
        assert_eq!(stored_hash(&app, id).await, hash, "{name}");
    }
    // The service still answers at once: no hashing thread is stuck.
    let (_, access, _) = app.user_with_tokens("after@example.com").await;
    assert_eq!(app.verify(&access).await.status(), StatusCode::OK);
}

/// `auth-service user import -` with `lines` on standard input: (exit code, stdout, stderr).
async fn import(app: &TestApp, args: &[&str], lines: &[String]) -> (Option<i32>, String, String) {
    let mut all = vec!["user", "import"];
    all.extend_from_slice(args);
    let input = lines.join("\n") + "\n";
    let out = tokio::task::block_in_place(|| cli(&app.db, &all, &input));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn line(email: &str, hash: &str) -> String {
    json!({ "email": email, "password_hash": hash }).to_string()
}

async fn user_import_brings_every_format_and_reports_each_bad_line(backend: Backend) {
    // Arrange: a line per format (one verified, one disabled, one with its creation time),
    // then one bad line of each kind.
    let app = TestApp::spawn_with(backend, &[("EMAIL_VERIFICATION", "off")]).await;
    let mut lines: Vec<String> = VECTORS
        .iter()
        .map(|(name, hash)| line(&format!("{name}@shop.example"), hash))
        .collect();
    lines[0] = json!({"email": "ARGON2ID@Shop.Example", "password_hash": VECTORS[0].1,
        "email_verified": true, "created_at": "2019-05-06T07:08:09+02:00"})
    .to_string();
    lines[1] = json!({"email": "argon2i@shop.example", "password_hash": VECTORS[1].1,
        "disabled": true})
    .to_string();
    let good = lines.len();
    let costly = "$pbkdf2-sha256$i=1000000000,l=32$c2FsdHNhbHRzYWx0MTIzNA$ZLTLxgUNxsWUD2lfzXEY6ajpTD1slUvvIGb7InpwBnQ";
    let bad = [
        (
            line("not-an-email", VECTORS[2].1),
            "invalid email".to_owned(),
        ),
        (
            line("md5@shop.example", "5f4dcc3b5aa765d61d8327deb882cf99"),
            "unrecognised hash format".to_owned(),
        ),
        (
            line("short@shop.example", "$P$6maPPE8Tk"),
            "malformed phpass hash".to_owned(),
        ),
        (
            line("costly@shop.example", costly),
            "pbkdf2 1000000000 iterations is over 2000000".to_owned(),
        ),
        (
            "{\"email\": \"x@shop.example\"".to_owned(),
            "not a JSON object".to_owned(),
        ),
        (
            "[\"x@shop.example\", \"hash\"]".to_owned(),
            "not a JSON object".to_owned(),
        ),
        (
            line(
                "argon2-4g@shop.example",
                "$argon2id$v=19$m=4194304,t=2,p=1$rFMgd7i5EvW0QEjRdeq/Fw$TaOkx8zceq7FNapIgKs5x2gS6EbU5tOlcds2CMeNyN0",
            ),
            "argon2 memory 4194304 KiB is over 262144 KiB".to_owned(),
        ),
        (
            line(
                "scrypt-2-30@shop.example",
                "$scrypt$ln=30,r=8,p=1$c2FsdHNhbHRzYWx0MTIzNA$PDALpEiyzT7uqFe4EtSQKeNbGFHk6htxeFLI2QR8DXg",
            ),
            "scrypt ln=30 r=8 p=1 is over ln=20, 1 GiB, p=4".to_owned(),
        ),
        (
            line(
                "phpass-2-63@shop.example",
                "$P$zmaPPE8TkQ5VY.lVM2wfxDbKNGdRu41",
            ),
            "phpass 2^63 rounds is over 2^20".to_owned(),
        ),
        (
            json!({"email": "nohash@shop.example"}).to_string(),
            "missing or mistyped fields: missing `password_hash`".to_owned(),
        ),
        (
            json!({"email": "when@shop.example", "password_hash": VECTORS[2].1,
                "created_at": "last Tuesday"})
            .to_string(),
            "invalid created_at".to_owned(),
        ),
        (
            line("Wordpress@Shop.Example", VECTORS[3].1),
            "email repeated in the file (first on line 3)".to_owned(),
        ),
    ];
    lines.extend(bad.iter().map(|(text, _)| text.clone()));

    // Act
    let (code, stdout, stderr) = import(&app, &["-"], &lines).await;

    // Assert: exit 3, each bad line named with its reason and nothing else.
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    let expected: Vec<String> = bad
        .iter()
        .enumerate()
        .map(|(i, (_, why))| format!("line {}: skipped: {why}", good + i + 1))
        .collect();
    assert_eq!(stderr.lines().collect::<Vec<_>>(), expected, "{stderr}");
    for (_, hash) in VECTORS {
        assert!(!stderr.contains(&hash[hash.len() - 10..]), "never a hash");
    }
    assert!(!stderr.contains("ZLTLxgUN") && !stderr.contains("5f4dcc3b"));
    assert!(
        stdout.starts_with(&format!("imported {good} of {} users into ", lines.len())),
        "{stdout}"
    );
    assert!(stdout.contains("1 invalid email"), "{stdout}");
    // Every imported user signs in with the old password, at once ours after.
    for (name, _) in VECTORS.iter().skip(2) {
        let email = format!("{name}@shop.example");
        assert_eq!(
            app.login(&email, "Imported-Pass-124").await.status(),
            StatusCode::UNAUTHORIZED,
            "{name}"
        );
        assert_eq!(
            app.login(&email, IMPORTED_PASSWORD).await.status(),
            StatusCode::OK,
            "{name}"
        );
    }
    // The verified one's address is verified, its creation time kept, its email normalised.
    let (status, body) =
        status_and_json(app.login("argon2id@shop.example", IMPORTED_PASSWORD).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(claims_of(access)["email_verified"], true);
    let user = app
        .store
        .find_user_by_email("argon2id@shop.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.created_at.to_rfc3339(), "2019-05-06T05:08:09+00:00");
    // The disabled one is disabled.
    let (status, body) =
        status_and_json(app.login("argon2i@shop.example", IMPORTED_PASSWORD).await).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("ACCOUNT_DISABLED")),
        "{body}"
    );
    // Refused lines left nothing behind.
    for email in [
        "costly@shop.example",
        "md5@shop.example",
        "when@shop.example",
    ] {
        assert!(app.store.find_user_by_email(email).await.unwrap().is_none());
    }
}

async fn a_second_import_imports_nothing_and_a_dry_run_writes_nothing(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("EMAIL_VERIFICATION", "off")]).await;
    let lines: Vec<String> = (0..2500)
        .map(|i| line(&format!("bulk{i}@shop.example"), VECTORS[4].1))
        .collect();
    // A dry run: the answer a real run would give, nothing written.
    let (code, stdout, stderr) = import(&app, &["--dry-run", "-"], &lines).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.starts_with("would import 2500 of 2500 users"),
        "{stdout}"
    );
    // A repeated email, in another batch than its first line: the first wins, in a dry run
    // and in a real one (there found through the database, with memory flat).
    let mut repeated = lines[..1001].to_vec();
    repeated[1000] = lines[0].clone();
    let (code, _, stderr) = import(&app, &["--dry-run", "-"], &repeated).await;
    assert_eq!(code, Some(3));
    assert_eq!(
        stderr.trim_end(),
        "line 1001: skipped: email repeated in the file (first on line 1)"
    );
    let mut fresh: Vec<String> = (0..1001)
        .map(|i| line(&format!("repeat{i}@shop.example"), VECTORS[4].1))
        .collect();
    fresh[1000] = fresh[0].clone();
    let (code, stdout, stderr) = import(&app, &["-"], &fresh).await;
    assert_eq!(code, Some(3), "{stdout}");
    assert_eq!(
        stderr.trim_end(),
        "line 1001: skipped: email repeated in the file (an earlier line wins)"
    );
    assert!(
        stdout.starts_with("imported 1000 of 1001 users"),
        "{stdout}"
    );
    assert!(
        app.store
            .find_user_by_email("bulk0@shop.example")
            .await
            .unwrap()
            .is_none()
    );
    // The real run (three batches), then the same file again.
    let (code, stdout, _) = import(&app, &["-"], &lines).await;
    assert_eq!(code, Some(0));
    assert!(
        stdout.starts_with("imported 2500 of 2500 users"),
        "{stdout}"
    );
    assert!(stdout.ends_with("skipped: none\n"), "{stdout}");
    let (code, stdout, stderr) = import(&app, &["-"], &lines).await;
    assert_eq!(code, Some(0), "existing emails are not a fault: {stderr}");
    assert!(stdout.starts_with("imported 0 of 2500 users"), "{stdout}");
    assert!(stdout.contains("2500 email already exists"), "{stdout}");
    assert_eq!(stderr.lines().count(), 2500);
    assert_eq!(
        stderr.lines().next(),
        Some("line 1: skipped: email already exists")
    );
    // A dry run now says the same, and a missing file is a usage error.
    let (code, stdout, _) = import(&app, &["--dry-run", "-"], &lines[..3]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("would import 0 of 3 users"), "{stdout}");
    let (code, _, stderr) = import(&app, &["/nonexistent/users.jsonl"], &[]).await;
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with("auth-service: cannot read /nonexistent/users.jsonl"),
        "{stderr}"
    );
    assert_eq!(
        app.login("bulk2499@shop.example", IMPORTED_PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
}

/// The progress bar shows on a terminal (here a pseudo-terminal made by `script`) and not in a
/// pipe, where stderr holds only the skipped lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_sees_the_progress_and_a_pipe_does_not() {
    let app = TestApp::spawn_with(Backend::Sqlite, &[("EMAIL_VERIFICATION", "off")]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.jsonl");
    let lines: Vec<String> = (0..3000)
        .map(|i| line(&format!("tty{i}@shop.example"), VECTORS[4].1))
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let file = file.display().to_string();
    let command = format!("{BIN} user import {file}");
    let on_terminal = tokio::task::block_in_place(|| {
        std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env("DATABASE_URL", app.db.url_string())
            .env("JWT_SECRET_KEY", SECRET)
            .output()
            .unwrap()
    });
    let shown = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(on_terminal.status.success(), "{shown}");
    assert!(shown.contains(" read ["), "a progress line: {shown}");
    assert!(shown.contains("imported 3000 of 3000 users"), "{shown}");
    let (code, _, stderr) = import(&app, &[&file], &[]).await;
    assert_eq!(code, Some(0));
    assert!(!stderr.contains(" read ["), "{stderr}");
    assert_eq!(stderr.lines().count(), 3000, "only the skipped lines");
}

/// Every imported format is verified on the password-hashing pool (its jobs are counted by
/// `password_hash_wait_seconds`), not on an async worker: the real binary, whose metrics count
/// this test's jobs only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_hashes_are_verified_on_the_hashing_pool() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    for (name, hash) in VECTORS {
        store
            .insert_user(&format!("{name}@pool.example"), hash, Utc::now())
            .await
            .unwrap();
    }
    let url = db.url_string();
    let mut binary = Binary::spawn(&[
        ("DATABASE_URL", url.as_str()),
        ("JWT_SECRET_KEY", SECRET),
        ("BCRYPT_ROUNDS", "4"),
        ("EMAIL_VERIFICATION", "off"),
    ]);
    assert!(tokio::task::block_in_place(|| binary.wait_ready()));
    let client = reqwest::Client::new();
    for (name, _) in VECTORS {
        let response = client
            .post(binary.url("/auth/login"))
            .json(&json!({"email": format!("{name}@pool.example"), "password": "Wrong-Pass-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
    }
    let metrics = binary.metrics().await;
    tokio::task::block_in_place(|| binary.terminate());
    let jobs = crate::api_health::metric_value(&metrics, "password_hash_wait_seconds_count");
    assert_eq!(
        jobs,
        Some(8.0),
        "one pool job per imported format: {metrics}"
    );
}
