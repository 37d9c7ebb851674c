//! Helpers shared by the unit tests.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// A header map from `(name, value)` pairs, repeated names appended.
pub(crate) fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    headers
}
