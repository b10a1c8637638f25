//! Property tests (fuzzing on stable Rust, with proptest) of the parsers that read what the
//! outside sends: text frames ([`parse_frame`]), HTTP request heads ([`Request::parse`],
//! [`read_head`]) and task manifests ([`Manifest::parse`]).
//!
//! Each property runs `PROPTEST_CASES` inputs ([`CASES`] when it is not set, as in `just
//! test`: well under a second each); `just fuzz` runs them long, one at a time, and each
//! prints how many inputs it tried. Inputs
//! come both from plain arbitrary text or bytes and from small grammars of each format's
//! tokens, which reach far deeper into a parser than random text does. Beyond not panicking,
//! each parser holds simple properties: the kind of request a frame becomes, exact echoes, the
//! split of a request target, where a head ends, what a manifest says.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, ReadBuf};

use crate::http::request::{MAX_HEAD_BYTES, Request, read_head};
use crate::protocol::{BadFrame, ErrorCode, Ref, Request as Frame, parse_frame};
use crate::registry::{Delivery, Manifest};

/// Inputs per property when `PROPTEST_CASES` does not say.
const CASES: u32 = 2048;

/// Runs `test` on `PROPTEST_CASES` inputs from `strategy`, then prints how many it tried.
/// A panic in `test` is a failure, shrunk to a small input, like a failed assertion; nothing
/// is written to disk (a failure prints its smallest input).
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let tried = AtomicU64::new(0);
    let mut config = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    let mut runner = TestRunner::new(config);
    let outcome = runner.run(&strategy, |input| {
        tried.fetch_add(1, Ordering::Relaxed);
        test(input)
    });
    if let Err(error) = outcome {
        panic!("{name}: {error}");
    }
    eprintln!(
        "fuzz {name}: {} inputs tried, no panic, every property held",
        tried.load(Ordering::Relaxed)
    );
}

/// Text made of `tokens`, with arbitrary text mixed in: what a grammar-aware fuzzer feeds.
fn token_soup(tokens: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    let token = prop_oneof![
        8 => proptest::sample::select(tokens).prop_map(str::to_owned),
        1 => any::<String>(),
        1 => any::<char>().prop_map(String::from),
    ];
    proptest::collection::vec(token, 0..max).prop_map(|parts| parts.concat())
}

// Frames.

const FRAME_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    " ",
    "\n",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "null",
    "true",
    "-",
    "0",
    "1",
    "-0",
    "1e400",
    "0.5",
    "18446744073709551616",
    "\"type\"",
    "\"task\"",
    "\"cancel\"",
    "\"list\"",
    "\"stats\"",
    "\"input\"",
    "\"ref\"",
    "\"limits\"",
    "\"task_id\"",
    "\"timeout_ms\"",
    "\"fuel\"",
    "\"memory_bytes\"",
    "\"echo\"",
    "\"é\"",
    "\u{feff}",
];

/// Whether a frame is parsed as JSON rather than taken as plain text.
fn braced(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// A frame as a client might send it: arbitrary text, `{` then anything, or JSON tokens.
fn frame_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        any::<String>().prop_map(|rest| format!("{{{rest}")),
        token_soup(FRAME_TOKENS, 40),
        token_soup(FRAME_TOKENS, 40).prop_map(|rest| format!("{{\"type\":\"task\",{rest}")),
    ]
}

#[test]
fn frames_never_panic_and_every_bad_frame_is_a_bad_request() {
    fuzz("parse_frame, any text", frame_text(), |text| {
        match parse_frame(&text, "slow") {
            Ok(Frame::Task(task)) if task.plain_text => {
                prop_assert!(!braced(&text));
            }
            Ok(_) => prop_assert!(braced(&text)),
            Err(bad) => {
                prop_assert!(braced(&text));
                prop_assert_eq!(bad.error().code, ErrorCode::BadRequest);
                prop_assert!(!bad.error().message.is_empty());
            }
        }
        Ok(())
    });
}

