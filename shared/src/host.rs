//! Strict parsing of the request's `Host` header (RFC 9110 `uri-host [":"
//! port]`), for the Host allow-list and the same-origin exemption.
//!
//! Lax splitting on `:` or `]` accepted `localhost:evil` and
//! `[::1]evil.example`; a browser never sends those, a script can. Here the
//! whole value must be a name, an IPv4 address or a bracketed IPv6 literal,
//! optionally followed by `:` and a port of 1 to 5 digits no greater than 65535.

/// A parsed `Host`: the name (bare, without IPv6 brackets) and the port as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostHeader<'a> {
    /// The host name, IPv4 address or IPv6 literal without brackets.
    pub(crate) name: &'a str,
    /// The explicit port, if any.
    pub(crate) port: Option<u16>,
}

impl<'a> HostHeader<'a> {
    /// Parses a `Host` value; `None` for anything but `host[:port]`.
    pub(crate) fn parse(value: &'a str) -> Option<Self> {
        let (name, rest) = match value.strip_prefix('[') {
            Some(inner) => {
                let end = inner.find(']')?;
                let literal = &inner[..end];
                let valid = literal.contains(':')
                    && literal
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
                if !valid || literal.parse::<std::net::Ipv6Addr>().is_err() {
                    return None;
                }
                (literal, &inner[end + 1..])
            }
            None => {
                let end = value.find(':').unwrap_or(value.len());
                let name = &value[..end];
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
                if !valid {
                    return None;
                }
                (name, &value[end..])
            }
        };
        let port = match rest {
            "" => None,
            _ => {
                let digits = rest.strip_prefix(':')?;
                if digits.is_empty()
                    || digits.len() > 5
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                Some(digits.parse::<u16>().ok()?)
            }
        };
        Some(Self { name, port })
    }
}

/// Whether the request's `Host` parses strictly and its name is listed
/// (`hosts` hold bare, lower-case names).
pub(crate) fn is_allowed(headers: &http::HeaderMap, hosts: &[String]) -> bool {
    let mut values = headers.get_all(http::header::HOST).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Some(host) = value.to_str().ok().and_then(HostHeader::parse) else {
        return false;
    };
    hosts
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(host.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_table() {
        let ok = |name, port| Some(HostHeader { name, port });
        let cases: &[(&str, Option<HostHeader<'_>>)] = &[
            ("localhost", ok("localhost", None)),
            ("localhost:3000", ok("localhost", Some(3000))),
            ("Proxy.Example:443", ok("Proxy.Example", Some(443))),
            ("127.0.0.1:0", ok("127.0.0.1", Some(0))),
            ("[::1]", ok("::1", None)),
            ("[::1]:65535", ok("::1", Some(65535))),
            ("[2001:db8::7]:8080", ok("2001:db8::7", Some(8080))),
            ("localhost:evil", None),
            ("localhost:", None),
            ("localhost:65536", None),
            ("localhost:000001", None),
            ("localhost:3000:3000", None),
            ("localhost:-1", None),
            ("localhost :3000", None),
            ("local host", None),
            ("user@localhost", None),
            ("localhost/x", None),
            ("[::1]evil.example", None),
            ("[::1]:", None),
            ("[::1]:x", None),
            ("[::1", None),
            ("[]", None),
            ("[localhost]", None),
            ("[::1]]", None),
            ("[::g]", None),
            ("::1", None),
            ("", None),
            (":80", None),
        ];
        for (value, expected) in cases {
            assert_eq!(HostHeader::parse(value), *expected, "{value:?}");
        }
    }
}
