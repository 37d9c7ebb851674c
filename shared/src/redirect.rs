//! Redirects from upstream, in the response phase.
//!
//! The proxy never follows a redirect, but a browser's `fetch` does, with
//! the same headers and body: in `user` mode the visitor's `x-fal-user-key`
//! would go wherever `Location` points. So a redirect reaches the browser
//! only when its `Location`, resolved against the target, is itself a target
//! the proxy would accept for the method the browser would use; any other is
//! answered with a 502 `upstream_redirect`.

use crate::config::Config;
use crate::error::ProxyError;
use crate::target::Target;
use http::{HeaderMap, Method, StatusCode, header};

/// Checks an upstream response's redirect. `target` is the URL the request
/// was sent to (before any upstream override).
pub(crate) fn check(
    config: &Config,
    method: &Method,
    target: Option<&str>,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<(), ProxyError> {
    if !status.is_redirection() {
        return Ok(());
    }
    let mut locations = headers.get_all(header::LOCATION).iter();
    let Some(location) = locations.next() else {
        // Not a redirect a browser follows (a 304, a 300 without a choice).
        return Ok(());
    };
    let refused = ProxyError::UpstreamRedirect;
    let location = location.to_str().map_err(|_| refused)?;
    // A blank `Location` would resolve to the request's own URL.
    if locations.next().is_some() || location.trim_matches([' ', '\t']).is_empty() {
        return Err(refused);
    }
    let base = url::Url::parse(target.ok_or(refused)?).map_err(|_| refused)?;
    let resolved = base.join(location).map_err(|_| refused)?;
    let next = Target::parse(resolved.as_str().as_bytes()).map_err(|_| refused)?;
    // The method a browser's fetch uses to follow it.
    let method = match status {
        StatusCode::SEE_OTHER if method != Method::HEAD => Method::GET,
        StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND if method == Method::POST => Method::GET,
        _ => method.clone(),
    };
    config.allow_urls.check(&next).map_err(|_| refused)?;
    if let Some(endpoints) = &config.allow_endpoints {
        endpoints.check(&method, &next).map_err(|_| refused)?;
    }
    Ok(())
}