#[test]
fn text_not_starting_with_a_brace_is_a_task_for_the_default_task() {
    let plain = any::<String>().prop_filter("not {", |t| !braced(t));
    fuzz("parse_frame, plain text", plain, |text| {
        let Ok(Frame::Task(task)) = parse_frame(&text, "slow") else {
            return Err(TestCaseError::fail("plain text is not a task"));
        };
        prop_assert_eq!(task.task.as_str(), "slow");
        prop_assert!(task.plain_text && task.reference.is_none());
        let input: Value = serde_json::from_str(task.input_json()).map_err(fail)?;
        prop_assert_eq!(input, Value::String(text));
        Ok(())
    });
}

/// A JSON number as a client might write it, digits and all.
fn json_number() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        "(0|[1-9][0-9]{0,40})",
        proptest::option::of("[0-9]{1,20}"),
        proptest::option::of("[eE][+-]?[0-9]{1,4}"),
    )
        .prop_map(|(negative, whole, fraction, exponent)| {
            let sign = if negative { "-" } else { "" };
            let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
            format!("{sign}{whole}{fraction}{}", exponent.unwrap_or_default())
        })
}

/// A `ref` as JSON text: a string or a number.
fn reference() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|text| Value::String(text).to_string()),
        json_number(),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A well-formed message of a known type, as the JSON text a client sends, and what it is.
#[derive(Debug, Clone)]
enum Known {
    Task {
        task: String,
        input: Option<Value>,
        reference: Option<String>,
        timeout_ms: Option<u64>,
    },
    Cancel(u64),
    List,
    Stats,
}

fn known_message() -> impl Strategy<Value = (Known, String)> {
    let extra = proptest::collection::btree_map("x_[a-z]{1,8}", json_value(), 0..3);
    let known = prop_oneof![
        (
            any::<String>(),
            proptest::option::of(json_value()),
            proptest::option::of(reference()),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(task, input, reference, timeout_ms)| Known::Task {
                task,
                input,
                reference,
                timeout_ms,
            }),
        any::<u64>().prop_map(Known::Cancel),
        Just(Known::List),
        Just(Known::Stats),
    ];
    (known, extra, any::<bool>()).prop_map(|(known, extra, spaced)| {
        let mut fields: Vec<(String, String)> = extra
            .into_iter()
            .map(|(key, value)| (key, value.to_string()))
            .collect();
        let kind = match &known {
            Known::Task {
                task,
                input,
                reference,
                timeout_ms,
            } => {
                fields.push(("task".into(), Value::String(task.clone()).to_string()));
                if let Some(input) = input {
                    fields.push(("input".into(), input.to_string()));
                }
                if let Some(reference) = reference {
                    fields.push(("ref".into(), reference.clone()));
                }
                if let Some(timeout_ms) = timeout_ms {
                    fields.push((
                        "limits".into(),
                        json!({"timeout_ms": timeout_ms}).to_string(),
                    ));
                }
                "task"
            }
            Known::Cancel(task_id) => {
                fields.push(("task_id".into(), task_id.to_string()));
                "cancel"
            }
            Known::List => "list",
            Known::Stats => "stats",
        };
        fields.insert(0, ("type".into(), format!("\"{kind}\"")));
        let separator = if spaced { ",\n  " } else { "," };
        let body: Vec<String> = fields
            .iter()
            .map(|(key, value)| format!("\"{key}\":{value}"))
            .collect();
        (known, format!("{{{}}}", body.join(separator)))
    })
}

#[test]
fn messages_of_known_types_become_their_request_with_their_fields() {
    fuzz(
        "parse_frame, known types",
        known_message(),
        |(known, text)| {
            let parsed = parse_frame(&text, "slow").map_err(|bad| {
                TestCaseError::fail(format!("{text} refused: {}", bad.error().message))
            })?;
            match (known, parsed) {
                (
                    Known::Task {
                        task,
                        input,
                        reference,
                        timeout_ms,
                    },
                    Frame::Task(parsed),
                ) => {
                    prop_assert_eq!(&parsed.task, &task);
                    prop_assert!(!parsed.plain_text);
                    // Kept verbatim, as the module will read it.
                    let sent = input.map_or_else(|| "null".to_owned(), |input| input.to_string());
                    prop_assert_eq!(parsed.input_json(), sent.as_str());
                    let echoed_ref = parsed
                        .reference
                        .as_ref()
                        .map(|r| serde_json::to_string(r).map_err(fail))
                        .transpose()?;
                    prop_assert_eq!(echoed_ref, reference);
                    prop_assert_eq!(parsed.limits.timeout_ms, timeout_ms);
                }
                (Known::Cancel(expected), Frame::Cancel { task_id }) => {
                    prop_assert_eq!(task_id, expected);
                }
                (Known::List, Frame::List) | (Known::Stats, Frame::Stats) => {}
                (known, parsed) => {
                    return Err(TestCaseError::fail(format!("{known:?} became {parsed:?}")));
                }
            }
            Ok(())
        },
    );
}

