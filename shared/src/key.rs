//! Which fal key a request is sent with.

use crate::error::ProxyError;
use http::{HeaderMap, HeaderValue};
use std::fmt;

/// The header a public playground's browser sends its visitor's own key in.
pub const USER_KEY_HEADER: &str = "x-fal-user-key";

/// [`USER_KEY_HEADER`] as a header name, looked up without parsing it.
const USER_KEY: http::HeaderName = http::HeaderName::from_static(USER_KEY_HEADER);

/// The longest key accepted, in bytes (fal keys are about 70).
const MAX_KEY_LEN: usize = 512;

/// Where the key sent upstream comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    /// Always the server's key; a user key is ignored.
    Server,
    /// Always the visitor's key from `x-fal-user-key`; none is a 401.
    User,
    /// The visitor's key when sent, else the server's.
    UserOrServer,
}

impl fmt::Display for KeyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Server => "server",
            Self::User => "user",
            Self::UserOrServer => "user-or-server",
        })
    }
}

/// A fal key, held as the ready `Authorization` value. `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ApiKey(HeaderValue);

impl ApiKey {
    /// `None` unless `key` could be a fal key: 1 to 512 visible ASCII
    /// characters, no white space.
    pub(crate) fn new(key: &str) -> Option<Self> {
        let plausible = !key.is_empty()
            && key.len() <= MAX_KEY_LEN
            && key.bytes().all(|byte| byte.is_ascii_graphic());
        if !plausible {
            return None;
        }
        let mut value = HeaderValue::try_from(format!("Key {key}")).ok()?;
        value.set_sensitive(true);
        Some(Self(value))
    }

    pub(crate) fn authorization(&self) -> &HeaderValue {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Chooses the key for one request.
pub(crate) fn select(
    mode: KeyMode,
    server_key: Option<&ApiKey>,
    headers: &HeaderMap,
) -> Result<ApiKey, ProxyError> {
    let user_key = || -> Result<Option<ApiKey>, ProxyError> {
        let mut values = headers.get_all(&USER_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(ProxyError::InvalidUserKey);
        }
        let raw = value.to_str().map_err(|_| ProxyError::InvalidUserKey)?;
        // Headers arrive with outer white space already trimmed; an empty
        // value is a client with no key configured yet.
        if raw.is_empty() {
            return Ok(None);
        }
        ApiKey::new(raw).map(Some).ok_or(ProxyError::InvalidUserKey)
    };
    let server = || server_key.cloned().ok_or(ProxyError::Internal);
    match mode {
        KeyMode::Server => server(),
        KeyMode::User => user_key()?.ok_or(ProxyError::MissingUserKey),
        KeyMode::UserOrServer => match user_key()? {
            Some(key) => Ok(key),
            None => server(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(user_keys: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for key in user_keys {
            headers.append(USER_KEY_HEADER, HeaderValue::from_bytes(key).unwrap());
        }
        headers
    }

    #[test]
    fn selection_table() {
        let server = ApiKey::new("server:key").unwrap();
        let user = ApiKey::new("user:key").unwrap();
        let long = vec![b'a'; MAX_KEY_LEN + 1];
        let max = vec![b'a'; MAX_KEY_LEN];
        use KeyMode::*;
        use ProxyError::*;
        let cases: &[(KeyMode, bool, &[&[u8]], Result<&ApiKey, ProxyError>)] = &[
            (Server, true, &[], Ok(&server)),
            (Server, true, &[b"user:key"], Ok(&server)),
            (Server, true, &[b"bad key"], Ok(&server)),
            (User, false, &[], Err(MissingUserKey)),
            (User, false, &[b""], Err(MissingUserKey)),
            (User, true, &[], Err(MissingUserKey)),
            (User, false, &[b"user:key"], Ok(&user)),
            (User, true, &[b"user:key"], Ok(&user)),
            (User, false, &[b"user key"], Err(InvalidUserKey)),
            (User, false, &[b"user\tkey"], Err(InvalidUserKey)),
            (User, false, &[b"user:k\xc3\xa9y"], Err(InvalidUserKey)),
            (User, false, &[&long], Err(InvalidUserKey)),
            (User, false, &[b"a", b"b"], Err(InvalidUserKey)),
            (UserOrServer, true, &[], Ok(&server)),
            (UserOrServer, true, &[b""], Ok(&server)),
            (UserOrServer, true, &[b"user:key"], Ok(&user)),
            (UserOrServer, true, &[b"user key"], Err(InvalidUserKey)),
        ];
        for (mode, has_server, sent, expected) in cases {
            let server_key = has_server.then_some(&server);
            let got = select(*mode, server_key, &headers(sent));
            let expected = expected.as_ref().map(|k| *k).map_err(|e| *e);
            assert_eq!(got.as_ref().map_err(|e| *e), expected, "{mode} {sent:?}");
        }
        assert!(select(User, None, &headers(&[&max])).is_ok());
    }

    #[test]
    fn authorization_is_sensitive_and_redacted() {
        let key = ApiKey::new("id:secret").unwrap();
        assert_eq!(key.authorization(), "Key id:secret");
        assert!(key.authorization().is_sensitive());
        assert!(!format!("{key:?}").contains("secret"));
        assert!(!format!("{:?}", key.authorization()).contains("secret"));
    }
}
