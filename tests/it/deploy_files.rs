//! The deployment files: every probe they name is a route the app serves on the port they
//! name; the Dockerfile and Compose file say what the README promises.

use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde_yaml_ng::Value;

use crate::helpers::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Every `httpGet` probe (path, port) in a YAML tree.
fn probes(value: &Value, out: &mut Vec<(String, u64)>) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                if key.as_str() == Some("httpGet") {
                    let path = child["path"].as_str().expect("probe path").to_owned();
                    let port = child["port"].as_u64().expect("numeric probe port");
                    out.push((path, port));
                }
                probes(child, out);
            }
        }
        Value::Sequence(items) => items.iter().for_each(|v| probes(v, out)),
        _ => {}
    }
}

/// Every `containerPort` in a YAML tree.
fn container_ports(value: &Value, out: &mut Vec<u64>) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                if key.as_str() == Some("containerPort") {
                    out.push(child.as_u64().expect("numeric containerPort"));
                }
                container_ports(child, out);
            }
        }
        Value::Sequence(items) => items.iter().for_each(|v| container_ports(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_in_the_deployment_files_is_served() {
    // Arrange
    let mut files = Vec::new();
    yaml_files(&root().join("deploy"), &mut files);
    files.push(root().join("docker-compose.yml"));
    assert!(files.len() >= 7, "{files:?}");
    let app = TestApp::spawn(Backend::Sqlite).await;
    let default_port = auth_service::config::Config::from_lookup(|_| None)
        .unwrap()
        .server
        .port;
    let mut checked = 0;
    for file in &files {
        let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut found = Vec::new();
        probes(&doc, &mut found);
        let mut ports = Vec::new();
        container_ports(&doc, &mut ports);
        for (path, port) in found {
            // Act / Assert
            assert_eq!(
                port,
                u64::from(default_port),
                "{}: probe port",
                file.display()
            );
            assert!(
                ports.contains(&port),
                "{}: probe port {port} is a container port",
                file.display()
            );
            let response = app.get(&path).await;
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "{}: {path}",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "probes found: {checked}");
}

#[test]
fn the_kubernetes_deployment_is_hardened() {
    let doc: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/kubernetes/deployment.yaml")).unwrap(),
    )
    .unwrap();
    let spec = &doc["spec"]["template"]["spec"];
    assert_eq!(doc["spec"]["replicas"].as_u64(), Some(3));
    assert_eq!(
        spec["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    let container = &spec["containers"][0];
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert!(container["resources"]["limits"]["memory"].is_string());
    let secrets: Vec<&str> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|e| !e["valueFrom"]["secretKeyRef"].is_null())
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        secrets,
        [
            "JWT_SECRET_KEY",
            "DATABASE_URL",
            "MAIL_URL",
            "DATA_ENCRYPTION_KEY"
        ]
    );
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert!(!container[probe].is_null(), "{probe}");
    }
    for kind in ["service.yaml", "hpa.yaml", "pdb.yaml"] {
        let doc: Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(root().join("deploy/kubernetes").join(kind)).unwrap(),
        )
        .unwrap();
        assert!(doc["kind"].is_string(), "{kind}");
    }
}

#[test]
fn dockerfile_and_compose_match_the_binary() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("EXPOSE 8001"));
    assert!(dockerfile.contains(r#"CMD ["/usr/local/bin/auth-service", "healthcheck"]"#));
    assert!(dockerfile.contains("USER 65532"));
    let db_url = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("ENV DATABASE_URL="))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("ENV DATABASE_URL");
    assert_eq!(
        auth_service::config::DatabaseUrl::parse(db_url).unwrap(),
        auth_service::config::DatabaseUrl::SqliteFile("/data/auth_service.db".into())
    );
    let compose: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("docker-compose.yml")).unwrap(),
    )
    .unwrap();
    let services = &compose["services"];
    assert_eq!(services["postgres"]["image"].as_str(), Some("postgres:15"));
    assert!(
        services["postgres"]["healthcheck"]["test"][1]
            .as_str()
            .unwrap()
            .contains("pg_isready")
    );
    assert_eq!(
        services["auth-service"]["depends_on"]["postgres"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert!(!compose["volumes"]["postgres-data"].is_sequence());
    // The container listens on the PORT it is given: the mapping's container side must be
    // that same value, or setting PORT in .env breaks the published port.
    let auth = &services["auth-service"];
    let mapping = auth["ports"][0].as_str().expect("one port mapping");
    let port = auth["environment"]["PORT"].as_str().expect("PORT passed");
    assert!(
        mapping.ends_with(&format!(":{port}")),
        "{mapping} does not publish PORT={port}"
    );
}

fn yaml(path: &str) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap()
}