#[test]
fn refs_are_echoed_exactly_even_when_the_task_is_refused() {
    let frames = (reference(), any::<bool>());
    fuzz("parse_frame, refs", frames, |(reference, valid)| {
        // An invalid frame (a number as the task's name) is rejected with its ref.
        let task = if valid { "\"echo\"" } else { "5" };
        let text = format!(r#"{{"type":"task","task":{task},"ref":{reference}}}"#);
        let echoed = match parse_frame(&text, "slow") {
            Ok(Frame::Task(task)) if valid => task.reference,
            Err(BadFrame::Task { reference, .. }) if !valid => reference,
            other => return Err(TestCaseError::fail(format!("{text}: {other:?}"))),
        };
        let echoed = echoed.ok_or_else(|| TestCaseError::fail("the ref was lost"))?;
        if let Ref::Number(number) = &echoed {
            prop_assert_eq!(&**number, reference.as_str());
        }
        prop_assert_eq!(serde_json::to_string(&echoed).map_err(fail)?, reference);
        Ok(())
    });
}

#[test]
fn messages_of_unknown_types_reach_the_application() {
    let kinds = any::<String>().prop_filter("not a known type", |kind| {
        !["task", "cancel", "list", "stats"].contains(&kind.as_str())
    });
    fuzz(
        "parse_frame, custom types",
        (kinds, json_value()),
        |(kind, value)| {
            let text = json!({"type": kind, "body": value}).to_string();
            let Ok(Frame::Custom {
                kind: parsed,
                message,
            }) = parse_frame(&text, "slow")
            else {
                return Err(TestCaseError::fail(format!(
                    "{text} is not a custom message"
                )));
            };
            prop_assert_eq!(&parsed, &kind);
            prop_assert_eq!(&message["type"], &Value::String(kind));
            Ok(())
        },
    );
}

fn fail(error: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(error.to_string())
}

// HTTP request heads.

const HEAD_TOKENS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    " ",
    "/",
    "?",
    "=",
    "&",
    "%",
    "HTTP/1.1",
    "HTTP/1.0",
    "HTTP/2",
    "\r\n",
    "\n",
    "\r",
    ":",
    ": ",
    "\t",
    "Host",
    "Upgrade",
    "websocket",
    "Connection",
    "upgrade, keep-alive",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "13",
    "Origin",
    "null",
    "Authorization",
    "Bearer ",
    "X-Forwarded-For",
    "\0",
    "\u{7f}",
    "é",
];

/// Bytes a client might send as its request head.
fn head_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        token_soup(HEAD_TOKENS, 60).prop_map(String::into_bytes),
        token_soup(HEAD_TOKENS, 60).prop_map(|rest| format!("GET /{rest}\r\n\r\n").into_bytes()),
    ]
}

#[test]
fn request_heads_never_panic() {
    fuzz("Request::parse, any bytes", head_bytes(), |bytes| {
        if let Ok(request) = Request::parse(&bytes) {
            prop_assert!(!request.path.contains('?'));
            prop_assert!(!request.method.is_empty());
        }
        Ok(())
    });
}

/// A well-formed request head and what it says.
#[derive(Debug, Clone)]
struct Head {
    method: String,
    path: String,
    query: Option<String>,
    /// `Some(key)` for a WebSocket upgrade.
    key: Option<String>,
    origin: Option<String>,
    authorization: Option<String>,
}

