//! Egress through a proxy from the environment (a corporate `HTTPS_PROXY`):
//! never on by surprise, only with `FAL_PROXY_USE_ENV_PROXY=1`, and only for
//! the targets whose HTTP client can use one (server, Vercel, Lambda). The
//! Worker's `fetch` always goes straight out.

use crate::config::{ConfigError, vars};
use std::fmt;

/// The proxies to send upstream requests through, read (through the
/// target's lookup, like every setting) from the variables curl reads:
/// `HTTPS_PROXY` for `https://` URLs (fal itself), `HTTP_PROXY` for an
/// `http://` `FAL_PROXY_UPSTREAM`, and `NO_PROXY`, each also lower-case.
/// `Debug` and `Display` never show a proxy's user name or password.
#[derive(Clone, PartialEq, Eq)]
pub struct EgressProxy {
    https: Option<String>,
    http: Option<String>,
    no_proxy: Option<String>,
}

impl EgressProxy {
    /// `Ok(None)` unless `FAL_PROXY_USE_ENV_PROXY` is on; then the proxy
    /// variables, each validated (an error names the variable, never its
    /// value, which may hold a password).
    pub(crate) fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let on = match get(vars::USE_ENV_PROXY)
            .map(|value| value.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("" | "0" | "false" | "no" | "off") => false,
            Some("1" | "true" | "yes" | "on") => true,
            Some(_) => {
                return Err(ConfigError::new(
                    vars::USE_ENV_PROXY,
                    "expected 1 (use HTTPS_PROXY and NO_PROXY) or 0",
                ));
            }
        };
        if !on {
            return Ok(None);
        }
        let first = |names: [&'static str; 2]| {
            names
                .into_iter()
                .find_map(|name| get(name).map(|value| (name, value.trim().to_owned())))
        };
        let proxy = |names| match first(names) {
            None => Ok(None),
            Some((name, value)) => proxy_url(name, &value).map(Some),
        };
        Ok(Some(Self {
            https: proxy(["HTTPS_PROXY", "https_proxy"])?,
            http: proxy(["HTTP_PROXY", "http_proxy"])?,
            no_proxy: first(["NO_PROXY", "no_proxy"]).map(|(_, value)| value),
        }))
    }

    /// The proxy for `https://` URLs, with its credentials.
    pub fn https(&self) -> Option<&str> {
        self.https.as_deref()
    }

    /// The proxy for `http://` URLs, with its credentials.
    pub fn http(&self) -> Option<&str> {
        self.http.as_deref()
    }

    /// The hosts reached directly, as written (`NO_PROXY` syntax).
    pub fn no_proxy(&self) -> Option<&str> {
        self.no_proxy.as_deref()
    }
}

/// A proxy URL as curl takes it (`proxy.corp:3128` means `http://`), checked.
fn proxy_url(name: &'static str, value: &str) -> Result<String, ConfigError> {
    let with_scheme = if value.contains("://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    };
    let bad = || {
        ConfigError::new(
            name,
            format!(
                "not a proxy URL such as http://proxy.example:3128 (read because {} is on)",
                vars::USE_ENV_PROXY
            ),
        )
    };
    let url = url::Url::parse(&with_scheme).map_err(|_| bad())?;
    let plain = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || !plain {
        return Err(bad());
    }
    Ok(with_scheme)
}

/// A proxy URL without its user-info.
fn redacted(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(mut url) => {
            if !url.username().is_empty() || url.password().is_some() {
                let _ = url.set_username("***");
                let _ = url.set_password(None);
            }
            url.as_str().trim_end_matches('/').to_owned()
        }
        Err(_) => "<unparsable>".to_owned(),
    }
}

impl fmt::Display for EgressProxy {
    /// For the start-up summary: where fal requests go.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.https {
            Some(https) => write!(f, "via {} (HTTPS_PROXY)", redacted(https))?,
            None => write!(
                f,
                "direct ({} is on but HTTPS_PROXY is not set)",
                vars::USE_ENV_PROXY
            )?,
        }
        if let Some(http) = &self.http {
            write!(f, ", http:// via {} (HTTP_PROXY)", redacted(http))?;
        }
        if let Some(no_proxy) = &self.no_proxy {
            write!(f, ", except NO_PROXY={no_proxy}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressProxy")
            .field("https", &self.https.as_deref().map(redacted))
            .field("http", &self.http.as_deref().map(redacted))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Option<EgressProxy>, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        EgressProxy::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn off_unless_asked() {
        let proxies = [("HTTPS_PROXY", "http://proxy.corp:3128")];
        assert_eq!(parse(&proxies).unwrap(), None);
        assert_eq!(
            parse(&[proxies[0], ("FAL_PROXY_USE_ENV_PROXY", "0")]).unwrap(),
            None
        );
        let on = parse(&[
            proxies[0],
            ("http_proxy", "proxy.corp:8080"),
            ("no_proxy", "localhost,.internal"),
            ("FAL_PROXY_USE_ENV_PROXY", "1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(on.https(), Some("http://proxy.corp:3128"));
        assert_eq!(on.http(), Some("http://proxy.corp:8080"));
        assert_eq!(on.no_proxy(), Some("localhost,.internal"));
        let none = parse(&[("FAL_PROXY_USE_ENV_PROXY", "true")])
            .unwrap()
            .unwrap();
        assert!(none.to_string().contains("HTTPS_PROXY is not set"));
    }

    #[test]
    fn bad_values_name_the_variable_and_never_a_password() {
        let error = parse(&[("FAL_PROXY_USE_ENV_PROXY", "maybe")]).unwrap_err();
        assert_eq!(error.var, vars::USE_ENV_PROXY);
        for bad in [
            "ftp://proxy:21",
            "http://u:hunter2@proxy:3128/path",
            "http://",
        ] {
            let error =
                parse(&[("FAL_PROXY_USE_ENV_PROXY", "1"), ("HTTPS_PROXY", bad)]).unwrap_err();
            assert_eq!(error.var, "HTTPS_PROXY", "{bad}");
            assert!(!error.to_string().contains("hunter2"));
        }
    }

    #[test]
    fn credentials_are_never_shown() {
        let on = parse(&[
            ("FAL_PROXY_USE_ENV_PROXY", "1"),
            ("HTTPS_PROXY", "http://me:hunter2@proxy.corp:3128"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(on.https(), Some("http://me:hunter2@proxy.corp:3128"));
        let shown = format!("{on} {on:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("me:"),
            "{shown}"
        );
        assert!(shown.contains("via http://***@proxy.corp:3128"), "{shown}");
    }
}
