//! The integration suite: one binary, every test on SQLite and on PostgreSQL over a real socket.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly; that is their job"
)]

mod helpers;

mod admin_cli;
mod api_errors;
mod api_health;
mod api_login;
mod api_logout;
mod api_refresh;
mod api_register;
mod api_verify;
mod attacks;
mod connection_slots;
mod deploy_files;
mod docs_browser;
mod hashing;
mod hosted_pages;
mod hostile_clients;
mod imported_hashes;
mod lifecycle;
mod local_verification;
mod operations;
mod otlp_receiver;
mod outage;
mod passkeys;
mod races;
mod recovery;
mod second_factor;
mod self_service;
mod sessions;
mod smtp_sink;
mod startup_config;
mod store_contract;
mod traces;
mod verifier_crate;
mod verify_doors;
mod webhook_receiver;
mod webhooks;