fn well_formed_head() -> impl Strategy<Value = (Head, Vec<u8>)> {
    let header_value = "[ -~]{0,40}".prop_map(|v| v.trim().to_owned());
    (
        "[A-Z]{1,8}",
        "/[A-Za-z0-9._~/%!$&'()*+,;=:@-]{0,40}",
        proptest::option::of("[A-Za-z0-9._~/%!$&'()*+,;=:@?-]{0,40}"),
        proptest::option::of("[A-Za-z0-9+/]{22}=="),
        proptest::option::of(header_value.clone()),
        proptest::option::of(header_value),
        any::<bool>(),
    )
        .prop_map(|(method, path, query, key, origin, authorization, lower)| {
            let name = |name: &str| {
                if lower {
                    name.to_ascii_lowercase()
                } else {
                    name.to_owned()
                }
            };
            let target = match &query {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            };
            let mut text = format!(
                "{method} {target} HTTP/1.1\r\n{}: 127.0.0.1\r\n",
                name("Host")
            );
            if let Some(key) = &key {
                text += &format!(
                    "{}: websocket\r\n{}: Upgrade\r\n{}: {key}\r\n{}: 13\r\n",
                    name("Upgrade"),
                    name("Connection"),
                    name("Sec-WebSocket-Key"),
                    name("Sec-WebSocket-Version")
                );
            }
            if let Some(origin) = &origin {
                text += &format!("{}: {origin}\r\n", name("Origin"));
            }
            if let Some(authorization) = &authorization {
                text += &format!("{}: {authorization}\r\n", name("Authorization"));
            }
            text += "\r\n";
            let head = Head {
                method,
                path,
                query,
                key,
                origin,
                authorization,
            };
            (head, text.into_bytes())
        })
}

#[test]
fn well_formed_heads_say_what_they_were_sent() {
    fuzz(
        "Request::parse, well-formed",
        well_formed_head(),
        |(head, bytes)| {
            let request = Request::parse(&bytes).map_err(fail)?;
            prop_assert_eq!(request.method, head.method);
            prop_assert_eq!(request.path, head.path);
            prop_assert_eq!(request.query, head.query);
            prop_assert_eq!(request.connection_upgrade, head.key.is_some());
            prop_assert_eq!(request.websocket_key, head.key);
            prop_assert_eq!(request.origin, head.origin);
            prop_assert_eq!(request.authorization, head.authorization);
            prop_assert_eq!(request.host.as_deref(), Some("127.0.0.1"));
            Ok(())
        },
    );
}

/// A reader that hands out its bytes in the chunks given, as a socket might.
struct Chunks {
    chunks: Vec<Vec<u8>>,
    next: usize,
    offset: usize,
}

impl AsyncRead for Chunks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        while let Some(chunk) = this.chunks.get(this.next) {
            let rest = &chunk[this.offset..];
            if rest.is_empty() {
                this.next += 1;
                this.offset = 0;
                continue;
            }
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            break;
        }
        Poll::Ready(Ok(())) // nothing put: the end of the stream
    }
}

fn position(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn reading_a_head_stops_at_its_end_whatever_the_chunks() {
    let bytes = prop_oneof![
        head_bytes(),
        well_formed_head().prop_map(|(_, bytes)| bytes),
        // Heads near and over the cap.
        (0..3 * MAX_HEAD_BYTES / 2, any::<bool>()).prop_map(|(len, end)| {
            let mut bytes = vec![b'a'; len];
            if end {
                bytes.extend_from_slice(b"\r\n\r\nafter");
            }
            bytes
        }),
    ];
    let chunked = bytes.prop_flat_map(|bytes| {
        let len = bytes.len();
        let cuts = proptest::collection::vec(0..=len, 0..8);
        (Just(bytes), cuts)
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    fuzz("read_head, any chunks", chunked, |(bytes, mut cuts)| {
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            chunks.push(bytes[from..cut].to_vec());
            from = cut;
        }
        let mut reader = Chunks {
            chunks,
            next: 0,
            offset: 0,
        };
        let outcome = runtime.block_on(read_head(&mut reader));
        let end = position(&bytes, b"\r\n\r\n").map(|at| at + 4);
        match outcome {
            Ok(Some(head)) => {
                let end = end.ok_or_else(|| TestCaseError::fail("a head without an end"))?;
                let read = head.bytes.len();
                prop_assert_eq!(&head.bytes[..], &bytes[..read], "read what was sent");
                prop_assert_eq!(&head.leftover()[..], &bytes[end..read], "the rest after it");
                prop_assert!(end <= MAX_HEAD_BYTES + 1024);
            }
            Ok(None) => prop_assert!(end.is_none() && bytes.len() <= MAX_HEAD_BYTES),
            Err(_) => prop_assert!(bytes.len() > MAX_HEAD_BYTES),
        }
        Ok(())
    });
}

// Manifests.

const MANIFEST_TOKENS: &[&str] = &[
    "description",
    "timeout_ms",
    "fuel",
    "memory_bytes",
    "deliver",
    "secret",
    " = ",
    "=",
    "\"",
    "'",
    "\"\"\"",
    "\\",
    "\\u00e9",
    "\n",
    "\r\n",
    " ",
    "#",
    "[",
    "]",
    "[[",
    ".",
    ",",
    "{",
    "}",
    "0",
    "1",
    "65536",
    "-1",
    "18446744073709551616",
    "1e3",
    "true",
    "\"origin\"",
    "\"broadcast\"",
    "é",
    "\u{1F600}",
    "\t",
    "1979-05-27T07:32:00Z",
];

fn manifest_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), token_soup(MANIFEST_TOKENS, 40)]
}

