//! Property tests (proptest, 256 cases each): on arbitrary input the SSE
//! parser, the event framer, the Chat <-> Responses and Responses -> Messages
//! translations, the config loader and the request validator never panic, and
//! what reaches a client is only ever whole events (a translated Responses
//! stream: numbered, with exactly one terminal event, last).

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};

use warden::api::anthropic::chat_to_messages;
use warden::api::openai::ChatRequestView;
use warden::api::responses::{
    ChatToResponses, ResponseShell, StreamTranslator, ToolNames, TranslateOptions,
    chat_to_responses, responses_request_to_chat,
};
use warden::api::sse::SseParser;
use warden::upstream::bounded::EventFramer;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Arbitrary JSON, bounded in depth and size.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z_. ]{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("user"),
            Just("assistant"),
            Just("system"),
            Just("tool"),
            Just("developer"),
            Just("text"),
            Just("image_url"),
            Just("function"),
            Just("input_text"),
            Just("response.output_text.delta"),
            Just("response.completed"),
            Just("response.failed"),
            Just("response.output_item.added"),
            Just("response.function_call_arguments.delta"),
            Just("response.output_item.done"),
            Just("error"),
            Just("gpt-5"),
            Just("gpt-5-codex-high"),
            Just("message"),
            Just("function_call"),
            Just("function_call_output"),
            Just("custom"),
            Just("namespace"),
            Just("input_image"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("model".to_string()),
                        Just("messages".to_string()),
                        Just("role".to_string()),
                        Just("content".to_string()),
                        Just("type".to_string()),
                        Just("tools".to_string()),
                        Just("tool_calls".to_string()),
                        Just("delta".to_string()),
                        Just("response".to_string()),
                        Just("item".to_string()),
                        Just("usage".to_string()),
                        Just("error".to_string()),
                        Just("stream".to_string()),
                        Just("reasoning_effort".to_string()),
                        Just("tool_choice".to_string()),
                        Just("function".to_string()),
                        Just("arguments".to_string()),
                        Just("call_id".to_string()),
                        Just("output_index".to_string()),
                        Just("name".to_string()),
                        Just("input".to_string()),
                        Just("instructions".to_string()),
                        Just("output".to_string()),
                        "[a-z_]{1,8}",
                    ],
                    inner,
                ),
                0..6,
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// One Chat stream `data:` payload, shaped like what providers send often
/// enough to reach every branch of a translator (and sometimes not at all).
fn chat_data() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{0,6}".prop_map(|t| json!({"choices": [{"delta": {"content": t}}]}).to_string()),
        (
            0u64..3,
            prop::option::of("[a-z]{1,4}"),
            "[{}\":a-z0-9]{0,8}"
        )
            .prop_map(|(i, name, args)| {
                let mut call = json!({"index": i, "function": {"arguments": args}});
                if let Some(name) = name {
                    call["id"] = json!(format!("call_{i}"));
                    call["function"]["name"] = json!(name);
                }
                json!({"choices": [{"delta": {"tool_calls": [call]}}]}).to_string()
            }),
        prop_oneof![
            Just("stop"),
            Just("length"),
            Just("tool_calls"),
            Just("content_filter")
        ]
        .prop_map(|r| json!({"choices": [{"delta": {}, "finish_reason": r}]}).to_string()),
        (0u64..50, 0u64..50).prop_map(|(p, c)| json!({"choices": [],
            "usage": {"prompt_tokens": p, "completion_tokens": c}})
        .to_string()),
        Just(json!({"error": {"message": "boom", "code": "overloaded_error"}}).to_string()),
        Just("[DONE]".to_string()),
        "[ -~]{0,12}",
        json_value().prop_map(|v| v.to_string()),
    ]
}

