//! `DATABASE_URL`: which database, in every form the contract accepts, and how to name it in a
//! log line without its password.
//!
//! PostgreSQL URLs are parsed with the `url` crate, so a password in the user-info part (even
//! one holding `@` or `:`) or in a `password=` query parameter never reaches a log: only the
//! host (or socket directory), port, database and user are ever shown.

use std::{fmt, path::PathBuf};

use secrecy::{ExposeSecret as _, SecretString};

/// Why a `DATABASE_URL` cannot be used; the text names what is wrong, never the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DatabaseUrlError(pub String);

/// Where the data lives, normalised from `DATABASE_URL`.
#[derive(Clone)]
pub enum DatabaseUrl {
    /// An SQLite file.
    SqliteFile(PathBuf),
    /// A private in-memory SQLite database (`sqlite::memory:`), gone when the process ends.
    SqliteMemory,
    /// A PostgreSQL connection string (`postgres://` or `postgresql://`), normalised so that a
    /// URL with an empty host and a `host=` socket parameter (Cloud SQL) parses.
    Postgres(SecretString),
}

impl DatabaseUrl {
    /// Parses every form the contract accepts.
    ///
    /// - `sqlite::memory:`
    /// - the original's SQLAlchemy forms `sqlite:///./relative.db` and `sqlite:////absolute.db`
    /// - sqlx's forms `sqlite://relative.db`, `sqlite:///absolute.db` and `sqlite:relative.db`
    /// - `postgres://...` and `postgresql://...`, including Unix sockets:
    ///   `postgres://user:pass@/db?host=/cloudsql/PROJECT:REGION:INSTANCE` (Cloud SQL) and
    ///   `postgres:///db?host=/var/run/postgresql`
    ///
    /// # Errors
    /// When the scheme is unknown, the SQLite path is empty, or the PostgreSQL URL does not
    /// parse.
    pub fn parse(raw: &str) -> Result<Self, DatabaseUrlError> {
        let raw = raw.trim();
        if let Some(rest) = raw
            .strip_prefix("postgres://")
            .or_else(|| raw.strip_prefix("postgresql://"))
        {
            return Self::parse_postgres(rest);
        }
        let Some(rest) = raw.strip_prefix("sqlite:") else {
            return Err(DatabaseUrlError(
                "expected a URL starting with sqlite:, postgres:// or postgresql://".to_owned(),
            ));
        };
        if rest == ":memory:" || rest == "//:memory:" {
            return Ok(Self::SqliteMemory);
        }
        if rest.contains('?') {
            return Err(DatabaseUrlError(
                "query parameters are not supported in a sqlite URL".to_owned(),
            ));
        }
        let path = if let Some(abs) = rest.strip_prefix("////") {
            // SQLAlchemy: four slashes is an absolute path.
            format!("/{abs}")
        } else if let Some(tail) = rest.strip_prefix("///") {
            // `sqlite:///./x.db` is the original's relative form; otherwise three slashes is
            // the URL convention for an absolute path.
            if tail.starts_with("./") || tail.starts_with("../") {
                tail.to_owned()
            } else {
                format!("/{tail}")
            }
        } else if let Some(tail) = rest.strip_prefix("//") {
            tail.to_owned()
        } else {
            rest.to_owned()
        };
        if path.is_empty() || path.ends_with('/') {
            return Err(DatabaseUrlError("the sqlite URL names no file".to_owned()));
        }
        Ok(Self::SqliteFile(PathBuf::from(path)))
    }

    /// `rest` is what follows `postgres://`.
    fn parse_postgres(rest: &str) -> Result<Self, DatabaseUrlError> {
        // `user:pass@/db?host=/socket` has user info but an empty host, which URL parsers
        // refuse; libpq reads it as "the host comes from the host= parameter". Give it a
        // placeholder host that the socket parameter then overrides.
        let rest = match rest.split_once('/') {
            Some((authority, path)) if authority.ends_with('@') => {
                format!("{authority}localhost/{path}")
            }
            _ => rest.to_owned(),
        };
        let normalised = format!("postgres://{rest}");
        let parsed = url::Url::parse(&normalised).map_err(|err| {
            DatabaseUrlError(format!("the PostgreSQL URL does not parse ({err})"))
        })?;
        let has_host = parsed.host_str().is_some_and(|h| !h.is_empty())
            || parsed.query_pairs().any(|(k, _)| k == "host");
        if !has_host {
            return Err(DatabaseUrlError(
                "the PostgreSQL URL names no host (give one, or a socket with ?host=/path)"
                    .to_owned(),
            ));
        }
        Ok(Self::Postgres(SecretString::from(normalised)))
    }

