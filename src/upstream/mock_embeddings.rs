//! The mock's Embeddings API (`POST /v1/embeddings` with `url = "mock"`):
//! deterministic vectors, offline.
//!
//! The vector of an input depends on the input alone: its SHA-256 seeds a
//! SplitMix64 sequence whose first `dimensions` numbers, scaled to [-1, 1) and
//! normalised to unit length, are the vector. So the same input gives the same
//! vector in any process, on any machine, and a shortened vector (`dimensions`)
//! is the normalised start of the full one, as OpenAI's shortened embeddings
//! are. A string and a token array are different inputs (the mock has no
//! tokenizer). Usage: one token per whitespace-separated word of a string (at
//! least one), one per element of a token array.

use base64::Engine;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{EmbeddingsCall, Reply};
use crate::api::openai::{ApiError, Usage};

/// Dimensions of a vector unless the request asks for others (what OpenAI's
/// `text-embedding-3-small` and `ada-002` answer).
pub const DEFAULT_DIMENSIONS: usize = 1536;
/// The most `dimensions` a request may ask for.
pub const MAX_DIMENSIONS: usize = 8192;
/// The most inputs in one request (OpenAI's own limit).
pub const MAX_INPUTS: usize = 2048;
/// The most numbers (inputs × dimensions) in one answer: 2048 inputs of 1536
/// dimensions, about 30 MB of JSON.
pub const MAX_NUMBERS: usize = MAX_INPUTS * DEFAULT_DIMENSIONS;

/// One input: text, or a token array.
#[derive(Debug, PartialEq)]
pub enum Input {
    Text(String),
    Tokens(Vec<u64>),
}

impl Input {
    fn tokens(&self) -> u64 {
        match self {
            Input::Text(text) => super::mock::count_words(text).max(1),
            Input::Tokens(tokens) => tokens.len() as u64,
        }
    }
}

/// The unit-length vector of `input`, `dimensions` long.
pub fn vector(input: &Input, dimensions: usize) -> Vec<f32> {
    let mut hasher = Sha256::new();
    match input {
        Input::Text(text) => {
            hasher.update(b"text\0");
            hasher.update(text.as_bytes());
        }
        Input::Tokens(tokens) => {
            hasher.update(b"tokens\0");
            for token in tokens {
                hasher.update(token.to_le_bytes());
            }
        }
    }
    let digest = hasher.finalize();
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&digest[..8]);
    let mut state = u64::from_le_bytes(seed);
    let raw: Vec<f64> = (0..dimensions)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            // The top 53 bits as a number in [-1, 1).
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    raw.into_iter().map(|x| (x / norm) as f32).collect()
}

/// The inputs of a request's `input`: a string, a list of strings, a token
/// array, or a list of token arrays.
pub fn inputs(input: &Value) -> Result<Vec<Input>, ApiError> {
    let wrong = || {
        ApiError::bad_request(
            "Invalid 'input': expected a string, an array of strings, an array of integers \
             (tokens) or an array of arrays of integers",
        )
        .param("input")
        .code("invalid_type")
    };
    let empty = || {
        ApiError::bad_request("Invalid 'input': an input must not be empty")
            .param("input")
            .code("invalid_value")
    };
    let text = |s: &str| {
        if s.is_empty() {
            Err(empty())
        } else {
            Ok(Input::Text(s.to_string()))
        }
    };
    let tokens = |items: &[Value]| -> Result<Input, ApiError> {
        if items.is_empty() {
            return Err(empty());
        }
        items
            .iter()
            .map(|t| t.as_u64().ok_or_else(wrong))
            .collect::<Result<Vec<u64>, ApiError>>()
            .map(Input::Tokens)
    };
    let inputs = match input {
        Value::String(s) => vec![text(s)?],
        Value::Array(items) if items.is_empty() => {
            return Err(crate::api::openai::invalid::empty_array("input"));
        }
        Value::Array(items) if items[0].is_number() => vec![tokens(items)?],
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => text(s),
                Value::Array(t) => tokens(t),
                _ => Err(wrong()),
            })
            .collect::<Result<Vec<Input>, ApiError>>()?,
        _ => return Err(wrong()),
    };
    if inputs.len() > MAX_INPUTS {
        return Err(ApiError::bad_request(format!(
            "Invalid 'input': at most {MAX_INPUTS} inputs per request, got {}",
            inputs.len()
        ))
        .param("input")
        .code("invalid_value"));
    }
    Ok(inputs)
}

