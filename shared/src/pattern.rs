//! The glob patterns of the URL and endpoint allow-lists.
//!
//! Hand-written rather than taken from a glob crate: the subject here is a
//! URL path *and query*, so `?` must be a literal (in shell-style globs it is
//! a wildcard), and the matcher must be linear in the subject's length for
//! any pattern an operator writes. The common glob crates either treat `?`
//! as a wildcard or bring a regex engine into the Worker's wasm.
//!
//! Syntax: `*` matches any run of characters within one path segment (not
//! `/` and not `?`); `**` matches any run of characters at all; a trailing
//! `/**` also matches nothing, so `fal-ai/flux/**` matches `fal-ai/flux`.
//! Everything else matches itself, case-sensitively.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `*`: any run of bytes other than `/` and `?`.
    Star,
    /// `**`: any run of bytes.
    DoubleStar,
    /// A trailing `/**`: the end of the subject, or `/` and anything after it.
    SlashRest,
}

/// A compiled glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    source: String,
    tokens: Vec<Token>,
}

impl Glob {
    /// Compiles `pattern`. Every string is a valid pattern.
    pub(crate) fn new(pattern: &str) -> Self {
        let bytes = pattern.as_bytes();
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i..] == *b"/**" {
                tokens.push(Token::SlashRest);
                break;
            }
            if bytes[i] == b'*' {
                let double = bytes.get(i + 1) == Some(&b'*');
                i += if double { 2 } else { 1 };
                // `***` and beyond mean the same as `**`.
                while double && bytes.get(i) == Some(&b'*') {
                    i += 1;
                }
                let token = if double {
                    Token::DoubleStar
                } else {
                    Token::Star
                };
                // Collapse runs such as `*` `**` into the widest wildcard.
                match tokens.last_mut() {
                    Some(last @ (Token::Star | Token::DoubleStar)) => {
                        if token == Token::DoubleStar {
                            *last = Token::DoubleStar;
                        }
                    }
                    _ => tokens.push(token),
                }
                continue;
            }
            tokens.push(Token::Byte(bytes[i]));
            i += 1;
        }
        Self {
            source: pattern.to_owned(),
            tokens,
        }
    }

    /// The pattern as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `subject` matches.
    pub(crate) fn matches(&self, subject: &str) -> bool {
        self.simulate(subject.as_bytes(), false)
    }

    /// Whether some prefix of the pattern matches the whole of `subject`,
    /// so that the pattern could match `subject` followed by more text.
    fn matches_prefix(&self, subject: &str) -> bool {
        self.simulate(subject.as_bytes(), true)
    }

    /// Simulates the pattern as a set of positions in the subject, one token
    /// at a time: O(tokens x subject length), no backtracking. With
    /// `prefix`, succeeds as soon as the whole subject is consumed.
    fn simulate(&self, subject: &[u8], prefix: bool) -> bool {
        // The position sets of a short subject (any real target) on the
        // stack: this runs on every request.
        const ON_STACK: usize = 256;
        let n = subject.len();
        if n < ON_STACK {
            let (mut current, mut next) = ([false; ON_STACK], [false; ON_STACK]);
            self.simulate_in(subject, prefix, &mut current[..=n], &mut next[..=n])
        } else {
            self.simulate_in(
                subject,
                prefix,
                &mut vec![false; n + 1],
                &mut vec![false; n + 1],
            )
        }
    }

    /// [`Glob::simulate`] with two all-false sets of `subject.len() + 1` positions.
    fn simulate_in<'a>(
        &self,
        subject: &[u8],
        prefix: bool,
        mut current: &'a mut [bool],
        mut next: &'a mut [bool],
    ) -> bool {
        let n = subject.len();
        current[0] = true;
        for token in &self.tokens {
            if prefix && current[n] {
                return true;
            }
            next.iter_mut().for_each(|slot| *slot = false);
            match *token {
                Token::Byte(expected) => {
                    for position in 0..n {
                        next[position + 1] = current[position] && subject[position] == expected;
                    }
                }
                Token::Star => {
                    let mut reachable = false;
                    for position in 0..=n {
                        reachable = reachable || current[position];
                        next[position] = reachable;
                        if position < n && matches!(subject[position], b'/' | b'?') {
                            reachable = false;
                        }
                    }
                }
                // `**` consumes all that is left from any reachable position;
                // a trailing `/**` only from one at a `/`.
                Token::DoubleStar if prefix => return current.contains(&true),
                Token::SlashRest if prefix => {
                    return current[n]
                        || (0..n).any(|position| current[position] && subject[position] == b'/');
                }
                Token::DoubleStar => {
                    if let Some(first) = current.iter().position(|&reached| reached) {
                        next[first..].iter_mut().for_each(|slot| *slot = true);
                    }
                }
                Token::SlashRest => {
                    // Always the last token: decide right here.
                    return current[n]
                        || (0..n).any(|position| current[position] && subject[position] == b'/');
                }
            }
            std::mem::swap(&mut current, &mut next);
            if !current.contains(&true) {
                return false;
            }
        }
        current[n]
    }

    /// Whether this pattern names an endpoint of the app `owner/name`: the
    /// app's root endpoint itself, or any endpoint below it.
    pub(crate) fn could_match_app(&self, owner: &str, name: &str) -> bool {
        self.matches(&format!("{owner}/{name}")) || self.matches_prefix(&format!("{owner}/{name}/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_table() {
        let cases: &[(&str, &str, bool)] = &[
            // literals
            ("/tokens/", "/tokens/", true),
            ("/tokens/", "/tokens", false),
            ("/tokens/", "/tokens/x", false),
            ("/tokens/", "/Tokens/", false),
            // `**` crosses segments and the query
            ("/**", "/", true),
            ("/**", "/fal-ai/flux/dev", true),
            ("/**", "/fal-ai/flux/dev?x=1", true),
            ("/**", "", true),
            ("/**", "x", false),
            ("fal-ai/flux/**", "fal-ai/flux", true),
            ("fal-ai/flux/**", "fal-ai/flux/dev", true),
            ("fal-ai/flux/**", "fal-ai/flux/requests/1/status", true),
            ("fal-ai/flux/**", "fal-ai/fluxx", false),
            ("fal-ai/flux/**", "fal-ai/flux-pro", false),
            ("fal-ai/flux/**", "fal-ai", false),
            ("a/**/b", "a/x/y/b", true),
            ("a/**/b", "a//b", true),
            ("a/**/b", "a/b", false),
            ("**", "anything/at?all", true),
            // `*` stays within one segment
            ("fal-ai/*", "fal-ai/flux", true),
            ("fal-ai/*", "fal-ai/flux/dev", false),
            ("fal-ai/*", "fal-ai/", true),
            ("fal-ai/*/dev", "fal-ai/flux/dev", true),
            ("fal-ai/*/dev", "fal-ai/flux/x/dev", false),
            ("fal-ai/flux-*", "fal-ai/flux-pro", true),
            ("fal-ai/flux-*", "fal-ai/flux-pro/v1", false),
            ("/x*", "/x?y", false),
            ("*a*b", "xxaxxb", true),
            ("*a*b", "xxaxx/b", false),
            // `?` is a literal
            (
                "/storage/upload/initiate?storage_type=fal-cdn-v3",
                "/storage/upload/initiate?storage_type=fal-cdn-v3",
                true,
            ),
            (
                "/storage/upload/initiate?storage_type=fal-cdn-v3",
                "/storage/upload/initiateXstorage_type=fal-cdn-v3",
                false,
            ),
            (
                "/storage/upload/initiate?storage_type=fal-cdn-v3",
                "/storage/upload/initiate?storage_type=fal-cdn-v3&x=1",
                false,
            ),
            ("/a?*", "/a?b=1", true),
            ("/a?*", "/a?b=1/2", false),
            // runs of stars
            ("a***b", "a/x/b", true),
            ("a*/**", "ab", true),
            ("", "", true),
            ("", "x", false),
        ];
        for &(pattern, subject, expected) in cases {
            assert_eq!(
                Glob::new(pattern).matches(subject),
                expected,
                "{pattern:?} against {subject:?}"
            );
        }
    }

    #[test]
    fn long_subject_is_linear() {
        let subject = "a/".repeat(4000);
        let glob = Glob::new("*a*a*a*a*a*a*a*a*a*a*b");
        assert!(!glob.matches(&subject));
        assert!(Glob::new("**a/").matches(&subject));
    }

    /// Subjects on both sides of the length kept on the stack.
    #[test]
    fn stack_and_heap_position_sets_agree() {
        for length in 250..262 {
            let name = "x".repeat(length - "fal.run/".len());
            let subject = format!("fal.run/{name}");
            assert_eq!(subject.len(), length);
            assert!(Glob::new("fal.run/*").matches(&subject), "{length}");
            assert!(Glob::new("*/x*").matches(&subject), "{length}");
            assert!(!Glob::new("fal.run/*/").matches(&subject), "{length}");
            assert!(!Glob::new("fal.run/*y").matches(&subject), "{length}");
            assert!(
                Glob::new("fal.run/*/z").matches_prefix(&subject),
                "{length}"
            );
            assert!(!Glob::new("fal.ai/**").matches_prefix(&subject), "{length}");
        }
    }

    /// `matches_prefix(s)` must hold exactly when some continuation `t`
    /// makes `matches(s + t)` hold (for these short patterns, `t` of at most
    /// four characters always suffices).
    #[test]
    fn prefix_matching_agrees_with_full_matching() {
        let alphabet = [b'a', b'b', b'/', b'?', b'*'];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % bound) as usize
        };
        let mut continuations = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = continuations
                .iter()
                .filter(|t| t.len() == continuations.last().map_or(0, String::len))
                .flat_map(|t| ["a", "b", "/", "?"].map(|c| format!("{t}{c}")))
                .collect();
            continuations.extend(longer);
        }
        for _ in 0..3000 {
            let pattern: String = (0..random(5))
                .map(|_| alphabet[random(5)] as char)
                .collect();
            let subject: String = (0..random(6))
                .map(|_| alphabet[random(4)] as char)
                .collect();
            let glob = Glob::new(&pattern);
            let expected = continuations
                .iter()
                .any(|t| glob.matches(&format!("{subject}{t}")));
            assert_eq!(
                glob.matches_prefix(&subject),
                expected,
                "{pattern:?} as a prefix of {subject:?}"
            );
        }
    }

    #[test]
    fn could_match_app_table() {
        let cases: &[(&str, &str, &str, bool)] = &[
            ("fal-ai/flux/dev", "fal-ai", "flux", true),
            ("fal-ai/flux/**", "fal-ai", "flux", true),
            ("fal-ai/flux", "fal-ai", "flux", true),
            ("fal-ai/flux", "fal-ai", "flux-pro", false),
            ("fal-ai/*", "fal-ai", "anything", true),
            ("fal-ai/**", "fal-ai", "anything", true),
            ("**", "someone", "anything", true),
            ("fal-ai/flux-*/v1", "fal-ai", "flux-pro", true),
            ("fal-ai", "fal-ai", "flux", false),
            ("other/flux/dev", "fal-ai", "flux", false),
            // `**` inside a segment still needs the text before it
            ("fal-ai**", "evil", "app", false),
            ("fal-ai**", "fal-ai", "flux", true),
            ("fal-ai/flux**", "fal-ai", "other", false),
            ("fal-ai/flux**", "fal-ai", "flux-pro", true),
            ("fal-ai/flux/**", "fal-ai", "flux-pro", false),
            ("fal-ai/flux/**", "fal-ai", "fluxx", false),
            ("fal-ai/*/**", "fal-ai", "anything", true),
            ("fal-ai/fl*x/dev", "fal-ai", "flux", true),
            ("fal-ai/fl*x/dev", "fal-ai", "flax-b", false),
            ("*/flux-dev", "someone", "flux-dev", true),
        ];
        for &(pattern, owner, name, expected) in cases {
            assert_eq!(
                Glob::new(pattern).could_match_app(owner, name),
                expected,
                "{pattern:?} against {owner}/{name}"
            );
        }
    }
}
