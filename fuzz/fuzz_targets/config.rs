//! Configuration parsing: any set of values either parses or names a known
//! variable, and no key appears in an error, its response, `Debug`, the
//! start-up summary or the warning.

#![no_main]

use arbitrary::Arbitrary;
use fal_proxy_core::{Config, vars};
use fal_proxy_fuzz::leaks;
use libfuzzer_sys::fuzz_target;

const VARS: &[&str] = &[
    vars::FAL_KEY,
    vars::FAL_KEY_ID,
    vars::FAL_KEY_SECRET,
    vars::KEY_MODE,
    vars::ALLOW_URLS,
    vars::ALLOW_ENDPOINTS,
    vars::ALLOWED_HOSTS,
    vars::ALLOWED_ORIGINS,
    vars::MAX_BODY_BYTES,
    vars::TIMEOUT_SECS,
    vars::UPSTREAM,
    vars::BODY_IDLE_TIMEOUT_SECS,
    vars::LOG_FORMAT,
    vars::USE_ENV_PROXY,
];
const SECRET_VALUES: &[&str] = &[
    "id:FUZZ-SERVER-SECRET",
    "FUZZ-SERVER-SECRET",
    "id:FUZZ-SERVER-SECRET ",
    "id: FUZZ-SERVER-SECRET",
    "id:FUZZ-SERVER-SECRET\u{7}",
    "FUZZ-USER-SECRET",
];

#[derive(Arbitrary, Debug)]
struct Input {
    settings: Vec<(u8, Result<u8, String>)>,
}

fuzz_target!(|input: Input| {
    let settings: Vec<(&str, String)> = input
        .settings
        .iter()
        .take(16)
        .map(|(pick, value)| {
            let name = VARS[usize::from(*pick) % VARS.len()];
            let value = match value {
                // Keys get key-like values that hold a marker.
                Ok(pick) => SECRET_VALUES[usize::from(*pick) % SECRET_VALUES.len()].to_owned(),
                Err(text) => text.clone(),
            };
            (name, value)
        })
        .collect();
    let lookup = |name: &str| {
        settings
            .iter()
            .rev()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    };
    // Markers from key variables only: other settings may echo their value.
    let keys_hold_marker = [vars::FAL_KEY, vars::FAL_KEY_ID, vars::FAL_KEY_SECRET]
        .iter()
        .any(|name| lookup(name).is_some_and(|value| leaks(value.as_bytes())));
    let others_hold_marker = settings.iter().any(|(name, value)| {
        ![vars::FAL_KEY, vars::FAL_KEY_ID, vars::FAL_KEY_SECRET].contains(name)
            && leaks(value.as_bytes())
    });
    match Config::from_lookup(lookup) {
        Ok(config) => {
            let shown = format!(
                "{config:?} {} {:?}",
                config.summary(),
                config.upstream_warning()
            );
            if keys_hold_marker && !others_hold_marker {
                assert!(!leaks(shown.as_bytes()), "{shown}");
            }
        }
        Err(error) => {
            assert!(VARS.contains(&error.var), "{}", error.var);
            let response = error.to_response();
            assert_eq!(response.status(), 500);
            assert!(!leaks(response.body()), "a key in the response");
            if !others_hold_marker {
                assert!(!leaks(error.to_string().as_bytes()), "{error}");
            }
        }
    }
});