/// Bytes that look like SSE often enough to reach every branch.
fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(b"data: ".to_vec()),
            Just(b"event: x\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b": c\n".to_vec()),
            Just(b"{\"a\":1}".to_vec()),
            Just(b"[DONE]".to_vec()),
            Just(b"\xEF\xBB\xBF".to_vec()),
            prop::collection::vec(any::<u8>(), 0..8),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

/// Cut points for `len` bytes.
fn splits(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for p in points {
        out.push(bytes[at..p].to_vec());
        at = p;
    }
    out.push(bytes[at..].to_vec());
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_sse_parser_never_panics_and_splitting_changes_nothing(
        bytes in sse_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut whole = SseParser::new();
        let mut expected = whole.feed(&bytes);
        expected.extend(whole.finish());
        let mut parts = SseParser::new();
        let mut got = Vec::new();
        for part in splits(&bytes, &cuts) {
            got.extend(parts.feed(&part));
        }
        got.extend(parts.finish());
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn the_relay_framer_only_lets_whole_events_through(
        bytes in sse_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut framer = EventFramer::new(1 << 20);
        let mut out = Vec::new();
        for part in splits(&bytes, &cuts) {
            if let Some(events) = framer.push(Bytes::from(part)).unwrap() {
                prop_assert!(events.ends_with(b"\n\n") || events.ends_with(b"\n\r\n"));
                out.extend_from_slice(&events);
            }
        }
        let rest = framer.take_rest();
        out.extend_from_slice(&rest);
        prop_assert_eq!(out, bytes);
    }

    #[test]
    fn chat_to_responses_never_panics(chat in json_value(), messages in json_value()) {
        let mut request = chat;
        if let Some(object) = request.as_object_mut() {
            object.insert("messages".into(), messages);
            object.entry("model").or_insert(json!("gpt-5"));
        }
        let options = TranslateOptions { enable_web_search: true };
        let _ = chat_to_responses(&request, "be brief", &options);
    }

    #[test]
    fn the_stream_translator_emits_only_whole_events(
        events in prop::collection::vec(json_value(), 0..12),
        abort in any::<bool>(),
    ) {
        let mut translator = StreamTranslator::new("gpt-5", "chatcmpl-1", 1, true);
        let mut frames = translator.start();
        for event in &events {
            frames.extend(translator.on_event(event));
        }
        if abort {
            frames.extend(translator.abort("upstream broke", None));
        }
        frames.extend(translator.finish());
        for frame in &frames {
            let data = frame.strip_prefix("data: ");
            prop_assert!(data.is_some() && frame.ends_with("\n\n"), "{:?}", frame);
            let data = data.unwrap().trim_end();
            prop_assert!(data == "[DONE]" || serde_json::from_str::<Value>(data).is_ok(), "{:?}", frame);
        }
        let done = frames.iter().filter(|f| f.contains("[DONE]")).count();
        prop_assert!(done <= 1, "{:?}", frames);
    }

    #[test]
    fn responses_to_chat_to_messages_never_panics(request in json_value(), input in json_value(), tools in json_value()) {
        let mut request = request;
        if let Some(object) = request.as_object_mut() {
            object.insert("input".into(), input);
            object.insert("tools".into(), tools);
            object.entry("model").or_insert(json!("claude"));
        }
        if let Ok(chat) = responses_request_to_chat(&request) {
            let _ = chat_to_messages(&chat.body);
        }
    }

    #[test]
    fn a_chat_stream_as_responses_events_ends_once_and_last(
        data in prop::collection::vec(chat_data(), 0..12),
    ) {
        let shell = ResponseShell::new("resp_1", 1, "claude", &serde_json::Map::new());
        let names = ToolNames { custom: vec!["a".into()], namespaced: vec![("b".into(), "ns".into())] };
        let mut translator = ChatToResponses::new(shell, names);
        let mut frames = Vec::new();
        for d in &data {
            frames.extend(translator.on_data(d));
        }
        frames.extend(translator.finish());
        prop_assert!(translator.is_done());
        let mut terminal = Vec::new();
        for (n, frame) in frames.iter().enumerate() {
            let (name, data) = frame
                .strip_prefix("event: ")
                .and_then(|f| f.strip_suffix("\n\n"))
                .and_then(|f| f.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("not one named event: {frame:?}"));
            let data: Value = serde_json::from_str(data).unwrap();
            prop_assert_eq!(&data["type"], name);
            prop_assert_eq!(&data["sequence_number"], &json!(n));
            if matches!(name, "response.completed" | "response.incomplete" | "response.failed") {
                terminal.push(n);
            }
        }
        prop_assert_eq!(terminal, vec![frames.len() - 1], "{:?}", frames);
    }

    #[test]
    fn the_request_validator_never_panics(body in json_value(), raw in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = ChatRequestView::parse(body.to_string().as_bytes());
        let _ = ChatRequestView::parse(&raw);
    }

    #[test]
    fn the_config_loader_never_panics(
        section in prop_oneof![Just("server"), Just("upstream"), Just("prompts"), Just("watchdog"), Just("daemon"), Just("logs")],
        key in prop_oneof![
            Just("port"), Just("max_concurrent"), Just("max_body_bytes"), Just("header_timeout"),
            Just("max_connections"), Just("timeout"), Just("idle_timeout"), Just("attempts"),
            Just("max_response_bytes"), Just("max_event_bytes"), Just("ttl"), Just("strikes"),
            Just("interval"), Just("max_bytes"), Just("host"), Just("url"),
        ],
        value in prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            "\"[ -~]{0,20}\"",
            Just("1e400".to_string()),
            Just("[]".to_string()),
        ],
        noise in "[ -~\n]{0,40}",
    ) {
        let dir = tempfile::tempdir().unwrap();
        let home = warden::home::Home::at(dir.path());
        std::fs::write(home.config_file(), format!("[{section}]\n{key} = {value}\n")).unwrap();
        let _ = warden::home::config::Config::load_with_env(
            &home,
            &Default::default(),
            warden::home::env::EnvSource::default(),
        );
        let _ = warden::home::config::parse_settings(&noise, std::path::Path::new("x.toml"));
    }
}
