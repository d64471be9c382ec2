//! One helper every layer uses to print an error: a leaf, importing nothing of the crate.

/// An error and its causes on one line, `error: cause: root cause`, each text once: a cause
/// whose text the line already holds (wrappers that repeat their source) is not repeated.
///
/// A database's own error is shown as the server's message alone: sqlx words it
/// `error returned from database: <message> at line <N>`, where the line is one of the
/// server's source files, which tells an operator nothing.
#[must_use]
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(err);
    while let Some(cause) = next {
        let (text, last) = match cause.downcast_ref::<sqlx::Error>() {
            // Its source is the same message again, with the line.
            Some(sqlx::Error::Database(db)) => (db.message().to_owned(), true),
            _ => (cause.to_string(), false),
        };
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = if last { None } else { cause.source() };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("repeats: {0}")]
    struct Repeating(#[source] std::io::Error);

    #[test]
    fn each_cause_is_shown_once_in_order() {
        let io = || std::io::Error::other("root cause");
        assert_eq!(error_chain(&Outer(io())), "outer: root cause");
        assert_eq!(error_chain(&Repeating(io())), "repeats: root cause");
    }
}