    /// Whether this is a PostgreSQL database.
    #[must_use]
    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// What to call this database in a log line or an admin command's output: the file, or
    /// PostgreSQL's host (or socket), port, database and user. Never a password.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::SqliteFile(path) => format!("sqlite file {}", path.display()),
            Self::SqliteMemory => "sqlite in-memory database".to_owned(),
            Self::Postgres(url) => describe_postgres(url.expose_secret()),
        }
    }
}

/// `postgresql database "auth" on db:5432 as user "app"`, from a URL that parsed before.
fn describe_postgres(url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else {
        return "postgresql database (unparsable URL)".to_owned();
    };
    let query = |key: &str| {
        parsed
            .query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    let host = query("host")
        .or_else(|| parsed.host_str().map(str::to_owned))
        .unwrap_or_else(|| "localhost".to_owned());
    let port = query("port")
        .or_else(|| parsed.port().map(|p| p.to_string()))
        .unwrap_or_else(|| "5432".to_owned());
    let database = query("dbname")
        .or_else(|| {
            let path = parsed.path().trim_start_matches('/');
            (!path.is_empty()).then(|| percent_decode(path))
        })
        .unwrap_or_default();
    let user = query("user").unwrap_or_else(|| percent_decode(parsed.username()));
    let mut out = format!("postgresql database {database:?} on {host}:{port}");
    if !user.is_empty() {
        out.push_str(&format!(" as user {user:?}"));
    }
    out
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map_or_else(|| s.to_owned(), |(_, v)| v.into_owned())
}

impl PartialEq for DatabaseUrl {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::SqliteFile(a), Self::SqliteFile(b)) => a == b,
            (Self::SqliteMemory, Self::SqliteMemory) => true,
            (Self::Postgres(a), Self::Postgres(b)) => a.expose_secret() == b.expose_secret(),
            _ => false,
        }
    }
}

impl Eq for DatabaseUrl {}

/// The same as [`DatabaseUrl::describe`]: safe to log.
impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_form_parses() {
        let cases = [
            (
                "sqlite:///./auth_service.db",
                DatabaseUrl::SqliteFile("./auth_service.db".into()),
            ),
            (
                "sqlite://./auth_service.db",
                DatabaseUrl::SqliteFile("./auth_service.db".into()),
            ),
            (
                "sqlite:////data/auth.db",
                DatabaseUrl::SqliteFile("/data/auth.db".into()),
            ),
            (
                "sqlite:///data/auth.db",
                DatabaseUrl::SqliteFile("/data/auth.db".into()),
            ),
            ("sqlite:auth.db", DatabaseUrl::SqliteFile("auth.db".into())),
            ("sqlite::memory:", DatabaseUrl::SqliteMemory),
        ];
        for (raw, expected) in cases {
            assert_eq!(DatabaseUrl::parse(raw).unwrap(), expected, "{raw}");
        }
        for pg in [
            "postgres://u:p@h/db",
            "postgresql://u@h/db",
            "postgres://user:pass@/auth?host=/cloudsql/proj:europe-west1:inst",
            "postgres:///auth?host=/var/run/postgresql",
        ] {
            assert!(DatabaseUrl::parse(pg).unwrap().is_postgres(), "{pg}");
        }
        for bad in [
            "mysql://x",
            "sqlite://",
            "http://x",
            "sqlite://x.db?mode=ro",
            "postgres:///db",
        ] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_never_show_in_the_description() {
        let cases = [
            (
                "postgres://app:hunter2@db:5432/auth",
                r#"postgresql database "auth" on db:5432 as user "app""#,
            ),
            (
                "postgres://app:p%40ss@w:rd@db/auth",
                r#"postgresql database "auth" on db:5432 as user "app""#,
            ),
            (
                "postgres://app@db:6432/auth?password=hunter2&sslmode=require",
                r#"postgresql database "auth" on db:6432 as user "app""#,
            ),
            (
                "postgres://app:hunter2@/auth?host=/cloudsql/p:r:i",
                r#"postgresql database "auth" on /cloudsql/p:r:i:5432 as user "app""#,
            ),
        ];
        for (raw, expected) in cases {
            let url = DatabaseUrl::parse(raw).unwrap();
            assert_eq!(url.describe(), expected, "{raw}");
            let debug = format!("{url:?}");
            for secret in ["hunter2", "p%40ss", "w:rd"] {
                assert!(!debug.contains(secret), "{debug}");
            }
        }
        assert_eq!(
            DatabaseUrl::parse("sqlite:///./a.db").unwrap().describe(),
            "sqlite file ./a.db"
        );
    }
}