/// The value of an environment variable in a container's `env` list.
fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .and_then(|e| e["value"].as_str())
}

#[test]
fn kubernetes_manifests_are_safe_as_shipped() {
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let spec = &deployment["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    // An explicit placeholder, never :latest (which undoes `kubectl set image`).
    assert_eq!(container["image"].as_str(), Some("IMAGE_PLACEHOLDER"));
    assert_eq!(spec["automountServiceAccountToken"].as_bool(), Some(false));
    // The ingress's range, not all of 10.0.0.0/8: a placeholder the service refuses until set.
    let trusted = env_value(container, "TRUSTED_PROXIES").unwrap();
    assert_eq!(trusted, "INGRESS_CIDR_PLACEHOLDER");
    let refused = auth_service::config::Config::from_lookup(|n| {
        (n == "TRUSTED_PROXIES").then(|| trusted.to_owned())
    });
    assert_eq!(refused.unwrap_err().var, "TRUSTED_PROXIES");
    // So are the mail placeholders: no mail goes out from a made-up sender or links nowhere.
    for var in ["MAIL_FROM", "PUBLIC_URL"] {
        let value = env_value(container, var).unwrap();
        assert!(value.contains("_PLACEHOLDER"), "{var}: {value}");
        let refused =
            auth_service::config::Config::from_lookup(|n| (n == var).then(|| value.to_owned()));
        assert_eq!(refused.unwrap_err().var, var);
    }
    // The HPA's maximum fits PostgreSQL's default 100 connections (3 reserved).
    let pool: u64 = env_value(container, "DATABASE_MAX_CONNECTIONS")
        .unwrap()
        .parse()
        .unwrap();
    let max_replicas = yaml("deploy/kubernetes/hpa.yaml")["spec"]["maxReplicas"]
        .as_u64()
        .unwrap();
    assert!(
        max_replicas * (pool + 1) <= 97,
        "{max_replicas} x ({pool} + 1 listener)"
    );
    // /metrics on its own port, which only monitoring may reach; the API only from the
    // ingress controller; out only to PostgreSQL and DNS.
    assert_eq!(env_value(container, "METRICS_ADDR"), Some("0.0.0.0:9090"));
    let policy = yaml("deploy/kubernetes/networkpolicy.yaml");
    assert_eq!(policy["kind"].as_str(), Some("NetworkPolicy"));
    let ports = |rules: &Value| -> Vec<u64> {
        rules
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|r| r["ports"].as_sequence().unwrap().iter())
            .map(|p| p["port"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ports(&policy["spec"]["ingress"]), [8001, 9090]);
    assert_eq!(ports(&policy["spec"]["egress"]), [5432, 53, 53, 587, 465]);
    let deployment_text =
        std::fs::read_to_string(root().join("deploy/kubernetes/deployment.yaml")).unwrap();
    assert!(
        deployment_text.contains("args: [\"migrate\"]"),
        "the init-container pattern"
    );
}

#[test]
fn cloud_run_trusts_its_front_end_and_mounts_cloud_sql() {
    let service = yaml("deploy/cloudrun/service.yaml");
    let template = &service["spec"]["template"];
    let container = &template["spec"]["containers"][0];
    // The file's plain settings, as the binary reads them (the secrets come from Secret
    // Manager): they must be accepted, and trust the front end's link-local addresses, so
    // per-IP limits see each client.
    let plain: std::collections::HashMap<String, String> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    // With the secrets and the two mail placeholders filled in as the README says.
    let config = auth_service::config::Config::from_lookup(|name| match name {
        "JWT_SECRET_KEY" => Some(crate::helpers::SECRET.to_owned()),
        "MAIL_URL" => Some("smtp://user:pass@smtp.example.com:587".to_owned()),
        _ => plain.get(name).map(|value| {
            value
                .replace("MAIL_FROM_PLACEHOLDER", "Shop <no-reply@shop.example.com>")
                .replace("PUBLIC_URL_PLACEHOLDER", "https://auth.shop.example.com")
        }),
    })
    .expect("Cloud Run's settings are valid");
    let front_end: std::net::IpAddr = "169.254.8.1".parse().unwrap();
    assert!(
        config
            .limits
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&front_end)),
        "{:?}",
        config.limits.trusted_proxies
    );
    assert!(
        template["metadata"]["annotations"]["run.googleapis.com/cloudsql-instances"]
            .as_str()
            .is_some()
    );
    let pool: u64 = env_value(container, "DATABASE_MAX_CONNECTIONS")
        .unwrap()
        .parse()
        .unwrap();
    let max: u64 = template["metadata"]["annotations"]["autoscaling.knative.dev/maxScale"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(max * (pool + 1) <= 100);
    // /metrics is not on the public port.
    assert!(config.server.metrics_addr.is_some(), "METRICS_ADDR set");
}

/// The Kubernetes and Cloud Run files keep `/metrics` off the main port: `METRICS_ADDR` is
/// set to a valid address other than the service port.
#[test]
fn the_deploy_files_serve_metrics_on_their_own_listener() {
    for (path, container) in [
        (
            "deploy/kubernetes/deployment.yaml",
            yaml("deploy/kubernetes/deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
                .clone(),
        ),
        (
            "deploy/cloudrun/service.yaml",
            yaml("deploy/cloudrun/service.yaml")["spec"]["template"]["spec"]["containers"][0]
                .clone(),
        ),
    ] {
        let addr: std::net::SocketAddr = env_value(&container, "METRICS_ADDR")
            .unwrap_or_else(|| panic!("{path}: METRICS_ADDR"))
            .parse()
            .unwrap();
        assert_ne!(addr.port(), 8001, "{path}");
    }
}

#[test]
fn compose_passes_every_variable_of_the_example() {
    let example = std::fs::read_to_string(root().join(".env.example")).unwrap();
    let variables: Vec<&str> = example
        .lines()
        .filter_map(|l| l.trim_start_matches("# ").split_once('='))
        .map(|(name, _)| name)
        .filter(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .filter(|name| *name != "POSTGRES_PASSWORD")
        .collect();
    assert!(variables.len() >= 30, "{variables:?}");
    let compose = yaml("docker-compose.yml");
    let environment = &compose["services"]["auth-service"]["environment"];
    for variable in variables {
        assert!(
            !environment[variable].is_null(),
            "docker-compose.yml does not pass {variable}"
        );
    }
}

/// No file a user copies carries a JWT secret that would start: every `JWT_SECRET_KEY` or
/// `JWT_SECRET` value written in `.env.example`, the Compose file and the deploy manifests is
/// empty, a reference (`${...}`, `$(...)`, a Kubernetes secretKeyRef), or refused.
#[test]
fn no_shipped_file_carries_a_secret_that_would_start() {
    let mut files = vec![
        root().join(".env.example"),
        root().join("docker-compose.yml"),
    ];
    yaml_files(&root().join("deploy"), &mut files);
    let mut seen = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for line in text.lines() {
            let line = line.trim_start_matches(['#', ' ', '-']);
            for name in ["JWT_SECRET_KEY", "JWT_SECRET"] {
                let Some(rest) = line.strip_prefix(name) else {
                    continue;
                };
                let Some(value) = rest.strip_prefix('=').or_else(|| rest.strip_prefix(':')) else {
                    continue;
                };
                seen += 1;
                let value = value.trim().trim_matches(['"', '\'']);
                if value.is_empty() || value.starts_with('$') {
                    continue;
                }
                let started = auth_service::config::Config::from_lookup(|var| {
                    (var == name).then(|| value.to_owned())
                });
                assert!(
                    started.is_err(),
                    "{}: a usable secret is shipped: {line}",
                    file.display()
                );
            }
        }
    }
    assert!(seen >= 2, "the files name the secret: {seen}");
}

/// `docker compose up` shows the mails in a browser: a Mailpit service, and the auth service's
/// default `MAIL_URL` (which the binary accepts) pointing at its SMTP port.
#[test]
fn compose_sends_mail_to_its_mailpit() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    assert_eq!(
        services["mailpit"]["image"].as_str(),
        Some("axllent/mailpit")
    );
    let environment = &services["auth-service"]["environment"];
    let default = |name: &str| -> String {
        let value = environment[name].as_str().unwrap();
        value
            .strip_prefix(&format!("${{{name}:-"))
            .and_then(|v| v.strip_suffix('}'))
            .unwrap_or_else(|| panic!("{name} has a default: {value}"))
            .to_owned()
    };
    let (url, from) = (default("MAIL_URL"), default("MAIL_FROM"));
    assert_eq!(url, "smtp://mailpit:1025?tls=off");
    let config = auth_service::config::Config::from_lookup(|name| match name {
        "MAIL_URL" => Some(url.clone()),
        "MAIL_FROM" => Some(from.clone()),
        _ => None,
    })
    .expect("compose's mail settings are valid");
    assert!(matches!(
        config.mail.transport,
        auth_service::config::MailTransport::Smtp(_)
    ));
}