#[derive(Serialize)]
struct Answer<'a> {
    object: &'static str,
    data: Vec<Item>,
    model: &'a str,
    usage: AnswerUsage,
}

#[derive(Serialize)]
struct Item {
    object: &'static str,
    index: usize,
    embedding: Embedding,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Embedding {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct AnswerUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// Answers an embeddings request offline.
pub fn respond(call: EmbeddingsCall) -> Result<Reply, ApiError> {
    let request: Value = serde_json::from_slice(&call.body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    let inputs = inputs(&request["input"])?;
    let dimensions = match &request["dimensions"] {
        Value::Null => DEFAULT_DIMENSIONS,
        value => value
            .as_u64()
            .filter(|d| (1..=MAX_DIMENSIONS as u64).contains(d))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid 'dimensions': expected an integer from 1 to {MAX_DIMENSIONS}"
                ))
                .param("dimensions")
                .code("invalid_value")
            })? as usize,
    };
    let base64 = match &request["encoding_format"] {
        Value::Null => false,
        Value::String(s) if s == "float" => false,
        Value::String(s) if s == "base64" => true,
        _ => {
            return Err(ApiError::bad_request(
                "Invalid 'encoding_format': expected \"float\" or \"base64\"",
            )
            .param("encoding_format")
            .code("invalid_value"));
        }
    };
    if inputs.len().saturating_mul(dimensions) > MAX_NUMBERS {
        return Err(ApiError::bad_request(format!(
            "{} inputs of {dimensions} dimensions is more than the mock answers at once \
             ({MAX_NUMBERS} numbers); send fewer inputs per request",
            inputs.len()
        ))
        .param("input")
        .code("invalid_value"));
    }
    let prompt_tokens: u64 = inputs.iter().map(Input::tokens).sum();
    call.stats.set_usage(Usage {
        prompt_tokens,
        completion_tokens: 0,
        cached_tokens: 0,
    });
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = vector(input, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Embedding::Float(vector)
            };
            Item {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let answer = Answer {
        object: "list",
        data,
        model: &call.model,
        usage: AnswerUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    };
    let body = serde_json::to_vec(&answer).expect("an embeddings answer serialises");
    Ok(Reply::Complete(Bytes::from(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vectors_are_deterministic_unit_length_and_shortened_from_the_full_one() {
        let hello = Input::Text("hello".into());
        let a = vector(&hello, 1536);
        assert_eq!(a, vector(&Input::Text("hello".into()), 1536));
        assert_eq!(a.len(), 1536);
        let norm: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_ne!(a, vector(&Input::Text("hello!".into()), 1536));
        assert_ne!(a, vector(&Input::Tokens(vec![1, 2]), 1536));
        // A shortened vector points the way the start of the full one does.
        let short = vector(&hello, 8);
        let scale = a[0] / short[0];
        for (s, f) in short.iter().zip(&a) {
            assert!((s * scale - f).abs() < 1e-6);
        }
    }

    #[test]
    fn every_input_shape_is_read_and_bad_ones_name_input() {
        assert_eq!(inputs(&json!("a b")).unwrap(), [Input::Text("a b".into())]);
        assert_eq!(inputs(&json!(["a", "b"])).unwrap().len(), 2);
        assert_eq!(
            inputs(&json!([1, 2, 3])).unwrap(),
            [Input::Tokens(vec![1, 2, 3])]
        );
        assert_eq!(
            inputs(&json!([[1], [2, 3]])).unwrap(),
            [Input::Tokens(vec![1]), Input::Tokens(vec![2, 3])]
        );
        for bad in [
            json!(5),
            json!([]),
            json!([""]),
            json!([[]]),
            json!([1, "a"]),
            json!([{}]),
        ] {
            let e = inputs(&bad).unwrap_err();
            assert_eq!(e.param, Some("input"), "{bad}");
        }
    }
}
