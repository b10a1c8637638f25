//! Settings that must not show wherever a value is printed for a person: the clients' token
//! and the URLs that carry a password (`--database`, `--smtp`, `--nats`).
//!
//! Why a type: every settings struct derives `Debug`, and one `tracing::debug!(?config)` or a
//! test's failed assertion would otherwise print them whole into a log that more people read
//! than the operator. A [`Secret`]'s `Debug` never holds the secret; only [`Secret::expose`]
//! gives it, at the few places that use it (comparing a token, connecting).

use std::fmt;

/// A secret string: a token, or a URL whose password is the secret part.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// What may be shown of it, made once: logs and clients' messages name a broker's URL
    /// on every failure.
    shown: String,
}

impl Secret {
    /// A value that is secret as a whole (`--token`), shown as `<redacted>`.
    pub fn token(value: impl Into<String>) -> Secret {
        Secret {
            value: value.into(),
            shown: "<redacted>".to_owned(),
        }
    }

    /// A URL that may carry a password (`scheme://USER:PASSWORD@HOST/...`), shown without it.
    pub fn url(value: impl Into<String>) -> Secret {
        let value = value.into();
        Secret {
            shown: without_password(&value),
            value,
        }
    }

    /// The secret itself, for the code that uses it; never for a message or a log.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// What may be shown of it: `<redacted>` for a token, a URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({:?})", self.shown)
    }
}

/// `url` with the password of its `USER:PASSWORD@` replaced by `REDACTED`; a URL without one,
/// or text that is not a URL, as it is.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:REDACTED@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_holds_no_secret() {
        let token = Secret::token("s3cret-token");
        let url = Secret::url("postgres://app:hunter2@db.example/notes");
        let shown = format!("{token:?} {url:?} {:?}", Some(&url));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("postgres://app:REDACTED@db.example/notes"),
            "{shown}"
        );
        assert_eq!(token.expose(), "s3cret-token");
        assert_eq!(url.expose(), "postgres://app:hunter2@db.example/notes");
    }

    #[test]
    fn a_url_without_a_password_is_shown_whole() {
        assert_eq!(
            Secret::url("nats://127.0.0.1:4222").shown(),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(without_password("not a url"), "not a url");
        // A password holding `@` is cut at the last one.
        assert_eq!(
            without_password("smtp://me:p@ss@relay:25"),
            "smtp://me:REDACTED@relay:25"
        );
    }
}