#[test]
fn manifests_never_panic_and_errors_name_the_file() {
    fuzz("Manifest::parse, any text", manifest_text(), |text| {
        if let Err(error) = Manifest::parse("t.toml", &text) {
            let message = format!("{error:#}");
            prop_assert!(message.starts_with("t.toml "), "{}", message);
        }
        Ok(())
    });
}

#[test]
fn manifest_errors_never_quote_the_file() {
    // Text on a line that is not TOML (a host file linked in as a manifest, say), which the
    // error must not repeat.
    let secret = "[a-z]{6,12}".prop_map(|s| format!("SECRET{s}"));
    let places = (secret, 0..7_usize, "[a-z_ =\"]{0,10}").prop_map(|(secret, place, noise)| {
        let line = match place {
            0 => format!("{secret}: 1"),
            1 => format!("description = \"x\" {secret}"),
            2 => format!("description = \"{secret}"),
            3 => format!("timeout_ms = 1{secret}"),
            4 => format!("[{secret}"),
            5 => format!("description = {secret}"),
            _ => format!("{secret}: {noise}"),
        };
        (secret, format!("description = \"ok\"\n{line}\n"))
    });
    fuzz("Manifest::parse, secrets", places, |(secret, text)| {
        let error = Manifest::parse("t.toml", &text)
            .err()
            .ok_or_else(|| fail(format!("{text} was taken")))?;
        let message = format!("{error:#}");
        prop_assert!(!message.contains(&secret), "{}", message);
        Ok(())
    });
}

/// A TOML basic string holding `text`.
fn toml_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c < ' ' || c == '\u{7f}' => quoted.push_str(&format!("\\u{:04x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

fn manifest() -> impl Strategy<Value = Manifest> {
    let limit = proptest::option::of(1..=i64::MAX as u64);
    (
        proptest::collection::vec(any::<char>(), 0..200).prop_map(String::from_iter),
        limit.clone(),
        limit,
        proptest::option::of(65536..=i64::MAX as u64),
        any::<bool>(),
    )
        .prop_map(
            |(description, timeout_ms, fuel, memory_bytes, broadcast)| Manifest {
                description,
                timeout_ms,
                fuel,
                memory_bytes,
                deliver: if broadcast {
                    Delivery::Broadcast
                } else {
                    Delivery::Submitter
                },
                capabilities: Default::default(),
                ..Manifest::default()
            },
        )
}

#[test]
fn valid_manifests_say_what_they_were_written_with() {
    fuzz("Manifest::parse, valid", manifest(), |manifest| {
        let mut text = format!("description = {}\n", toml_string(&manifest.description));
        for (key, value) in [
            ("timeout_ms", manifest.timeout_ms),
            ("fuel", manifest.fuel),
            ("memory_bytes", manifest.memory_bytes),
        ] {
            if let Some(value) = value {
                text += &format!("{key} = {value}\n");
            }
        }
        if manifest.deliver == Delivery::Broadcast {
            text += "deliver = \"broadcast\"\n";
        }
        let parsed = Manifest::parse("t.toml", &text).map_err(|e| fail(format!("{e:#}")))?;
        prop_assert_eq!(parsed, manifest);
        Ok(())
    });
}
