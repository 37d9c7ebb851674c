//! Between the Workers runtime's request and response objects and `http` types.
//!
//! Bodies are never read here: a body is the runtime's `ReadableStream`,
//! carried in the `http` type and handed back to the runtime as it is, so
//! workerd pipes it natively (no copy into wasm memory, no buffering).

use fal_proxy_core::{ProxyBody, ProxyError};
use http::header::{CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};
use worker::wasm_bindgen::JsCast;
use worker::{js_sys, web_sys};

/// A body as the runtime holds it; `None` is no body (GET, HEAD, 204).
pub type JsBody = Option<web_sys::ReadableStream>;

/// The browser's request, as an `http` request. `None` when the runtime
/// hands over something `http` cannot represent.
pub fn request_from_js(request: &web_sys::Request) -> Option<http::Request<JsBody>> {
    // `worker::Request::method` maps unknown methods to GET; read the string.
    let method = http::Method::from_bytes(request.method().as_bytes()).ok()?;
    let uri: http::Uri = request.url().parse().ok()?;
    let mut http_request = http::Request::new(request.body());
    *http_request.method_mut() = method;
    *http_request.uri_mut() = uri;
    *http_request.headers_mut() = headers_from_js(&request.headers())?;
    Some(http_request)
}

/// A fetched response, as an `http` response. `None` when its status or a
/// header does not fit `http` types.
pub fn response_from_js(response: &worker::Response) -> Option<http::Response<JsBody>> {
    let body = match response.body() {
        worker::ResponseBody::Stream(stream) => Some(stream.clone()),
        worker::ResponseBody::Empty | worker::ResponseBody::Body(_) => None,
    };
    let mut http_response = http::Response::new(body);
    *http_response.status_mut() = http::StatusCode::from_u16(response.status_code()).ok()?;
    *http_response.headers_mut() = headers_from_js(&response.headers().0)?;
    Some(http_response)
}

/// The proxy's response, for the runtime. A response the runtime refuses
/// (for example a body on a status that cannot have one) becomes a 502.
pub fn response_to_js(
    response: http::Response<ProxyBody<JsBody>>,
) -> worker::Result<web_sys::Response> {
    let (parts, body) = response.into_parts();
    let built = headers_to_js(&parts.headers).and_then(|headers| {
        let init = web_sys::ResponseInit::new();
        init.set_status(parts.status.as_u16());
        init.set_headers(&headers);
        match body {
            ProxyBody::Upstream(stream) => {
                web_sys::Response::new_with_opt_readable_stream_and_init(stream.as_ref(), &init)
                    .ok()
            }
            ProxyBody::Full(bytes) if bytes.is_empty() => {
                web_sys::Response::new_with_opt_str_and_init(None, &init).ok()
            }
            ProxyBody::Full(bytes) => {
                let array = js_sys::Uint8Array::from(bytes.as_ref());
                web_sys::Response::new_with_opt_buffer_source_and_init(Some(&array), &init).ok()
            }
        }
    });
    match built {
        Some(response) => Ok(response),
        None => {
            let error = ProxyError::UpstreamBroken.to_response();
            json_response(
                error.status().as_u16(),
                &String::from_utf8_lossy(error.body()),
            )
        }
    }
}

/// A JSON response the proxy makes itself. Fails only if the runtime
/// refuses to build a response at all.
pub fn json_response(status: u16, body: &str) -> worker::Result<web_sys::Response> {
    let headers = web_sys::Headers::new()?;
    headers.set("content-type", "application/json")?;
    headers.set("cache-control", "no-store")?;
    let init = web_sys::ResponseInit::new();
    init.set_status(status);
    init.set_headers(&headers);
    Ok(web_sys::Response::new_with_opt_str_and_init(
        Some(body),
        &init,
    )?)
}

/// The response body's size when its headers say so, for the log line.
pub fn known_length<B>(response: &http::Response<ProxyBody<B>>) -> u64 {
    match response.body() {
        ProxyBody::Full(bytes) => bytes.len() as u64,
        ProxyBody::Upstream(_) => response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0),
    }
}

/// Runtime headers as a `HeaderMap`. The runtime joins repeated request
/// headers with `, ` before the Worker sees them.
pub fn headers_from_js(headers: &web_sys::Headers) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for entry in headers.entries() {
        let entry: js_sys::Array = entry.ok()?.dyn_into().ok()?;
        let name = entry.get(0).as_string()?;
        let value = entry.get(1).as_string()?;
        map.append(
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_bytes(value.as_bytes()).ok()?,
        );
    }
    Some(map)
}

/// A `HeaderMap` as runtime headers. Values that came from the runtime are
/// UTF-8 (see [`headers_from_js`]); the core's own are ASCII.
pub fn headers_to_js(map: &HeaderMap) -> Option<web_sys::Headers> {
    let headers = web_sys::Headers::new().ok()?;
    for (name, value) in map {
        let value = std::str::from_utf8(value.as_bytes()).ok()?;
        headers.append(name.as_str(), value).ok()?;
    }
    Some(headers)
}
